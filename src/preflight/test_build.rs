//! The test builds: the sandbox's job for the plan's pairs, what each build
//! showed, its logs kept beside the state, and a successful build kept for
//! the rebuild after dpkg ([`kept`]).

use std::path::{Path, PathBuf};

use super::{overlay, sandbox, BuildFailure, Deb, Outcome, Session, Skip, Tested};
use crate::config::Config;
use crate::dkms::DKMS_TREE;
use crate::inventory::Inventory;
use crate::kernel::KernelRelease;
use crate::pair::PairId;
use crate::plan::{Plan, Rebuild};
use crate::rebuild::kept;
use crate::state::{State, STATE_DIR};
use crate::tools::Tools;
use crate::tools::{
    DKMS_EXIT_BUILD_EXCLUSIVE as EXIT_BUILD_EXCLUSIVE, DKMS_EXIT_NO_HEADERS as EXIT_NO_HEADERS,
};
use crate::Error;

/// Test-build the pairs of `plan` against `debs` (their paths read by
/// [`Session::read_contents`]) in the sandbox ([`sandbox`]); `new` are the
/// kernels the packages install new.
#[allow(clippy::too_many_arguments)]
pub fn run(
    session: &Session,
    state: &State,
    cfg: &Config,
    tools: &Tools,
    debs: &[Deb],
    p: &Plan,
    inv: &Inventory,
    new: &[KernelRelease],
    started: &(dyn Fn(&PairId, usize, usize) + Sync),
) -> Result<Vec<Tested>, Error> {
    if p.rebuilds.is_empty() {
        return Ok(Vec::new());
    }
    let root = state.root();
    if tools.dkms.is_none() && !root.is_host_root() {
        // dkms would act on the host, not on the root.
        return Err(Error::Refused(
            "preflight under --root needs DKMS_HOOK_DKMS (or run dkms-hook inside the chroot)"
                .into(),
        ));
    }
    let overlays = overlay::overlays(session, root, inv, p, new);
    let job = sandbox::Job {
        root: root.dir().to_path_buf(),
        run: session.path().to_path_buf(),
        dkms_tree: root
            .inside(DKMS_TREE)
            .map_err(|e| Error::io(Path::new(DKMS_TREE), e))?,
        dkms: PathBuf::from(
            tools
                .dkms
                .clone()
                .unwrap_or_else(|| crate::rebuild::DKMS.into()),
        ),
        overlays,
        debs: debs.iter().map(|d| d.path.clone()).collect(),
        pairs: p.rebuilds.iter().map(|r| r.pair.id.clone()).collect(),
        timeout_secs: cfg.build_timeout.as_secs(),
        jobs: cfg.jobs,
    };
    let total = p.rebuilds.len();
    let mut count = 0;
    let mut ready = false;
    let mut refused = None;
    let mut tested = Vec::new();
    let t0 = std::time::Instant::now();
    sandbox::spawn(&job, &mut |ev| match ev {
        sandbox::Event::Ready => {
            log::debug!("sandbox ready after {:.2} s", t0.elapsed().as_secs_f64());
            ready = true;
        }
        sandbox::Event::Refused(why) => refused = Some(why),
        sandbox::Event::Started(i) => {
            if let Some(r) = p.rebuilds.get(i) {
                count += 1;
                started(&r.pair.id, count, total);
            }
        }
        sandbox::Event::Done {
            pair,
            ended,
            seconds,
            kept,
        } => {
            if let Some(r) = p.rebuilds.get(pair) {
                tested.push((pair, tested_of(r, ended, seconds), kept));
            }
        }
    })?;
    log::debug!("sandbox ended after {:.2} s", t0.elapsed().as_secs_f64());
    if let Some(why) = refused {
        return Err(Error::Refused(why));
    }
    if !ready {
        return Err(Error::Refused(
            "preflight's sandbox ended before it was set up".into(),
        ));
    }
    let mut out = Vec::new();
    let full = if tested.iter().any(|(_, _, kept)| *kept) {
        Inventory::full_with(root, crate::kernel::CacheUse::Read)
            .map_err(|e| log::warn!("{e}"))
            .ok()
    } else {
        None
    };
    for (i, mut t, kept) in tested {
        if let (true, Some(full)) = (kept && t.outcome == Outcome::Built, &full) {
            if let Err(e) = keep(session, state, debs, full, new, &t.rebuild, i) {
                log::debug!(
                    "preflight's build of {} not kept: {e}",
                    t.rebuild.pair.id.label()
                );
            }
        }
        let id = &t.rebuild.pair.id;
        session.keep_log(&sandbox::run_log(i), &id.run_log_name());
        if let Outcome::Failed { make_log, .. } = &mut t.outcome {
            if session.keep_log(&sandbox::make_log(i), &id.kept_make_log_name()) {
                *make_log = Some(
                    Path::new(STATE_DIR)
                        .join("preflight")
                        .join(id.kept_make_log_name()),
                );
            }
        }
        out.push(t);
    }
    out.sort_by(|a, b| a.rebuild.pair.id.cmp(&b.rebuild.pair.id));
    Ok(out)
}

