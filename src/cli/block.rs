//! Blocks in the command line ([`crate::preflight::blocked`]): the gate in
//! front of preflight's test builds when Pre-Install-Pkgs runs it under
//! `preflight = block` (a standing block of the same inputs answers at
//! once, without building), the records written after the builds, and the
//! lines, log lines and textfile that say them.

use super::{err, warn};
use crate::preflight::blocked::{self, Blocked};
use crate::preflight::{Deb, Outcome, Tested};
use crate::rebuild::kept::Inputs;
use crate::report::{self, PREFIX};
use crate::root::Root;
use crate::state::State;

/// What preflight did with blocks, said after its session ended.
#[derive(Default)]
pub(super) struct Noted {
    /// Standing blocks this run repeats: nothing was built.
    pub still: Vec<Blocked>,
    /// Blocks recorded by this run.
    pub recorded: Vec<Blocked>,
    /// Blocks that ended because this run built their pairs.
    pub ended: Vec<Blocked>,
}

/// The inputs of each pair of `plan` when this preflight may block
/// (`blocking`), and the standing blocks they repeat.
pub(super) struct Gate {
    inputs: Vec<Inputs>,
    pub still: Vec<Blocked>,
}

/// Before the test builds: with `blocking`, what each pair's build would
/// read, and which standing blocks that repeats (call inside the session:
/// it holds `preflight/lock`).
pub(super) fn gate(state: &State, blocking: bool, debs: &[Deb], plan: &crate::plan::Plan) -> Gate {
    if !blocking || plan.rebuilds.is_empty() {
        return Gate {
            inputs: Vec::new(),
            still: Vec::new(),
        };
    }
    let root = state.root();
    // Without the whole inventory nothing can be compared: the builds run
    // as they always did, and a failure blocks without a record.
    let full = match crate::inventory::Inventory::full_with(root, crate::kernel::CacheUse::Read) {
        Ok(f) => f,
        Err(e) => {
            warn(&format!("{PREFIX} a block cannot be recorded: {e}"));
            return Gate {
                inputs: Vec::new(),
                still: Vec::new(),
            };
        }
    };
    let inputs: Vec<Inputs> = plan
        .rebuilds
        .iter()
        .map(|r| blocked::inputs_of(root, &full, r, debs))
        .collect();
    let standing = blocked::standing(state);
    let still = inputs
        .iter()
        .filter_map(|i| blocked::repeated(&standing, i).cloned())
        .collect();
    Gate { inputs, still }
}

impl Gate {
    /// After the test builds (inside the session): each failure recorded
    /// as a block when this preflight may block, and the blocks of each
    /// pair that built against the same versions (or newer) ended.
    pub(super) fn after(&self, state: &State, tested: &[Tested], debs: &[Deb]) -> Noted {
        let mut noted = Noted::default();
        let recorded: Vec<Blocked> = tested
            .iter()
            .filter_map(|t| {
                let Outcome::Failed { reason, make_log } = &t.outcome else {
                    return None;
                };
                let inputs = self.inputs.iter().find(|i| i.id == t.rebuild.pair.id)?;
                Some(Blocked {
                    inputs: inputs.clone(),
                    because: t.rebuild.because.clone(),
                    failure: crate::model::Hold::clean_reason(&report::build_failure(reason)),
                    make_log: make_log
                        .as_ref()
                        .map(|m| m.display().to_string())
                        .filter(|m| *m == Blocked::kept_make_log(&t.rebuild.pair.id)),
                })
            })
            .collect();
        if !recorded.is_empty() {
            match blocked::record(state, &recorded) {
                Ok(()) => noted.recorded = recorded,
                Err(e) => warn(&format!("{PREFIX} the block could not be recorded: {e}")),
            }
        }
        let built: Vec<_> = tested
            .iter()
            .filter(|t| t.outcome == Outcome::Built)
            .map(|t| &t.rebuild.pair.id)
            .collect();
        match blocked::passed(state, &built, debs) {
            Ok(ended) => noted.ended = ended,
            Err(e) => warn(&format!("{PREFIX} {e}")),
        }
        noted
    }
}

/// Say what preflight did with blocks: a line per repeated or ended block
/// (and the log's), a log line per recorded one (its failure was said
/// already), and the textfile again when anything changed.
pub(super) fn say(root: &Root, env: &super::Env, noted: &Noted) {
    for b in &noted.still {
        let line = report::blocked::still_line(b);
        err(&format!("{PREFIX} {line}"));
        report::log_line(
            root,
            &format!("{line}; preflight = block stopped apt again"),
        );
    }
    for b in &noted.recorded {
        report::log_line(root, &report::blocked::recorded_line(b));
    }
    for b in &noted.ended {
        let line = report::blocked::ended_line(b, &blocked::Ended::Built);
        err(&format!("{PREFIX} {line}"));
        report::log_line(root, &line);
    }
    if noted.recorded.is_empty() && noted.ended.is_empty() && noted.still.is_empty() {
        return;
    }
    if rustix::process::geteuid().is_root() {
        let (cfg, _) = crate::config::Config::load(root);
        let state = State::new(root);
        if let Err(e) = crate::metrics::after_block(&state, &cfg, &env.tools) {
            log::warn!("metrics: {e}");
        }
    }
}

/// After dpkg and at boot: forget the blocks that ended, each said in a
/// line (apt's output) and in the log.
pub(super) fn tidy(state: &State) {
    match blocked::tidy(state) {
        Ok(gone) => {
            for (b, why) in gone {
                let line = report::blocked::ended_line(&b, &why);
                report::log_line(state.root(), &line);
                err(&format!("{PREFIX} {line}"));
            }
        }
        Err(e) => warn(&format!("{PREFIX} {e}")),
    }
}
