//! Directory trees of hostile content, written, copied and removed through
//! directory fds and never through a link: a package's files unpacked from
//! its tar stream (`dpkg-deb --fsys-tarfile`) into a private directory, and
//! a test build's result copied out of preflight's sandbox and back.
//!
//! Every path component is opened with `O_NOFOLLOW | O_DIRECTORY` relative
//! to its parent's fd, files are created with `O_CREAT | O_EXCL |
//! O_NOFOLLOW`, and `..` is refused, so neither the content (a link the
//! package ships, then a file "through" it) nor anything already in place
//! can lead a write elsewhere. Set-id bits are dropped, device nodes,
//! FIFOs and sockets are never made, and sizes and counts are bounded.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};

/// What a tree may hold at most: entries and bytes.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub entries: u64,
    pub bytes: u64,
}

impl Budget {
    fn entry(&mut self) -> Result<(), String> {
        self.entries = self
            .entries
            .checked_sub(1)
            .ok_or_else(|| "too many files".to_string())?;
        Ok(())
    }

    fn take(&mut self, n: u64) -> Result<(), String> {
        self.bytes = self
            .bytes
            .checked_sub(n)
            .ok_or_else(|| "too large".to_string())?;
        Ok(())
    }
}

fn os_err(what: &OsStr, e: impl Into<io::Error>) -> String {
    format!("{}: {}", Path::new(what).display(), e.into())
}

/// Open the directory `path` (a host path we made or trust).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(Into::into)
}

fn open_sub(dir: &OwnedFd, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// The names of a path relative to a tree's top: `.` and empty ones
/// dropped, `..` refused (a tar entry `../x` or `a/../../x`).
pub fn components(path: &Path) -> Result<Vec<&OsStr>, String> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("{}: a path with ..", path.display()))
            }
        }
    }
    Ok(out)
}

/// The real directory `rel` below `base`, every component a directory and
/// none a link; `None` otherwise.
pub fn open_beneath(base: &OwnedFd, rel: &Path) -> Option<OwnedFd> {
    let mut cur = rustix::io::dup(base).ok()?;
    for name in components(rel).ok()? {
        cur = open_sub(&cur, name).ok()?;
    }
    Some(cur)
}

/// The names in a directory, as the kernel gives them.
pub fn names(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    let rd = rustix::fs::Dir::read_from(dir)?;
    let mut out = Vec::new();
    for e in rd {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(OsString::from_vec(n.to_vec()));
        }
    }
    out.sort();
    Ok(out)
}

fn kind(dir: &OwnedFd, name: &OsStr) -> Option<FileType> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .map(|st| FileType::from_raw_mode(st.st_mode))
}

/// Remove `name` below `parent` and everything under it; links are
/// removed, never followed. A missing `name` is no error.
pub fn remove_tree(parent: &OwnedFd, name: &OsStr) -> io::Result<()> {
    match kind(parent, name) {
        None => Ok(()),
        Some(FileType::Directory) => {
            let sub = open_sub(parent, name)?;
            for n in names(&sub)? {
                remove_tree(&sub, &n)?;
            }
            rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR).map_err(Into::into)
        }
        Some(_) => rustix::fs::unlinkat(parent, name, AtFlags::empty()).map_err(Into::into),
    }
}

/// Create the directory `name` below `parent` (it must not exist) with
/// `mode`, whatever the umask, and open it.
pub fn make_dir(parent: &OwnedFd, name: &OsStr, mode: u32) -> io::Result<OwnedFd> {
    rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700))?;
    let fd = open_sub(parent, name)?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o777))?;
    Ok(fd)
}

/// Create the regular file `name` below `parent` (it must not exist).
fn create_file(parent: &OwnedFd, name: &OsStr, mode: u32) -> rustix::io::Result<File> {
    let fd = rustix::fs::openat(
        parent,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o777))?;
    Ok(File::from(fd))
}

