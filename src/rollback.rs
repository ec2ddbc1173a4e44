//! `dkms-hook rollback M/V K` and `unhold` (docs/design.md, "Roll back"):
//! put a pair's previous build back and hold it.
//!
//! A successful rebuild keeps the build it replaced as the pair's previous
//! build (`previous/M/V/K/ARCH`, laid out as the safe rebuild's backup; one
//! generation). `rollback` checks it (complete, no links, every installed
//! copy a copy of its build, each module's vermagic the kernel's own), holds
//! the pair, saves the current build, puts the previous one back (dkms tree
//! and installed files), keeps the current one as the new previous build
//! (so a second rollback undoes the first), and runs depmod and, when the
//! module is in it, update-initramfs. A held pair is left alone by sync,
//! retry and the hooks ([`crate::rebuild::Executor::run_queue`]) until
//! `unhold`, or until another version of the module is installed for the
//! kernel ([`tidy`]).
//!
//! Cut short, a rollback leaves its hold marked unfinished and the build it
//! puts back marked [`TARGET`]; running it again finishes it, from the
//! current build's complete backup when the swap had begun.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::dkms::{self, built_names, built_time, is_module_file};
use crate::kernel::MODULES_DIR;
use crate::model::{Assessment, Hold, PairState};
use crate::name::{DkmsArch, KernelRelease, ModuleName, ModuleVersion};
use crate::pair::{PairId, DKMS_TREE};
use crate::rebuild::{is_complete, same_bytes, Executor, Settled};
use crate::state::{now_secs, Lock, QueuedPair, State, HOLDS, PREVIOUS};
use crate::tools::Tools;
use crate::verify;
use crate::Error;

/// The marker written into the previous build a rollback is putting back:
/// a rollback run again restores from a previous build that carries it,
/// and knows that one without it is the build already swapped out.
pub const TARGET: &str = "rolling-back";
/// The most entries a previous build or a kernel's module tree is walked
/// through: a real pair has a handful, a kernel a few thousand.
const MAX_WALK: usize = 20_000;

/// What a rollback did.
#[derive(Debug)]
pub struct RolledBack {
    pub id: PairId,
    /// The build it replaced is now the previous one (a second rollback
    /// puts it back).
    pub swapped: bool,
    pub settled: Settled,
}

/// Put the previous build of `module`/`version` for `kernel` back and hold
/// the pair. Refused, with one line saying why, when no complete previous
/// build is kept, when it does not check, when another version of the
/// module is installed for the kernel, or when its vermagic is not the
/// kernel's. Call with the lock held.
#[allow(clippy::too_many_arguments)]
pub fn rollback(
    state: &State,
    _lock: &Lock,
    config: &Config,
    tools: Tools,
    module: &ModuleName,
    version: &ModuleVersion,
    kernel: &KernelRelease,
    reason: Option<&str>,
) -> Result<RolledBack, Error> {
    let refuse = |why: String| Error::Refused(why);
    let label = format!("{module}/{version} for {kernel}");
    let mut warnings = Vec::new();
    let pairs: Vec<dkms::Pair> = dkms::scan(state.root(), &mut warnings)
        .into_iter()
        .filter(|p| &p.id.module == module && &p.id.kernel == kernel)
        .collect();
    if let Some(other) = pairs
        .iter()
        .find(|p| p.installed && &p.id.version != version)
    {
        return Err(refuse(format!(
            "{module}/{} is the version installed for {kernel}: a build of {module}/{version} cannot replace it (the module version differs)",
            other.id.version
        )));
    }
    let mut holds = state.holds()?;
    // A rollback cut short names its pair (its previous build may be gone
    // already: swapped out).
    let cut_short = holds
        .iter()
        .find(|h| {
            h.unfinished
                && &h.id.module == module
                && &h.id.version == version
                && &h.id.kernel == kernel
        })
        .cloned();
    let unfinished = cut_short.is_some();
    let id = match &cut_short {
        Some(h) => h.id.clone(),
        None => previous_arch(state, module, version, kernel)?
            .map(|arch| PairId {
                module: module.clone(),
                version: version.clone(),
                kernel: kernel.clone(),
                arch,
            })
            .ok_or_else(|| {
                refuse(format!(
                    "no previous build of {label} is kept (a rebuild by dkms-hook keeps one when keep_previous=yes)"
                ))
            })?,
    };
    let previous = state.pair_dir(PREVIOUS, &id, false)?;
    let target = previous
        .as_ref()
        .filter(|d| is_complete(d))
        .filter(|d| !unfinished || d.names().iter().any(|n| n == TARGET));
    let exec = Executor::copying_only(state, config, tools);
    let qp = QueuedPair {
        id: id.clone(),
        because: Vec::new(),
        stale_since: now_secs(),
    };
    let swapped = match target {
        Some(prev) => {
            check_previous(state, &id, prev.path())
                .map_err(|why| refuse(format!("the previous build of {label} {why}: not used")))?;
            // Marked before anything else: a rollback run again after a kill
            // knows by it that this build has not been swapped out yet.
            prev.write_atomic(TARGET, b"")?;
            // Run again without a reason, a cut-short rollback keeps its own.
            let reason = reason
                .map(Hold::clean_reason)
                .or_else(|| cut_short.as_ref().map(|h| h.reason.clone()))
                .unwrap_or_else(|| "rolled back".into());
            holds.retain(|h| h.id != id);
            holds.push(Hold {
                id: id.clone(),
                reason,
                since: now_secs(),
                unfinished: true,
            });
            state.save_holds(&holds)?;
            save_current(&exec, state, &qp)?;
            if !exec.put_back(&qp, prev)? {
                return Err(refuse(format!(
                    "the previous build of {label} was cut short: not used"
                )));
            }
            exec.keep_previous(&id, true)?
        }
        // Cut short after the previous build was put back and removed: the
        // current one's backup becomes the previous build.
        None if unfinished => exec.keep_previous(&id, true)? || previous.is_some(),
        None => {
            return Err(refuse(format!(
                "the previous build of {label} was cut short (it is incomplete): not used"
            )))
        }
    };
    let settled = exec.settle_put_back(kernel, &[&qp], true);
    for h in holds.iter_mut().filter(|h| h.id == id) {
        h.unfinished = false;
    }
    state.save_holds(&holds)?;
    // The admin chose this build: it leaves the queue and the failures.
    let mut q = state.queue()?;
    q.pending.retain(|p| p.id != id);
    state.save_queue(&q)?;
    let mut f = state.failures()?;
    f.failed.retain(|p| p.id != id);
    state.save_failures(&f)?;
    Ok(RolledBack {
        id,
        swapped,
        settled,
    })
}

