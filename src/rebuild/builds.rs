//! Notes of running builds (`builds/M.pgid` in the state directory): each
//! dkms the rebuild starts is noted with its process group, start time and
//! boot, so that the next run, holding the run lock, can stop what a killed
//! run left building in the shared build directory, and nothing else: a
//! recycled pid or a forged note does not match.

use std::fs;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::name::{KernelRelease, ModuleName};
use crate::state::{Lock, State};
use crate::Error;

/// A running dkms of ours, as noted in `builds/M.pgid`: enough to prove
/// later that a process group is still that build, not a recycled pid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildNote {
    pub pgid: i32,
    /// Field 22 of `/proc/PGID/stat`: clock ticks after boot.
    pub start: u64,
    pub boot_id: String,
}

/// The start time of a process (field 22 of `/proc/PID/stat`).
pub fn process_start(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state …": comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

impl BuildNote {
    /// The note for the process group led by `pgid`, started just now.
    pub fn of(pgid: i32) -> Option<BuildNote> {
        Some(BuildNote {
            pgid,
            start: process_start(pgid)?,
            boot_id: boot_id(),
        })
    }

    /// Whether the group leader named here is still that same process: same
    /// boot, same start time. A recycled pid or a forged note fails this.
    pub fn still_running(&self) -> bool {
        self.pgid > 1
            && !self.boot_id.is_empty()
            && self.boot_id == boot_id()
            && process_start(self.pgid) == Some(self.start)
    }
}

/// Take the run lock and stop what is left of a killed run's builds first:
/// what every run does before it reads the queue.
pub fn lock(state: &State) -> Result<Lock, Error> {
    let lock = state.lock()?;
    kill_leftover_builds(state);
    Ok(lock)
}

/// Forget a kernel being removed (`kernel-hook prerm`), under the run lock
/// (taken as [`lock`] takes it) so that no rebuild's backup or failure
/// record of it is in flight. A rebuild still running after `wait` leaves
/// the job to the next locked run instead of holding up the kernel's
/// removal.
pub fn forget_removed_kernel(
    state: &State,
    k: &KernelRelease,
    wait: Duration,
) -> Result<(), Error> {
    match state.lock_within(wait)? {
        Some(_lock) => {
            kill_leftover_builds(state);
            state.forget_kernel(k)
        }
        None => {
            log::debug!("a rebuild is running; the next run forgets {k}");
            state.request_forget(k)
        }
    }
}

/// Note the process group of a running dkms, so that the next run can
/// stop it if this one is killed (the file is `builds/M.pgid`).
pub fn note_build(state: &State, module: &ModuleName, note: &BuildNote) {
    let r = serde_json::to_vec(note)
        .map_err(|e| Error::Refused(e.to_string()))
        .and_then(|text| {
            state
                .open()?
                .subdir("builds")?
                .write_atomic(&format!("{module}.pgid"), &text)
        });
    if let Err(e) = r {
        log::debug!("cannot note the build of {module}: {e}");
    }
}

pub fn forget_build(state: &State, module: &ModuleName) {
    if let Some(b) = state.open().ok().and_then(|d| d.existing_subdir("builds")) {
        b.remove(&format!("{module}.pgid"));
    }
}

/// Kill what is left of the builds of a killed run (their process
/// groups). Called with the lock held, when no build of ours runs. Only
/// a group whose leader provably is our build (same boot, same start
/// time) is killed, and never under `--root`: there the notes come from
/// another system's files and their pids mean nothing on this one.
fn kill_leftover_builds(state: &State) {
    let Some(builds) = state.open().ok().and_then(|d| d.existing_subdir("builds")) else {
        return;
    };
    for name in builds.names() {
        let note: Option<BuildNote> = builds
            .read(&name, 4096)
            .ok()
            .flatten()
            .and_then(|t| serde_json::from_slice(&t).ok());
        builds.remove(&name);
        let Some(note) = note else { continue };
        if !state.root().is_host_root() {
            log::debug!("not stopping process group {} under --root", note.pgid);
            continue;
        }
        if !note.still_running() {
            continue;
        }
        if let Some(pid) = rustix::process::Pid::from_raw(note.pgid) {
            if rustix::process::kill_process_group(pid, rustix::process::Signal::Kill).is_ok() {
                log::warn!(
                    "stopped the leftover build of a killed run (process group {})",
                    note.pgid
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forged_build_note_names_no_process_of_ours() {
        let me = std::process::id() as i32;
        let real = BuildNote::of(me).unwrap();
        assert!(real.still_running());
        let recycled = BuildNote {
            start: real.start + 1,
            ..real.clone()
        };
        assert!(!recycled.still_running());
        let other_boot = BuildNote {
            boot_id: "0".into(),
            ..real
        };
        assert!(!other_boot.still_running());
    }
}
