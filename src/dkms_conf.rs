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

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::dkms::DKMS_TREE;
use crate::kernel::{Kernel, KernelRelease, MODULES_DIR};
use crate::name::{DkmsArch, ModuleName, ModuleVersion};
use crate::root::{read_capped, Root, CAP_SMALL, CAP_STATE};
use crate::state::State;
use crate::state_dir::Dir;

/// The program that evaluates a `dkms.conf`, as dkms does.
pub const BASH: &str = "/bin/bash";
/// Where Debian installs dkms; its `--version` line names the version whose
/// rules apply.
pub const DKMS_SCRIPT: &str = "/usr/sbin/dkms";
/// A `dkms.conf` that takes longer than this is undecided (dkms itself
/// would hang on it; the hook must not).
const EVAL_TIMEOUT: Duration = Duration::from_secs(5);
/// The address space bash (and what the file runs) may use: a dkms.conf
/// that builds a huge value fails instead of taking the machine's memory.
const EVAL_MEMORY: u64 = 1 << 30;
/// The driver prints one short line; more is refused.
const EVAL_OUTPUT_CAP: u64 = 4096;
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

/// The variables dkms carries out of `safe_source` (dkms 3.4's list, a
/// superset of older ones'; the extra names are never set by older dkms's
/// own code, so the checks below see what dkms would see).
const CONF_VARIABLES: &str = "PACKAGE_NAME PACKAGE_VERSION POST_ADD POST_BUILD POST_INSTALL POST_REMOVE PRE_BUILD PRE_INSTALL BUILD_DEPENDS BUILD_EXCLUSIVE_ARCH BUILD_EXCLUSIVE_CONFIG BUILD_EXCLUSIVE_KERNEL BUILD_EXCLUSIVE_KERNEL_MIN BUILD_EXCLUSIVE_KERNEL_MAX build_exclude MAKE MAKE_MATCH PATCH PATCH_MATCH patch_array BUILT_MODULE_NAME built_module_name BUILT_MODULE_LOCATION built_module_location DEST_MODULE_NAME dest_module_name DEST_MODULE_LOCATION dest_module_location STRIP strip AUTOINSTALL NO_WEAK_MODULES BUILD_DEPENDS_REBUILD OBSOLETE_BY CLEAN REMAKE_INITRD MODULES_CONF MODULES_CONF_OBSOLETES MODULES_CONF_ALIAS_TYPE MODULES_CONF_OBSOLETE_ONLY";

/// The bash program that answers for one pair. Arguments: the dkms version
/// as three numbers, `kernelver`, `arch`, `kernel_source_dir`,
/// `kernel_config`, `module`, `module_version`, the variable list, then the
/// files to source. It prints `excluded` or `builds`.
///
/// `safe_source` and the checks are dkms's own code (GPL-2.0-or-later, as
/// this program), from `read_conf` of 3.0.10, 3.0.11 (`_KERNEL_MIN`/`_MAX`),
/// 3.1.5 (CR stripped), 3.1.8 (`OBSOLETE_BY`) and 3.3 (per-module checks;
/// `build_exclude` from the file no longer counts). Only the temp file of
/// `safe_source` became a command substitution: the same text is sourced.
pub const DRIVER: &str = r#"
shopt -s extglob
vmaj=$1 vmin=$2 vpat=$3; shift 3
kernelver=$1 arch=$2 kernel_source_dir=$3 kernel_config=$4 module=$5 module_version=$6
dkms_conf_variables=$7
shift 7
dkms_tree=/var/lib/dkms source_tree=/usr/src install_tree=/lib/modules
at_least() { (( vmaj != $1 ? vmaj > $1 : vmin != $2 ? vmin > $2 : vpat >= $3 )); }
VER() {
    echo "$1" | sed -e 's:\([^0-9]\)\([0-9]\):\1 \2:g' \
        -e 's:\([0-9]\)\([^0-9]\):\1 \2:g' \
        -e 's:\(.*\): \1 :' \
        -e 's: \([0-9]\) : 00\1 :g' \
        -e 's: \([0-9][0-9]\) : 0\1 :g' \
        -e 's: ::g'
}
safe_source() {
    local to_source_file="$1"; shift
    declare -a -r export_envs=( $@ )
    local CR=
    at_least 3 1 5 && CR=$(echo -e '\r')
    local out
    out=$( . "$to_source_file" >/dev/null
    for _export_env in "${export_envs[@]}"; do
        for _i in $(eval echo \${!"${_export_env}"[@]}); do
            eval echo '$_export_env[$_i]=\"${'"${_export_env}"'[$_i]%$CR}\"'
        done
    done
    for directive in $(set | grep ^DKMS_DIRECTIVE | cut -d = -f 2-3); do
        directive_name=${directive%%=*}
        directive_value=${directive#*=}
        echo "$directive_name=\"$directive_value\""
    done
    )
    eval "$out"
}
config_excludes() {
    local kconf
    for kconf in $1; do
        case "$kconf" in
            !*) grep -q "^${kconf#!}=[ym]" "${kernel_config}" && return 0 ;;
            *)  grep -q "^${kconf}=[ym]" "${kernel_config}" || return 0 ;;
        esac
    done
    return 1
}
for _conf_file in "$@"; do
    [[ -e $_conf_file ]] && safe_source "$_conf_file" "$dkms_conf_variables"
