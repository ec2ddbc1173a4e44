//! The JSON contract (`replay --dry-run --json`, `replay`/`sync`/`retry
//! --json`, `status --json`, the forecast of the apt hooks with `--json`)
//! as typed wire structs: their field names are the contract, so a rename
//! is a compile-visible change here and a failing test in
//! `tests/integration/`, never a silent drift.

use serde::Serialize;

use super::{build_failure, causes, preflight_skip, result_line, tested_line};
use crate::change::Change;
use crate::kernel::Role;
use crate::name::{KernelRelease, ModuleName, ModuleVersion};
use crate::pair::PairId;
use crate::plan::{Assessment, Cause, PairState, Plan};
use crate::preflight::blocked::Blocked;
use crate::preflight::{self, Tested};
use crate::rebuild::{Outcome, PairResult};
use crate::state::{Failure, QueuedPair};
use crate::verify::Check;

/// A time as dpkg.log writes it, local, ISO 8601 without zone.
fn time(t: Option<&jiff::civil::DateTime>) -> Option<String> {
    t.map(|t| t.strftime("%Y-%m-%dT%H:%M:%S").to_string())
}

/// A time of the file system, as [`time`] writes it.
fn file_time(t: std::time::SystemTime) -> Option<String> {
    let ts = jiff::Timestamp::try_from(t).ok()?;
    let local = ts.to_zoned(crate::time_zone::local()).datetime();
    time(Some(&local))
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
                    Outcome::Held { .. } => ("held", None, None),
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
    /// The build `dkms-hook rollback` would put back; `null`: none kept.
    previous: Option<PreviousJson>,
    /// Why and since when the pair is held; `null`: not held.
    held: Option<HeldJson<'a>>,
}

#[derive(Serialize)]
pub struct PreviousJson {
    /// When it was built (local, as dpkg.log writes times).
    built: Option<String>,
    path: String,
}

#[derive(Serialize)]
pub struct HeldJson<'a> {
    reason: &'a str,
    since: Option<String>,
    /// The rollback was cut short; running it again finishes it.
    unfinished: bool,
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
    /// The upgrades `preflight = block` stopped, while each block stands.
    blocked: Vec<BlockedJson<'a>>,
}

/// One standing block of `status --json`.
#[derive(Serialize)]
pub struct BlockedJson<'a> {
    #[serde(flatten)]
    pair: PairJson<'a>,
    arch: &'a str,
    /// The package versions it failed to build against.
    against: Vec<CauseJson<'a>>,
    failure: &'a str,
    /// When the test build failed (local, as dpkg.log writes times).
    since: Option<String>,
    make_log: Option<&'a str>,
    line: String,
}

impl<'a> StatusJson<'a> {
    /// The object with the standing blocks.
    pub fn with_blocked(mut self, blocked: &'a [Blocked]) -> Self {
        self.blocked = blocked
            .iter()
            .map(|b| BlockedJson {
                pair: b.id().into(),
                arch: b.id().arch.as_str(),
                against: cause_list(&b.because),
                failure: &b.failure,
                since: file_time(crate::state::at_secs(b.inputs.time)),
                make_log: b.make_log.as_deref(),
                line: super::blocked::status_line(b),
            })
            .collect();
        self
    }
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
                    previous: r.previous.map(|t| PreviousJson {
                        built: file_time(t),
                        path: r.id.previous_dir().display().to_string(),
                    }),
                    held: r.hold.as_ref().map(|h| HeldJson {
                        reason: &h.reason,
                        since: file_time(crate::state::at_secs(h.since)),
                        unfinished: h.unfinished,
                    }),
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
        blocked: Vec::new(),
    }
}

/// One pair of `preflight --json`.
#[derive(Serialize)]
pub struct TestedJson<'a> {
    #[serde(flatten)]
    pair: PairJson<'a>,
    /// `true` built, `false` failed, `null` skipped.
    ok: Option<bool>,
    /// Why it was skipped: `excluded`, `no-headers`, `new-kernel`.
    skipped: Option<&'static str>,
    /// Why it failed or was skipped, in words.
    reason: Option<String>,
    seconds: f64,
    make_log: Option<String>,
    against: Vec<CauseJson<'a>>,
    line: String,
}

