//! Command-line interface: the clap definitions (also the source of the man
//! page) and the dispatch to the library. This is the one place that prints
//! and turns errors into exit codes.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::apt::{self, warned, AptChange};
use crate::change::Change;
use crate::config::Config;
use crate::inventory::Inventory;
use crate::kernel::KernelRelease;
use crate::plan::{PairState, Plan, Rebuild};
use crate::rebuild::{Executor, Outcome, PairResult, Tools};
use crate::report::{self, printable, PREFIX};
use crate::root::Root;
use crate::state::{QueuedPair, State};
use crate::{hook, plan};

/// Exit status when a rebuild failed (replay, sync, retry).
pub const EXIT_FAILED: i32 = 1;
/// Exit status of usage errors and unreadable input.
pub const EXIT_USAGE: i32 = 2;
/// Exit status when the work could not be done: the lock, the state
/// directory or another file could not be used.
pub const EXIT_TROUBLE: i32 = 3;
/// How long `kernel-hook prerm` waits for a running rebuild before it leaves
/// its request to the next run.
const PRERM_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The commands apt, dpkg and run-parts call: they exit 0 whatever happens.
const HOOK_COMMANDS: &[&str] = &[
    "post-invoke",
    "apt-json-hook",
    "pre-install-pkgs",
    "kernel-hook",
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
            tools: Tools {
                dkms: std::env::var_os("DKMS_HOOK_DKMS").filter(|v| !v.is_empty()),
                update_initramfs: std::env::var_os("DKMS_HOOK_UPDATE_INITRAMFS")
                    .filter(|v| !v.is_empty()),
            },
        }
    }
}

/// Write one line to stdout, control characters escaped. Errors (a closed
/// pipe, a full disk) are ignored: output must never make a hook fail.
pub fn out(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{}", printable(line));
}

/// A JSON document on stdout: serde_json escapes control characters itself.
fn out_json(v: &serde_json::Value) {
    let _ = writeln!(std::io::stdout().lock(), "{}", report::to_json_string(v));
}

