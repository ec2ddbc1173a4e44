//! What a plan warns about ([`Warning`]): typed, so that callers can tell
//! one warning from another, and rendered by [`fmt::Display`] as the one
//! line the admin reads (the same line in apt's output, the log, the JSON
//! `warnings` and the "said once per apt run" record).

use std::fmt;

use debversion::Version;
use serde::{Serialize, Serializer};

use crate::dpkg::PackageName;
use crate::kernel::KernelRelease;
use crate::name::{ModuleName, ModuleVersion};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warning {
    /// What reading the machine turned up (an unsafe name in the dkms
    /// tree, an unreadable file list), as it was read.
    Machine(String),
    /// A kernel's headers went while dkms modules are installed for it.
    HeadersGone {
        kernel: KernelRelease,
        /// The headers package, or "its headers" when it cannot be told.
        package: String,
        modules: Vec<String>,
    },
    /// The kbuild unpacked for a kernel whose modules are rebuilt is of
    /// another version than the kernel's headers.
    KbuildSkew {
        kernel: KernelRelease,
        kbuild: PackageName,
        kbuild_version: Version,
        headers: PackageName,
        headers_version: Version,
    },
    /// apt is about to remove the headers of a kernel with dkms modules.
    HeadersRemoved {
        kernel: KernelRelease,
        headers: PackageName,
        /// `M/V` of each module installed for the kernel.
        modules: Vec<String>,
    },
    /// apt is about to install a kernel without its headers.
    NewKernelWithoutHeaders {
        kernel: KernelRelease,
        headers: String,
        modules: Vec<String>,
    },
    /// A kernel just installed has no headers, and modules of other kernels
    /// will not be built for it.
    KernelWithoutHeaders {
        kernel: KernelRelease,
        modules: Vec<String>,
    },
    /// dkms did not build a module installed for other kernels for this
    /// one (just installed).
    NotBuilt {
        kernel: KernelRelease,
        module: ModuleName,
        version: ModuleVersion,
    },
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Warning::Machine(text) => f.write_str(text),
            Warning::HeadersGone {
                kernel: k,
                package: pkg,
                modules,
            } => write!(
                f,
                "{k}: headers are gone ({pkg}): its dkms modules ({}) stay installed but can no longer be rebuilt for {k}; install {pkg} again to keep them current",
                modules.join(", ")
            ),
            Warning::KbuildSkew {
                kernel: k,
                kbuild,
                kbuild_version: kv,
                headers,
                headers_version: hv,
            } => {
                if kv > hv {
                    write!(
                        f,
                        "{k}: {kbuild} {kv} is newer than {headers} {hv}; a rebuild may fail, and the working module is then kept"
                    )
                } else {
                    write!(
                        f,
                        "{k}: {kbuild} {kv} is older than {headers} {hv}; modules built now use the older build tools, and a rebuild may fail (the working module is then kept)"
                    )
                }
            }
            Warning::HeadersRemoved {
                kernel: k,
                headers,
                modules,
            } => write!(
                f,
                "{k}: removing {headers} leaves this kernel without headers: its dkms modules ({}) stay installed but can no longer be rebuilt for {k}",
                modules.join(", ")
            ),
            Warning::NewKernelWithoutHeaders {
                kernel: k,
                headers,
                modules,
            } => write!(
                f,
                "{k}: the new kernel comes without headers: dkms modules ({}) will be missing for it; install {headers}",
                modules.join(", ")
            ),
            Warning::KernelWithoutHeaders { kernel: k, modules } => write!(
                f,
                "{k} has no headers: dkms modules ({}) will not be built for it; install linux-headers-{k}",
                modules.join(", ")
            ),
            Warning::NotBuilt {
                kernel: k,
                module: m,
                version: v,
            } => write!(
                f,
                "dkms did not build {m}/{v} for {k}; see /var/lib/dkms/{m}/{v}/build/make.log, then run: dkms install -m {m} -v {v} -k {k}"
            ),
        }
    }
}