done 2>/dev/null
obsolete_by="$OBSOLETE_BY"
if ! at_least 3 3 0; then
    if at_least 3 1 8; then
        [[ $obsolete_by && ! $BUILD_EXCLUSIVE_KERNEL_MAX ]] && BUILD_EXCLUSIVE_KERNEL_MAX=$obsolete_by
    fi
    [[ $BUILD_EXCLUSIVE_KERNEL && ! $kernelver =~ $BUILD_EXCLUSIVE_KERNEL ]] && build_exclude="yes"
    if at_least 3 0 11; then
        [[ $BUILD_EXCLUSIVE_KERNEL_MIN && "$(VER "$kernelver")" < "$(VER "$BUILD_EXCLUSIVE_KERNEL_MIN")" ]] && build_exclude="yes"
        [[ $BUILD_EXCLUSIVE_KERNEL_MAX && "$(VER "$kernelver")" > "$(VER "$BUILD_EXCLUSIVE_KERNEL_MAX")" ]] && build_exclude="yes"
    fi
    [[ $BUILD_EXCLUSIVE_ARCH && ! $arch =~ $BUILD_EXCLUSIVE_ARCH ]] && build_exclude="yes"
    [[ $BUILD_EXCLUSIVE_CONFIG && -e "${kernel_config}" ]] && config_excludes "$BUILD_EXCLUSIVE_CONFIG" && build_exclude="yes"
