//! The command line: the clap definitions (also the source of the man page
//! and the completions), the exit statuses, and the environment, read once.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::tools::Tools;

/// Exit status when a rebuild failed (replay, sync, retry).
pub const EXIT_FAILED: i32 = 1;
/// Exit status of `status` when something needs attention.
pub const EXIT_ATTENTION: i32 = 1;
/// Exit status of usage errors and unreadable input.
pub const EXIT_USAGE: i32 = 2;
/// Exit status when the work could not be done: the lock, the state
/// directory or another file could not be used.
pub const EXIT_TROUBLE: i32 = 3;
/// `status`'s exit statuses and when each is chosen (the man page lists
/// them).
pub const STATUS_EXITS: &[(i32, &str)] = &[
    (0, "all is well: every pair is fresh, excluded or undecided, and every installed module will load"),
    (EXIT_ATTENTION, "something needs attention: a pair in a state that needs it, a module that will not load after the reboot, or an upgrade that preflight = block stopped (while the block stands)"),
    (EXIT_USAGE, "the system could not be read, or a usage error"),
];

/// How long `kernel-hook prerm` waits for a running rebuild before it leaves
/// its request to the next run.
pub const PRERM_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The exit status of `pre-install-pkgs` when `preflight = block` stops
/// apt; the apt.conf.d line lets only this one through.
pub const EXIT_BLOCK: i32 = 100;

/// The commands apt, dpkg and run-parts call: they exit 0 whatever happens.
pub const HOOK_COMMANDS: &[&str] = &[
    "post-invoke",
    "boot",
    "motd",
    "apt-json-hook",
    "pre-install-pkgs",
    "kernel-hook",
    "kernel-guard",
    "after-unattended-upgrades",
];

/// The environment, read once here and passed down.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `DKMS_HOOK_SUSPEND=1`: every hook does nothing.
    pub suspended: bool,
    pub tools: Tools,
}

