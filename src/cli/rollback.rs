//! `rollback M/V K` and `unhold M/V K`, over the library's
//! [`crate::rollback`]: one line for what was done, or one line for why
//! not, and each line in /var/log/dkms-hook.log too.

use super::args::{Env, PairArgs, RollbackArgs};
use super::{load_config, out, say_notes};
use crate::name::KernelRelease;
use crate::report::{self, PREFIX};
use crate::rollback::{self, parse_module_version};
use crate::root::Root;
use crate::state::State;

pub(super) fn rollback(root: &Root, env: &Env, a: &RollbackArgs) -> anyhow::Result<i32> {
    let (m, v) = parse_module_version(&a.pair.module)?;
    let k = KernelRelease::new(&a.pair.kernel)?;
    let cfg = load_config(root);
    let state = State::new(root);
    // As every run takes it: a killed run's leftover builds stop first.
    let lock = crate::rebuild::builds::lock(&state)?;
    let done = rollback::rollback(
        &state,
        &lock,
        &cfg,
        env.tools.clone(),
        &m,
        &v,
        &k,
        a.reason.as_deref(),
    )?;
    let mut lines = vec![format!(
        "rolled back {}: its previous build is installed again, and held (sync, retry and the hooks leave it alone; dkms-hook unhold {m}/{v} {k} lets it be rebuilt)",
        done.id
    )];
    if done.swapped {
        lines.push(format!(
            "the build it replaced is kept as the previous one: dkms-hook rollback {m}/{v} {k} puts it back"
        ));
    }
    if done.settled.initramfs {
        lines.push(format!("{k}: initramfs refreshed"));
    }
    for l in &lines {
        report::log_line(root, l);
        out(&format!("{PREFIX} {l}"));
    }
    say_notes(&state, &done.settled.notes, true);
    Ok(0)
}

pub(super) fn unhold(root: &Root, a: &PairArgs) -> anyhow::Result<i32> {
    let (m, v) = parse_module_version(&a.module)?;
    let k = KernelRelease::new(&a.kernel)?;
    let state = State::new(root);
    let lock = crate::rebuild::builds::lock(&state)?;
    let h = rollback::unhold(&state, &lock, &m, &v, &k)?;
    let line = format!(
        "{} is no longer held: dkms-hook status judges it as usual, and dkms-hook sync rebuilds it when it is stale",
        h.id
    );
    report::log_line(root, &line);
    out(&format!("{PREFIX} {line}"));
    Ok(0)
}