/// [`out`] for stderr.
pub fn err(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{}", printable(line));
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
  /var/lib/dkms-hook/        state: dpkg.log cursor, queue, failures, backups/, logs/, builds/ (running builds), lock
  /var/log/dkms-hook.log     one line per rebuild, skip or failure
  /etc/apt/apt.conf.d/80dkms-hook, /etc/dpkg/dpkg.cfg.d/dkms-hook, /etc/kernel/*.d/dkms-hook   the hooks

Environment:
  DKMS_HOOK_ROOT     like --root
  DKMS_HOOK_SUSPEND  set to 1 to make every hook do nothing (the cursor stays)
  DKMS_HOOK_LOG      debug output, env_logger syntax (e.g. debug)
  DKMS_HOOK_DKMS     the dkms program to run (a stand-in, for tests; needed under --root)
  DKMS_HOOK_UPDATE_INITRAMFS  the update-initramfs program to run (under --root it is skipped unless named)

Exit status:
  0 success; the hooks (post-invoke, apt-json-hook, pre-install-pkgs, kernel-hook) always exit 0
  1 replay, sync or retry: a rebuild failed
  2 usage error or unreadable input
  3 the work could not be done: lock, state directory or another file unusable"
)]
pub struct Cli {
    /// Operate on the system below DIR instead of / (absolute symlinks resolve inside it).
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
    Replay(ReplayArgs),
    /// apt's DPkg::Post-Invoke and dpkg's post-invoke: read dpkg.log from the
    /// cursor and rebuild stale pairs. Always exits 0.
    PostInvoke,
    /// Show every installed kernel × dkms module: fresh, stale, failed,
    /// missing, no-headers, excluded. Exits 0 when all is well, 1 when
    /// something needs attention (stale, failed, missing, no-headers, or an
    /// excluded pair whose old module is still installed), 2 when the
    /// system could not be read: usable by monitoring.
    Status(StatusArgs),
    /// Rebuild every pair that `status` finds stale (also those that went
    /// stale before dkms-hook was installed).
    Sync(JsonArg),
    /// Rebuild the pairs whose last rebuild failed.
    Retry(JsonArg),
    /// apt's JSON hook (AptCli::Hooks::Install, ::Upgrade): warn before the
    /// prompt which kernels and modules the upgrade touches. Always exits 0.
    AptJsonHook(JsonArg),
    /// apt's DPkg::Pre-Install-Pkgs (Version 3) for frontends without JSON
    /// hooks; quiet if the JSON hook already spoke for this apt run. Always exits 0.
    PreInstallPkgs(JsonArg),
    /// /etc/kernel/{header_postinst,postinst,prerm}.d: record the event, warn
    /// about a kernel without headers or modules, forget a removed kernel. Always exits 0.
    KernelHook {
        /// Which /etc/kernel directory ran it.
        #[arg(value_enum)]
        phase: Phase,
        /// The kernel release.
        kernel: String,
        /// The kernel image (postinst, prerm).
        image: Option<PathBuf>,
    },
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

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
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

fn init_logging(verbose: bool) {
    let env =
        env_logger::Env::new().filter_or("DKMS_HOOK_LOG", if verbose { "debug" } else { "warn" });
    let _ = env_logger::Builder::from_env(env)
        .format(|buf, rec| {
            // One voice: warnings read `dkms-hook: warning:` wherever
            // they come from.
            let level = match rec.level() {
                log::Level::Warn => "warning".to_string(),
                l => l.as_str().to_lowercase(),
            };
            writeln!(
                buf,
                "{PREFIX} {level}: {}",
                printable(&rec.args().to_string())
            )
        })
        .try_init();
}

/// Whether the arguments name one of the hook commands (whose argument
/// errors must not fail apt, dpkg or run-parts either).
fn is_hook_invocation() -> bool {
    std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-') && !a.starts_with('/'))
        .is_some_and(|a| HOOK_COMMANDS.contains(&a.as_str()))
}

/// Parse arguments, run, and return the exit status.
pub fn main() -> i32 {
    let hook = is_hook_invocation();
    if hook {
        // A panic must not turn into exit 101 under apt: report it in one
        // line and exit 0 (the default hook prints the message first).
        return std::panic::catch_unwind(run).unwrap_or_else(|_| {
            err(&format!("{PREFIX} internal error; see the message above"));
            0
        });
    }
    run()
}

fn run() -> i32 {
    let hook = is_hook_invocation();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if hook => {
            let text = e.to_string();
            err(&format!(
                "{PREFIX} {}",
                text.lines()
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("error: ")
            ));
            return 0;
        }
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { 0 };
        }
    };
    init_logging(cli.verbose);
    let env = Env::from_process();
    let root = Root::new(cli.root.clone().unwrap_or_else(|| PathBuf::from("/")));
    let result = match &cli.command {
        Command::Replay(a) => replay(&root, &env, a),
        Command::PostInvoke => Ok(post_invoke(&root, &env)),
        Command::Status(a) => status(&root, a),
        Command::Sync(a) => sync(&root, &env, a.json),
        Command::Retry(a) => retry(&root, &env, a.json),
        Command::AptJsonHook(a) => Ok(apt_json_hook(&root, &env, a.json)),
        Command::PreInstallPkgs(a) => Ok(pre_install_pkgs(&root, &env, a.json)),
        Command::KernelHook { phase, kernel, .. } => Ok(kernel_hook(&root, &env, *phase, kernel)),
        Command::Init => init(&root),
        Command::Man => crate::man_page::render(&mut std::io::stdout().lock())
            .map(|()| 0)
            .or_else(ignore_closed_output),
        Command::Completions { shell } => {
            crate::man_page::completions(*shell, &mut std::io::stdout().lock())
                .map(|()| 0)
                .or_else(ignore_closed_output)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            err(&format!("{PREFIX} {e:#}"));
            exit_code(&e)
        }
    }
}

fn ignore_closed_output(_: std::io::Error) -> anyhow::Result<i32> {
    Ok(0)
}

/// An input the user named (a log to replay) that cannot be read.
#[derive(Debug)]
struct BadInput(crate::Error);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BadInput {}

/// 2 for usage errors and input that cannot be read as what it should be,
/// 3 for everything that kept the work from being done.
fn exit_code(e: &anyhow::Error) -> i32 {
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

/// The configuration; each bad line is reported once and ignored.
fn load_config(root: &Root) -> Config {
    let (config, errors) = Config::load(root);
    for e in errors {
        let what = match e {
            crate::Error::Config { .. } => "this line is ignored",
            _ => "using defaults",
        };
        err(&format!("{PREFIX} {e}; {what}"));
    }
    config
}

fn print_plan(p: &Plan, json: bool, verb: &str) {
    if json {
        out_json(&report::plan_json(p));
    } else if p.is_empty() {
        out(&format!("{PREFIX} nothing to rebuild"));
    } else {
        for l in report::plan_lines(p, verb) {
            out(&l);
        }
    }
}

/// Print each warning not yet printed in this apt run (the JSON hook
/// before the prompt, the kernel hooks and post-invoke all see the same
/// risks), and note it.
fn warn_once(root: &Root, warnings: &[String]) {
    if warnings.is_empty() {
        return;
    }
    let said = warned::said(root);
    let new: Vec<String> = warnings
        .iter()
        .filter(|w| !said.contains(&w.replace('\n', " ")))
        .cloned()
        .collect();
    for w in &new {
        err(&format!("{PREFIX} warning: {w}"));
    }
    warned::note_said(root, &new);
}

/// Print each result as it happens (apt's output shows progress) and to
/// /var/log/dkms-hook.log; return the exit status (1 if any failed).
fn execute(
    state: &State,
    cfg: &Config,
    env: &Env,
    print: bool,
) -> anyhow::Result<(i32, Vec<PairResult>)> {
    let exec = Executor::new(state, cfg, env.tools.clone())?;
    let quiet = cfg.quiet;
    let started = |p: &QueuedPair, n: usize, total: usize| {
        // apt shows nothing while a module builds (minutes for NVIDIA or
        // ZFS): say what is being built, in a line that reads well in
        // unattended-upgrades' logs too.
        if print && !quiet {
            err(&format!(
                "{PREFIX} rebuilding {}/{} for {} ({n} of {total})…",
                p.module, p.version, p.kernel
            ));
        }
    };
    let results = exec.run_queue(&started, &|r| {
        let line = report::result_line(r);
        state.log_line(&line);
        let is_failure = matches!(r.outcome, Outcome::Failed { .. });
        if print && (is_failure || !quiet) {
            err(&format!("{PREFIX} {line}"));
        }
        for n in &r.notes {
            state.log_line(&format!("warning: {n}"));
            if print {
                err(&format!("{PREFIX} warning: {n}"));
            }
        }
    })?;
    let failed = results
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Failed { .. }));
    Ok((if failed { EXIT_FAILED } else { 0 }, results))
}

fn replay(root: &Root, env: &Env, a: &ReplayArgs) -> anyhow::Result<i32> {
    let cfg = load_config(root);
    let changes = hook::read_logs(root, &a.logs)
        .map_err(BadInput)
        .context("cannot replay")?;
    if a.dry_run {
        let p = hook::plan_changes(root, &changes, &cfg)?;
        print_plan(&p, a.json, "would rebuild");
        return Ok(0);
    }
    let state = State::new(root);
    let _lock = state.lock()?;
    let p = hook::plan_changes(root, &changes, &cfg)?;
    hook::enqueue(&state, &p)?;
    warn_once(root, &p.warnings);
    let (code, results) = execute(&state, &cfg, env, !a.json)?;
    if a.json {
        out_json(&report::results_json(&p, &results));
    } else if results.is_empty() {
        out(&format!("{PREFIX} nothing to rebuild"));
    }
    Ok(code)
}

/// The hook: never fails apt. Every error becomes one line on stderr.
fn post_invoke(root: &Root, env: &Env) -> i32 {
    if env.suspended {
        return 0;
    }
    let run = || -> anyhow::Result<()> {
        let cfg = load_config(root);
        let state = State::new(root);
        let _lock = state.lock()?;
        let p = hook::collect_from_cursor(root, &state, &cfg)?;
        warn_once(root, &p.warnings);
        if !state.queue()?.pending.is_empty() {
            execute(&state, &cfg, env, true)?;
        }
        Ok(())
    };
    if let Err(e) = run() {
        err(&format!("{PREFIX} {e:#}"));
    }
    0
}

fn status(root: &Root, a: &StatusArgs) -> anyhow::Result<i32> {
    let cfg = load_config(root);
    let state = State::new(root);
    let inv = Inventory::full(root).map_err(BadInput)?;
    let failures = state.failures().unwrap_or_else(|e| {
        err(&format!("{PREFIX} {e}"));
        Default::default()
    });
    let rows = plan::assess(&inv, &cfg, &failures.failed);
    let queued = state.queue().map(|q| q.pending).unwrap_or_default();
    let attention = rows.iter().any(|r| match r.state {
        PairState::Fresh => false,
        PairState::Excluded => r.pair.as_ref().is_some_and(|p| p.installed),
        _ => true,
    });
    if a.json {
        out_json(&report::status_json(
            &rows,
            &failures.failed,
            &queued,
            &inv.warnings,
        ));
    } else if !a.quiet {
        for l in report::status_lines(&rows, &failures.failed, &queued, &inv.warnings) {
            out(&l);
        }
    }
    Ok(i32::from(attention))
}

fn sync(root: &Root, env: &Env, json: bool) -> anyhow::Result<i32> {
    let cfg = load_config(root);
    let state = State::new(root);
    let _lock = state.lock()?;
    let inv = Inventory::full(root)?;
    let rows = plan::assess(&inv, &cfg, &[]);
    let p = Plan {
        rebuilds: rows
            .iter()
            .filter(|r| r.state == PairState::Stale)
            .filter_map(|r| {
                Some(Rebuild {
                    pair: r.pair.clone()?,
                    because: r.because.clone(),
                })
            })
            .collect(),
        ..Plan::default()
    };
    hook::enqueue(&state, &p)?;
    finish_run(&state, &cfg, env, &p, json)
}

fn retry(root: &Root, env: &Env, json: bool) -> anyhow::Result<i32> {
    let cfg = load_config(root);
    let state = State::new(root);
    let _lock = state.lock()?;
    let failures = state.failures()?;
    let mut q = state.queue()?;
    for f in failures.failed {
        if !q
            .pending
            .iter()
            .any(|p| p.same_pair(&f.module, &f.version, &f.kernel))
        {
            q.pending.push(QueuedPair {
                module: f.module,
                version: f.version,
                kernel: f.kernel,
                arch: f.arch,
                because: f.because,
                stale_since: f.time,
            });
        }
    }
    state.save_queue(&q)?;
    finish_run(&state, &cfg, env, &Plan::default(), json)
}

fn finish_run(state: &State, cfg: &Config, env: &Env, p: &Plan, json: bool) -> anyhow::Result<i32> {
    let (code, results) = execute(state, cfg, env, !json)?;
    if json {
        out_json(&report::results_json(p, &results));
    } else if results.is_empty() {
        out(&format!("{PREFIX} nothing to rebuild"));
    }
    Ok(code)
}

/// Print the forecast for apt's planned changes (empty output when there is
/// nothing to say), and note its warnings as said for this apt run.
fn print_forecast(root: &Root, changes: &[AptChange], json: bool) {
    let cfg = load_config(root);
    let planned: Vec<Change> = changes.iter().filter_map(AptChange::to_change).collect();
    let inv = match Inventory::for_changes(root, &planned) {
        Ok(i) => i,
        Err(e) => {
            err(&format!("{PREFIX} {e}"));
            return;
        }
    };
    let p = plan::forecast(&planned, &inv, &cfg);
    if json {
        out_json(&report::plan_json(&p));
    } else {
        for l in report::forecast_lines(&p) {
            out(&l);
        }
    }
    warned::note_said(root, &p.warnings);
}

fn apt_json_hook(root: &Root, env: &Env, json: bool) -> i32 {
    if env.suspended {
        return 0;
    }
    let Some(fd) = apt::env_fd("APT_HOOK_SOCKET") else {
        log::debug!("APT_HOOK_SOCKET is not an open fd; nothing to do");
        return 0;
    };
    let stream = std::os::unix::net::UnixStream::from(fd);
    match apt::serve_json_hook(stream) {
        Ok(session) if session.should_warn() => {
            print_forecast(root, &session.changes, json);
        }
        Ok(_) => {}
        Err(e @ apt::AptHookError::TooLarge(_)) => err(&format!("{PREFIX} {e}")),
        Err(e) => log::debug!("apt JSON hook: {e}"),
    }
    0
}

fn pre_install_pkgs(root: &Root, env: &Env, json: bool) -> i32 {
    if env.suspended {
        return 0;
    }
    let parsed = match apt::env_fd("APT_HOOK_INFO_FD") {
        Some(fd) => apt::parse_pre_install_reader(std::io::BufReader::new(std::fs::File::from(fd))),
        None => apt::parse_pre_install_reader(std::io::stdin().lock()),
    };
    match parsed {
        Ok(p) if warned::already_warned(root) => {
            log::debug!("the JSON hook already warned ({} changes)", p.changes.len())
        }
        Ok(p) => {
            print_forecast(root, &p.changes, json);
        }
        Err(e) => err(&format!("{PREFIX} Pre-Install-Pkgs: {e}")),
    }
    0
}

fn kernel_hook(root: &Root, env: &Env, phase: Phase, kernel: &str) -> i32 {
    if env.suspended {
        return 0;
    }
    let k = match KernelRelease::new(kernel) {
        Ok(k) => k,
        Err(e) => {
            err(&format!("{PREFIX} {e}"));
            return 0;
        }
    };
    let state = State::new(root);
    let phase_name = match phase {
        Phase::HeaderPostinst => "header_postinst",
        Phase::Postinst => "postinst",
        Phase::Prerm => "prerm",
    };
    state.log_line(&format!("kernel-hook {phase_name} {k}"));
    if phase == Phase::Prerm {
        // Under the lock, so that no rebuild's backup or failure record of
        // this kernel is in flight; a long rebuild leaves the job to the
        // next locked run instead of holding up the kernel's removal.
        let r = match state.lock_within(PRERM_LOCK_WAIT) {
            Ok(Some(_lock)) => state.forget_kernel(&k),
            Ok(None) => {
                log::debug!("a rebuild is running; the next run forgets {k}");
                state.request_forget(&k)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            err(&format!("{PREFIX} {e}"));
        }
        return 0;
    }
    let inv = match Inventory::full(root) {
        Ok(i) => i,
        Err(e) => {
            err(&format!("{PREFIX} {e}"));
            return 0;
        }
    };
    warn_once(root, &plan::kernel_warnings(&inv, &k));
    0
}

fn init(root: &Root) -> anyhow::Result<i32> {
    let state = State::new(root);
    let _lock = state.lock()?;
    if state.cursor().ok().flatten().is_none() {
        if let Some(c) = root
            .resolve(hook::DPKG_LOG)
            .ok()
            .and_then(|log| crate::state::cursor_at_end(&log))
        {
            state.save_cursor(&c)?;
        }
    }
    Ok(0)
}
