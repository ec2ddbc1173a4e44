//! Everything the planner needs to know about the machine, read once from the
//! root: kernels and their build trees, input packages, dkms pairs, installed
//! versions and the local time zone (dpkg.log times are local).

use std::collections::{BTreeMap, HashMap, HashSet};

use jiff::tz::TimeZone;

use crate::change::Change;
use crate::dkms::{self, Pair};
use crate::dkms_conf::{self, Verdict};
use crate::dpkg::{self, Installed, PackageName};
use crate::kernel::{self, CacheUse, Input, Kernel, KernelRelease};
use crate::root::Root;
use crate::Error;

#[derive(Debug, Clone)]
pub struct Inventory {
    pub kernels: Vec<Kernel>,
    pub pairs: Vec<Pair>,
    /// Input packages per kernel. Built from the changed packages only when
    /// planning for changes, from every file list for `status`.
    pub inputs: BTreeMap<KernelRelease, Vec<Input>>,
    /// Status entries of the packages looked at, by name.
    pub installed: HashMap<String, Vec<Installed>>,
    pub running: Option<KernelRelease>,
    pub tz: TimeZone,
    /// What dkms would do with each installed module version for each
    /// kernel with headers ([`dkms_conf`]); a kernel without headers or
    /// config has no entry.
    pub verdicts: HashMap<(String, String, KernelRelease), Verdict>,
    pub warnings: Vec<String>,
}

impl Inventory {
    /// Kernels and dkms pairs, without inputs; `cache_use` says whether
    /// the dkms.conf verdicts learnt are written back.
    fn base(root: &Root, cache_use: CacheUse) -> Inventory {
        let mut warnings = Vec::new();
        let kernels = kernel::scan(root, &mut warnings);
        let pairs = dkms::scan(root, &mut warnings);
        Inventory {
            verdicts: verdicts(root, &kernels, &pairs, cache_use),
            kernels,
            pairs,
            inputs: BTreeMap::new(),
            installed: HashMap::new(),
            running: running_kernel(root),
            tz: crate::time_zone::of(root),
            warnings,
        }
    }

    /// What is needed to plan for `changes`, read only as far as they
    /// reach: the kernels' build trees and the changed packages' file
    /// lists first. When no change feeds a tree, none is a removal and none
    /// a kernel's image or headers (a transaction that does not concern the
    /// kernels: `apt install --reinstall hello`), the plan is empty whatever
    /// else the system holds, and the dkms tree, the dkms.conf verdicts and
    /// dpkg's status file are not read (their pairs and entries stay empty).
    /// Otherwise the verdicts are judged for the kernels the plan looks at
    /// only: those a change feeds or whose headers a change removes.
    pub fn for_changes(root: &Root, changes: &[Change]) -> Result<Inventory, Error> {
        let mut warnings = Vec::new();
        let kernels = kernel::scan(root, &mut warnings);
        let mut inv = Inventory {
            kernels,
            pairs: Vec::new(),
            inputs: BTreeMap::new(),
            installed: HashMap::new(),
            verdicts: HashMap::new(),
            running: running_kernel(root),
            tz: crate::time_zone::of(root),
            warnings,
        };
        let news = changes.iter().any(|c| c.is_removal() || c.names_a_kernel());
        inv.inputs = changed_inputs(root, &inv.kernels, changes)?;
        let fed = |k: &Kernel| {
            inv.inputs.get(&k.release).is_some_and(|i| !i.is_empty())
                || changes.iter().any(|c| {
                    c.is_removal() && k.headers_package_guess().as_ref() == Some(&c.package)
                })
        };
        let looked_at: Vec<Kernel> = inv.kernels.iter().filter(|k| fed(k)).cloned().collect();
        if looked_at.is_empty() && !news {
            return Ok(inv);
        }
        inv.pairs = dkms::scan(root, &mut inv.warnings);
        if inv.pairs.is_empty() && !changes.iter().any(Change::is_removal) {
            inv.inputs.clear();
            return Ok(inv); // nothing built, nothing to warn about
        }
        inv.verdicts = verdicts(root, &looked_at, &inv.pairs, CacheUse::Read);
        let mut wanted: HashSet<String> = inv
            .inputs
            .values()
            .flatten()
            .map(|i| i.package.to_string())
            .collect();
        wanted.extend(
            inv.kernels
                .iter()
                .filter_map(|k| k.headers_package_guess())
                .map(|p| p.to_string()),
        );
        inv.read_status(root, |n| wanted.contains(n));
        Ok(inv)
    }

    /// Every input of every kernel, from all file lists (through their
    /// cache): for `status` and `sync`. A run as root writes the cache back
    /// when it changed; a run as a user only reads it.
    pub fn full(root: &Root) -> Result<Inventory, Error> {
        let cache_use = if rustix::process::geteuid().is_root() {
            CacheUse::Refresh
        } else {
            CacheUse::Read
        };
        Inventory::full_with(root, cache_use)
    }

    /// [`Inventory::full`] with the use of the file-list cache chosen.
    pub fn full_with(root: &Root, cache_use: CacheUse) -> Result<Inventory, Error> {
        let mut inv = Inventory::base(root, cache_use);
        // Without dpkg's file lists nothing can be judged: an error.
        inv.inputs = kernel::find_all_inputs(root, &inv.kernels, cache_use)?;
        let wanted: HashSet<String> = inv.package_names().into_iter().collect();
        inv.read_status(root, |n| wanted.contains(n));
        kernel::guess_missing_inputs(&inv.kernels, &mut inv.inputs, &inv.installed);
        Ok(inv)
    }

