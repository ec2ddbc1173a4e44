//! Will an installed module load after the reboot? What its file says
//! (vermagic, an appended signature) and what the machine demands of it
//! (`CONFIG_MODULE_SIG`, `CONFIG_MODULE_SIG_FORCE`, Secure Boot, dkms's
//! signing key enrolled in the MOK list).
//!
//! Only reads: keys are never created, moved or deleted (dkms makes a
//! missing key itself, and a new key is one the firmware does not know).
//! Under `--root` mokutil, which asks the host's firmware, runs only when a
//! stand-in is named; the EFI variable is read inside the root.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io::BufReader;
use std::path::{Path, PathBuf};

mod facts_cache;
pub mod module_file;

pub use crate::model::{Check, ModuleFacts};
pub use facts_cache::FactsCache;
use module_file::read_module;
pub(crate) use module_file::MAX_VERMAGIC;
pub use module_file::{Compression, Limits, Refusal};

use crate::config::Config;
use crate::dkms::{installed_files, Pair};
use crate::inventory::Inventory;
use crate::kernel::{KernelRelease, MODULES_DIR};
use crate::model::{Assessment, PairState};
use crate::pair::PairId;
use crate::root::{open_regular, Root, CAP_SMALL};
use crate::state::{Failure, Finding, Problem};
use crate::tools::{Tools, MODINFO};
use crate::Error;

pub use crate::tools::MOKUTIL;
/// dkms's signing certificate on Debian (dkms 3.0 and 3.2).
pub const DKMS_MOK_PUB: &str = "/var/lib/dkms/mok.pub";
/// `SecureBoot` in the EFI global variable namespace: 4 bytes of
/// attributes, then 1 when Secure Boot is on.
const EFI_SECURE_BOOT: &str =
    "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-e398b6ce5aa4";
const EFI_DIR: &str = "/sys/firmware/efi";

/// Read a module file (`.ko`, `.ko.xz`, `.ko.zst`, `.ko.gz`; host path), in
/// one streaming pass within [`Limits::MODULE`], without following a link.
pub fn inspect(file: &Path) -> Result<ModuleFacts, Error> {
    read_facts(open_regular(file)?, file)
}

/// [`inspect`] of a file already opened (`file` names it and its kind). A
/// refusal of its content is [`Error::Unreadable`]; a failed read is
/// [`Error::Io`].
fn read_facts(f: std::fs::File, file: &Path) -> Result<ModuleFacts, Error> {
    let kind = Compression::of(file);
    let limits = Limits::MODULE;
    let refused = |r: Refusal| match r {
        Refusal::Io(e) => Error::io(file, e),
        r => Error::Unreadable {
            path: file.to_path_buf(),
            why: r.to_string(),
        },
    };
    // A plain module larger than the cap is refused unread (a sparse 4 GiB
    // `.ko` costs nothing).
    let size = f.metadata().map_err(|e| Error::io(file, e))?.len();
    if kind == Compression::None && size > limits.output {
        return Err(refused(Refusal::TooLarge { cap: limits.output }));
    }
    read_module(BufReader::with_capacity(64 << 10, f), kind, limits).map_err(refused)
}

/// What the kernel's configuration says about module signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SigConfig {
    /// `CONFIG_MODULE_SIG=y`: modules are checked (unsigned ones taint).
    pub sig: bool,
    /// `CONFIG_MODULE_SIG_FORCE=y`: unsigned modules are refused.
    pub force: bool,
}

/// The kernel's `.config` from its build tree, else `/boot/config-K`;
/// `None` when neither can be read.
pub fn sig_config(root: &Root, kernel: &KernelRelease) -> Option<SigConfig> {
    let candidates = [
        Path::new(MODULES_DIR)
            .join(kernel.as_str())
            .join("build/.config"),
        Path::new("/boot").join(format!("config-{kernel}")),
    ];
    let text = candidates
        .iter()
        .find_map(|p| root.read(p, 4 * CAP_SMALL).ok())?;
    let text = String::from_utf8_lossy(&text);
    let on = |key: &str| text.lines().any(|l| l.trim() == format!("{key}=y"));
    Some(SigConfig {
        sig: on("CONFIG_MODULE_SIG"),
        force: on("CONFIG_MODULE_SIG_FORCE"),
    })
}

