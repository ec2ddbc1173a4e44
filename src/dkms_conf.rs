//! `dkms.conf` as dkms reads it: whether dkms would build a module version
//! for a kernel, or skip it because of `BUILD_EXCLUSIVE_*`.
//!
//! A `dkms.conf` is a bash file that dkms *sources* (`read_conf`, through
//! `safe_source`, in a subshell), with `kernelver`, `arch`,
//! `kernel_source_dir` and `kernel_config` set, then the overrides in
//! `/etc/dkms/`. Real ones are scripts: v4l2loopback and digimend source the
//! kernel's `.config` and set `BUILD_EXCLUSIVE_KERNEL` only inside an `if`.
//! Reading them as `key=value` called healthy pairs excluded (Debian 12 and
//! 13 trial: such modules were never rebuilt), so on the host the file is
//! evaluated by bash exactly as dkms does ([`DRIVER`], with dkms's own
//! `safe_source` and exclusion checks for the installed dkms version), as an
//! argument vector, with a clean environment, a time limit and an output cap.
//! Each verdict is cached in the state directory, keyed by the content of
//! `dkms.conf` and its overrides, the identity of the kernel's config files
//! (device, inode, size, mtime and ctime: a rewrite changes the ctime, which
//! cannot be set back) and the dkms version.
//!
//! Under `--root DIR` nothing from DIR is executed: a file of plain
//! assignments is decided by a direct reading with the same checks
//! ([`decide_static`]); anything else is [`Verdict::Undecided`].

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

mod cache;
mod plain;
mod shell;

use cache::ConfCache;
pub use plain::{decide_static, KernelConfigFile};
pub use shell::{evaluate_on_host, BASH, DRIVER};

use crate::dkms::DKMS_TREE;
use crate::kernel::{Kernel, KernelRelease, MODULES_DIR};
use crate::name::{DkmsArch, ModuleName, ModuleVersion};
use crate::root::{Root, CAP_SMALL};

/// Where Debian installs dkms; its `--version` line names the version whose
/// rules apply.
pub const DKMS_SCRIPT: &str = "/usr/sbin/dkms";
/// A kernel config (~280 kB on Debian) read by the static decision.
const CAP_CONFIG: u64 = 4 << 20;

/// What dkms would do with one module version for one kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", content = "why", rename_all = "kebab-case")]
pub enum Verdict {
    /// dkms would build it.
    Builds,
    /// `BUILD_EXCLUSIVE_*` (or `OBSOLETE_BY`, or `build_exclude` set by the
    /// file) keeps dkms from building it: `dkms build` exits 77.
    Excluded,
    /// The file cannot be judged here (a shell script under `--root`, a
    /// timeout, an unsafe owner): treated as buildable, never as excluded.
    Undecided(String),
}

/// The dkms version whose `read_conf` rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DkmsVersion(pub u32, pub u32, pub u32);

impl DkmsVersion {
    /// Upstream's newest rules, for a root without a readable dkms script
    /// (fixtures with a stand-in dkms, dkms installed elsewhere).
    pub const NEWEST: DkmsVersion = DkmsVersion(3, 4, 3);

    /// The version in the root's dkms script: its `--version` branch prints
    /// `dkms-3.0.10` (`echo $"dkms-3.0.10"` in 3.0, `echo "dkms-3.2.2"`
    /// since).
    pub fn of_root(root: &Root) -> Option<DkmsVersion> {
        let text = root.read(DKMS_SCRIPT, CAP_SMALL).ok()?;
        DkmsVersion::parse_script(&text)
    }

    pub fn parse_script(text: &[u8]) -> Option<DkmsVersion> {
        let text = String::from_utf8_lossy(text);
        text.lines().find_map(|l| {
            let l = l.trim();
            let rest = l
                .strip_prefix("echo $\"dkms-")
                .or_else(|| l.strip_prefix("echo \"dkms-"))?;
            let v = rest.strip_suffix('"')?;
            let mut n = v.split('.').map(|p| p.parse::<u32>().ok());
            let v = DkmsVersion(n.next()??, n.next()??, n.next().flatten().unwrap_or(0));
            n.next().is_none().then_some(v)
        })
    }

    fn at_least(self, a: u32, b: u32, c: u32) -> bool {
        self >= DkmsVersion(a, b, c)
    }

    /// `kernel_config`: `include/config/auto.conf` when present (3.1.4+),
    /// else `.config` (`set_kernel_source_dir_and_kconfig`).
    fn kernel_config(self, build: &str, auto_conf_exists: bool) -> String {
        if self.at_least(3, 1, 4) && auto_conf_exists {
            format!("{build}/include/config/auto.conf")
        } else {
            format!("{build}/.config")
        }
    }

