//! The safe rebuild (docs/design.md, "The safe rebuild"): back up, `dkms
//! build --force`, restore on failure, install only after a successful
//! build, verify.
//!
//! `dkms build --force` deletes `/var/lib/dkms/M/V/K/ARCH` before building,
//! and `dkms unbuild`/`uninstall` remove the working module first, so neither
//! is ever run on a working pair without a backup that puts it back
//! byte-identical. Modules run in parallel (`jobs`); the kernels of one module
//! run in sequence because they share `/var/lib/dkms/M/V/build`.
//!
//! dkms installs with `--no-depmod`: `install --force` runs depmod twice
//! (uninstall, install), and the queue runs it once per pair. Once every
//! pair is done, each kernel is *settled* once: `depmod -a K`, then
//! `update-initramfs -u -k K` where a rebuilt module is in the initramfs. A
//! pair leaves the queue only when its kernel is settled, so a run killed
//! before that settles it next time.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

mod backup;
pub mod builds;
pub mod kept;
mod settle;
mod steps;

use crate::config::Config;
use crate::dkms::{installed_copies, INSTALL_DIRS};
use crate::kernel::KernelRelease;
use crate::root::open_regular;
use crate::state::{Failure, QueuedPair, State, STATE_DIR};
use crate::verify::Firmware;
use crate::Error;
use builds::BuildNote;

pub use crate::tools::{Tools, DEPMOD, DKMS, MODINFO, UPDATE_INITRAMFS};
use crate::tools::{
    CP, DKMS_EXIT_BUILD_EXCLUSIVE as EXIT_BUILD_EXCLUSIVE, DKMS_EXIT_NO_HEADERS as EXIT_NO_HEADERS,
};
pub use backup::{is_complete, same_bytes};
/// The most of a failed build's make.log that is kept.
const CAP_MAKE_LOG: u64 = 16 << 20;
/// The marker written last into a backup: a backup without it was cut short
/// and is not used for a restore (the working module was not touched yet).
const COMPLETE: &str = "complete";
/// The marker written before a restore begins: `cp -a` writes a file's
/// bytes before its times, so a restore killed half-way leaves the old
/// module with a fresh mtime, which `is_done` would take for a finished
/// rebuild. A backup with this marker is restored again, never trusted.
const RESTORING: &str = "restoring";

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Rebuilt {
        seconds: f64,
        /// Preflight's build against exactly this tree was installed
        /// instead of compiling again.
        preflight: bool,
    },
    /// The pair was found already rebuilt (a killed run got that far).
    AlreadyDone,
    Skipped {
        status: i32,
    },
    /// Held by `dkms-hook rollback`: left alone (and out of the queue).
    Held {
        reason: String,
    },
    Failed {
        status: Option<i32>,
        reason: String,
        make_log: Option<PathBuf>,
        /// The dkms tree and the installed module are as before. When not,
        /// `backup` (in-root) stays and the next run restores it first.
        restored: bool,
        backup: Option<PathBuf>,
    },
}

/// What settling one kernel did, after all its pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub kernel: KernelRelease,
    /// `depmod -a K` succeeded: its pairs left the queue.
    pub depmod: bool,
    pub initramfs: bool,
    /// Warnings: a depmod or update-initramfs that failed or was skipped.
    pub notes: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct PairResult {
    pub pair: QueuedPair,
    pub outcome: Outcome,
    /// Things the admin should know that did not stop the rebuild.
    pub notes: Vec<String>,
}

pub struct Executor<'a> {
    pub state: &'a State,
    pub config: &'a Config,
    dkms: OsString,
    update_initramfs: Option<OsString>,
    depmod: Option<OsString>,
    modinfo: OsString,
    mokutil: Option<OsString>,
    /// Secure Boot and the MOK list, asked once, when a module first needs it.
    firmware: OnceLock<Firmware>,
    /// The unenrolled key is said once a run, not once a pair.
    key_said: AtomicBool,
    /// No preflight runs (its lock was free): kept builds may be used.
    use_kept: AtomicBool,
    /// Every input of every kernel, read once when a kept build is first
    /// weighed.
    inputs: OnceLock<Option<crate::inventory::Inventory>>,
}

