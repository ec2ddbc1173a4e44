//! dpkg's database under the root: `var/lib/dpkg/status` and the file lists
//! `var/lib/dpkg/info/P[:ARCH].list`.
//!
//! The status file of a desktop holds thousands of paragraphs and we need a
//! handful, so paragraphs are split with a byte search and only those whose
//! `Package:` is wanted are parsed by `deb822-lossless` (parsing all of a
//! 6,000-package file with it costs tens of milliseconds; see docs/benchmarks.md
//! benchmark table).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use debversion::Version;
use memchr::memmem;

use crate::root::{read_regular, Root, CAP_LIST, CAP_STATUS};
use crate::Error;

pub const STATUS: &str = "/var/lib/dpkg/status";
pub const INFO_DIR: &str = "/var/lib/dpkg/info";
/// The locks dpkg (`lock`) and apt around it (`lock-frontend`) hold while
/// they change the system.
pub const LOCKS: [&str; 2] = ["/var/lib/dpkg/lock", "/var/lib/dpkg/lock-frontend"];
/// The kernel's table of file locks.
const PROC_LOCKS: &str = "/proc/locks";

pub use crate::name::PackageName;

/// An architecture as dpkg writes it (`amd64`, `all`, `i386`).
pub fn valid_arch(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= 32
        && a.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// Whether some process holds one of dpkg's [`LOCKS`] under `root`, as
/// `/proc/locks` tells (read only: trying the lock could make dpkg fail
/// to take it). `false` when it cannot be told.
pub fn locked(root: &Root) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(table) = read_regular(Path::new(PROC_LOCKS), crate::root::CAP_SMALL) else {
        return false;
    };
    let files: Vec<(u32, u32, u64)> = LOCKS
        .iter()
        .filter_map(|l| root.inside(l).ok())
        .filter_map(|p| std::fs::symlink_metadata(p).ok())
        .map(|m| {
            (
                rustix::fs::major(m.dev()),
                rustix::fs::minor(m.dev()),
                m.ino(),
            )
        })
        .collect();
    let table = String::from_utf8_lossy(&table);
    let held = locks_held(&table).any(|held| files.contains(&held));
    held
}

/// The files `/proc/locks` lists as locked (not waited for: `->` lines),
/// as (major, minor, inode): `1: POSIX ADVISORY WRITE PID MAJ:MIN:INODE
/// START END`, the device numbers in hex.
fn locks_held(table: &str) -> impl Iterator<Item = (u32, u32, u64)> + '_ {
    table.lines().filter_map(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.get(1) == Some(&"->") {
            return None;
        }
        let mut id = w.get(5)?.split(':');
        let major = u32::from_str_radix(id.next()?, 16).ok()?;
        let minor = u32::from_str_radix(id.next()?, 16).ok()?;
        let inode = id.next()?.parse().ok()?;
        Some((major, minor, inode))
    })
}

/// One package as the status file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub name: PackageName,
    pub architecture: Option<String>,
    pub version: Version,
    /// The third word of `Status:` (`installed`, `unpacked`, `config-files`…).
    pub state: String,
}

impl Installed {
    /// Files present on disk: anything unpacked, configured or half-way there.
    pub fn has_files(&self) -> bool {
        !matches!(self.state.as_str(), "not-installed" | "config-files")
    }
}

/// Read the paragraphs of `status` whose package name passes `wanted`.
pub fn read_status(root: &Root, wanted: impl Fn(&str) -> bool) -> Result<Vec<Installed>, Error> {
    let data = root.read(STATUS, CAP_STATUS)?;
    Ok(parse_status(&data, wanted))
}

/// Parse a status file's bytes; see [`read_status`]. Broken paragraphs are
/// skipped with a debug message.
pub fn parse_status(data: &[u8], wanted: impl Fn(&str) -> bool) -> Vec<Installed> {
    let mut out = Vec::new();
    let mut start = 0;
    let finder = memmem::Finder::new(b"\n\n");
    while start < data.len() {
        let end = finder
            .find(&data[start..])
            .map_or(data.len(), |i| start + i + 1);
        let para = &data[start..end];
        start = end + 1;
        let Some(name) = field_prefix(para, b"Package:") else {
            continue;
        };
        if !wanted(name) {
            continue;
        }
        match parse_paragraph(para) {
            Some(p) => out.push(p),
            None => log::debug!("status: paragraph of {name:?} is incomplete, skipped"),
        }
    }
    out
}

/// The value of `field` when it is the paragraph's first line, as dpkg writes
/// it; a cheap look before any real parsing.
fn field_prefix<'a>(para: &'a [u8], field: &[u8]) -> Option<&'a str> {
    let para = para.strip_prefix(b"\n").unwrap_or(para);
    let rest = para.strip_prefix(field)?;
    let end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).ok().map(str::trim)
}

