//! The lines that say a block (`preflight = block` stopped apt; see
//! [`crate::preflight::blocked`]): in `status`, the login notice, the log,
//! preflight's answer from the record, and when a block ends.

use super::{against, local_time, PREFIX};
use crate::preflight::blocked::{Blocked, Ended};

/// `acpi-call/1.2.2 for 6.1.0-50-amd64`.
fn pair(b: &Blocked) -> String {
    b.id().to_string()
}

fn since(b: &Blocked) -> String {
    local_time(crate::state::at_secs(b.inputs.time))
}

fn see(b: &Blocked) -> String {
    b.make_log
        .as_ref()
        .map(|m| format!("; see {m}"))
        .unwrap_or_default()
}

/// A line of `status` per standing block.
pub fn status_line(b: &Blocked) -> String {
    format!(
        "{PREFIX} BLOCKED since {}: preflight = block stopped apt before {}: {} fails to build against it ({}){}; to go on: fix it and run dkms-hook preflight, or preflight=warn in {}",
        since(b),
        against(&b.because),
        pair(b),
        b.failure,
        see(b),
        crate::config::CONFIG_FILE
    )
}

/// The login notice's line per block.
pub fn motd_line(b: &Blocked) -> String {
    format!(
        "{PREFIX} the upgrade to {} is blocked since {}: {} fails to build against it; see: dkms-hook status",
        against(&b.because),
        since(b),
        pair(b)
    )
}

/// The log's line when a block is recorded.
pub fn recorded_line(b: &Blocked) -> String {
    format!(
        "preflight = block stopped apt: {} fails to build against {} ({}){}",
        pair(b),
        against(&b.because),
        b.failure,
        see(b)
    )
}

/// preflight's answer from a standing record, without building (after
/// `dkms-hook: `).
pub fn still_line(b: &Blocked) -> String {
    format!(
        "preflight: {} against {} still fails, as at {}; not built again: its packages and the module's source are the same{}",
        pair(b),
        against(&b.because),
        since(b),
        see(b)
    )
}

/// The log's line (and the hook's) when a block ends.
pub fn ended_line(b: &Blocked, why: &Ended) -> String {
    let why = match why {
        Ended::Installed { package, version } => format!("{package} {version} is installed"),
        Ended::KernelGone => format!("kernel {} is gone", b.id().kernel),
        Ended::ModuleGone => format!("{}/{} is gone", b.id().module, b.id().version),
        Ended::Built => "a preflight built it".into(),
    };
    format!(
        "block ended: {} against {}: {why}",
        pair(b),
        against(&b.because)
    )
}
