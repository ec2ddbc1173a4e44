//! The front end of the `preflight` command (and of preflight inside apt's
//! Pre-Install-Pkgs): arguments in, lines and exit statuses out. The test
//! builds themselves are the library's [`crate::preflight`].

use std::ffi::OsString;

use super::args::{PreflightArgs, EXIT_BLOCK};
use super::{block, err, load_config, out, out_json, Env};
use crate::apt::unattended::UnattendedRun;
use crate::apt::PreInstallPkgs;
use crate::change::Change;
use crate::config::{Config, PreflightMode, CONFIG_FILE};
use crate::inventory::Inventory;
use crate::name::PackageName;
use crate::pair::PairId;
use crate::plan::{self, Plan};
use crate::preflight::{self, Deb, Tested};
use crate::report::{self, causes, PREFIX};
use crate::root::Root;
use crate::state::State;

/// Exit statuses of the command.
const EXIT_ALL_BUILD: i32 = 0;
const EXIT_ONE_FAILS: i32 = 1;
const EXIT_CANNOT_RUN: i32 = 2;

/// `dkms-hook preflight [--json] [--dist-upgrade] [DEB…]`.
pub fn command(root: &Root, env: &Env, a: &PreflightArgs) -> i32 {
    let r = (|| -> Result<(Vec<Tested>, Vec<String>, block::Noted), crate::Error> {
        let cfg = load_config(root);
        let state = State::new(root);
        let t0 = std::time::Instant::now();
        let session = preflight::Session::begin(&state)?;
        let mut debs = if a.debs.is_empty() {
            download_upgrade(root, &cfg, &env.tools, a.dist_upgrade, &session)?
        } else {
            a.debs
                .iter()
                .map(|d| preflight::read_deb(d))
                .collect::<Result<Vec<Deb>, _>>()?
        };
        log::debug!(
            "preflight: {:.2} s: packages read",
            t0.elapsed().as_secs_f64()
        );
        session.read_contents(&mut debs, cfg.build_timeout)?;
        log::debug!(
            "preflight: {:.2} s: contents read",
            t0.elapsed().as_secs_f64()
        );
        let mut planned = preflight::plan_for(root, &debs, &cfg)?;
        planned
            .plan
            .rebuilds
            .retain(|r| !a.tested.contains(&tested_arg(&r.pair.id)));
        log::debug!("preflight: {:.2} s: planned", t0.elapsed().as_secs_f64());
        let gate = block::gate(&state, a.blocking, &debs, &planned.plan);
        if !gate.still.is_empty() {
            let still = block::Noted {
                still: gate.still,
                ..Default::default()
            };
            return Ok((Vec::new(), planned.plan.warning_lines(), still));
        }
        let quiet = a.json || a.results_only;
        let started = |q: &PairId, n: usize, total: usize| {
            if !quiet {
                err(&format!(
                    "{PREFIX} preflight: building {}/{} for {} ({n} of {total})…",
                    q.module, q.version, q.kernel
                ));
            }
        };
        let mut tested = preflight::run(
            &session,
            &state,
            &cfg,
            &env.tools,
            &debs,
            &planned.plan,
            &planned.inventory,
            &planned.new_kernels,
            &started,
        )?;
        log::debug!("preflight: {:.2} s: tested", t0.elapsed().as_secs_f64());
        let noted = gate.after(&state, &tested, &debs);
        tested.extend(planned.not_tested);
        Ok((tested, planned.plan.warning_lines(), noted))
    })();
    let (tested, warnings, noted) = match r {
        Ok(t) => t,
        Err(e) => {
            err(&format!("{PREFIX} preflight: {e}"));
            return EXIT_CANNOT_RUN;
        }
    };
    if a.json {
        out_json(&report::json::preflight(&tested, &warnings));
    } else {
        // One result line per pair, a passing one too: the forecast line
        // announced the test build.
        for t in &tested {
            err(&report::tested_line(t));
        }
        if tested.is_empty() && !a.results_only {
            out(&format!(
                "{PREFIX} preflight: nothing to test: these packages feed no build tree of a kernel with dkms modules"
            ));
        }
    }
    block::say(root, env, &noted);
    if !noted.still.is_empty()
        || tested
            .iter()
            .any(|t| matches!(t.outcome, preflight::Outcome::Failed { .. }))
    {
        EXIT_ONE_FAILS
    } else {
        EXIT_ALL_BUILD
    }
}

/// A pair as `--tested` names it: `MODULE/VERSION/KERNEL/ARCH` (none of
/// the checked names holds a `/`).
fn tested_arg(q: &PairId) -> String {
    format!("{}/{}/{}/{}", q.module, q.version, q.kernel, q.arch)
}

/// Without DEB arguments: what apt would install, the input packages among
/// it downloaded into the session's fresh private directory.
fn download_upgrade(
    root: &Root,
    cfg: &crate::config::Config,
    tools: &crate::tools::Tools,
    dist_upgrade: bool,
    session: &preflight::Session,
) -> Result<Vec<Deb>, crate::Error> {
    let apt_get: OsString = match &tools.apt_get {
        Some(p) => p.clone(),
        None if root.is_host_root() => preflight::APT_GET.into(),
        None => {
            return Err(crate::Error::Refused(
                "without DEB files, preflight asks the host's apt: not under --root (unless DKMS_HOOK_APT_GET names a stand-in)".into(),
            ))
        }
    };
    let candidates = preflight::apt_upgrade_candidates(&apt_get, dist_upgrade)?;
    let changes: Vec<Change> = candidates
        .iter()
        .map(|(name, version, arch)| {
            Change::planned(name.clone(), arch.clone(), None, version.parse().ok())
        })
        .collect();
    let inv = Inventory::for_changes(root, &changes)?;
    let p = plan::plan(&changes, &inv, cfg);
    let needed: Vec<&PackageName> = p
        .rebuilds
        .iter()
        .flat_map(|r| r.because.iter().map(|c| &c.package))
        .collect();
    if needed.is_empty() {
        return Ok(Vec::new());
    }
    let dir = session.download_dir()?;
    let mut debs = Vec::new();
    for (name, version, _) in candidates.iter().filter(|(n, _, _)| needed.contains(&n)) {
        debs.push(preflight::read_deb(&preflight::apt_download(
            &apt_get, name, version, &dir,
        )?)?);
    }
    Ok(debs)
}

