//! The safe rebuild of one pair, step by step (docs/design.md, "The safe
//! rebuild"): [`Executor::recover`] finishes what an earlier run left,
//! [`Executor::back_up_working`] saves the working module,
//! [`Executor::build`] builds it (or places preflight's build),
//! [`Executor::install`] installs it over the working module, and
//! [`Executor::verify_installed`] checks that what dkms installed is new and
//! for this kernel. [`Executor::try_rebuild`] runs them in that order and
//! puts the working module back when a step after the backup fails.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use super::{
    backup, kept, remove_dir_tree, Executor, Outcome, Ran, Stop, COMPLETE, EXIT_BUILD_EXCLUSIVE,
    EXIT_NO_HEADERS, RESTORING,
};
use crate::dkms::{built_names, built_time};
use crate::state::{at_secs, QueuedPair};
use crate::verify::{self, Firmware};
use crate::Error;

/// Why a step after the backup stopped the rebuild.
#[derive(Debug)]
pub(super) struct StepFailed {
    /// dkms's exit status, when it exited.
    pub status: Option<i32>,
    pub reason: String,
    /// In-root path of the kept copy of make.log.
    pub make_log: Option<PathBuf>,
}

impl StepFailed {
    fn because(reason: String) -> StepFailed {
        StepFailed {
            status: None,
            reason,
            make_log: None,
        }
    }
}

/// What the build step ended with.
#[derive(Debug)]
pub(super) enum Built {
    /// The pair's directory holds a new build; `preflight`: preflight's
    /// build against exactly this tree was placed instead of compiling.
    Done {
        preflight: bool,
    },
    /// dkms declined to build for this kernel (`BUILD_EXCLUSIVE`, no
    /// headers): its exit status.
    Skipped(i32),
    Failed(StepFailed),
}

