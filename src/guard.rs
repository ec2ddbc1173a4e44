//! The guard around dkms's own destructive step (docs/design.md, "The
//! guard"). dkms ≥ 3.1.6 installs `/etc/kernel/preinst.d/dkms`, whose `dkms
//! kernel_preinst` unbuilds every AUTOINSTALL module of a kernel before its
//! image is upgraded or reinstalled in place; `postinst.d/dkms` then builds
//! them again, and a build that fails leaves the kernel without its module
//! and fails the kernel package (run-parts stops at the first failing hook).
//!
//! The guard runs before dkms in both directories: before the unbuild it
//! saves every built pair of the kernel with the safe rebuild's backup
//! ([`Executor::save_pair`]) and records it in `guarded.json`; before `dkms
//! autoinstall` it puts each one back ([`Executor::put_back`]), so that dkms
//! finds it installed and has nothing to do, and runs depmod. Whether the
//! pair is stale is then the planner's business, as always. A run killed in
//! between is finished by the next locked run (post-invoke, boot, the next
//! guard); a saved pair that dkms built anew, or whose kernel or module
//! version is gone, is dropped.
//!
//! `guarded.json` is read back as untrusted input: through the no-follow
//! state directory, capped, every entry checked through the name types and
//! at most [`MAX_ENTRIES`] of them; a corrupt one is set aside. A complete
//! backup under `guarded/` (names checked the same way) counts as guarded
//! even when the record does not name it (a record set aside or never
//! written): what dkms removed is put back whatever happened to the record.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::dkms;
use crate::kernel::MODULES_DIR;
use crate::name::KernelRelease;
use crate::pair::{PairId, DKMS_TREE};
use crate::rebuild::{Executor, Settled};
use crate::state::{at_secs, now_secs, Lock, QueuedPair, State, MAX_TIME, STATE_VERSION};
use crate::state_dir::Dir;
use crate::tools::Tools;
use crate::Error;

/// The record of guarded pairs in the state directory.
pub const RECORD: &str = "guarded.json";
/// Where the guarded pairs are saved: `guarded/M/V/K/ARCH`.
const SAVED: &str = "guarded";
/// dkms's own hook that unbuilds (dkms ≥ 3.1.6). Without it (dkms 3.0.10 of
/// Debian 12) nothing is unbuilt and the guard saves nothing.
pub const DKMS_PREINST_HOOK: &str = "/etc/kernel/preinst.d/dkms";
/// At most this many entries are read back: more come from no real system
/// (one per module version and kernel being upgraded).
pub const MAX_ENTRIES: usize = 1024;

/// One pair saved before dkms's `kernel_preinst`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guarded {
    #[serde(flatten)]
    pub id: PairId,
    /// Seconds since the epoch when it was saved: a build of the pair
    /// newer than this is dkms's own, and the saved one is not needed.
    pub time: u64,
}

#[derive(Debug, Serialize)]
struct Record<'a> {
    version: u32,
    guarded: &'a [Guarded],
}

/// What a guard run did.
#[derive(Debug, Default)]
pub struct Done {
    /// Pairs saved (before the unbuild).
    pub saved: Vec<Guarded>,
    /// Pairs put back after dkms had removed them.
    pub put_back: Vec<Guarded>,
    /// Each kernel with a pair put back, settled (depmod).
    pub settled: Vec<Settled>,
    /// Problems, one line each: a pair that could not be saved or put back.
    pub notes: Vec<String>,
}

impl Guarded {
    fn pair(&self) -> QueuedPair {
        QueuedPair {
            id: self.id.clone(),
            because: Vec::new(),
            stale_since: self.time,
        }
    }

    fn chain(&self) -> [&str; 4] {
        self.id.backup_chain()
    }

    /// `acpi-call/1.2.2 for 6.12.38+deb13-amd64`.
    pub fn label(&self) -> String {
        format!(
            "{}/{} for {}",
            self.id.module, self.id.version, self.id.kernel
        )
    }
}