/// In the JSON report, the line the admin reads.
impl Serialize for Warning {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The lines of `warnings`, for what keeps or compares them as text.
pub fn lines(warnings: &[Warning]) -> Vec<String> {
    warnings.iter().map(Warning::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts are those the admin has read so far, word for word.
    #[test]
    fn each_warning_reads_as_before() {
        let k = || KernelRelease::new("6.1.0-50-amd64").unwrap();
        let pkg = |n: &str| PackageName::new(n).unwrap();
        let v = |s: &str| s.parse::<Version>().unwrap();
        let mods = || vec!["acpi-call/1.2.2".to_string(), "zfs/2.1".to_string()];
        let cases = [
            (Warning::Machine("as read".into()), "as read".to_string()),
            (
                Warning::HeadersGone {
                    kernel: k(),
                    package: "linux-headers-6.1.0-50-amd64".into(),
                    modules: vec!["acpi-call".into()],
                },
                "6.1.0-50-amd64: headers are gone (linux-headers-6.1.0-50-amd64): its dkms modules (acpi-call) stay installed but can no longer be rebuilt for 6.1.0-50-amd64; install linux-headers-6.1.0-50-amd64 again to keep them current".into(),
            ),
            (
                Warning::KbuildSkew {
                    kernel: k(),
                    kbuild: pkg("linux-kbuild-6.1"),
                    kbuild_version: v("6.1.192-2"),
                    headers: pkg("linux-headers-6.1.0-50-amd64"),
                    headers_version: v("6.1.176-1"),
                },
                "6.1.0-50-amd64: linux-kbuild-6.1 6.1.192-2 is newer than linux-headers-6.1.0-50-amd64 6.1.176-1; a rebuild may fail, and the working module is then kept".into(),
            ),
            (
                Warning::KbuildSkew {
                    kernel: k(),
                    kbuild: pkg("linux-kbuild-6.1"),
                    kbuild_version: v("6.1.170-1"),
                    headers: pkg("linux-headers-6.1.0-50-amd64"),
                    headers_version: v("6.1.176-1"),
                },
                "6.1.0-50-amd64: linux-kbuild-6.1 6.1.170-1 is older than linux-headers-6.1.0-50-amd64 6.1.176-1; modules built now use the older build tools, and a rebuild may fail (the working module is then kept)".into(),
            ),
            (
                Warning::HeadersRemoved {
                    kernel: k(),
                    headers: pkg("linux-headers-6.1.0-50-amd64"),
                    modules: mods(),
                },
                "6.1.0-50-amd64: removing linux-headers-6.1.0-50-amd64 leaves this kernel without headers: its dkms modules (acpi-call/1.2.2, zfs/2.1) stay installed but can no longer be rebuilt for 6.1.0-50-amd64".into(),
            ),
            (
                Warning::NewKernelWithoutHeaders {
                    kernel: k(),
                    headers: "linux-headers-6.1.0-50-amd64".into(),
                    modules: mods(),
                },
                "6.1.0-50-amd64: the new kernel comes without headers: dkms modules (acpi-call/1.2.2, zfs/2.1) will be missing for it; install linux-headers-6.1.0-50-amd64".into(),
            ),
            (
                Warning::KernelWithoutHeaders {
                    kernel: k(),
                    modules: vec!["acpi-call".into()],
                },
                "6.1.0-50-amd64 has no headers: dkms modules (acpi-call) will not be built for it; install linux-headers-6.1.0-50-amd64".into(),
            ),
            (
                Warning::NotBuilt {
                    kernel: k(),
                    module: ModuleName::new("m").unwrap(),
                    version: ModuleVersion::new("1").unwrap(),
                },
                "dkms did not build m/1 for 6.1.0-50-amd64; see /var/lib/dkms/m/1/build/make.log, then run: dkms install -m m -v 1 -k 6.1.0-50-amd64".into(),
            ),
        ];
        for (w, text) in cases {
            assert_eq!(w.to_string(), text);
            assert_eq!(
                serde_json::to_string(&w).unwrap(),
                serde_json::to_string(&text).unwrap()
            );
        }
    }
}
