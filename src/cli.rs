//! The command line's dispatch to the library: the one place that prints
//! and turns errors into exit statuses. The definitions are in [`args`].

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::Parser;

pub mod args;
mod block;
mod deferred;
mod guard;
mod hooks;
mod preflight_command;
mod rollback;

use args::{exit_code, BadInput, EXIT_ATTENTION, EXIT_FAILED, EXIT_USAGE, HOOK_COMMANDS};
pub use args::{Cli, Command, Env, Phase, ReplayArgs, StatusArgs};

use crate::apt::warned;
use crate::config::Config;
use crate::inventory::Inventory;
use crate::plan::Plan;
use crate::rebuild::{Executor, Outcome, PairResult, Settled};
use crate::report::{self, printable, PREFIX};
use crate::root::Root;
use crate::state::{QueuedPair, State};
use crate::tools::Tools;
use crate::{followup, intake, verify};

/// Write one line to stdout, control characters escaped. Errors (a closed
/// pipe, a full disk) are ignored: output must never make a hook fail.
pub fn out(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{}", printable(line));
}

/// A JSON document on stdout: serde_json escapes control characters itself.
fn out_json(v: &impl serde::Serialize) {
    let _ = writeln!(std::io::stdout().lock(), "{}", report::to_json_string(v));
}

/// [`out`] for stderr.
pub fn err(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{}", printable(line));
}

/// A warning, an error or a failure on stderr. When stderr is the journal
/// (a systemd unit: `JOURNAL_STREAM` names it), the line carries the
/// sd-daemon prefix `<4>` so that journald files it at priority warning.
pub fn warn(line: &str) {
    let prefix = if stderr_is_journal() { "<4>" } else { "" };
    let _ = writeln!(std::io::stderr().lock(), "{prefix}{}", printable(line));
}

/// `JOURNAL_STREAM` is `DEV:INODE` of the stream systemd connected; it is
/// inherited by children whose stderr may be elsewhere, so compare.
fn stderr_is_journal() -> bool {
    static IS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *IS.get_or_init(|| {
        let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
            return false;
        };
        let Some((dev, ino)) = v.to_str().and_then(|v| v.split_once(':')) else {
            return false;
        };
        rustix::fs::fstat(std::io::stderr())
            .is_ok_and(|st| dev.parse() == Ok(st.st_dev) && ino.parse() == Ok(st.st_ino))
    })
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
/// errors must not fail apt, dpkg or run-parts either): the first word
/// that is neither an option nor the value of a global option that takes
/// one (`--root o5 kernel-hook bogus` is a hook).
fn is_hook_invocation(args: &[OsString]) -> bool {
    let cmd = <Cli as clap::CommandFactory>::command();
    let with_value: Vec<String> = cmd
        .get_arguments()
        .filter(|a| a.get_action().takes_values())
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    let mut words = args.iter().skip(1).map(|a| a.to_string_lossy());
    while let Some(w) = words.next() {
        if with_value.iter().any(|v| *v == w) {
            words.next();
        } else if !w.starts_with('-') {
            return HOOK_COMMANDS.contains(&w.as_ref());
        }
    }
    false
}

/// The root to work on: `/` by default; `--root DIR` must name an existing
/// directory (a relative one is taken from the current directory and made
/// absolute), or nothing is done.
fn root_of(dir: Option<&Path>) -> Result<Root, crate::Error> {
    let Some(dir) = dir else {
        return Ok(Root::new("/"));
    };
    let bad = |why: &str| crate::Error::Refused(format!("--root {}: {why}", dir.display()));
    if dir.as_os_str().is_empty() {
        return Err(bad("empty"));
    }
    let abs = std::path::absolute(dir).map_err(|e| bad(&e.to_string()))?;
    match std::fs::metadata(&abs) {
        Ok(m) if m.is_dir() => Ok(Root::new(abs)),
        Ok(_) => Err(bad("not a directory")),
        Err(e) => Err(bad(&e.to_string())),
    }
}

/// Parse arguments, run, and return the exit status.
pub fn main() -> i32 {
    let args: Vec<OsString> = std::env::args_os().collect();
    let hook = is_hook_invocation(&args);
    if hook {
        // A panic must not turn into exit 101 under apt: report it in one
        // line and exit 0 (the default hook prints the message first).
        return std::panic::catch_unwind(|| run(&args, hook)).unwrap_or_else(|_| {
            warn(&format!("{PREFIX} internal error; see the message above"));
            0
        });
    }
    run(&args, hook)
}