    /// The files `read_conf` sources after dkms.conf, in its order (all in
    /// [`ETC_DKMS`]).
    fn overrides(self, m: &str, v: &str, k: &str, a: &str) -> Vec<String> {
        let mut out = vec![
            format!("/etc/dkms/{m}.conf"),
            format!("/etc/dkms/{m}-{v}.conf"),
            format!("/etc/dkms/{m}-{v}-{k}.conf"),
            format!("/etc/dkms/{m}-{v}-{k}-{a}.conf"),
        ];
        if self.at_least(3, 1, 6) {
            out.push(format!("/etc/dkms/{m}--{k}.conf"));
            out.push(format!("/etc/dkms/{m}--{k}-{a}.conf"));
        }
        out
    }
}

impl std::fmt::Display for DkmsVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// A file to source: in-root path and content.
type File = (String, Vec<u8>);
/// Files to source, in order.
type Files = Vec<File>;

/// Everything a verdict depends on, read before the cache is asked.
struct Inputs {
    /// dkms.conf, then every override file dkms 3.x may source, in its
    /// order, with its content when it exists.
    files: Vec<(String, Option<Vec<u8>>)>,
    /// `/lib/modules/K/build`.
    build: String,
    /// What the verdict depends on, hashed: the cache key.
    key: u64,
}

/// Decides, caches and remembers verdicts for one run.
pub struct Judge<'r> {
    root: &'r Root,
    /// The dkms script's identity (part of every cache key); its version
    /// is read only when a verdict is not cached.
    dkms_id: u64,
    dkms: Option<DkmsVersion>,
    cache: ConfCache,
    /// dkms.conf per module version, read once.
    confs: HashMap<(ModuleName, ModuleVersion), Option<File>>,
    /// Per kernel: the identities of its `.config` and `auto.conf`, and
    /// (under `--root`, read when a verdict needs it) the config dkms reads;
    /// the same for every module.
    kernels: HashMap<KernelRelease, KernelConfig>,
    /// The names in `/etc/dkms`, listed once: the overrides `read_conf`
    /// would source are looked for there (`None`: it cannot be listed).
    etc_dkms: Option<Option<std::collections::HashSet<String>>>,
}

/// What a verdict reads of one kernel.
#[derive(Default)]
struct KernelConfig {
    ids: [Option<Identity>; 2],
    /// `kernel_config`, once read (`Some(None)`: unreadable).
    bytes: Option<Option<std::rc::Rc<KernelConfigFile>>>,
}