/// Release the hold of `module`/`version` for `kernel`; the released hold.
/// Refused when there is none, or when its rollback was cut short (run it
/// again first). Call with the lock held.
pub fn unhold(
    state: &State,
    _lock: &Lock,
    module: &ModuleName,
    version: &ModuleVersion,
    kernel: &KernelRelease,
) -> Result<Hold, Error> {
    let mut holds = state.holds()?;
    let is =
        |h: &Hold| &h.id.module == module && &h.id.version == version && &h.id.kernel == kernel;
    let Some(h) = holds.iter().find(|h| is(h)).cloned() else {
        return Err(Error::Refused(format!(
            "{module}/{version} for {kernel} is not held"
        )));
    };
    if h.unfinished {
        return Err(Error::Refused(format!(
            "the rollback of {module}/{version} for {kernel} was cut short: run dkms-hook rollback {module}/{version} {kernel} to finish it first"
        )));
    }
    holds.retain(|h| !is(h));
    state.save_holds(&holds)?;
    Ok(h)
}

/// `status`: each row's previous build and hold; a held pair is `held`
/// (or, when its rollback was cut short, `failed` with what to run).
pub fn annotate(state: &State, rows: &mut [Assessment]) {
    let Some(dir) = state.open_existing() else {
        return;
    };
    let holds = state.holds().unwrap_or_else(|e| {
        log::warn!("{e}");
        Vec::new()
    });
    let kept = dir.is_dir(PREVIOUS);
    for r in rows.iter_mut() {
        if kept {
            r.previous = previous_built(state, &r.id);
        }
        let Some(h) = holds.iter().find(|h| h.id == r.id) else {
            continue;
        };
        let (m, v, k) = (&h.id.module, &h.id.version, &h.id.kernel);
        if h.unfinished {
            r.state = PairState::Failed;
            r.why = format!(
                "NEEDS ATTENTION: a rollback was cut short; to finish it, run: dkms-hook rollback {m}/{v} {k}"
            );
        } else {
            r.state = PairState::Held;
            r.why = format!(
                "held after dkms-hook rollback ({}); to let it be rebuilt: dkms-hook unhold {m}/{v} {k}",
                h.reason
            );
        }
        r.hold = Some(h.clone());
    }
}