/// Whether dkms's `kernel_preinst` hook is installed (an executable
/// `/etc/kernel/preinst.d/dkms`; run-parts runs nothing else).
pub fn dkms_unbuilds(state: &State) -> bool {
    use std::os::unix::fs::PermissionsExt;
    state
        .root()
        .resolve(DKMS_PREINST_HOOK)
        .and_then(std::fs::metadata)
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `/etc/kernel/preinst.d`: before dkms's `kernel_preinst` unbuilds the
/// modules of `kernel`, save every built pair of it. What an earlier guard
/// of the kernel left is put back first, so that what is saved is the
/// working module. Nothing at all without dkms's hook.
pub fn before_unbuild(
    state: &State,
    _lock: &Lock,
    config: &Config,
    tools: Tools,
    kernel: &KernelRelease,
) -> Result<Done, Error> {
    if !dkms_unbuilds(state) {
        return Ok(Done::default());
    }
    let exec = Executor::copying_only(state, config, tools);
    let mut done = finish_with(&exec, Some(kernel), false)?;
    let mut record = read_record(state)?;
    let mut warnings = Vec::new();
    let time = now_secs();
    for p in dkms::scan(state.root(), &mut warnings) {
        if &p.id.kernel != kernel || p.built.is_none() {
            continue;
        }
        let g = Guarded { id: p.id, time };
        if record.iter().any(|r| r.chain() == g.chain()) {
            // Its backup could not be put back: it holds the working module.
            continue;
        }
        match save(&exec, state, &g) {
            Ok(()) => {
                record.push(g.clone());
                done.saved.push(g);
            }
            Err(e) => {
                let _ = remove_saved(state, &g);
                done.notes.push(format!(
                    "cannot save {} before dkms removes it: {e}",
                    g.label()
                ));
            }
        }
    }
    for w in warnings {
        log::debug!("{w}");
    }
    if !done.saved.is_empty() {
        write_record(state, &record)?;
    }
    Ok(done)
}

/// `/etc/kernel/postinst.d`: before `dkms autoinstall`, put back each pair
/// of `kernel` saved by [`before_unbuild`], and depmod (the kernel
/// package's initramfs hook runs after dkms's and takes the modules in).
pub fn after_unpack(
    state: &State,
    _lock: &Lock,
    config: &Config,
    tools: Tools,
    kernel: &KernelRelease,
) -> Result<Done, Error> {
    if !has_anything(state) {
        return Ok(Done::default());
    }
    let exec = Executor::copying_only(state, config, tools);
    finish_with(&exec, Some(kernel), false)
}

/// Finish what a killed run left (post-invoke, boot): every guarded pair of
/// every kernel put back or dropped, leftover backups removed, each kernel
/// with a pair put back settled as after a rebuild. Call with the lock held.
pub fn finish(state: &State, _lock: &Lock, config: &Config, tools: Tools) -> Result<Done, Error> {
    if !has_anything(state) {
        return Ok(Done::default());
    }
    let exec = Executor::copying_only(state, config, tools);
    finish_with(&exec, None, true)
}

/// Forget the guarded pairs of a kernel being removed: its modules are
/// meant to go. Call with the lock held.
pub fn forget_kernel(state: &State, _lock: &Lock, kernel: &KernelRelease) -> Result<(), Error> {
    if !has_anything(state) {
        return Ok(());
    }
    let mut record = read_record(state)?;
    for g in record.iter().filter(|g| &g.id.kernel == kernel) {
        remove_saved(state, g)?;
    }
    let before = record.len();
    record.retain(|g| &g.id.kernel != kernel);
    if record.len() != before {
        write_record(state, &record)?;
    }
    Ok(())
}

/// Whether [`before_unbuild`] has anything to do for `kernel` (checked
/// before the lock is taken: a new kernel's install does not wait for a
/// running rebuild): dkms's hook is there, and a pair of the kernel is
/// built or something is saved.
pub fn needed_before_unbuild(state: &State, kernel: &KernelRelease) -> bool {
    dkms_unbuilds(state)
        && (has_anything(state)
            || dkms::scan(state.root(), &mut Vec::new())
                .iter()
                .any(|p| &p.id.kernel == kernel && p.built.is_some()))
}

/// The guarded pairs, as a guard run reads them back (for `status` and the
/// fuzzer): the record's entries that check, and the complete backups.
pub fn guarded(state: &State) -> Result<Vec<Guarded>, Error> {
    read_record(state)
}

/// The cheap test on every post-invoke and kernel postinst: a record or a
/// backup directory.
pub fn has_anything(state: &State) -> bool {
    state
        .open_existing()
        .is_some_and(|d| d.is_dir(SAVED) || d.names().iter().any(|n| n == RECORD))
}

/// Put back or drop each guarded pair (of `only`, or of every kernel).
fn finish_with(
    exec: &Executor,
    only: Option<&KernelRelease>,
    initramfs: bool,
) -> Result<Done, Error> {
    let state = exec.state;
    let root = state.root();
    let record = read_record(state)?;
    let mut done = Done::default();
    let mut kept = Vec::new();
    let mut warnings = Vec::new();
    let live = dkms::scan(root, &mut warnings);
    for g in record {
        if only.is_some_and(|k| k != &g.id.kernel) {
            kept.push(g);
            continue;
        }
        let Some(saved) = saved_dir(state, &g, false)? else {
            log::debug!("{}: no backup of it: dropped", g.label());
            continue;
        };
        let kernel_gone = !root.exists(Path::new(MODULES_DIR).join(g.id.kernel.as_str()));
        let source = Path::new(DKMS_TREE)
            .join(g.id.module_version_rel())
            .join("source");
        let module_gone = !root.exists(&source);
        let rebuilt = live.iter().any(|p| {
            p.id == g.id
                && p.installed
                && p.built
                    .is_some_and(|t| t >= at_secs(g.time.saturating_add(1)))
        });
        if kernel_gone || module_gone || rebuilt {
            log::debug!("{}: its backup is not needed any more", g.label());
            remove_saved(state, &g)?;
            continue;
        }
        match exec.put_back(&g.pair(), &saved) {
            Ok(true) => {
                remove_saved(state, &g)?;
                done.put_back.push(g);
            }
            Ok(false) => {
                log::debug!("{}: its backup was cut short: dropped", g.label());
                remove_saved(state, &g)?;
            }
            Err(e) => {
                done.notes.push(format!(
                    "cannot put back {} (saved before dkms removed it): {e}; the next run tries again",
                    g.label()
                ));
                kept.push(g);
            }
        }
    }
    if only.is_none() {
        remove_leftovers(state, &kept)?;
    }
    write_record(state, &kept)?;
    let mut kernels: BTreeMap<&KernelRelease, Vec<QueuedPair>> = BTreeMap::new();
    for g in &done.put_back {
        kernels.entry(&g.id.kernel).or_default().push(g.pair());
    }
    for (k, pairs) in kernels {
        let refs: Vec<&QueuedPair> = pairs.iter().collect();
        done.settled.push(exec.settle_put_back(k, &refs, initramfs));
    }
    Ok(done)
}

/// Save one pair into a fresh `guarded/M/V/K/ARCH`.
fn save(exec: &Executor, state: &State, g: &Guarded) -> Result<(), Error> {
    remove_saved(state, g)?;
    let dir = saved_dir(state, g, true)?
        .ok_or_else(|| Error::Refused("backup directory missing".into()))?;
    exec.save_pair(&g.pair(), &dir)
}

/// `guarded/M/V/K/ARCH`, each level a real directory (created when
/// `create`).
fn saved_dir(state: &State, g: &Guarded, create: bool) -> Result<Option<Dir>, Error> {
    state.pair_dir(SAVED, &g.id, create)
}

/// Remove a pair's backup and the levels above it that it leaves empty.
fn remove_saved(state: &State, g: &Guarded) -> Result<(), Error> {
    state.remove_pair_dir(SAVED, &g.id)?;
    state.open()?.remove_empty(SAVED);
    Ok(())
}

/// Remove every backup under `guarded/` that no entry of `kept` names (cut
/// short, or beyond [`MAX_ENTRIES`]), and `guarded/` itself with whatever
/// else is in it once nothing is kept.
fn remove_leftovers(state: &State, kept: &[Guarded]) -> Result<(), Error> {
    let top = state.open()?;
    if kept.is_empty() {
        return top.remove_tree(SAVED);
    }
    for found in saved_pairs(state, false)? {
        if !kept.iter().any(|g| g.chain() == found.chain()) {
            remove_saved(state, &found)?;
        }
    }
    Ok(())
}

/// The backups under `guarded/` whose names check, with the time their
/// completion was marked; with `complete_only`, not those cut short (no
/// mark).
fn saved_pairs(state: &State, complete_only: bool) -> Result<Vec<Guarded>, Error> {
    let mut out = Vec::new();
    for (id, dir) in state.pair_dirs(SAVED)? {
        let time = std::fs::symlink_metadata(dir.path().join("complete"))
            .ok()
            .filter(std::fs::Metadata::is_file)
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs().min(MAX_TIME));
        if complete_only && time.is_none() {
            continue;
        }
        out.push(Guarded {
            id,
            time: time.unwrap_or(0),
        });
    }
    Ok(out)
}