else
    max_index=-1
    for s in "${!BUILT_MODULE_NAME[@]}" "${!BUILT_MODULE_LOCATION[@]}" \
        "${!DEST_MODULE_NAME[@]}" "${!DEST_MODULE_LOCATION[@]}"; do
        ((s > max_index)) && max_index=$s
    done
    num_modules=$((max_index + 1))
    if [[ $obsolete_by && ! $BUILD_EXCLUSIVE_KERNEL_MAX ]]; then
        has_per_module_max=false
        for ((i=0; i < num_modules; i++)); do
            [[ ${BUILD_EXCLUSIVE_KERNEL_MAX[i]} ]] && has_per_module_max=true && break
        done
        [[ $has_per_module_max == false ]] && BUILD_EXCLUSIVE_KERNEL_MAX=$obsolete_by
    fi
    check_build_exclusive_for_module() {
        local module_index="$1" kernel_version="$2" arch="$3"
        if [[ $BUILD_EXCLUSIVE_KERNEL || $BUILD_EXCLUSIVE_KERNEL_MIN || $BUILD_EXCLUSIVE_KERNEL_MAX || $BUILD_EXCLUSIVE_ARCH || $BUILD_EXCLUSIVE_CONFIG ]]; then
            has_build_exclusive_directives=true
        elif [[ ${BUILD_EXCLUSIVE_KERNEL[$module_index]} || ${BUILD_EXCLUSIVE_KERNEL_MIN[$module_index]} || ${BUILD_EXCLUSIVE_KERNEL_MAX[$module_index]} || ${BUILD_EXCLUSIVE_ARCH[$module_index]} || ${BUILD_EXCLUSIVE_CONFIG[$module_index]} ]]; then
            has_build_exclusive_directives=true
        fi
        [[ $BUILD_EXCLUSIVE_KERNEL && ! $kernel_version =~ $BUILD_EXCLUSIVE_KERNEL ]] && return 1
        [[ $BUILD_EXCLUSIVE_KERNEL_MIN && "$(VER "$kernel_version")" < "$(VER "$BUILD_EXCLUSIVE_KERNEL_MIN")" ]] && return 1
        [[ $BUILD_EXCLUSIVE_KERNEL_MAX && "$(VER "$kernel_version")" > "$(VER "$BUILD_EXCLUSIVE_KERNEL_MAX")" ]] && return 1
        [[ $BUILD_EXCLUSIVE_ARCH && ! $arch =~ $BUILD_EXCLUSIVE_ARCH ]] && return 1
        [[ ${BUILD_EXCLUSIVE_KERNEL[$module_index]} && ! $kernel_version =~ ${BUILD_EXCLUSIVE_KERNEL[$module_index]} ]] && return 1
        [[ ${BUILD_EXCLUSIVE_KERNEL_MIN[$module_index]} && "$(VER "$kernel_version")" < "$(VER "${BUILD_EXCLUSIVE_KERNEL_MIN[$module_index]}")" ]] && return 1
        [[ ${BUILD_EXCLUSIVE_KERNEL_MAX[$module_index]} && "$(VER "$kernel_version")" > "$(VER "${BUILD_EXCLUSIVE_KERNEL_MAX[$module_index]}")" ]] && return 1
        [[ ${BUILD_EXCLUSIVE_ARCH[$module_index]} && ! $arch =~ ${BUILD_EXCLUSIVE_ARCH[$module_index]} ]] && return 1
        [[ $BUILD_EXCLUSIVE_CONFIG && -e "${kernel_config}" ]] && config_excludes "$BUILD_EXCLUSIVE_CONFIG" && return 1
        [[ ${BUILD_EXCLUSIVE_CONFIG[$module_index]} && -e "${kernel_config}" ]] && config_excludes "${BUILD_EXCLUSIVE_CONFIG[$module_index]}" && return 1
        return 0
    }
    build_exclude=""
    buildable_modules=0
    has_build_exclusive_directives=false
    for ((index=0; index < num_modules; index++)); do
        check_build_exclusive_for_module "$index" "$kernelver" "$arch" && ((buildable_modules++))
    done
    [[ $buildable_modules -eq 0 && $has_build_exclusive_directives = true ]] && build_exclude="yes"
fi
if [[ $build_exclude ]]; then echo excluded; else echo builds; fi
"#;

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

/// Run [`DRIVER`] for one pair on the host: `files` (dkms.conf, then the
/// overrides) are sourced by bash as dkms sources them, so only files that
/// no one but root (or the user running this) may write are evaluated.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_on_host(
    dkms: DkmsVersion,
    module: &str,
    version: &str,
    kernel: &str,
    arch: &str,
    kernel_source_dir: &str,
    kernel_config: &str,
    files: &[&str],
) -> Verdict {
    for path in files {
        if let Err(why) = safe_to_source(Path::new(path)) {
            return Verdict::Undecided(format!("{path}: not evaluated: {why}"));
        }
    }
    let mut args: Vec<String> = vec![
        "-c".into(),
        DRIVER.into(),
        "dkms-hook-dkms-conf".into(),
        dkms.0.to_string(),
        dkms.1.to_string(),
        dkms.2.to_string(),
        kernel.into(),
        arch.into(),
        kernel_source_dir.into(),
        kernel_config.into(),
        module.into(),
        version.into(),
        CONF_VARIABLES.into(),
    ];
    args.extend(files.iter().map(|p| p.to_string()));
    match run_bounded(BASH, &args) {
        Ok(out) => match out.trim() {
            "excluded" => Verdict::Excluded,
            "builds" => Verdict::Builds,
            other => Verdict::Undecided(format!("unexpected answer {other:?} from bash")),
        },
        Err(why) => Verdict::Undecided(why),
    }
}

