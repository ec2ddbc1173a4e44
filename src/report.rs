//! How plans and results are shown: short `dkms-hook:` lines for people, and
//! the JSON object of the design's contract for tools. Field names of the JSON
//! may be added to, never renamed.

use serde::Serialize;
use serde_json::{json, Value};

use crate::change::{version_or_none, Change};
use crate::plan::{Cause, Plan};

pub const PREFIX: &str = "dkms-hook:";

fn opt<T: ToString>(v: Option<&T>) -> Value {
    v.map_or(Value::Null, |v| Value::String(v.to_string()))
}

fn time(t: Option<&jiff::civil::DateTime>) -> Value {
    t.map_or(Value::Null, |t| {
        Value::String(t.strftime("%Y-%m-%dT%H:%M:%S").to_string())
    })
}

pub fn change_json(c: &Change) -> Value {
    json!({
        "package": c.package.as_str(),
        "architecture": c.architecture,
        "old": opt(c.old.as_ref()),
        "new": opt(c.new.as_ref()),
        "unpacked": time(c.unpacked.as_ref()),
        "removed": time(c.removed.as_ref()),
    })
}

fn cause_json(c: &Cause) -> Value {
    json!({
        "package": c.package.as_str(),
        "role": c.role,
        "old": opt(c.old.as_ref()),
        "new": opt(c.new.as_ref()),
    })
}

/// The plan as the JSON object of design §5.
pub fn plan_json(p: &Plan) -> Value {
    json!({
        "changes": p.changes.iter().map(change_json).collect::<Vec<_>>(),
        "rebuilds": p.rebuilds.iter().map(|r| json!({
            "module": r.pair.module,
            "version": r.pair.version,
            "kernel": r.pair.kernel,
            "because": r.because.iter().map(cause_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "skipped": p.skipped.iter().map(|s| json!({
            "module": s.pair.module,
            "version": s.pair.version,
            "kernel": s.pair.kernel,
            "reason": s.reason,
        })).collect::<Vec<_>>(),
        "warnings": p.warnings,
    })
}

/// `linux-kbuild-6.1 6.1.176-1 → 6.1.192-2, …`
pub fn causes(because: &[Cause]) -> String {
    because
        .iter()
        .map(|c| {
            format!(
                "{} {} → {}",
                c.package,
                version_or_none(c.old.as_ref()),
                version_or_none(c.new.as_ref())
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Human lines for a dry run: what would be rebuilt and why.
pub fn plan_lines(p: &Plan, verb: &str) -> Vec<String> {
    let mut out = Vec::new();
    for r in &p.rebuilds {
        out.push(format!(
            "{PREFIX} {verb} {}/{} for {} ({})",
            r.pair.module,
            r.pair.version,
            r.pair.kernel,
            causes(&r.because)
        ));
    }
    for s in &p.skipped {
        out.push(format!(
            "{PREFIX} skip {}/{} for {}: {}",
            s.pair.module,
            s.pair.version,
            s.pair.kernel,
            s.reason.as_str()
        ));
    }
    out.extend(p.warnings.iter().map(|w| format!("{PREFIX} warning: {w}")));
    out
}

pub fn to_json_string<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
