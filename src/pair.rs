//! One pair's identity: a dkms module version built for one kernel and
//! architecture ([`PairId`]), and every path and file name that hangs off
//! it. The queue, the failures, the findings, the dkms tree reader, the
//! plan, the rebuild and preflight all name a pair through this one type,
//! so that `/var/lib/dkms/M/V/K/ARCH` and its relatives are spelled once.
//!
//! Serialized as the four fields `module`, `version`, `kernel` and `arch`
//! (flattened into the records that carry it): the state files keep the
//! shape they had before the type existed.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::name::{DkmsArch, KernelRelease, ModuleName, ModuleVersion};
use crate::state_dir::STATE_DIR;

/// The dkms tree, in-root.
pub const DKMS_TREE: &str = "/var/lib/dkms";

/// One module version × one kernel × dkms's architecture directory: what a
/// rebuild, a failure, a queue entry and a status row are about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PairId {
    pub module: ModuleName,
    pub version: ModuleVersion,
    pub kernel: KernelRelease,
    /// dkms's architecture directory (`x86_64`).
    pub arch: DkmsArch,
}

impl PairId {
    /// `M/V/K/ARCH`, relative: below the dkms tree and below `backups/`.
    pub fn rel_dir(&self) -> PathBuf {
        self.module_version_rel().join(self.kernel_arch_rel())
    }

    /// `M/V`, relative to the dkms tree: the module version's directory,
    /// which holds the `build/` all its kernels share.
    pub fn module_version_rel(&self) -> PathBuf {
        Path::new(self.module.as_str()).join(self.version.as_str())
    }

    /// `K/ARCH`, relative to [`Self::module_version_rel`].
    pub fn kernel_arch_rel(&self) -> PathBuf {
        Path::new(self.kernel.as_str()).join(self.arch.as_str())
    }

    /// `/var/lib/dkms/M/V/K/ARCH`, in-root: what dkms built for the pair.
    pub fn dkms_dir(&self) -> PathBuf {
        Path::new(DKMS_TREE).join(self.rel_dir())
    }

    /// `/var/lib/dkms/M/V/build/make.log`, in-root: the log of the last
    /// build of any kernel of this module version.
    pub fn make_log(&self) -> PathBuf {
        Path::new(DKMS_TREE)
            .join(self.module_version_rel())
            .join("build/make.log")
    }

    /// `/var/lib/dkms/M/kernel-K-ARCH`, in-root: dkms's link to the
    /// installed version.
    pub fn installed_link(&self) -> PathBuf {
        Path::new(DKMS_TREE)
            .join(self.module.as_str())
            .join(format!("kernel-{}-{}", self.kernel, self.arch))
    }

    /// `V/K/ARCH`: where [`Self::installed_link`] points when this version
    /// is the installed one.
    pub fn link_target(&self) -> String {
        format!("{}/{}/{}", self.version, self.kernel, self.arch)
    }

    /// The directory names of the pair's backup below
    /// `/var/lib/dkms-hook/backups`, outermost first.
    pub fn backup_chain(&self) -> [&str; 4] {
        [
            self.module.as_str(),
            self.version.as_str(),
            self.kernel.as_str(),
            self.arch.as_str(),
        ]
    }

    /// `/var/lib/dkms-hook/backups/M/V/K/ARCH`, in-root, for messages.
    pub fn backup_dir(&self) -> PathBuf {
        Path::new(STATE_DIR).join("backups").join(self.rel_dir())
    }

    /// `/var/lib/dkms-hook/previous/M/V/K/ARCH`, in-root, for messages:
    /// the build `dkms-hook rollback` puts back.
    pub fn previous_dir(&self) -> PathBuf {
        Path::new(STATE_DIR).join("previous").join(self.rel_dir())
    }

    /// Name of the kept copy of a failed build's make.log in `logs/`.
    pub fn kept_make_log_name(&self) -> String {
        format!("{}-{}-{}.make.log", self.module, self.version, self.kernel)
    }