/// A file bash may source: a regular file that only root or the user
/// running this may change, in directories of the same kind (a sticky,
/// world-writable `/tmp` included, as for any file in it).
fn safe_to_source(path: &Path) -> Result<(), String> {
    let md = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !md.is_file() {
        return Err("not a regular file".into());
    }
    let me = rustix::process::geteuid().as_raw();
    let mut p = Some(path);
    while let Some(x) = p.filter(|x| !x.as_os_str().is_empty()) {
        let md = std::fs::metadata(x).map_err(|e| format!("{}: {e}", x.display()))?;
        let sticky_dir = md.is_dir() && md.mode() & 0o1000 != 0;
        if (md.uid() != 0 && md.uid() != me) || (md.mode() & 0o022 != 0 && !sticky_dir) {
            return Err(format!("{} may be changed by other users", x.display()));
        }
        p = x.parent();
    }
    Ok(())
}

/// Run `program args` with a clean environment and stdin from /dev/null,
/// in its own process group, killed with the group after [`EVAL_TIMEOUT`]
/// or once it printed more than [`EVAL_OUTPUT_CAP`] bytes.
fn run_bounded(program: &str, args: &[String]) -> Result<String, String> {
    let reader = duct::cmd(program, args)
        .full_env([("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), ("LC_ALL", "C")])
        .stdin_null()
        .stderr_null()
        .unchecked()
        .before_spawn(|c| {
            use std::os::unix::process::CommandExt;
            c.process_group(0);
            // SAFETY: setrlimit is a plain system call, async-signal-safe;
            // the closure touches no memory of the parent.
            unsafe {
                c.pre_exec(|| {
                    let limit = rustix::process::Rlimit {
                        current: Some(EVAL_MEMORY),
                        maximum: Some(EVAL_MEMORY),
                    };
                    rustix::process::setrlimit(rustix::process::Resource::As, limit)
                        .map_err(Into::into)
                });
            }
            Ok(())
        })
        .reader()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let pgid = reader
        .pids()
        .first()
        .and_then(|p| i32::try_from(*p).ok())
        .and_then(rustix::process::Pid::from_raw);
    let kill = || {
        if let Some(p) = pgid {
            let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
        }
    };
    let deadline = Instant::now() + EVAL_TIMEOUT;
    let result = std::thread::scope(|s| {
        let t = s.spawn(|| read_capped(Path::new(program), &reader, EVAL_OUTPUT_CAP));
        while !t.is_finished() {
            if Instant::now() >= deadline {
                kill();
                let _ = t.join();
                return Err(format!("gave up after {}s", EVAL_TIMEOUT.as_secs()));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        t.join()
            .map_err(|_| "reader panicked".to_string())?
            .map_err(|e| e.to_string())
    });
    kill(); // nothing it started outlives the answer
    let _ = reader.try_wait();
    result.map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// The values a file of plain assignments gives, or the line that makes it
/// a script. Keys are `NAME` → index → value (`NAME=x` is index 0, as in
/// bash).
type Vars = BTreeMap<String, BTreeMap<usize, String>>;

fn read_plain(dkms: DkmsVersion, files: &[(String, Vec<u8>)]) -> Result<Vars, String> {
    let mut vars = Vars::new();
    for (path, bytes) in files {
        let text = String::from_utf8_lossy(bytes);
        for (n, line) in text.split('\n').enumerate() {
            let script = || format!("{path}:{}: a shell statement", n + 1);
            // A CR before the newline is part of the last word for bash;
            // dkms 3.1.5+ strips it from each value, older dkms keeps it.
            let (line, cr) = match line.strip_suffix('\r') {
                Some(l) => (l, true),
                None => (line, false),
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.contains('\r') {
                return Err(script());
            }
            let (lhs, rhs) = line.split_once('=').ok_or_else(script)?;
            let (name, index) = match lhs.split_once('[') {
                Some((n, i)) => (
                    n,
                    i.strip_suffix(']')
                        .and_then(|i| i.parse().ok())
                        .ok_or_else(script)?,
                ),
                None => (lhs, 0),
            };
            let valid_name = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            let mut value = plain_word(rhs).ok_or_else(script)?;
            if cr && !dkms.at_least(3, 1, 5) && !rhs.contains('#') {
                value.push('\r');
            }
            if !valid_name {
                return Err(script());
            }
            vars.entry(name.to_string())
                .or_default()
                .insert(index, value);
        }
    }
    Ok(vars)
}

/// One shell word without anything bash would run: `"…"`, `'…'` or bare.
/// Expansions (`$x`) are kept as text; a value that matters and holds one
/// is undecided later. A trailing comment is allowed after whitespace.
fn plain_word(s: &str) -> Option<String> {
    let (word, rest) = if let Some(r) = s.strip_prefix('"') {
        // Inside double quotes a backslash only escapes $ ` " \ (bash);
        // before anything else it stays.
        let mut w = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '`') => return None,
                (_, '\\') => match chars.next()? {
                    (_, c @ ('$' | '`' | '"' | '\\')) => w.push(c),
                    (_, c) => {
                        w.push('\\');
                        w.push(c);
                    }
                },
                (_, c) => w.push(c),
            }
        };
        if w.contains("$(") {
            return None;
        }
        return finish(w, &r[end + 1..]);
    } else if let Some(r) = s.strip_prefix('\'') {
        let end = r.find('\'')?;
        (&r[..end], &r[end + 1..])
    } else {
        let end = s.find(char::is_whitespace).unwrap_or(s.len());
        let w = &s[..end];
        if w.contains(|c: char| "`\\;&|<>()\"'*?[]{}~".contains(c)) || w.contains("$(") {
            return None;
        }
        (w, &s[end..])
    };
    finish(word.to_string(), rest)
}

/// The word, when nothing but a comment follows it.
fn finish(word: String, rest: &str) -> Option<String> {
    let rest = rest.trim_start();
    (rest.is_empty() || rest.starts_with('#')).then_some(word)
}

/// dkms's `VER`: every number padded to three digits, separators dropped,
/// so that the result compares as a string.
fn ver(s: &str) -> String {
    let mut out = String::new();
    let mut digits = String::new();
    let flush = |d: &mut String, out: &mut String| {
        if !d.is_empty() {
            if d.len() < 3 {
                out.push_str(&"0".repeat(3 - d.len()));
            }
            out.push_str(d);
            d.clear();
        }
    };
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            flush(&mut digits, &mut out);
            out.push(c);
        }
    }
    flush(&mut digits, &mut out);
    out.retain(|c| c != ' ');
    out
}

/// The checks of [`DRIVER`] on a file of plain assignments, for `--root`
/// where nothing may be executed. Undecided when the file is a script or a
/// value needs bash (an expansion, a pattern Rust's regex may read
/// differently from POSIX ERE).
pub fn decide_static(
    dkms: DkmsVersion,
    files: &[(String, Vec<u8>)],
    kernel: &KernelRelease,
    arch: &str,
    config: Option<&KernelConfigFile>,
) -> Verdict {
    match decide_plain(dkms, files, kernel.as_str(), arch, config) {
        Ok(true) => Verdict::Excluded,
        Ok(false) => Verdict::Builds,
        Err(why) => Verdict::Undecided(why),
    }
}

/// A kernel's config as `BUILD_EXCLUSIVE_CONFIG` asks it (dkms's
/// `config_excludes`, `grep -q "^NAME=[ym]"`): each name is looked up once
/// however many modules ask (a real config is a few hundred kB).
pub struct KernelConfigFile {
    bytes: Vec<u8>,
    asked: std::cell::RefCell<HashMap<String, bool>>,
}

impl KernelConfigFile {
    pub fn new(bytes: Vec<u8>) -> KernelConfigFile {
        KernelConfigFile {
            bytes,
            asked: Default::default(),
        }
    }

    /// Whether a line `NAME=y…` or `NAME=m…` is in it.
    pub fn sets(&self, name: &str) -> bool {
        if let Some(&set) = self.asked.borrow().get(name) {
            return set;
        }
        let key = format!("{name}=");
        let text = &self.bytes[..];
        let set = memchr::memmem::find_iter(text, key.as_bytes()).any(|at| {
            (at == 0 || text.get(at - 1) == Some(&b'\n'))
                && matches!(text.get(at + key.len()), Some(b'y' | b'm'))
        });
        self.asked.borrow_mut().insert(name.to_string(), set);
        set
    }
}

fn decide_plain(
    dkms: DkmsVersion,
    files: &[(String, Vec<u8>)],
    k: &str,
    arch: &str,
    config: Option<&KernelConfigFile>,
) -> Result<bool, String> {
    let vars = read_plain(dkms, files)?;
    let get = |name: &str, i: usize| -> Result<Option<&str>, String> {
        match vars.get(name).and_then(|m| m.get(&i)) {
            Some(v) if v.is_empty() => Ok(None),
            Some(v) if v.contains('$') => Err(format!("{name} needs bash: {v:?}")),
            Some(v) => Ok(Some(v.as_str())),
            None => Ok(None),
        }
    };
    let matches = |re: &str, s: &str| -> Result<bool, String> {
        // Patterns both POSIX ERE and Rust's regex read alike.
        let portable = !re.contains('\\') || {
            let mut cs = re.chars();
            let mut ok = true;
            while let Some(c) = cs.next() {
                if c == '\\' && cs.next().is_none_or(|n| n.is_ascii_alphanumeric()) {
                    ok = false;
                }
            }
            ok
        };
        if !portable || re.contains("(?") || re.contains("[[=") || re.contains("[[.") {
            return Err(format!("pattern {re:?} needs bash"));
        }
        regex::Regex::new(re)
            .map(|r| r.is_match(s))
            .map_err(|_| format!("pattern {re:?} needs bash"))
    };
    let config_excludes = |list: &str| -> Result<bool, String> {
        let Some(text) = config else {
            return Ok(false); // `-e "${kernel_config}"` failed: no check
        };
        for kconf in list.split_whitespace() {
            let (want, name) = match kconf.strip_prefix('!') {
                Some(n) => (false, n),
                None => (true, kconf),
            };
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("BUILD_EXCLUSIVE_CONFIG entry {kconf:?} needs bash"));
            }
            let set = text.sets(name);
            if set != want {
                return Ok(true);
            }
        }
        Ok(false)
    };
    let too_old = |min: &str| ver(k) < ver(min);
    let too_new = |max: &str| ver(k) > ver(max);
    let obsolete_by = get("OBSOLETE_BY", 0)?;
    if !dkms.at_least(3, 3, 0) {
        let mut exclude = get("build_exclude", 0)?.is_some();
        let mut max = get("BUILD_EXCLUSIVE_KERNEL_MAX", 0)?;
        if dkms.at_least(3, 1, 8) && max.is_none() {
            max = obsolete_by;
        }
        if let Some(re) = get("BUILD_EXCLUSIVE_KERNEL", 0)? {
            exclude |= !matches(re, k)?;
        }
        if dkms.at_least(3, 0, 11) {
            exclude |= get("BUILD_EXCLUSIVE_KERNEL_MIN", 0)?.is_some_and(too_old);
            exclude |= max.is_some_and(too_new);
        }
        if let Some(re) = get("BUILD_EXCLUSIVE_ARCH", 0)? {
            exclude |= !matches(re, arch)?;
        }
        if let Some(list) = get("BUILD_EXCLUSIVE_CONFIG", 0)? {
            exclude |= config_excludes(list)?;
        }
        return Ok(exclude);
    }
    let num_modules = [
        "BUILT_MODULE_NAME",
        "BUILT_MODULE_LOCATION",
        "DEST_MODULE_NAME",
        "DEST_MODULE_LOCATION",
    ]
    .iter()
    .filter_map(|n| vars.get(*n)?.keys().max().map(|i| i + 1))
    .max()
    .unwrap_or(0);
    let mut global_max = get("BUILD_EXCLUSIVE_KERNEL_MAX", 0)?;
    if obsolete_by.is_some() && global_max.is_none() {
        let mut per_module = false;
        for i in 0..num_modules {
            per_module |= get("BUILD_EXCLUSIVE_KERNEL_MAX", i)?.is_some();
        }
        if !per_module {
            global_max = obsolete_by;
        }
    }
    let keys = [
        "BUILD_EXCLUSIVE_KERNEL",
        "BUILD_EXCLUSIVE_KERNEL_MIN",
        "BUILD_EXCLUSIVE_KERNEL_MAX",
        "BUILD_EXCLUSIVE_ARCH",
        "BUILD_EXCLUSIVE_CONFIG",
    ];
    // `$X` is element 0, so the "global" values are element 0, with
    // `OBSOLETE_BY` standing in for an unset `_KERNEL_MAX`.
    let global = |key: &str| -> Result<Option<&str>, String> {
        if key == "BUILD_EXCLUSIVE_KERNEL_MAX" {
            Ok(global_max)
        } else {
            get(key, 0)
        }
    };
    let mut directives = false;
    let mut buildable = 0;
    for i in 0..num_modules {
        let mut any_global = false;
        for key in keys {
            any_global |= global(key)?.is_some();
        }
        if any_global {
            directives = true;
        } else {
            for key in keys {
                directives |= get(key, i)?.is_some();
            }
        }
        let excluded = |g: bool| -> Result<bool, String> {
            let val = |key: &str| if g { global(key) } else { get(key, i) };
            Ok(val("BUILD_EXCLUSIVE_KERNEL")?
                .map(|re| matches(re, k).map(|m| !m))
                .transpose()?
                .unwrap_or(false)
                || val("BUILD_EXCLUSIVE_KERNEL_MIN")?.is_some_and(too_old)
                || val("BUILD_EXCLUSIVE_KERNEL_MAX")?.is_some_and(too_new)
                || val("BUILD_EXCLUSIVE_ARCH")?
                    .map(|re| matches(re, arch).map(|m| !m))
                    .transpose()?
                    .unwrap_or(false))
        };
        let config_out = |list: Option<&str>| list.map_or(Ok(false), config_excludes);
        let out = excluded(true)?
            || excluded(false)?
            || config_out(global("BUILD_EXCLUSIVE_CONFIG")?)?
            || config_out(get("BUILD_EXCLUSIVE_CONFIG", i)?)?;
        if !out {
            buildable += 1;
        }
    }
    Ok(buildable == 0 && directives)
}

