//! The backup that makes a rebuild safe: the pair's dkms directory and
//! every installed copy of its modules, copied with modes, links and times
//! intact, marked complete last; and the restore that puts them back,
//! byte-identical.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::{Executor, Ran, COMPLETE, CP};
use crate::dkms::{built_names, walk};
use crate::state::QueuedPair;
use crate::Error;

impl Executor<'_> {
    /// Copy the dkms directory and every installed copy into the pair's
    /// backup, then mark it complete. Returns the backup's host path.
    pub(super) fn back_up(&self, p: &QueuedPair, dir: &Path) -> Result<PathBuf, Error> {
        self.state.remove_backup(p)?;
        let b = self
            .state
            .backup(p, true)?
            .ok_or_else(|| Error::Refused("backup directory missing".into()))?;
        self.copy(dir, &b.path().join("tree"))?;
        let saved_installed = b.path().join("installed");
        for f in self.installed_modules(p, &built_names(dir)) {
            let rel = f.strip_prefix(self.state.root().dir()).unwrap_or(&f);
            self.copy(&f, &saved_installed.join(rel))?;
        }
        b.write_atomic(COMPLETE, b"")?;
        Ok(b.path().to_path_buf())
    }

    /// Put the backup back: the dkms directory (so `dkms status` says
    /// installed again) and every installed copy that changed or vanished.
    /// Every step's error is returned: a restore that did not happen is
    /// never reported as one.
    pub(super) fn restore(&self, backup: &Path, dir: &Path, p: &QueuedPair) -> Result<(), Error> {
        let saved_tree = backup.join("tree");
        if saved_tree.is_dir() {
            remove_tree(dir)?;
            self.copy(&saved_tree, dir)?;
        }
        let saved_installed = backup.join("installed");
        let mut result = Ok(());
        walk(&saved_installed, &mut |f| {
            if result.is_err() {
                return;
            }
            let rel = f.strip_prefix(&saved_installed).unwrap_or(f);
            let live = match self.state.root().inside(Path::new("/").join(rel)) {
                Ok(l) => l,
                Err(e) => {
                    result = Err(Error::io(rel, e));
                    return;
                }
            };
            if std::fs::read(&live).ok() != std::fs::read(f).ok() {
                log::debug!("restoring {}", live.display());
                result = self.copy(f, &live);
            }
        });
        result?;
        // A `kernel-K-ARCH` link lost by dkms would hide the pair.
        let link = dir
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .map(|m| m.join(format!("kernel-{}-{}", p.kernel, p.arch)));
        if let Some(link) = link {
            if std::fs::symlink_metadata(&link).is_err() {
                let target = format!("{}/{}/{}", p.version, p.kernel, p.arch);
                std::os::unix::fs::symlink(target, &link).map_err(|e| Error::io(&link, e))?;
            }
        }
        Ok(())
    }

    /// `cp -a -T FROM TO`, under the time limit, its error in one line.
    pub(crate) fn copy(&self, from: &Path, to: &Path) -> Result<(), Error> {
        // dkms 3.0.10's `build --force` removes /var/lib/dkms/M/V/K as well
        // as K/ARCH: a restore must recreate the parents (found by the
        // real-system tests).
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let out = self.state.logs().and_then(|l| l.create("cp.log", false));
        let args = [
            OsStr::new("-a"),
            OsStr::new("-T"),
            from.as_os_str(),
            to.as_os_str(),
        ];
        match self.run(OsStr::new(CP), &args, out.ok(), None) {
            Ran::Exit(0) => Ok(()),
            Ran::Exit(s) => {
                let msg = self
                    .state
                    .logs()
                    .and_then(|l| l.read("cp.log", 4096))
                    .ok()
                    .flatten()
                    .map(|t| String::from_utf8_lossy(&t).trim().to_string())
                    .filter(|t| !t.is_empty())
                    .unwrap_or_else(|| format!("cp exited {s}"));
                Err(Error::io(to, std::io::Error::other(msg)))
            }
            Ran::TimedOut => Err(Error::io(to, std::io::Error::other("cp timed out"))),
            Ran::SpawnFailed(e) => Err(Error::io(to, std::io::Error::other(e))),
        }
    }
}

fn remove_tree(p: &Path) -> Result<(), Error> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(p, e)),
    }
}
