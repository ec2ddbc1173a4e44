//! Under unattended-upgrades, the rebuild waits for its run to end:
//! whether it does ([`deferral`]), and the waiter that then runs it.
//! unattended-upgrades installs in minimal steps, each its own dpkg run;
//! rebuilding after each step built a pair once per step that fed it.
//!
//! Not when unattended-upgrades reboots by itself at its end
//! (`Automatic-Reboot`) or runs at shutdown (`InstallOnShutdown`): a
//! waiter would then build while the machine goes down, so the rebuild
//! stays after each step, as under apt. The waiter is a process of ours
//! in unattended-upgrades' service, which stops only its main process
//! (apt-daily-upgrade.service: `KillMode=process`).

use std::time::{Duration, Instant};

use super::args::Env;
use crate::apt::frontend;
use crate::apt::unattended::UnattendedRun;
use crate::config::Config;
use crate::followup::mail::{apt_config, apt_true};
use crate::root::Root;

/// The keys under which unattended-upgrades goes down with the machine.
const REBOOT_KEYS: [&str; 2] = [
    "Unattended-Upgrade::Automatic-Reboot",
    "Unattended-Upgrade::InstallOnShutdown",
];
/// How often the waiter looks whether the run has ended.
const POLL: Duration = Duration::from_millis(500);
/// The longest wait: a run that has not ended by then (a hung dpkg) is not
/// waited for any longer; its queue is worked off as after any step.
const MAX_WAIT: Duration = Duration::from_secs(12 * 3600);

/// The unattended-upgrades run whose end the rebuild waits for; `None`
/// outside one, with `defer_unattended = no`, when it reboots by itself,
/// or when apt's configuration cannot be read (then the rebuild is done
/// now: the safe way).
pub(super) fn deferral(root: &Root, cfg: &Config, env: &Env) -> Option<UnattendedRun> {
    if !cfg.defer_unattended {
        return None;
    }
    let run = UnattendedRun::current(root)?;
    match apt_config(root, &env.tools, &REBOOT_KEYS) {
        Ok(v) if v.iter().flatten().any(|x| apt_true(x)) => {
            log::debug!("unattended-upgrades reboots by itself: rebuilding after each step");
            None
        }
        Ok(_) => Some(run),
        Err(e) => {
            log::debug!("{e}: rebuilding after each step");
            None
        }
    }
}

/// Start the waiter of `run` unless it runs already.
pub(super) fn ensure_waiter(root: &Root, run: &UnattendedRun) -> Result<(), String> {
    if run.waiter().is_some() {
        return Ok(());
    }
    let me = std::env::current_exe().map_err(|e| format!("cannot find dkms-hook itself: {e}"))?;
    let mut c = std::process::Command::new(me);
    if !root.is_host_root() {
        c.arg("--root").arg(root.dir());
    }
    c.args([
        crate::apt::unattended::WAITER_COMMAND,
        &run.pid.to_string(),
        &run.start.to_string(),
    ])
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    crate::tools::detached(&mut c);
    // Not waited for: it outlives this hook, and init reaps it.
    #[allow(clippy::zombie_processes)]
    let child = c
        .spawn()
        .map_err(|e| format!("cannot start the waiter: {e}"))?;
    let pid = child.id();
    match frontend::start_of(pid).filter(|&start| frontend::still_runs(pid, start)) {
        Some(start) => {
            run.note_waiter(pid, start);
            Ok(())
        }
        None => Err(format!("the waiter ({pid}) ended at once")),
    }
}

/// Wait until `run` ends and dpkg's locks are free (its last step's dpkg
/// may outlive it when it is killed), or [`MAX_WAIT`] has passed.
pub(super) fn wait_for(root: &Root, run: &UnattendedRun) {
    let t0 = Instant::now();
    while (frontend::still_runs(run.pid, run.start) || crate::dpkg::locked(root))
        && t0.elapsed() < MAX_WAIT
    {
        std::thread::sleep(POLL);
    }
}