/// `dkms-hook CMD` exactly as the apt.conf.d lines run the hooks (up to
/// six times in one apt run, most of them with nothing to do): parsed
/// without clap, whose parser first builds the whole command tree with
/// its help (a tenth of such a run's time). Anything more (an option,
/// `DKMS_HOOK_ROOT`) goes through clap.
fn bare_hook(args: &[OsString]) -> Option<Cli> {
    if std::env::var_os("DKMS_HOOK_ROOT").is_some() {
        return None;
    }
    bare_hook_of(args.iter().skip(1).cloned())
}

/// [`bare_hook`] of these arguments (after the program's name).
fn bare_hook_of(mut args: impl Iterator<Item = std::ffi::OsString>) -> Option<Cli> {
    let word = args.next()?;
    if args.next().is_some() {
        return None;
    }
    let command = match word.to_str()? {
        "apt-json-hook" => Command::AptJsonHook(args::JsonArg { json: false }),
        "pre-install-pkgs" => Command::PreInstallPkgs(args::JsonArg { json: false }),
        "post-invoke" => Command::PostInvoke,
        _ => return None,
    };
    Some(Cli {
        root: None,
        verbose: false,
        command,
    })
}

fn run(args: &[OsString], hook: bool) -> i32 {
    let parsed = match bare_hook(args) {
        Some(cli) => Ok(cli),
        None => Cli::try_parse_from(args),
    };
    let cli = match parsed {
        Ok(c) => c,
        // `CMD --help` is no error: the help is printed, as for any command.
        Err(e) if hook && e.use_stderr() => {
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
    let root = match root_of(cli.root.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            warn(&format!("{PREFIX} {e}"));
            return if hook { 0 } else { EXIT_USAGE };
        }
    };
    let result = match &cli.command {
        Command::Replay(a) => replay(&root, &env, a),
        Command::PostInvoke => Ok(hooks::post_invoke(&root, &env)),
        Command::Boot => Ok(hooks::boot(&root, &env)),
        Command::AfterUnattendedUpgrades { pid, start } => {
            Ok(hooks::after_unattended_upgrades(&root, &env, *pid, *start))
        }
        Command::Motd => Ok(hooks::motd(&root)),
        Command::Status(a) => status(&root, &env, a),
        Command::Sync(a) => sync(&root, &env, a.json),
        Command::Retry(a) => retry(&root, &env, a),
        Command::Preflight(a) => Ok(preflight_command::command(&root, &env, a)),
        Command::PreflightSandbox => Ok(crate::preflight::sandbox::main()),
        Command::AptJsonHook(a) => Ok(hooks::apt_json_hook(&root, &env, a.json)),
        Command::PreInstallPkgs(a) => Ok(hooks::pre_install_pkgs(&root, &env, a.json)),
        Command::KernelGuard { phase, kernel, .. } => {
            Ok(guard::kernel_guard(&root, &env, *phase, kernel))
        }
        Command::KernelHook { phase, kernel, .. } => {
            Ok(hooks::kernel_hook(&root, &env, *phase, kernel))
        }
        Command::Rollback(a) => rollback::rollback(&root, &env, a),
        Command::Unhold(a) => rollback::unhold(&root, a),
        Command::Init => init(&root),
        Command::Man => crate::man_page::render(
            <Cli as clap::CommandFactory>::command(),
            args::STATUS_EXITS,
            &mut std::io::stdout().lock(),
        )
        .map(|()| 0)
        .or_else(ignore_closed_output),
        Command::Completions { shell } => crate::man_page::completions(
            <Cli as clap::CommandFactory>::command(),
            *shell,
            &mut std::io::stdout().lock(),
        )
        .map(|()| 0)
        .or_else(ignore_closed_output),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            warn(&format!("{PREFIX} {e:#}"));
            exit_code(&e)
        }
    }
}

/// A reader that stopped early (`| head`) is no error; anything else is,
/// such as a completion script that would not work.
fn ignore_closed_output(e: std::io::Error) -> anyhow::Result<i32> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(0)
    } else {
        Err(e.into())
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
        warn(&format!("{PREFIX} {e}; {what}"));
    }
    config
}

