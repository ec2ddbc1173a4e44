//! State for fleets: a Prometheus node_exporter textfile (`dkms_hook.prom`)
//! written atomically after every run that may change the pairs' state, and
//! the counters it needs, kept in the state directory, with the standing
//! blocks of `preflight = block`. The same runs keep the findings the login
//! notice shows (`findings.json`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use crate::config::Textfile;
use crate::kernel::KernelRelease;
use crate::plan::{Assessment, PairState};
use crate::preflight::blocked::Blocked;
use crate::rebuild::{Outcome, PairResult};
use crate::root::{Root, CAP_STATE};
use crate::state::State;
use crate::state_dir::Dir;
use crate::tools::Tools;
use crate::verify::Check;
use crate::Error;

/// Where Debian's prometheus-node-exporter reads textfiles.
pub const TEXTFILE_DIR: &str = "/var/lib/prometheus/node-exporter";
pub const TEXTFILE: &str = "dkms_hook.prom";

/// Counters kept across runs (`counters.json` in the state directory).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub rebuilds: u64,
    pub failures: u64,
    pub last_run: u64,
}

/// The counters as saved (zero when none or unreadable).
pub fn counters(state: &State) -> Counters {
    state
        .open()
        .and_then(|d| d.read("counters.json", CAP_STATE))
        .ok()
        .flatten()
        .and_then(|t| serde_json::from_slice(&t).ok())
        .unwrap_or_default()
}