/// Inside Pre-Install-Pkgs: when the transaction changes an installed
/// kernel's build tree in place, test-build against the downloaded `.deb`s
/// (in a child process: the mount namespace is its own) and, with
/// `preflight = block`, stop apt on a failure. Returns the hook's exit
/// status: 0, or [`EXIT_BLOCK`].
///
/// With `preflight = warn` under unattended-upgrades whose rebuild waits
/// for its end, a pair is test-built once per run: a later step that feeds
/// it again changes only what the one rebuild at the end builds against.
/// `block` tests each step (what it lets through is what it tested).
pub fn in_apt(
    root: &Root,
    cfg: &Config,
    uu: Option<&UnattendedRun>,
    p: &Plan,
    stream: &PreInstallPkgs,
) -> i32 {
    if cfg.preflight == PreflightMode::Off {
        return 0;
    }
    let needed: Vec<&str> = p
        .rebuilds
        .iter()
        .flat_map(|r| r.because.iter().map(|c| c.package.as_str()))
        .collect();
    let debs: Vec<&str> = stream
        .debs
        .iter()
        .filter(|(pkg, _)| needed.contains(&pkg.as_str()))
        .map(|(_, path)| path.as_str())
        .collect();
    if debs.is_empty() {
        return 0;
    }
    let pairs: Vec<PairId> = p.rebuilds.iter().map(|r| r.pair.id.clone()).collect();
    let uu = uu.filter(|_| cfg.preflight == PreflightMode::Warn);
    let tested: Vec<PairId> = match uu {
        Some(uu) => uu
            .tested()
            .into_iter()
            .filter(|q| pairs.contains(q))
            .collect(),
        None => Vec::new(),
    };
    for q in &tested {
        err(&format!("{PREFIX} preflight: {q} was test-built earlier in this unattended-upgrades run; it is built once, when the run ends"));
    }
    // Their kept test builds are of packages this step replaces.
    crate::rebuild::kept::forget(&State::new(root), &tested);
    if tested.len() == pairs.len() && !pairs.is_empty() {
        return 0;
    }
    let Ok(me) = std::env::current_exe() else {
        return 0;
    };
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    if !root.is_host_root() {
        args.push("--root".into());
        args.push(root.dir().into());
    }
    args.extend(["preflight".into(), "--results-only".into()]);
    if cfg.preflight == PreflightMode::Block {
        args.push("--blocking".into());
    }
    for q in &tested {
        args.push("--tested".into());
        args.push(tested_arg(q).into());
    }
    args.extend(debs.iter().map(Into::into));
    let status = duct::cmd(me, args)
        .stdin_null()
        .unchecked()
        .run()
        .map(|o| o.status.code());
    // Tested, whatever the result; a preflight that could not run tested
    // nothing.
    if let (Some(uu), Ok(Some(EXIT_ALL_BUILD | EXIT_ONE_FAILS))) = (uu, &status) {
        uu.note_tested(&pairs);
    }
    match status {
        Ok(Some(EXIT_ALL_BUILD)) => 0,
        Ok(Some(EXIT_ONE_FAILS)) if cfg.preflight == PreflightMode::Block => {
            for l in block_lines(p) {
                err(&l);
            }
            EXIT_BLOCK
        }
        Ok(Some(EXIT_ONE_FAILS)) => {
            err(&format!(
                "{PREFIX} preflight: the upgrade goes on; after dpkg, a rebuild that fails keeps the working module ({})",
                causes(&p.rebuilds[0].because)
            ));
            0
        }
        _ => {
            err(&format!(
                "{PREFIX} warning: preflight could not run; the upgrade goes on"
            ));
            0
        }
    }
}

/// What `preflight = block` says when it stops apt: that it is recorded,
/// and how to go on, also where no one can set a variable for the run
/// (unattended-upgrades: it honours `apt-mark hold`, and stops at the
/// first failed step even in minimal steps).
fn block_lines(p: &Plan) -> [String; 2] {
    let mut packages: Vec<&str> = p
        .rebuilds
        .iter()
        .flat_map(|r| r.because.iter().map(|c| c.package.as_str()))
        .collect();
    packages.sort_unstable();
    packages.dedup();
    [
        format!("{PREFIX} preflight = block: stopping apt before anything is unpacked; recorded: dkms-hook status shows it, and the same packages are not test-built again until something the build reads changes"),
        format!(
            "{PREFIX} to go on: fix the module and run dkms-hook preflight (a build that passes ends the block); or set preflight=warn in {CONFIG_FILE} (the upgrade goes on, a failed rebuild keeps the working module); or apt-mark hold {} until it builds (unattended-upgrades then installs the rest); by hand: DKMS_HOOK_SUSPEND=1 apt …",
            packages.join(" ")
        ),
    ]
}
