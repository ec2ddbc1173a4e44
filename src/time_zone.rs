//! The local time zone, as dpkg.log and the reports write times: `TZ` when
//! set (a zoneinfo name, the path of a TZif file, or a POSIX rule), else
//! the root's `/etc/localtime`. Read directly, not through jiff's system
//! lookup, which opens every file under `/usr/share/zoneinfo` (some 1,300)
//! to find a zone by its name: that was a third of a `status` run.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use jiff::tz::TimeZone;

use crate::root::{Root, CAP_SMALL};

/// Where a zone named by `TZ` is looked up (inside the root), unless
/// `TZDIR` names another directory, as for the C library.
const ZONEINFO: &str = "/usr/share/zoneinfo";
/// The daylight saving dates the C library gives a `TZ` rule that names a
/// summer zone without them (those of its `posixrules`, America/New_York).
const DEFAULT_DATES: &str = ",M3.2.0,M11.1.0";

/// The zone of `root`: `TZ` when set, else its `/etc/localtime`; UTC when
/// neither says one (as the C library does).
pub fn of(root: &Root) -> TimeZone {
    of_with(root, std::env::var_os("TZ").as_deref())
}

/// The host's zone, read once per process: the zone the reports' times
/// are written in.
pub fn local() -> TimeZone {
    static LOCAL: OnceLock<TimeZone> = OnceLock::new();
    LOCAL.get_or_init(|| of(&Root::new("/"))).clone()
}

fn of_with(root: &Root, tz: Option<&OsStr>) -> TimeZone {
    let zone = match tz {
        // Not UTF-8: no zone name or rule can be read from it.
        Some(v) => v.to_str().and_then(|v| from_tz(root, v)),
        None => tzif(root, Path::new("/etc/localtime"), "localtime"),
    };
    zone.unwrap_or(TimeZone::UTC)
}

/// `TZ` as POSIX and the C library read it: `:` first is dropped, empty
/// is UTC, an absolute path or a zone name names a TZif file, anything
/// else is a rule (`EST5EDT,M3.2.0,M11.1.0`).
fn from_tz(root: &Root, v: &str) -> Option<TimeZone> {
    let name = v.strip_prefix(':').unwrap_or(v);
    if name.is_empty() {
        return Some(TimeZone::UTC);
    }
    let file = if name.starts_with('/') {
        Some(PathBuf::from(name))
    } else {
        let dir = std::env::var_os("TZDIR")
            .map(PathBuf::from)
            .filter(|d| d.is_absolute())
            .unwrap_or_else(|| PathBuf::from(ZONEINFO));
        is_zone_name(name).then(|| dir.join(name))
    };
    file.and_then(|f| tzif(root, &f, name))
        .or_else(|| TimeZone::posix(name).ok())
        .or_else(|| TimeZone::posix(&format!("{name}{DEFAULT_DATES}")).ok())
}

fn tzif(root: &Root, file: &Path, name: &str) -> Option<TimeZone> {
    let data = root.read(file, CAP_SMALL).ok()?;
    TimeZone::tzif(name, &data).ok()
}

/// A name such as `Europe/Berlin` or `Etc/GMT+5`: nothing that leaves
/// the zoneinfo directory (the C library allows `..` unless setuid; a
/// hook runs as root).
fn is_zone_name(n: &str) -> bool {
    n.split('/').all(|c| {
        !c.is_empty()
            && c != "."
            && c != ".."
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_+-".contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2025-06-15 15:06:40 UTC, in `tz`: hours, minutes and abbreviation.
    fn clock(tz: &TimeZone) -> String {
        jiff::Timestamp::from_second(1_750_000_000)
            .unwrap()
            .to_zoned(tz.clone())
            .strftime("%H:%M %Z")
            .to_string()
    }

    /// A TZif file (version 2) without transitions whose footer is Berlin's
    /// rule: what a zoneinfo file says after its last transition.
    fn berlin_tzif() -> Vec<u8> {
        let block = || {
            let mut b = b"TZif2".to_vec();
            b.extend([0; 15]);
            // isutcnt, isstdcnt, leapcnt, timecnt, typecnt 1, charcnt 4
            for n in [0u32, 0, 0, 0, 1, 4] {
                b.extend(n.to_be_bytes());
            }
            b.extend(3600i32.to_be_bytes()); // one type: UTC+1, not DST, "CET"
            b.extend([0, 0]);
            b.extend(b"CET\0");
            b
        };
        // Version 1's block, then version 2's (no transitions: both alike).
        let mut f = block();
        f.extend(block());
        f.extend(b"\nCET-1CEST,M3.5.0,M10.5.0/3\n");
        f
    }

    #[test]
    fn tz_names_paths_rules_and_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        let zone = |tz: Option<&str>| clock(&of_with(&root, tz.map(OsStr::new)));
        // A root without zoneinfo or /etc/localtime: rules still work,
        // names and paths fall back to UTC.
        assert_eq!(zone(Some("EST5")), "10:06 EST");
        assert_eq!(zone(Some("EST5EDT")), "11:06 EDT", "the C library's dates");
        assert_eq!(zone(Some("")), "15:06 UTC");
        assert_eq!(zone(Some(":")), "15:06 UTC");
        assert_eq!(zone(Some("Europe/Berlin")), "15:06 UTC");
        assert_eq!(zone(Some("/usr/share/zoneinfo/Europe/Berlin")), "15:06 UTC");
        assert_eq!(zone(None), "15:06 UTC");
        // The root's own files: by name, by path, and as /etc/localtime
        // (a relative link into zoneinfo, as Debian makes it).
        std::fs::create_dir_all(dir.path().join("usr/share/zoneinfo/Europe")).unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("usr/share/zoneinfo/Europe/Berlin"),
            berlin_tzif(),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "../usr/share/zoneinfo/Europe/Berlin",
            dir.path().join("etc/localtime"),
        )
        .unwrap();
        assert_eq!(zone(Some("Europe/Berlin")), "17:06 CEST");
        assert_eq!(zone(Some(":Europe/Berlin")), "17:06 CEST");
        assert_eq!(
            zone(Some("/usr/share/zoneinfo/Europe/Berlin")),
            "17:06 CEST"
        );
        assert_eq!(zone(None), "17:06 CEST");
        // Nothing outside the zoneinfo directory by name.
        assert!(!is_zone_name("../../etc/shadow"));
        assert!(!is_zone_name("Europe//Berlin"));
        assert!(is_zone_name("Etc/GMT+5"));
    }
}
