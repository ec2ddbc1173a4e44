//! The system root every file is read through (`/`, `--root DIR` or `DKMS_HOOK_ROOT`).
//!
//! Paths handed around the program are *in-root* absolute paths such as
//! `/usr/lib/linux-kbuild-6.1/scripts`. Symlinks are resolved here, by hand, as a
//! chroot would: an absolute target restarts at the root and `..` never climbs
//! above it. That makes fixture trees behave like real systems (including
//! merged-/usr, where `/lib -> usr/lib`) and keeps a crafted link from leading
//! a path outside the root.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Linux gives up after 40 links in one lookup; so do we.
const MAX_SYMLINKS: usize = 40;

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

    /// The host path of an in-root path, without resolving symlinks. Used for
    /// our own files and for paths already returned by [`Root::canonicalize`].
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
        let mut done = PathBuf::from("/");
        let mut todo: Vec<PathBuf> = vec![path.as_ref().to_path_buf()];
        let mut links = 0;
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
                let meta = std::fs::symlink_metadata(self.host(&candidate))?;
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

    /// The target of a symlink as an in-root absolute path (relative targets
    /// are taken relative to the link's directory), without following further.
    pub fn link_target(&self, link: &Path) -> io::Result<PathBuf> {
        let target = std::fs::read_link(self.host(link))?;
        Ok(if target.is_absolute() {
            target
        } else {
            link.parent().unwrap_or(Path::new("/")).join(target)
        })
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
