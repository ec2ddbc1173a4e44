//! The safe rebuild (design §6): back up, `dkms build --force`, restore on
//! failure, install only after a successful build, verify.
//!
//! `dkms build --force` deletes `/var/lib/dkms/M/V/K/ARCH` before building,
//! and `dkms unbuild`/`uninstall` remove the working module first, so neither
//! is ever run on a working pair without a backup that puts it back
//! byte-identical. Modules run in parallel (`jobs`); the kernels of one module
//! run in sequence because they share `/var/lib/dkms/M/V/build`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::config::Config;
use crate::dkms::{built_time, DKMS_TREE};
use crate::kernel::MODULES_DIR;
use crate::state::{Failure, QueuedPair, State};
use crate::Error;

/// dkms itself; `DKMS_HOOK_DKMS` names a stand-in (tests).
pub const DKMS: &str = "dkms";
pub const UPDATE_INITRAMFS: &str = "update-initramfs";
/// Copies trees with modes, links and times intact.
const CP: &str = "cp";

/// dkms exit statuses that mean "not for this kernel" rather than failure.
const EXIT_BUILD_EXCLUSIVE: i32 = 77;
const EXIT_NO_HEADERS: i32 = 21;

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Rebuilt {
        seconds: f64,
        initramfs: bool,
    },
    /// The pair was found already rebuilt (a killed run got that far).
    AlreadyDone,
    Skipped {
        status: i32,
    },
    Failed {
        status: Option<i32>,
        reason: String,
        make_log: Option<PathBuf>,
        /// The dkms tree and the installed module are as before. When not,
        /// the backup stays and the next run restores it first.
        restored: bool,
    },
}

#[derive(Debug, Clone)]
pub struct PairResult {
    pub pair: QueuedPair,
    pub outcome: Outcome,
}

pub struct Executor<'a> {
    pub state: &'a State,
    pub config: &'a Config,
    pub dkms: OsString,
}

/// How a command ended.
enum Ran {
    Exit(i32),
    TimedOut,
    SpawnFailed(String),
}

