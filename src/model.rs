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

/// What `status` says of one kernel × module. A new state goes into
/// [`PairState::ALL`] too (a test compares it with this list), and so into
/// the man page and the textfile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Put back to its previous build by `dkms-hook rollback` and left
    /// alone until `dkms-hook unhold` (set from the [`Hold`]s).
    Held,
}

impl PairState {
    /// Every state, in the order of the enum.
    pub const ALL: [PairState; 9] = [
        PairState::Fresh,
        PairState::Stale,
        PairState::Failed,
        PairState::Missing,
        PairState::NoHeaders,
        PairState::Excluded,
        PairState::Undecided,
        PairState::Broken,
        PairState::Held,
    ];

    /// The state's name in `status`, its JSON and the textfile.
    pub fn name(self) -> &'static str {
        match self {
            PairState::Fresh => "fresh",
            PairState::Stale => "stale",
            PairState::Failed => "failed",
            PairState::Missing => "missing",
            PairState::NoHeaders => "no-headers",
            PairState::Excluded => "excluded",
            PairState::Undecided => "undecided",
            PairState::Broken => "broken",
            PairState::Held => "held",
        }
    }

    /// Whether a pair in this state needs the admin (`status` exits 1):
    /// not when dkms is doing what it was told, cannot be judged here, or
    /// the admin chose the build (a hold).
    pub fn needs_attention(self) -> bool {
        match self {
            PairState::Fresh | PairState::Excluded | PairState::Undecided | PairState::Held => {
                false
            }
            PairState::Stale
            | PairState::Failed
            | PairState::Missing
            | PairState::NoHeaders
            | PairState::Broken => true,
        }
    }
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
    /// When the previous build kept for `dkms-hook rollback` was built,
    /// when one is kept.
    pub previous: Option<SystemTime>,
    /// The pair's hold, when it is held.
    pub hold: Option<Hold>,
}

/// A pair that `dkms-hook rollback` put back to its previous build: sync,
/// retry and the hooks leave it alone until `dkms-hook unhold` (or until
/// another version of the module is installed for the kernel, which is
/// another pair).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    #[serde(flatten)]
    pub id: PairId,
    /// Why, in the admin's words or the rollback's: one line, at most
    /// [`Hold::MAX_REASON`] bytes.
    pub reason: String,
    /// Seconds since the epoch when it was held.
    pub since: u64,
    /// The rollback was cut short: running it again finishes it.
    #[serde(default)]
    pub unfinished: bool,
}

impl Hold {
    /// The longest reason kept.
    pub const MAX_REASON: usize = 200;

    /// `reason` as a hold keeps it: control characters as spaces, cut at
    /// [`Hold::MAX_REASON`] bytes on a character boundary.
    pub fn clean_reason(reason: &str) -> String {
        let mut out: String = reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let mut end = out.len().min(Hold::MAX_REASON);
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.trim().to_string()
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `ALL` lists every state, in order, under the name serde gives it:
    /// serde's derive knows every variant, and its error for an unknown
    /// one names them all.
    #[test]
    fn all_is_every_state() {
        let e = serde_json::from_str::<PairState>("\"?\"")
            .unwrap_err()
            .to_string();
        let listed: Vec<String> = PairState::ALL
            .iter()
            .map(|s| format!("`{}`", s.name()))
            .collect();
        // serde_json adds where in the input it stopped.
        assert_eq!(
            e.split(" at line ").next().unwrap(),
            format!("unknown variant `?`, expected one of {}", listed.join(", "))
        );
        for s in PairState::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
        }
    }
}
