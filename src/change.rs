//! What happened to packages: the changes read from logs (or planned by apt),
//! folded per package into one [`Change`] each.
//!
//! Logs can be given in any order (`dpkg.log dpkg.log.1 dpkg.log.2.gz` is
//! newest first), so folding is order-independent: every event carries its
//! time and line number, and the earliest old version, the latest new version
//! and the latest unpack win whatever order the files came in.

use std::collections::{HashMap, HashSet};

use debversion::Version;
use jiff::civil::DateTime;

use crate::dpkg::PackageName;

/// One package's net change over the logs read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub package: PackageName,
    /// `None` for logs older than dpkg 1.16.2, which wrote no `:ARCH`.
    pub architecture: Option<String>,
    /// Version before the first change seen (`None`: newly installed).
    pub old: Option<Version>,
    /// Version after the last change seen (`None`: removed or purged).
    pub new: Option<Version>,
    /// When the last new version was unpacked (local time, as in dpkg.log),
    /// or the time of its unpacking line if the log lacks the status line.
    /// `None` for a change apt only plans: it will be unpacked after every
    /// build that exists now.
    pub unpacked: Option<DateTime>,
    /// When the package was last removed, if that is its final state.
    pub removed: Option<DateTime>,
    /// The unpacks in time order (the last [`MAX_STEPS`]), so a pair built
    /// between two upgrades is blamed on the version it was built against.
    pub steps: Vec<Step>,
}

/// One unpack of a new version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub old: Option<Version>,
    pub new: Version,
    pub unpacked: Option<DateTime>,
}

/// Unpacks kept per package: bounds memory on logs with years of upgrades.
pub const MAX_STEPS: usize = 16;

impl Change {
    /// A change apt has planned but dpkg has not done yet.
    pub fn planned(
        package: PackageName,
        architecture: Option<String>,
        old: Option<Version>,
        new: Option<Version>,
    ) -> Change {
        let steps = new
            .iter()
            .map(|n| Step {
                old: old.clone(),
                new: n.clone(),
                unpacked: None,
            })
            .collect();
        Change {
            package,
            architecture,
            old,
            new,
            unpacked: None,
            removed: None,
            steps,
        }
    }

    pub fn is_removal(&self) -> bool {
        self.new.is_none()
    }

    /// A kernel image or headers package (`linux-image-*`,
    /// `linux-headers-*`): its arrival or removal is news even when it
    /// feeds no build tree (a new kernel, headers going away).
    pub fn names_a_kernel(&self) -> bool {
        let name = self.package.as_str().as_bytes();
        ALWAYS.iter().any(|p| name.starts_with(p))
    }

    /// `P old → new` as shown in messages.
    pub fn describe(&self) -> String {
        format!(
            "{} {} → {}",
            self.package,
            version_or_none(self.old.as_ref()),
            version_or_none(self.new.as_ref())
        )
    }
}

pub fn version_or_none(v: Option<&Version>) -> String {
    v.map_or_else(|| "<none>".to_string(), |v| v.to_string())
}

/// An ordering key: (time, line) within one file. Ties between files are
/// broken arbitrarily; two files with events in the same second are rare.
pub type Stamp = (DateTime, u64);

