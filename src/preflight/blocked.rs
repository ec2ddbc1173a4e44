//! Blocks: a test build that failed under `preflight = block` stopped apt,
//! and that is a state of its own (`/var/lib/dkms-hook/blocked.json`), not
//! only a line in apt's output: which pair failed against which package
//! versions, when, why, its kept make.log, and what the build read
//! ([`Inputs`], as a kept build records them). `status`, the login notice,
//! the textfile and the log say it while it stands.
//!
//! A block stands until the blocked version is installed after all (or a
//! newer one), the pair's kernel or module version is gone, or a later
//! preflight of that version builds the pair. While it stands, the same
//! versions with the same inputs are not test-built again: unattended
//! upgrades would otherwise download and build them every night to fail
//! the same way.
//!
//! Read back as untrusted input like every state file: through the
//! no-follow state directory, entries checked one by one (names through
//! their types, times bounded, the failure one short line, the make.log
//! only the pair's own kept log, the package lines bounded and parsed).

use serde::{Deserialize, Serialize};

use super::Deb;
use crate::inventory::Inventory;
use crate::model::{Cause, Hold};
use crate::name::PackageName;
use crate::pair::PairId;
use crate::plan::Rebuild;
use crate::rebuild::kept::{self, Inputs};
use crate::root::Root;
use crate::state::{self, State, STATE_DIR};
use crate::Error;

/// The state file, in the state directory.
pub const BLOCKED: &str = "blocked.json";
/// At most this many packages feed one kernel's tree in a record read back.
const MAX_PACKAGES: usize = 512;
/// The longest `name[:arch] version` line read back.
const MAX_PACKAGE_LINE: usize = 1024;
/// At most this many causes per record.
const MAX_CAUSES: usize = 64;

/// One pair whose failed test build stopped apt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocked {
    /// The pair, what its build read and when it failed (`time`).
    #[serde(flatten)]
    pub inputs: Inputs,
    /// The packages whose new versions it failed against.
    pub because: Vec<Cause>,
    /// Why, in words (`dkms build exited 10`): one line, at most 200 bytes.
    pub failure: String,
    /// In-root path of the kept make.log: only the pair's own.
    #[serde(default)]
    pub make_log: Option<String>,
}

impl Blocked {
    pub fn id(&self) -> &PairId {
        &self.inputs.id
    }

    /// The in-root path of the pair's make.log as preflight keeps it.
    pub fn kept_make_log(id: &PairId) -> String {
        format!("{STATE_DIR}/preflight/{}", id.kept_make_log_name())
    }
}

impl state::Entry for Blocked {
    fn times(&self) -> [u64; 1] {
        [self.inputs.time]
    }

    fn check(&self) -> Result<(), String> {
        if Hold::clean_reason(&self.failure) != self.failure {
            return Err("a failure that is not one line of at most 200 bytes".into());
        }
        if self
            .make_log
            .as_ref()
            .is_some_and(|m| *m != Blocked::kept_make_log(self.id()))
        {
            return Err("a make.log that is not the pair's own".into());
        }
        if self.because.is_empty() || self.because.len() > MAX_CAUSES {
            return Err("no causes, or too many".into());
        }
        if self.inputs.packages.len() > MAX_PACKAGES {
            return Err("too many packages".into());
        }
        for line in &self.inputs.packages {
            if line.len() > MAX_PACKAGE_LINE {
                return Err("a package line too long".into());
            }
            let (name, version) = line
                .split_once(' ')
                .ok_or("a package line without version")?;
            let name = name.split_once(':').map_or(name, |(n, _)| n);
            PackageName::new(name).map_err(|e| e.to_string())?;
            if !version.is_empty() && version.parse::<debversion::Version>().is_err() {
                return Err(format!("a package line with a bad version: {line:?}"));
            }
        }
        Ok(())
    }
}

/// Why a block ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// This version of a package it failed against (or a newer one) is
    /// installed.
    Installed {
        package: PackageName,
        version: String,
    },
    KernelGone,
    ModuleGone,
    /// A preflight built the pair against these versions (or newer).
    Built,
}

/// The records as stored, each checked; none when there is no file, it is
/// unusable (set aside as `blocked.json.corrupt`), or the state directory
/// cannot be read.
pub fn read(state: &State) -> Vec<Blocked> {
    read_checked(state).unwrap_or_else(|e| {
        log::warn!("{e}");
        Vec::new()
    })
}

/// [`read`], with the error of a file that cannot be read (a newer
/// version's, a link): what would write the file stops there.
fn read_checked(state: &State) -> Result<Vec<Blocked>, Error> {
    let path = state.dir().join(BLOCKED);
    Ok(state
        .read_list_value(BLOCKED)?
        .map(|v| state::valid_entries(&v, "blocked", &path))
        .unwrap_or_default())
}

