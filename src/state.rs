//! dkms-hook's own state in `/var/lib/dkms-hook/`: the dpkg.log cursor, the
//! queue of pending pairs, the failures, backups of dkms build directories,
//! and the lock that serialises runs.
//!
//! Every file is written atomically (temp file in the same directory, fsync,
//! rename, fsync of the directory), created 0644 with `O_NOFOLLOW`/`O_EXCL`
//! so a link planted in the directory is never followed. The order of writes
//! is what makes a killed run harmless: the queue is saved before the cursor
//! moves past the changes that filled it, and a pair leaves the queue only
//! after it was installed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::root::Root;
use crate::Error;

pub const STATE_DIR: &str = "/var/lib/dkms-hook";
pub const LOG_FILE: &str = "/var/log/dkms-hook.log";
/// Bumped when a state file changes incompatibly; files of a newer version
/// are left alone rather than misread.
pub const STATE_VERSION: u32 = 1;
/// Bytes before the cursor that identify the log it was taken in.
const FINGERPRINT_LEN: u64 = 4096;

/// Where the last run stopped reading dpkg.log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub version: u32,
    pub device: u64,
    pub inode: u64,
    pub offset: u64,
    /// FNV-1a of the `FINGERPRINT_LEN` bytes before `offset`: a log replaced
    /// by another with the same inode or truncated is noticed.
    pub fingerprint: u64,
}

/// A pair waiting to be rebuilt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedPair {
    pub module: String,
    pub version: String,
    pub kernel: String,
    pub arch: String,
    /// `linux-kbuild-6.1 6.1.176-1 → 6.1.192-2`, for messages.
    pub because: String,
    /// Seconds since the epoch of the change that made it stale: a pair whose
    /// module and installed copy are newer than this is done.
    pub stale_since: u64,
}