impl Executor<'_> {
    pub(super) fn try_rebuild(
        &self,
        p: &QueuedPair,
        notes: &mut Vec<String>,
    ) -> Result<Outcome, Stop> {
        let dir = self.dkms_dir(p).map_err(Stop::Kept)?;
        if let Some(done) = self.recover(p, &dir)? {
            return Ok(done);
        }
        let backup = self.back_up_working(p, &dir)?;
        // Put the working module back; on error the backup stays.
        let restore = || -> Result<(), Error> {
            if let Some(b) = &backup {
                self.restore(b, &dir, p)?;
                let _ = self.discard_backup(&p.id);
            }
            Ok(())
        };
        let failed = |f: StepFailed| -> Result<Outcome, Stop> {
            let (restored, reason) = match restore() {
                Ok(()) => (true, f.reason),
                Err(e) => (false, format!("{}, and restoring failed: {e}", f.reason)),
            };
            Ok(Outcome::Failed {
                status: f.status,
                reason,
                make_log: f.make_log,
                restored,
                backup: (!restored).then(|| p.id.backup_dir()),
            })
        };
        let started = Instant::now();
        let start_time = SystemTime::now();
        let preflight = match self.build(p, &dir, notes) {
            Built::Done { preflight } => preflight,
            Built::Skipped(s) => {
                if let Err(e) = restore() {
                    return failed(StepFailed {
                        status: Some(s),
                        reason: format!("dkms build exited {s}: {e}"),
                        make_log: None,
                    });
                }
                return Ok(Outcome::Skipped { status: s });
            }
            Built::Failed(f) => return failed(f),
        };
        if let Err(f) = self.install(p) {
            return failed(f);
        }
        if let Err(reason) = self.verify_installed(p, &dir, start_time, notes) {
            return failed(StepFailed::because(reason));
        }
        if backup.is_some() {
            // The new module is in place: the old one becomes the previous
            // build, or goes.
            if let Err(e) = self.keep_previous(&p.id, self.config.keep_previous) {
                notes.push(format!("the previous build of {} was not kept: {e}", p.id));
                let _ = self.discard_backup(&p.id);
            }
        }
        Ok(Outcome::Rebuilt {
            seconds: started.elapsed().as_secs_f64(),
            preflight,
        })
    }

    /// Step 0: a backup left by an earlier run means that run was killed
    /// mid-way or could not put the module back: finish its job first.
    /// `Some(AlreadyDone)` when the pair needs no rebuild after all.
    pub(super) fn recover(&self, p: &QueuedPair, dir: &Path) -> Result<Option<Outcome>, Stop> {
        if let Some(b) = self.state.backup(&p.id, false).map_err(Stop::Kept)? {
            if b.names().iter().any(|n| n == COMPLETE) {
                if !b.names().iter().any(|n| n == RESTORING) && self.is_done(p, dir) {
                    if self
                        .keep_previous(&p.id, self.config.keep_previous)
                        .is_err()
                    {
                        self.discard_backup(&p.id).map_err(Stop::Kept)?;
                    }
                    return Ok(Some(Outcome::AlreadyDone));
                }
                self.restore(b.path(), dir, p).map_err(Stop::Unrestored)?;
            }
        }
        // Also prunes the empty `M/V/K` a run killed inside remove_backup
        // left (found by the SIGKILL-at-50-points test).
        self.discard_backup(&p.id).map_err(Stop::Kept)?;
        if self.is_done(p, dir) {
            return Ok(Some(Outcome::AlreadyDone));
        }
        Ok(None)
    }

    /// Step 1: back up the dkms directory and the installed copies, when
    /// there is a built module to lose; the backup's host path.
    pub(super) fn back_up_working(
        &self,
        p: &QueuedPair,
        dir: &Path,
    ) -> Result<Option<PathBuf>, Stop> {
        if built_time(&dir.join("module")).is_none() {
            return Ok(None);
        }
        match self.back_up(p, dir) {
            Ok(b) => Ok(Some(b)),
            Err(e) => {
                let _ = self.discard_backup(&p.id);
                Err(Stop::Kept(Error::Refused(format!(
                    "cannot back up the working module: {e}"
                ))))
            }
        }
    }

    /// Step 2: build, with a fresh run log for this attempt; or, when
    /// preflight built against exactly this tree, put its build in place.
    /// A failed build's make.log is kept.
    pub(super) fn build(&self, p: &QueuedPair, dir: &Path, notes: &mut Vec<String>) -> Built {
        let kept = self.kept_build(p, notes);
        let preflight = kept.is_some();
        let ran = match &kept {
            Some(k) => {
                let placed = remove_dir_tree(dir).and_then(|()| {
                    let parent = dir.parent().unwrap_or(Path::new("/"));
                    kept::install(k, parent, dir.file_name().unwrap_or_default())
                        .map_err(|e| Error::io(dir, std::io::Error::other(e)))
                });
                match placed {
                    Ok(()) => Ran::Exit(0),
                    Err(e) => {
                        return Built::Failed(StepFailed::because(format!(
                            "placing preflight's build failed: {e}"
                        )))
                    }
                }
            }
            None => self.dkms(p, &["build", "--force"], self.run_log(p, false)),
        };
        drop(kept);
        match ran {
            Ran::Exit(0) => Built::Done { preflight },
            Ran::Exit(s @ (EXIT_BUILD_EXCLUSIVE | EXIT_NO_HEADERS)) => Built::Skipped(s),
            Ran::Exit(s) => Built::Failed(StepFailed {
                status: Some(s),
                reason: format!("dkms build exited {s}"),
                make_log: self.keep_make_log(p),
            }),
            Ran::TimedOut => {
                let make_log = self.keep_make_log(p);
                let limit = self.config.build_timeout.as_secs();
                Built::Failed(StepFailed {
                    status: None,
                    reason: format!("dkms build took longer than {limit} s and was killed"),
                    make_log,
                })
            }
            Ran::SpawnFailed(e) => Built::Failed(StepFailed::because(e)),
        }
    }

    /// Step 3: install over the working module (dkms copies; depmod waits
    /// for the kernel to be settled).
    pub(super) fn install(&self, p: &QueuedPair) -> Result<(), StepFailed> {
        match self.dkms(
            p,
            &["install", "--force", "--no-depmod"],
            self.run_log(p, true),
        ) {
            Ran::Exit(0) => Ok(()),
            Ran::Exit(s) => Err(StepFailed {
                status: Some(s),
                reason: format!("dkms install exited {s}"),
                make_log: None,
            }),
            Ran::TimedOut => Err(StepFailed::because("dkms install timed out".into())),
            Ran::SpawnFailed(e) => Err(StepFailed::because(e)),
        }
    }

    /// Step 4: what dkms installed since `start_time` is a copy of each
    /// built file and is for this kernel. Signature trouble and other
    /// same-named copies become `notes`; the error is why the rebuild
    /// failed.
    pub(super) fn verify_installed(
        &self,
        p: &QueuedPair,
        dir: &Path,
        start_time: SystemTime,
        notes: &mut Vec<String>,
    ) -> Result<(), String> {
        // Verify by install time, not content: kbuild builds are
        // reproducible. Each built file needs a copy dkms just wrote; any
        // other same-named copy is not dkms's and only worth a warning.
        let names = built_names(dir);
        let installed = self.installed_modules(p, &names);
        let fresh = |f: &PathBuf| {
            std::fs::metadata(f)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t + Duration::from_secs(1) >= start_time)
        };
        let all_new = !names.is_empty()
            && names.iter().all(|n| {
                installed
                    .iter()
                    .any(|i| i.file_name() == Some(n.as_os_str()) && fresh(i))
            });
        if !all_new {
            return Err("dkms install left no new module in /lib/modules".into());
        }
        // The new module must be for this kernel: a vermagic of another
        // release would not load after the reboot.
        for copy in installed.iter().filter(|i| fresh(i)) {
            if let Some(vermagic) =
                verify::modinfo_field(self.state.root(), &self.modinfo, copy, "vermagic")
            {
                let release = vermagic.split_whitespace().next().unwrap_or_default();
                if release != p.id.kernel.as_str() {
                    return Err(format!(
                        "the installed module is for kernel {release:?}, not {} (vermagic {vermagic:?})",
                        p.id.kernel
                    ));
                }
            }
        }
        for copy in installed.iter().filter(|i| fresh(i)) {
            notes.extend(self.signature_warnings(p, copy));
        }
        for other in installed.iter().filter(|i| !fresh(i)) {
            let inroot = other
                .strip_prefix(self.state.root().dir())
                .map_or(other.clone(), |r| Path::new("/").join(r));
            notes.push(format!(
                "{}: another copy of {}/{}'s module, not installed by dkms, is at {}; depmod may prefer it: remove it if it is a leftover",
                p.id.kernel,
                p.id.module,
                p.id.version,
                inroot.display()
            ));
        }
        Ok(())
    }

    /// Done already: the module was built after the change, and for each
    /// built file some installed copy holds exactly its bytes (a killed run
    /// got past `install`). Copies are compared by content, not time: a
    /// killed build can leave a new module behind before `install` ran, and
    /// an installed copy's time says nothing about what it was built from
    /// (found by the SIGKILL-at-50-points test). Other same-named copies
    /// (a leftover `extra/M.ko`) do not count against it.
    fn is_done(&self, p: &QueuedPair, dkms_dir: &Path) -> bool {
        let since = at_secs(p.stale_since.saturating_add(1));
        let module_dir = dkms_dir.join("module");
        if built_time(&module_dir).is_none_or(|t| t < since) {
            return false;
        }
        let names = built_names(dkms_dir);
        let installed = self.installed_modules(p, &names);
        // Compared as streams; a file over the cap or unreadable is no
        // proof of anything: not done (the backup then refuses it).
        !names.is_empty()
            && names.iter().all(|n| {
                let built = module_dir.join(n);
                installed
                    .iter()
                    .filter(|i| i.file_name() == Some(n))
                    .any(|c| backup::same_bytes(&built, c).unwrap_or(false))
            })
    }

    /// Preflight's build of `p`, when it was made against exactly the tree
    /// installed now; a kept build that does not match is dropped with a
    /// note saying why, and the pair builds as before.
    fn kept_build(&self, p: &QueuedPair, notes: &mut Vec<String>) -> Option<kept::Kept> {
        if !self.use_kept.load(Ordering::Relaxed) || !kept::exists(self.state, &p.id) {
            return None;
        }
        let root = self.state.root();
        let inv = self
            .inputs
            .get_or_init(|| {
                crate::inventory::Inventory::full(root)
                    .map_err(|e| log::warn!("{e}"))
                    .ok()
            })
            .as_ref()?;
        let now = kept::Inputs {
            id: p.id.clone(),
            packages: kept::packages_of(inv, &p.id.kernel, &[]),
            source: kept::source_fingerprint(root, &p.id.module, &p.id.version),
            time: crate::state::now_secs(),
        };
        match kept::take(self.state, &p.id, &now) {
            Ok(k) => k,
            Err(why) => {
                notes.push(format!(
                    "preflight's build of {} was not used ({why}): built again",
                    p.id
                ));
                None
            }
        }
    }

    /// Loud warnings when the new module will not load after the reboot:
    /// unsigned where signatures are enforced, or signed with a key the
    /// firmware does not know. It stays installed (it is the best there is).
    fn signature_warnings(&self, p: &QueuedPair, copy: &Path) -> Vec<String> {
        let root = self.state.root();
        let facts = match verify::inspect(copy) {
            Ok(f) => f,
            Err(e) => {
                log::debug!("{e}");
                return Vec::new();
            }
        };
        let signed = facts.vermagic.is_some().then_some(facts.signed);
        let cfg = verify::sig_config(root, &p.id.kernel);
        let fw = self
            .firmware
            .get_or_init(|| Firmware::read(root, self.mokutil.as_deref()));
        let mut out: Vec<String> = verify::unsigned_warning(&p.id, signed, cfg, fw)
            .into_iter()
            .collect();
        if let Some(w) = verify::key_warning(&p.id, signed, fw) {
            if !self.key_said.swap(true, Ordering::Relaxed) {
                out.push(w);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::name::{DkmsArch, KernelRelease, ModuleName, ModuleVersion};
    use crate::pair::PairId;
    use crate::root::Root;
    use crate::state::State;
    use crate::tools::Tools;

    /// A root with `/lib -> usr/lib` and kernel `K`, run by the recording
    /// fake dkms and modinfo of the integration tests.
    struct Fx {
        t: tempfile::TempDir,
        state: State,
        config: Config,
    }

    fn fx() -> Fx {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("usr/lib/modules/K")).unwrap();
        std::fs::create_dir_all(t.path().join("fake-dkms")).unwrap();
        std::os::unix::fs::symlink("usr/lib", t.path().join("lib")).unwrap();
        let state = State::new(&Root::new(t.path()));
        Fx {
            t,
            state,
            config: Config::default(),
        }
    }

    impl Fx {
        fn executor(&self) -> Executor<'_> {
            let fake = |n: &str| {
                Some(
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("tests/integration")
                        .join(n)
                        .into_os_string(),
                )
            };
            let tools = Tools {
                dkms: fake("fake-dkms"),
                modinfo: fake("fake-modinfo"),
                ..Tools::default()
            };
            Executor::new(&self.state, &self.config, tools).unwrap()
        }

        fn control(&self, name: &str, text: &str) {
            std::fs::write(self.t.path().join("fake-dkms").join(name), text).unwrap();
        }

        fn dkms_dir(&self) -> PathBuf {
            self.t.path().join("var/lib/dkms/m/1/K/x86_64")
        }

        fn installed(&self) -> PathBuf {
            self.t.path().join("usr/lib/modules/K/updates/dkms/m.ko")
        }
    }

    fn pair(stale_since: u64) -> QueuedPair {
        QueuedPair {
            id: PairId {
                module: ModuleName::new("m").unwrap(),
                version: ModuleVersion::new("1").unwrap(),
                kernel: KernelRelease::new("K").unwrap(),
                arch: DkmsArch::new("x86_64").unwrap(),
            },
            because: vec![],
            stale_since,
        }
    }

    /// Build, install and verify one after the other, as a rebuild does.
    fn rebuild_by_steps(f: &Fx, e: &Executor<'_>, p: &QueuedPair) {
        let start = SystemTime::now();
        let mut notes = Vec::new();
        assert!(matches!(
            e.build(p, &f.dkms_dir(), &mut notes),
            Built::Done { preflight: false }
        ));
        e.install(p).unwrap();
        e.verify_installed(p, &f.dkms_dir(), start, &mut notes)
            .unwrap();
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn build_install_and_verify_a_pair() {
        let f = fx();
        let e = f.executor();
        let p = pair(0);
        rebuild_by_steps(&f, &e, &p);
        assert!(f.dkms_dir().join("module/m.ko").is_file());
        assert_eq!(
            std::fs::read(f.installed()).unwrap(),
            std::fs::read(f.dkms_dir().join("module/m.ko")).unwrap()
        );
        // The run log of the attempt is kept under logs/.
        assert!(f.state.dir().join("logs/m-1-K.dkms.log").is_file());
    }

    #[test]
    fn a_failed_build_keeps_its_make_log_and_a_declined_one_is_skipped() {
        let f = fx();
        let e = f.executor();
        let p = pair(0);
        f.control("fail-m", "");
        let Built::Failed(failed) = e.build(&p, &f.dkms_dir(), &mut Vec::new()) else {
            panic!("the build did not fail");
        };
        assert_eq!(failed.status, Some(10));
        assert_eq!(failed.reason, "dkms build exited 10");
        assert_eq!(
            failed.make_log.as_deref(),
            Some(Path::new("/var/lib/dkms-hook/logs/m-1-K.make.log"))
        );
        let kept = std::fs::read_to_string(f.state.dir().join("logs/m-1-K.make.log")).unwrap();
        assert!(kept.contains("implicit declaration"), "{kept}");
        std::fs::remove_file(f.t.path().join("fake-dkms/fail-m")).unwrap();
        f.control("exclusive-m", "");
        assert!(matches!(
            e.build(&p, &f.dkms_dir(), &mut Vec::new()),
            Built::Skipped(77)
        ));
    }

    #[test]
    fn install_without_a_build_fails_with_dkms_status() {
        let f = fx();
        let failed = f.executor().install(&pair(0)).unwrap_err();
        assert_eq!(failed.status, Some(6));
        assert_eq!(failed.reason, "dkms install exited 6");
    }

    #[test]
    fn verify_wants_a_new_copy_for_this_kernel() {
        let f = fx();
        let e = f.executor();
        let p = pair(0);
        let start = SystemTime::now();
        assert!(matches!(
            e.build(&p, &f.dkms_dir(), &mut Vec::new()),
            Built::Done { .. }
        ));
        // Built, not installed: nothing new in /lib/modules.
        let why = e
            .verify_installed(&p, &f.dkms_dir(), start, &mut Vec::new())
            .unwrap_err();
        assert_eq!(why, "dkms install left no new module in /lib/modules");
        e.install(&p).unwrap();
        f.control("vermagic", "6.1.0-9-amd64 SMP preempt mod_unload");
        let why = e
            .verify_installed(&p, &f.dkms_dir(), start, &mut Vec::new())
            .unwrap_err();
        assert!(
            why.starts_with("the installed module is for kernel \"6.1.0-9-amd64\", not K"),
            "{why}"
        );
        std::fs::remove_file(f.t.path().join("fake-dkms/vermagic")).unwrap();
        // Another same-named copy, older than the install: only a note.
        let extra = f.t.path().join("usr/lib/modules/K/extra");
        std::fs::create_dir_all(&extra).unwrap();
        std::fs::write(extra.join("m.ko"), "old").unwrap();
        let old = std::fs::File::options()
            .write(true)
            .open(extra.join("m.ko"))
            .unwrap();
        old.set_modified(SystemTime::UNIX_EPOCH).unwrap();
        let mut notes = Vec::new();
        e.verify_installed(&p, &f.dkms_dir(), start, &mut notes)
            .unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("/lib/modules/K/extra/m.ko"), "{notes:?}");
    }

    #[test]
    fn the_backup_is_taken_only_of_a_built_module() {
        let f = fx();
        let e = f.executor();
        let p = pair(0);
        assert!(matches!(e.back_up_working(&p, &f.dkms_dir()), Ok(None)));
        rebuild_by_steps(&f, &e, &p);
        let Ok(Some(b)) = e.back_up_working(&p, &f.dkms_dir()) else {
            panic!("no backup");
        };
        assert!(b.join(COMPLETE).exists());
        assert!(b.ends_with("backups/m/1/K/x86_64"), "{}", b.display());
    }

    /// What a run killed after the backup leaves: the next one puts the
    /// working module back, and calls a pair done only when the installed
    /// copy holds what was built after the change.
    #[test]
    fn recover_restores_a_killed_runs_backup() {
        let f = fx();
        let e = f.executor();
        let p = pair(0);
        rebuild_by_steps(&f, &e, &p);
        let working = std::fs::read(f.installed()).unwrap();
        assert!(matches!(
            e.recover(&p, &f.dkms_dir()),
            Ok(Some(Outcome::AlreadyDone))
        ));
        assert!(matches!(e.back_up_working(&p, &f.dkms_dir()), Ok(Some(_))));
        // Killed inside `build --force`: the pair's directory is gone.
        std::fs::remove_dir_all(f.dkms_dir()).unwrap();
        // The change came after the working module: not done, rebuilt.
        let later = pair(crate::state::now_secs() + 60);
        assert!(matches!(e.recover(&later, &f.dkms_dir()), Ok(None)));
        assert!(f.dkms_dir().join("module/m.ko").is_file(), "restored");
        assert_eq!(std::fs::read(f.installed()).unwrap(), working);
        assert!(f.state.backup(&p.id, false).unwrap().is_none(), "removed");
    }

    /// Regression (a rare failure of the integration test
    /// `sigkill_at_50_points_loses_nothing_and_installs_nothing_twice`):
    /// `cp -a` writes a file's bytes before its times, so a run killed
    /// inside a restore left the old module with a fresh mtime, and the
    /// next run took it for the rebuild it was waiting for.
    #[test]
    fn a_half_done_restore_is_restored_again_not_taken_for_a_rebuild() {
        let f = fx();
        let e = f.executor();
        let p = pair(0);
        rebuild_by_steps(&f, &e, &p);
        // The working module was built an hour ago; the change came after.
        let hour_ago = SystemTime::now() - Duration::from_secs(3600);
        let built = f.dkms_dir().join("module/m.ko");
        let set_mtime = |file: &Path, t: SystemTime| {
            let h = std::fs::File::options().write(true).open(file).unwrap();
            h.set_modified(t).unwrap();
        };
        set_mtime(&built, hour_ago);
        let stale = pair(crate::state::now_secs() - 1800);
        let Ok(Some(b)) = e.back_up_working(&stale, &f.dkms_dir()) else {
            panic!("no backup");
        };
        // Killed inside the restore: the old bytes are back, with the time
        // of the copy, and the marker says so.
        std::fs::write(b.join(RESTORING), "").unwrap();
        set_mtime(&built, SystemTime::now());
        assert!(e.is_done(&stale, &f.dkms_dir()), "the trap this guards");
        assert!(matches!(e.recover(&stale, &f.dkms_dir()), Ok(None)));
        assert_eq!(
            std::fs::metadata(&built).unwrap().modified().unwrap(),
            hour_ago,
            "restored with its own time: not done, rebuilt"
        );
        assert!(f.state.backup(&p.id, false).unwrap().is_none());
    }

    /// A backup whose removal was killed after its marker went is ignored.
    #[test]
    fn a_backup_being_discarded_is_not_restored() {
        let f = fx();
        let e = f.executor();
        let p = pair(0);
        rebuild_by_steps(&f, &e, &p);
        let Ok(Some(b)) = e.back_up_working(&p, &f.dkms_dir()) else {
            panic!("no backup");
        };
        std::fs::remove_file(b.join(COMPLETE)).unwrap();
        std::fs::remove_dir_all(b.join("tree")).unwrap();
        let installed = std::fs::read(f.installed()).unwrap();
        assert!(matches!(
            e.recover(&p, &f.dkms_dir()),
            Ok(Some(Outcome::AlreadyDone))
        ));
        assert_eq!(std::fs::read(f.installed()).unwrap(), installed);
        assert!(f.state.backup(&p.id, false).unwrap().is_none(), "pruned");
    }
}