/// What the machine's firmware and MOK list say, asked once per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Firmware {
    /// `None`: could not tell.
    pub secure_boot: Option<bool>,
    /// dkms's certificate is in the MOK list; `None` when there is no
    /// certificate or no mokutil to ask.
    pub key_enrolled: Option<bool>,
    /// The certificate is queued for enrolment at the next boot.
    pub key_pending: bool,
}

impl Firmware {
    /// `mokutil` is the stand-in or, on the host, the real one (`None`:
    /// not asked).
    pub fn read(root: &Root, mokutil: Option<&OsStr>) -> Firmware {
        let mut fw = Firmware {
            secure_boot: mokutil
                .and_then(|m| sb_state(&ask(root, m, &[OsStr::new("--sb-state")])?)),
            ..Firmware::default()
        };
        if fw.secure_boot.is_none() {
            fw.secure_boot = efi_secure_boot(root);
        }
        if let (Some(m), Ok(cert)) = (mokutil, root.resolve(DKMS_MOK_PUB)) {
            let answer = ask(root, m, &[OsStr::new("--test-key"), cert.as_os_str()]);
            if let Some(a) = answer {
                fw.key_pending = a.contains("already in the enrollment request");
                fw.key_enrolled = if a.contains("is already enrolled") {
                    Some(true)
                } else if a.contains("is not enrolled") || fw.key_pending {
                    Some(false)
                } else {
                    None
                };
            }
        }
        fw
    }

    /// The mokutil to ask: a stand-in, else the real one on the host only.
    pub fn mokutil(root: &Root, stand_in: Option<OsString>) -> Option<OsString> {
        stand_in.or_else(|| root.is_host_root().then(|| MOKUTIL.into()))
    }
}