/// How a command ended.
pub(crate) enum Ran {
    Exit(i32),
    TimedOut,
    SpawnFailed(String),
}

/// A rebuild that could not go on, and whether the working module is in place.
enum Stop {
    /// Nothing was changed (or everything was put back).
    Kept(Error),
    /// The working module could not be put back; its backup stays.
    Unrestored(Error),
}

impl<'a> Executor<'a> {
    pub fn new(state: &'a State, config: &'a Config, tools: Tools) -> Result<Executor<'a>, Error> {
        let host = state.root().is_host_root();
        if tools.dkms.is_none() && !host {
            // dkms would act on the host, not on the root.
            return Err(Error::Refused(
                "rebuilding under --root needs DKMS_HOOK_DKMS (or run dkms-hook inside the chroot)"
                    .into(),
            ));
        }
        Ok(Executor::copying_only(state, config, tools))
    }

    /// An executor for `crate::guard`, which copies, puts back and settles
    /// but never runs dkms: under `--root` it needs no stand-in for dkms.
    pub fn copying_only(state: &'a State, config: &'a Config, tools: Tools) -> Executor<'a> {
        let host = state.root().is_host_root();
        Executor {
            state,
            config,
            dkms: tools.dkms.unwrap_or_else(|| DKMS.into()),
            update_initramfs: tools
                .update_initramfs
                .or_else(|| host.then(|| UPDATE_INITRAMFS.into())),
            depmod: tools.depmod.or_else(|| host.then(|| DEPMOD.into())),
            modinfo: tools.modinfo.unwrap_or_else(|| MODINFO.into()),
            mokutil: Firmware::mokutil(state.root(), tools.mokutil),
            firmware: OnceLock::new(),
            key_said: AtomicBool::new(false),
            use_kept: AtomicBool::new(false),
            inputs: OnceLock::new(),
        }
    }

    /// Run the whole queue. `started` sees each pair as it starts (with its
    /// number and the total), `report` as it ends, `settled` each kernel
    /// once all pairs are done; the queue and failures are saved after every
    /// pair and every kernel.
    pub fn run_queue(
        &self,
        started: &(dyn Fn(&QueuedPair, usize, usize) + Sync),
        report: &(dyn Fn(&PairResult) + Sync),
        settled: &(dyn Fn(&Settled) + Sync),
    ) -> Result<Vec<PairResult>, Error> {
        let queue = Mutex::new(self.state.queue()?);
        let failures = Mutex::new(self.state.failures()?);
        let held = self.state.holds()?;
        // Preflight's kept builds are read only while no preflight runs.
        let _kept_lock = kept::lock_if_free(self.state);
        self.use_kept.store(_kept_lock.is_some(), Ordering::Relaxed);
        let mut modules: Vec<Vec<QueuedPair>> = Vec::new();
        for p in queue.lock().map_err(poisoned)?.pending.iter() {
            match modules
                .iter_mut()
                .find(|g| g[0].id.module == p.id.module && g[0].id.version == p.id.version)
            {
                Some(g) => g.push(p.clone()),
                None => modules.push(vec![p.clone()]),
            }
        }
        let hold = |p: &QueuedPair| held.iter().find(|h| h.id == p.id);
        // Held pairs are not rebuilt, so not counted or announced.
        let total: usize = modules
            .iter()
            .flatten()
            .filter(|p| hold(p).is_none())
            .count();
        let count = std::sync::atomic::AtomicUsize::new(0);
        let results = Mutex::new(Vec::new());
        in_parallel(self.config.jobs, modules, |group| {
            let mut saved = Ok(());
            for pair in group {
                let mut notes = Vec::new();
                let outcome = match hold(&pair) {
                    Some(h) => Outcome::Held {
                        reason: h.reason.clone(),
                    },
                    None => {
                        let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        started(&pair, n, total);
                        self.rebuild(&pair, &mut notes)
                    }
                };
                let r = PairResult {
                    pair: pair.clone(),
                    outcome,
                    notes,
                };
                report(&r);
                if let Err(e) = self.finish(&queue, &failures, &r) {
                    saved = saved.and(Err(e));
                }
                if let Ok(mut v) = results.lock() {
                    v.push(r);
                }
            }
            saved
        })?;
        let results = results.into_inner().map_err(poisoned)?;
        self.settle_all(&queue, &results, settled)?;
        Ok(results)
    }

    /// Record or clear the pair's failure, and drop it from the queue, except
    /// when its working module could not be put back: it stays queued so
    /// that the next run restores (or rebuilds) it.
    fn finish(
        &self,
        queue: &Mutex<crate::state::Queue>,
        failures: &Mutex<crate::state::Failures>,
        r: &PairResult,
    ) -> Result<(), Error> {
        let p = &r.pair;
        let mut f = failures.lock().map_err(poisoned)?;
        f.failed.retain(|x| x.id != p.id);
        let mut keep_queued = false;
        if let Outcome::Failed {
            status,
            make_log,
            restored,
            backup,
            ..
        } = &r.outcome
        {
            keep_queued = !restored;
            f.failed.push(Failure {
                id: p.id.clone(),
                because: p.because.clone(),
                make_log: make_log
                    .as_ref()
                    .map(|m| m.display().to_string())
                    .unwrap_or_default(),
                exit_status: *status,
                time: crate::state::now_secs(),
                restored: *restored,
                backup: backup.as_ref().map(|b| b.display().to_string()),
            });
        }
        self.state.save_failures(&f)?;
        drop(f);
        // Rebuilt pairs leave the queue once their kernel is settled.
        let settle_first = matches!(r.outcome, Outcome::Rebuilt { .. } | Outcome::AlreadyDone);
        if keep_queued || settle_first {
            return Ok(());
        }
        let mut q = queue.lock().map_err(poisoned)?;
        q.pending.retain(|x| x.id != p.id);
        self.state.save_queue(&q)
    }

    /// Host path of `/var/lib/dkms/M/V/K/ARCH`, resolved inside the root
    /// (it may not exist: `build --force` removes it).
    fn dkms_dir(&self, p: &QueuedPair) -> Result<PathBuf, Error> {
        let dir = p.id.dkms_dir();
        self.state
            .root()
            .inside(&dir)
            .map_err(|e| Error::io(&dir, e))
    }

    /// Host paths of every copy of the pair's modules under `/lib/modules/K`.
    fn installed_modules(&self, p: &QueuedPair, names: &[OsString]) -> Vec<PathBuf> {
        installed_copies(self.state.root(), &p.id.kernel, names, INSTALL_DIRS)
    }

    fn rebuild(&self, p: &QueuedPair, notes: &mut Vec<String>) -> Outcome {
        match self.try_rebuild(p, notes) {
            Ok(o) => o,
            Err(Stop::Kept(e)) => Outcome::Failed {
                status: None,
                reason: format!("{e}; nothing was changed"),
                make_log: None,
                restored: true,
                backup: None,
            },
            Err(Stop::Unrestored(e)) => Outcome::Failed {
                status: None,
                reason: format!("restoring the backup of an earlier run failed: {e}"),
                make_log: None,
                restored: false,
                backup: Some(p.id.backup_dir()),
            },
        }
    }

    /// The pair's dkms run log in `logs/`, truncated for a new attempt or
    /// appended to.
    fn run_log(&self, p: &QueuedPair, append: bool) -> Option<File> {
        self.state
            .logs()
            .and_then(|l| l.create(&p.id.run_log_name(), append))
            .map_err(|e| log::warn!("{e}"))
            .ok()
    }

    /// dkms leaves make.log in the shared build directory, which the next
    /// kernel's build overwrites: keep a copy per pair (its first 16 MB).
    fn keep_make_log(&self, p: &QueuedPair) -> Option<PathBuf> {
        self.keep_make_log_in(p, "logs")
    }

    /// Copy the pair's make.log (as this process sees it) to
    /// `/var/lib/dkms-hook/SUBDIR/M-V-K.make.log`; the in-root path.
    pub(crate) fn keep_make_log_in(&self, p: &QueuedPair, subdir: &str) -> Option<PathBuf> {
        let src = self.state.root().resolve(p.id.make_log()).ok()?;
        let f = open_regular(&src).ok()?;
        let name = p.id.kept_make_log_name();
        let dir = self.state.open().and_then(|d| d.subdir(subdir)).ok()?;
        if let Err(e) = dir.write_atomic_from(&name, &mut std::io::Read::take(f, CAP_MAKE_LOG)) {
            log::warn!("{e}");
            return None;
        }
        Some(Path::new(STATE_DIR).join(subdir).join(name))
    }

    /// `dkms ACTION --force -m M -v V -k K`, output to the pair's run log,
    /// in its own process group so a timeout kills the whole build.
    pub(crate) fn dkms(&self, p: &QueuedPair, action: &[&str], log: Option<File>) -> Ran {
        let mut args: Vec<&OsStr> = action.iter().map(OsStr::new).collect();
        for (flag, v) in [
            ("-m", p.id.module.as_str()),
            ("-v", p.id.version.as_str()),
            ("-k", p.id.kernel.as_str()),
        ] {
            args.push(OsStr::new(flag));
            args.push(OsStr::new(v));
        }
        if log.is_none() {
            return Ran::SpawnFailed("cannot open the run log".into());
        }
        self.run(&self.dkms, &args, log, Some(&p.id.module))
    }

    /// Run `program` with `args` in its own process group, output to `log`
    /// (or nowhere), killed with its group after the build time limit. With
    /// `note`, the group is recorded in `builds/` so that the next run can
    /// stop it if this one is killed.
    fn run(
        &self,
        program: &OsStr,
        args: &[&OsStr],
        log: Option<File>,
        note: Option<&crate::name::ModuleName>,
    ) -> Ran {
        let mut expr = duct::cmd(program, args)
            .env("DKMS_HOOK_ROOT", self.state.root().dir())
            .stdin_null()
            .unchecked()
            .before_spawn(|c| {
                // The child must not outlive a killed dkms-hook: it would go
                // on building in the shared build directory while the next
                // run starts its own build there. Its children are caught by
                // [`builds::lock`] in the next run. Each rebuild
                // waits for its child on the thread that spawned it.
                crate::tools::own_group_dying_with_us(c);
                Ok(())
            });
        // duct applies the outer redirection first: stdout goes to the log,
        // then stderr joins it there. The other order sends stderr to our
        // own stdout, i.e. into apt's output.
        expr = match log {
            Some(f) => expr.stderr_to_stdout().stdout_file(f),
            None => expr.stdout_null().stderr_null(),
        };
        let handle = match expr.start() {
            Ok(h) => h,
            Err(e) => {
                return Ran::SpawnFailed(format!("cannot run {}: {e}", program.to_string_lossy()))
            }
        };
        let pgid = handle
            .pids()
            .first()
            .and_then(|p| i32::try_from(*p).ok())
            .unwrap_or(0);
        if let Some(m) = note {
            if let Some(n) = BuildNote::of(pgid) {
                builds::note_build(self.state, m, &n);
            }
        }
        let done = |r| {
            if let Some(m) = note {
                builds::forget_build(self.state, m);
            }
            r
        };
        let deadline = Instant::now() + self.config.build_timeout;
        match crate::tools::wait_deadline(&handle, deadline) {
            Ok(Some(out)) => done(Ran::Exit(out.status.code().unwrap_or(-1))),
            Ok(None) => {
                // Over time: the whole process group goes, not only dkms.
                if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::Kill);
                }
                let _ = handle.wait();
                done(Ran::TimedOut)
            }
            Err(e) => done(Ran::SpawnFailed(e.to_string())),
        }
    }
}

/// Runs `work` on each item, `jobs` threads at a time; every item is
/// worked on, and the first error is returned at the end.
fn in_parallel<T: Send>(
    jobs: usize,
    items: Vec<T>,
    work: impl Fn(T) -> Result<(), Error> + Sync,
) -> Result<(), Error> {
    let next = Mutex::new(items.into_iter());
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let Some(item) = next.lock().ok().and_then(|mut n| n.next()) else {
                    return;
                };
                if let (Err(e), Ok(mut first)) = (work(item), first_error.lock()) {
                    first.get_or_insert(e);
                }
            });
        }
    });
    first_error
        .into_inner()
        .map_err(poisoned)?
        .map_or(Ok(()), Err)
}

/// Remove a directory tree that may not exist.
fn remove_dir_tree(p: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(p, e)),
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::Refused("internal lock poisoned".into())
}