impl<'r> Judge<'r> {
    pub fn new(root: &'r Root) -> Judge<'r> {
        let mut h = std::hash::DefaultHasher::new();
        identity(root, DKMS_SCRIPT).hash(&mut h);
        Judge {
            root,
            dkms_id: h.finish(),
            dkms: None,
            // Under `--root` the static reading is cheap, and a cache in the
            // inspected tree would be its word, not ours.
            cache: if root.is_host_root() {
                ConfCache::load(root)
            } else {
                ConfCache::default()
            },
            confs: HashMap::new(),
            kernels: HashMap::new(),
            etc_dkms: None,
        }
    }

    fn dkms(&mut self) -> DkmsVersion {
        let root = self.root;
        *self
            .dkms
            .get_or_insert_with(|| DkmsVersion::of_root(root).unwrap_or(DkmsVersion::NEWEST))
    }

    /// What dkms would do with `module/version` for `kernel` on `arch`.
    /// `None` when the kernel has no headers or no config (then the pair
    /// is `no-headers`, whatever its dkms.conf says), or no dkms.conf.
    pub fn verdict(
        &mut self,
        module: &ModuleName,
        version: &ModuleVersion,
        kernel: &Kernel,
        arch: &DkmsArch,
    ) -> Option<Verdict> {
        if !kernel.has_headers() {
            return None;
        }
        let k = &kernel.release;
        let inputs = self.inputs(module, version, k, arch)?;
        if let Some(v) = self.cache.get(inputs.key) {
            return Some(v);
        }
        let dkms = self.dkms();
        let auto_conf = self.kernels.get(k).is_some_and(|c| c.ids[1].is_some());
        let kernel_config = dkms.kernel_config(&inputs.build, auto_conf);
        let sourced = dkms.overrides(module.as_str(), version.as_str(), k.as_str(), arch.as_str());
        let files: Files = inputs
            .files
            .into_iter()
            .enumerate()
            .filter(|(i, (path, _))| *i == 0 || sourced.contains(path))
            .filter_map(|(_, (path, bytes))| Some((path, bytes?)))
            .collect();
        let v = if self.root.is_host_root() {
            let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
            evaluate_on_host(
                dkms,
                module.as_str(),
                version.as_str(),
                k.as_str(),
                arch.as_str(),
                &inputs.build,
                &kernel_config,
                &paths,
            )
        } else {
            // The kernel's config (a few hundred kB) matters only to
            // BUILD_EXCLUSIVE_CONFIG: read then, once per kernel.
            let needed = files
                .iter()
                .any(|(_, b)| memchr::memmem::find(b, b"BUILD_EXCLUSIVE_CONFIG").is_some());
            let config = if needed {
                let root = self.root;
                self.kernels
                    .entry(k.clone())
                    .or_default()
                    .bytes
                    .get_or_insert_with(|| {
                        root.read(&kernel_config, CAP_CONFIG)
                            .ok()
                            .map(|b| std::rc::Rc::new(KernelConfigFile::new(b)))
                    })
                    .clone()
            } else {
                None
            };
            decide_static(dkms, &files, k, arch.as_str(), config.as_deref())
        };
        log::debug!("{module}/{version} @ {k}: {v:?}");
        self.cache.put(inputs.key, v.clone());
        Some(v)
    }

    /// Write what was learnt (root only: the runs that refresh caches; a
    /// cache that cannot be written costs the next run an evaluation).
    pub fn save(&self) {
        if self.root.is_host_root() && rustix::process::geteuid().is_root() {
            self.cache.save(self.root);
        }
    }

    fn inputs(
        &mut self,
        m: &ModuleName,
        v: &ModuleVersion,
        k: &KernelRelease,
        a: &DkmsArch,
    ) -> Option<Inputs> {
        let root = self.root;
        let build = format!("{MODULES_DIR}/{k}/build");
        // Both config files: dkms 3.1.4+ reads auto.conf, older ones and
        // v4l2loopback's dkms.conf `.config`.
        let configs = [
            format!("{build}/.config"),
            format!("{build}/include/config/auto.conf"),
        ];
        let ids = self
            .kernels
            .entry(k.clone())
            .or_insert_with(|| KernelConfig {
                ids: [identity(root, &configs[0]), identity(root, &configs[1])],
                bytes: None,
            })
            .ids;
        if ids.iter().all(Option::is_none) {
            return None;
        }
        let (path, bytes) = self
            .confs
            .entry((m.clone(), v.clone()))
            .or_insert_with(|| read_main_conf(root, m, v))
            .clone()?;
        let mut files = vec![(path, Some(bytes))];
        let etc_dkms = self
            .etc_dkms
            .get_or_insert_with(|| list_dir(root, ETC_DKMS))
            .as_ref();
        for o in DkmsVersion::NEWEST.overrides(m.as_str(), v.as_str(), k.as_str(), a.as_str()) {
            // Only a name the directory holds can be read (when it cannot
            // be listed, each is tried).
            let listed = match (
                o.strip_prefix(ETC_DKMS).and_then(|n| n.strip_prefix('/')),
                etc_dkms,
            ) {
                (Some(n), Some(names)) => names.contains(n),
                _ => true,
            };
            let bytes = if listed {
                root.read(&o, CAP_SMALL).ok()
            } else {
                None
            };
            files.push((o, bytes));
        }
        let mut h = std::hash::DefaultHasher::new();
        (self.dkms_id, m.as_str(), v.as_str(), k.as_str(), a.as_str()).hash(&mut h);
        files.hash(&mut h);
        for (c, id) in configs.iter().zip(ids) {
            (c, id).hash(&mut h);
        }
        Some(Inputs {
            files,
            build,
            key: h.finish(),
        })
    }
}

/// The stat fields a file cannot hide a change from: device, inode, size,
/// mtime and ctime (a rewrite sets the ctime, which cannot be set back);
/// `None` when it does not exist.
type Identity = (u64, u64, u64, i64, i64, i64, i64);

fn identity(root: &Root, path: &str) -> Option<Identity> {
    let md = root
        .resolve(path)
        .and_then(std::fs::symlink_metadata)
        .ok()?;
    Some((
        md.dev(),
        md.ino(),
        md.size(),
        md.mtime(),
        md.mtime_nsec(),
        md.ctime(),
        md.ctime_nsec(),
    ))
}

/// Where `read_conf` looks for a module's overrides.
const ETC_DKMS: &str = "/etc/dkms";

/// The names in the root's directory `dir`, none when there is no such
/// directory (`None`: it cannot be listed).
fn list_dir(root: &Root, dir: &str) -> Option<std::collections::HashSet<String>> {
    let path = match root.resolve(dir) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(Default::default()),
        Err(_) => return None,
    };
    let rd = std::fs::read_dir(path).ok()?;
    Some(
        rd.flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
    )
}

