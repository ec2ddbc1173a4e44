//! Preflight's builds, kept for the step after dpkg: when the tree dpkg
//! installed is exactly the one preflight built against, the safe rebuild
//! installs the kept build instead of compiling again ("paid once").
//!
//! A kept build is `/var/lib/dkms-hook/preflight/kept/M-V-K-ARCH/`: `tree/`
//! (the built `/var/lib/dkms/M/V/K/ARCH`, directories and regular files
//! only) and `inputs.json` ([`Inputs`]: every package feeding K's build tree
//! with the version preflight built against, and a fingerprint of the
//! module's source). It is published by rename under `preflight/lock`.
//! Read back it is hostile input like every state file: names checked
//! again, no link followed, sizes bounded, the record compared whole with
//! what the system says now, the module's vermagic checked; anything that
//! does not match is removed and the pair builds as before.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::file_tree;
use crate::inventory::Inventory;
use crate::kernel::KernelRelease;
use crate::name::{ModuleName, ModuleVersion};
use crate::pair::PairId;
use crate::root::Root;
use crate::state::State;
use crate::Error;

/// What one built pair may hold (`/var/lib/dkms/M/V/K/ARCH`).
pub const KEPT_BUDGET: file_tree::Budget = file_tree::Budget {
    entries: 10_000,
    bytes: 2 << 30,
};

/// How long a kept build may wait for dpkg.
const MAX_AGE_SECS: u64 = 24 * 3600;
/// The most files of a module's source that are fingerprinted.
const MAX_SOURCE_FILES: usize = 200_000;

/// What a kept build was built against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    #[serde(flatten)]
    pub id: PairId,
    /// `name[:arch] version` of every package feeding the kernel's build
    /// tree, sorted.
    pub packages: Vec<String>,
    /// Path, size, mtime and inode of every file under `/usr/src/M-V`.
    pub source: u64,
    pub time: u64,
}

