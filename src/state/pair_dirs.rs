//! The per-pair directories of the state directory, `TOP/M/V/K/ARCH`:
//! the safe rebuild's `backups/`, the previous builds of `previous/` and the
//! guard's `guarded/`. Each level is opened as a real directory (no link
//! followed) and each name is checked when read back.

use super::{State, BACKUPS};
use crate::name::{DkmsArch, KernelRelease, ModuleName, ModuleVersion};
use crate::pair::PairId;
use crate::state_dir::Dir;
use crate::Error;

impl State {
    /// The backup directory of one pair, `backups/M/V/K/ARCH`, each level
    /// checked to be a real directory (created when `create`).
    pub fn backup(&self, p: &PairId, create: bool) -> Result<Option<Dir>, Error> {
        self.pair_dir(BACKUPS, p, create)
    }

    /// Remove a pair's backup and the then empty `M/V/K` directories above it.
    pub fn remove_backup(&self, p: &PairId) -> Result<(), Error> {
        self.remove_pair_dir(BACKUPS, p)
    }

    /// Move `FROM/M/V/K/ARCH` to `TO/M/V/K/ARCH` in one rename (the target
    /// must not exist), and remove the `M/V/K` levels it leaves empty.
    pub fn move_pair_dir(&self, from: &str, to: &str, p: &PairId) -> Result<(), Error> {
        let chain = p.backup_chain();
        let Some(src) = self.pair_dir_parent(from, p, false)? else {
            return Ok(());
        };
        let dst = self
            .pair_dir_parent(to, p, true)?
            .ok_or_else(|| Error::Refused(format!("{to}/ could not be made")))?;
        src.rename_into(chain[3], &dst, chain[3])?;
        self.remove_pair_dir(from, p)
    }

    /// Every `TOP/M/V/K/ARCH` directory whose four names check, with the
    /// pair it names (`backups/`, `previous/`, `guarded/`).
    pub fn pair_dirs(&self, top: &str) -> Result<Vec<(PairId, Dir)>, Error> {
        let mut out = Vec::new();
        let Some(top) = self.open()?.existing_subdir(top) else {
            return Ok(out);
        };
        let sub = |d: &Dir| -> Vec<(String, Dir)> {
            d.names()
                .into_iter()
                .filter_map(|n| d.existing_subdir(&n).map(|s| (n, s)))
                .collect()
        };
        for (m, md) in sub(&top) {
            let Ok(module) = ModuleName::new(&m) else {
                continue;
            };
            for (v, vd) in sub(&md) {
                let Ok(version) = ModuleVersion::new(&v) else {
                    continue;
                };
                for (k, kd) in sub(&vd) {
                    let Ok(kernel) = KernelRelease::new(&k) else {
                        continue;
                    };
                    for (a, ad) in sub(&kd) {
                        let Ok(arch) = DkmsArch::new(&a) else {
                            continue;
                        };
                        let id = PairId {
                            module: module.clone(),
                            version: version.clone(),
                            kernel: kernel.clone(),
                            arch,
                        };
                        out.push((id, ad));
                    }
                }
            }
        }
        Ok(out)
    }

    /// `TOP/M/V/K`: the directory that holds a pair's `ARCH`.
    fn pair_dir_parent(&self, top: &str, p: &PairId, create: bool) -> Result<Option<Dir>, Error> {
        let mut dir = self.open()?;
        let chain = p.backup_chain();
        for name in std::iter::once(top).chain(chain[..3].iter().copied()) {
            dir = if create {
                dir.subdir(name)?
            } else {
                match dir.existing_subdir(name) {
                    Some(d) => d,
                    None => return Ok(None),
                }
            };
        }
        Ok(Some(dir))
    }

    /// `TOP/M/V/K/ARCH` of one pair, each level checked to be a real
    /// directory (created when `create`): the backups, the guard's copies.
    pub fn pair_dir(&self, top: &str, p: &PairId, create: bool) -> Result<Option<Dir>, Error> {
        let Some(parent) = self.pair_dir_parent(top, p, create)? else {
            return Ok(None);
        };
        let arch = p.backup_chain()[3];
        Ok(if create {
            Some(parent.subdir(arch)?)
        } else {
            parent.existing_subdir(arch)
        })
    }

    /// Remove `TOP/M/V/K/ARCH` and the then empty `M/V/K` directories above
    /// it (`TOP` stays).
    pub fn remove_pair_dir(&self, top: &str, p: &PairId) -> Result<(), Error> {
        let Some(top) = self.open()?.existing_subdir(top) else {
            return Ok(());
        };
        let chain = p.backup_chain();
        let mut dirs = vec![top];
        for name in &chain[..3] {
            match dirs.last().and_then(|d| d.existing_subdir(name)) {
                Some(d) => dirs.push(d),
                None => return Ok(()),
            }
        }
        // dirs: TOP, M, V, K; remove ARCH, then each emptied level.
        let mut name = chain[3];
        for (i, d) in dirs.iter().enumerate().rev() {
            if i == 3 {
                d.remove_tree(name)?;
            } else if !d.remove_empty(name) {
                break;
            }
            name = if i > 0 { chain[i - 1] } else { break };
        }
        Ok(())
    }
}
