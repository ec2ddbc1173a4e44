//! dkms-hook's own state in `/var/lib/dkms-hook/`: the dpkg.log cursor
//! (its type and reading in [`crate::dpkg_log::cursor`]), the queue of
//! pending pairs, the failures, the findings, backups of dkms build
//! directories, kept logs, and the lock that serialises runs (notes of
//! running builds are the rebuild's: [`crate::rebuild::builds`]).
//!
//! Everything here is read back as untrusted input: every file goes through
//! [`crate::state_dir::Dir`] (no-follow, relative to the directory's fd,
//! capped), every queue or failure entry is checked again through the same
//! validating types the dkms-tree reader uses, and one that does not
//! validate is dropped with a warning. The order of writes is what makes a
//! killed run harmless: the queue is saved before the cursor moves past the
//! changes that filled it, and a pair leaves the queue only after it was
//! installed (or its working module was put back).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::kernel::KernelRelease;
use crate::model::{Cause, Hold};
use crate::pair::PairId;
use crate::root::{Root, CAP_STATE};
use crate::state_dir::Dir;
use crate::Error;

mod pair_dirs;

pub use crate::dpkg_log::cursor::Cursor;
pub use crate::state_dir::{STATE_DIR, STATE_VERSION};
/// The latest time a state file may name (9999-12-31): later ones are
/// forged or corrupt, and would overflow time arithmetic.
pub const MAX_TIME: u64 = 253_402_300_799;
/// At most this many entries of a list are read back: more come from no
/// real system (one per module version and kernel).
pub const MAX_ENTRIES: usize = 4096;
/// Where the previous build of each pair is kept for `dkms-hook rollback`:
/// `previous/M/V/K/ARCH`, laid out as a backup.
pub const PREVIOUS: &str = "previous";
/// The held pairs (`crate::model::Hold`).
pub const HOLDS: &str = "holds.json";
/// The safe rebuild's backups: `backups/M/V/K/ARCH`.
pub const BACKUPS: &str = "backups";

/// A pair waiting to be rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedPair {
    #[serde(flatten)]
    pub id: PairId,
    /// The changes that made it stale.
    #[serde(deserialize_with = "causes_or_prose")]
    pub because: Vec<Cause>,
    /// Seconds since the epoch of the change that made it stale: a pair whose
    /// module and installed copy are newer than this is done.
    pub stale_since: u64,
}

/// A pair whose last rebuild failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    #[serde(flatten)]
    pub id: PairId,
    #[serde(deserialize_with = "causes_or_prose")]
    pub because: Vec<Cause>,
    /// In-root path of the kept copy of make.log.
    pub make_log: String,
    pub exit_status: Option<i32>,
    pub time: u64,
    /// False when the working module could not be put back: its backup is
    /// kept (`backup`) and the pair stays queued until a run restores it.
    #[serde(default = "yes")]
    pub restored: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
}

fn yes() -> bool {
    true
}

/// Causes as stored since 0.2; the prose `because` of 0.1's state files
/// cannot be parsed back and reads as "no causes known" (the pair itself
/// is kept).
fn causes_or_prose<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Cause>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Causes(Vec<Cause>),
        Prose(String),
    }
    Ok(match Stored::deserialize(d)? {
        Stored::Causes(c) => c,
        Stored::Prose(text) => {
            log::debug!("causes stored as prose by an older version: {text}");
            Vec::new()
        }
    })
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Queue {
    pub version: u32,
    pub pending: Vec<QueuedPair>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Failures {
    pub version: u32,
    pub failed: Vec<Failure>,
}

/// A pair the last full check found broken or unloadable after the reboot
/// (`findings.json`, written by the runs that judge every pair): what the
/// login notice shows besides failures and the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Findings written before they carried `arch` are dropped on reading
    /// ([`State::findings`]); the next full check writes them again.
    #[serde(flatten)]
    pub id: PairId,
    pub problem: Problem,
    pub time: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Problem {
    /// Its vermagic names another kernel.
    Broken,
    /// Unsigned where signatures are enforced.
    Unsigned,
    /// Signed with dkms's key, which is not enrolled.
    KeyNotEnrolled,
}

#[derive(Debug, Serialize)]
struct Findings<'a> {
    version: u32,
    found: &'a [Finding],
}

/// An entry of a queue or failure list, checked beyond its types.
pub(crate) trait Entry: for<'de> Deserialize<'de> {
    fn times(&self) -> [u64; 1];