/// `name[:arch] version` lines of the packages feeding `k`, as installed,
/// with `planned` (name, version) replacing or adding versions.
pub fn packages_of(
    inv: &Inventory,
    k: &KernelRelease,
    planned: &[(String, String)],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in inv.inputs.get(k).into_iter().flatten() {
        let name = i.package.as_str();
        let version = planned
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .or_else(|| {
                inv.installed_version(&i.package)
                    .map(|v| v.version.to_string())
            })
            .unwrap_or_default();
        out.push(format!("{name} {version}"));
    }
    for (n, v) in planned {
        if !out.iter().any(|l| l.split(' ').next() == Some(n)) {
            out.push(format!("{n} {v}"));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A fingerprint of `/usr/src/M-V`: every entry's path, size, mtime and
/// inode (dpkg replaces each file it unpacks, so a reinstalled source
/// changes it), without following links.
pub fn source_fingerprint(root: &Root, m: &ModuleName, v: &ModuleVersion) -> u64 {
    let Ok(dir) = root.resolve(format!("/usr/src/{m}-{v}")) else {
        return 0;
    };
    let Ok(fd) = file_tree::open_dir(&dir) else {
        return 0;
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut add = |b: &[u8]| {
        for x in b {
            h = (h ^ u64::from(*x)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    let mut count = 0;
    fn walk(fd: &OwnedFd, at: &Path, add: &mut dyn FnMut(&[u8]), count: &mut usize) {
        let Ok(names) = file_tree::names(fd) else {
            return;
        };
        for n in names {
            *count += 1;
            if *count > MAX_SOURCE_FILES {
                return;
            }
            let Ok(st) =
                rustix::fs::statat(fd, n.as_os_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
            else {
                continue;
            };
            let p = at.join(&n);
            add(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()));
            add(&st.st_size.to_le_bytes());
            add(&st.st_mtime.to_le_bytes());
            add(&st.st_ino.to_le_bytes());
            if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
                if let Some(sub) = file_tree::open_beneath(fd, Path::new(&n)) {
                    walk(&sub, &p, add, count);
                }
            }
        }
    }
    walk(&fd, Path::new(""), &mut add, &mut count);
    h
}

/// Publish the build in `from` (the run directory's `kept/N`) for `inputs`.
pub fn publish(state: &State, from: &Path, inputs: &Inputs) -> Result<(), Error> {
    let kept = state.open()?.subdir("preflight")?.subdir("kept")?;
    let name = inputs.id.kept_name();
    let tmp = format!(".{name}.new");
    kept.remove_tree(&tmp)?;
    let entry = kept.subdir(&tmp)?;
    let text = serde_json::to_vec(inputs).map_err(|e| Error::Refused(e.to_string()))?;
    // Published by the rename below; a crash leaves a `.new` entry that
    // is never read, so no fsync is needed.
    std::io::Write::write_all(&mut entry.create("inputs.json", false)?, &text)
        .map_err(|e| Error::io(&entry.path().join("inputs.json"), e))?;
    std::fs::rename(from, entry.path().join("tree")).map_err(|e| Error::io(from, e))?;
    kept.remove_tree(&name)?;
    kept.rename(&tmp, &name)
}

/// Forget the kept builds of `pairs`: a step of the same upgrade changes
/// what they were built against (unattended-upgrades' later steps, which
/// do not test a pair twice). Not while a preflight publishes.
pub fn forget(state: &State, pairs: &[PairId]) {
    if pairs.is_empty() {
        return; // every Pre-Install-Pkgs outside unattended-upgrades
    }
    let Some(_lock) = lock_if_free(state) else {
        return;
    };
    if let Some(kept) = state
        .open()
        .ok()
        .and_then(|d| d.existing_subdir("preflight"))
        .and_then(|p| p.existing_subdir("kept"))
    {
        for p in pairs {
            if kept.is_dir(&p.kept_name()) {
                let _ = kept.remove_tree(&p.kept_name());
            }
        }
    }
}

/// A kept build found valid for a pair: its tree, opened. Dropping it
/// removes the entry: a kept build is used once.
pub struct Kept {
    tree: OwnedFd,
    kept: crate::state_dir::Dir,
    name: String,
}

impl Drop for Kept {
    fn drop(&mut self) {
        let _ = self.kept.remove_tree(&self.name);
    }
}

/// Whether `p` has a kept build (cheap: one lookup).
pub fn exists(state: &State, p: &PairId) -> bool {
    state
        .open()
        .ok()
        .and_then(|d| d.existing_subdir("preflight"))
        .and_then(|d| d.existing_subdir("kept"))
        .is_some_and(|k| k.is_dir(&p.kept_name()))
}

/// `preflight/lock` when no preflight holds it: kept builds are read only
/// then, never while one is being published.
pub fn lock_if_free(state: &State) -> Option<std::fs::File> {
    let f = state
        .open()
        .ok()?
        .subdir("preflight")
        .ok()?
        .create("lock", true)
        .ok()?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).ok()?;
    Some(f)
}

/// Take the kept build of `p`, if there is one and it was built against
/// exactly `now` (what [`Inputs`] the system gives today). The entry is
/// removed in every case: it is used once or not at all. `Err` says why a
/// kept build was not used.
pub fn take(state: &State, p: &PairId, now: &Inputs) -> Result<Option<Kept>, String> {
    let Some(kept) = state
        .open()
        .ok()
        .and_then(|d| d.existing_subdir("preflight"))
        .and_then(|d| d.existing_subdir("kept"))
    else {
        return Ok(None);
    };
    let name = p.kept_name();
    let Some(entry) = kept.existing_subdir(&name) else {
        return Ok(None);
    };
    let r = (|| {
        let text = entry
            .read_only("inputs.json", 1 << 20)
            .map_err(|e| e.to_string())?
            .ok_or("no inputs.json")?;
        let then: Inputs =
            serde_json::from_slice(&text).map_err(|e| format!("inputs.json: {e}"))?;
        if then.time > now.time || now.time - then.time > MAX_AGE_SECS {
            return Err("kept too long".to_string());
        }
        if then.id != now.id {
            return Err("kept for another pair".into());
        }
        if then.packages != now.packages {
            let differ: Vec<&String> = now
                .packages
                .iter()
                .filter(|x| !then.packages.contains(x))
                .collect();
            return Err(format!(
                "built against other packages than are installed now ({})",
                differ
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if then.source != now.source {
            return Err(format!(
                "the source of {}/{} changed since",
                p.module, p.version
            ));
        }
        let dir = file_tree::open_dir(entry.path()).map_err(|e| e.to_string())?;
        let tree = file_tree::open_beneath(&dir, Path::new("tree")).ok_or("no tree")?;
        let mut budget = KEPT_BUDGET;
        let files = file_tree::listing(&tree, &mut budget)?;
        let modules: Vec<_> = files
            .iter()
            .filter(|(f, _)| {
                f.parent() == Some(Path::new("module"))
                    && f.to_str().is_some_and(crate::dkms::is_module_file)
            })
            .collect();
        if modules.is_empty() {
            return Err("no module in the kept build".into());
        }
        for (f, _) in modules {
            let path = entry.path().join("tree").join(f);
            let facts = crate::verify::inspect(&path).map_err(|e| e.to_string())?;
            let release = facts
                .vermagic
                .as_deref()
                .and_then(|v| v.split_whitespace().next())
                .unwrap_or_default()
                .to_string();
            if release != p.kernel.as_str() {
                return Err(format!("its module is for kernel {release:?}"));
            }
        }
        Ok(tree)
    })();
    match r {
        Ok(tree) => Ok(Some(Kept { tree, kept, name })),
        Err(e) => {
            let _ = kept.remove_tree(&name);
            Err(e)
        }
    }
}

/// Put a kept tree in place as `name` below `parent` (the pair's
/// `/var/lib/dkms/M/V/K`); the copy's files are new, as a build's are.
pub fn install(k: &Kept, parent: &Path, name: &OsStr) -> Result<(), String> {
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let p = file_tree::open_dir(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let mut budget = KEPT_BUDGET;
    file_tree::copy_tree(&k.tree, &p, name, &mut budget)?;
    // dkms leaves K/ARCH 0755.
    let _ = rustix::fs::chmodat(
        &p,
        name,
        rustix::fs::Mode::from_raw_mode(0o755),
        rustix::fs::AtFlags::empty(),
    );
    Ok(())
}