/// The record's entries that check; a corrupt record is set aside and the
/// complete backups under `guarded/` stand in for it.
fn read_record(state: &State) -> Result<Vec<Guarded>, Error> {
    let dir = state.open()?;
    let path = dir.path().join(RECORD);
    let value = match state.read_value(RECORD) {
        Ok(Some(v)) => v,
        Ok(None) => return from_backups(state),
        // Set aside by the state's own reading; the backups stand in.
        Err(e @ Error::StateCorrupt { .. }) => {
            log::warn!("{e}; the saved modules are used without it");
            return from_backups(state);
        }
        // Over the cap, or not a regular file: set aside the same way.
        Err(Error::Unreadable { why, .. }) => return set_aside(state, &dir, &why),
        Err(e) => return Err(e),
    };
    let Some(items) = value.get("guarded").and_then(serde_json::Value::as_array) else {
        return set_aside(state, &dir, "no list of guarded pairs");
    };
    if items.len() > MAX_ENTRIES {
        log::warn!(
            "{}: {} entries, more than {MAX_ENTRIES}: only the first are read",
            path.display(),
            items.len()
        );
    }
    let mut out: Vec<Guarded> = Vec::new();
    for (i, item) in items.iter().take(MAX_ENTRIES).enumerate() {
        match Guarded::deserialize(item) {
            Ok(g) if g.time > MAX_TIME => log::warn!(
                "{}: dropping entry {}: time out of range",
                path.display(),
                i + 1
            ),
            Ok(g) if out.iter().any(|o| o.chain() == g.chain()) => {}
            Ok(g) => out.push(g),
            Err(e) => log::warn!("{}: dropping entry {}: {e}", path.display(), i + 1),
        }
    }
    // A complete backup the record does not name (a guard that could not
    // write the record after its backups) is guarded all the same.
    for g in from_backups(state)? {
        if out.len() < MAX_ENTRIES && !out.iter().any(|o| o.chain() == g.chain()) {
            out.push(g);
        }
    }
    Ok(out)
}