/// `dkms-conf.json` in the state directory: verdicts by input key. Read by
/// every run as untrusted input (capped, each record checked), written by
/// root runs only.
#[derive(Debug, Default)]
struct ConfCache {
    records: HashMap<u64, Verdict>,
    used: HashMap<u64, Verdict>,
    changed: bool,
}

const CACHE_FILE: &str = "dkms-conf.json";
const CACHE_VERSION: u32 = 1;
const CACHE_MAX: usize = 4096;
const MAX_WHY: usize = 512;

#[derive(Serialize, Deserialize)]
struct CacheOnDisk {
    version: u32,
    verdicts: Vec<CacheRecord>,
}

#[derive(Serialize, Deserialize)]
struct CacheRecord {
    key: String,
    #[serde(flatten)]
    verdict: Verdict,
}

impl ConfCache {
    fn load(root: &Root) -> ConfCache {
        let state = State::new(root);
        let Some(dir) = Dir::open_existing(state.dir()) else {
            return ConfCache::default();
        };
        match dir.read_only(CACHE_FILE, CAP_STATE) {
            Ok(Some(d)) => ConfCache::parse(&d).unwrap_or_else(|why| {
                log::debug!("{CACHE_FILE}: ignored: {why}");
                ConfCache::default()
            }),
            Ok(None) => ConfCache::default(),
            Err(e) => {
                log::debug!("{e}");
                ConfCache::default()
            }
        }
    }