    /// What the types do not check.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

impl Entry for QueuedPair {
    fn times(&self) -> [u64; 1] {
        [self.stale_since]
    }
}

impl Entry for Finding {
    fn times(&self) -> [u64; 1] {
        [self.time]
    }
}

impl Entry for Failure {
    fn times(&self) -> [u64; 1] {
        [self.time]
    }
}

impl Entry for Hold {
    fn times(&self) -> [u64; 1] {
        [self.since]
    }

    fn check(&self) -> Result<(), String> {
        if Hold::clean_reason(&self.reason) != self.reason {
            return Err("a reason that is not one line of at most 200 bytes".into());
        }
        Ok(())
    }
}

/// The entries of `list` in `value` that validate; each one that does not
/// is dropped with a warning naming the file and its position.
pub(crate) fn valid_entries<T: Entry>(
    value: &serde_json::Value,
    list: &str,
    path: &Path,
) -> Vec<T> {
    let Some(items) = value.get(list).and_then(serde_json::Value::as_array) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if i >= MAX_ENTRIES {
            log::warn!(
                "{}: dropping {list} entries after the first {MAX_ENTRIES}",
                path.display()
            );
            break;
        }
        match T::deserialize(item) {
            Ok(e) if e.times().iter().any(|t| *t > MAX_TIME) => log::warn!(
                "{}: dropping {list} entry {}: time out of range",
                path.display(),
                i + 1
            ),
            Ok(e) => match e.check() {
                Ok(()) => out.push(e),
                Err(why) => {
                    log::warn!("{}: dropping {list} entry {}: {why}", path.display(), i + 1)
                }
            },
            Err(e) => log::warn!("{}: dropping {list} entry {}: {e}", path.display(), i + 1),
        }
    }
    out
}

/// Drop, quietly, the entries of `list` written before they carried the
/// architecture: a finding is a cache of the last full check, which writes
/// it again, so an old one is not worth a warning on every login.
fn without_arch_dropped(value: &mut serde_json::Value, list: &str) {
    if let Some(items) = value
        .get_mut(list)
        .and_then(serde_json::Value::as_array_mut)
    {
        items.retain(|item| {
            let old = item.is_object() && item.get("arch").is_none();
            if old {
                log::debug!("dropping a {list} entry without arch, from an older dkms-hook");
            }
            !old
        });
    }
}

/// The state directory of one root.
#[derive(Debug, Clone)]
pub struct State {
    /// Host path, resolved inside the root; empty when it cannot be
    /// (`unresolved` says why).
    path: PathBuf,
    /// Why the state directory has no path inside the root (a link loop
    /// such as `var -> /var`): every use of it is then this error, never a
    /// fallback to a path the host would resolve.
    unresolved: Option<String>,
    root: Root,
}

/// Held while a run works; dropping it releases the lock.
pub struct Lock {
    _file: File,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Seconds since the epoch as a time, saturating at [`MAX_TIME`].
pub fn at_secs(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs.min(MAX_TIME))
}

impl State {
    pub fn new(root: &Root) -> State {
        let (path, unresolved) = match crate::state_dir::locate(root) {
            Ok(p) => (p, None),
            Err(e) => (PathBuf::new(), Some(e)),
        };
        State {
            path,
            unresolved,
            root: root.clone(),
        }
    }

    /// Host path of the state directory (empty when it has none inside
    /// the root: opening it then fails).
    pub fn dir(&self) -> &Path {
        &self.path
    }

    /// The state directory, opened for reading only (see
    /// [`Dir::open_existing`]); `None` also when it has no path inside the
    /// root.
    pub fn open_existing(&self) -> Option<Dir> {
        if self.unresolved.is_some() {
            return None;
        }
        Dir::open_existing(&self.path)
    }

    pub fn root(&self) -> &Root {
        &self.root
    }

    /// The state directory, opened and checked (created if missing).
    pub fn open(&self) -> Result<Dir, Error> {
        if let Some(why) = &self.unresolved {
            return Err(Error::UnsafeStateDir {
                path: self.root.host(STATE_DIR),
                why: format!("cannot be resolved inside the root: {why}"),
            });
        }
        Dir::open_top(&self.path)
    }

    fn lock_file(&self) -> Result<File, Error> {
        self.open()?.create("lock", true)
    }

