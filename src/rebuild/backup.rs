//! The backup that makes a rebuild safe: the pair's dkms directory and
//! every installed copy of its modules, copied with modes, links and times
//! intact, marked complete last; and the restore that puts them back,
//! byte-identical.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{Executor, Ran, COMPLETE, CP, RESTORING};
use crate::dkms::{built_names, walk};
use crate::pair::PairId;
use crate::root::open_regular;
use crate::state::{QueuedPair, BACKUPS, PREVIOUS};
use crate::state_dir::Dir;
use crate::verify::module_file::CAP_MODULE;
use crate::Error;

/// Whether a backup (or a previous build) was marked complete: one cut
/// short is never put back.
pub fn is_complete(d: &Dir) -> bool {
    d.names().iter().any(|n| n == COMPLETE)
}

/// Refuse a module file larger than [`CAP_MODULE`] (a sparse 4 GiB `.ko`
/// must not cost a backup, a compare or 4 GiB of memory).
pub(super) fn within_cap(file: &Path) -> Result<(), Error> {
    let size = std::fs::symlink_metadata(file)
        .map_err(|e| Error::io(file, e))?
        .len();
    if size > CAP_MODULE {
        return Err(Error::Unreadable {
            path: file.to_path_buf(),
            why: format!(
                "a module file of {} MiB, larger than {} MiB: not handled",
                size >> 20,
                CAP_MODULE >> 20
            ),
        });
    }
    Ok(())
}

