//! The local time zone, as dpkg.log and the reports write times: `TZ` when
//! set (a zoneinfo name, the path of a TZif file, or a POSIX rule), else
//! the root's `/etc/localtime`. Read directly, not through jiff's system
//! lookup, which opens every file under `/usr/share/zoneinfo` (some 1,300)
//! to find a zone by its name: that was a third of a `status` run.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use jiff::tz::TimeZone;

use crate::root::{Root, CAP_SMALL};

/// Where a zone named by `TZ` is looked up (inside the root).
const ZONEINFO: &str = "/usr/share/zoneinfo";

/// The zone of `root`: `TZ` when set, else its `/etc/localtime`; UTC when
/// neither says one (as the C library does).
pub fn of(root: &Root) -> TimeZone {
    let tz = match std::env::var("TZ") {
        Ok(v) => from_tz(root, &v),
        Err(_) => tzif(root, Path::new("/etc/localtime"), "localtime"),
    };
    tz.unwrap_or(TimeZone::UTC)
}

/// The host's zone, read once per process: the zone the reports' times
/// are written in.
pub fn local() -> TimeZone {
    static LOCAL: OnceLock<TimeZone> = OnceLock::new();
    LOCAL.get_or_init(|| of(&Root::new("/"))).clone()
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
        is_zone_name(name).then(|| Path::new(ZONEINFO).join(name))
    };
    file.and_then(|f| tzif(root, &f, name))
        .or_else(|| TimeZone::posix(name).ok())
}

fn tzif(root: &Root, file: &Path, name: &str) -> Option<TimeZone> {
    let data = root.read(file, CAP_SMALL).ok()?;
    TimeZone::tzif(name, &data).ok()
}

/// A name such as `Europe/Berlin` or `Etc/GMT+5`: nothing that leaves
/// the zoneinfo directory.
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

    fn at_noon(tz: &TimeZone) -> String {
        jiff::Timestamp::from_second(1_750_000_000)
            .unwrap()
            .to_zoned(tz.clone())
            .strftime("%H:%M %Z")
            .to_string()
    }

    #[test]
    fn tz_names_paths_rules_and_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        // A root without zoneinfo: a rule still works, a name falls back.
        assert_eq!(at_noon(&from_tz(&root, "EST5").unwrap()), "10:06 EST");
        assert_eq!(at_noon(&from_tz(&root, "").unwrap()), "15:06 UTC");
        assert!(from_tz(&root, "Europe/Berlin").is_none());
        // The root's own zoneinfo, by name and by path (the host's files).
        let Ok(berlin) = std::fs::read("/usr/share/zoneinfo/Europe/Berlin") else {
            return; // no tzdata on this machine
        };
        std::fs::create_dir_all(dir.path().join("usr/share/zoneinfo/Europe")).unwrap();
        std::fs::write(dir.path().join("usr/share/zoneinfo/Europe/Berlin"), &berlin).unwrap();
        assert_eq!(
            at_noon(&from_tz(&root, "Europe/Berlin").unwrap()),
            "17:06 CEST"
        );
        assert_eq!(
            at_noon(&from_tz(&root, ":Europe/Berlin").unwrap()),
            "17:06 CEST"
        );
        let path = "/usr/share/zoneinfo/Europe/Berlin";
        assert_eq!(at_noon(&from_tz(&root, path).unwrap()), "17:06 CEST");
        // Nothing outside the zoneinfo directory by name.
        assert!(!is_zone_name("../../etc/shadow"));
        assert!(!is_zone_name("Europe//Berlin"));
        assert!(is_zone_name("Etc/GMT+5"));
    }
}
