//! The entry points apt, dpkg, run-parts, systemd and pam_motd call: each
//! exits 0 whatever happens (`pre-install-pkgs` exits 100 only with
//! `preflight = block`), and every error becomes one line.

use super::args::{Env, Phase, PRERM_LOCK_WAIT};
use super::{
    deferred, err, execute, load_config, out, out_json, preflight_command, warn, warn_once,
};
use crate::apt::unattended::UnattendedRun;
use crate::apt::{self, once, warned, AptChange};
use crate::change::Change;
use crate::config::Config;
use crate::inventory::Inventory;
use crate::kernel::KernelRelease;
use crate::name::PackageName;
use crate::plan::Plan;
use crate::report::{self, PREFIX};
use crate::root::Root;
use crate::state::QueuedPair;
use crate::state::State;
use crate::{intake, plan};

/// The value, or `None` once the error is said in one line: a hook goes on
/// or stops quietly, it never fails its caller.
fn said<T>(r: Result<T, crate::Error>) -> Option<T> {
    r.map_err(|e| warn(&format!("{PREFIX} {e}"))).ok()
}

/// The hook: never fails apt. Every error becomes one line on stderr. The
/// second copy of it for the same dpkg run (python-apt lists it twice)
/// does nothing and says nothing. Under unattended-upgrades the rebuild
/// waits for its run to end ([`deferred`]).
pub(super) fn post_invoke(root: &Root, env: &Env) -> i32 {
    if env.suspended {
        return 0;
    }
    let once = once::step(root, once::Point::PostInvoke, once::post_invoke_input(root));
    if once.as_ref().is_some_and(once::Once::done_before) {
        log::debug!("post-invoke: this step's dpkg run was handled already");
        return 0;
    }
    let status = catch_up(root, env, Run::PostInvoke);
    if let Some(o) = once {
        o.note_done();
    }
    status
}

/// At boot: never fails the boot. Every error becomes one line (the journal).
pub(super) fn boot(root: &Root, env: &Env) -> i32 {
    catch_up(root, env, Run::Boot)
}

/// The waiter post-invoke started under unattended-upgrades: once that run
/// has ended, its queue is worked off (results in the log, and by mail).
pub(super) fn after_unattended_upgrades(root: &Root, env: &Env, pid: u32, start: u64) -> i32 {
    let Some(run) = UnattendedRun::of(root, pid, start) else {
        return 0;
    };
    deferred::wait_for(root, &run);
    // The record goes first: a post-invoke from here on starts a waiter of
    // its own (the run went on past the longest wait); one before has
    // queued its pairs under the lock this run takes next.
    run.end();
    catch_up(root, env, Run::AfterUnattended)
}

/// Which run catches up.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Run {
    /// Under unattended-upgrades (unless it reboots by itself) what is
    /// queued waits for the end of its run.
    PostInvoke,
    Boot,
    /// The waiter, after the run: its output goes nowhere but the log.
    AfterUnattended,
}

/// Under the lock: queue what dpkg.log holds since the cursor (and, at
/// boot, the stale pairs of the running kernel), then work off the queue,
/// which also finishes what a killed run left. Always 0.
fn catch_up(root: &Root, env: &Env, how: Run) -> i32 {
    if env.suspended {
        return 0;
    }
    let run = || -> anyhow::Result<()> {
        let cfg = load_config(root);
        let state = State::new(root);
        let lock = crate::rebuild::builds::lock(&state)?;
        // Modules dkms's kernel_preinst removed are back before the planner
        // looks at the dkms tree.
        super::guard::finish(&state, &lock, &cfg, env);
        let p = intake::queue_from_dpkg_log(root, &state, &cfg)?;
        warn_once(root, &p.warning_lines());
        if how == Run::Boot {
            intake::queue_stale(&state, &Inventory::running_kernel_only(root)?, &cfg)?;
        }
        let pending = state.queue()?.pending;
        let waits = how == Run::PostInvoke
            && !pending.is_empty()
            && deferred::deferral(root, &cfg, env)
                .is_some_and(|uu| wait_for_end(root, &uu, &pending));
        if !pending.is_empty() && !waits {
            let run = crate::followup::Run {
                name: match how {
                    Run::PostInvoke => "post-invoke",
                    Run::Boot => "boot",
                    Run::AfterUnattended => "unattended-upgrades",
                },
                scheduled: false,
            };
            execute(&state, &cfg, env, true, run)?;
        }
        super::block::tidy(&state);
        for line in crate::rollback::tidy(&state, &lock)? {
            report::log_line(root, &line);
            err(&format!("{PREFIX} {line}"));
        }
        Ok(())
    };
    if let Err(e) = run() {
        if how == Run::AfterUnattended {
            report::log_line(root, &format!("after unattended-upgrades: {e:#}"));
        }
        err(&format!("{PREFIX} {e:#}"));
    }
    0
}