/// What one log line (or history entry) says about a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<'a> {
    /// `install`/`upgrade` (or history `Install`/`Upgrade`/`Downgrade`):
    /// a new version is on its way.
    Unpacking { old: Option<&'a str>, new: &'a str },
    /// `status unpacked P NEW` after an unpacking line.
    Unpacked { version: &'a str },
    /// `remove` or `purge`.
    Removed { old: Option<&'a str> },
}

#[derive(Debug)]
struct RawStep {
    at: Stamp,
    old: Option<String>,
    new: String,
    unpacked: Option<Stamp>,
}

#[derive(Debug, Default)]
struct Entry {
    first: Option<(Stamp, Option<String>)>,
    /// Sorted by `at`, at most [`MAX_STEPS`].
    steps: Vec<RawStep>,
    removed: Option<(Stamp, Option<String>)>,
    /// The unpacking step of the current file still waiting for its
    /// `status unpacked` line: its stamp and new version.
    pending: Option<(Stamp, String)>,
}

/// Folds events into changes. Keys are `name` or `name:arch` as raw bytes so
/// that the hot loop of a replay looks up without allocating.
#[derive(Debug, Default)]
pub struct ChangeSet {
    index: HashMap<Box<[u8]>, usize>,
    entries: Vec<(Box<[u8]>, Entry)>,
    /// Package names worth recording; `None` records all.
    only: Option<HashSet<Box<[u8]>>>,
    /// The first eight bytes (zero-padded) of every name in `only` and of
    /// every [`ALWAYS`] prefix: [`ChangeSet::may_want`] rejects most names
    /// with a scan of a few integers instead of a hash.
    prefixes: Vec<u64>,
    /// How many entries have an unpack waiting for its status line: while
    /// none has, every `status` line can be skipped unread.
    pending: usize,
}

/// A name's first eight bytes as an integer, zero-padded.
fn prefix8(name: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = name.len().min(8);
    b[..n].copy_from_slice(&name[..n]);
    u64::from_le_bytes(b)
}

/// Names that always pass a filter: kernel images and headers, whose
/// removal or arrival is news even when no file list names them.
const ALWAYS: [&[u8]; 2] = [b"linux-image-", b"linux-headers-"];

impl ChangeSet {
    pub fn new() -> ChangeSet {
        ChangeSet::default()
    }

    /// A set that records only the named packages (and kernel images and
    /// headers). A replay of a year of logs then folds the few packages that
    /// can matter instead of every upgrade of every library: folding was
    /// two thirds of the time of replaying a 256 MB log.
    pub fn only(names: impl IntoIterator<Item = String>) -> ChangeSet {
        let only: HashSet<Box<[u8]>> = names
            .into_iter()
            .map(|n| n.into_bytes().into_boxed_slice())
            .collect();
        let mut prefixes: Vec<u64> = only
            .iter()
            .map(|n| prefix8(n))
            .chain(ALWAYS.iter().map(|p| prefix8(p)))
            .collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        ChangeSet {
            only: Some(only),
            prefixes,
            ..ChangeSet::default()
        }
    }

    /// Whether only some packages are recorded ([`ChangeSet::only`]).
    pub fn is_filtered(&self) -> bool {
        self.only.is_some()
    }

    /// A cheap first test for [`ChangeSet::wants`]: `false` only when `key`
    /// is certainly not wanted. Every wanted name and every `ALWAYS`
    /// prefix is at least as long as its stored prefix, so a name whose
    /// first eight bytes match none of them cannot be wanted.
    pub fn may_want(&self, key: &[u8]) -> bool {
        if self.only.is_none() {
            return true;
        }
        let name = key.split(|&c| c == b':').next().unwrap_or(key);
        self.may_want_prefix(prefix8(name)) && self.wants(key)
    }

    /// [`ChangeSet::may_want`] on a name's first eight bytes (up to `:`,
    /// zero-padded): `false` only when no name with that start is wanted.
    #[inline]
    pub fn may_want_prefix(&self, head: u64) -> bool {
        // A few dozen integers: a straight scan (vector compares, no
        // branches to mispredict) beats a binary search.
        self.only.is_none() || self.prefixes.contains(&head)
    }

    /// Whether some entry has an unpack waiting for its `status unpacked`
    /// line.
    pub fn any_pending(&self) -> bool {
        self.pending > 0
    }

    /// Whether events of `key` (`name[:arch]`) are recorded.
    pub fn wants(&self, key: &[u8]) -> bool {
        let Some(only) = &self.only else { return true };
        let name = key.split(|&c| c == b':').next().unwrap_or(key);
        only.contains(name) || ALWAYS.iter().any(|p| name.starts_with(p))
    }

    /// Forget per-file state (the pending unpacks) between two files.
    pub fn end_of_file(&mut self) {
        for (_, e) in &mut self.entries {
            e.pending = None;
        }
        self.pending = 0;
    }

    /// Whether `key` has an unpack waiting for its `status unpacked` line; lets
    /// the log reader drop the many status lines of other packages early.
    pub fn is_pending(&self, key: &[u8]) -> bool {
        self.index
            .get(key)
            .is_some_and(|&i| self.entries[i].1.pending.is_some())
    }

    fn entry(&mut self, key: &[u8]) -> usize {
        match self.index.get(key) {
            Some(&i) => i,
            None => {
                let i = self.entries.len();
                self.entries.push((key.into(), Entry::default()));
                self.index.insert(key.into(), i);
                i
            }
        }
    }

    /// Record one event. `key` is `name[:arch]` exactly as in the log.
    pub fn record(&mut self, key: &[u8], at: Stamp, event: Event<'_>) {
        let i = self.entry(key);
        let e = &mut self.entries[i].1;
        let was_pending = e.pending.is_some();
        Self::fold(e, at, event);
        match (was_pending, e.pending.is_some()) {
            (false, true) => self.pending += 1,
            (true, false) => self.pending = self.pending.saturating_sub(1),
            _ => {}
        }
    }

    fn fold(e: &mut Entry, at: Stamp, event: Event<'_>) {
        let old_of = |o: Option<&str>| o.map(str::to_string);
        match event {
            Event::Unpacking { old, new } => {
                if e.first.as_ref().is_none_or(|(s, _)| at < *s) {
                    e.first = Some((at, old_of(old)));
                }
                let pos = e.steps.partition_point(|s| s.at <= at);
                e.steps.insert(
                    pos,
                    RawStep {
                        at,
                        old: old_of(old),
                        new: new.to_string(),
                        unpacked: None,
                    },
                );
                if e.steps.len() > MAX_STEPS {
                    // Drop the oldest; the next one inherits its old version.
                    let gone = e.steps.remove(0);
                    e.steps[0].old = gone.old;
                }
                e.pending = Some((at, new.to_string()));
            }
            Event::Unpacked { version } => {
                if let Some((stamp, v)) = &e.pending {
                    if v == version {
                        let stamp = *stamp;
                        if let Some(s) = e.steps.iter_mut().find(|s| s.at == stamp) {
                            s.unpacked = Some(at);
                        }
                        e.pending = None;
                    }
                }
            }
            Event::Removed { old } => {
                if e.first.as_ref().is_none_or(|(s, _)| at < *s) {
                    e.first = Some((at, old_of(old)));
                }
                if e.removed.as_ref().is_none_or(|(s, _)| at >= *s) {
                    e.removed = Some((at, old_of(old)));
                }
                e.pending = None;
            }
        }
    }

    /// An unpack whose time is known without a status line (apt history).
    pub fn record_unpacked_now(&mut self, key: &[u8], at: Stamp, old: Option<&str>, new: &str) {
        self.record(key, at, Event::Unpacking { old, new });
        self.record(key, at, Event::Unpacked { version: new });
    }

    /// The folded changes, sorted by package name. Entries whose versions do
    /// not parse are dropped with a debug message.
    pub fn finish(self) -> Vec<Change> {
        let mut out = Vec::new();
        for (key, e) in self.entries {
            let key = String::from_utf8_lossy(&key).into_owned();
            let (name, arch) = match key.split_once(':') {
                Some((n, a)) => (n.to_string(), Some(a.to_string())),
                None => (key.clone(), None),
            };
            let Ok(package) = PackageName::new(&name) else {
                log::debug!("ignoring changes of invalid package name {name:?}");
                continue;
            };
            let parse = |v: &str| match v.parse::<Version>() {
                Ok(v) => Some(v),
                Err(_) => {
                    log::debug!("ignoring invalid version {v:?} of {key}");
                    None
                }
            };
            let mut steps = Vec::with_capacity(e.steps.len());
            for s in &e.steps {
                let Some(new) = parse(&s.new) else { continue };
                let old = match s.old.as_deref().map(parse) {
                    Some(None) => continue,
                    Some(v) => v,
                    None => None,
                };
                // A log cut before the `status unpacked` line: the unpacking
                // line's own time is the best estimate.
                let unpacked = Some(s.unpacked.unwrap_or(s.at).0);
                steps.push(Step { old, new, unpacked });
            }
            let last_step = e.steps.last().map(|s| s.at);
            let removed_last = match (&e.removed, last_step) {
                (Some((r, _)), Some(n)) => *r >= n,
                (Some(_), None) => true,
                _ => false,
            };
            let old = match &e.first {
                Some((_, Some(v))) => match parse(v) {
                    Some(v) => Some(v),
                    None => continue,
                },
                _ => None,
            };
            let (new, unpacked, removed) = if removed_last {
                (None, None, e.removed.map(|(s, _)| s.0))
            } else {
                let Some(last) = steps.last() else { continue };
                (Some(last.new.clone()), last.unpacked, None)
            };
            out.push(Change {
                package,
                architecture: arch,
                old,
                new,
                unpacked,
                removed,
                steps,
            });
        }
        out.sort_by(|a, b| {
            (a.package.as_str(), &a.architecture).cmp(&(b.package.as_str(), &b.architecture))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime {
        s.parse().unwrap()
    }

    /// An `Unpacking` line at `at`, sequence `seq`.
    fn unpacking(set: &mut ChangeSet, k: &[u8], at: &str, seq: u64, old: &str, new: &str) {
        let old = Some(old);
        set.record(k, (t(at), seq), Event::Unpacking { old, new });
    }

    #[test]
    fn folding_ignores_file_order() {
        // Newest file first, as `dpkg.log*` globs.
        let mut set = ChangeSet::new();
        let k = b"linux-kbuild-6.1:amd64";
        unpacking(&mut set, k, "2026-03-01T10:00:00", 1, "2", "3");
        let unpacked = (t("2026-03-01T10:00:01"), 2);
        set.record(k, unpacked, Event::Unpacked { version: "3" });
        set.end_of_file();
        unpacking(&mut set, k, "2026-01-01T10:00:00", 1, "1", "2");
        let earlier = (t("2026-01-01T10:00:01"), 2);
        set.record(k, earlier, Event::Unpacked { version: "2" });
        let c = set.finish();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].describe(), "linux-kbuild-6.1 1 → 3");
        assert_eq!(c[0].unpacked, Some(t("2026-03-01T10:00:01")));
    }

    #[test]
    fn removal_after_upgrade_is_a_removal() {
        let mut set = ChangeSet::new();
        let k = b"linux-headers-6.1.0-9-amd64:amd64";
        set.record_unpacked_now(k, (t("2026-01-01T10:00:00"), 1), Some("1"), "2");
        set.record(
            k,
            (t("2026-01-02T10:00:00"), 9),
            Event::Removed { old: Some("2") },
        );
        let c = set.finish();
        assert!(c[0].is_removal());
        assert_eq!(c[0].removed, Some(t("2026-01-02T10:00:00")));
    }

    #[test]
    fn unpacked_status_of_another_version_does_not_count() {
        let mut set = ChangeSet::new();
        let k = b"pp:amd64";
        unpacking(&mut set, k, "2026-01-01T10:00:00", 1, "1", "2");
        // dpkg logs the *old* version as unpacked while it deconfigures it.
        set.record(
            k,
            (t("2026-01-01T10:00:05"), 2),
            Event::Unpacked { version: "1" },
        );
        assert!(set.is_pending(k));
        // A log cut before the right status line: the unpack line's time stands in.
        assert_eq!(set.finish()[0].unpacked, Some(t("2026-01-01T10:00:00")));
    }
}