    /// Name of the output of the last dkms run for the pair in `logs/`.
    pub fn run_log_name(&self) -> String {
        format!("{}-{}-{}.dkms.log", self.module, self.version, self.kernel)
    }

    /// `/var/lib/dkms-hook/logs/M-V-K.dkms.log`, in-root.
    pub fn run_log(&self) -> PathBuf {
        Path::new(STATE_DIR).join("logs").join(self.run_log_name())
    }

    /// Name of preflight's kept build of the pair: `M-V-K-ARCH`.
    pub fn kept_name(&self) -> String {
        format!(
            "{}-{}-{}-{}",
            self.module, self.version, self.kernel, self.arch
        )
    }

    /// `acpi-call/1.2.2 @ 6.1.0-50-amd64`.
    pub fn label(&self) -> String {
        format!("{}/{} @ {}", self.module, self.version, self.kernel)
    }
}

/// `acpi-call/1.2.2 for 6.1.0-50-amd64`, as messages name a pair.
impl fmt::Display for PairId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} for {}", self.module, self.version, self.kernel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> PairId {
        PairId {
            module: ModuleName::new("acpi-call").unwrap(),
            version: ModuleVersion::new("1.2.2").unwrap(),
            kernel: KernelRelease::new("6.1.0-50-amd64").unwrap(),
            arch: DkmsArch::new("x86_64").unwrap(),
        }
    }

    #[test]
    fn paths_hang_off_the_pair() {
        let p = id();
        assert_eq!(
            p.dkms_dir(),
            Path::new("/var/lib/dkms/acpi-call/1.2.2/6.1.0-50-amd64/x86_64")
        );
        assert_eq!(
            p.make_log(),
            Path::new("/var/lib/dkms/acpi-call/1.2.2/build/make.log")
        );
        assert_eq!(
            p.installed_link(),
            Path::new("/var/lib/dkms/acpi-call/kernel-6.1.0-50-amd64-x86_64")
        );
        assert_eq!(p.link_target(), "1.2.2/6.1.0-50-amd64/x86_64");
        assert_eq!(
            p.backup_dir(),
            Path::new("/var/lib/dkms-hook/backups/acpi-call/1.2.2/6.1.0-50-amd64/x86_64")
        );
        assert_eq!(
            p.backup_chain(),
            ["acpi-call", "1.2.2", "6.1.0-50-amd64", "x86_64"]
        );
        assert_eq!(
            p.module_version_rel().join(p.kernel_arch_rel()),
            p.rel_dir()
        );
        assert_eq!(
            p.kept_make_log_name(),
            "acpi-call-1.2.2-6.1.0-50-amd64.make.log"
        );
        assert_eq!(p.run_log_name(), "acpi-call-1.2.2-6.1.0-50-amd64.dkms.log");
        assert_eq!(
            p.run_log(),
            Path::new("/var/lib/dkms-hook/logs/acpi-call-1.2.2-6.1.0-50-amd64.dkms.log")
        );
        assert_eq!(p.kept_name(), "acpi-call-1.2.2-6.1.0-50-amd64-x86_64");
        assert_eq!(p.label(), "acpi-call/1.2.2 @ 6.1.0-50-amd64");
        assert_eq!(p.to_string(), "acpi-call/1.2.2 for 6.1.0-50-amd64");
    }

    /// Four plain fields, as the state files wrote them before; read back
    /// through the name checks.
    #[test]
    fn serializes_as_four_checked_fields() {
        let text = serde_json::to_string(&id()).unwrap();
        assert_eq!(
            text,
            r#"{"module":"acpi-call","version":"1.2.2","kernel":"6.1.0-50-amd64","arch":"x86_64"}"#
        );
        assert_eq!(serde_json::from_str::<PairId>(&text).unwrap(), id());
        let evil = text.replace("x86_64", "../../etc");
        assert!(serde_json::from_str::<PairId>(&evil).is_err());
        let short = r#"{"module":"m","version":"1","kernel":"k"}"#;
        assert!(
            serde_json::from_str::<PairId>(short).is_err(),
            "arch required"
        );
    }
}