/// Leave the queue to the waiter of `uu` (started now unless it runs), and
/// say so; `false` when no waiter can run (the queue is worked off now).
fn wait_for_end(root: &Root, uu: &UnattendedRun, pending: &[QueuedPair]) -> bool {
    if let Err(e) = deferred::ensure_waiter(root, uu) {
        warn(&format!("{PREFIX} {e}; rebuilding now"));
        return false;
    }
    let mut pairs: Vec<String> = pending.iter().map(|q| q.id.to_string()).collect();
    pairs.sort();
    pairs.dedup();
    const NAMED: usize = 8;
    let mut named = pairs
        .iter()
        .take(NAMED)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if pairs.len() > NAMED {
        named.push_str(&format!(" and {} more", pairs.len() - NAMED));
    }
    let line = format!(
        "{} rebuild(s) wait until unattended-upgrades ends, so that each is built once, after all its steps: {named}; the results go to {} (failures by mail too, when one is configured)",
        pairs.len(),
        report::LOG_FILE,
    );
    report::log_line(root, &line);
    err(&format!("{PREFIX} {line}"));
    true
}

/// The login notice: failures, queued pairs and blocks from the state
/// files only.
pub(super) fn motd(root: &Root) -> i32 {
    let state = State::new(root);
    for l in report::motd_lines(
        &state.failures().map(|f| f.failed).unwrap_or_default(),
        &state.queue().map(|q| q.pending).unwrap_or_default(),
        &state.findings(),
    ) {
        out(&l);
    }
    for b in crate::preflight::blocked::read(&state) {
        out(&report::blocked::motd_line(&b));
    }
    0
}

/// The forecast for apt's planned changes (`None` once an error is said).
fn forecast(root: &Root, cfg: &Config, changes: &[AptChange]) -> Option<Plan> {
    said(plan_for(root, cfg, changes))
}

/// The plan for apt's planned changes, on an inventory read only as far as
/// they reach.
fn plan_for(root: &Root, cfg: &Config, changes: &[AptChange]) -> Result<Plan, crate::Error> {
    let planned: Vec<Change> = changes.iter().filter_map(AptChange::to_change).collect();
    if planned.is_empty() {
        return Ok(Plan::default()); // most JSON hook calls of `apt reinstall`
    }
    let inv = Inventory::for_changes(root, &planned)?;
    Ok(plan::forecast(&planned, &inv, cfg))
}

/// Print the forecast (empty output when there is nothing to say): each
/// line not yet said in this apt run, noted as said. `uu`: the
/// unattended-upgrades run whose end the rebuild waits for.
fn print_forecast(root: &Root, cfg: &Config, p: &Plan, json: bool, uu: Option<&UnattendedRun>) {
    let (notices, warnings) = forecast_lines(p, cfg, uu);
    if json {
        out_json(&report::json::plan(p));
        warned::note_said(root, &[notices, warnings].concat());
        return;
    }
    for l in warned::unsaid(root, &notices) {
        out(&l);
    }
    for w in warned::unsaid(root, &warnings) {
        out(&format!("{PREFIX} warning: {w}"));
    }
}

/// What a forecast says: its notices and its warnings.
fn forecast_lines(
    p: &Plan,
    cfg: &Config,
    uu: Option<&UnattendedRun>,
) -> (Vec<String>, Vec<String>) {
    (
        report::forecast_notices(p, cfg.preflight, uu.is_some()),
        p.warning_lines(),
    )
}

pub(super) fn apt_json_hook(root: &Root, env: &Env, json: bool) -> i32 {
    if env.suspended {
        return 0;
    }
    // A later call of an apt run with nothing left to say ends before the
    // socket is read, so that apt builds no message for it (apt::quiet).
    let quiet = apt::quiet::Quiet::current(root);
    if quiet.as_ref().is_some_and(apt::quiet::Quiet::is_set) {
        log::debug!("apt JSON hook: nothing more to say in this apt run");
        return 0;
    }
    let Some(fd) = apt::env_fd("APT_HOOK_SOCKET") else {
        log::debug!("APT_HOOK_SOCKET is not an open fd; nothing to do");
        return 0;
    };
    let stream = std::os::unix::net::UnixStream::from(fd);
    let session = match apt::serve_json_hook(stream) {
        Ok(session) => session,
        Err(e @ apt::AptHookError::TooLarge(_)) => {
            warn(&format!("{PREFIX} {e}"));
            return 0;
        }
        Err(e) => {
            log::debug!("apt JSON hook: {e}");
            return 0;
        }
    };
    let changes = || [session.changes.clone(), reinstalls(root, &session)].concat();
    let done = if session.should_warn() {
        let cfg = load_config(root);
        if let Some(p) = forecast(root, &cfg, &changes()) {
            print_forecast(root, &cfg, &p, json, None);
        }
        true
    } else if session.warns_later() && !json {
        // The list is the one the warning call will see: with nothing in
        // it for the kernels, that call and the rest need not run. (With
        // --json, the warning call prints the plan object, empty or not.)
        !has_news(root, &changes())
    } else {
        false
    };
    if let Some(q) = quiet.filter(|_| done) {
        q.set();
    }
    0
}