/// Set the record aside as `guarded.json.corrupt`, with one warning; the
/// backups stand in for it.
fn set_aside(state: &State, dir: &Dir, why: &str) -> Result<Vec<Guarded>, Error> {
    let aside = format!("{RECORD}.corrupt");
    dir.remove_tree(&aside)?;
    dir.rename(RECORD, &aside)?;
    log::warn!(
        "{}: corrupt: {why}; set aside as {aside}; the saved modules are used without it",
        dir.path().join(RECORD).display()
    );
    from_backups(state)
}

fn from_backups(state: &State) -> Result<Vec<Guarded>, Error> {
    let mut v = saved_pairs(state, true)?;
    v.truncate(MAX_ENTRIES);
    Ok(v)
}

/// Write the record atomically; with no entry left, remove it.
fn write_record(state: &State, guarded: &[Guarded]) -> Result<(), Error> {
    let dir = state.open()?;
    if guarded.is_empty() {
        return dir.remove_tree(RECORD);
    }
    let text = serde_json::to_vec_pretty(&Record {
        version: STATE_VERSION,
        guarded,
    })
    .map_err(|e| Error::StateCorrupt {
        path: dir.path().join(RECORD),
        msg: e.to_string(),
    })?;
    dir.write_atomic(RECORD, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::name::{DkmsArch, ModuleName, ModuleVersion};
    use crate::root::Root;

    fn state() -> (tempfile::TempDir, State) {
        let t = tempfile::tempdir().unwrap();
        let s = State::new(&Root::new(t.path()));
        (t, s)
    }

    fn entry(m: &str, k: &str, time: u64) -> String {
        format!(
            r#"{{"module":"{m}","version":"1.0","kernel":"{k}","arch":"x86_64","time":{time}}}"#
        )
    }

    #[test]
    fn record_entries_are_checked_one_by_one() {
        let (_t, s) = state();
        let list = [
            entry("acpi-call", "6.12.38+deb13-amd64", 1_700_000_000),
            entry("../etc", "6.12.38+deb13-amd64", 1),
            entry("zfs", "../../boot", 1),
            entry("v4l2loopback", "6.12.38+deb13-amd64", MAX_TIME + 1),
            entry("acpi-call", "6.12.38+deb13-amd64", 5),
            r#"{"module":"x"}"#.to_string(),
        ];
        let text = format!(r#"{{"version":1,"guarded":[{}]}}"#, list.join(","));
        s.open()
            .unwrap()
            .write_atomic(RECORD, text.as_bytes())
            .unwrap();
        let read = read_record(&s).unwrap();
        assert_eq!(read.len(), 1, "{read:?}");
        assert_eq!(read[0].id.module.as_str(), "acpi-call");
        assert_eq!(read[0].time, 1_700_000_000, "the first of two alike");
    }

    #[test]
    fn a_record_is_bounded() {
        let (_t, s) = state();
        let list: Vec<String> = (0..MAX_ENTRIES + 10)
            .map(|i| entry(&format!("m{i}"), "6.12.38+deb13-amd64", 1))
            .collect();
        let text = format!(r#"{{"version":1,"guarded":[{}]}}"#, list.join(","));
        s.open()
            .unwrap()
            .write_atomic(RECORD, text.as_bytes())
            .unwrap();
        assert_eq!(read_record(&s).unwrap().len(), MAX_ENTRIES);
    }

    #[test]
    fn a_newer_record_is_left_alone_and_a_corrupt_one_set_aside() {
        let (_t, s) = state();
        let dir = s.open().unwrap();
        dir.write_atomic(RECORD, br#"{"version":99,"guarded":[]}"#)
            .unwrap();
        assert!(matches!(
            read_record(&s),
            Err(Error::StateTooNew { version: 99, .. })
        ));
        assert!(dir.names().iter().any(|n| n == RECORD), "left alone");
        for bad in [
            &b"[1,2]"[..],
            b"{\"version\":1}",
            b"\xff\xfe",
            b"{\"guarded\":",
        ] {
            dir.write_atomic(RECORD, bad).unwrap();
            assert_eq!(read_record(&s).unwrap(), Vec::new());
            let names = dir.names();
            assert!(!names.iter().any(|n| n == RECORD), "{names:?}");
            assert!(
                names.iter().any(|n| n == "guarded.json.corrupt"),
                "{names:?}"
            );
        }
    }

    #[test]
    fn complete_backups_stand_in_for_a_missing_record() {
        let (_t, s) = state();
        let g = Guarded {
            id: PairId {
                module: ModuleName::new("acpi-call").unwrap(),
                version: ModuleVersion::new("1.2.2").unwrap(),
                kernel: KernelRelease::new("6.12.38+deb13-amd64").unwrap(),
                arch: DkmsArch::new("x86_64").unwrap(),
            },
            time: 0,
        };
        let d = saved_dir(&s, &g, true).unwrap().unwrap();
        d.write_atomic("complete", b"").unwrap();
        // A name that does not check is not taken for a pair.
        s.open()
            .unwrap()
            .subdir(SAVED)
            .unwrap()
            .subdir("bad name")
            .unwrap();
        let read = read_record(&s).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].chain(), g.chain());
        assert!(read[0].time > 0, "the time the backup was marked complete");
        remove_saved(&s, &g).unwrap();
        let left = s.open().unwrap().existing_subdir(SAVED).unwrap().names();
        assert_eq!(left, ["bad name"], "emptied levels removed, others kept");
        remove_leftovers(&s, &[]).unwrap();
        assert!(!s.open().unwrap().is_dir(SAVED));
    }
}
