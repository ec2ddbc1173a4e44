//! How plans and results are shown: short `dkms-hook:` lines for people
//! here, and for tools the JSON contract of docs/design.md ("Contracts other
//! code relies on") as typed wire structs in [`json`]: fields may be added,
//! never renamed or removed.

use serde::Serialize;

use crate::name::KernelRelease;
use crate::plan::{Assessment, Cause, Plan};
use crate::preflight::{self, Tested};
use crate::rebuild::{Outcome, PairResult};
use crate::state::{Failure, Finding, Problem, QueuedPair};

pub mod blocked;
pub mod json;

pub const PREFIX: &str = "dkms-hook:";

/// `line` with every control character escaped (`\x1b`, `\n`): names
/// read from the file system or from logs must not move apt's cursor,
/// ring its bell or forge a line of their own.
pub fn printable(line: &str) -> std::borrow::Cow<'_, str> {
    if !line.chars().any(char::is_control) {
        return line.into();
    }
    line.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect::<String>()
        .into()
}

/// The log every run appends to: one line per rebuild, failure, warning.
pub const LOG_FILE: &str = "/var/log/dkms-hook.log";

/// Append one line to [`LOG_FILE`] in `root` (best effort: a full disk must
/// not stop a rebuild). The file is resolved inside the root and opened
/// without following a link in its place; control characters are escaped.
pub fn log_line(root: &crate::root::Root, line: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let stamp = jiff::Timestamp::now()
        .to_zoned(crate::time_zone::local())
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string();
    let r = root.inside(LOG_FILE).and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .custom_flags(crate::root::NOFOLLOW_NONBLOCK)
            .open(&p)
            .and_then(|mut f| writeln!(f, "{stamp} {}", printable(line)))
    });
    if let Err(e) = r {
        log::debug!("{LOG_FILE}: {e}");
    }
}

/// What happened to one input package, in words: `P OLD → NEW` for an
/// upgrade, `P V reinstalled`, `P OLD → NEW, downgraded`, and `P V unpacked
/// at TIME` when the old version is unknown (a replay that starts after it).
pub fn cause(c: &Cause) -> String {
    let p = &c.package;
    match (&c.old, &c.new) {
        (Some(o), Some(n)) if o == n => format!("{p} {n} reinstalled"),
        (Some(o), Some(n)) if n < o => format!("{p} {o} → {n}, downgraded"),
        (Some(o), Some(n)) => format!("{p} {o} → {n}"),
        (None, Some(n)) => match c.unpacked {
            Some(t) => format!("{p} {n} unpacked at {}", local_time(t)),
            None => format!("{p} {n} unpacked"),
        },
        (Some(o), None) => format!("{p} {o} removed"),
        (None, None) => format!("{p} changed"),
    }
}