    fn parse(data: &[u8]) -> Result<ConfCache, String> {
        let disk: CacheOnDisk = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        if disk.version != CACHE_VERSION {
            return Err(format!("version {}", disk.version));
        }
        let records = disk
            .verdicts
            .into_iter()
            .take(CACHE_MAX)
            .filter(|r| match &r.verdict {
                Verdict::Undecided(why) => {
                    why.len() <= MAX_WHY && !why.chars().any(char::is_control)
                }
                _ => true,
            })
            .filter_map(|r| Some((u64::from_str_radix(&r.key, 16).ok()?, r.verdict)))
            .collect();
        Ok(ConfCache {
            records,
            ..ConfCache::default()
        })
    }

    fn get(&mut self, key: u64) -> Option<Verdict> {
        let v = self.records.get(&key)?.clone();
        self.used.insert(key, v.clone());
        Some(v)
    }

    fn put(&mut self, key: u64, mut v: Verdict) {
        if let Verdict::Undecided(why) = &mut v {
            why.truncate(MAX_WHY);
            why.retain(|c| !c.is_control());
        }
        self.used.insert(key, v);
        self.changed = true;
    }

    /// Only this run's verdicts are written: one run sees every pair.
    fn save(&self, root: &Root) {
        if !self.changed {
            return;
        }
        let mut verdicts: Vec<CacheRecord> = self
            .used
            .iter()
            .map(|(k, v)| CacheRecord {
                key: format!("{k:016x}"),
                verdict: v.clone(),
            })
            .collect();
        verdicts.sort_by(|a, b| a.key.cmp(&b.key));
        verdicts.truncate(CACHE_MAX);
        let disk = CacheOnDisk {
            version: CACHE_VERSION,
            verdicts,
        };
        let Ok(bytes) = serde_json::to_vec(&disk) else {
            return;
        };
        if let Err(e) = State::new(root)
            .open()
            .and_then(|d| d.write_atomic(CACHE_FILE, &bytes))
        {
            log::debug!("{e}");
        }
    }
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
        std::thread::sleep(Duration::from_millis(20));
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
    #[test]
    fn a_kernel_config_is_asked_as_grep_asks_it() {
        let c = KernelConfigFile::new(
            b"CONFIG_A=y\n# CONFIG_B is not set\nXCONFIG_C=y\n CONFIG_H=y\nCONFIG_D=m\nCONFIG_E=n\nCONFIG_F=\"y\"\nCONFIG_AB=y\nCONFIG_G=y"
                .to_vec(),
        );
        for (name, set) in [
            ("CONFIG_A", true),
            ("CONFIG_B", false),
            ("CONFIG_C", false),
            ("CONFIG_H", false),
            ("CONFIG_D", true),
            ("CONFIG_E", false),
            ("CONFIG_F", false),
            ("CONFIG_G", true),
            ("CONFIG_X", false),
        ] {
            assert_eq!(c.sets(name), set, "{name}");
            assert_eq!(c.sets(name), set, "{name}, asked again");
        }
    }

