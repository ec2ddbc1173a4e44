//! The system root every file is read through (`/`, `--root DIR` or `DKMS_HOOK_ROOT`).
//!
//! Paths handed around the program are *in-root* absolute paths such as
//! `/usr/lib/linux-kbuild-6.1/scripts`. Symlinks are resolved here, by hand, as a
//! chroot would: an absolute target restarts at the root and `..` never climbs
//! above it. That makes fixture trees behave like real systems (including
//! merged-/usr, where `/lib -> usr/lib`) and keeps a crafted link from leading
//! a path outside the root.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use crate::Error;

/// Linux gives up after 40 links in one lookup; so do we.
const MAX_SYMLINKS: usize = 40;

/// The most a file of each kind may hold; a larger one is refused with its
/// name rather than read (a `.list` that is `/dev/zero` must not cost 2 GB).
/// Small text files: the config, `dkms.conf`, `.kernelvariables`, a
/// Makefile's head, `/etc/localtime`, initramfs-tools' module list.
pub const CAP_SMALL: u64 = 1 << 20;
/// A dpkg file list (linux-headers-*-common's is ~2 MB).
pub const CAP_LIST: u64 = 64 << 20;
/// dpkg's status file (~10 MB on a large desktop).
pub const CAP_STATUS: u64 = 512 << 20;
/// dkms-hook's own JSON state files.
pub const CAP_STATE: u64 = 16 << 20;

/// `O_NOFOLLOW | O_NONBLOCK` for `OpenOptionsExt::custom_flags`: a planted
/// link is not followed and a FIFO does not block the open.
pub const NOFOLLOW_NONBLOCK: i32 = i32::from_ne_bytes(
    (rustix::fs::OFlags::NOFOLLOW.bits() | rustix::fs::OFlags::NONBLOCK.bits()).to_ne_bytes(),
);

/// Open a host path for reading, refusing links, FIFOs, devices and
/// directories: `O_NOFOLLOW | O_NONBLOCK` so neither a planted link nor a FIFO
/// can redirect or hang the open, then `fstat`.
pub fn open_regular(path: &Path) -> Result<File, Error> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(NOFOLLOW_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(40) => Error::Unreadable {
                path: path.to_path_buf(),
                why: "a symbolic link".into(),
            },
            _ => Error::io(path, e),
        })?;
    let meta = f.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::Unreadable {
            path: path.to_path_buf(),
            why: "not a regular file".into(),
        });
    }
    Ok(f)
}

/// Read a whole regular file of at most `cap` bytes (see [`open_regular`]).
pub fn read_regular(path: &Path, cap: u64) -> Result<Vec<u8>, Error> {
    read_capped(path, open_regular(path)?, cap)
}

/// Read all of `r` (the file at `path`), refusing more than `cap` bytes.
pub fn read_capped(path: &Path, r: impl Read, cap: u64) -> Result<Vec<u8>, Error> {
    let mut data = Vec::new();
    r.take(cap + 1)
        .read_to_end(&mut data)
        .map_err(|e| Error::io(path, e))?;
    if data.len() as u64 > cap {
        return Err(Error::Unreadable {
            path: path.to_path_buf(),
            why: format!("larger than {cap} bytes"),
        });
    }
    Ok(data)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    dir: PathBuf,
}