/// A time as dpkg.log writes it, in the local zone.
fn local_time(t: std::time::SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|ts| {
            ts.to_zoned(crate::time_zone::local())
                .strftime("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_default()
}

/// `linux-kbuild-6.1 6.1.176-1 → 6.1.192-2, …`
pub fn causes(because: &[Cause]) -> String {
    because.iter().map(cause).collect::<Vec<_>>().join(", ")
}

/// Human lines for a dry run: what would be rebuilt and why.
pub fn plan_lines(p: &Plan, verb: &str) -> Vec<String> {
    let mut out = Vec::new();
    for r in &p.rebuilds {
        out.push(format!(
            "{PREFIX} {verb} {}/{} for {} ({})",
            r.pair.id.module,
            r.pair.id.version,
            r.pair.id.kernel,
            causes(&r.because)
        ));
    }
    for s in &p.skipped {
        out.push(format!(
            "{PREFIX} skip {}/{} for {}: {}",
            s.pair.id.module,
            s.pair.id.version,
            s.pair.id.kernel,
            s.reason.as_str()
        ));
    }
    out
}

pub fn to_json_string<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// One line per executed pair, for apt's output and /var/log/dkms-hook.log.
pub fn result_line(r: &PairResult) -> String {
    let p = &r.pair;
    let what = p.id.to_string();
    match &r.outcome {
        Outcome::Rebuilt {
            seconds,
            preflight: false,
        } => format!("rebuilt {what} ({}) in {seconds:.1} s", causes(&p.because)),
        Outcome::Rebuilt {
            seconds,
            preflight: true,
        } => format!(
            "rebuilt {what} ({}) in {seconds:.1} s: installed preflight's build against these packages, not compiled again",
            causes(&p.because)
        ),
        Outcome::AlreadyDone => format!("{what} was already rebuilt"),
        Outcome::Skipped { status } => format!(
            "skipped {what}: dkms exited {status} ({})",
            if *status == 77 {
                "BUILD_EXCLUSIVE excludes this kernel"
            } else {
                "kernel headers missing"
            }
        ),
        Outcome::Held { reason } => format!(
            "left {what} alone: held since dkms-hook rollback ({reason}); to let it be rebuilt: dkms-hook unhold {}/{} {}",
            p.id.module, p.id.version, p.id.kernel
        ),
        Outcome::Failed {
            reason,
            make_log,
            restored,
            backup,
            ..
        } => format!(
            "FAILED to rebuild {what} ({}): {reason}; {}{}",
            causes(&p.because),
            if *restored {
                "the working module was kept".to_string()
            } else {
                format!(
                    "the working module could NOT be restored: its backup stays in {} and the next run restores it",
                    backup.as_deref().unwrap_or(std::path::Path::new("/var/lib/dkms-hook/backups")).display()
                )
            },
            make_log
                .as_ref()
                .map(|m| format!("; see {}", m.display()))
                .unwrap_or_default()
        ),
    }
}

/// `linux-kbuild-6.1 6.1.192-3` for the line "builds against …".
pub fn against(because: &[Cause]) -> String {
    because
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c.package,
                c.new.as_ref().map_or_else(String::new, ToString::to_string)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a test build failed, in words.
pub fn build_failure(f: &preflight::BuildFailure) -> String {
    match f {
        preflight::BuildFailure::Exit(s) => format!("dkms build exited {s}"),
        preflight::BuildFailure::TimedOut => {
            "dkms build took longer than build_timeout and was killed".into()
        }
        preflight::BuildFailure::Spawn(e) => e.clone(),
    }
}

/// Why a pair was not test-built, in words.
pub fn preflight_skip(s: &preflight::Skip, kernel: &KernelRelease) -> String {
    match s {
        preflight::Skip::Excluded => "BUILD_EXCLUSIVE excludes this kernel".into(),
        preflight::Skip::NoHeaders => "no headers for this kernel".into(),
        preflight::Skip::NewKernel { missing } => format!(
            "new kernel {kernel}: its headers need {}, neither given nor installed",
            missing
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// One line per test-built pair of `dkms-hook preflight`.
pub fn tested_line(t: &Tested) -> String {
    let p = &t.rebuild.pair;
    let against = against(&t.rebuild.because);
    match &t.outcome {
        preflight::Outcome::Built => format!(
            "{PREFIX} preflight: {}/{} for {} builds against {against} ({:.1} s)",
            p.id.module, p.id.version, p.id.kernel, t.seconds
        ),
        preflight::Outcome::Failed { reason, make_log } => format!(
            "{PREFIX} preflight: FAILED {}/{} for {} against {against}: {}{}",
            p.id.module,
            p.id.version,
            p.id.kernel,
            build_failure(reason),
            make_log
                .as_ref()
                .map(|m| format!("; see {}", m.display()))
                .unwrap_or_default()
        ),
        preflight::Outcome::Skipped(why) => format!(
            "{PREFIX} preflight: skipped {}/{} for {}: {}",
            p.id.module,
            p.id.version,
            p.id.kernel,
            preflight_skip(why, &p.id.kernel)
        ),
    }
}

/// `status` for people: one aligned line per kernel × module.
pub fn status_lines(
    rows: &[Assessment],
    queued: &[QueuedPair],
    warnings: &[String],
) -> Vec<String> {
    let mut out = Vec::new();
    let w = rows
        .iter()
        .map(|r| r.id.module.as_str().len() + r.id.version.as_str().len() + 1)
        .max()
        .unwrap_or(0);
    let kw = rows
        .iter()
        .map(|r| r.id.kernel.as_str().len())
        .max()
        .unwrap_or(0);
    for r in rows {
        let state = r.state.name();
        let mut line = format!(
            "{:w$}  {:kw$}  {state:10}",
            format!("{}/{}", r.id.module, r.id.version),
            r.id.kernel.as_str()
        );
        if !r.why.is_empty() {
            line.push_str(&format!("  {}", r.why));
        }
        if let Some(c) = &r.check {
            if c.will_not_load.is_some() {
                line.push_str("  NOT SIGNED: will not load after the reboot");
            } else if c.key_enrolled == Some(false) {
                line.push_str("  signed with a key that is not enrolled");
            }
        }
        out.push(line.trim_end().to_string());
    }
    if rows.is_empty() {
        out.push(format!("{PREFIX} no dkms modules installed"));
    }
    for q in queued {
        out.push(format!(
            "{PREFIX} queued: {}/{} for {} ({})",
            q.id.module,
            q.id.version,
            q.id.kernel,
            causes(&q.because)
        ));
    }
    out.extend(warnings.iter().map(|w| format!("{PREFIX} warning: {w}")));
    out
}

/// The login notice: a line per failed or still queued pair, nothing when
/// all is well.
pub fn motd_lines(failed: &[Failure], queued: &[QueuedPair], found: &[Finding]) -> Vec<String> {
    let mut out: Vec<String> = failed
        .iter()
        .map(|f| {
            format!(
                "{PREFIX} {}/{} for {} {}; see: dkms-hook status",
                f.id.module,
                f.id.version,
                f.id.kernel,
                if f.restored {
                    "failed to rebuild (the working module was kept)"
                } else {
                    "NEEDS ATTENTION: its working module could not be put back"
                }
            )
        })
        .collect();
    out.extend(
        queued
            .iter()
            .filter(|q| !failed.iter().any(|f| f.id == q.id))
            .map(|q| {
                format!(
                    "{PREFIX} {}/{} for {} is stale and waits for a rebuild; run: dkms-hook sync",
                    q.id.module, q.id.version, q.id.kernel
                )
            }),
    );
    out.extend(found.iter().map(|f| {
        let what = match f.problem {
            Problem::Broken => "is built for another kernel and will not load; run: dkms-hook sync",
            Problem::Unsigned => {
                "is NOT SIGNED and will not load after the reboot; see: dkms-hook status"
            }
            Problem::KeyNotEnrolled => {
                "is signed with a key that is not enrolled; see: dkms-hook status"
            }
        };
        format!(
            "{PREFIX} {}/{} for {} {what}",
            f.id.module, f.id.version, f.id.kernel
        )
    }));
    out
}

/// What the planned changes do to a build tree, in apt's words: "this
/// upgrade changes", "this downgrade changes", "this reinstall rewrites"; a
/// mix of them is "this transaction changes".
fn what_it_does(because: &[Cause]) -> &'static str {
    let kind = |c: &Cause| match (&c.old, &c.new) {
        (Some(o), Some(n)) if n > o => "this upgrade changes",
        (Some(o), Some(n)) if n < o => "this downgrade changes",
        (Some(_), Some(_)) => "this reinstall rewrites",
        (None, Some(_)) => "this installation changes",
        (_, None) => "this removal changes",
    };
    let mut kinds = because.iter().map(kind);
    match kinds.next() {
        Some(first) if kinds.all(|k| k == first) => first,
        _ => "this transaction changes",
    }
}

/// Before apt's prompt: one line per kernel whose build tree the transaction
/// changes in place, with the modules to be rebuilt (the plan's warnings
/// are said apart from these).
pub fn forecast_notices(
    p: &Plan,
    preflight: crate::config::PreflightMode,
    at_run_end: bool,
) -> Vec<String> {
    let mut by_kernel: Vec<(&str, Vec<&crate::plan::Rebuild>)> = Vec::new();
    for r in &p.rebuilds {
        match by_kernel
            .iter_mut()
            .find(|(k, _)| *k == r.pair.id.kernel.as_str())
        {
            Some((_, v)) => v.push(r),
            None => by_kernel.push((r.pair.id.kernel.as_str(), vec![r])),
        }
    }
    let mut out = Vec::new();
    for (k, rs) in by_kernel {
        let mods: Vec<String> = rs
            .iter()
            .map(|r| format!("{}/{}", r.pair.id.module, r.pair.id.version))
            .collect();
        out.push(format!(
            "{PREFIX} {} the build tree of {k} in place ({}); dkms-hook will rebuild {} for it {}{}",
            what_it_does(&rs[0].because),
            causes(&rs[0].because),
            mods.join(", "),
            match at_run_end {
                true => "once unattended-upgrades ends (after all its steps)",
                false => "after dpkg finishes",
            },
            match preflight {
                crate::config::PreflightMode::Off =>
                    "; run dkms-hook preflight first to test-build against the new packages",
                _ => "; first, after the download, it test-builds them against the new packages",
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::preflight::{BuildFailure, Outcome, Skip};

    /// acpi-call/1.2.2 for 6.1.0-50-amd64, against linux-kbuild-6.1 6.1.201-1.
    pub(super) fn tested(outcome: Outcome) -> Tested {
        Tested {
            rebuild: crate::plan::Rebuild {
                pair: crate::dkms::Pair {
                    id: crate::pair::PairId {
                        module: crate::name::ModuleName::new("acpi-call").unwrap(),
                        version: crate::name::ModuleVersion::new("1.2.2").unwrap(),
                        kernel: KernelRelease::new("6.1.0-50-amd64").unwrap(),
                        arch: crate::name::DkmsArch::new("x86_64").unwrap(),
                    },
                    installed: true,
                    built: None,
                    built_names: Vec::new(),
                },
                because: vec![Cause {
                    package: crate::name::PackageName::new("linux-kbuild-6.1").unwrap(),
                    role: crate::kernel::Role::Kbuild,
                    old: Some("6.1.176-1".parse().unwrap()),
                    new: Some("6.1.201-1".parse().unwrap()),
                    unpacked: None,
                }],
            },
            seconds: 12.34,
            outcome,
        }
    }

    #[test]
    fn a_test_build_in_one_line() {
        let cases = [
            (
                Outcome::Built,
                "dkms-hook: preflight: acpi-call/1.2.2 for 6.1.0-50-amd64 builds against linux-kbuild-6.1 6.1.201-1 (12.3 s)",
            ),
            (
                Outcome::Failed {
                    reason: BuildFailure::Exit(10),
                    make_log: Some(PathBuf::from("/var/lib/dkms-hook/preflight/m.log")),
                },
                "dkms-hook: preflight: FAILED acpi-call/1.2.2 for 6.1.0-50-amd64 against linux-kbuild-6.1 6.1.201-1: dkms build exited 10; see /var/lib/dkms-hook/preflight/m.log",
            ),
            (
                Outcome::Failed {
                    reason: BuildFailure::TimedOut,
                    make_log: None,
                },
                "dkms-hook: preflight: FAILED acpi-call/1.2.2 for 6.1.0-50-amd64 against linux-kbuild-6.1 6.1.201-1: dkms build took longer than build_timeout and was killed",
            ),
            (
                Outcome::Failed {
                    reason: BuildFailure::Spawn("dkms: not found".into()),
                    make_log: None,
                },
                "dkms-hook: preflight: FAILED acpi-call/1.2.2 for 6.1.0-50-amd64 against linux-kbuild-6.1 6.1.201-1: dkms: not found",
            ),
            (
                Outcome::Skipped(Skip::Excluded),
                "dkms-hook: preflight: skipped acpi-call/1.2.2 for 6.1.0-50-amd64: BUILD_EXCLUSIVE excludes this kernel",
            ),
            (
                Outcome::Skipped(Skip::NoHeaders),
                "dkms-hook: preflight: skipped acpi-call/1.2.2 for 6.1.0-50-amd64: no headers for this kernel",
            ),
            (
                Outcome::Skipped(Skip::NewKernel {
                    missing: vec![crate::name::PackageName::new("linux-headers-6.1.0-50-common").unwrap(), crate::name::PackageName::new("gcc-12").unwrap()],
                }),
                "dkms-hook: preflight: skipped acpi-call/1.2.2 for 6.1.0-50-amd64: new kernel 6.1.0-50-amd64: its headers need linux-headers-6.1.0-50-common, gcc-12, neither given nor installed",
            ),
        ];
        for (outcome, want) in cases {
            assert_eq!(tested_line(&tested(outcome)), want);
        }
    }
}