/// dkms.conf as dkms finds it: `/var/lib/dkms/M/V/source/dkms.conf` (a link
/// to `/usr/src/M-V`), else `/usr/src/M-V/dkms.conf`. `None`: unreadable.
fn read_main_conf(root: &Root, m: &ModuleName, v: &ModuleVersion) -> Option<File> {
    let in_tree = format!("{DKMS_TREE}/{m}/{v}/source/dkms.conf");
    let in_src = format!("/usr/src/{m}-{v}/dkms.conf");
    [in_tree, in_src].into_iter().find_map(|p| {
        let bytes = root
            .read(&p, CAP_SMALL)
            .map_err(|e| log::debug!("dkms.conf: {e}"))
            .ok()?;
        Some((p, bytes))
    })
}

/// The static reading of one file (the corpus check compares it with
/// dkms).
pub fn decide_file(
    dkms: DkmsVersion,
    conf: &Path,
    kernel: &KernelRelease,
    arch: &str,
    config: Option<&Path>,
) -> Result<Verdict, crate::Error> {
    let bytes = crate::root::read_regular(conf, CAP_SMALL)?;
    let config = match config {
        Some(c) => Some(KernelConfigFile::new(crate::root::read_regular(
            c, CAP_CONFIG,
        )?)),
        None => None,
    };
    let files = vec![(conf.display().to_string(), bytes)];
    Ok(decide_static(dkms, &files, kernel, arch, config.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(root: &Root, k: &str) -> (ModuleName, ModuleVersion, KernelRelease, DkmsArch) {
        let dir = root.dir().join(format!("lib/modules/{k}/build"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(".config"), "CONFIG_DRM=m\n").unwrap();
        let src = root.dir().join("usr/src/m-1");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("dkms.conf"), "BUILD_EXCLUSIVE_CONFIG=CONFIG_DRM\n").unwrap();
        (
            ModuleName::new("m").unwrap(),
            ModuleVersion::new("1").unwrap(),
            KernelRelease::new(k).unwrap(),
            DkmsArch::new("x86_64").unwrap(),
        )
    }

    /// The cache key moves with what dkms reads: a kernel config rewritten
    /// in place with the same size and its mtime put back (only the ctime
    /// tells), dkms.conf, an override file.
    #[test]
    fn the_cache_key_cannot_be_fooled() {
        let t = tempfile::tempdir().unwrap();
        let root = Root::new(t.path());
        let (m, v, k, a) = kernel(&root, "K");
        // A judge is one run's: it reads each kernel's configs and lists
        // /etc/dkms once. Each key is a new run's.
        let key = || Judge::new(&root).inputs(&m, &v, &k, &a).unwrap().key;
        let first = key();
        assert_eq!(key(), first);
        let config = t.path().join("lib/modules/K/build/.config");
        let mtime = std::fs::metadata(&config).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&config, "CONFIG_DRM=n\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&config)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let second = key();
        assert_ne!(second, first, "a same-size rewrite with the old mtime");
        std::fs::create_dir_all(t.path().join("etc/dkms")).unwrap();
        std::fs::write(t.path().join("etc/dkms/m.conf"), "build_exclude=yes\n").unwrap();
        assert_ne!(key(), second, "an override file");
    }

    /// dkms's `config_excludes` asks `grep -q "^NAME=[ym]"` of the config.
    /// Under `--root` no cache is read or written: the tree's own would be
    /// its word.
    #[test]
    fn under_root_no_cache_is_used() {
        let t = tempfile::tempdir().unwrap();
        let root = Root::new(t.path());
        let (m, v, _, a) = kernel(&root, "K");
        let state = t.path().join("var/lib/dkms-hook");
        std::fs::create_dir_all(&state).unwrap();
        let mut judge = Judge::new(&root);
        let key = judge
            .inputs(&m, &v, &KernelRelease::new("K").unwrap(), &a)
            .unwrap()
            .key;
        let planted = format!(
            r#"{{"version": 1, "verdicts": [{{"key": "{key:016x}", "verdict": "excluded"}}]}}"#
        );
        std::fs::write(state.join(cache::CACHE_FILE), planted).unwrap();
        let mut judge = Judge::new(&root);
        let k = Kernel {
            release: KernelRelease::new("K").unwrap(),
            image: false,
            build_link: None,
            tree: vec![crate::kernel::TreeDir {
                path: "/lib/modules/K/build".into(),
                role: crate::kernel::Role::Headers,
                also: vec![],
            }],
            compiler: None,
        };
        assert_eq!(judge.verdict(&m, &v, &k, &a), Some(Verdict::Builds));
        judge.save();
        assert!(std::fs::read(state.join(cache::CACHE_FILE))
            .unwrap()
            .starts_with(b"{\"version\": 1"));
    }
}