impl Root {
    pub fn new(dir: impl Into<PathBuf>) -> Root {
        Root { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_host_root(&self) -> bool {
        self.dir == Path::new("/")
    }

    /// The host path of an in-root path, without resolving symlinks: only for
    /// paths already returned by [`Root::canonicalize`]. Everything else goes
    /// through [`Root::resolve`] or [`Root::inside`].
    pub fn host(&self, inroot: impl AsRef<Path>) -> PathBuf {
        let rel = inroot.as_ref().strip_prefix("/").unwrap_or(inroot.as_ref());
        if rel.as_os_str().is_empty() {
            self.dir.clone()
        } else {
            self.dir.join(rel)
        }
    }

    /// Resolve every symlink in `path` inside the root and return the in-root
    /// absolute path of what it names. Fails like `realpath(3)`: `NotFound` for a
    /// dangling component, an error for a loop.
    pub fn canonicalize(&self, path: impl AsRef<Path>) -> io::Result<PathBuf> {
        self.walk(path.as_ref(), false)
    }

    /// The walk behind [`Root::canonicalize`] and [`Root::inside`]. With
    /// `allow_missing`, the first component that does not exist (also as
    /// the target of a dangling link) ends the resolution: it and the rest
    /// are appended as names.
    fn walk(&self, path: &Path, allow_missing: bool) -> io::Result<PathBuf> {
        let mut done = PathBuf::from("/");
        let mut todo: Vec<PathBuf> = vec![path.to_path_buf()];
        let mut links = 0;
        let mut missing = false;
        // `todo` is a stack of path pieces still to walk, innermost last; a
        // symlink pushes its target in front of what remained after it.
        let mut pending: Vec<std::ffi::OsString> = Vec::new();
        while let Some(p) = todo.pop() {
            if p.is_absolute() {
                done = PathBuf::from("/");
            }
            for c in p.components().rev() {
                match c {
                    Component::Normal(n) => pending.push(n.to_os_string()),
                    Component::ParentDir => pending.push("..".into()),
                    _ => {}
                }
            }
            while let Some(name) = pending.pop() {
                if name == ".." {
                    done.pop();
                    continue;
                }
                let candidate = done.join(&name);
                if missing {
                    done = candidate;
                    continue;
                }
                let meta = match std::fs::symlink_metadata(self.host(&candidate)) {
                    Ok(m) => m,
                    Err(e) if allow_missing && e.kind() == io::ErrorKind::NotFound => {
                        missing = true;
                        done = candidate;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                if meta.file_type().is_symlink() {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(io::Error::other(format!(
                            "too many levels of symbolic links at {}",
                            candidate.display()
                        )));
                    }
                    let target = std::fs::read_link(self.host(&candidate))?;
                    // What is left after this link is walked after its target.
                    let rest: PathBuf = pending.drain(..).rev().collect();
                    if !rest.as_os_str().is_empty() {
                        todo.push(rest);
                    }
                    todo.push(target);
                    break;
                }
                done = candidate;
            }
        }
        Ok(done)
    }

    /// Like [`Root::canonicalize`], returning the host path.
    pub fn resolve(&self, path: impl AsRef<Path>) -> io::Result<PathBuf> {
        self.canonicalize(path).map(|p| self.host(p))
    }

    /// The host path of an in-root path whose last components may not exist
    /// yet (a file about to be created, a directory dkms removed): every
    /// existing component is resolved inside the root, the missing rest is
    /// appended. The one way to name a path for writing or removing, so that
    /// a link planted anywhere on the way cannot lead out of the root.
    pub fn inside(&self, path: impl AsRef<Path>) -> io::Result<PathBuf> {
        self.walk(path.as_ref(), true).map(|p| self.host(p))
    }

    /// Read an in-root file of at most `cap` bytes, resolved inside the root.
    pub fn read(&self, path: impl AsRef<Path>, cap: u64) -> Result<Vec<u8>, Error> {
        let path = path.as_ref();
        let host = self.resolve(path).map_err(|e| Error::io(path, e))?;
        read_regular(&host, cap)
    }

    /// Whether an in-root path exists (links resolved inside the root).
    pub fn exists(&self, path: impl AsRef<Path>) -> bool {
        self.canonicalize(path).is_ok()
    }

    /// The target of a symlink as a normalised in-root absolute path,
    /// without following it further: a relative target is taken from the
    /// link's resolved directory, so Debian 13's `build ->
    /// ../../../src/linux-headers-K` names `/usr/src/linux-headers-K`.
    pub fn link_target(&self, link: &Path) -> io::Result<PathBuf> {
        let dir = link.parent().unwrap_or(Path::new("/"));
        let dir = self.canonicalize(dir)?;
        let target = std::fs::read_link(self.host(dir.join(link.file_name().unwrap_or_default())))?;
        let mut out = if target.is_absolute() {
            PathBuf::from("/")
        } else {
            dir
        };
        for c in target.components() {
            match c {
                Component::Normal(n) => out.push(n),
                Component::ParentDir => {
                    out.pop();
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

/// In-root paths as bytes, for prefix tests against dpkg's file lists.
pub fn path_bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn absolute_links_stay_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = Root::new(t.path());
        std::fs::create_dir_all(t.path().join("usr/lib/kb/scripts")).unwrap();
        std::fs::create_dir_all(t.path().join("usr/src/h")).unwrap();
        symlink("usr/lib", t.path().join("lib")).unwrap();
        symlink("/usr/src/h", t.path().join("usr/lib/build")).unwrap();
        symlink("../../lib/kb/scripts", t.path().join("usr/src/h/scripts")).unwrap();
        assert_eq!(
            root.canonicalize("/lib/build/scripts").unwrap(),
            PathBuf::from("/usr/lib/kb/scripts")
        );
        // `..` at the root stays at the root, as in a chroot.
        symlink("/../../../../etc", t.path().join("escape")).unwrap();
        assert_eq!(
            root.canonicalize("/escape").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }

    #[test]
    fn relative_link_targets_are_normalised() {
        // Debian 13: /usr/lib/modules/K/build -> ../../../src/linux-headers-K
        let t = tempfile::tempdir().unwrap();
        let root = Root::new(t.path());
        std::fs::create_dir_all(t.path().join("usr/lib/modules/K")).unwrap();
        symlink("usr/lib", t.path().join("lib")).unwrap();
        symlink(
            "../../../src/linux-headers-K",
            t.path().join("usr/lib/modules/K/build"),
        )
        .unwrap();
        assert_eq!(
            root.link_target(Path::new("/lib/modules/K/build")).unwrap(),
            PathBuf::from("/usr/src/linux-headers-K")
        );
    }

    #[test]
    fn inside_resolves_what_exists_and_appends_the_rest() {
        let t = tempfile::tempdir().unwrap();
        let root = Root::new(t.path());
        std::fs::create_dir_all(t.path().join("var/lib")).unwrap();
        symlink("/etc", t.path().join("var/lib/x")).unwrap();
        assert_eq!(
            root.inside("/var/lib/x/new/file").unwrap(),
            t.path().join("etc/new/file")
        );
        symlink("../../../../../../tmp", t.path().join("var/lib/y")).unwrap();
        assert_eq!(root.inside("/var/lib/y/z").unwrap(), t.path().join("tmp/z"));
    }

    #[test]
    fn only_regular_files_within_their_cap_are_read() {
        let t = tempfile::tempdir().unwrap();
        let root = Root::new(t.path());
        std::fs::write(t.path().join("f"), b"12345").unwrap();
        assert_eq!(root.read("/f", 5).unwrap(), b"12345");
        assert!(root
            .read("/f", 4)
            .unwrap_err()
            .to_string()
            .contains("larger than 4 bytes"));
        symlink("/dev/zero", t.path().join("z")).unwrap();
        // Inside the root /dev/zero does not exist.
        assert!(root.read("/z", 5).is_err());
        let e = read_regular(Path::new("/dev/zero"), 5).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            t.path().join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let e = root.read("/fifo", 5).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn loops_and_dangling_links_are_errors() {
        let t = tempfile::tempdir().unwrap();
        let root = Root::new(t.path());
        symlink("b", t.path().join("a")).unwrap();
        symlink("a", t.path().join("b")).unwrap();
        symlink("/nowhere", t.path().join("c")).unwrap();
        assert!(root.canonicalize("/a").is_err());
        assert_eq!(
            root.canonicalize("/c").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
    }
}