fn parse_paragraph(para: &[u8]) -> Option<Installed> {
    // deb822-lossless 0.2 (Debian 13's) panics when a line (it also breaks
    // lines at '\r') begins with characters that start no field and no
    // continuation and then a multibyte one: it slices one byte off it.
    // dpkg writes every line starting with a field name or a blank, so a
    // paragraph with another line is garbage, skipped before it is parsed.
    if para.split(|&b| b == b'\n' || b == b'\r').any(|l| {
        l.first()
            .is_some_and(|&b| !(b.is_ascii_alphanumeric() || b == b' ' || b == b'\t'))
    }) {
        return None;
    }
    let text = std::str::from_utf8(para).ok()?;
    let (doc, errors) = deb822_lossless::Deb822::from_str_relaxed(text);
    if !errors.is_empty() {
        log::debug!("status: {}", errors.join("; "));
    }
    let p = doc.paragraphs().next()?;
    let name = PackageName::new(p.get("Package")?.trim()).ok()?;
    let version = p.get("Version")?.trim().parse().ok()?;
    let state = p.get("Status")?.split_whitespace().nth(2)?.to_string();
    let architecture = p
        .get("Architecture")
        .map(|a| a.trim().to_string())
        .filter(|a| valid_arch(a));
    Some(Installed {
        name,
        architecture,
        version,
        state,
    })
}

/// The host path of a package's file list: `P:ARCH.list` for Multi-Arch: same
/// packages, `P.list` otherwise.
/// The info directory is resolved inside the root; a list that is a link is
/// not taken.
pub fn list_path(root: &Root, name: &PackageName, arch: Option<&str>) -> Option<PathBuf> {
    let info = root.resolve(INFO_DIR).ok()?;
    let is_file = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file());
    if let Some(a) = arch.filter(|a| valid_arch(a)) {
        let p = info.join(format!("{name}:{a}.list"));
        if is_file(&p) {
            return Some(p);
        }
    }
    let p = info.join(format!("{name}.list"));
    is_file(&p).then_some(p)
}

/// A package's file list, read whole (one read of a few hundred kB at most),
/// and its mtime: dpkg rewrites the list when it unpacks the package.
pub struct FileList {
    pub path: PathBuf,
    pub data: Vec<u8>,
    pub modified: Option<SystemTime>,
}

pub fn read_list(path: &Path) -> Result<FileList, Error> {
    let data = read_regular(path, CAP_LIST)?;
    let modified = std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .ok();
    Ok(FileList {
        path: path.to_path_buf(),
        data,
        modified,
    })
}

impl FileList {
    /// Whether the list holds `dir` itself or a path below it. `dir` is an
    /// in-root absolute path without trailing slash.
    pub fn touches(&self, dir: &[u8]) -> bool {
        memmem::find_iter(&self.data, dir).any(|i| {
            let at_line_start = i == 0 || self.data[i - 1] == b'\n';
            let after = self.data.get(i + dir.len());
            at_line_start && matches!(after, None | Some(b'\n') | Some(b'/'))
        })
    }
}

/// Every `*.list` in the info directory, as (package, arch, path).
pub fn all_lists(root: &Root) -> Result<Vec<(PackageName, Option<String>, PathBuf)>, Error> {
    let dir = root
        .resolve(INFO_DIR)
        .map_err(|e| Error::io(Path::new(INFO_DIR), e))?;
    let rd = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut out = Vec::new();
    for ent in rd.flatten() {
        let name = ent.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".list")) else {
            continue;
        };
        let (pkg, arch) = match stem.split_once(':') {
            Some((p, a)) => (p, Some(a.to_string())),
            None => (stem, None),
        };
        match PackageName::new(pkg) {
            Ok(p) => out.push((p, arch, ent.path())),
            Err(_) => log::debug!("ignoring {}: not a package name", ent.path().display()),
        }
    }
    out.sort();
    Ok(out)
}

/// Compare two Debian versions with `debversion`; unparsable ones compare
/// as strings, consistently and without panicking. The one comparison of
/// version strings (apt's streams, kernel releases).
pub fn compare_versions(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.trim().parse::<Version>(), b.trim().parse::<Version>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}