    #[test]
    fn damaged_and_hostile_caches_are_ignored() {
        for bad in [
            &b"{garbage"[..],
            br#"{"version": 2, "verdicts": []}"#,
            br#"{"version": 1, "verdicts": [{"key": 5}]}"#,
        ] {
            assert!(
                ConfCache::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let odd = br#"{"version": 1, "verdicts": [{"key": "zz", "verdict": "excluded"}, {"key": "01", "verdict": "undecided", "why": "a\u001b[31m"}, {"key": "02", "verdict": "builds"}]}"#;
        let c = ConfCache::parse(odd).unwrap();
        assert_eq!(c.records.len(), 1, "{:?}", c.records);
        assert_eq!(c.records.get(&2), Some(&Verdict::Builds));
    }

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
        std::fs::write(state.join(CACHE_FILE), planted).unwrap();
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
        assert!(std::fs::read(state.join(CACHE_FILE))
            .unwrap()
            .starts_with(b"{\"version\": 1"));
    }

    #[test]
    fn ver_pads_numbers_as_dkms_does() {
        assert_eq!(
            ver("2.6.9-1cvs200409091247"),
            "002.006.009-001cvs200409091247"
        );
        assert!(ver("6.1.0-57-amd64") < ver("6.1.0-60"));
        assert!(ver("6.12.1") > ver("6.9.0"));
    }
}