fn save(state: &State, blocked: &[Blocked]) -> Result<(), Error> {
    #[derive(Serialize)]
    struct File<'a> {
        version: u32,
        blocked: &'a [Blocked],
    }
    if blocked.is_empty() {
        if state.dir().join(BLOCKED).exists() {
            state.open()?.remove(BLOCKED);
        }
        return Ok(());
    }
    state.write_json(
        BLOCKED,
        &File {
            version: state::STATE_VERSION,
            blocked,
        },
    )
}

/// What the test build of `r` reads on this system once `debs` are
/// unpacked: every package feeding its kernel's tree with the version it
/// will have, and the module source's fingerprint (`full`: the whole
/// inventory, as the kept builds compare it).
pub fn inputs_of(root: &Root, full: &Inventory, r: &Rebuild, debs: &[Deb]) -> Inputs {
    let id = &r.pair.id;
    let planned: Vec<(String, String)> = debs
        .iter()
        .filter(|d| {
            r.because.iter().any(|c| c.package == d.package)
                || full
                    .inputs
                    .get(&id.kernel)
                    .is_some_and(|i| i.iter().any(|x| x.package == d.package))
        })
        .map(|d| (d.package.to_string(), d.version.to_string()))
        .collect();
    Inputs {
        id: id.clone(),
        packages: kept::packages_of(full, &id.kernel, &planned),
        source: kept::source_fingerprint(root, &id.module, &id.version),
        time: state::now_secs(),
    }
}

/// The standing record that `now` repeats: the same pair, the same
/// packages at the same versions, the same module source.
pub fn repeated<'a>(records: &'a [Blocked], now: &Inputs) -> Option<&'a Blocked> {
    records.iter().find(|b| {
        b.inputs.id == now.id && b.inputs.packages == now.packages && b.inputs.source == now.source
    })
}

/// Why `b` no longer stands on this system, if it does not (`installed`:
/// dpkg's entries of its packages).
pub fn ended(root: &Root, b: &Blocked, installed: &[crate::dpkg::Installed]) -> Option<Ended> {
    for c in &b.because {
        let Some(new) = &c.new else { continue };
        if let Some(i) = installed
            .iter()
            .find(|i| i.name == c.package && i.has_files() && i.version >= *new)
        {
            return Some(Ended::Installed {
                package: i.name.clone(),
                version: i.version.to_string(),
            });
        }
    }
    let id = b.id();
    if !root.exists(format!("/lib/modules/{}", id.kernel)) {
        return Some(Ended::KernelGone);
    }
    if !root.exists(std::path::Path::new(crate::pair::DKMS_TREE).join(id.module_version_rel())) {
        return Some(Ended::ModuleGone);
    }
    None
}

/// dpkg's entries of the packages the records name.
fn installed_of(root: &Root, records: &[Blocked]) -> Vec<crate::dpkg::Installed> {
    crate::dpkg::read_status(root, |n| {
        records
            .iter()
            .any(|b| b.because.iter().any(|c| c.package.as_str() == n))
    })
    .unwrap_or_else(|e| {
        log::debug!("{e}");
        Vec::new()
    })
}

/// The blocks that stand now (read only: `status`, the textfile).
pub fn standing(state: &State) -> Vec<Blocked> {
    let records = read(state);
    if records.is_empty() {
        return records;
    }
    let installed = installed_of(state.root(), &records);
    records
        .into_iter()
        .filter(|b| ended(state.root(), b, &installed).is_none())
        .collect()
}

/// Forget the blocks that ended (after dpkg, at boot): each with why.
/// Only while no preflight runs (it writes the same file); the next run
/// does it otherwise, and [`standing`] leaves them out meanwhile.
pub fn tidy(state: &State) -> Result<Vec<(Blocked, Ended)>, Error> {
    if !state.dir().join(BLOCKED).exists() {
        return Ok(Vec::new()); // the hooks' usual case: one stat
    }
    let Some(_lock) = kept::lock_if_free(state) else {
        return Ok(Vec::new());
    };
    let records = read_checked(state)?;
    let installed = installed_of(state.root(), &records);
    let (mut keep, mut gone) = (Vec::new(), Vec::new());
    for b in records {
        match ended(state.root(), &b, &installed) {
            Some(why) => gone.push((b, why)),
            None => keep.push(b),
        }
    }
    if !gone.is_empty() {
        save(state, &keep)?;
    }
    Ok(gone)
}

/// Record new blocks (call with `preflight/lock` held: inside a
/// preflight's session): each replaces a record of the same pair.
pub fn record(state: &State, new: &[Blocked]) -> Result<(), Error> {
    let mut all = read_checked(state)?;
    all.retain(|b| !new.iter().any(|n| n.id() == b.id()));
    all.extend(new.iter().cloned());
    all.sort_by(|a, b| a.id().cmp(b.id()));
    save(state, &all)
}