/// After each locked run (post-invoke, boot): drop the holds of pairs
/// that are not the installed version for their kernel any more, and the
/// previous builds of kernels or module versions that are gone. Returns
/// one line per hold dropped.
pub fn tidy(state: &State, _lock: &Lock) -> Result<Vec<String>, Error> {
    let Some(dir) = state.open_existing() else {
        return Ok(Vec::new());
    };
    let root = state.root();
    let mut said = Vec::new();
    let mut holds = if dir.names().iter().any(|n| n == HOLDS) {
        state.holds()?
    } else {
        Vec::new()
    };
    let before = holds.len();
    let live = if holds.is_empty() {
        Vec::new()
    } else {
        dkms::scan(root, &mut Vec::new())
    };
    holds.retain(|h| {
        let installed = live.iter().any(|p| p.id == h.id && p.installed);
        if !installed && !h.unfinished {
            said.push(format!(
                "{} is no longer held: it is not the version installed for {} any more",
                h.id, h.id.kernel
            ));
        }
        installed || h.unfinished
    });
    if holds.len() != before {
        state.save_holds(&holds)?;
    }
    if dir.is_dir(PREVIOUS) {
        for (id, _) in state.pair_dirs(PREVIOUS)? {
            let source = Path::new(DKMS_TREE)
                .join(id.module_version_rel())
                .join("source");
            let kernel = Path::new(MODULES_DIR).join(id.kernel.as_str());
            if !root.exists(&source) || !root.exists(&kernel) {
                log::debug!("{id}: its previous build is not needed any more");
                state.remove_pair_dir(PREVIOUS, &id)?;
            }
        }
    }
    Ok(said)
}

/// When the previous build of a pair was built, when a complete one is
/// kept.
pub fn previous_built(state: &State, id: &PairId) -> Option<std::time::SystemTime> {
    let d = state.pair_dir(PREVIOUS, id, false).ok()??;
    if !is_complete(&d) {
        return None;
    }
    built_time(&d.path().join("tree/module"))
}

/// The architecture directory of the pair's previous build (the first, by
/// name, that is a valid one).
fn previous_arch(
    state: &State,
    module: &ModuleName,
    version: &ModuleVersion,
    kernel: &KernelRelease,
) -> Result<Option<DkmsArch>, Error> {
    let Some(mut d) = state.open_existing() else {
        return Ok(None);
    };
    for name in [PREVIOUS, module.as_str(), version.as_str(), kernel.as_str()] {
        match d.existing_subdir(name) {
            Some(s) => d = s,
            None => return Ok(None),
        }
    }
    let mut archs: Vec<String> = d.names();
    archs.sort();
    Ok(archs.iter().find_map(|a| DkmsArch::new(a).ok()))
}

/// Back up the current build into the pair's backup, unless a complete
/// backup of it is there already (a rollback run again after a kill):
/// nothing is put back before the build it replaces is saved.
fn save_current(exec: &Executor, state: &State, p: &QueuedPair) -> Result<(), Error> {
    if state
        .backup(&p.id, false)?
        .as_ref()
        .is_some_and(is_complete)
    {
        return Ok(());
    }
    state.remove_backup(&p.id)?;
    let live = state
        .root()
        .inside(p.id.dkms_dir())
        .map_err(|e| Error::io(&p.id.dkms_dir(), e))?;
    if built_time(&live.join("module")).is_none() {
        return Ok(()); // nothing built to lose
    }
    let b = state
        .backup(&p.id, true)?
        .ok_or_else(|| Error::Refused("backup directory missing".into()))?;
    exec.save_pair(p, &b)
        .map_err(|e| Error::Refused(format!("cannot back up the current build: {e}")))
}

