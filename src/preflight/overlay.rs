//! The overlays of the sandbox: which directories of the root the build
//! sees through an overlay (the packages' trees over the system's), and
//! where each one's writable layer lives.

use std::path::{Path, PathBuf};

use super::{sandbox, Session};
use crate::dkms::DKMS_TREE;
use crate::inventory::Inventory;
use crate::kernel::{KernelRelease, MODULES_DIR};
use crate::plan::Plan;
use crate::root::Root;

/// One overlay per directory of [`overlay_dirs`], its layers on the
/// sandbox's tmpfs in the session's run directory.
pub(super) fn overlays(
    session: &Session,
    root: &Root,
    inv: &Inventory,
    p: &Plan,
    new: &[KernelRelease],
) -> Vec<sandbox::Overlay> {
    let mut overlays = Vec::new();
    for (n, (dir, also)) in overlay_dirs(root, inv, p, new).into_iter().enumerate() {
        let target = root.host(&dir);
        // The merged view's top directory takes the upper layer's mode.
        let mode = std::fs::metadata(&target).map_or(0o755, |m| {
            std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777
        });
        // On the sandbox's tmpfs, which it mounts on `x`: the build's
        // writes never reach the disk, and none survives preflight.
        let o = session.path().join("x").join(format!("o{n}"));
        overlays.push(sandbox::Overlay {
            target,
            upper: o.join("upper"),
            work: o.join("work"),
            mode,
            names: std::iter::once(dir.clone()).chain(also).collect(),
        });
    }
    overlays
}

/// Directories mounted over with an overlay, in-root, each with its other
/// names, none inside another.
fn overlay_dirs(
    root: &Root,
    inv: &Inventory,
    p: &Plan,
    new: &[KernelRelease],
) -> Vec<(PathBuf, Vec<PathBuf>)> {
    let mut dirs: Vec<(PathBuf, Vec<PathBuf>)> = Vec::new();
    let mut add = |path: PathBuf, also: Vec<PathBuf>| {
        if !dirs.iter().any(|(d, _)| d == &path) {
            dirs.push((path, also));
        }
    };
    for r in &p.rebuilds {
        if let Some(k) = inv.kernel(&r.pair.id.kernel) {
            for t in &k.tree {
                add(t.path.clone(), t.also.clone());
            }
        }
        if let Ok(m) = root.canonicalize(Path::new(MODULES_DIR).join(r.pair.id.kernel.as_str())) {
            add(
                m,
                vec![Path::new(MODULES_DIR).join(r.pair.id.kernel.as_str())],
            );
        }
    }
    if let Ok(d) = root.canonicalize(DKMS_TREE) {
        add(d, Vec::new());
    }
    // A kernel installed new (its package ships `/lib/modules/K/build`):
    // its headers land in /usr/src and its build link in /lib/modules,
    // which do not exist yet, so these two are overlaid with the packages'
    // trees over them.
    if p.rebuilds.iter().any(|r| new.contains(&r.pair.id.kernel)) {
        for (dir, alias) in [("/usr/src", None), (MODULES_DIR, Some("/lib/modules"))] {
            if let Ok(c) = root.canonicalize(dir) {
                add(c, alias.map(PathBuf::from).into_iter().collect());
            }
        }
    }
    // A directory inside another overlaid one is covered by it.
    let all: Vec<PathBuf> = dirs.iter().map(|(d, _)| d.clone()).collect();
    dirs.retain(|(d, _)| !all.iter().any(|o| o != d && d.starts_with(o)));
    dirs.sort();
    dirs
}