/// A preflight built `built` against `debs` (call with `preflight/lock`
/// held): each record of those pairs whose every package is among `debs`
/// at its version or a newer one ends. Returns those.
pub fn passed(state: &State, built: &[&PairId], debs: &[Deb]) -> Result<Vec<Blocked>, Error> {
    if built.is_empty() || !state.dir().join(BLOCKED).exists() {
        return Ok(Vec::new());
    }
    let covered = |c: &Cause| {
        debs.iter()
            .any(|d| d.package == c.package && c.new.as_ref().is_none_or(|v| d.version >= *v))
    };
    let (gone, keep): (Vec<Blocked>, Vec<Blocked>) = read_checked(state)?
        .into_iter()
        .partition(|b| built.contains(&b.id()) && b.because.iter().all(covered));
    if !gone.is_empty() {
        save(state, &keep)?;
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Role;

    fn block(module: &str, new: &str) -> Blocked {
        let id = PairId {
            module: crate::name::ModuleName::new(module).unwrap(),
            version: crate::name::ModuleVersion::new("1.2.2").unwrap(),
            kernel: crate::name::KernelRelease::new("6.1.0-50-amd64").unwrap(),
            arch: crate::name::DkmsArch::new("x86_64").unwrap(),
        };
        Blocked {
            make_log: Some(Blocked::kept_make_log(&id)),
            inputs: Inputs {
                id,
                packages: vec![format!("linux-kbuild-6.1 {new}")],
                source: 7,
                time: 5,
            },
            because: vec![Cause {
                package: PackageName::new("linux-kbuild-6.1").unwrap(),
                role: Role::Kbuild,
                old: Some("6.1.192-2".parse().unwrap()),
                new: Some(new.parse().unwrap()),
                unpacked: None,
            }],
            failure: "dkms build exited 10".into(),
        }
    }

    fn deb(version: &str) -> Deb {
        Deb {
            path: "/x.deb".into(),
            package: PackageName::new("linux-kbuild-6.1").unwrap(),
            version: version.parse().unwrap(),
            architecture: None,
            depends: Vec::new(),
            files: Vec::new(),
        }
    }

    /// A preflight that builds the pair ends its block only when it built
    /// against the blocked version or a newer one, and only that pair's.
    #[test]
    fn a_passing_preflight_ends_only_the_blocks_it_covers() {
        let t = tempfile::tempdir().unwrap();
        let s = State::new(&Root::new(t.path()));
        let (a, b) = (block("a", "6.1.201-1"), block("b", "6.1.201-1"));
        record(&s, &[a.clone(), b.clone()]).unwrap();
        assert_eq!(read(&s), vec![a.clone(), b.clone()]);
        assert_eq!(passed(&s, &[a.id()], &[deb("6.1.200-1")]).unwrap(), vec![]);
        assert_eq!(
            passed(&s, &[a.id()], &[deb("6.1.201-1")]).unwrap(),
            vec![a.clone()]
        );
        assert_eq!(read(&s), vec![b.clone()]);
        // A new failure of the same pair replaces its record.
        let b2 = block("b", "6.1.202-1");
        record(&s, std::slice::from_ref(&b2)).unwrap();
        assert_eq!(read(&s), vec![b2.clone()]);
        assert_eq!(
            passed(&s, &[b2.id()], &[deb("6.1.203-1")]).unwrap(),
            vec![b2]
        );
        assert!(!s.dir().join(BLOCKED).exists(), "no file for no block");
    }

    /// A block ends with its version or a newer one installed (with files,
    /// not only its configuration left), with its kernel, with its module.
    #[test]
    fn a_block_ends_with_its_version_its_kernel_or_its_module() {
        let t = tempfile::tempdir().unwrap();
        let root = Root::new(t.path());
        let b = block("m", "6.1.201-1");
        let installed = |v: &str, state: &str| {
            vec![crate::dpkg::Installed {
                name: PackageName::new("linux-kbuild-6.1").unwrap(),
                architecture: None,
                version: v.parse().unwrap(),
                state: state.into(),
            }]
        };
        std::fs::create_dir_all(t.path().join("lib/modules/6.1.0-50-amd64")).unwrap();
        std::fs::create_dir_all(t.path().join("var/lib/dkms/m/1.2.2")).unwrap();
        assert_eq!(ended(&root, &b, &installed("6.1.192-2", "installed")), None);
        assert_eq!(
            ended(&root, &b, &installed("6.1.201-1", "config-files")),
            None
        );
        assert!(matches!(
            ended(&root, &b, &installed("6.1.202-1", "installed")),
            Some(Ended::Installed { version, .. }) if version == "6.1.202-1"
        ));
        std::fs::remove_dir(t.path().join("var/lib/dkms/m/1.2.2")).unwrap();
        assert_eq!(ended(&root, &b, &[]), Some(Ended::ModuleGone));
        std::fs::remove_dir(t.path().join("lib/modules/6.1.0-50-amd64")).unwrap();
        assert_eq!(ended(&root, &b, &[]), Some(Ended::KernelGone));
    }
}