/// Whether the previous build at `saved` (host path) may be put back: no
/// links or other files than regular ones and directories, at least one
/// built module, every built module's vermagic that of the kernel's own
/// modules, and for each built module at least one installed copy, each
/// byte-identical to it and below `/lib/modules/K`. The error completes
/// "the previous build of X …".
fn check_previous(state: &State, id: &PairId, saved: &Path) -> Result<(), String> {
    let mut files = Vec::new();
    walk_checked(saved, &mut files)?;
    let tree = saved.join("tree");
    let names = built_names(&tree);
    if names.is_empty() {
        return Err("holds no built module".into());
    }
    let want = kernel_vermagic(state, id)?;
    for n in &names {
        let built = tree.join("module").join(n);
        let facts = verify::inspect(&built).map_err(|e| format!("cannot be read ({e})"))?;
        let vermagic = facts.vermagic.unwrap_or_default();
        if vermagic.trim() != want.trim() {
            return Err(format!(
                "was built for another kernel ABI (vermagic {:?}, the kernel's is {want:?})",
                vermagic.trim()
            ));
        }
    }
    let installed = saved.join("installed");
    let prefixes = [
        Path::new("lib/modules").join(id.kernel.as_str()),
        Path::new("usr/lib/modules").join(id.kernel.as_str()),
    ];
    let mut copies: Vec<&OsString> = Vec::new();
    for f in files.iter().filter(|f| f.starts_with(&installed)) {
        let rel = f.strip_prefix(&installed).unwrap_or(f);
        let name = f.file_name().map(OsString::from).unwrap_or_default();
        let Some(built) = names.iter().find(|n| **n == name) else {
            return Err(format!(
                "holds a file that is not one of its modules: {}",
                rel.display()
            ));
        };
        if !prefixes.iter().any(|p| rel.starts_with(p)) {
            return Err(format!(
                "would install a file outside /lib/modules/{}: /{}",
                id.kernel,
                rel.display()
            ));
        }
        if !same_bytes(&tree.join("module").join(built), f).unwrap_or(false) {
            return Err(format!(
                "holds an installed copy that differs from its build: /{}",
                rel.display()
            ));
        }
        copies.push(built);
    }
    if let Some(missing) = names.iter().find(|n| !copies.contains(n)) {
        return Err(format!(
            "holds no installed copy of {}",
            missing.to_string_lossy()
        ));
    }
    Ok(())
}

/// Every regular file below `dir` (host path) into `files`; an error for a
/// link, a device or a socket, and beyond [`MAX_WALK`] entries.
fn walk_checked(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot be read ({e})"))?;
    for e in rd {
        let e = e.map_err(|e| format!("cannot be read ({e})"))?;
        if files.len() >= MAX_WALK {
            return Err(format!("holds more than {MAX_WALK} files"));
        }
        let t = e.file_type().map_err(|e| format!("cannot be read ({e})"))?;
        if t.is_dir() {
            walk_checked(&e.path(), files)?;
        } else if t.is_file() {
            files.push(e.path());
        } else {
            return Err(format!(
                "holds a link or special file: {}",
                e.path().display()
            ));
        }
    }
    Ok(())
}

/// The vermagic a module must carry to load into the pair's kernel: that of
/// the kernel's own modules (the first readable module file under
/// `/lib/modules/K/kernel`, by name); where the kernel's image is not
/// installed (a build host, a container: its headers only), that of the
/// pair's current build, which dkms made against those headers.
fn kernel_vermagic(state: &State, id: &PairId) -> Result<String, String> {
    let root = state.root();
    let first = |dir: PathBuf| {
        root.resolve(dir)
            .ok()
            .and_then(|d| first_vermagic(&d, &mut 0))
    };
    let k = &id.kernel;
    first(Path::new(MODULES_DIR).join(k.as_str()).join("kernel"))
        .or_else(|| first(id.dkms_dir().join("module")))
        .ok_or_else(|| {
            format!(
                "cannot be checked: neither {k}'s own modules ({MODULES_DIR}/{k}/kernel) nor its current build could be read to tell the kernel's ABI"
            )
        })
}

/// Depth first, by name, without following links, at most [`MAX_WALK`]
/// entries.
fn first_vermagic(dir: &Path, seen: &mut usize) -> Option<String> {
    let mut entries: Vec<_> = std::fs::read_dir(dir).ok()?.flatten().collect();
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        *seen += 1;
        if *seen > MAX_WALK {
            return None;
        }
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            if let Some(v) = first_vermagic(&e.path(), seen) {
                return Some(v);
            }
        } else if t.is_file() && e.file_name().to_str().is_some_and(is_module_file) {
            if let Some(v) = verify::inspect(&e.path()).ok().and_then(|f| f.vermagic) {
                return Some(v);
            }
        }
    }
    None
}

/// `M/V` as the command line names a module version.
pub fn parse_module_version(arg: &str) -> Result<(ModuleName, ModuleVersion), Error> {
    let (m, v) = arg.split_once('/').ok_or_else(|| {
        Error::Refused(format!(
            "{arg:?}: name the module as MODULE/VERSION (as dkms status shows it)"
        ))
    })?;
    let bad = |what: &str, e: String| Error::Refused(format!("{arg:?}: not a valid {what}: {e}"));
    Ok((
        ModuleName::new(m).map_err(|e| bad("module name", e.to_string()))?,
        ModuleVersion::new(v).map_err(|e| bad("module version", e.to_string()))?,
    ))
}
