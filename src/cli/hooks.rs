//! The entry points apt, dpkg, run-parts, systemd and pam_motd call: each
//! exits 0 whatever happens (`pre-install-pkgs` exits 100 only with
//! `preflight = block`), and every error becomes one line.

use super::args::{Env, Phase, PRERM_LOCK_WAIT};
use super::{err, execute, load_config, out, out_json, preflight_command, warn, warn_once};
use crate::apt::{self, once, warned, AptChange};
use crate::change::Change;
use crate::config::Config;
use crate::inventory::Inventory;
use crate::kernel::KernelRelease;
use crate::name::PackageName;
use crate::plan::Plan;
use crate::report::{self, PREFIX};
use crate::root::Root;
use crate::state::State;
use crate::{intake, plan};

/// The value, or `None` once the error is said in one line: a hook goes on
/// or stops quietly, it never fails its caller.
fn said<T>(r: Result<T, crate::Error>) -> Option<T> {
    r.map_err(|e| warn(&format!("{PREFIX} {e}"))).ok()
}

/// The hook: never fails apt. Every error becomes one line on stderr. The
/// second copy of it for the same dpkg run (python-apt lists it twice)
/// does nothing and says nothing.
pub(super) fn post_invoke(root: &Root, env: &Env) -> i32 {
    if env.suspended {
        return 0;
    }
    let once = once::step(root, once::Point::PostInvoke, once::post_invoke_input(root));
    if once.as_ref().is_some_and(once::Once::done_before) {
        log::debug!("post-invoke: this step's dpkg run was handled already");
        return 0;
    }
    let status = catch_up(root, env, false);
    if let Some(o) = once {
        o.note_done();
    }
    status
}

/// At boot: never fails the boot. Every error becomes one line (the journal).
pub(super) fn boot(root: &Root, env: &Env) -> i32 {
    catch_up(root, env, true)
}

/// Under the lock: queue what dpkg.log holds since the cursor (and, at
/// boot, the stale pairs of the running kernel), then work off the queue,
/// which also finishes what a killed run left. Always 0.
fn catch_up(root: &Root, env: &Env, running_kernel: bool) -> i32 {
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
        if running_kernel {
            intake::queue_stale(&state, &Inventory::running_kernel_only(root)?, &cfg)?;
        }
        if !state.queue()?.pending.is_empty() {
            let run = crate::followup::Run {
                name: if running_kernel {
                    "boot"
                } else {
                    "post-invoke"
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
        err(&format!("{PREFIX} {e:#}"));
    }
    0
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

/// The forecast for apt's planned changes, on an inventory read only as
/// far as they reach (`None` once an error is said).
fn forecast(root: &Root, cfg: &Config, changes: &[AptChange]) -> Option<Plan> {
    let planned: Vec<Change> = changes.iter().filter_map(AptChange::to_change).collect();
    if planned.is_empty() {
        return Some(Plan::default()); // most JSON hook calls of `apt reinstall`
    }
    let inv = said(Inventory::for_changes(root, &planned))?;
    Some(plan::forecast(&planned, &inv, cfg))
}

/// Print the forecast (empty output when there is nothing to say): each
/// line not yet said in this apt run, noted as said.
fn print_forecast(root: &Root, cfg: &Config, p: &Plan, json: bool) {
    let notices = report::forecast_notices(p, cfg.preflight);
    if json {
        out_json(&report::json::plan(p));
        warned::note_said(root, &[notices, p.warning_lines()].concat());
        return;
    }
    for l in warned::unsaid(root, &notices) {
        out(&l);
    }
    for w in warned::unsaid(root, &p.warning_lines()) {
        out(&format!("{PREFIX} warning: {w}"));
    }
}

pub(super) fn apt_json_hook(root: &Root, env: &Env, json: bool) -> i32 {
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
            let cfg = load_config(root);
            let mut changes = session.changes.clone();
            changes.extend(reinstalls(root, &session));
            if let Some(p) = forecast(root, &cfg, &changes) {
                print_forecast(root, &cfg, &p, json);
            }
        }
        Ok(_) => {}
        Err(e @ apt::AptHookError::TooLarge(_)) => warn(&format!("{PREFIX} {e}")),
        Err(e) => log::debug!("apt JSON hook: {e}"),
    }
    0
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
                    print_forecast(root, &cfg, &p, json);
                    preflight_command::in_apt(root, &cfg, &p, &stream)
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
