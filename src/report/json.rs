//! The JSON contract (`replay --dry-run --json`, `replay`/`sync`/`retry
//! --json`, `status --json`, the forecast of the apt hooks with `--json`)
//! as typed wire structs: their field names are the contract, so a rename
//! is a compile-visible change here and a failing test in
//! `tests/integration/`, never a silent drift.

use serde::Serialize;

use super::{causes, result_line};
use crate::change::Change;
use crate::kernel::Role;
use crate::name::{KernelRelease, ModuleName, ModuleVersion};
use crate::pair::PairId;
use crate::plan::{Assessment, Cause, PairState, Plan};
use crate::rebuild::{Outcome, PairResult};
use crate::state::{Failure, QueuedPair};
use crate::verify::Check;

/// A time as dpkg.log writes it, local, ISO 8601 without zone.
fn time(t: Option<&jiff::civil::DateTime>) -> Option<String> {
    t.map(|t| t.strftime("%Y-%m-%dT%H:%M:%S").to_string())
}

fn text<T: ToString>(v: Option<&T>) -> Option<String> {
    v.map(ToString::to_string)
}

#[derive(Serialize)]
pub struct ChangeJson<'a> {
    package: &'a str,
    architecture: Option<&'a str>,
    old: Option<String>,
    new: Option<String>,
    unpacked: Option<String>,
    removed: Option<String>,
}

impl<'a> From<&'a Change> for ChangeJson<'a> {
    fn from(c: &'a Change) -> Self {
        ChangeJson {
            package: c.package.as_str(),
            architecture: c.architecture.as_deref(),
            old: text(c.old.as_ref()),
            new: text(c.new.as_ref()),
            unpacked: time(c.unpacked.as_ref()),
            removed: time(c.removed.as_ref()),
        }
    }
}

#[derive(Serialize)]
pub struct CauseJson<'a> {
    package: &'a str,
    role: Role,
    old: Option<String>,
    new: Option<String>,
}

impl<'a> From<&'a Cause> for CauseJson<'a> {
    fn from(c: &'a Cause) -> Self {
        CauseJson {
            package: c.package.as_str(),
            role: c.role,
            old: text(c.old.as_ref()),
            new: text(c.new.as_ref()),
        }
    }
}

fn cause_list(c: &[Cause]) -> Vec<CauseJson<'_>> {
    c.iter().map(CauseJson::from).collect()
}

/// The three fields that name a pair, first in every pair object.
#[derive(Serialize)]
pub struct PairJson<'a> {
    module: &'a ModuleName,
    version: &'a ModuleVersion,
    kernel: &'a KernelRelease,
}

impl<'a> From<&'a PairId> for PairJson<'a> {
    fn from(k: &'a PairId) -> Self {
        PairJson {
            module: &k.module,
            version: &k.version,
            kernel: &k.kernel,
        }
    }
}

#[derive(Serialize)]
pub struct RebuildJson<'a> {
    #[serde(flatten)]
    pair: PairJson<'a>,
    because: Vec<CauseJson<'a>>,
}

#[derive(Serialize)]
pub struct SkipJson<'a> {
    #[serde(flatten)]
    pair: PairJson<'a>,
    reason: &'static str,
}

/// The plan object: `changes`, `rebuilds`, `skipped`, `warnings`.
#[derive(Serialize)]
pub struct PlanJson<'a> {
    changes: Vec<ChangeJson<'a>>,
    rebuilds: Vec<RebuildJson<'a>>,
    skipped: Vec<SkipJson<'a>>,
    warnings: &'a [crate::plan::Warning],
}

pub fn plan(p: &Plan) -> PlanJson<'_> {
    PlanJson {
        changes: p.changes.iter().map(ChangeJson::from).collect(),
        rebuilds: p
            .rebuilds
            .iter()
            .map(|r| RebuildJson {
                pair: (&r.pair.id).into(),
                because: cause_list(&r.because),
            })
            .collect(),
        skipped: p
            .skipped
            .iter()
            .map(|s| SkipJson {
                pair: (&s.pair.id).into(),
                reason: s.reason.as_str(),
            })
            .collect(),
        warnings: &p.warnings,
    }
}

#[derive(Serialize)]
pub struct ResultJson<'a> {
    #[serde(flatten)]
    pair: PairJson<'a>,
    outcome: &'static str,
    exit_status: Option<i32>,
    make_log: Option<String>,
    /// Rebuilt by installing preflight's build of the same tree.
    from_preflight: bool,
    line: String,
}