/// `preflight --json`: a result per pair and the plan's warnings.
#[derive(Serialize)]
pub struct PreflightJson<'a> {
    results: Vec<TestedJson<'a>>,
    warnings: &'a [String],
}

pub fn preflight<'a>(tested: &'a [Tested], warnings: &'a [String]) -> PreflightJson<'a> {
    PreflightJson {
        results: tested
            .iter()
            .map(|t| {
                let (ok, skipped, reason, make_log) = match &t.outcome {
                    preflight::Outcome::Built => (Some(true), None, None, None),
                    preflight::Outcome::Failed { reason, make_log } => (
                        Some(false),
                        None,
                        Some(build_failure(reason)),
                        make_log.as_ref().map(|m| m.display().to_string()),
                    ),
                    preflight::Outcome::Skipped(s) => (
                        None,
                        Some(s.as_str()),
                        Some(preflight_skip(s, &t.rebuild.pair.id.kernel)),
                        None,
                    ),
                };
                TestedJson {
                    pair: (&t.rebuild.pair.id).into(),
                    ok,
                    skipped,
                    reason,
                    seconds: t.seconds,
                    make_log,
                    against: cause_list(&t.rebuild.because),
                    line: tested_line(t),
                }
            })
            .collect(),
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use serde_json::json;

    use super::*;
    use crate::preflight::{BuildFailure, Outcome, Skip};
    use crate::report::tests::tested;

    #[test]
    fn preflight_results_as_json() {
        let tested = [
            tested(Outcome::Built),
            tested(Outcome::Failed {
                reason: BuildFailure::Exit(10),
                make_log: Some(PathBuf::from("/var/lib/dkms-hook/preflight/m.log")),
            }),
            tested(Outcome::Skipped(Skip::Excluded)),
            tested(Outcome::Skipped(Skip::NoHeaders)),
            tested(Outcome::Skipped(Skip::NewKernel {
                missing: vec![crate::name::PackageName::new("gcc-12").unwrap()],
            })),
        ];
        let warnings = ["a warning".to_string()];
        let v = serde_json::to_value(preflight(&tested, &warnings)).unwrap();
        assert_eq!(v["warnings"], json!(["a warning"]));
        let r = &v["results"];
        assert_eq!(r[0]["module"], "acpi-call");
        assert_eq!(r[0]["version"], "1.2.2");
        assert_eq!(r[0]["kernel"], "6.1.0-50-amd64");
        assert_eq!(r[0]["seconds"], 12.34);
        assert_eq!(
            r[0]["against"],
            json!([{"package": "linux-kbuild-6.1", "role": "kbuild", "old": "6.1.176-1", "new": "6.1.201-1"}])
        );
        let fields = |i: usize| {
            (
                r[i]["ok"].clone(),
                r[i]["skipped"].clone(),
                r[i]["reason"].clone(),
                r[i]["make_log"].clone(),
            )
        };
        assert_eq!(
            fields(0),
            (json!(true), json!(null), json!(null), json!(null))
        );
        assert_eq!(
            fields(1),
            (
                json!(false),
                json!(null),
                json!("dkms build exited 10"),
                json!("/var/lib/dkms-hook/preflight/m.log")
            )
        );
        assert_eq!(
            fields(2),
            (
                json!(null),
                json!("excluded"),
                json!("BUILD_EXCLUSIVE excludes this kernel"),
                json!(null)
            )
        );
        assert_eq!(fields(3).1, json!("no-headers"));
        assert_eq!(fields(4).1, json!("new-kernel"));
        assert_eq!(
            fields(4).2,
            json!(
                "new kernel 6.1.0-50-amd64: its headers need gcc-12, neither given nor installed"
            )
        );
        for (i, t) in tested.iter().enumerate() {
            assert_eq!(r[i]["line"], json!(crate::report::tested_line(t)));
        }
    }
}