/// Whether apt's planned `changes` give the forecast anything to say. It
/// says nothing itself: an error, the configuration's too, counts as
/// something, and the call that warns says it.
fn has_news(root: &Root, changes: &[AptChange]) -> bool {
    let (cfg, errors) = Config::load(root);
    if !errors.is_empty() {
        return true;
    }
    match plan_for(root, &cfg, changes) {
        Ok(p) => {
            let (notices, warnings) = forecast_lines(&p, &cfg, None);
            !notices.is_empty() || !warnings.is_empty()
        }
        Err(e) => {
            log::debug!("{e}");
            true
        }
    }
}

/// The reinstalls the JSON hook's package list leaves out, when apt was
/// asked for them (`apt reinstall P`, `apt install --reinstall P`).
fn reinstalls(root: &Root, session: &apt::JsonHookSession) -> Vec<AptChange> {
    if session.search_terms.is_empty()
        || !(session.command.as_deref() == Some("reinstall") || apt::frontend::asks_reinstall())
    {
        return Vec::new();
    }
    let names: Vec<&str> = session
        .search_terms
        .iter()
        .map(|t| apt::search_term_package(t).0)
        .collect();
    // Only a package that feeds a build tree can matter: its file list is
    // looked at before dpkg's whole status is read for its version.
    let packages: Vec<(PackageName, Option<String>)> = session
        .search_terms
        .iter()
        .filter_map(|t| {
            let (name, arch, _) = apt::search_term_package(t);
            Some((PackageName::new(name).ok()?, arch.map(str::to_owned)))
        })
        .collect();
    match crate::kernel::any_feeds_a_tree(root, &packages) {
        Ok(true) => {}
        Ok(false) => return Vec::new(),
        Err(e) => log::debug!("{e}"),
    }
    let installed = crate::dpkg::read_status(root, |n| names.contains(&n)).unwrap_or_else(|e| {
        log::debug!("{e}");
        Vec::new()
    });
    apt::unannounced_reinstalls(&session.search_terms, &session.changes, &installed)
}

pub(super) fn pre_install_pkgs(root: &Root, env: &Env, json: bool) -> i32 {
    if env.suspended {
        return 0;
    }
    let (parsed, digest) = match apt::env_fd("APT_HOOK_INFO_FD") {
        Some(fd) => read_digested(std::io::BufReader::new(std::fs::File::from(fd))),
        None => read_digested(std::io::stdin().lock()),
    };
    // The second copy of this hook for the same dpkg run (python-apt lists
    // it twice) does nothing and says nothing.
    let once = once::step(root, once::Point::PreInstallPkgs, digest);
    if once.as_ref().is_some_and(once::Once::done_before) {
        log::debug!("Pre-Install-Pkgs: this step's input was handled already");
        return 0;
    }
    let status = match parsed {
        Ok(stream) => {
            // After the JSON hook of the same apt run, only what it could
            // not say (a reinstall it was not told of) is new here.
            let cfg = load_config(root);
            match forecast(root, &cfg, &stream.changes) {
                Some(p) => {
                    let uu = match p.rebuilds.is_empty() {
                        true => None,
                        false => deferred::deferral(root, &cfg, env),
                    };
                    print_forecast(root, &cfg, &p, json, uu.as_ref());
                    preflight_command::in_apt(root, &cfg, uu.as_ref(), &p, &stream)
                }
                None => 0,
            }
        }
        Err(e) => {
            err(&format!("{PREFIX} Pre-Install-Pkgs: {e}"));
            0
        }
    };
    if let Some(o) = once {
        o.note_done();
    }
    status
}

/// The info stream parsed, and the digest of what was read of it.
fn read_digested(
    r: impl std::io::BufRead,
) -> (Result<apt::PreInstallPkgs, apt::AptHookError>, u64) {
    let mut r = once::Digesting::new(r);
    let parsed = apt::parse_pre_install_reader(&mut r);
    (parsed, r.digest())
}

pub(super) fn kernel_hook(root: &Root, env: &Env, phase: Phase, kernel: &str) -> i32 {
    if env.suspended {
        return 0;
    }
    let Some(k) = said(KernelRelease::new(kernel)) else {
        return 0;
    };
    let state = State::new(root);
    let phase_name = match phase {
        Phase::HeaderPostinst => "header_postinst",
        Phase::Postinst => "postinst",
        Phase::Prerm => "prerm",
    };
    crate::report::log_line(state.root(), &format!("kernel-hook {phase_name} {k}"));
    if phase == Phase::Prerm {
        said(crate::rebuild::builds::forget_removed_kernel(
            &state,
            &k,
            PRERM_LOCK_WAIT,
        ));
        super::guard::forget_kernel(&state, &k);
        return 0;
    }
    let Some(inv) = said(Inventory::full(root)) else {
        return 0;
    };
    warn_once(root, &plan::warning_lines(&plan::kernel_warnings(&inv, &k)));
    0
}