    /// Wait for and take the run lock.
    pub fn lock(&self) -> Result<Lock, Error> {
        let file = self.lock_file()?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::io(&self.path.join("lock"), e.into()))?;
        self.after_lock();
        Ok(Lock { _file: file })
    }

    /// Take the run lock, waiting at most `wait`; `None` if another run
    /// still holds it then.
    pub fn lock_within(&self, wait: Duration) -> Result<Option<Lock>, Error> {
        let file = self.lock_file()?;
        let deadline = Instant::now() + wait;
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
                Err(e) => return Err(Error::io(&self.path.join("lock"), e.into())),
            }
        }
        self.after_lock();
        Ok(Some(Lock { _file: file }))
    }

    /// What a run does first with the lock held: carry out removals noted
    /// while another run was busy. (Stopping a killed run's leftover builds
    /// is the rebuild's: [`crate::rebuild::builds::lock`].)
    fn after_lock(&self) {
        let Ok(dir) = self.open() else { return };
        let Some(forget) = dir.existing_subdir("forget") else {
            return;
        };
        for name in forget.names() {
            match KernelRelease::new(&name) {
                Ok(k) => match self.forget_kernel(&k) {
                    Ok(()) => forget.remove(&name),
                    Err(e) => log::warn!("cannot forget removed kernel {k}: {e}"),
                },
                Err(_) => forget.remove(&name),
            }
        }
    }

    /// Note that kernel `k` was removed while another run held the lock:
    /// the next locked run forgets its state.
    pub fn request_forget(&self, k: &KernelRelease) -> Result<(), Error> {
        self.open()?.subdir("forget")?.write_atomic(k.as_str(), b"")
    }

    /// The JSON value of `name` with a version we understand. A corrupt file
    /// cannot be trusted or repaired: it is moved to `NAME.corrupt` for a
    /// look and the run starts afresh (`status` and `sync` still find every
    /// stale pair from the file system). A file of a newer dkms-hook is an
    /// error: it is left alone.
    pub(crate) fn read_value(&self, name: &str) -> Result<Option<serde_json::Value>, Error> {
        let dir = self.open()?;
        let path = self.path.join(name);
        let Some(text) = dir.read(name, CAP_STATE)? else {
            return Ok(None);
        };
        let value: serde_json::Value = match serde_json::from_slice(&text) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            Ok(_) => return self.set_aside_corrupt(&dir, name, "not an object".into()),
            Err(e) => return self.set_aside_corrupt(&dir, name, e.to_string()),
        };
        let version = value
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if version > u64::from(STATE_VERSION) {
            return Err(Error::StateTooNew { path, version });
        }
        Ok(Some(value))
    }

    /// Move a corrupt file aside and return the error saying so.
    fn set_aside_corrupt<T>(&self, dir: &Dir, name: &str, msg: String) -> Result<T, Error> {
        let aside = format!("{name}.corrupt");
        dir.remove_tree(&aside)?;
        dir.rename(name, &aside)?;
        Err(Error::StateCorrupt {
            path: self.path.join(name),
            msg: format!("{msg}; set aside as {aside}"),
        })
    }

    /// A list file: a corrupt one counts as empty, with a warning.
    pub(crate) fn read_list_value(&self, name: &str) -> Result<Option<serde_json::Value>, Error> {
        match self.read_value(name) {
            Err(e @ Error::StateCorrupt { .. }) => {
                log::warn!("{e}");
                Ok(None)
            }
            r => r,
        }
    }

    /// Write `name` atomically.
    pub(crate) fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), Error> {
        let text = serde_json::to_vec_pretty(value).map_err(|e| Error::StateCorrupt {
            path: self.path.join(name),
            msg: e.to_string(),
        })?;
        self.open()?.write_atomic(name, &text)
    }

    /// The saved cursor; a corrupt one is an error the caller recovers from.
    pub fn cursor(&self) -> Result<Option<Cursor>, Error> {
        let path = self.path.join("cursor.json");
        let Some(v) = self.read_value("cursor.json")? else {
            return Ok(None);
        };
        serde_json::from_value(v)
            .map(Some)
            .map_err(|e| Error::StateCorrupt {
                path,
                msg: e.to_string(),
            })
    }

    /// Without fsync ([`Dir::write_unsynced`]): a cursor lost in a crash
    /// only makes the next run read its span again, and the queue that
    /// span fed was synced before the cursor moved.
    pub fn save_cursor(&self, c: &Cursor) -> Result<(), Error> {
        let text = serde_json::to_vec_pretty(c).map_err(|e| Error::StateCorrupt {
            path: self.path.join("cursor.json"),
            msg: e.to_string(),
        })?;
        self.open()?.write_unsynced("cursor.json", &text)
    }

    pub fn queue(&self) -> Result<Queue, Error> {
        let path = self.path.join("queue.json");
        Ok(Queue {
            version: STATE_VERSION,
            pending: self
                .read_list_value("queue.json")?
                .map(|v| valid_entries(&v, "pending", &path))
                .unwrap_or_default(),
        })
    }

    pub fn save_queue(&self, q: &Queue) -> Result<(), Error> {
        self.write_json(
            "queue.json",
            &Queue {
                version: STATE_VERSION,
                pending: q.pending.clone(),
            },
        )
    }

    pub fn failures(&self) -> Result<Failures, Error> {
        let path = self.path.join("failures.json");
        Ok(Failures {
            version: STATE_VERSION,
            failed: self
                .read_list_value("failures.json")?
                .map(|v| valid_entries(&v, "failed", &path))
                .unwrap_or_default(),
        })
    }

    pub fn save_failures(&self, f: &Failures) -> Result<(), Error> {
        self.write_json(
            "failures.json",
            &Failures {
                version: STATE_VERSION,
                failed: f.failed.clone(),
            },
        )
    }

    /// The last full check's findings; none when there was none or the
    /// file is unusable (entries are checked as those of the queue).
    pub fn findings(&self) -> Vec<Finding> {
        let path = self.path.join("findings.json");
        self.read_list_value("findings.json")
            .ok()
            .flatten()
            .map(|mut v| {
                without_arch_dropped(&mut v, "found");
                valid_entries(&v, "found", &path)
            })
            .unwrap_or_default()
    }

    /// Save the findings, unless they are those saved already (`status`
    /// as root calls this every time: no write, no fsync, when nothing
    /// changed).
    pub fn save_findings(&self, found: &[Finding]) -> Result<(), Error> {
        let same = |a: &Finding, b: &Finding| a.id == b.id && a.problem == b.problem;
        let saved = self.findings();
        if saved.len() == found.len() && saved.iter().zip(found).all(|(a, b)| same(a, b)) {
            return Ok(());
        }
        let f = Findings {
            version: STATE_VERSION,
            found,
        };
        self.write_json("findings.json", &f)
    }

    /// The held pairs; none when there are none or the file is unusable
    /// (entries are checked as those of the queue).
    pub fn holds(&self) -> Result<Vec<Hold>, Error> {
        let path = self.path.join(HOLDS);
        Ok(self
            .read_list_value(HOLDS)?
            .map(|v| valid_entries(&v, "held", &path))
            .unwrap_or_default())
    }

    pub fn save_holds(&self, held: &[Hold]) -> Result<(), Error> {
        #[derive(Serialize)]
        struct Holds<'a> {
            version: u32,
            held: &'a [Hold],
        }
        self.write_json(
            HOLDS,
            &Holds {
                version: STATE_VERSION,
                held,
            },
        )
    }

    /// The `logs/` directory.
    pub fn logs(&self) -> Result<Dir, Error> {
        self.open()?.subdir("logs")
    }

    /// Forget a removed kernel: its queue entries, failures, holds, backups
    /// and previous builds.
    /// Call with the lock held. Only real directories are entered: a link
    /// under `backups/` is removed, never followed.
    pub fn forget_kernel(&self, kernel: &KernelRelease) -> Result<(), Error> {
        let mut q = self.queue()?;
        q.pending.retain(|p| &p.id.kernel != kernel);
        self.save_queue(&q)?;
        let mut f = self.failures()?;
        f.failed.retain(|p| &p.id.kernel != kernel);
        self.save_failures(&f)?;
        let mut held = self.holds()?;
        if held.iter().any(|h| &h.id.kernel == kernel) {
            held.retain(|h| &h.id.kernel != kernel);
            self.save_holds(&held)?;
        }
        for top in [BACKUPS, PREVIOUS] {
            let Some(top) = self.open()?.existing_subdir(top) else {
                continue;
            };
            for m in top.names() {
                let Some(mdir) = top.existing_subdir(&m) else {
                    continue;
                };
                for v in mdir.names() {
                    if let Some(vdir) = mdir.existing_subdir(&v) {
                        vdir.remove_tree(kernel.as_str())?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn id(m: &str, k: &str) -> PairId {
        PairId {
            module: crate::name::ModuleName::new(m).unwrap(),
            version: crate::name::ModuleVersion::new("1").unwrap(),
            kernel: KernelRelease::new(k).unwrap(),
            arch: crate::name::DkmsArch::new("x86_64").unwrap(),
        }
    }

    fn pair(m: &str) -> QueuedPair {
        QueuedPair {
            id: id(m, "k"),
            because: vec![],
            stale_since: 5,
        }
    }

    #[test]
    fn state_files_round_trip_and_refuse_newer_versions() {
        let t = tempfile::tempdir().unwrap();
        let s = State::new(&Root::new(t.path()));
        assert_eq!(
            s.queue().unwrap(),
            Queue {
                version: 1,
                pending: vec![]
            }
        );
        let q = Queue {
            version: 1,
            pending: vec![pair("m")],
        };
        s.save_queue(&q).unwrap();
        assert_eq!(s.queue().unwrap(), q);
        let meta = fs::metadata(s.dir().join("queue.json")).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o644
        );
        fs::write(
            s.dir().join("queue.json"),
            r#"{"version": 99, "pending": []}"#,
        )
        .unwrap();
        assert!(matches!(
            s.queue(),
            Err(Error::StateTooNew { version: 99, .. })
        ));
        fs::write(s.dir().join("queue.json"), "{garbage").unwrap();
        assert_eq!(s.queue().unwrap().pending, vec![]);
        assert_eq!(
            fs::read(s.dir().join("queue.json.corrupt")).unwrap(),
            b"{garbage"
        );
    }

    #[test]
    fn entries_that_do_not_validate_are_dropped_one_by_one() {
        let t = tempfile::tempdir().unwrap();
        let s = State::new(&Root::new(t.path()));
        s.save_queue(&Queue {
            version: 1,
            pending: vec![pair("good")],
        })
        .unwrap();
        let mut v: serde_json::Value =
            serde_json::from_slice(&fs::read(s.dir().join("queue.json")).unwrap()).unwrap();
        let good = v["pending"][0].clone();
        let mut evil = good.clone();
        evil["module"] = "../../../../tmp/x".into();
        let mut flag = good.clone();
        flag["version"] = "-rf".into();
        let mut late = good.clone();
        late["stale_since"] = 9_223_372_036_854_775_807u64.into();
        v["pending"] = serde_json::json!([evil, flag, good, late, 7]);
        fs::write(s.dir().join("queue.json"), v.to_string()).unwrap();
        let q = s.queue().unwrap();
        assert_eq!(q.pending, vec![pair("good")]);
    }

    #[test]
    fn findings_are_checked_when_read_back() {
        let t = tempfile::tempdir().unwrap();
        let s = State::new(&Root::new(t.path()));
        let good = Finding {
            id: id("m", "6.1.0-50-amd64"),
            problem: Problem::Broken,
            time: 5,
        };
        s.save_findings(std::slice::from_ref(&good)).unwrap();
        assert_eq!(s.findings(), vec![good.clone()]);
        // The same findings again (a later time): the file is not rewritten.
        use std::os::unix::fs::MetadataExt;
        let ino = |s: &State| fs::metadata(s.dir().join("findings.json")).unwrap().ino();
        let before = ino(&s);
        let later = Finding {
            time: 9,
            ..good.clone()
        };
        s.save_findings(&[later]).unwrap();
        assert_eq!(ino(&s), before, "an atomic write would be a new inode");
        s.save_findings(&[]).unwrap();
        assert_ne!(ino(&s), before);
        s.save_findings(std::slice::from_ref(&good)).unwrap();
        let text = fs::read_to_string(s.dir().join("findings.json")).unwrap();
        let evil = text.replace("\"m\"", "\"../../x\"");
        fs::write(s.dir().join("findings.json"), evil).unwrap();
        assert_eq!(s.findings(), vec![]);
        let odd = text.replace("\"broken\"", "\"rm -rf\"");
        fs::write(s.dir().join("findings.json"), odd).unwrap();
        assert_eq!(s.findings(), vec![]);
    }

    #[test]
    fn causes_are_stored_as_data_and_old_prose_still_loads() {
        let t = tempfile::tempdir().unwrap();
        let s = State::new(&Root::new(t.path()));
        let mut p = pair("m");
        p.because = vec![Cause {
            package: crate::dpkg::PackageName::new("linux-kbuild-6.1").unwrap(),
            role: crate::kernel::Role::Kbuild,
            old: Some("6.1.176-1".parse().unwrap()),
            new: Some("6.1.192-2".parse().unwrap()),
            unpacked: Some(at_secs(1_700_000_000)),
        }];
        let q = Queue {
            version: 1,
            pending: vec![p],
        };
        s.save_queue(&q).unwrap();
        assert_eq!(s.queue().unwrap(), q);
        // A queue written by 0.1, with the causes as prose: the pair stays.
        fs::write(
            s.dir().join("queue.json"),
            r#"{"version":1,"pending":[{"module":"m","version":"1","kernel":"k","arch":"x86_64","because":"linux-kbuild-6.1 6.1.176-1 → 6.1.192-2","stale_since":5}]}"#,
        )
        .unwrap();
        assert_eq!(s.queue().unwrap().pending, vec![pair("m")]);
    }

    /// The files as written before the pair had one type: the same four
    /// fields at the top of each entry, read back as they were.
    #[test]
    fn state_files_of_the_flat_format_still_load() {
        let t = tempfile::tempdir().unwrap();
        let s = State::new(&Root::new(t.path()));
        fs::create_dir_all(s.dir()).unwrap();
        fs::write(
            s.dir().join("queue.json"),
            r#"{"version":1,"pending":[{"module":"m","version":"1","kernel":"k","arch":"x86_64","because":[],"stale_since":5}]}"#,
        )
        .unwrap();
        assert_eq!(s.queue().unwrap().pending, vec![pair("m")]);
        fs::write(
            s.dir().join("failures.json"),
            r#"{"version":1,"failed":[{"module":"m","version":"1","kernel":"k","arch":"x86_64","because":[],"make_log":"/l","exit_status":10,"time":7}]}"#,
        )
        .unwrap();
        let f = s.failures().unwrap().failed;
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].id, id("m", "k"));
        assert_eq!(
            (f[0].exit_status, f[0].time, f[0].restored),
            (Some(10), 7, true)
        );
        // Written back, the same flat shape.
        s.save_failures(&Failures {
            version: 1,
            failed: f,
        })
        .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&fs::read(s.dir().join("failures.json")).unwrap()).unwrap();
        assert_eq!(v["failed"][0]["module"], "m");
        assert_eq!(v["failed"][0]["arch"], "x86_64");
        assert!(v["failed"][0].get("id").is_none());
    }

    /// Findings written before they carried the architecture are dropped
    /// (the next full check writes them again); the others stay.
    #[test]
    fn findings_without_arch_are_dropped() {
        let t = tempfile::tempdir().unwrap();
        let s = State::new(&Root::new(t.path()));
        fs::create_dir_all(s.dir()).unwrap();
        fs::write(
            s.dir().join("findings.json"),
            r#"{"version":1,"found":[{"module":"old","version":"1","kernel":"k","problem":"broken","time":5},{"module":"m","version":"1","kernel":"k","arch":"x86_64","problem":"unsigned","time":6}]}"#,
        )
        .unwrap();
        assert_eq!(
            s.findings(),
            vec![Finding {
                id: id("m", "k"),
                problem: Problem::Unsigned,
                time: 6,
            }]
        );
    }

    #[test]
    fn planted_symlinks_are_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let s = State::new(&Root::new(t.path()));
        fs::create_dir_all(s.dir()).unwrap();
        let victim = t.path().join("victim");
        fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, s.dir().join("queue.json")).unwrap();
        std::os::unix::fs::symlink(&victim, s.dir().join("lock")).unwrap();
        assert_eq!(s.queue().unwrap().pending, vec![]);
        s.save_queue(&Queue::default()).unwrap(); // replaces the link itself
        drop(s.lock().unwrap()); // no ELOOP wedge
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
    }

    #[test]
    fn a_removal_during_a_run_is_carried_out_by_the_next_locked_run() {
        let t = tempfile::tempdir().unwrap();
        let s = State::new(&Root::new(t.path()));
        let k = KernelRelease::new("k").unwrap();
        s.save_queue(&Queue {
            version: 1,
            pending: vec![pair("m")],
        })
        .unwrap();
        let held = s.lock().unwrap();
        assert!(s.lock_within(Duration::from_millis(200)).unwrap().is_none());
        s.request_forget(&k).unwrap();
        assert_eq!(
            s.queue().unwrap().pending.len(),
            1,
            "nothing forgotten mid-run"
        );
        drop(held);
        let _next = s.lock().unwrap();
        assert!(s.queue().unwrap().pending.is_empty());
        assert!(!s.dir().join("forget/k").exists());
    }
}
