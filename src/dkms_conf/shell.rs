//! The evaluation on the host: bash sources a dkms.conf and its overrides
//! with dkms's own `safe_source` and applies dkms's exclusion checks for
//! the installed dkms version ([`DRIVER`]), as an argument vector, with a
//! clean environment and bounds on time, memory and output.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{DkmsVersion, Verdict};
use crate::root::read_capped;

/// The program that evaluates a `dkms.conf`, as dkms does.
pub const BASH: &str = "/bin/bash";
/// A `dkms.conf` that takes longer than this is undecided (dkms itself
/// would hang on it; the hook must not).
const EVAL_TIMEOUT: Duration = Duration::from_secs(5);
/// The address space bash (and what the file runs) may use: a dkms.conf
/// that builds a huge value fails instead of taking the machine's memory.
const EVAL_MEMORY: u64 = 1 << 30;
/// The driver prints one short line; more is refused.
const EVAL_OUTPUT_CAP: u64 = 4096;

/// The variables dkms carries out of `safe_source` (dkms 3.4's list, a
/// superset of older ones'; the extra names are never set by older dkms's
/// own code, so the checks below see what dkms would see).
const CONF_VARIABLES: &str = "PACKAGE_NAME PACKAGE_VERSION POST_ADD POST_BUILD POST_INSTALL POST_REMOVE PRE_BUILD PRE_INSTALL BUILD_DEPENDS BUILD_EXCLUSIVE_ARCH BUILD_EXCLUSIVE_CONFIG BUILD_EXCLUSIVE_KERNEL BUILD_EXCLUSIVE_KERNEL_MIN BUILD_EXCLUSIVE_KERNEL_MAX build_exclude MAKE MAKE_MATCH PATCH PATCH_MATCH patch_array BUILT_MODULE_NAME built_module_name BUILT_MODULE_LOCATION built_module_location DEST_MODULE_NAME dest_module_name DEST_MODULE_LOCATION dest_module_location STRIP strip AUTOINSTALL NO_WEAK_MODULES BUILD_DEPENDS_REBUILD OBSOLETE_BY CLEAN REMAKE_INITRD MODULES_CONF MODULES_CONF_OBSOLETES MODULES_CONF_ALIAS_TYPE MODULES_CONF_OBSOLETE_ONLY";

/// The bash program that answers for one pair. Arguments: the dkms version
/// as three numbers, `kernelver`, `arch`, `kernel_source_dir`,
/// `kernel_config`, `module`, `module_version`, the variable list, then the
/// files to source. It prints `excluded` or `builds`, or `unfinished` when
/// the subshell that sources a file died (a dkms.conf that exhausts the
/// memory limit must not read as one that sets nothing).
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
    ) || { echo unfinished; exit 0; }
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
            // dkms would go on with nothing set and fail on the missing
            // directives; what it would build is unknown, not "everything".
            "unfinished" => Verdict::Undecided(
                "bash did not finish sourcing it (the memory limit, a signal or an exit)".into(),
            ),
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
            let _ = rustix::process::kill_process_group(p, rustix::process::Signal::Kill);
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