/// The plan object plus `results`, one per executed pair.
#[derive(Serialize)]
pub struct ResultsJson<'a> {
    #[serde(flatten)]
    plan: PlanJson<'a>,
    results: Vec<ResultJson<'a>>,
}

pub fn results<'a>(p: &'a Plan, results: &'a [PairResult]) -> ResultsJson<'a> {
    ResultsJson {
        plan: plan(p),
        results: results
            .iter()
            .map(|r| {
                let (outcome, exit_status, make_log) = match &r.outcome {
                    Outcome::Rebuilt { .. } => ("rebuilt", None, None),
                    Outcome::AlreadyDone => ("already-done", None, None),
                    Outcome::Skipped { status } => ("skipped", Some(*status), None),
                    Outcome::Failed {
                        status, make_log, ..
                    } => (
                        "failed",
                        *status,
                        make_log.as_ref().map(|m| m.display().to_string()),
                    ),
                };
                ResultJson {
                    pair: (&r.pair.id).into(),
                    outcome,
                    exit_status,
                    make_log,
                    from_preflight: matches!(
                        r.outcome,
                        Outcome::Rebuilt {
                            preflight: true,
                            ..
                        }
                    ),
                    line: result_line(r),
                }
            })
            .collect(),
    }
}

#[derive(Serialize)]
pub struct StatusPairJson<'a> {
    #[serde(flatten)]
    pair: PairJson<'a>,
    state: PairState,
    why: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    make_log: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed_because: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failed_causes: Option<Vec<CauseJson<'a>>>,
    /// The installed module ends in a signature; `null`: could not tell.
    signed: Option<bool>,
    signer: Option<&'a str>,
    /// dkms's key is enrolled (for signed modules); `null`: could not tell.
    key_enrolled: Option<bool>,
}

#[derive(Serialize)]
pub struct QueuedJson<'a> {
    #[serde(flatten)]
    pair: PairJson<'a>,
    because: String,
    causes: Vec<CauseJson<'a>>,
}

#[derive(Serialize)]
pub struct StatusSkipJson<'a> {
    #[serde(flatten)]
    pair: PairJson<'a>,
    /// The state's name is the reason: fresh, no-headers, failed, missing…
    reason: PairState,
}

/// `status --json`: the plan-shaped object (stale pairs as `rebuilds`, the
/// others as `skipped`) plus `pairs` with each state and `queued`.
#[derive(Serialize)]
pub struct StatusJson<'a> {
    changes: [(); 0],
    rebuilds: Vec<RebuildJson<'a>>,
    skipped: Vec<StatusSkipJson<'a>>,
    warnings: &'a [String],
    pairs: Vec<StatusPairJson<'a>>,
    queued: Vec<QueuedJson<'a>>,
}

pub fn status<'a>(
    rows: &'a [Assessment],
    failed: &'a [Failure],
    queued: &'a [QueuedPair],
    warnings: &'a [String],
) -> StatusJson<'a> {
    StatusJson {
        changes: [],
        rebuilds: rows
            .iter()
            .filter(|r| r.state == PairState::Stale)
            .map(|r| RebuildJson {
                pair: (&r.id).into(),
                because: cause_list(&r.because),
            })
            .collect(),
        skipped: rows
            .iter()
            .filter(|r| r.state != PairState::Stale)
            .map(|r| StatusSkipJson {
                pair: (&r.id).into(),
                reason: r.state,
            })
            .collect(),
        warnings,
        pairs: rows
            .iter()
            .map(|r| {
                let f = failed.iter().find(|f| f.id == r.id);
                StatusPairJson {
                    pair: (&r.id).into(),
                    state: r.state,
                    why: &r.why,
                    make_log: f.map(|f| f.make_log.as_str()),
                    failed_because: f.map(|f| causes(&f.because)),
                    failed_causes: f.map(|f| cause_list(&f.because)),
                    signed: r.check.as_ref().and_then(Check::signed),
                    signer: r.check.as_ref().and_then(|c| c.signer.as_deref()),
                    key_enrolled: r.check.as_ref().and_then(|c| c.key_enrolled),
                }
            })
            .collect(),
        queued: queued
            .iter()
            .map(|q| QueuedJson {
                pair: (&q.id).into(),
                because: causes(&q.because),
                causes: cause_list(&q.because),
            })
            .collect(),
    }
}