/// Whether two files hold the same bytes, compared as streams (64 KiB at a
/// time) without following links; files of other sizes differ unread, a
/// file over [`CAP_MODULE`] is an error.
pub fn same_bytes(a: &Path, b: &Path) -> Result<bool, Error> {
    let (fa, fb) = (open_regular(a)?, open_regular(b)?);
    let size =
        |f: &std::fs::File, p: &Path| f.metadata().map(|m| m.len()).map_err(|e| Error::io(p, e));
    if size(&fa, a)? != size(&fb, b)? {
        return Ok(false);
    }
    within_cap(a)?;
    let (mut ra, mut rb) = (fa.take(CAP_MODULE), fb.take(CAP_MODULE));
    let (mut ba, mut bb) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        let n = read_full(&mut ra, &mut ba).map_err(|e| Error::io(a, e))?;
        let m = read_full(&mut rb, &mut bb).map_err(|e| Error::io(b, e))?;
        if ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Fill `buf` as far as the reader goes; fewer bytes only at its end.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Executor<'_> {
    /// The installed copies of a pair's built modules, once every one of
    /// them and every built file is within [`CAP_MODULE`].
    fn installed_within_cap(&self, p: &QueuedPair, dir: &Path) -> Result<Vec<PathBuf>, Error> {
        let names = built_names(dir);
        let installed = self.installed_modules(p, &names);
        for f in names
            .iter()
            .map(|n| dir.join("module").join(n))
            .chain(installed.iter().cloned())
        {
            within_cap(&f)?;
        }
        Ok(installed)
    }

    /// Copy the dkms directory and every installed copy into the pair's
    /// backup, then mark it complete. Returns the backup's host path.
    pub(super) fn back_up(&self, p: &QueuedPair, dir: &Path) -> Result<PathBuf, Error> {
        // Every module file to be saved is within the cap, or nothing is
        // touched (the build would replace what cannot be put back).
        let installed = self.installed_within_cap(p, dir)?;
        self.state.remove_backup(&p.id)?;
        let b = self
            .state
            .backup(&p.id, true)?
            .ok_or_else(|| Error::Refused("backup directory missing".into()))?;
        self.save_into(dir, &installed, &b)?;
        Ok(b.path().to_path_buf())
    }

    /// Copy the dkms directory `dir` and the `installed` copies into the
    /// empty directory `b`, marked complete last.
    fn save_into(&self, dir: &Path, installed: &[PathBuf], b: &Dir) -> Result<(), Error> {
        self.copy(dir, &b.path().join("tree"))?;
        let saved_installed = b.path().join("installed");
        for f in installed {
            let rel = f.strip_prefix(self.state.root().dir()).unwrap_or(f);
            self.copy(f, &saved_installed.join(rel))?;
        }
        b.write_atomic(COMPLETE, b"")
    }

    /// The backup of the safe rebuild for a pair that dkms itself is about
    /// to remove (`crate::guard`): its dkms directory and installed copies
    /// saved into the empty directory `into`, marked complete last, every
    /// module file within the cap or nothing saved.
    pub fn save_pair(&self, p: &QueuedPair, into: &Dir) -> Result<(), Error> {
        let dir = self.dkms_dir(p)?;
        let installed = self.installed_within_cap(p, &dir)?;
        self.save_into(&dir, &installed, into)
    }

    /// Put a backup made by [`Executor::save_pair`] back, as a failed
    /// rebuild's is put back: `Ok(false)` when it is not complete (cut
    /// short: nothing was taken from it).
    pub fn put_back(&self, p: &QueuedPair, saved: &Dir) -> Result<bool, Error> {
        if !saved.names().iter().any(|n| n == COMPLETE) {
            return Ok(false);
        }
        let dir = self.dkms_dir(p)?;
        // Not marked as a restore of the rebuild's own backup: the guard
        // keeps its record until the pair is back, and puts it back again
        // after a kill.
        self.restore_files(saved.path(), &dir, p)?;
        Ok(true)
    }

    /// After a successful rebuild (or rollback): the complete backup of the
    /// build it replaced becomes the pair's previous build
    /// (`previous/M/V/K/ARCH`, one generation: the older one goes first,
    /// its `complete` marker first), or is dropped when `keep_previous` is
    /// off. A run killed in between leaves the backup complete, and the
    /// next run comes here again. A backup cut short is dropped and the
    /// previous build left as it is.
    /// Whether the backup became the previous build. `keep`: the
    /// `keep_previous` setting, or true for a rollback (whose swapped-out
    /// build the admin may want back).
    pub fn keep_previous(&self, id: &PairId, keep: bool) -> Result<bool, Error> {
        if !self
            .state
            .backup(id, false)?
            .as_ref()
            .is_some_and(is_complete)
        {
            self.discard_backup(id)?;
            return Ok(false);
        }
        if let Some(old) = self.state.pair_dir(PREVIOUS, id, false)? {
            old.remove(COMPLETE);
        }
        self.state.remove_pair_dir(PREVIOUS, id)?;
        if !keep {
            self.discard_backup(id)?;
            return Ok(false);
        }
        self.state.move_pair_dir(BACKUPS, PREVIOUS, id)?;
        Ok(true)
    }

    /// Drop a pair's backup, its `complete` marker first: a run killed
    /// while removing it leaves an incomplete backup, which is never
    /// restored (the module it held is already back in place or replaced).
    pub(super) fn discard_backup(&self, id: &PairId) -> Result<(), Error> {
        if let Some(b) = self.state.backup(id, false)? {
            b.remove(COMPLETE);
        }
        self.state.remove_backup(id)
    }

    /// Put the backup back: the dkms directory (so `dkms status` says
    /// installed again) and every installed copy that changed or vanished.
    /// Every step's error is returned: a restore that did not happen is
    /// never reported as one.
    pub(super) fn restore(&self, backup: &Path, dir: &Path, p: &QueuedPair) -> Result<(), Error> {
        if let Some(b) = self.state.backup(&p.id, false)? {
            b.write_atomic(RESTORING, b"")?;
        }
        self.restore_files(backup, dir, p)
    }

    /// [`Executor::restore`]'s copying: the dkms directory, the installed
    /// copies, the link.
    fn restore_files(&self, backup: &Path, dir: &Path, p: &QueuedPair) -> Result<(), Error> {
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
            // Put back unless the live file is provably the same: missing,
            // changed or over the cap, it is replaced by the saved copy.
            if !same_bytes(&live, f).unwrap_or(false) {
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
            .zip(p.id.installed_link().file_name().map(ToOwned::to_owned))
            .map(|(m, name)| m.join(name));
        if let Some(link) = link {
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(p.id.link_target(), &link)
                    .map_err(|e| Error::io(&link, e))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_compared_as_streams_within_the_cap() {
        let d = tempfile::tempdir().unwrap();
        let p = |n: &str| d.path().join(n);
        let mut big = vec![7u8; 200 << 10];
        std::fs::write(p("a"), &big).unwrap();
        std::fs::write(p("b"), &big).unwrap();
        assert!(same_bytes(&p("a"), &p("b")).unwrap());
        *big.last_mut().unwrap() = 8;
        std::fs::write(p("b"), &big).unwrap();
        assert!(!same_bytes(&p("a"), &p("b")).unwrap(), "last byte differs");
        big.push(0);
        std::fs::write(p("b"), &big).unwrap();
        assert!(!same_bytes(&p("a"), &p("b")).unwrap(), "sizes differ");
        std::os::unix::fs::symlink(p("a"), p("link")).unwrap();
        assert!(
            same_bytes(&p("a"), &p("link")).is_err(),
            "a link is not followed"
        );
        for n in ["huge1", "huge2"] {
            std::fs::File::create(p(n))
                .unwrap()
                .set_len(CAP_MODULE + 1)
                .unwrap();
        }
        let e = same_bytes(&p("huge1"), &p("huge2")).unwrap_err();
        assert!(e.to_string().contains("larger than 256 MiB"), "{e}");
        assert!(within_cap(&p("huge1")).is_err());
        assert!(within_cap(&p("a")).is_ok());
    }
}
