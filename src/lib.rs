//! dkms-hook: rebuild DKMS modules whose kernel build tree changed in place
//! (Debian bug #1040401). The design, the contracts and the checked facts
//! about dkms, apt and dpkg are in `docs/design.md`.
//!
//! The data flow, in order, with the module of each step:
//!
//! 1. **What changed**: dpkg.log from the cursor or replayed logs
//!    ([`dpkg_log`], folded per package by [`change`]), or what apt is about
//!    to do ([`apt`]: the JSON hook and Pre-Install-Pkgs) → [`change::Change`].
//! 2. **The machine**: kernels and their build trees ([`kernel`]), input
//!    packages from dpkg's file lists ([`dpkg`]), dkms pairs ([`dkms`]) and what
//!    their dkms.conf lets dkms build ([`dkms_conf`]), all
//!    read through one [`root::Root`] → [`inventory::Inventory`].
//! 3. **The decision**: [`plan::plan`], a pure function → [`plan::Plan`]
//!    (rebuilds, skips, warnings); [`plan::assess`] for `status`, with
//!    [`verify::assess`] adding what the installed module files say
//!    (`broken`, signatures, Secure Boot).
//! 4. **The queue**: [`intake`] persists the plan's rebuilds as
//!    [`state::QueuedPair`]s before the dpkg.log cursor moves ([`state`],
//!    through the no-follow [`state_dir`]).
//! 5. **The work**: [`rebuild::Executor`] runs the safe rebuild per pair
//!    (checked by [`verify`]) → [`rebuild::PairResult`], then settles each
//!    kernel once (depmod, initramfs) → [`rebuild::Settled`].
//! 6. **What the admin sees**: [`report`] renders lines and JSON; [`cli`] is
//!    the one place that prints and chooses exit statuses; [`metrics`] keeps
//!    the node_exporter textfile and the login notice's findings.
//!
//! Names read anywhere become the checked types of [`name`] first; a pair
//! of module version and kernel is one [`pair::PairId`], with its paths.
//!
//! ## Layers
//!
//! A module imports only modules of lower layers, so that each layer can be
//! read and changed knowing only those below it; the integration test
//! `architecture::imports_follow_the_layers` holds the same table and fails
//! on an import that runs up or sideways:
//!
//! - 0: `root`, `name`, `tools`, `file_tree` — paths inside the root, checked names, external programs, hostile trees handled without following links
//! - 1: `state_dir`, `dpkg`, `time_zone` — the no-follow state directory; dpkg's database; the local time zone
//! - 2: `change`, `pair` — what happened to a package; one pair's identity and its paths
//! - 3: `dpkg_log`, `kernel` — dpkg.log; kernels and their build trees
//! - 4: `dkms`, `config` — the dkms tree; the configuration
//! - 5: `model`, `dkms_conf` — the shared vocabulary; dkms.conf as dkms reads it
//! - 6: `inventory`, `state` — the machine read once; dkms-hook's own state
//! - 7: `plan` — the decision
//! - 8: `verify` — what installed module files say
//! - 9: `rebuild` — the safe rebuild
//! - 10: `intake`, `preflight`, `guard`, `rollback` — into the queue; test builds before dpkg; modules kept through dkms's kernel_preinst; previous builds put back and held
//! - 11: `report`, `metrics` — lines and JSON; the textfile and findings
//! - 12: `apt`, `man_page`, `followup` — apt's hook protocols; generated documents; a failed rebuild mailed and retried on a schedule
//! - 13: `cli` — the one place that prints and chooses exit statuses

use std::fmt;
use std::path::{Path, PathBuf};

pub mod apt;
pub mod change;
pub mod cli;
pub mod config;
pub mod dkms;
pub mod dkms_conf;
pub mod dpkg;
pub mod dpkg_log;
pub mod file_tree;
pub mod followup;
pub mod guard;
pub mod intake;
pub mod inventory;
pub mod kernel;
pub mod man_page;
pub mod metrics;
pub mod model;
pub mod name;
pub mod pair;
pub mod plan;
pub mod preflight;
pub mod rebuild;
pub mod report;
pub mod rollback;
pub mod root;
pub mod state;
pub mod state_dir;
pub mod time_zone;
pub mod tools;
pub mod verify;

/// The library's errors. Each renders as one line suitable after
/// `dkms-hook: `.
#[derive(Debug)]
pub enum Error {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A log that cannot be read as one.
    Log {
        path: Option<PathBuf>,
        line: Option<u64>,
        reason: String,
    },
    InvalidName {
        kind: &'static str,
        name: String,
    },
    Config {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// A state file that cannot be parsed: set aside, the run goes on.
    StateCorrupt {
        path: PathBuf,
        msg: String,
    },
    /// A state file written by a newer dkms-hook: left alone, the run stops.
    StateTooNew {
        path: PathBuf,
        version: u64,
    },
    /// A file refused before reading: not a regular file, or too large for
    /// its kind (a `.list` that is `/dev/zero`, a FIFO as the config).
    Unreadable {
        path: PathBuf,
        why: String,
    },
    /// The state directory cannot be trusted (link, owner, mode).
    UnsafeStateDir {
        path: PathBuf,
        why: String,
    },
    /// Something dkms-hook will not do, with the reason.
    Refused(String),
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Attach the file name to a log error raised by a reader.
    pub fn for_file(self, p: &Path) -> Error {
        match self {
            Error::Log {
                path: None,
                line,
                reason,
            } => Error::Log {
                path: Some(p.to_path_buf()),
                line,
                reason,
            },
            e => e,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Log { path, line, reason } => {
                let p = path
                    .as_deref()
                    .map_or("<input>".into(), |p| p.display().to_string());
                match line {
                    Some(l) => write!(f, "{p}:{l}: {reason}"),
                    None => write!(f, "{p}: {reason}"),
                }
            }
            Error::InvalidName { kind, name } => write!(f, "invalid {kind} {name:?}"),
            Error::Config { path, line, msg } => write!(f, "{}:{line}: {msg}", path.display()),
            Error::StateCorrupt { path, msg } => write!(f, "{}: corrupt: {msg}", path.display()),
            Error::StateTooNew { path, version } => write!(
                f,
                "{}: written by a newer dkms-hook (version {version}); left alone",
                path.display()
            ),
            Error::Unreadable { path, why } => write!(f, "{}: refused: {why}", path.display()),
            Error::UnsafeStateDir { path, why } => {
                write!(f, "{}: not used as state directory: {why}", path.display())
            }
            Error::Refused(msg) => f.write_str(msg),
        }
    }
}

// No `source()`: every variant already prints its cause, and anyhow's `{:#}`
// would print it a second time.
impl std::error::Error for Error {}