/// A pair whose last rebuild failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub module: String,
    pub version: String,
    pub kernel: String,
    pub arch: String,
    pub because: String,
    /// In-root path of the kept copy of make.log.
    pub make_log: String,
    pub exit_status: Option<i32>,
    pub time: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queue {
    pub version: u32,
    pub pending: Vec<QueuedPair>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failures {
    pub version: u32,
    pub failed: Vec<Failure>,
}

impl QueuedPair {
    pub fn same_pair(&self, m: &str, v: &str, k: &str) -> bool {
        self.module == m && self.version == v && self.kernel == k
    }
}

/// The state directory of one root.
#[derive(Debug, Clone)]
pub struct State {
    dir: PathBuf,
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

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl State {
    pub fn new(root: &Root) -> State {
        State {
            dir: root.host(STATE_DIR),
            root: root.clone(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn root(&self) -> &Root {
        &self.root
    }

    fn ensure_dir(&self) -> Result<(), Error> {
        fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))
    }

    /// Wait for and take the run lock.
    pub fn lock(&self) -> Result<Lock, Error> {
        self.ensure_dir()?;
        let p = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o644)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&p)
            .map_err(|e| Error::io(&p, e))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::io(&p, e.into()))?;
        self.kill_leftover_builds();
        Ok(Lock { _file: file })
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<T>, Error> {
        let p = self.dir.join(name);
        let mut f = match OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&p)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&p, e)),
        };
        let mut text = Vec::new();
        f.read_to_end(&mut text).map_err(|e| Error::io(&p, e))?;
        let value: serde_json::Value = serde_json::from_slice(&text).map_err(|e| Error::State {
            path: p.clone(),
            msg: format!("corrupt ({e})"),
        })?;
        let version = value
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if version > u64::from(STATE_VERSION) {
            return Err(Error::State {
                path: p,
                msg: format!("written by a newer dkms-hook (version {version})"),
            });
        }
        serde_json::from_value(value)
            .map(Some)
            .map_err(|e| Error::State {
                path: p,
                msg: format!("corrupt ({e})"),
            })
    }

    /// Write `name` atomically.
    fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), Error> {
        self.ensure_dir()?;
        let text = serde_json::to_vec_pretty(value).map_err(|e| Error::State {
            path: self.dir.join(name),
            msg: e.to_string(),
        })?;
        write_atomic(&self.dir, name, &text)
    }

    /// A corrupt queue or failure list cannot be trusted or repaired: it is
    /// moved to `NAME.corrupt` for a look and the run starts afresh (`status`
    /// and `sync` still find every stale pair from the file system). A file
    /// of a newer dkms-hook is an error: it is left alone.
    fn read_or_set_aside<T: Default + for<'de> Deserialize<'de>>(
        &self,
        name: &str,
    ) -> Result<T, Error> {
        match self.read_json(name) {
            Ok(v) => Ok(v.unwrap_or_default()),
            Err(e @ Error::State { .. }) if e.to_string().contains(": corrupt (") => {
                let aside = self.dir.join(format!("{name}.corrupt"));
                fs::rename(self.dir.join(name), &aside).map_err(|err| Error::io(&aside, err))?;
                log::warn!("{e}; set aside as {}", aside.display());
                Ok(T::default())
            }
            Err(e) => Err(e),
        }
    }

    pub fn cursor(&self) -> Result<Option<Cursor>, Error> {
        self.read_json("cursor.json")
    }

    pub fn save_cursor(&self, c: &Cursor) -> Result<(), Error> {
        self.write_json("cursor.json", c)
    }

    pub fn queue(&self) -> Result<Queue, Error> {
        self.read_or_set_aside("queue.json")
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
        self.read_or_set_aside("failures.json")
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

    /// Host path of the backup of one pair's dkms directory.
    pub fn backup_dir(&self, module: &str, version: &str, kernel: &str, arch: &str) -> PathBuf {
        self.dir
            .join("backups")
            .join(module)
            .join(version)
            .join(kernel)
            .join(arch)
    }

    /// Host path where a failed build's make.log is kept.
    pub fn kept_make_log(&self, module: &str, version: &str, kernel: &str) -> PathBuf {
        self.dir
            .join("logs")
            .join(format!("{module}-{version}-{kernel}.make.log"))
    }

    /// Host path of the output of the last dkms run for a pair.
    pub fn run_log(&self, module: &str, version: &str, kernel: &str) -> PathBuf {
        self.dir
            .join("logs")
            .join(format!("{module}-{version}-{kernel}.dkms.log"))
    }

    /// Note the process group of a running dkms, so that the next run can
    /// stop it if this one is killed (the file is `builds/M.pgid`).
    pub fn note_build(&self, module: &str, pgid: u32) {
        let dir = self.dir.join("builds");
        let name = format!("{module}.pgid");
        if fs::create_dir_all(&dir).is_err()
            || write_atomic(&dir, &name, pgid.to_string().as_bytes()).is_err()
        {
            log::debug!("cannot note the build of {module}");
        }
    }

    pub fn forget_build(&self, module: &str) {
        let _ = fs::remove_file(self.dir.join("builds").join(format!("{module}.pgid")));
    }

    /// Kill what is left of the builds of a killed run (their process
    /// groups). Called with the lock held, when no build of ours runs.
    fn kill_leftover_builds(&self) {
        let dir = self.dir.join("builds");
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let pgid = fs::read_to_string(e.path())
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok());
            if let Some(pid) = pgid
                .filter(|p| *p > 1)
                .and_then(rustix::process::Pid::from_raw)
            {
                if rustix::process::kill_process_group(pid, rustix::process::Signal::KILL).is_ok() {
                    log::warn!(
                        "stopped the leftover build of a killed run (process group {})",
                        pid.as_raw_nonzero()
                    );
                }
            }
            let _ = fs::remove_file(e.path());
        }
    }

    /// Forget a removed kernel: its queue entries, failures and backups.
    pub fn forget_kernel(&self, kernel: &str) -> Result<(), Error> {
        let mut q = self.queue()?;
        q.pending.retain(|p| p.kernel != kernel);
        self.save_queue(&q)?;
        let mut f = self.failures()?;
        f.failed.retain(|p| p.kernel != kernel);
        self.save_failures(&f)?;
        let backups = self.dir.join("backups");
        if let Ok(mods) = fs::read_dir(&backups) {
            for m in mods.flatten() {
                for v in fs::read_dir(m.path()).into_iter().flatten().flatten() {
                    let k = v.path().join(kernel);
                    if k.exists() {
                        fs::remove_dir_all(&k).map_err(|e| Error::io(&k, e))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Append one line to `/var/log/dkms-hook.log` (best effort: a full disk
    /// must not stop a rebuild).
    pub fn log_line(&self, line: &str) {
        let p = self.root.host(LOG_FILE);
        let stamp = jiff::ZonedDateTime::now()
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string();
        let r = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&p)
            .and_then(|mut f| writeln!(f, "{stamp} {line}"));
        if let Err(e) = r {
            log::debug!("{}: {e}", p.display());
        }
    }
}

/// Temp file, fsync, rename, fsync the directory.
pub fn write_atomic(dir: &Path, name: &str, data: &[u8]) -> Result<(), Error> {
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let target = dir.join(name);
    let r = (|| -> io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, &target)?;
        File::open(dir)?.sync_all()
    })();
    r.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(&target, e)
    })
}

/// Where to read dpkg.log from, given the saved cursor.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadPlan {
    /// First run ever: start at the end.
    StartAtEnd,
    /// Read these (host path, offset) pieces in order.
    Pieces(Vec<(PathBuf, u64)>),
}

