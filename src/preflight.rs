//! Preflight: test-build every pair an upgrade will make stale against the
//! build tree *as it will be* once the upgrade's packages are unpacked, before
//! dpkg touches anything.
//!
//! The pairs come from the same planner as the forecast before apt's prompt
//! (`plan::plan` on the planned changes), so preflight and forecast always
//! agree on "which pairs, against which packages".
//!
//! How the build is kept off the system: it works in a private run
//! directory (`/var/lib/dkms-hook/preflight/run-PID-N`, 0700, made fresh),
//! and the real `dkms build --force` runs in [`sandbox`]: a new PID and
//! mount namespace where everything is read-only, `nosuid` and `nodev`,
//! each package is unpacked by [`crate::file_tree::unpack`] onto a tmpfs
//! of its own (never through a link, without set-id bits or device
//! nodes), with an overlay over each directory of the affected kernels' build
//! trees, each kernel's `/lib/modules/K` and `/var/lib/dkms`: the
//! packages' trees as lower layers above the system's, the upper layer in
//! the run directory. The kernel stacks the layers, so no file of a
//! package is ever copied into a merged view (where a link already there
//! would lead the copy out). The sandbox dies with preflight, and with it
//! every build and mount; the run directory is removed at the end, or by
//! the next preflight. The other way, dkms's
//! `--dkmstree`/`--kernelsourcedir` on a scratch copy, copies whole
//! headers trees and has to rewrite absolute includes such as the flavour
//! Makefile's `include /usr/src/linux-headers-…-common/Makefile`.
//!
//! The steps, each in its file: [`session`] (one preflight at a time, its
//! run directory), [`deb`] (reading the packages), [`download`] (without
//! DEB files: what apt would install), [`plan_for`] here (which pairs, against
//! which packages), [`overlay`] (which directories the build sees through an
//! overlay), [`test_build`] (the builds in the [`sandbox`], their logs, a
//! good build kept for after dpkg), [`blocked`] (a failure that stopped
//! apt, kept as a state until it ends).

pub mod blocked;
mod deb;
mod download;
mod overlay;
pub mod sandbox;
mod session;
mod test_build;

use std::path::PathBuf;

use debversion::Version;

use crate::change::Change;
use crate::config::Config;
use crate::inventory::Inventory;
use crate::kernel::KernelRelease;
use crate::name::PackageName;
use crate::pair::PairId;
use crate::plan::{self, Cause, Plan, Rebuild};
use crate::root::Root;
use crate::Error;

pub use crate::tools::{APT_GET, DPKG_DEB};
pub use deb::{kernel_of, read_deb, with_tar_stream, UNPACK_BUDGET};
pub use download::{apt_download, apt_upgrade_candidates};
pub use session::Session;
pub use test_build::run;

/// One package file of the upgrade.
#[derive(Debug, Clone)]
pub struct Deb {
    pub path: PathBuf,
    pub package: PackageName,
    pub version: Version,
    pub architecture: Option<String>,
    /// The first alternative of each `Depends` entry, by name.
    pub depends: Vec<PackageName>,
    /// Its paths (`/usr/…`), once unpacked.
    pub files: Vec<PathBuf>,
}

/// Pairs of new kernels that cannot be test-built: each skipped, with
/// [`Skip::NewKernel`].
pub type NotTested = Vec<Tested>;

/// One pair's test build: which, how long, what it showed.
#[derive(Debug, Clone, PartialEq)]
pub struct Tested {
    pub rebuild: Rebuild,
    pub seconds: f64,
    pub outcome: Outcome,
}

/// What a test build showed (rendered by `report::tested_line` and
/// `report::json::preflight`).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Built,
    Failed {
        reason: BuildFailure,
        /// In-root path of the kept make.log.
        make_log: Option<PathBuf>,
    },
    Skipped(Skip),
}

/// Why a test build failed.
#[derive(Debug, Clone, PartialEq)]
pub enum BuildFailure {
    /// `dkms build` ended with this status.
    Exit(i32),
    /// It ran longer than `build_timeout` and was killed.
    TimedOut,
    /// It could not be started.
    Spawn(String),
}

/// Why a pair was not test-built.
#[derive(Debug, Clone, PartialEq)]
pub enum Skip {
    /// dkms said BUILD_EXCLUSIVE excludes the kernel.
    Excluded,
    /// dkms found no headers for the kernel.
    NoHeaders,
    /// A kernel the upgrade installs new whose headers package depends on
    /// these packages, neither given nor installed.
    NewKernel { missing: Vec<PackageName> },
}