/// Copy the tree `from` into a new directory `name` below `to`: only
/// directories and regular files, each file at most what the budget
/// allows; anything else (a link, a device) is an error. Set-id bits are
/// dropped; times are those of the copy.
pub fn copy_tree(
    from: &OwnedFd,
    to: &OwnedFd,
    name: &OsStr,
    budget: &mut Budget,
) -> Result<(), String> {
    let st = rustix::fs::fstat(from).map_err(|e| os_err(name, e))?;
    let dst = make_dir(to, name, 0o700).map_err(|e| os_err(name, e))?;
    for n in names(from).map_err(|e| os_err(name, e))? {
        budget.entry()?;
        match kind(from, &n) {
            Some(FileType::Directory) => {
                let sub = open_sub(from, &n).map_err(|e| os_err(&n, e))?;
                copy_tree(&sub, &dst, &n, budget)?;
            }
            Some(FileType::RegularFile) => {
                let src = rustix::fs::openat(
                    from,
                    n.as_os_str(),
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| os_err(&n, e))?;
                let sst = rustix::fs::fstat(&src).map_err(|e| os_err(&n, e))?;
                if FileType::from_raw_mode(sst.st_mode) != FileType::RegularFile {
                    return Err(format!("{}: changed under us", Path::new(&n).display()));
                }
                let size = u64::try_from(sst.st_size).unwrap_or(u64::MAX);
                budget.take(size)?;
                let mut out = create_file(&dst, &n, sst.st_mode).map_err(|e| os_err(&n, e))?;
                let copied = io::copy(&mut File::from(src).take(size), &mut out)
                    .map_err(|e| os_err(&n, e))?;
                if copied != size {
                    return Err(format!("{}: changed under us", Path::new(&n).display()));
                }
            }
            _ => {
                return Err(format!(
                    "{}: neither a directory nor a regular file",
                    Path::new(&n).display()
                ))
            }
        }
    }
    rustix::fs::fchmod(&dst, Mode::from_raw_mode(st.st_mode & 0o777))
        .map_err(|e| os_err(name, e))?;
    Ok(())
}

/// The entries of a tree: relative paths of its directories and regular
/// files (sorted), and whether anything else was met.
pub fn listing(dir: &OwnedFd, budget: &mut Budget) -> Result<Vec<(PathBuf, u64)>, String> {
    fn walk(
        dir: &OwnedFd,
        at: &Path,
        out: &mut Vec<(PathBuf, u64)>,
        budget: &mut Budget,
    ) -> Result<(), String> {
        for n in names(dir).map_err(|e| os_err(at.as_os_str(), e))? {
            budget.entry()?;
            let p = at.join(&n);
            let st = rustix::fs::statat(dir, n.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| os_err(p.as_os_str(), e))?;
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    let sub = open_sub(dir, &n).map_err(|e| os_err(p.as_os_str(), e))?;
                    walk(&sub, &p, out, budget)?;
                }
                FileType::RegularFile => {
                    let size = u64::try_from(st.st_size).unwrap_or(u64::MAX);
                    budget.take(size)?;
                    out.push((p, size));
                }
                _ => {
                    return Err(format!(
                        "{}: neither a directory nor a regular file",
                        p.display()
                    ))
                }
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, Path::new(""), &mut out, budget)?;
    Ok(out)
}

/// What [`unpack`] made of a tar stream.
#[derive(Debug, Default)]
pub struct Unpacked {
    /// Every path written (directories, files, links), as `/usr/…`.
    pub paths: Vec<PathBuf>,
    /// Device nodes, FIFOs and sockets left out.
    pub left_out: usize,
}

/// The paths of the tar stream `tar` (as [`unpack`] would make them),
/// without writing anything.
pub fn list(tar: impl Read, budget: Budget) -> Result<Unpacked, String> {
    walk_tar(tar, None, budget)
}

/// Unpack the tar stream `tar` into the directory `into` (ours, empty):
/// directories, regular files, symbolic links and hard links, each
/// through [`open_beneath`]-style no-follow walks; no set-id bits, no
/// device nodes; at most `budget`.
pub fn unpack(tar: impl Read, into: &OwnedFd, budget: Budget) -> Result<Unpacked, String> {
    walk_tar(tar, Some(into), budget)
}