fn identity(p: &Path) -> Option<(u64, u64, u64)> {
    let m = fs::metadata(p).ok()?;
    Some((m.dev(), m.ino(), m.len()))
}

pub fn fingerprint(p: &Path, offset: u64) -> Option<u64> {
    let mut f = File::open(p).ok()?;
    let start = offset.saturating_sub(FINGERPRINT_LEN);
    f.seek(io::SeekFrom::Start(start)).ok()?;
    let mut buf = vec![0; (offset - start) as usize];
    f.read_exact(&mut buf).ok()?;
    Some(fnv1a(&buf))
}

/// A cursor at the current end of `log`.
pub fn cursor_at_end(log: &Path) -> Option<Cursor> {
    let (device, inode, len) = identity(log)?;
    Some(Cursor {
        version: STATE_VERSION,
        device,
        inode,
        offset: len,
        fingerprint: fingerprint(log, len)?,
    })
}

/// Decide what to read. `log` is the host path of dpkg.log; its rotated
/// predecessor is `log.1`.
pub fn read_plan(cursor: Option<&Cursor>, log: &Path) -> ReadPlan {
    let Some(c) = cursor else {
        return ReadPlan::StartAtEnd;
    };
    let same = |p: &Path| {
        identity(p).is_some_and(|(d, i, len)| {
            d == c.device
                && i == c.inode
                && len >= c.offset
                && fingerprint(p, c.offset) == Some(c.fingerprint)
        })
    };
    if same(log) {
        return ReadPlan::Pieces(vec![(log.to_path_buf(), c.offset)]);
    }
    let rotated = PathBuf::from(format!("{}.1", log.display()));
    if same(&rotated) {
        // logrotate moved our file aside: finish it, then the new one.
        return ReadPlan::Pieces(vec![(rotated, c.offset), (log.to_path_buf(), 0)]);
    }
    // Replaced or truncated beyond recognition: read the whole current log.
    ReadPlan::Pieces(vec![(log.to_path_buf(), 0)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_follows_rotation() {
        let t = tempfile::tempdir().unwrap();
        let log = t.path().join("dpkg.log");
        fs::write(&log, "a\nb\n").unwrap();
        assert_eq!(read_plan(None, &log), ReadPlan::StartAtEnd);
        let c = cursor_at_end(&log).unwrap();
        assert_eq!(
            read_plan(Some(&c), &log),
            ReadPlan::Pieces(vec![(log.clone(), 4)])
        );
        fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(b"c\n")
            .unwrap();
        assert_eq!(
            read_plan(Some(&c), &log),
            ReadPlan::Pieces(vec![(log.clone(), 4)])
        );
        let rotated = t.path().join("dpkg.log.1");
        fs::rename(&log, &rotated).unwrap();
        fs::write(&log, "d\n").unwrap();
        assert_eq!(
            read_plan(Some(&c), &log),
            ReadPlan::Pieces(vec![(rotated, 4), (log.clone(), 0)])
        );
    }

    #[test]
    fn a_rewritten_log_is_read_whole() {
        let t = tempfile::tempdir().unwrap();
        let log = t.path().join("dpkg.log");
        fs::write(&log, "aaaa\n").unwrap();
        let c = cursor_at_end(&log).unwrap();
        let mut f = fs::OpenOptions::new().write(true).open(&log).unwrap();
        f.write_all(b"bbbb\n").unwrap(); // same inode, same length, other bytes
        assert_eq!(
            read_plan(Some(&c), &log),
            ReadPlan::Pieces(vec![(log.clone(), 0)])
        );
    }

    #[test]
    fn state_files_round_trip_and_refuse_newer_versions() {
        let t = tempfile::tempdir().unwrap();
        let s = State::new(&Root::new(t.path()));
        assert_eq!(s.queue().unwrap(), Queue::default());
        let q = Queue {
            version: 1,
            pending: vec![QueuedPair {
                module: "m".into(),
                version: "1".into(),
                kernel: "k".into(),
                arch: "x86_64".into(),
                because: "p 1 → 2".into(),
                stale_since: 5,
            }],
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
        assert!(s
            .queue()
            .unwrap_err()
            .to_string()
            .contains("newer dkms-hook"));
        fs::write(s.dir().join("queue.json"), "{garbage").unwrap();
        assert_eq!(s.queue().unwrap(), Queue::default());
        assert_eq!(
            fs::read(s.dir().join("queue.json.corrupt")).unwrap(),
            b"{garbage"
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
        assert!(s.queue().is_err());
        s.save_queue(&Queue::default()).unwrap(); // replaces the link itself
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
    }
}
