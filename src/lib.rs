//! dkms-hook: rebuild DKMS modules whose kernel build tree changed in place
//! (Debian bug #1040401).
//!
//! Data flow: [`dpkg_log`] (or apt's hooks) yields [`change::Change`]s;
//! [`inventory::Inventory`] reads kernels, build trees, input packages and dkms
//! pairs through one [`root::Root`]; [`plan::plan`] decides, as a pure
//! function; [`report`] shows the result.

use std::fmt;
use std::path::{Path, PathBuf};

pub mod apt_hook;
pub mod apt_run;
pub mod change;
pub mod cli;
pub mod config;
pub mod dkms;
pub mod dpkg;
pub mod dpkg_log;
pub mod hook;
pub mod inventory;
pub mod kernel;
pub mod plan;
pub mod rebuild;
pub mod report;
pub mod root;
pub mod state;

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
    /// A state file that cannot be used (corrupt, or from a newer version).
    State {
        path: PathBuf,
        msg: String,
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
            Error::State { path, msg } => write!(f, "{}: {msg}", path.display()),
            Error::Refused(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
