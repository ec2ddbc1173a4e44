//! The session: one preflight at a time (`preflight/lock`), in a private
//! run directory made fresh and removed at the end, and the logs kept from
//! it beside the state.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::sandbox;
use crate::file_tree;
use crate::state::State;
use crate::Error;

/// One preflight's private run directory,
/// `/var/lib/dkms-hook/preflight/run-PID-N` (mode 0700, made fresh with
/// mkdir, never reused), held under `preflight/lock` and removed on drop.
/// It holds the downloads, the mount point of the sandbox's tmpfs (the
/// packages' trees, the overlays' upper layers) and what the sandbox
/// reports.
pub struct Session {
    preflight: crate::state_dir::Dir,
    fd: OwnedFd,
    name: String,
    path: PathBuf,
    _lock: std::fs::File,
}

impl Session {
    /// Take `preflight/lock` (one preflight at a time), remove what a
    /// killed one left, and make a fresh run directory.
    pub fn begin(state: &State) -> Result<Session, Error> {
        let preflight = state.open()?.subdir("preflight")?;
        let lock = preflight.create("lock", true)?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::io(&preflight.path().join("lock"), e.into()))?;
        let top =
            file_tree::open_dir(preflight.path()).map_err(|e| Error::io(preflight.path(), e))?;
        for old in preflight
            .names()
            .into_iter()
            .filter(|n| n.starts_with("run-"))
        {
            file_tree::remove_tree(&top, OsStr::new(&old))
                .map_err(|e| Error::io(&preflight.path().join(&old), e))?;
        }
        let mut n = 0u32;
        let (name, fd) = loop {
            let name = format!("run-{}-{n}", std::process::id());
            match file_tree::make_dir(&top, OsStr::new(&name), 0o700) {
                Ok(fd) => break (name, fd),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => return Err(Error::io(&preflight.path().join(&name), e)),
            }
        };
        for sub in ["logs", "kept", "tmp", "x"] {
            file_tree::make_dir(&fd, OsStr::new(sub), 0o700)
                .map_err(|e| Error::io(&preflight.path().join(&name).join(sub), e))?;
        }
        Ok(Session {
            path: preflight.path().join(&name),
            preflight,
            fd,
            name,
            _lock: lock,
        })
    }

    /// Host path of the run directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh private directory for `apt-get download`.
    pub fn download_dir(&self) -> Result<PathBuf, Error> {
        file_tree::make_dir(&self.fd, OsStr::new("dl"), 0o700)
            .map_err(|e| Error::io(&self.path.join("dl"), e))?;
        Ok(self.path.join("dl"))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Ok(top) = file_tree::open_dir(self.preflight.path()) {
            if let Err(e) = file_tree::remove_tree(&top, OsStr::new(&self.name)) {
                log::warn!("{}: {e}", self.path.display());
            }
        }
    }
}

impl Session {
    /// Copy `logs/NAME` of the run directory to `preflight/AS` (at most
    /// [`sandbox::CAP_LOG`]); whether there was one.
    pub(super) fn keep_log(&self, name: &str, as_name: &str) -> bool {
        let Some(logs) = file_tree::open_beneath(&self.fd, Path::new("logs")) else {
            return false;
        };
        let Ok(fd) = rustix::fs::openat(
            &logs,
            name,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::NONBLOCK
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) else {
            return false;
        };
        if !rustix::fs::fstat(&fd).is_ok_and(|st| {
            rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
        }) {
            return false;
        }
        let mut r = std::io::Read::take(std::fs::File::from(fd), sandbox::CAP_LOG);
        // A log to read, not state: no fsync (each costs a journal commit).
        match self.preflight.create(as_name, false).and_then(|mut f| {
            std::io::copy(&mut r, &mut f).map_err(|e| Error::io(Path::new(as_name), e))
        }) {
            Ok(_) => true,
            Err(e) => {
                log::warn!("{e}");
                false
            }
        }
    }
}