    /// The inputs of the running kernel only, from the file lists of the
    /// packages its tree paths name (`/usr/src/linux-headers-K`,
    /// `/usr/lib/linux-kbuild-X.Y`): a handful of reads, for the boot-time
    /// catch-up, which must cost about what the no-op hook does.
    pub fn running_kernel_only(root: &Root) -> Result<Inventory, Error> {
        let mut inv = Inventory::base(root, CacheUse::Read);
        let Some(k) = inv.running.clone().and_then(|r| inv.kernel(&r).cloned()) else {
            return Ok(inv);
        };
        inv.kernels = vec![k];
        let mut names: Vec<_> = inv.kernels[0]
            .tree
            .iter()
            .filter_map(|t| kernel::guess_owner(&t.path))
            .collect();
        names.sort();
        names.dedup();
        let lists: Vec<_> = names
            .into_iter()
            .filter_map(|p| {
                let l = dpkg::list_path(root, &p, None)?;
                Some((p, None, l))
            })
            .collect();
        inv.inputs = kernel::find_inputs(root, &inv.kernels, &lists)?;
        let wanted: HashSet<String> = inv.package_names().into_iter().collect();
        inv.read_status(root, |n| wanted.contains(n));
        Ok(inv)
    }

    /// Every package name that can matter to a plan on this system: the
    /// inputs found, and the owners guessed from tree paths.
    pub fn package_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .inputs
            .values()
            .flatten()
            .map(|i| i.package.to_string())
            .collect();
        for k in &self.kernels {
            names.extend(
                k.tree
                    .iter()
                    .filter_map(|t| kernel::guess_owner(&t.path))
                    .map(|p| p.to_string()),
            );
            names.extend(k.headers_package_guess().map(|p| p.to_string()));
        }
        names.sort();
        names.dedup();
        names
    }

    fn read_status(&mut self, root: &Root, wanted: impl Fn(&str) -> bool) {
        match dpkg::read_status(root, wanted) {
            Ok(list) => self.installed = dpkg::by_name(list),
            Err(e) => self.warnings.push(e.to_string()),
        }
    }

    pub fn kernel(&self, k: &KernelRelease) -> Option<&Kernel> {
        self.kernels.iter().find(|x| &x.release == k)
    }

    /// What dkms would do with `module/version` for `k`; `None` when `k`
    /// has no headers (or no config) or the module's dkms.conf is unreadable.
    pub fn verdict(&self, module: &str, version: &str, k: &KernelRelease) -> Option<&Verdict> {
        self.verdicts
            .get(&(module.to_string(), version.to_string(), k.clone()))
    }

    pub fn is_excluded(&self, module: &str, version: &str, k: &KernelRelease) -> bool {
        self.verdict(module, version, k) == Some(&Verdict::Excluded)
    }

    /// The installed version of a package (any architecture).
    pub fn installed_version(&self, p: &PackageName) -> Option<&Installed> {
        self.installed
            .get(p.as_str())?
            .iter()
            .find(|i| i.has_files())
    }
}

/// The inputs the changed packages are, per kernel: from their file lists,
/// or, for a package without one, from its name (a tree path naming it).
fn changed_inputs(
    root: &Root,
    kernels: &[Kernel],
    changes: &[Change],
) -> Result<BTreeMap<KernelRelease, Vec<Input>>, Error> {
    let candidates: Vec<_> = changes
        .iter()
        .filter(|c| !c.is_removal())
        .map(|c| {
            let list = dpkg::list_path(root, &c.package, c.architecture.as_deref());
            (c.package.clone(), c.architecture.clone(), list)
        })
        .collect();
    let (with_list, without): (Vec<_>, Vec<_>) =
        candidates.into_iter().partition(|c| c.2.is_some());
    let with_list: Vec<_> = with_list
        .into_iter()
        .map(|(p, a, l)| (p, a, l.unwrap_or_default()))
        .collect();
    let changed = |p: &PackageName| changes.iter().any(|c| &c.package == p);
    let mut inputs = kernel::find_changed_inputs(root, kernels, &with_list, &changed)?;
    // A changed package with no file list: fall back to its name.
    for (p, a, _) in without {
        for k in kernels {
            if let Some(t) = k
                .tree
                .iter()
                .find(|t| kernel::guess_owner(&t.path).as_ref() == Some(&p))
            {
                inputs.entry(k.release.clone()).or_default().push(Input {
                    package: p.clone(),
                    architecture: a.clone(),
                    role: t.role,
                    unpacked: None,
                });
            }
        }
    }
    Ok(inputs)
}

/// What dkms would do with each installed module version for every kernel,
/// decided as dkms decides ([`dkms_conf::Judge`], cached).
fn verdicts(
    root: &Root,
    kernels: &[Kernel],
    pairs: &[Pair],
    cache_use: CacheUse,
) -> HashMap<(String, String, KernelRelease), Verdict> {
    let mut out = HashMap::new();
    if !pairs.iter().any(|p| p.installed) {
        return out;
    }
    let mut judge = dkms_conf::Judge::new(root);
    let mut seen = HashSet::new();
    for p in pairs.iter().filter(|p| p.installed) {
        if !seen.insert((p.id.module.clone(), p.id.version.clone())) {
            continue;
        }
        for k in kernels {
            if let Some(v) = judge.verdict(&p.id.module, &p.id.version, k, &p.id.arch) {
                out.insert(
                    (
                        p.id.module.to_string(),
                        p.id.version.to_string(),
                        k.release.clone(),
                    ),
                    v,
                );
            }
        }
    }
    if cache_use == CacheUse::Refresh {
        judge.save();
    }
    out
}

/// `uname -r`, only when looking at the host itself.
fn running_kernel(root: &Root) -> Option<KernelRelease> {
    if !root.is_host_root() {
        return None;
    }
    let r = rustix::system::uname();
    KernelRelease::new(r.release().to_str().ok()?).ok()
}