/// Keep the build of pair `i` for the step after dpkg ([`kept`]), with
/// what it was built against: every package feeding the kernel's tree as
/// it will be, and the module source's fingerprint. Not for a new kernel
/// (dkms builds those itself), nor when a package drops a file of the tree
/// (the merged view still had it) or ships the module's source.
fn keep(
    session: &Session,
    state: &State,
    debs: &[Deb],
    full: &Inventory,
    new: &[KernelRelease],
    r: &Rebuild,
    i: usize,
) -> Result<(), String> {
    let pair = &r.pair;
    if new.contains(&pair.id.kernel) {
        return Err("a new kernel".into());
    }
    let k = full.kernel(&pair.id.kernel).ok_or("no such kernel")?;
    let root = state.root();
    let src = format!("/usr/src/{}-{}", pair.id.module, pair.id.version);
    for d in debs {
        if d.files.iter().any(|f| f.starts_with(&src)) {
            return Err(format!("{} ships the module's source", d.package));
        }
        let in_tree = |p: &Path| k.tree.iter().any(|t| t.names().any(|n| p.starts_with(n)));
        if full.installed_version(&d.package).is_none() {
            continue;
        }
        let Some(list) = crate::dpkg::list_path(root, &d.package, d.architecture.as_deref()) else {
            continue;
        };
        let list = crate::dpkg::read_list(&list).map_err(|e| e.to_string())?;
        let shipped: std::collections::HashSet<&Path> =
            d.files.iter().map(PathBuf::as_path).collect();
        for line in String::from_utf8_lossy(&list.data).lines() {
            let p = Path::new(line);
            if in_tree(p) && !shipped.contains(p) {
                return Err(format!("{} {} drops {line}", d.package, d.version));
            }
        }
    }
    let planned: Vec<(String, String)> = debs
        .iter()
        .filter(|d| {
            let feeds = full
                .inputs
                .get(&pair.id.kernel)
                .is_some_and(|i| i.iter().any(|x| x.package == d.package));
            let new_here = full.installed_version(&d.package).is_none()
                && d.files
                    .iter()
                    .any(|f| k.tree.iter().any(|t| t.names().any(|n| f.starts_with(n))));
            feeds || new_here
        })
        .map(|d| (d.package.to_string(), d.version.to_string()))
        .collect();
    let inputs = kept::Inputs {
        id: pair.id.clone(),
        packages: kept::packages_of(full, &pair.id.kernel, &planned),
        source: kept::source_fingerprint(root, &pair.id.module, &pair.id.version),
        time: crate::state::now_secs(),
    };
    kept::publish(
        state,
        &session.path().join("kept").join(i.to_string()),
        &inputs,
    )
    .map_err(|e| e.to_string())
}

fn tested_of(r: &Rebuild, ended: sandbox::Ended, seconds: f64) -> Tested {
    let failed = |reason| Outcome::Failed {
        reason,
        make_log: None,
    };
    Tested {
        rebuild: r.clone(),
        seconds,
        outcome: match ended {
            sandbox::Ended::Exit(0) => Outcome::Built,
            sandbox::Ended::Exit(EXIT_BUILD_EXCLUSIVE) => Outcome::Skipped(Skip::Excluded),
            sandbox::Ended::Exit(EXIT_NO_HEADERS) => Outcome::Skipped(Skip::NoHeaders),
            sandbox::Ended::Exit(s) => failed(BuildFailure::Exit(s)),
            sandbox::Ended::TimedOut => failed(BuildFailure::TimedOut),
            sandbox::Ended::SpawnFailed(e) => failed(BuildFailure::Spawn(e)),
        },
    }
}
