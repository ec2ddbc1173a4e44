//! The vocabulary shared by the layers above: why a pair is stale
//! ([`Cause`]), what `status` says of a kernel × module ([`PairState`],
//! [`Assessment`]) and what its installed module file says ([`Check`],
//! [`ModuleFacts`]). Plain data, no I/O: storage, planning, verification and
//! reports all speak it without importing each other.

use std::path::PathBuf;
use std::time::SystemTime;

use debversion::Version;
use serde::{Deserialize, Serialize};

use crate::dkms::Pair;
use crate::dpkg::PackageName;
use crate::kernel::{KernelRelease, Role};
use crate::pair::PairId;

/// A change that makes a pair stale. Kept as it is in the queue and the
/// failure list; `report` renders it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    pub package: PackageName,
    pub role: Role,
    pub old: Option<Version>,
    pub new: Option<Version>,
    /// When the change reached the disk; `None` for a change apt plans.
    pub unpacked: Option<SystemTime>,
}

/// What `status` says of one kernel × module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairState {
    Fresh,
    Stale,
    Failed,
    /// The module is installed for other kernels but not for this one.
    Missing,
    NoHeaders,
    /// The module's `BUILD_EXCLUSIVE_*` settings keep dkms from building it
    /// for this kernel (never a finding: dkms is doing what it was told).
    Excluded,
    /// Not built, and whether dkms would build it cannot be told here: its
    /// dkms.conf is a script under `--root`, or its evaluation failed.
    Undecided,
    /// The installed module's vermagic names another kernel: it will not
    /// load (set by [`crate::verify::assess`]).
    Broken,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// The pair judged; for one dkms has not built (`missing`,
    /// `excluded`…), the architecture is that of the module's other pairs.
    pub id: PairId,
    pub state: PairState,
    pub why: String,
    /// The pair itself, when it exists.
    pub pair: Option<Pair>,
    pub because: Vec<Cause>,
    /// What its installed module file says ([`crate::verify::assess`]).
    pub check: Option<Check>,
}

/// The verdict on one installed module file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Check {
    /// In-root path of the file judged.
    pub file: PathBuf,
    pub facts: ModuleFacts,
    /// `modinfo -F signer`, where modinfo could tell.
    pub signer: Option<String>,
    /// Whether dkms's key is enrolled, for a module signed (with it, as
    /// far as can be told); `None` for others or when it cannot be told.
    pub key_enrolled: Option<bool>,
    /// Why it will not load after the reboot, when it will not.
    pub will_not_load: Option<String>,
    /// What to do about dkms's key, when it is not enrolled.
    pub key_warning: Option<String>,
    /// Why the file was not read (over a cap, corrupt): nothing is known
    /// of it.
    pub refused: Option<String>,
}

impl Check {
    /// `Some(false)` when the vermagic names another kernel.
    pub fn for_kernel(&self, kernel: &KernelRelease) -> Option<bool> {
        self.facts.release().map(|r| r == kernel.as_str())
    }

    /// `None` when the file is no module that could be read.
    pub fn signed(&self) -> Option<bool> {
        self.facts.vermagic.is_some().then_some(self.facts.signed)
    }
}

/// What a module file says of itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModuleFacts {
    /// The `vermagic=` of its `.modinfo`; `None` when there is none (not a
    /// module).
    pub vermagic: Option<String>,
    /// It ends in the signature trailer.
    pub signed: bool,
}

impl ModuleFacts {
    /// The kernel release the module was built for.
    pub fn release(&self) -> Option<&str> {
        self.vermagic.as_deref()?.split_whitespace().next()
    }
}