impl Env {
    pub fn from_process() -> Env {
        Env {
            suspended: std::env::var_os("DKMS_HOOK_SUSPEND").is_some_and(|v| v == "1"),
            tools: Tools::from_env(),
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "dkms-hook",
    version,
    about = "Rebuild DKMS modules when a kernel's build tree changes in place",
    long_about = "dkms-hook closes Debian bug #1040401: dkms rebuilds out-of-tree modules only when a new kernel \
or headers package appears, not when linux-kbuild-X.Y, a linux-headers-*-common or a kernel's headers are \
upgraded in place with the same release string. dkms-hook reads what dpkg changed, finds every installed \
kernel whose build tree those packages feed, and rebuilds each dkms module built before the change.",
    after_long_help = "\
Files:
  /etc/dkms/dkms-hook.conf   configuration; every key is listed, commented, at its default
  /var/lib/dkms-hook/        state: dpkg.log cursor, queue, failures, followup.json (failures mailed, scheduled retries made), findings (for the login notice), counters, the file-list and module-facts caches, backups/, previous/ (each module's build before its last rebuild, for rollback), holds.json, blocked.json (the upgrades preflight = block stopped, while each block stands), guarded.json and guarded/ (modules saved before dkms's kernel_preinst removes them), logs/, builds/ (running builds), lock
  /var/lib/prometheus/node-exporter/dkms_hook.prom   the node_exporter textfile (when that directory exists)
  /var/lib/dkms-hook/preflight/   preflight's kept logs and builds (kept/, used once by the rebuild after dpkg) and, while it runs, its private run directory
  /var/log/dkms-hook.log     one line per rebuild, skip or failure, block and end of a block
  /etc/apt/apt.conf.d/80dkms-hook, /etc/dkms/dkms-hook-preflight (apt's Pre-Install-Pkgs), /etc/dpkg/dpkg.cfg.d/dkms-hook, /etc/kernel/*.d/dkms-hook, /etc/kernel/{preinst,postinst}.d/00-dkms-hook-guard   the hooks

Environment:
  DKMS_HOOK_ROOT     like --root
  DKMS_HOOK_SUSPEND  set to 1 to make every hook do nothing (the cursor stays)
  DKMS_HOOK_LOG      debug output, env_logger syntax (e.g. debug)
  DKMS_HOOK_DKMS     the dkms program to run (a stand-in, for tests; needed under --root)
  DKMS_HOOK_UPDATE_INITRAMFS  the update-initramfs program to run (under --root it is skipped unless named)
  DKMS_HOOK_MODINFO  the modinfo program that reads a module's vermagic and signer (a stand-in, for tests)
  DKMS_HOOK_DEPMOD   the depmod program run once per kernel after its rebuilds (under --root it is skipped unless named)
  DKMS_HOOK_APT_GET  the apt-get preflight asks without DEB files (under --root it is refused unless named)
  DKMS_HOOK_MOKUTIL  the mokutil program asked about Secure Boot and dkms's key (a stand-in; under --root it is not run unless named)
  DKMS_HOOK_SENDMAIL    the sendmail program a failed rebuild is mailed through (under --root it is not run unless named)
  DKMS_HOOK_APT_CONFIG  the apt-config program asked for Unattended-Upgrade::Mail, ::Automatic-Reboot and ::InstallOnShutdown (under --root it is not run unless named)

Exit status:
  0 success; the hooks (post-invoke, apt-json-hook, pre-install-pkgs, kernel-hook, kernel-guard, boot, motd) exit 0
  100 pre-install-pkgs only, with preflight = block, when a module would not build: apt stops
  1 replay, sync or retry: a rebuild failed
  2 usage error or unreadable input; rollback or unhold refused (one line says why)
  3 the work could not be done: lock, state directory or another file unusable"
)]
pub struct Cli {
    /// Operate on the system below DIR instead of / (absolute symlinks resolve inside it); DIR must be an existing directory.
    #[arg(long, global = true, value_name = "DIR", env = "DKMS_HOOK_ROOT")]
    pub root: Option<PathBuf>,
    /// Print debug messages (or set DKMS_HOOK_LOG, env_logger syntax).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Rebuild what the changes in the given dpkg logs made stale.
    ///
    /// Reads dpkg.log files (plain, rotated or gzip'd, in any order) or apt's
    /// history.log, plans as the hook does and rebuilds each stale pair the
    /// safe way; with --dry-run it only shows the plan. Exits 1 when a
    /// rebuild failed, 2 when a log cannot be read as one.
    Replay(ReplayArgs),
    /// The apt and dpkg hook: rebuild what dpkg just made stale.
    ///
    /// apt's DPkg::Post-Invoke and dpkg's post-invoke: read dpkg.log from the
    /// cursor and rebuild the stale pairs, with a line when each starts and
    /// one when it ends. Under unattended-upgrades, which installs in
    /// several steps, the rebuild waits until its run ends, so that each
    /// pair is built once (not when it reboots by itself; see
    /// defer_unattended). Always exits 0.
    PostInvoke,
    /// Show each kernel × dkms module and whether it is current.
    ///
    /// One row per installed kernel × dkms module: fresh, stale, failed,
    /// missing, no-headers, excluded (its dkms.conf, evaluated as dkms
    /// evaluates it, keeps dkms from building it), undecided (under --root,
    /// a dkms.conf that is a script), broken (the installed module's
    /// vermagic names another kernel), and whether each module is signed
    /// and will load with Secure Boot; then one line per upgrade that
    /// preflight = block stopped, while the block stands (the package
    /// version, the pair that failed, when, its make.log; `blocked` in
    /// --json). Exits 0 when all is well, 1 when something needs attention
    /// (stale, failed, missing, no-headers, broken, a module that will not
    /// load after the reboot, a block; never excluded or undecided), 2 when
    /// the system could not be read: usable by
    /// monitoring. The `--json` object is a stable
    /// contract (configuration management facts): fields may be added,
    /// never renamed or removed.
    Status(StatusArgs),
    /// Rebuild every pair that `status` finds stale or broken.
    ///
    /// Also the pairs that went stale before dkms-hook was installed. Exits 1
    /// when a rebuild failed.
    Sync(JsonArg),
    /// Rebuild the pairs whose last rebuild failed.
    ///
    /// Run it once the cause (shown in the make.log that `status` names) is
    /// fixed. Exits 1 when a rebuild failed again. With --scheduled (run
    /// daily by dkms-hook-retry.timer) each failure is retried at most 3
    /// times, and the result is mailed.
    Retry(RetryArgs),
    /// Put a module's previous build back, and hold it.
    ///
    /// After each successful rebuild, dkms-hook keeps the build it replaced
    /// (keep_previous). rollback puts that build back (the dkms tree and
    /// the installed files, then depmod and, when the module is in it, the
    /// initramfs) and holds the pair: sync, retry and the hooks leave it
    /// alone until `dkms-hook unhold`, or until another version of the
    /// module is installed for the kernel. The build it replaced becomes
    /// the previous one, so a second rollback undoes the first. Refused,
    /// with one line saying why (exit 2), when no complete previous build
    /// is kept, when another version of the module is installed for the
    /// kernel, or when the previous build's vermagic is not that of the
    /// kernel's own modules (another kernel ABI).
    Rollback(RollbackArgs),
    /// Let a held module be rebuilt again.
    ///
    /// Releases the hold `rollback` set: `status` then judges the pair as
    /// usual, and `sync` rebuilds it when it is stale.
    Unhold(PairArgs),
    /// Test-build what an upgrade would make stale; changes nothing.
    ///
    /// Before anything is unpacked, every dkms module that the given
    /// packages (or, without any, what `apt-get upgrade` would install) make
    /// stale, against the build tree as it will be: in a sandbox (its own
    /// PID and mount namespaces, the system read-only, the packages as
    /// overlayfs layers), so nothing on the system changes. Exits 0
    /// when every pair builds (or is excluded), 1 when one fails, 2 when
    /// preflight cannot run here. It builds; it does not load the module.
    Preflight(PreflightArgs),
    /// preflight's sandbox, started by `preflight` only.
    #[command(hide = true, name = "preflight-sandbox")]
    PreflightSandbox,
    /// apt's JSON hook: say before the prompt what will be rebuilt.
    ///
    /// AptCli::Hooks::Install and ::Upgrade: say before the prompt which
    /// kernels' build trees the upgrade changes in place and which modules
    /// will be rebuilt, and of other risks (headers removed, a new kernel
    /// without headers). Reinstalls, which apt does not list to the hook,
    /// are read from apt's command line. Always exits 0.
    AptJsonHook(JsonArg),
    /// apt's Pre-Install-Pkgs hook: warn, test-build before dpkg.
    ///
    /// Run by /etc/dkms/dkms-hook-preflight as DPkg::Pre-Install-Pkgs
    /// (Version 3), after the download and before dpkg unpacks anything:
    /// says what the JSON hook of the same apt run did not (everything, for
    /// frontends without JSON hooks), then test-builds the affected modules
    /// against the downloaded packages (the preflight setting). Exits 0, or
    /// 100 with preflight = block when a module would not build. A block is
    /// recorded (status, the login notice, the log and the textfile say
    /// it); while it stands, the same package versions with the same inputs
    /// (every package feeding the kernel's tree, the module's source) are
    /// not test-built again but blocked at once from the record. It ends
    /// when a preflight builds the pair against that version, when that
    /// version or a newer one is installed, or when the kernel or the
    /// module version is gone. To go on where no variable can be set for
    /// one run (unattended-upgrades): fix the module and run dkms-hook
    /// preflight, set preflight=warn, or apt-mark hold the package.
    PreInstallPkgs(JsonArg),
    /// Kernel hooks: warn of kernels lacking headers or modules.
    ///
    /// Run from /etc/kernel/{header_postinst,postinst,prerm}.d: record the
    /// event, warn about a kernel without headers or modules, forget a
    /// removed kernel. Always exits 0.
    KernelHook {
        /// Which /etc/kernel directory ran it.
        #[arg(value_enum)]
        phase: Phase,
        /// The kernel release.
        kernel: String,
        /// The kernel image (postinst, prerm).
        image: Option<PathBuf>,
    },
    /// Kernel hooks before dkms's: keep modules that dkms removes.
    ///
    /// Run from /etc/kernel/{preinst,postinst}.d, before dkms's own hooks
    /// there (dkms 3.1.6 or later): in preinst.d, before `dkms
    /// kernel_preinst` removes every module of a kernel whose image is
    /// upgraded or reinstalled in place, save each built module (the dkms
    /// tree and the installed files); in postinst.d, before `dkms
    /// autoinstall` builds them again, put each one back, so that a module
    /// that no longer builds is not lost and the kernel package configures.
    /// Does nothing without dkms's preinst.d hook. Always exits 0.
    KernelGuard {
        /// Which /etc/kernel directory ran it.
        #[arg(value_enum)]
        phase: GuardPhase,
        /// The kernel release.
        kernel: String,
        /// The kernel image.
        image: Option<PathBuf>,
    },
    /// At boot: finish interrupted work, rebuild for this kernel.
    ///
    /// Run by dkms-hook.service: finish what an interrupted run left (the
    /// queue, a backup to restore, a leftover build), take in what dpkg.log
    /// holds since the last run, and rebuild the stale pairs of the running
    /// kernel. Always exits 0: it never fails the boot.
    Boot,
    /// The login notice: pairs that failed, wait or will not load.
    ///
    /// Run from /etc/update-motd.d/90-dkms-hook: one line per pair whose rebuild
    /// failed, that is still queued, broken, or will not load after the
    /// reboot (unsigned under Secure Boot, or signed with a key not
    /// enrolled), and per upgrade preflight = block stopped, from
    /// dkms-hook's state alone (a few file reads); nothing when all is
    /// well. Always exits 0.
    Motd,
    /// Started by post-invoke under unattended-upgrades: wait until that
    /// run (PID, started at START) ends, then rebuild what it queued.
    #[command(hide = true, name = "after-unattended-upgrades")]
    AfterUnattendedUpgrades { pid: u32, start: u64 },
    /// Create the state directory and start the dpkg.log cursor at the end (postinst).
    #[command(hide = true)]
    Init,
    /// Print the man page dkms-hook(8).
    #[command(hide = true)]
    Man,
    /// Print a shell completion script.
    #[command(hide = true)]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The /etc/kernel/*.d directory a kernel hook was run from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum Phase {
    HeaderPostinst,
    Postinst,
    Prerm,
}

/// The /etc/kernel/*.d directory the guard was run from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GuardPhase {
    Preinst,
    Postinst,
}

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// Print one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
    /// As dkms-hook-retry.timer runs it: only failures retried fewer than
    /// 3 times by it (each attempt counted), silent when there is none.
    #[arg(long)]
    pub scheduled: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
    /// Print nothing; only the exit status tells.
    #[arg(short, long, conflicts_with = "json")]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct PreflightArgs {
    /// Print one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
    /// Without DEB files: what `apt-get dist-upgrade` would install.
    #[arg(long)]
    pub dist_upgrade: bool,
    /// Print only the result lines, one per pair (as Pre-Install-Pkgs does).
    #[arg(long, hide = true)]
    pub results_only: bool,
    /// Pre-Install-Pkgs under preflight = block: a failure is recorded as
    /// a block, and a standing block of the same inputs answers at once.
    #[arg(long, hide = true)]
    pub blocking: bool,
    /// Pre-Install-Pkgs under unattended-upgrades: a pair already
    /// test-built in this run (MODULE/VERSION/KERNEL/ARCH) is left out.
    #[arg(long, hide = true, value_name = "PAIR")]
    pub tested: Vec<String>,
    /// The packages to test against (.deb files).
    #[arg(value_name = "DEB")]
    pub debs: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PairArgs {
    /// The module and its version, as `dkms status` shows them: MODULE/VERSION.
    #[arg(value_name = "MODULE/VERSION")]
    pub module: String,
    /// The kernel release.
    #[arg(value_name = "KERNEL")]
    pub kernel: String,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub pair: PairArgs,
    /// Why, in one line: shown by `status` while the pair is held.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Only show what would be rebuilt.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
    /// dpkg.log files (plain or .gz, any order) or apt history.log files.
    #[arg(required = true, value_name = "LOG")]
    pub logs: Vec<PathBuf>,
}

/// An input the user named (a log to replay) that cannot be read.
#[derive(Debug)]
pub struct BadInput(pub crate::Error);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BadInput {}

/// 2 for usage errors and input that cannot be read as what it should be,
/// 3 for everything that kept the work from being done.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<BadInput>().is_some() {
        return EXIT_USAGE;
    }
    match e.downcast_ref::<crate::Error>() {
        Some(
            crate::Error::Log { .. }
            | crate::Error::InvalidName { .. }
            | crate::Error::Unreadable { .. }
            | crate::Error::Refused(_),
        ) => EXIT_USAGE,
        _ => EXIT_TROUBLE,
    }
}