impl Skip {
    /// The word of preflight's JSON `skipped` field.
    pub fn as_str(&self) -> &'static str {
        match self {
            Skip::Excluded => "excluded",
            Skip::NoHeaders => "no-headers",
            Skip::NewKernel { .. } => "new-kernel",
        }
    }
}

/// What preflight is to do for a set of packages.
pub struct Planned {
    pub plan: Plan,
    pub inventory: Inventory,
    /// Pairs of new kernels that cannot be test-built, with why.
    pub not_tested: NotTested,
    /// The kernels the packages install new.
    pub new_kernels: Vec<KernelRelease>,
}

/// The plan for installing `debs` (unpacked: their paths tell which of them
/// brings a new kernel) on this root: the planner's own answer for these
/// packages replacing what is installed.
pub fn plan_for(root: &Root, debs: &[Deb], cfg: &Config) -> Result<Planned, Error> {
    let planned = |old: &dyn Fn(&Deb) -> Option<Version>| -> Vec<Change> {
        debs.iter()
            .map(|d| {
                Change::planned(
                    d.package.clone(),
                    d.architecture.clone(),
                    old(d),
                    Some(d.version.clone()),
                )
            })
            .collect()
    };
    let inv = Inventory::for_changes(root, &planned(&|_| None))?;
    let changes = planned(&|d| inv.installed_version(&d.package).map(|i| i.version.clone()));
    let mut p = plan::plan(&changes, &inv, cfg);
    p.warnings.splice(
        0..0,
        inv.warnings.iter().cloned().map(plan::Warning::Machine),
    );
    let (not_tested, new) = new_kernels(root, debs, &inv, &mut p)?;
    Ok(Planned {
        plan: p,
        inventory: inv,
        not_tested,
        new_kernels: new,
    })
}

/// A kernel the upgrade installs new (a package ships its build link and no
/// such kernel has headers yet): each installed module is test-built for
/// it too, when everything that package depends on is among the `.deb`s
/// or installed; otherwise it is reported, with the reason.
fn new_kernels(
    root: &Root,
    debs: &[Deb],
    inv: &Inventory,
    p: &mut Plan,
) -> Result<(NotTested, Vec<KernelRelease>), Error> {
    let mut new = Vec::new();
    let mut skipped = Vec::new();
    let mut modules: Vec<&crate::dkms::Pair> = Vec::new();
    for pair in inv.pairs.iter().filter(|x| x.installed) {
        if !modules
            .iter()
            .any(|m| m.id.module == pair.id.module && m.id.version == pair.id.version)
        {
            modules.push(pair);
        }
    }
    for d in debs {
        let Some(k) = kernel_of(d) else {
            continue;
        };
        if inv
            .kernel(&k)
            .is_some_and(crate::kernel::Kernel::has_headers)
        {
            continue;
        }
        let given = |n: &PackageName| debs.iter().any(|x| &x.package == n);
        let installed: Vec<String> =
            crate::dpkg::read_status(root, |n| d.depends.iter().any(|x| x.as_str() == n))?
                .into_iter()
                .filter(|i| i.has_files())
                .map(|i| i.name.to_string())
                .collect();
        let missing: Vec<&PackageName> = d
            .depends
            .iter()
            .filter(|n| !given(n) && !installed.iter().any(|i| i == n.as_str()))
            .collect();
        for m in &modules {
            let r = Rebuild {
                pair: crate::dkms::Pair {
                    id: PairId {
                        kernel: k.clone(),
                        ..m.id.clone()
                    },
                    installed: false,
                    built: None,
                    built_names: Vec::new(),
                },
                because: vec![Cause {
                    package: d.package.clone(),
                    role: crate::kernel::Role::Headers,
                    old: None,
                    new: Some(d.version.clone()),
                    unpacked: None,
                }],
            };
            if missing.is_empty() {
                if !new.contains(&k) {
                    new.push(k.clone());
                }
                p.rebuilds.push(r);
            } else {
                skipped.push(Tested {
                    rebuild: r,
                    seconds: 0.0,
                    outcome: Outcome::Skipped(Skip::NewKernel {
                        missing: missing.iter().map(|n| (*n).clone()).collect(),
                    }),
                });
            }
        }
    }
    Ok((skipped, new))
}