fn walk_tar(
    tar: impl Read,
    into: Option<&OwnedFd>,
    mut budget: Budget,
) -> Result<Unpacked, String> {
    let mut r = TarReader { r: tar };
    let mut done = Unpacked::default();
    let (mut long_name, mut long_link): (Option<Vec<u8>>, Option<Vec<u8>>) = (None, None);
    loop {
        let mut h = [0u8; 512];
        if !r.block(&mut h)? {
            return Ok(done); // no end marker: dpkg's streams have one, a cut one ends here
        }
        if h.iter().all(|b| *b == 0) {
            return Ok(done);
        }
        check_sum(&h)?;
        let size = number(&h[124..136]).ok_or("a bad size field")?;
        let mode = u32::try_from(number(&h[100..108]).unwrap_or(0o644) & 0o7777).unwrap_or(0o644);
        let mtime = number(&h[136..148]).unwrap_or(0);
        let typ = h[156];
        match typ {
            b'L' | b'K' => {
                let v = r.small(size)?;
                let v = v.split(|b| *b == 0).next().unwrap_or_default().to_vec();
                if typ == b'L' {
                    long_name = Some(v);
                } else {
                    long_link = Some(v);
                }
                continue;
            }
            b'x' => {
                for (k, v) in pax(&r.small(size)?) {
                    match k.as_slice() {
                        b"path" => long_name = Some(v),
                        b"linkpath" => long_link = Some(v),
                        _ => {}
                    }
                }
                continue;
            }
            b'g' => {
                r.skip(size)?;
                continue;
            }
            _ => {}
        }
        let name = long_name.take().unwrap_or_else(|| {
            let n = field(&h[0..100]);
            let prefix = field(&h[345..500]);
            // POSIX ustar ("ustar\0") has a prefix field; GNU's header does not.
            if &h[257..263] == b"ustar\0" && !prefix.is_empty() {
                [prefix, b"/", n].concat()
            } else {
                n.to_vec()
            }
        });
        let link = long_link
            .take()
            .unwrap_or_else(|| field(&h[157..257]).to_vec());
        let path = PathBuf::from(OsString::from_vec(name));
        let comps = components(&path)?;
        let Some((leaf, parents)) = comps.split_last() else {
            r.skip(size)?; // the "./" entry
            continue;
        };
        budget.entry()?;
        let inroot = Path::new("/").join(comps.iter().collect::<PathBuf>());
        let Some(into) = into else {
            if matches!(typ, b'0' | 0 | b'7') {
                budget.take(size)?;
            }
            r.skip(size)?;
            if matches!(typ, b'0' | 0 | b'7' | b'5' | b'2' | b'1') {
                done.paths.push(inroot);
            } else {
                done.left_out += 1;
            }
            continue;
        };
        let made = match typ {
            b'0' | 0 | b'7' => {
                budget.take(size)?;
                let dir = parent_dir(into, parents)?;
                let mut f = replace(&dir, leaf, |d, n| create_file(d, n, mode))?;
                r.copy_to(size, &mut f)?;
                let t = Timespec {
                    tv_sec: i64::try_from(mtime).unwrap_or(0),
                    tv_nsec: 0,
                };
                let _ = rustix::fs::futimens(
                    &f,
                    &Timestamps {
                        last_access: t,
                        last_modification: t,
                    },
                );
                true
            }
            b'5' => {
                r.skip(size)?;
                let dir = parent_dir(into, parents)?;
                let fd = match open_sub(&dir, leaf) {
                    Ok(fd) => fd,
                    Err(rustix::io::Errno::NOENT) => {
                        make_dir(&dir, leaf, 0o755).map_err(|e| os_err(leaf, e))?
                    }
                    Err(e) => return Err(os_err(path.as_os_str(), e)),
                };
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o777))
                    .map_err(|e| os_err(leaf, e))?;
                true
            }
            b'2' => {
                r.skip(size)?;
                let dir = parent_dir(into, parents)?;
                replace(&dir, leaf, |d, n| {
                    rustix::fs::symlinkat(OsStr::from_bytes(&link), d, n)
                })?;
                true
            }
            b'1' => {
                r.skip(size)?;
                let target = PathBuf::from(OsString::from_vec(link));
                let tc = components(&target)?;
                let (tleaf, tparents) = tc.split_last().ok_or("a hard link to nothing")?;
                let mut tdir = rustix::io::dup(into).map_err(|e| os_err(leaf, e))?;
                for n in tparents {
                    tdir = open_sub(&tdir, n).map_err(|e| os_err(target.as_os_str(), e))?;
                }
                if kind(&tdir, tleaf) != Some(FileType::RegularFile) {
                    return Err(format!(
                        "{}: a hard link to what is not a file",
                        path.display()
                    ));
                }
                let dir = parent_dir(into, parents)?;
                replace(&dir, leaf, |d, n| {
                    rustix::fs::linkat(&tdir, *tleaf, d, n, AtFlags::empty())
                })?;
                true
            }
            _ => {
                r.skip(size)?;
                done.left_out += 1;
                false
            }
        };
        if made {
            done.paths.push(inroot);
        }
    }
}

/// The directory `names` below `top`, made (0755) where missing; a link or
/// a file in the way is an error.
fn parent_dir(top: &OwnedFd, names: &[&OsStr]) -> Result<OwnedFd, String> {
    let mut cur = rustix::io::dup(top).map_err(|e| e.to_string())?;
    for n in names {
        cur = match open_sub(&cur, n) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => make_dir(&cur, n, 0o755).map_err(|e| os_err(n, e))?,
            Err(e) => return Err(os_err(n, e)),
        };
    }
    Ok(cur)
}

