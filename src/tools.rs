//! The external programs dkms-hook runs, named once: their names, the
//! environment variables that name stand-ins for them (tests, `--root`),
//! and the dkms exit statuses the code tells apart. Each is run as an
//! argument vector (duct), never through a shell string.

use std::ffi::OsString;

/// dkms itself; `DKMS_HOOK_DKMS` names a stand-in (tests).
pub const DKMS: &str = "dkms";
/// `DKMS_HOOK_UPDATE_INITRAMFS` names a stand-in (tests, `--root`).
pub const UPDATE_INITRAMFS: &str = "update-initramfs";
/// Rebuilds `modules.dep` of one kernel; `DKMS_HOOK_DEPMOD` names a
/// stand-in (tests, `--root`).
pub const DEPMOD: &str = "depmod";
/// Reads a module's vermagic and signer (`.ko`, `.ko.xz`, `.ko.zst` alike).
pub const MODINFO: &str = "modinfo";
/// Asks the firmware about Secure Boot and the MOK list; `DKMS_HOOK_MOKUTIL`
/// names a stand-in (tests, `--root`).
pub const MOKUTIL: &str = "mokutil";
/// Copies trees with modes, links and times intact.
pub const CP: &str = "cp";
/// Unpacks and reads `.deb` files (preflight).
pub const DPKG_DEB: &str = "dpkg-deb";
/// Simulates upgrades and downloads packages (preflight without packages);
/// `DKMS_HOOK_APT_GET` names a stand-in (tests, `--root`).
pub const APT_GET: &str = "apt-get";
/// The `sendmail` interface every MTA provides, for the mail about a
/// failed rebuild (`-t -oi`: recipients from the headers, a lone `.` is
/// no end); `DKMS_HOOK_SENDMAIL` names a stand-in (tests, `--root`).
pub const SENDMAIL: &str = "/usr/sbin/sendmail";
/// Reads apt's configuration as apt does (`Unattended-Upgrade::Mail`);
/// `DKMS_HOOK_APT_CONFIG` names a stand-in (tests, `--root`).
pub const APT_CONFIG: &str = "apt-config";

/// dkms's exit status when `BUILD_EXCLUSIVE_*` keeps it from building.
pub const DKMS_EXIT_BUILD_EXCLUSIVE: i32 = 77;
/// dkms's exit status (3.2+) when the kernel's headers are missing.
pub const DKMS_EXIT_NO_HEADERS: i32 = 21;

/// The stand-ins named in the environment, read once at the top. Under
/// `--root` the real dkms, update-initramfs, depmod and mokutil would act on
/// the host, so they run there only as named stand-ins.
#[derive(Debug, Clone, Default)]
pub struct Tools {
    pub dkms: Option<OsString>,
    pub update_initramfs: Option<OsString>,
    pub modinfo: Option<OsString>,
    pub mokutil: Option<OsString>,
    pub depmod: Option<OsString>,
    /// `DKMS_HOOK_APT_GET`: a stand-in for apt-get in preflight's download
    /// mode (tests, `--root`).
    pub apt_get: Option<OsString>,
    /// `DKMS_HOOK_SENDMAIL`: a stand-in for sendmail (tests, `--root`).
    pub sendmail: Option<OsString>,
    /// `DKMS_HOOK_APT_CONFIG`: a stand-in for apt-config (tests, `--root`).
    pub apt_config: Option<OsString>,
}

impl Tools {
    /// The stand-ins this process's environment names (empty values are
    /// none).
    pub fn from_env() -> Tools {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        Tools {
            dkms: var("DKMS_HOOK_DKMS"),
            update_initramfs: var("DKMS_HOOK_UPDATE_INITRAMFS"),
            modinfo: var("DKMS_HOOK_MODINFO"),
            mokutil: var("DKMS_HOOK_MOKUTIL"),
            depmod: var("DKMS_HOOK_DEPMOD"),
            apt_get: var("DKMS_HOOK_APT_GET"),
            sendmail: var("DKMS_HOOK_SENDMAIL"),
            apt_config: var("DKMS_HOOK_APT_CONFIG"),
        }
    }
}

/// Make `c` start its own process group (so that a time limit kills the
/// whole group) and be killed when the thread that spawned it dies (so that
/// a killed dkms-hook leaves no build running). The caller waits for the
/// child on the thread that spawned it: `PR_SET_PDEATHSIG` follows the
/// death of that thread.
pub fn own_group_dying_with_us(c: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    c.process_group(0);
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no
    // memory of the parent.
    unsafe {
        c.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::Kill))
                .map_err(Into::into)
        });
    }
}

/// Make `c` a process that outlives us, untied: its own session (no
/// terminal's hangup or signals reach it) and none of the descriptors we
/// inherited (a pipe apt or unattended-upgrades reads to its end must not
/// stay open in it): each open one (listed now, in `/proc/self/fd`) is
/// marked close-on-exec in the child. Its standard streams are the
/// caller's to set.
pub fn detached(c: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let inherited: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    // SAFETY: setsid and fcntl are async-signal-safe; the list was made
    // before the fork and is only read; a descriptor that is not open (the
    // directory read's own) fails fcntl harmlessly.
    unsafe {
        c.pre_exec(move || {
            rustix::process::setsid()?;
            for &fd in &inherited {
                let fd = std::os::fd::BorrowedFd::borrow_raw(fd);
                if let Ok(flags) = rustix::io::fcntl_getfd(fd) {
                    let _ = rustix::io::fcntl_setfd(fd, flags | rustix::io::FdFlags::CLOEXEC);
                }
            }
            Ok(())
        });
    }
}

/// Wait for `handle` until `deadline`: its output, or `None` once the
/// deadline has passed with the child still running. duct 0.13 (Debian 13's)
/// has no timed wait: this polls, at most 50 ms behind the child's end.
pub fn wait_deadline(
    handle: &duct::Handle,
    deadline: std::time::Instant,
) -> std::io::Result<Option<&std::process::Output>> {
    let mut pause = std::time::Duration::from_millis(1);
    loop {
        if let Some(out) = handle.try_wait()? {
            return Ok(Some(out));
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(std::time::Duration::from_millis(50));
    }
}
