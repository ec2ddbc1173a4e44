//! The guard's entry points (`kernel-guard preinst|postinst K`) and what a
//! guard run says: one line per module put back, a warning per problem.
//! Like every hook, they exit 0 whatever happens.

use super::args::{Env, GuardPhase};
use super::{err, load_config, say_notes, warn};
use crate::config::Config;
use crate::guard::{self, Done};
use crate::kernel::KernelRelease;
use crate::report::{self, PREFIX};
use crate::root::Root;
use crate::state::{Lock, State};

/// `/etc/kernel/{preinst,postinst}.d/00-dkms-hook-guard`: save before dkms's
/// `kernel_preinst`, put back before `dkms autoinstall`. Always 0.
pub(super) fn kernel_guard(root: &Root, env: &Env, phase: GuardPhase, kernel: &str) -> i32 {
    if env.suspended {
        return 0;
    }
    let k = match KernelRelease::new(kernel) {
        Ok(k) => k,
        Err(e) => {
            warn(&format!("{PREFIX} {e}"));
            return 0;
        }
    };
    let state = State::new(root);
    let run = || -> Result<(), crate::Error> {
        let cfg = load_config(root);
        // Nothing to do, not even the lock (a running rebuild would hold up
        // the kernel package), on a system whose dkms does not unbuild
        // (Debian 12), for a kernel with no module built, with nothing saved.
        let needed = match phase {
            GuardPhase::Preinst => guard::needed_before_unbuild(&state, &k),
            GuardPhase::Postinst => guard::has_anything(&state),
        };
        if !needed {
            return Ok(());
        }
        // As every run takes it: a killed run's leftover builds stop first.
        let lock = crate::rebuild::builds::lock(&state)?;
        let done = match phase {
            GuardPhase::Preinst => {
                guard::before_unbuild(&state, &lock, &cfg, env.tools.clone(), &k)?
            }
            GuardPhase::Postinst => {
                guard::after_unpack(&state, &lock, &cfg, env.tools.clone(), &k)?
            }
        };
        say(&state, &done);
        Ok(())
    };
    if let Err(e) = run() {
        warn(&format!("{PREFIX} {e}"));
    }
    0
}

/// Post-invoke and boot, with the lock held: finish what a guard left.
pub(super) fn finish(state: &State, lock: &Lock, cfg: &Config, env: &Env) {
    match guard::finish(state, lock, cfg, env.tools.clone()) {
        Ok(done) => say(state, &done),
        Err(e) => warn(&format!("{PREFIX} {e}")),
    }
}

/// A removed kernel's saved modules are not put back.
pub(super) fn forget_kernel(state: &State, k: &KernelRelease) {
    // Right after `forget_removed_kernel`: the lock is free unless a rebuild
    // holds it, and then the prerm already waited for it once.
    match state.lock_within(std::time::Duration::from_secs(1)) {
        Ok(Some(lock)) => {
            if let Err(e) = guard::forget_kernel(state, &lock, k) {
                warn(&format!("{PREFIX} {e}"));
            }
        }
        // The next run drops them: their kernel is gone by then.
        Ok(None) => {}
        Err(e) => warn(&format!("{PREFIX} {e}")),
    }
}

fn say(state: &State, done: &Done) {
    for g in &done.saved {
        report::log_line(
            state.root(),
            &format!("saved {} before dkms's kernel_preinst", g.label()),
        );
    }
    for g in &done.put_back {
        let line = format!(
            "put back {} (dkms's kernel_preinst had removed it)",
            g.label()
        );
        report::log_line(state.root(), &line);
        err(&format!("{PREFIX} {line}"));
    }
    say_notes(state, &done.notes, true);
    for s in &done.settled {
        say_notes(state, &s.notes, true);
    }
}