/// Make `name` with `make`; if something is there, remove it (never a
/// directory, never through a link) and try once more.
fn replace<T>(
    dir: &OwnedFd,
    name: &OsStr,
    make: impl Fn(&OwnedFd, &OsStr) -> rustix::io::Result<T>,
) -> Result<T, String> {
    match make(dir, name) {
        Err(rustix::io::Errno::EXIST) => {
            rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(|e| os_err(name, e))?;
            make(dir, name).map_err(|e| os_err(name, e))
        }
        r => r.map_err(|e| os_err(name, e)),
    }
}

struct TarReader<R> {
    r: R,
}

impl<R: Read> TarReader<R> {
    /// One 512-byte block; `false` at a clean end of the stream.
    fn block(&mut self, b: &mut [u8; 512]) -> Result<bool, String> {
        let mut got = 0;
        while got < 512 {
            match self.r.read(&mut b[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err("cut in the middle of a block".into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(true)
    }

    fn padded(size: u64) -> u64 {
        size.div_ceil(512) * 512
    }

    fn skip(&mut self, size: u64) -> Result<(), String> {
        let n = Self::padded(size);
        let copied =
            io::copy(&mut (&mut self.r).take(n), &mut io::sink()).map_err(|e| e.to_string())?;
        if copied == n {
            Ok(())
        } else {
            Err("cut in the middle of a file".into())
        }
    }

    fn copy_to(&mut self, size: u64, out: &mut impl Write) -> Result<(), String> {
        let copied = io::copy(&mut (&mut self.r).take(size), out).map_err(|e| e.to_string())?;
        if copied != size {
            return Err("cut in the middle of a file".into());
        }
        self.skip_padding(size)
    }

    fn skip_padding(&mut self, size: u64) -> Result<(), String> {
        let pad = Self::padded(size) - size;
        let copied =
            io::copy(&mut (&mut self.r).take(pad), &mut io::sink()).map_err(|e| e.to_string())?;
        if copied == pad {
            Ok(())
        } else {
            Err("cut in the middle of a file".into())
        }
    }

    /// A header's own data (a long name, pax records): at most 1 MB.
    fn small(&mut self, size: u64) -> Result<Vec<u8>, String> {
        if size > 1 << 20 {
            return Err("an extended header larger than 1 MB".into());
        }
        let mut v = Vec::new();
        (&mut self.r)
            .take(size)
            .read_to_end(&mut v)
            .map_err(|e| e.to_string())?;
        if v.len() as u64 != size {
            return Err("cut in an extended header".into());
        }
        self.skip_padding(size)?;
        Ok(v)
    }
}

/// A NUL-terminated header field.
fn field(f: &[u8]) -> &[u8] {
    f.split(|b| *b == 0).next().unwrap_or_default()
}

/// An octal number field, or GNU's base-256 one (high bit set).
fn number(f: &[u8]) -> Option<u64> {
    if f.first()? & 0x80 != 0 {
        let mut v: u64 = u64::from(f[0] & 0x7f);
        for b in &f[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(v);
    }
    let s = std::str::from_utf8(field(f)).ok()?.trim();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(s, 8).ok()
}

fn check_sum(h: &[u8; 512]) -> Result<(), String> {
    let want = number(&h[148..156]).ok_or("a bad checksum field")?;
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(*b)
            }
        })
        .sum();
    if sum == want {
        Ok(())
    } else {
        Err("not a tar stream (header checksum)".into())
    }
}

/// pax records: `LEN key=value\n`.
fn pax(data: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let Some(sp) = rest.iter().position(|b| *b == b' ') else {
            break;
        };
        let Some(len) = std::str::from_utf8(&rest[..sp])
            .ok()
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > sp && *l <= rest.len())
        else {
            break;
        };
        let rec = &rest[sp + 1..len];
        let rec = rec.strip_suffix(b"\n").unwrap_or(rec);
        if let Some(eq) = rec.iter().position(|b| *b == b'=') {
            out.push((rec[..eq].to_vec(), rec[eq + 1..].to_vec()));
        }
        rest = &rest[len..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A tar stream as GNU tar writes it, from (path, type, mode, content or link).
    fn tar(entries: &[(&str, u8, u32, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (path, typ, mode, data) in entries {
            let mut h = [0u8; 512];
            let (name, body) = if *typ == b'2' || *typ == b'1' {
                (path, "")
            } else {
                (path, *data)
            };
            h[..name.len()].copy_from_slice(name.as_bytes());
            h[100..108].copy_from_slice(format!("{mode:07o}\0").as_bytes());
            h[124..136].copy_from_slice(format!("{:011o}\0", body.len()).as_bytes());
            h[136..148].copy_from_slice(format!("{:011o}\0", 1_700_000_000).as_bytes());
            h[156] = *typ;
            if *typ == b'2' || *typ == b'1' {
                h[157..157 + data.len()].copy_from_slice(data.as_bytes());
            }
            h[257..265].copy_from_slice(b"ustar  \0");
            h[148..156].copy_from_slice(b"        ");
            let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
            h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            out.extend_from_slice(&h);
            out.extend_from_slice(body.as_bytes());
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    const BIG: Budget = Budget {
        entries: 1000,
        bytes: 1 << 20,
    };

    #[test]
    fn links_in_the_stream_are_never_written_through() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let into = t.path().join("x");
        std::fs::create_dir(&into).unwrap();
        let v = victim.to_str().unwrap();
        let stream = tar(&[
            ("./usr/", b'5', 0o755, ""),
            ("./usr/zz", b'2', 0o777, v),
            ("./usr/zz", b'0', 0o644, "pwned"),
            ("./usr/d", b'2', 0o777, t.path().to_str().unwrap()),
            ("./usr/d/victim", b'0', 0o644, "pwned"),
        ]);
        let r = unpack(&stream[..], &open_dir(&into).unwrap(), BIG);
        assert!(r.is_err(), "a file through a link is refused");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        // The file replaced the link itself.
        assert_eq!(
            std::fs::read_to_string(into.join("usr/zz")).unwrap(),
            "pwned"
        );
    }

    #[test]
    fn set_id_bits_and_devices_are_left_out_and_sizes_bounded() {
        let t = tempfile::tempdir().unwrap();
        let stream = tar(&[
            ("./bin/", b'5', 0o755, ""),
            ("./bin/sh", b'0', 0o4755, "#!"),
            ("./bin/mem", b'3', 0o666, ""),
            ("./bin/fifo", b'6', 0o666, ""),
            ("./bin/hard", b'1', 0o755, "./bin/sh"),
        ]);
        let r = unpack(&stream[..], &open_dir(t.path()).unwrap(), BIG).unwrap();
        assert_eq!(r.left_out, 2);
        let mode = std::fs::metadata(t.path().join("bin/sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
        assert!(!t.path().join("bin/mem").exists());
        assert_eq!(std::fs::read(t.path().join("bin/hard")).unwrap(), b"#!");
        let small = Budget {
            entries: 1000,
            bytes: 1,
        };
        let t2 = tempfile::tempdir().unwrap();
        assert!(unpack(&stream[..], &open_dir(t2.path()).unwrap(), small).is_err());
        let t3 = tempfile::tempdir().unwrap();
        let dotdot = tar(&[("../escape", b'0', 0o644, "x")]);
        assert!(unpack(&dotdot[..], &open_dir(t3.path()).unwrap(), BIG).is_err());
        assert!(unpack(&b"garbage"[..], &open_dir(t3.path()).unwrap(), BIG).is_err());
    }

    #[test]
    fn copies_refuse_links_and_removal_does_not_follow_them() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("module")).unwrap();
        std::fs::write(src.join("module/m.ko"), "ko").unwrap();
        let dst = t.path().join("dst");
        std::fs::create_dir(&dst).unwrap();
        let mut b = BIG;
        copy_tree(
            &open_dir(&src).unwrap(),
            &open_dir(&dst).unwrap(),
            OsStr::new("copy"),
            &mut b,
        )
        .unwrap();
        assert_eq!(std::fs::read(dst.join("copy/module/m.ko")).unwrap(), b"ko");
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("f"), "keep").unwrap();
        std::os::unix::fs::symlink(&outside, src.join("link")).unwrap();
        let mut b = BIG;
        assert!(copy_tree(
            &open_dir(&src).unwrap(),
            &open_dir(&dst).unwrap(),
            OsStr::new("copy2"),
            &mut b,
        )
        .is_err());
        remove_tree(&open_dir(t.path()).unwrap(), OsStr::new("src")).unwrap();
        assert!(!src.exists());
        assert_eq!(std::fs::read_to_string(outside.join("f")).unwrap(), "keep");
    }
}
