//! The dkms tree `/var/lib/dkms`, read directly as dkms 2.8–3.x lays it out:
//! `M/V/K/ARCH/module/*.ko*` for each built pair and the symlink
//! `M/kernel-K-ARCH → V/K/ARCH` for each installed one. Reading it costs a few
//! `readdir`s, where `dkms status` costs ~400 ms.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::kernel::{KernelRelease, MODULES_DIR};
use crate::root::Root;

pub use crate::name::{DkmsArch, ModuleName, ModuleVersion};
pub use crate::pair::{PairId, DKMS_TREE};

/// One module version built for one kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub id: PairId,
    /// `kernel-K-ARCH` points at this version.
    pub installed: bool,
    /// mtime of the newest built `.ko` under `module/`; `None` if none is there
    /// (a failed `build --force` leaves the directory without one).
    pub built: Option<SystemTime>,
    /// The module files dkms built there ([`built_names`], from the same
    /// listing), which `status` looks for among the kernel's installed
    /// files.
    pub built_names: Vec<OsString>,
}

pub fn is_module_file(name: &str) -> bool {
    [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|s| name.ends_with(s))
}

fn dirs(p: &Path) -> Vec<(String, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(p) else {
        return Vec::new();
    };
    let mut v: Vec<_> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .collect();
    v.sort();
    v
}

/// Names of the module files dkms built into `dkms_dir` (host path of
/// `M/V/K/ARCH`): `.ko` and its compressed forms only (dkms 3.2 leaves
/// `Module.symvers` there too, which is never installed; found by the
/// Debian 13 tier).
pub fn built_names(dkms_dir: &Path) -> Vec<OsString> {
    built_in(&dkms_dir.join("module")).1
}

/// Where modules are installed below `/lib/modules/K`: dkms puts them in
/// `updates/dkms`; older dkms, other distributions and manual installs in
/// `updates`, `extra` or `kernel/…`.
pub const INSTALL_DIRS: &[&str] = &["updates", "extra", "kernel"];

/// Host paths of every file named in `names` below `/lib/modules/K/D` for
/// each `D` of `subdirs`, in that order; links are not followed.
pub fn installed_copies(
    root: &Root,
    kernel: &KernelRelease,
    names: &[OsString],
    subdirs: &[&str],
) -> Vec<PathBuf> {
    let mut all = installed_files(root, kernel, subdirs);
    all.retain(|f| f.file_name().is_some_and(|n| names.iter().any(|x| x == n)));
    all
}

/// Host paths of every regular file below `/lib/modules/K/D` for each `D`
/// of `subdirs`, in that order; links are not followed.
pub fn installed_files(root: &Root, kernel: &KernelRelease, subdirs: &[&str]) -> Vec<PathBuf> {
    let kdir = Path::new(MODULES_DIR).join(kernel.as_str());
    let mut out = Vec::new();
    for sub in subdirs {
        // Each resolved inside the root: `updates -> /etc` is the root's.
        if let Ok(dir) = root.resolve(kdir.join(sub)) {
            walk(&dir, &mut |f| out.push(f.to_path_buf()));
        }
    }
    out
}

/// Every regular file below `dir`, links not followed.
pub(crate) fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(&e.path(), f),
            Ok(t) if t.is_file() => f(&e.path()),
            _ => {}
        }
    }
}

/// The newest mtime of a built module file in `dir` (host path).
pub fn built_time(dir: &Path) -> Option<SystemTime> {
    built_in(dir).0
}

/// [`built_time`] and the names [`built_names`] gives, from one listing of
/// the `module/` directory `dir`.
fn built_in(dir: &Path) -> (Option<SystemTime>, Vec<OsString>) {
    let mut newest = None;
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !e.file_name().to_str().is_some_and(is_module_file) {
            continue;
        }
        if let Some(t) = e.metadata().ok().and_then(|m| m.modified().ok()) {
            newest = newest.max(Some(t));
        }
        if e.file_type().is_ok_and(|t| t.is_file()) {
            names.push(e.file_name());
        }
    }
    (newest, names)
}