fn print_plan(p: &Plan, json: bool, verb: &str) {
    if json {
        out_json(&report::json::plan(p));
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
/// risks).
fn warn_once(root: &Root, warnings: &[String]) {
    for w in warned::unsaid(root, warnings) {
        warn(&format!("{PREFIX} warning: {w}"));
    }
}

/// Print each result as it happens (apt's output shows progress) and to
/// /var/log/dkms-hook.log; return the exit status (1 if any failed).
fn execute(
    state: &State,
    cfg: &Config,
    env: &Env,
    print: bool,
    run: followup::Run<'_>,
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
                p.id.module, p.id.version, p.id.kernel
            ));
        }
    };
    let ended = |r: &PairResult| {
        let line = report::result_line(r);
        report::log_line(state.root(), &line);
        let is_failure = matches!(r.outcome, Outcome::Failed { .. });
        if print && is_failure {
            warn(&format!("{PREFIX} {line}"));
        } else if print && !quiet {
            err(&format!("{PREFIX} {line}"));
        }
        say_notes(state, &r.notes, print);
    };
    let settled = |k: &Settled| {
        if k.initramfs {
            let line = format!("{}: initramfs refreshed", k.kernel);
            report::log_line(state.root(), &line);
            if print && !quiet {
                err(&format!("{PREFIX} {line}"));
            }
        }
        say_notes(state, &k.notes, print);
    };
    let results = exec.run_queue(&started, &ended, &settled)?;
    let failed = results
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Failed { .. }));
    export(state, cfg, &env.tools, &results);
    follow_up(state, cfg, env, &results, run);
    Ok((if failed { EXIT_FAILED } else { 0 }, results))
}

fn replay(root: &Root, env: &Env, a: &ReplayArgs) -> anyhow::Result<i32> {
    let cfg = load_config(root);
    let changes = intake::read_logs(root, &a.logs)
        .map_err(BadInput)
        .context("cannot replay")?;
    if a.dry_run {
        let p = intake::plan_changes(root, &changes, &cfg)?;
        print_plan(&p, a.json, "would rebuild");
        return Ok(0);
    }
    let state = State::new(root);
    let _lock = crate::rebuild::builds::lock(&state)?;
    let p = intake::plan_changes(root, &changes, &cfg)?;
    intake::enqueue(&state, &p)?;
    warn_once(root, &p.warning_lines());
    let run = followup::Run {
        name: "replay",
        scheduled: false,
    };
    let (code, results) = execute(&state, &cfg, env, !a.json, run)?;
    if a.json {
        out_json(&report::json::results(&p, &results));
    } else if results.is_empty() {
        out(&format!("{PREFIX} nothing to rebuild"));
    }
    Ok(code)
}

/// Warnings of a pair or a kernel: to the log, and to apt's output.
fn say_notes(state: &State, notes: &[String], print: bool) {
    for n in notes {
        report::log_line(state.root(), &format!("warning: {n}"));
        if print {
            warn(&format!("{PREFIX} warning: {n}"));
        }
    }
}

/// Mail what the administrator was not told yet (best effort: a mail that
/// cannot be sent is one warning line, never a failed run).
fn follow_up(
    state: &State,
    cfg: &Config,
    env: &Env,
    results: &[PairResult],
    run: followup::Run<'_>,
) {
    let done = followup::after_run(state, cfg, &env.tools, results, run);
    if let Some(line) = done.mailed {
        report::log_line(state.root(), &line);
    }
    for w in done.warnings {
        report::log_line(state.root(), &format!("warning: {w}"));
        warn(&format!("{PREFIX} warning: {w}"));
    }
}

/// Count the run and write node_exporter's textfile (best effort: fleet
/// metrics never fail a run).
fn export(state: &State, cfg: &Config, tools: &Tools, results: &[PairResult]) {
    if let Err(e) = crate::metrics::after_run(state, cfg, tools, results) {
        log::warn!("metrics: {e}");
    }
}