/// What a read-only tool prints on stdout, and whether it exited 0; `None`
/// when it cannot run.
fn answer(root: &Root, program: &OsStr, args: &[&OsStr]) -> Option<(bool, String)> {
    let out = duct::cmd(program, args)
        .env("DKMS_HOOK_ROOT", root.dir())
        .stdin_null()
        .stderr_null()
        .stdout_capture()
        .unchecked()
        .run()
        .map_err(|e| log::debug!("cannot run {}: {e}", program.to_string_lossy()))
        .ok()?;
    Some((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// mokutil's answer, whatever its exit status (`--test-key` exits 1 for an
/// enrolled key).
fn ask(root: &Root, mokutil: &OsStr, args: &[&OsStr]) -> Option<String> {
    answer(root, mokutil, args).map(|(_, text)| text)
}

fn sb_state(answer: &str) -> Option<bool> {
    if answer.contains("SecureBoot enabled") {
        Some(true)
    } else if answer.contains("SecureBoot disabled") || answer.contains("doesn't support") {
        Some(false)
    } else {
        None
    }
}

/// The EFI variable (inside the root); no EFI at all means no Secure Boot.
fn efi_secure_boot(root: &Root) -> Option<bool> {
    match root.read(EFI_SECURE_BOOT, 64) {
        Ok(v) if v.len() == 5 => Some(v[4] == 1),
        Ok(_) => None,
        Err(_) if !root.exists(EFI_DIR) => Some(false),
        Err(_) => None,
    }
}

/// The places `status` looks for a pair's installed module: where dkms
/// installs (`kernel/` is the kernel's own, thousands of files).
const STATUS_DIRS: &[&str] = &["updates", "extra"];

/// [`crate::plan::assess`], then what the module files say: each installed
/// pair's module is read (through [`FactsCache`]); a vermagic naming another
/// kernel makes a fresh or stale pair `broken` (it would not load). With
/// `tools` (`status`, the textfile and the findings), also signers from
/// `modinfo`, and Secure Boot and dkms's key from `mokutil` (see
/// [`Firmware`]); without (`sync`, boot queueing stale and broken pairs),
/// nothing is run.
pub fn assess(
    root: &Root,
    inv: &Inventory,
    cfg: &Config,
    failed: &[Failure],
    tools: Option<&Tools>,
) -> Vec<Assessment> {
    let mut rows = crate::plan::assess(inv, cfg, failed);
    let mut cache = FactsCache::load(root);
    // Each kernel's installed files and config, read once for all its pairs.
    let mut installed: HashMap<KernelRelease, Vec<PathBuf>> = HashMap::new();
    let mut configs: HashMap<KernelRelease, Option<SigConfig>> = HashMap::new();
    let modinfo = tools.map(|t| t.modinfo.clone().unwrap_or_else(|| MODINFO.into()));
    let mokutil = tools.and_then(|t| Firmware::mokutil(root, t.mokutil.clone()));
    let mut fw = None;
    for r in rows.iter_mut() {
        let Some(pair) = r.pair.as_ref().filter(|p| p.installed) else {
            continue;
        };
        let files = installed
            .entry(pair.id.kernel.clone())
            .or_insert_with(|| installed_files(root, &pair.id.kernel, STATUS_DIRS));
        let Some(mut check) = check_pair(root, pair, files, &mut cache) else {
            continue;
        };
        if check.for_kernel(&r.id.kernel) == Some(false)
            && matches!(r.state, PairState::Fresh | PairState::Stale)
        {
            r.state = PairState::Broken;
            r.why = format!(
                "the installed module {} is for kernel {} (vermagic {:?}): it will not load; dkms-hook sync rebuilds it",
                check.file.display(),
                check.facts.release().unwrap_or_default(),
                check.facts.vermagic.as_deref().unwrap_or_default(),
            );
        }
        if let (Some(signed), Some(modinfo)) = (check.signed(), &modinfo) {
            let fw: &Firmware = fw.get_or_insert_with(|| Firmware::read(root, mokutil.as_deref()));
            if signed {
                let host = root.host(&check.file);
                check.signer = modinfo_field(root, modinfo, &host, "signer");
                check.key_enrolled = fw.key_enrolled;
                check.key_warning = key_warning(&r.id, Some(true), fw);
            }
            let cfg = *configs
                .entry(r.id.kernel.clone())
                .or_insert_with(|| sig_config(root, &r.id.kernel));
            check.will_not_load = unsigned_warning(&r.id, Some(signed), cfg, fw);
        }
        r.check = Some(check);
    }
    cache.save(root, rustix::process::geteuid().is_root());
    rows
}

/// The warnings of judged rows: each module that was refused unread, each
/// that will not load, and the unenrolled key once.
pub fn warnings(rows: &[Assessment]) -> Vec<String> {
    let checks = rows.iter().filter_map(|r| r.check.as_ref());
    let mut out: Vec<String> = checks
        .clone()
        .filter_map(|c| {
            let why = c.refused.as_ref()?;
            Some(format!(
                "the installed module {} was not read ({why}): its vermagic and signature are unknown",
                c.file.display()
            ))
        })
        .collect();
    out.extend(checks.clone().filter_map(|c| c.will_not_load.clone()));
    out.extend(checks.filter_map(|c| c.key_warning.clone()).take(1));
    out
}

/// What the login notice is to show of judged rows: broken pairs, modules
/// that will not load, and signed ones whose key is not enrolled.
pub fn findings(rows: &[Assessment]) -> Vec<Finding> {
    let now = crate::state::now_secs();
    rows.iter()
        .filter_map(|r| {
            let c = r.check.as_ref();
            let problem = if r.state == PairState::Broken {
                Problem::Broken
            } else if c.is_some_and(|c| c.will_not_load.is_some()) {
                Problem::Unsigned
            } else if c.is_some_and(|c| c.key_warning.is_some()) {
                Problem::KeyNotEnrolled
            } else {
                return None;
            };
            Some(Finding {
                id: r.id.clone(),
                problem,
                time: now,
            })
        })
        .collect()
}

/// The pair's installed module among its kernel's `installed` files (the
/// first of the names dkms built), judged.
fn check_pair(
    root: &Root,
    pair: &Pair,
    installed: &[PathBuf],
    cache: &mut FactsCache,
) -> Option<Check> {
    let names = &pair.built_names;
    let file = installed
        .iter()
        .find(|f| f.file_name().is_some_and(|n| names.iter().any(|x| x == n)))?
        .clone();
    let inroot = file
        .strip_prefix(root.dir())
        .map_or(file.clone(), |r| Path::new("/").join(r));
    let (facts, refused) = match cache.facts(&file, &inroot.to_string_lossy()) {
        Ok(facts) => (facts, None),
        Err(Error::Unreadable { why, .. }) => (ModuleFacts::default(), Some(why)),
        Err(e) => {
            log::debug!("{e}");
            return None;
        }
    };
    Some(Check {
        file: inroot,
        facts,
        refused,
        ..Check::default()
    })
}

/// `modinfo -F FIELD FILE` (host path); `None` when it cannot be told (no
/// modinfo, not a module, no such field). modinfo only reads the file it
/// is given, so it also runs under `--root`.
pub fn modinfo_field(root: &Root, modinfo: &OsStr, file: &Path, field: &str) -> Option<String> {
    let args = [OsStr::new("-F"), OsStr::new(field), file.as_os_str()];
    let (ok, text) = answer(root, modinfo, &args)?;
    let text = text.trim();
    (ok && !text.is_empty()).then(|| text.to_string())
}

/// The warning for an unsigned module where signatures are enforced: it
/// will not load after the reboot. `None` when it will, or when nothing can
/// be told.
pub fn unsigned_warning(
    pair: &PairId,
    signed: Option<bool>,
    cfg: Option<SigConfig>,
    fw: &Firmware,
) -> Option<String> {
    let checked = cfg.is_some_and(|c| c.sig);
    if signed != Some(false) || !checked {
        return None;
    }
    let why = if fw.secure_boot == Some(true) {
        "Secure Boot is on"
    } else if cfg.is_some_and(|c| c.force) {
        "the kernel enforces module signatures"
    } else {
        return None;
    };
    let PairId {
        module: m,
        version: v,
        kernel: k,
        ..
    } = pair;
    Some(format!(
        "{m}/{v} for {k} is NOT SIGNED and {why}: it will not load after the reboot. Let dkms sign it (with openssl installed it signs with /var/lib/dkms/mok.key), enrol the key (mokutil --import {DKMS_MOK_PUB}, reboot, enrol in MokManager), then run: dkms build --force -m {m} -v {v} -k {k} && dkms install --force -m {m} -v {v} -k {k}"
    ))
}

/// The warning for a module signed with dkms's key while that key is not
/// enrolled (or only queued for enrolment).
pub fn key_warning(pair: &PairId, signed: Option<bool>, fw: &Firmware) -> Option<String> {
    if signed != Some(true) || fw.key_enrolled != Some(false) {
        return None;
    }
    let what = pair.to_string();
    Some(if fw.key_pending {
        format!("{what} is signed with dkms's key {DKMS_MOK_PUB}, which is waiting to be enrolled: confirm it in MokManager at the next boot")
    } else {
        let sb = if fw.secure_boot == Some(true) {
            " (with Secure Boot on the module will not load)"
        } else {
            ""
        };
        format!("{what} is signed with dkms's key {DKMS_MOK_PUB}, which is not enrolled{sb}: run mokutil --import {DKMS_MOK_PUB}, reboot and enrol it in MokManager")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use module_file::tests::{gz, module_bytes, xz, zst};
    use module_file::SIGNATURE_MAGIC;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn signed_and_unsigned_plain_and_compressed() {
        let d = tempfile::tempdir().unwrap();
        for signed in [false, true] {
            let m = module_bytes("6.1.0-50-amd64", signed);
            for (name, bytes) in [
                ("m.ko", m.clone()),
                ("m.ko.xz", xz(&m)),
                ("m.ko.zst", zst(&m)),
                ("m.ko.gz", gz(&m)),
            ] {
                let facts = inspect(&write(d.path(), name, &bytes)).unwrap();
                assert_eq!(facts.signed, signed, "{name}");
                assert_eq!(facts.release(), Some("6.1.0-50-amd64"), "{name}");
            }
        }
    }

    #[test]
    fn garbage_is_no_module_and_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        for (name, bytes) in [
            ("a.ko", b"rebuilt acpi-call".to_vec()),
            ("b.ko.xz", b"not xz at all".to_vec()),
            ("c.ko.zst", vec![0x28, 0xb5, 0x2f, 0xfd, 0xff]),
            ("d.ko.gz", vec![0x1f, 0x8b, 0, 0]),
            ("e.ko", [&b"vermagic="[..], &[b'x'; 400]].concat()),
        ] {
            let p = write(d.path(), name, &bytes);
            if let Ok(facts) = inspect(&p) {
                assert_eq!(facts.vermagic, None, "{name}");
            }
        }
        // A trailer without a vermagic: no module, so not "signed".
        let p = write(d.path(), "f.ko", SIGNATURE_MAGIC);
        assert!(!inspect(&p).unwrap().signed);
    }

    #[test]
    fn a_link_is_not_followed() {
        let d = tempfile::tempdir().unwrap();
        let real = write(d.path(), "real.ko", &module_bytes("6.1.0-50-amd64", true));
        let link = d.path().join("link.ko");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(inspect(&link).is_err());
    }

    #[test]
    fn kernel_config_from_the_build_tree_or_boot() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::new(d.path());
        let k = KernelRelease::new("6.1.0-50-amd64").unwrap();
        assert_eq!(sig_config(&root, &k), None);
        std::fs::create_dir_all(d.path().join("boot")).unwrap();
        write(
            &d.path().join("boot"),
            "config-6.1.0-50-amd64",
            b"CONFIG_MODULE_SIG=y\n# CONFIG_MODULE_SIG_FORCE is not set\n",
        );
        assert_eq!(
            sig_config(&root, &k),
            Some(SigConfig {
                sig: true,
                force: false
            })
        );
        let build = d.path().join("lib/modules/6.1.0-50-amd64/build");
        std::fs::create_dir_all(&build).unwrap();
        write(
            &build,
            ".config",
            b"CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_FORCE=y\n",
        );
        assert_eq!(
            sig_config(&root, &k),
            Some(SigConfig {
                sig: true,
                force: true
            })
        );
    }

    #[test]
    fn secure_boot_from_the_efi_variable() {
        let d = tempfile::tempdir().unwrap();
        let root = Root::new(d.path());
        assert_eq!(
            efi_secure_boot(&root),
            Some(false),
            "no EFI, no Secure Boot"
        );
        let var = d.path().join(EFI_SECURE_BOOT.trim_start_matches('/'));
        std::fs::create_dir_all(var.parent().unwrap()).unwrap();
        assert_eq!(efi_secure_boot(&root), None, "EFI, variable unreadable");
        std::fs::write(&var, [6, 0, 0, 0, 1]).unwrap();
        assert_eq!(efi_secure_boot(&root), Some(true));
        std::fs::write(&var, [6, 0, 0, 0, 0]).unwrap();
        assert_eq!(efi_secure_boot(&root), Some(false));
    }

    fn key() -> &'static PairId {
        use crate::name::{DkmsArch, ModuleName, ModuleVersion};
        use std::sync::LazyLock;
        static ID: LazyLock<PairId> = LazyLock::new(|| PairId {
            module: ModuleName::new("m").unwrap(),
            version: ModuleVersion::new("1").unwrap(),
            kernel: KernelRelease::new("k").unwrap(),
            arch: DkmsArch::new("x86_64").unwrap(),
        });
        &ID
    }

    #[test]
    fn warnings_name_the_fix() {
        let on = Firmware {
            secure_boot: Some(true),
            key_enrolled: Some(false),
            key_pending: false,
        };
        let cfg = Some(SigConfig {
            sig: true,
            force: false,
        });
        let w = unsigned_warning(key(), Some(false), cfg, &on).unwrap();
        assert!(
            w.starts_with("m/1 for k is NOT SIGNED and Secure Boot is on"),
            "{w}"
        );
        assert!(w.ends_with("then run: dkms build --force -m m -v 1 -k k && dkms install --force -m m -v 1 -k k"), "{w}");
        let w = key_warning(key(), Some(true), &on).unwrap();
        assert!(
            w.contains("run mokutil --import /var/lib/dkms/mok.pub"),
            "{w}"
        );
        let off = Firmware {
            secure_boot: Some(false),
            ..Firmware::default()
        };
        assert_eq!(unsigned_warning(key(), Some(false), cfg, &off), None);
        let forced = Some(SigConfig {
            sig: true,
            force: true,
        });
        let w = unsigned_warning(key(), Some(false), forced, &off).unwrap();
        assert!(w.contains("enforces"), "{w}");
        assert_eq!(unsigned_warning(key(), None, cfg, &on), None);
        assert_eq!(key_warning(key(), Some(true), &off), None);
    }
}