/// Add a run's results to the counters.
pub fn count(state: &State, results: &[PairResult]) -> Result<Counters, Error> {
    let dir = state.open()?;
    let mut c = counters(state);
    for r in results {
        match r.outcome {
            Outcome::Rebuilt { .. } => c.rebuilds = c.rebuilds.saturating_add(1),
            Outcome::Failed { .. } => c.failures = c.failures.saturating_add(1),
            _ => {}
        }
    }
    c.last_run = crate::state::now_secs();
    let text = serde_json::to_vec(&c).map_err(|e| Error::Refused(e.to_string()))?;
    dir.write_atomic("counters.json", &text)?;
    Ok(c)
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn state_name(s: PairState) -> String {
    s.name().to_string()
}

/// The textfile's content, in the Prometheus text exposition format.
pub fn render(rows: &[Assessment], c: &Counters, running: Option<&KernelRelease>) -> String {
    // Every state is exported, 0 included.
    let mut by_state: BTreeMap<String, u64> =
        PairState::ALL.iter().map(|s| (state_name(*s), 0)).collect();
    for r in rows {
        *by_state.entry(state_name(r.state)).or_default() += 1;
    }
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# HELP dkms_hook_pairs dkms module × kernel pairs by state."
    );
    let _ = writeln!(t, "# TYPE dkms_hook_pairs gauge");
    for (s, n) in &by_state {
        let _ = writeln!(t, "dkms_hook_pairs{{state=\"{s}\"}} {n}");
    }
    let _ = writeln!(t, "# HELP dkms_hook_pair_info One pair and its state.");
    let _ = writeln!(t, "# TYPE dkms_hook_pair_info gauge");
    for r in rows {
        let _ = writeln!(
            t,
            "dkms_hook_pair_info{{module=\"{}\",version=\"{}\",kernel=\"{}\",state=\"{}\",signed=\"{}\"}} 1",
            label(r.id.module.as_str()),
            label(r.id.version.as_str()),
            label(r.id.kernel.as_str()),
            state_name(r.state),
            match r.check.as_ref().and_then(Check::signed) {
                Some(true) => "true",
                Some(false) => "false",
                None => "unknown",
            }
        );
    }
    let ok = running.is_some_and(|k| {
        rows.iter().filter(|r| &r.id.kernel == k).all(|r| {
            !r.state.needs_attention() && r.check.as_ref().is_none_or(|c| c.will_not_load.is_none())
        })
    });
    for (name, kind, help, value) in [
        (
            "dkms_hook_last_run_timestamp_seconds",
            "gauge",
            "When dkms-hook last rebuilt or checked.",
            c.last_run,
        ),
        (
            "dkms_hook_rebuilds_total",
            "counter",
            "Pairs rebuilt.",
            c.rebuilds,
        ),
        (
            "dkms_hook_rebuild_failures_total",
            "counter",
            "Rebuilds that failed.",
            c.failures,
        ),
        (
            "dkms_hook_running_kernel_ok",
            "gauge",
            "1 when every pair of the running kernel is fresh and loadable as far as dkms-hook can tell.",
            u64::from(ok),
        ),
    ] {
        let _ = writeln!(
            t,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    t
}

/// The textfile's lines for the upgrades `preflight = block` stopped:
/// how many blocks stand, and one line per blocked pair with the package
/// versions it failed against.
pub fn render_blocked(blocked: &[Blocked]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# HELP dkms_hook_preflight_blocked Pairs whose failed test build stopped apt (preflight = block), while the block stands.\n# TYPE dkms_hook_preflight_blocked gauge\ndkms_hook_preflight_blocked {}",
        blocked.len()
    );
    let _ = writeln!(
        t,
        "# HELP dkms_hook_preflight_blocked_info One standing block: the pair and the packages it failed against.\n# TYPE dkms_hook_preflight_blocked_info gauge"
    );
    for b in blocked {
        let against: Vec<String> = b
            .because
            .iter()
            .map(|c| {
                let v = c.new.as_ref().map(ToString::to_string).unwrap_or_default();
                format!("{} {v}", c.package)
            })
            .collect();
        let _ = writeln!(
            t,
            "dkms_hook_preflight_blocked_info{{module=\"{}\",version=\"{}\",kernel=\"{}\",against=\"{}\"}} 1",
            label(b.id().module.as_str()),
            label(b.id().version.as_str()),
            label(b.id().kernel.as_str()),
            label(&against.join(", "))
        );
    }
    t
}

/// Write the textfile atomically where the config says (nothing with
/// `off`, or with `auto` when node_exporter's directory does not exist).
/// The directory is opened through [`Dir::open_trusted`]: as root, a link
/// on the way or a directory another user could swap is refused (the
/// directory's owner could otherwise make root write into any directory).
pub fn write(root: &Root, where_: &Textfile, content: &str) -> Result<(), Error> {
    let (dir, must_exist) = match where_ {
        Textfile::Off => return Ok(()),
        Textfile::Auto => (Path::new(TEXTFILE_DIR), false),
        Textfile::Dir(d) => (d.as_path(), true),
    };
    match Dir::open_trusted(root.dir(), dir)? {
        Some(d) => d.write_atomic(TEXTFILE, content.as_bytes()),
        None if must_exist => Err(Error::io(
            dir,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        )),
        None => Ok(()),
    }
}

/// After a run: count its results, judge every pair again and keep what
/// the login notice shows, and write the textfile.
pub fn after_run(
    state: &State,
    cfg: &crate::config::Config,
    tools: &Tools,
    results: &[PairResult],
) -> Result<(), Error> {
    let counters = count(state, results)?;
    let inv = crate::inventory::Inventory::full(state.root())?;
    let failed = state.failures()?.failed;
    let mut rows = crate::verify::assess(state.root(), &inv, cfg, &failed, Some(tools));
    crate::rollback::annotate(state, &mut rows);
    state.save_findings(&crate::verify::findings(&rows))?;
    let blocked = render_blocked(&crate::preflight::blocked::standing(state));
    write(
        state.root(),
        &cfg.prometheus_textfile,
        &(render(&rows, &counters, inv.running.as_ref()) + &blocked),
    )
}

/// After preflight recorded or ended a block: the textfile again, with the
/// pairs judged anew and the saved counters.
pub fn after_block(state: &State, cfg: &crate::config::Config, tools: &Tools) -> Result<(), Error> {
    let inv = crate::inventory::Inventory::full(state.root())?;
    let failed = state.failures()?.failed;
    let mut rows = crate::verify::assess(state.root(), &inv, cfg, &failed, Some(tools));
    crate::rollback::annotate(state, &mut rows);
    from_status(state, cfg, &rows, inv.running.as_ref())
}

/// From `status` (run as root): the rows it computed, the saved counters.
pub fn from_status(
    state: &State,
    cfg: &crate::config::Config,
    rows: &[Assessment],
    running: Option<&KernelRelease>,
) -> Result<(), Error> {
    state.save_findings(&crate::verify::findings(rows))?;
    let blocked = render_blocked(&crate::preflight::blocked::standing(state));
    write(
        state.root(),
        &cfg.prometheus_textfile,
        &(render(rows, &counters(state), running) + &blocked),
    )
}