fn status(root: &Root, env: &Env, a: &StatusArgs) -> anyhow::Result<i32> {
    let cfg = load_config(root);
    let state = State::new(root);
    let inv = Inventory::full(root).map_err(BadInput)?;
    let failures = state.failures().unwrap_or_else(|e| {
        warn(&format!("{PREFIX} {e}"));
        Default::default()
    });
    let mut rows = verify::assess(root, &inv, &cfg, &failures.failed, Some(&env.tools));
    crate::rollback::annotate(&state, &mut rows);
    let queued = state.queue().map(|q| q.pending).unwrap_or_default();
    if rustix::process::geteuid().is_root() {
        if let Err(e) = crate::metrics::from_status(&state, &cfg, &rows, inv.running.as_ref()) {
            log::warn!("metrics: {e}");
        }
    }
    let mut warnings = inv.warnings.clone();
    warnings.extend(verify::warnings(&rows));
    let blocked = crate::preflight::blocked::standing(&state);
    let attention = !blocked.is_empty()
        || rows.iter().any(|r| match r.state {
            _ if r.check.as_ref().is_some_and(|c| c.will_not_load.is_some()) => true,
            s => s.needs_attention(),
        });
    if a.json {
        out_json(
            &report::json::status(&rows, &failures.failed, &queued, &warnings)
                .with_blocked(&blocked),
        );
    } else if !a.quiet {
        for l in report::status_lines(&rows, &queued, &warnings) {
            out(&l);
        }
        for b in &blocked {
            out(&report::blocked::status_line(b));
        }
    }
    Ok(if attention { EXIT_ATTENTION } else { 0 })
}

fn sync(root: &Root, env: &Env, json: bool) -> anyhow::Result<i32> {
    let cfg = load_config(root);
    let state = State::new(root);
    let _lock = crate::rebuild::builds::lock(&state)?;
    let inv = Inventory::full(root)?;
    let p = intake::queue_stale(&state, &inv, &cfg)?;
    let run = followup::Run {
        name: "sync",
        scheduled: false,
    };
    finish_run(&state, &cfg, env, &p, json, run)
}

/// `retry`; `--scheduled` (dkms-hook-retry.timer) retries each failure a
/// bounded number of times, and is quiet when there is nothing to retry.
fn retry(root: &Root, env: &Env, a: &args::RetryArgs) -> anyhow::Result<i32> {
    let cfg = load_config(root);
    let state = State::new(root);
    let _lock = crate::rebuild::builds::lock(&state)?;
    let run = followup::Run {
        name: "retry",
        scheduled: a.scheduled,
    };
    if !a.scheduled {
        intake::queue_failures(&state, |_| true)?;
        return finish_run(&state, &cfg, env, &Plan::default(), a.json, run);
    }
    let due = followup::schedule(&state)?;
    for id in &due.spent {
        err(&format!("{PREFIX} {}", followup::spent_line(id)));
    }
    if due.due.is_empty() {
        if a.json {
            out_json(&report::json::results(&Plan::default(), &[]));
        }
        return Ok(0);
    }
    intake::queue_failures(&state, |f| due.due.contains(&f.id))?;
    finish_run(&state, &cfg, env, &Plan::default(), a.json, run)
}

fn finish_run(
    state: &State,
    cfg: &Config,
    env: &Env,
    p: &Plan,
    json: bool,
    run: followup::Run<'_>,
) -> anyhow::Result<i32> {
    let (code, results) = execute(state, cfg, env, !json, run)?;
    if json {
        out_json(&report::json::results(p, &results));
    } else if results.is_empty() {
        out(&format!("{PREFIX} nothing to rebuild"));
    }
    Ok(code)
}

fn init(root: &Root) -> anyhow::Result<i32> {
    let state = State::new(root);
    let _lock = crate::rebuild::builds::lock(&state)?;
    intake::init_cursor(root, &state)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hook lines' bare `dkms-hook CMD` means what clap makes of it;
    /// anything more is left to clap.
    #[test]
    fn bare_hook_commands_parse_as_clap_parses_them() {
        let of = |a: &[&str]| bare_hook_of(a.iter().map(std::ffi::OsString::from));
        for cmd in ["apt-json-hook", "pre-install-pkgs", "post-invoke"] {
            let clap = Cli::try_parse_from(["dkms-hook", cmd]).unwrap();
            let bare = of(&[cmd]).unwrap();
            assert_eq!(format!("{bare:?}"), format!("{clap:?}"), "{cmd}");
        }
        for other in [
            &["post-invoke", "--json"][..],
            &["--root", "/x", "post-invoke"],
            &["-v", "post-invoke"],
            &["status"],
            &["kernel-hook", "postinst", "6.1.0-50-amd64"],
            &[],
        ] {
            assert!(of(other).is_none(), "{other:?}");
        }
    }
}