/// Every pair in the dkms tree. Broken entries (unsafe names, dangling
/// `kernel-*` links) become warnings and are otherwise skipped.
pub fn scan(root: &Root, warnings: &mut Vec<String>) -> Vec<Pair> {
    let Ok(tree) = root.canonicalize(DKMS_TREE) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (m, mdir) in dirs(&root.host(&tree)) {
        let Ok(module) = ModuleName::new(&m) else {
            warnings.push(format!("ignoring dkms module directory {m:?}: unsafe name"));
            continue;
        };
        let installed = installed_links(&mdir, &module, warnings);
        for (v, vdir) in dirs(&mdir) {
            let Ok(version) = ModuleVersion::new(&v) else {
                warnings.push(format!("ignoring {module}/{v:?}: unsafe version"));
                continue;
            };
            for (k, kdir) in dirs(&vdir) {
                if k == "build" || k == "source" {
                    continue;
                }
                let Ok(kernel) = KernelRelease::new(&k) else {
                    warnings.push(format!(
                        "ignoring {module}/{version}/{k:?}: unsafe kernel release"
                    ));
                    continue;
                };
                for (a, adir) in dirs(&kdir) {
                    let Ok(arch) = DkmsArch::new(&a) else {
                        continue;
                    };
                    let id = PairId {
                        module: module.clone(),
                        version: version.clone(),
                        kernel: kernel.clone(),
                        arch,
                    };
                    let (built, built_names) = built_in(&adir.join("module"));
                    out.push(Pair {
                        installed: installed.contains(&id.link_target()),
                        built,
                        built_names,
                        id,
                    });
                }
            }
        }
    }
    out
}

/// The `V/K/ARCH` targets of a module's `kernel-K-ARCH` links.
fn installed_links(mdir: &Path, module: &ModuleName, warnings: &mut Vec<String>) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(mdir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str().filter(|n| n.starts_with("kernel-")) else {
            continue;
        };
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        let target = target.to_string_lossy().trim_end_matches('/').to_string();
        // dkms writes `V/K/ARCH`; anything else (absolute, `..`) is not
        // followed, so that the check below stays inside the module's tree.
        let parts: Vec<&str> = target.split('/').collect();
        let relative = parts.len() == 3
            && ModuleVersion::new(parts[0]).is_ok()
            && KernelRelease::new(parts[1]).is_ok()
            && DkmsArch::new(parts[2]).is_ok();
        if !relative {
            warnings.push(format!(
                "{module}: ignoring {name}: unexpected target {target:?}"
            ));
            continue;
        }
        if !mdir.join(&target).is_dir() {
            // What a failed `dkms build --force` leaves behind (docs/design.md, "The problem").
            warnings.push(format!("{module}: {name} points to missing {target}; dkms shows it as added, not installed"));
            continue;
        }
        out.push(target);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `updates -> /H` (an absolute link) is the root's `/H`, never the
    /// host's.
    #[test]
    fn installed_files_stay_inside_the_root() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("evil.ko"), "x").unwrap();
        let t = tempfile::tempdir().unwrap();
        let kdir = t.path().join("lib/modules/K");
        std::fs::create_dir_all(kdir.join("extra")).unwrap();
        std::fs::write(kdir.join("extra/m.ko"), "m").unwrap();
        std::os::unix::fs::symlink(host.path(), kdir.join("updates")).unwrap();
        let root = Root::new(t.path());
        let k = KernelRelease::new("K").unwrap();
        let files = installed_files(&root, &k, &["updates", "extra"]);
        assert_eq!(files, vec![kdir.join("extra/m.ko")]);
    }

    #[test]
    fn scan_reads_pairs_and_links() {
        let t = tempfile::tempdir().unwrap();
        let root = Root::new(t.path());
        let d = t.path().join("var/lib/dkms/acpi-call");
        for k in ["6.1.0-50-amd64", "6.1.0-56-amd64", "6.1.0-9-amd64"] {
            std::fs::create_dir_all(d.join(format!("1.2.2/{k}/x86_64/module"))).unwrap();
        }
        std::fs::write(
            d.join("1.2.2/6.1.0-50-amd64/x86_64/module/acpi_call.ko"),
            b"x",
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "1.2.2/6.1.0-50-amd64/x86_64",
            d.join("kernel-6.1.0-50-amd64-x86_64"),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "1.2.2/6.1.0-1-amd64/x86_64",
            d.join("kernel-6.1.0-1-amd64-x86_64"),
        )
        .unwrap();
        std::fs::create_dir_all(t.path().join("var/lib/dkms/bad name/1")).unwrap();
        let mut w = Vec::new();
        let pairs = scan(&root, &mut w);
        assert_eq!(pairs.len(), 3);
        assert!(pairs[0].installed && pairs[0].built.is_some());
        assert!(!pairs[1].installed && pairs[1].built.is_none());
        assert_eq!(w.len(), 2, "{w:?}");
    }
}