impl<'a> Executor<'a> {
    pub fn new(state: &'a State, config: &'a Config) -> Result<Executor<'a>, Error> {
        let dkms = std::env::var_os("DKMS_HOOK_DKMS");
        if dkms.is_none() && !state.root().is_host_root() {
            // dkms would act on the host, not on the root.
            return Err(Error::Refused(
                "rebuilding under --root needs DKMS_HOOK_DKMS (or run dkms-hook inside the chroot)"
                    .into(),
            ));
        }
        Ok(Executor {
            state,
            config,
            dkms: dkms.unwrap_or_else(|| DKMS.into()),
        })
    }

    /// Run the whole queue. `report` sees each result as it happens; the
    /// queue and failures are saved after every pair.
    pub fn run_queue(
        &self,
        report: &(dyn Fn(&PairResult) + Sync),
    ) -> Result<Vec<PairResult>, Error> {
        let queue = Mutex::new(self.state.queue()?);
        let failures = Mutex::new(self.state.failures()?);
        let mut modules: Vec<Vec<QueuedPair>> = Vec::new();
        for p in queue.lock().map_err(poisoned)?.pending.iter() {
            match modules
                .iter_mut()
                .find(|g| g[0].module == p.module && g[0].version == p.version)
            {
                Some(g) => g.push(p.clone()),
                None => modules.push(vec![p.clone()]),
            }
        }
        let next = Mutex::new(modules.into_iter());
        let results = Mutex::new(Vec::new());
        let save_error: Mutex<Option<Error>> = Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..self.config.jobs.max(1) {
                s.spawn(|| loop {
                    let Some(group) = next.lock().ok().and_then(|mut n| n.next()) else {
                        return;
                    };
                    for pair in group {
                        let outcome = self.rebuild(&pair);
                        let r = PairResult {
                            pair: pair.clone(),
                            outcome,
                        };
                        report(&r);
                        if let Err(e) = self.finish(&queue, &failures, &r) {
                            if let Ok(mut se) = save_error.lock() {
                                se.get_or_insert(e);
                            }
                        }
                        if let Ok(mut v) = results.lock() {
                            v.push(r);
                        }
                    }
                });
            }
        });
        if let Some(e) = save_error.into_inner().map_err(poisoned)? {
            return Err(e);
        }
        results.into_inner().map_err(poisoned)
    }

    /// Drop a finished pair from the queue and record or clear its failure.
    fn finish(
        &self,
        queue: &Mutex<crate::state::Queue>,
        failures: &Mutex<crate::state::Failures>,
        r: &PairResult,
    ) -> Result<(), Error> {
        let p = &r.pair;
        let mut f = failures.lock().map_err(poisoned)?;
        f.failed
            .retain(|x| !(x.module == p.module && x.version == p.version && x.kernel == p.kernel));
        if let Outcome::Failed {
            status, make_log, ..
        } = &r.outcome
        {
            f.failed.push(Failure {
                module: p.module.clone(),
                version: p.version.clone(),
                kernel: p.kernel.clone(),
                arch: p.arch.clone(),
                because: p.because.clone(),
                make_log: make_log
                    .as_ref()
                    .map(|m| m.display().to_string())
                    .unwrap_or_default(),
                exit_status: *status,
                time: crate::state::now_secs(),
            });
        }
        self.state.save_failures(&f)?;
        drop(f);
        let mut q = queue.lock().map_err(poisoned)?;
        q.pending
            .retain(|x| !x.same_pair(&p.module, &p.version, &p.kernel));
        self.state.save_queue(&q)
    }

    fn dkms_dir(&self, p: &QueuedPair) -> PathBuf {
        let tree = self
            .state
            .root()
            .canonicalize(DKMS_TREE)
            .unwrap_or_else(|_| DKMS_TREE.into());
        self.state.root().host(
            tree.join(&p.module)
                .join(&p.version)
                .join(&p.kernel)
                .join(&p.arch),
        )
    }

    /// Host paths of the installed copies of a pair's modules under
    /// `/lib/modules/K` (dkms puts them in `updates/dkms`, older ones in
    /// `updates` or `extra`).
    fn installed_modules(&self, p: &QueuedPair, dkms_dir: &Path) -> Vec<PathBuf> {
        let names: Vec<OsString> = std::fs::read_dir(dkms_dir.join("module"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        let Ok(kdir) = self
            .state
            .root()
            .resolve(Path::new(MODULES_DIR).join(&p.kernel))
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for sub in ["updates", "extra"] {
            walk(&kdir.join(sub), &mut |f| {
                if f.file_name().is_some_and(|n| names.iter().any(|x| x == n)) {
                    out.push(f.to_path_buf());
                }
            });
        }
        out
    }

    /// Done already: the module was built after the change, and every
    /// installed copy holds exactly the built bytes (a killed run got past
    /// `install`). Installed copies are compared by content, not time: a
    /// killed build can leave a new module behind before `install` ran, and
    /// an installed copy's time says nothing about what it was built from
    /// (found by the SIGKILL-at-50-points test). A rebuild that came out
    /// byte-identical counts as installed, rightly: installing it again would
    /// change nothing.
    fn is_done(&self, p: &QueuedPair, dkms_dir: &Path) -> bool {
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(p.stale_since + 1);
        let module_dir = dkms_dir.join("module");
        if built_time(&module_dir).is_none_or(|t| t < since) {
            return false;
        }
        let installed = self.installed_modules(p, dkms_dir);
        let Ok(built) = std::fs::read_dir(&module_dir) else {
            return false;
        };
        let mut any = false;
        for b in built.flatten() {
            let copies: Vec<&PathBuf> = installed
                .iter()
                .filter(|i| i.file_name() == Some(&b.file_name()))
                .collect();
            let bytes = std::fs::read(b.path()).ok();
            if copies.is_empty() || copies.iter().any(|c| std::fs::read(c).ok() != bytes) {
                return false;
            }
            any = true;
        }
        any
    }

    fn rebuild(&self, p: &QueuedPair) -> Outcome {
        match self.try_rebuild(p) {
            Ok(o) => o,
            Err(e) => Outcome::Failed {
                status: None,
                reason: e.to_string(),
                make_log: None,
                restored: false,
            },
        }
    }

    fn try_rebuild(&self, p: &QueuedPair) -> Result<Outcome, Error> {
        let dir = self.dkms_dir(p);
        let backup = self
            .state
            .backup_dir(&p.module, &p.version, &p.kernel, &p.arch);
        let saved_tree = backup.join("tree");
        let saved_installed = backup.join("installed");
        // A run killed mid-build left the dkms directory without its module:
        // put the working one back before anything else.
        if saved_tree.is_dir() && built_time(&dir.join("module")).is_none() {
            self.restore(&saved_tree, &dir, &saved_installed, p)?;
        }
        if self.is_done(p, &dir) {
            remove_backup(&backup)?;
            return Ok(Outcome::AlreadyDone);
        }
        // 2. Back up the dkms directory and the installed copies.
        if built_time(&dir.join("module")).is_some() {
            remove_backup(&backup)?;
            std::fs::create_dir_all(&saved_installed)
                .map_err(|e| Error::io(&saved_installed, e))?;
            self.copy(&dir, &saved_tree)?;
            for f in self.installed_modules(p, &dir) {
                let rel = f.strip_prefix(self.state.root().dir()).unwrap_or(&f);
                let to = saved_installed.join(rel);
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
                }
                self.copy(&f, &to)?;
            }
        }
        // 3. Build.
        // A fresh run log for this attempt.
        let _ = std::fs::remove_file(self.state.run_log(&p.module, &p.version, &p.kernel));
        let started = Instant::now();
        let start_time = SystemTime::now();
        let built = self.dkms(p, &["build", "--force"]);
        let failed = |status, reason: String, make_log| {
            self.restore(&saved_tree, &dir, &saved_installed, p)?;
            remove_backup(&backup)?;
            Ok(Outcome::Failed {
                status,
                reason,
                make_log,
                restored: true,
            })
        };
        match built {
            Ran::Exit(0) => {}
            Ran::Exit(s @ (EXIT_BUILD_EXCLUSIVE | EXIT_NO_HEADERS)) => {
                self.restore(&saved_tree, &dir, &saved_installed, p)?;
                remove_backup(&backup)?;
                return Ok(Outcome::Skipped { status: s });
            }
            Ran::Exit(s) => {
                let log = self.keep_make_log(p);
                return failed(Some(s), format!("dkms build exited {s}"), log);
            }
            Ran::TimedOut => {
                let log = self.keep_make_log(p);
                let limit = self.config.build_timeout.as_secs();
                return failed(
                    None,
                    format!("dkms build took longer than {limit} s and was killed"),
                    log,
                );
            }
            Ran::SpawnFailed(e) => return failed(None, e, None),
        }
        // 4. Install over the working module (dkms copies, then depmod).
        match self.dkms(p, &["install", "--force"]) {
            Ran::Exit(0) => {}
            Ran::Exit(s) => return failed(Some(s), format!("dkms install exited {s}"), None),
            Ran::TimedOut => return failed(None, "dkms install timed out".into(), None),
            Ran::SpawnFailed(e) => return failed(None, e, None),
        }
        // Verify by install time, not content: kbuild builds are reproducible.
        let installed = self.installed_modules(p, &dir);
        let fresh = |f: &PathBuf| {
            std::fs::metadata(f)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t + Duration::from_secs(1) >= start_time)
        };
        if installed.is_empty() || !installed.iter().all(fresh) {
            return failed(
                None,
                "dkms install left no new module in /lib/modules".into(),
                None,
            );
        }
        let initramfs = self.config.initramfs && self.refresh_initramfs(p);
        remove_backup(&backup)?;
        Ok(Outcome::Rebuilt {
            seconds: started.elapsed().as_secs_f64(),
            initramfs,
        })
    }

    /// Put the backup back: the dkms directory (so `dkms status` says
    /// installed again) and any installed copy that changed or vanished.
    fn restore(
        &self,
        saved_tree: &Path,
        dir: &Path,
        saved_installed: &Path,
        p: &QueuedPair,
    ) -> Result<(), Error> {
        if saved_tree.is_dir() {
            remove_tree(dir)?;
            self.copy(saved_tree, dir)?;
        }
        let root = self.state.root().dir();
        walk(saved_installed, &mut |f| {
            let rel = f.strip_prefix(saved_installed).unwrap_or(f);
            let live = root.join(rel);
            if std::fs::read(&live).ok() != std::fs::read(f).ok() {
                log::debug!("restoring {}", live.display());
                let _ = self.copy(f, &live);
            }
        });
        // A `kernel-K-ARCH` link lost by dkms would hide the pair.
        let link = dir
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .map(|m| m.join(format!("kernel-{}-{}", p.kernel, p.arch)));
        if let Some(link) = link {
            if std::fs::symlink_metadata(&link).is_err() {
                let target = format!("{}/{}/{}", p.version, p.kernel, p.arch);
                std::os::unix::fs::symlink(target, &link).map_err(|e| Error::io(&link, e))?;
            }
        }
        Ok(())
    }

    fn copy(&self, from: &Path, to: &Path) -> Result<(), Error> {
        // dkms 3.0.10's `build --force` removes /var/lib/dkms/M/V/K as well
        // as K/ARCH: a restore must recreate the parents (found by the
        // real-system tests).
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let out = duct::cmd(
            CP,
            [
                OsString::from("-a"),
                OsString::from("-T"),
                from.into(),
                to.into(),
            ],
        )
        .stderr_to_stdout()
        .stdout_capture()
        .unchecked()
        .run()
        .map_err(|e| Error::io(to, e))?;
        if out.status.success() {
            Ok(())
        } else {
            let msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Err(Error::io(to, std::io::Error::other(msg)))
        }
    }

    /// dkms leaves make.log in the shared build directory, which the next
    /// kernel's build overwrites: keep a copy per pair.
    fn keep_make_log(&self, p: &QueuedPair) -> Option<PathBuf> {
        let root = self.state.root();
        let src = root
            .resolve(
                Path::new(DKMS_TREE)
                    .join(&p.module)
                    .join(&p.version)
                    .join("build/make.log"),
            )
            .ok()?;
        let dst = self.state.kept_make_log(&p.module, &p.version, &p.kernel);
        std::fs::create_dir_all(dst.parent()?).ok()?;
        std::fs::copy(&src, &dst).ok()?;
        Some(Path::new("/").join(dst.strip_prefix(root.dir()).ok()?))
    }

    /// `dkms ACTION --force -m M -v V -k K`, output to the pair's run log,
    /// in its own process group so a timeout kills the whole build.
    fn dkms(&self, p: &QueuedPair, action: &[&str]) -> Ran {
        let mut args: Vec<OsString> = action.iter().map(OsString::from).collect();
        for (flag, v) in [("-m", &p.module), ("-v", &p.version), ("-k", &p.kernel)] {
            args.push(flag.into());
            args.push(v.into());
        }
        // dkms's output goes to the pair's run log, never into our memory
        // (a build can print a lot); each action appends to it.
        let log = self.state.run_log(&p.module, &p.version, &p.kernel);
        if let Some(d) = log.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        let file = match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
        {
            Ok(f) => f,
            Err(e) => return Ran::SpawnFailed(format!("{}: {e}", log.display())),
        };
        let expr = duct::cmd(&self.dkms, args)
            .env("DKMS_HOOK_ROOT", self.state.root().dir())
            .stdin_null()
            .stdout_file(file)
            .stderr_to_stdout()
            .unchecked()
            .before_spawn(|c| {
                use std::os::unix::process::CommandExt;
                c.process_group(0);
                // dkms must not outlive a killed dkms-hook: it would go on
                // building in the shared build directory while the next run
                // starts its own build there. Its children are caught by
                // `State::kill_leftover_builds` in the next run.
                unsafe {
                    c.pre_exec(|| {
                        rustix::process::set_parent_process_death_signal(Some(
                            rustix::process::Signal::KILL,
                        ))
                        .map_err(Into::into)
                    });
                }
                Ok(())
            });
        let handle = match expr.start() {
            Ok(h) => h,
            Err(e) => {
                return Ran::SpawnFailed(format!("cannot run {}: {e}", self.dkms.to_string_lossy()))
            }
        };
        let pgid = handle.pids().first().copied().unwrap_or(0);
        self.state.note_build(&p.module, pgid);
        let deadline = Instant::now() + self.config.build_timeout;
        loop {
            match handle.try_wait() {
                Ok(Some(out)) => {
                    self.state.forget_build(&p.module);
                    return Ran::Exit(out.status.code().unwrap_or(-1));
                }
                Ok(None) => {}
                Err(e) => return Ran::SpawnFailed(e.to_string()),
            }
            if Instant::now() >= deadline {
                for pid in handle.pids() {
                    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                        let _ =
                            rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                    }
                }
                let _ = handle.wait();
                self.state.forget_build(&p.module);
                return Ran::TimedOut;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `update-initramfs -u -k K` when the module is part of the initramfs:
    /// dkms.conf says `REMAKE_INITRD=yes`, or initramfs-tools lists it.
    fn refresh_initramfs(&self, p: &QueuedPair) -> bool {
        let root = self.state.root();
        if !root.host(format!("/boot/initrd.img-{}", p.kernel)).exists() {
            return false;
        }
        let conf = std::fs::read_to_string(
            root.host(format!("/usr/src/{}-{}/dkms.conf", p.module, p.version)),
        )
        .unwrap_or_default();
        let remake = conf.lines().any(|l| {
            let l = l.trim().replace(['"', '\''], "");
            l.eq_ignore_ascii_case("REMAKE_INITRD=yes")
        });
        let listed = std::fs::read_to_string(root.host("/etc/initramfs-tools/modules"))
            .unwrap_or_default()
            .lines()
            .any(|l| l.split_whitespace().next() == Some(p.module.as_str()));
        if !(remake || listed) {
            return false;
        }
        let tool = UPDATE_INITRAMFS;
        let r = duct::cmd(
            tool,
            [OsString::from("-u"), "-k".into(), p.kernel.clone().into()],
        )
        .stdin_null()
        .stdout_null()
        .stderr_null()
        .unchecked()
        .run();
        r.is_ok_and(|o| o.status.success())
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::Refused("internal lock poisoned".into())
}

fn remove_tree(p: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(p, e)),
    }
}

/// Remove a pair's backup and the then empty `M/V/K` directories above it.
fn remove_backup(backup: &Path) -> Result<(), Error> {
    remove_tree(backup)?;
    let mut dir = backup.parent();
    for _ in 0..3 {
        match dir {
            Some(d) if std::fs::remove_dir(d).is_ok() => dir = d.parent(),
            _ => break,
        }
    }
    Ok(())
}

/// Every regular file below `dir`, links not followed.
fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&e.path(), f),
            Ok(t) if t.is_file() => f(&e.path()),
            _ => {}
        }
    }
}
