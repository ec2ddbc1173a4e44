//! Command-line interface: the clap definitions (also the source of the man
//! page) and the dispatch to the library. This is the one place that prints
//! and turns errors into exit codes.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::apt_hook::{self, AptAction, AptChange};
use crate::change::Change;
use crate::config::Config;
use crate::inventory::Inventory;
use crate::plan::{PairState, Plan, Rebuild};
use crate::rebuild::{Executor, Outcome, PairResult};
use crate::report::{self, PREFIX};
use crate::root::Root;
use crate::state::{QueuedPair, State};
use crate::{apt_run, hook, plan};

/// Exit status of usage errors and unreadable input.
pub const EXIT_USAGE: i32 = 2;

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
  /var/lib/dkms-hook/        state: dpkg.log cursor, queue, failures, backups, logs, lock
  /var/log/dkms-hook.log     one line per rebuild, skip or failure
  /etc/apt/apt.conf.d/80dkms-hook, /etc/dpkg/dpkg.cfg.d/dkms-hook, /etc/kernel/*.d/dkms-hook   the hooks

Environment:
  DKMS_HOOK_ROOT     like --root
  DKMS_HOOK_SUSPEND  set to 1 to make every hook do nothing (the cursor stays)
  DKMS_HOOK_LOG      debug output, env_logger syntax (e.g. debug)
  DKMS_HOOK_DKMS     the dkms program to run (a stand-in, for tests)

Exit status:
  0 success; the hooks (post-invoke, apt-json-hook, pre-install-pkgs, kernel-hook) always exit 0
  1 replay, sync or retry: a rebuild failed
  2 usage error or unreadable input"
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
    /// Show every installed kernel × dkms module: fresh, stale, failed, missing, no-headers.
    Status(JsonArg),
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
        /// header_postinst, postinst or prerm.
        #[arg(value_parser = ["header_postinst", "postinst", "prerm"])]
        phase: String,
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

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
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
            writeln!(
                buf,
                "{PREFIX} {}: {}",
                rec.level().as_str().to_lowercase(),
                rec.args()
            )
        })
        .try_init();
}

/// Parse arguments, run, and return the exit status.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { 0 };
        }
    };
    init_logging(cli.verbose);
    let root = Root::new(cli.root.clone().unwrap_or_else(|| PathBuf::from("/")));
    let result = match &cli.command {
        Command::Replay(a) => replay(&root, a),
        Command::PostInvoke => Ok(post_invoke(&root)),
        Command::Status(a) => status(&root, a.json),
        Command::Sync(a) => sync(&root, a.json),
        Command::Retry(a) => retry(&root, a.json),
        Command::AptJsonHook(a) => Ok(apt_json_hook(&root, a.json)),
        Command::PreInstallPkgs(a) => Ok(pre_install_pkgs(&root, a.json)),
        Command::KernelHook { phase, kernel, .. } => Ok(kernel_hook(&root, phase, kernel)),
        Command::Init => init(&root),
        Command::Man => man_page(&mut std::io::stdout().lock())
            .map(|()| 0)
            .map_err(Into::into),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "dkms-hook", &mut std::io::stdout());
            Ok(0)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{PREFIX} {e:#}");
            EXIT_USAGE
        }
    }
}

fn load_config(root: &Root) -> Config {
    Config::load(root).unwrap_or_else(|e| {
        eprintln!("{PREFIX} {e}; using defaults");
        Config::default()
    })
}

fn print_plan(p: &Plan, json: bool, verb: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", report::to_json_string(&report::plan_json(p)))?;
    } else if p.is_empty() {
        writeln!(out, "{PREFIX} nothing to rebuild")?;
    } else {
        for l in report::plan_lines(p, verb) {
            writeln!(out, "{l}")?;
        }
    }
    Ok(())
}

/// Print each result as it happens (apt's output shows progress) and to
/// /var/log/dkms-hook.log; return the exit status (1 if any failed).
fn execute(state: &State, cfg: &Config, print: bool) -> anyhow::Result<(i32, Vec<PairResult>)> {
    let exec = Executor::new(state, cfg)?;
    let quiet = cfg.quiet;
    let results = exec.run_queue(&|r| {
        let line = report::result_line(r);
        state.log_line(&line);
        let is_failure = matches!(r.outcome, Outcome::Failed { .. });
        if print && (is_failure || !quiet) {
            eprintln!("{PREFIX} {line}");
        }
    })?;
    let failed = results
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Failed { .. }));
    Ok((i32::from(failed), results))
}

fn replay(root: &Root, a: &ReplayArgs) -> anyhow::Result<i32> {
    let cfg = load_config(root);
    if a.dry_run {
        let changes = hook::read_logs(root, &a.logs).context("cannot replay")?;
        let p = hook::plan_changes(root, &changes, &cfg);
        print_plan(&p, a.json, "would rebuild")?;
        return Ok(0);
    }
    let state = State::new(root);
    let _lock = state.lock()?;
    let p = hook::collect_from_logs(root, &state, &cfg, &a.logs).context("cannot replay")?;
    for w in &p.warnings {
        eprintln!("{PREFIX} warning: {w}");
    }
    let (code, results) = execute(&state, &cfg, !a.json)?;
    if a.json {
        println!(
            "{}",
            report::to_json_string(&report::results_json(&p, &results))
        );
    } else if results.is_empty() {
        println!("{PREFIX} nothing to rebuild");
    }
    Ok(code)
}

/// The hook: never fails apt. Every error becomes one line on stderr.
fn post_invoke(root: &Root) -> i32 {
    if hook::suspended() {
        return 0;
    }
    let run = || -> anyhow::Result<()> {
        let cfg = load_config(root);
        let state = State::new(root);
        let _lock = state.lock()?;
        let p = hook::collect_from_cursor(root, &state, &cfg)?;
        for w in &p.warnings {
            eprintln!("{PREFIX} warning: {w}");
        }
        if !state.queue()?.pending.is_empty() {
            execute(&state, &cfg, true)?;
        }
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("{PREFIX} {e:#}");
    }
    0
}

fn status(root: &Root, json: bool) -> anyhow::Result<i32> {
    let cfg = load_config(root);
    let state = State::new(root);
    let inv = Inventory::full(root);
    let failures = state.failures().unwrap_or_else(|e| {
        eprintln!("{PREFIX} {e}");
        Default::default()
    });
    let failed: Vec<_> = failures
        .failed
        .iter()
        .map(|f| (f.module.clone(), f.version.clone(), f.kernel.clone()))
        .collect();
    let rows = plan::assess(&inv, &cfg, &failed);
    let queued = state.queue().map(|q| q.pending).unwrap_or_default();
    if json {
        println!(
            "{}",
            report::to_json_string(&report::status_json(
                &rows,
                &failures.failed,
                &queued,
                &inv.warnings
            ))
        );
        return Ok(0);
    }
    for l in report::status_lines(&rows, &failures.failed, &queued, &inv.warnings) {
        println!("{l}");
    }
    Ok(0)
}

fn sync(root: &Root, json: bool) -> anyhow::Result<i32> {
    let cfg = load_config(root);
    let state = State::new(root);
    let _lock = state.lock()?;
    let inv = Inventory::full(root);
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
    finish_run(&state, &cfg, &p, json)
}

fn retry(root: &Root, json: bool) -> anyhow::Result<i32> {
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
    finish_run(&state, &cfg, &Plan::default(), json)
}

fn finish_run(state: &State, cfg: &Config, p: &Plan, json: bool) -> anyhow::Result<i32> {
    let (code, results) = execute(state, cfg, !json)?;
    if json {
        println!(
            "{}",
            report::to_json_string(&report::results_json(p, &results))
        );
    } else if results.is_empty() {
        println!("{PREFIX} nothing to rebuild");
    }
    Ok(code)
}

/// Print the forecast for apt's planned changes; empty output when there is
/// nothing to say.
fn print_forecast(root: &Root, changes: &[AptChange], json: bool) -> bool {
    let cfg = load_config(root);
    let planned: Vec<Change> = changes.iter().filter_map(apt_change).collect();
    let inv = Inventory::for_changes(root, &planned);
    let p = plan::forecast(&planned, &inv, &cfg);
    if json {
        println!("{}", report::to_json_string(&report::plan_json(&p)));
        return true;
    }
    let lines = report::forecast_lines(&p);
    for l in &lines {
        println!("{l}");
    }
    !lines.is_empty()
}

fn apt_change(c: &AptChange) -> Option<Change> {
    let package = crate::dpkg::PackageName::new(&c.package).ok()?;
    let old = c.old.as_deref().and_then(|v| v.parse().ok());
    let new = match c.action {
        AptAction::Remove | AptAction::Purge => None,
        _ => Some(c.new.as_deref()?.parse().ok()?),
    };
    Some(Change::planned(package, c.architecture.clone(), old, new))
}

/// An fd number from the environment (apt passes its sockets and pipes so).
fn env_fd(var: &str) -> Option<std::os::fd::OwnedFd> {
    let n: i32 = std::env::var(var).ok()?.trim().parse().ok()?;
    if n < 0 || rustix::io::fcntl_getfd(unsafe { std::os::fd::BorrowedFd::borrow_raw(n) }).is_err()
    {
        return None;
    }
    // Safety: apt handed this open fd to us alone.
    Some(unsafe { std::os::fd::FromRawFd::from_raw_fd(n) })
}

fn apt_json_hook(root: &Root, json: bool) -> i32 {
    if hook::suspended() {
        return 0;
    }
    let Some(fd) = env_fd("APT_HOOK_SOCKET") else {
        log::debug!("APT_HOOK_SOCKET is not an open fd; nothing to do");
        return 0;
    };
    let stream = std::os::unix::net::UnixStream::from(fd);
    match apt_hook::serve_json_hook(stream) {
        Ok(session) if session.should_warn() => {
            if print_forecast(root, &session.changes, json) {
                apt_run::mark_warned(root);
            }
        }
        Ok(_) => {}
        Err(e) => log::debug!("apt JSON hook: {e}"),
    }
    0
}

fn pre_install_pkgs(root: &Root, json: bool) -> i32 {
    if hook::suspended() {
        return 0;
    }
    let parsed = match env_fd("APT_HOOK_INFO_FD") {
        Some(fd) => {
            apt_hook::parse_pre_install_reader(std::io::BufReader::new(std::fs::File::from(fd)))
        }
        None => apt_hook::parse_pre_install_reader(std::io::stdin().lock()),
    };
    match parsed {
        Ok(p) if apt_run::already_warned(root) => {
            log::debug!("the JSON hook already warned ({} changes)", p.changes.len())
        }
        Ok(p) => {
            print_forecast(root, &p.changes, json);
        }
        Err(e) => log::debug!("Pre-Install-Pkgs: {e}"),
    }
    0
}

fn kernel_hook(root: &Root, phase: &str, kernel: &str) -> i32 {
    if hook::suspended() {
        return 0;
    }
    let k = match crate::kernel::KernelRelease::new(kernel) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{PREFIX} {e}");
            return 0;
        }
    };
    let state = State::new(root);
    state.log_line(&format!("kernel-hook {phase} {k}"));
    if phase == "prerm" {
        if let Err(e) = state.forget_kernel(k.as_str()) {
            eprintln!("{PREFIX} {e}");
        }
        return 0;
    }
    let inv = Inventory::full(root);
    for w in plan::kernel_warnings(&inv, &k) {
        eprintln!("{PREFIX} WARNING: {w}");
    }
    0
}

fn init(root: &Root) -> anyhow::Result<i32> {
    let state = State::new(root);
    let _lock = state.lock()?;
    if state.cursor().ok().flatten().is_none() {
        let log = root
            .resolve(hook::DPKG_LOG)
            .unwrap_or_else(|_| root.host(hook::DPKG_LOG));
        if let Some(c) = crate::state::cursor_at_end(&log) {
            state.save_cursor(&c)?;
        }
    }
    Ok(0)
}

/// dkms-hook(8): clap_mangen's sections for the program, and one entry per
/// command in a COMMANDS section (clap_mangen would point to one page per
/// command, which we do not ship).
fn man_page(out: &mut dyn Write) -> std::io::Result<()> {
    use clap::CommandFactory;
    let esc = |t: &str| {
        t.replace('\\', "\\e")
            .replace('-', "\\-")
            .replace("\n.", "\n\\&.")
    };
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone()).section("8");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    writeln!(out, ".SH COMMANDS")?;
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        let mut sub = sub
            .clone()
            .bin_name(format!("dkms-hook {}", sub.get_name()));
        let usage = sub.render_usage().to_string();
        writeln!(out, ".TP\n.B {}", esc(usage.trim_start_matches("Usage: ")))?;
        let about = sub
            .get_long_about()
            .or(sub.get_about())
            .map(|a| a.to_string())
            .unwrap_or_default();
        writeln!(out, "{}", esc(&about))?;
        for arg in sub.get_arguments().filter(|a| {
            !a.is_hide_set()
                && a.get_id() != "help"
                && a.get_id() != "root"
                && a.get_id() != "verbose"
        }) {
            let name = match arg.get_long() {
                Some(l) => format!("--{l}"),
                None => arg
                    .get_value_names()
                    .and_then(|v| v.first())
                    .map_or(arg.get_id().to_string(), |v| v.to_string()),
            };
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            writeln!(out, ".RS\n.TP\n.B {}\n{}\n.RE", esc(&name), esc(&help))?;
        }
    }
    if let Some(after) = cmd.get_after_long_help() {
        for block in after.to_string().split("\n\n") {
            let mut lines = block.lines();
            let title = lines
                .next()
                .unwrap_or_default()
                .trim_end_matches(':')
                .to_uppercase();
            writeln!(out, ".SH {}", esc(&title))?;
            for l in lines {
                writeln!(out, ".br\n{}", esc(l.trim()))?;
            }
        }
    }
    writeln!(out, ".SH SEE ALSO\ndkms(8), apt.conf(5), dpkg.cfg(5)")?;
    man.render_version_section(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn man_page_documents_every_command_on_one_page() {
        let mut page = Vec::new();
        super::man_page(&mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        assert!(
            page.starts_with(".ie") || page.contains(".TH dkms-hook 8"),
            "{}",
            &page[..200]
        );
        for cmd in [
            "replay",
            "post\\-invoke",
            "status",
            "sync",
            "retry",
            "apt\\-json\\-hook",
            "pre\\-install\\-pkgs",
            "kernel\\-hook",
        ] {
            assert!(
                page.contains(&format!(".B dkms\\-hook {cmd}")),
                "{cmd} missing"
            );
        }
        assert!(!page.contains("dkms-hook-replay(8)") && !page.contains("dkms\\-hook\\-replay(8)"));
        assert!(page.contains(".SH ENVIRONMENT") && page.contains("DKMS_HOOK_SUSPEND"));
    }
}