/// Index status entries by name for lookups.
pub fn by_name(list: Vec<Installed>) -> HashMap<String, Vec<Installed>> {
    let mut m: HashMap<String, Vec<Installed>> = HashMap::new();
    for i in list {
        m.entry(i.name.to_string()).or_default().push(i);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines_name_the_locked_files() {
        let table = "1: POSIX  ADVISORY  WRITE 4242 fe:01:1311 0 EOF\n1: -> POSIX  ADVISORY  WRITE 4243 fe:01:1312 0 EOF\n2: OFDLCK ADVISORY  WRITE -1 08:10:99 0 0\n3: FLOCK garbage\n";
        let held: Vec<_> = locks_held(table).collect();
        assert_eq!(held, [(0xfe, 1, 1311), (8, 16, 99)]);
    }

    /// A lock another process takes (dpkg takes `lock` with fcntl) is
    /// seen; a free one is not.
    #[test]
    fn a_held_dpkg_lock_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        std::fs::create_dir_all(dir.path().join("var/lib/dpkg")).unwrap();
        let lock = dir.path().join("var/lib/dpkg/lock");
        std::fs::write(&lock, "").unwrap();
        assert!(!locked(&root));
        let mut holder = std::process::Command::new("flock")
            .arg("--no-fork")
            .arg(&lock)
            .args(["sleep", "30"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let seen = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            locked(&root)
        });
        holder.kill().unwrap();
        holder.wait().unwrap();
        assert!(seen, "the held lock was not seen in /proc/locks");
    }

    const STATUS_TEXT: &[u8] = b"Package: hello
Status: install ok installed
Architecture: amd64
Version: 2.10-3
Description: x
 continued

Package: linux-kbuild-6.1
Status: install ok installed
Priority: optional
Architecture: amd64
Source: linux
Version: 6.1.192-2
Depends: libc6 (>= 2.34)

Package: linux-headers-6.1.0-9-amd64
Status: deinstall ok config-files
Architecture: amd64
Version: 6.1.27-1

Package: broken
Status: install ok installed
";

    /// Regression (found by the `status` fuzz target): a line starting
    /// with a multibyte character panicked inside deb822-lossless 0.2.
    #[test]
    fn a_line_starting_with_a_multibyte_character_is_no_panic() {
        let data =
            "Package: kmod\n\u{5c5}\u{f}Status: install ok installed\nVersion: 30+20221128-1\n\n\
                    Package: hello\nStatus: install ok installed\nVersion: 2.10-3\n";
        let all = parse_status(data.as_bytes(), |_| true);
        let names: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["hello"]);
        // After a byte that starts nothing, or after a '\r'.
        for odd in ["\u{b}\u{5c5}", ":\u{5c5}", "Status: x\r\u{5c5}"] {
            let data = format!("Package: kmod\n{odd}\nVersion: 1\nStatus: install ok installed\n");
            assert!(
                parse_status(data.as_bytes(), |_| true).is_empty(),
                "{odd:?}"
            );
        }
    }

    #[test]
    fn only_wanted_paragraphs_are_parsed() {
        let got = parse_status(STATUS_TEXT, |n| n.starts_with("linux-") || n == "broken");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].name.as_str(), "linux-kbuild-6.1");
        assert_eq!(got[0].version.to_string(), "6.1.192-2");
        assert!(got[0].has_files());
        assert!(!got[1].has_files());
    }

    #[test]
    fn touches_matches_whole_components() {
        let l = FileList {
            path: PathBuf::new(),
            data: b"/.\n/usr\n/usr/lib/linux-kbuild-6.1\n/usr/lib/linux-kbuild-6.1/scripts/x\n"
                .to_vec(),
            modified: None,
        };
        assert!(l.touches(b"/usr/lib/linux-kbuild-6.1/scripts"));
        assert!(l.touches(b"/usr/lib/linux-kbuild-6.1"));
        assert!(!l.touches(b"/usr/lib/linux-kbuild-6"));
        assert!(!l.touches(b"/usr/lib/linux-kbuild-6.1/tools"));
    }

    #[test]
    fn debian_version_compare() {
        use std::cmp::Ordering::*;
        // `A op B` a line; `''` is the empty version.
        let table = "6.1.192-2 > 6.1.176-1
            1.0 = 1.0
            1.0~rc1 < 1.0
            1.0 < 1.0+b1
            1:0.9 > 2.0
            2.10-3 < 2.10-10
            1.0a > 1.0
            1.01 = 1.1
            0.58+deb12u7 > 0.58+deb12u6
            '' = ''
            ~~ < ~
            99999999999999999999999:1 > 1:1
            a:b-c = a:b-c";
        for line in table.lines() {
            let [a, op, b] = <[&str; 3]>::try_from(line.split_whitespace().collect::<Vec<_>>())
                .expect("three words")
                .map(|w| if w == "''" { "" } else { w });
            let want = match op {
                "<" => Less,
                "=" => Equal,
                _ => Greater,
            };
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }
}
