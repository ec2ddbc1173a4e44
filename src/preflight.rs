//! Preflight: test-build every pair an upgrade will make stale against the
//! build tree *as it will be* once the upgrade's packages are unpacked, before
//! dpkg touches anything.
//!
//! The pairs come from the same planner as the forecast before apt's prompt
//! (`plan::plan` on the planned changes), so preflight and forecast always
//! agree on "which pairs, against which packages".
//!
//! How the build is kept off the system: the process enters a private mount
//! namespace (`unshare(CLONE_NEWNS)`, propagation private) and mounts an
//! overlayfs over each directory of the affected kernels' build trees, over
//! each kernel's `/lib/modules/K` and over `/var/lib/dkms`, with the upper
//! layers in a scratch directory under `/var/lib/dkms-hook/preflight/`. The
//! new packages' files are copied into the merged views and the real `dkms
//! build --force` runs inside, so dkms itself stays in charge of the build.
//! The mounts die with the process, also when it is killed; the scratch
//! directory is removed at the end, or by the next preflight. The other way,
//! dkms's `--dkmstree`/`--kernelsourcedir` on a scratch copy, copies whole
//! headers trees (the 6.1 `-common` tree alone is ~60 MB, some seconds per
//! run) and has to rewrite absolute includes such as the flavour Makefile's
//! `include /usr/src/linux-headers-…-common/Makefile`; an overlay costs a
//! few system calls per directory and sees every path as dkms does.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use debversion::Version;

use crate::change::Change;
use crate::config::Config;
use crate::dkms::DKMS_TREE;
use crate::inventory::Inventory;
use crate::kernel::MODULES_DIR;
use crate::name::{Keyed, PackageName};
use crate::plan::{self, Cause, Plan, Rebuild};
use crate::rebuild::{Executor, Ran, Tools};
use crate::root::Root;
use crate::state::{QueuedPair, State};
use crate::Error;

/// Unpacks and reads `.deb` files.
pub const DPKG_DEB: &str = "dpkg-deb";
/// Simulates upgrades and downloads packages (the no-argument mode).
pub const APT_GET: &str = "apt-get";
/// dkms exit statuses that mean "not for this kernel".
const EXIT_BUILD_EXCLUSIVE: i32 = 77;
const EXIT_NO_HEADERS: i32 = 21;

/// One package file of the upgrade.
#[derive(Debug, Clone)]
pub struct Deb {
    pub path: PathBuf,
    pub package: PackageName,
    pub version: Version,
    pub architecture: Option<String>,
    /// The first alternative of each `Depends` entry, by name.
    pub depends: Vec<PackageName>,
}

/// Read the name, version and architecture of a `.deb`.
pub fn read_deb(path: &Path) -> Result<Deb, Error> {
    let out = duct::cmd(
        DPKG_DEB,
        [
            OsStr::new("--field"),
            path.as_os_str(),
            OsStr::new("Package"),
            OsStr::new("Version"),
            OsStr::new("Architecture"),
            OsStr::new("Depends"),
        ],
    )
    .stdin_null()
    .stderr_null()
    .stdout_capture()
    .unchecked()
    .run()
    .map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let bad = |why: &str| Error::Unreadable {
        path: path.to_path_buf(),
        why: why.into(),
    };
    if !out.status.success() {
        return Err(bad("not a Debian package (dpkg-deb --field failed)"));
    }
    Ok(Deb {
        path: path.to_path_buf(),
        package: PackageName::new(field("Package").ok_or_else(|| bad("no Package field"))?)?,
        version: field("Version")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("no valid Version field"))?,
        architecture: field("Architecture")
            .filter(|a| crate::dpkg::valid_arch(a))
            .map(str::to_string),
        depends: field("Depends")
            .unwrap_or_default()
            .split(',')
            .filter_map(|d| {
                let first = d.split('|').next()?.trim();
                let name = first.split([' ', '(', ':']).next()?;
                PackageName::new(name).ok()
            })
            .collect(),
    })
}

/// Pairs of new kernels that cannot be test-built, each with why.
pub type NotTested = Vec<(Rebuild, String)>;

/// What one pair's test build showed.
#[derive(Debug, Clone)]
pub struct Tested {
    pub rebuild: Rebuild,
    /// `Some(true)` built, `Some(false)` failed, `None` skipped.
    pub ok: Option<bool>,
    pub skipped: Option<&'static str>,
    pub reason: Option<String>,
    pub seconds: f64,
    /// In-root path of the kept make.log of a failed build.
    pub make_log: Option<PathBuf>,
}

/// The plan for installing `debs` on this root: the planner's own answer
/// for these packages replacing what is installed.
/// Also returns the pairs of new kernels that cannot be test-built, with why.
pub fn plan_for(
    root: &Root,
    debs: &[Deb],
    cfg: &Config,
) -> Result<(Plan, Inventory, NotTested), Error> {
    let planned = |old: &dyn Fn(&Deb) -> Option<Version>| -> Vec<Change> {
        debs.iter()
            .map(|d| {
                Change::planned(
                    d.package.clone(),
                    d.architecture.clone(),
                    old(d),
                    Some(d.version.clone()),
                )
            })
            .collect()
    };
    let inv = Inventory::for_changes(root, &planned(&|_| None))?;
    let changes = planned(&|d| inv.installed_version(&d.package).map(|i| i.version.clone()));
    let mut p = plan::plan(&changes, &inv, cfg);
    p.warnings.splice(0..0, inv.warnings.clone());
    let skipped = new_kernels(root, debs, &inv, &mut p)?;
    Ok((p, inv, skipped))
}

/// A kernel the upgrade installs new (its `linux-headers-K` is among the
/// `.deb`s and no such kernel has headers yet): each installed module is
/// test-built for it too, when everything its headers depend on is among
/// the `.deb`s or installed; otherwise it is reported, with the reason.
fn new_kernels(
    root: &Root,
    debs: &[Deb],
    inv: &Inventory,
    p: &mut Plan,
) -> Result<NotTested, Error> {
    let mut skipped = Vec::new();
    let mut modules: Vec<&crate::dkms::Pair> = Vec::new();
    for pair in inv.pairs.iter().filter(|x| x.installed) {
        if !modules
            .iter()
            .any(|m| m.module == pair.module && m.version == pair.version)
        {
            modules.push(pair);
        }
    }
    for d in debs {
        let Some(k) = d
            .package
            .as_str()
            .strip_prefix("linux-headers-")
            .filter(|k| k.starts_with(|c: char| c.is_ascii_digit()))
            .and_then(|k| crate::kernel::KernelRelease::new(k).ok())
        else {
            continue;
        };
        if inv
            .kernel(&k)
            .is_some_and(crate::kernel::Kernel::has_headers)
        {
            continue;
        }
        let given = |n: &PackageName| debs.iter().any(|x| &x.package == n);
        let installed: Vec<String> =
            crate::dpkg::read_status(root, |n| d.depends.iter().any(|x| x.as_str() == n))?
                .into_iter()
                .filter(|i| i.has_files())
                .map(|i| i.name.to_string())
                .collect();
        let missing: Vec<&PackageName> = d
            .depends
            .iter()
            .filter(|n| !given(n) && !installed.iter().any(|i| i == n.as_str()))
            .collect();
        for m in &modules {
            let r = Rebuild {
                pair: crate::dkms::Pair {
                    module: m.module.clone(),
                    version: m.version.clone(),
                    kernel: k.clone(),
                    arch: m.arch.clone(),
                    installed: false,
                    built: None,
                },
                because: vec![Cause {
                    package: d.package.clone(),
                    role: crate::kernel::Role::Headers,
                    old: None,
                    new: Some(d.version.clone()),
                    unpacked: None,
                }],
            };
            if missing.is_empty() {
                p.rebuilds.push(r);
            } else {
                let names: Vec<String> = missing.iter().map(ToString::to_string).collect();
                skipped.push((
                    r,
                    format!(
                        "new kernel {k}: its headers need {}, neither given nor installed",
                        names.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(skipped)
}

/// What `apt-get upgrade` (or `dist-upgrade`) would install now, from its
/// simulation: `Inst NAME [OLD] (NEW SUITE [ARCH])` lines.
pub fn apt_upgrade_candidates(
    dist_upgrade: bool,
) -> Result<Vec<(PackageName, String, Option<String>)>, Error> {
    let action = if dist_upgrade {
        "dist-upgrade"
    } else {
        "upgrade"
    };
    let out = apt_get(duct::cmd(APT_GET, ["-s", "-q", action]).stdout_capture())
        .and_then(|o| ok_or_refused(o, || format!("apt-get -s {action} failed")))?;
    Ok(parse_apt_simulation(&String::from_utf8_lossy(&out.stdout)))
}

/// Runs an apt-get command without input or error output.
fn apt_get(cmd: duct::Expression) -> Result<std::process::Output, Error> {
    cmd.stdin_null()
        .stderr_null()
        .unchecked()
        .run()
        .map_err(|e| Error::io(Path::new(APT_GET), e))
}

fn ok_or_refused(
    out: std::process::Output,
    why: impl FnOnce() -> String,
) -> Result<std::process::Output, Error> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(Error::Refused(why()))
    }
}

fn parse_apt_simulation(text: &str) -> Vec<(PackageName, String, Option<String>)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("Inst ")?;
            let (name, rest) = rest.split_once(' ')?;
            let paren = &rest[rest.find('(')? + 1..];
            let version = paren.split_whitespace().next()?;
            let arch = paren
                .rfind('[')
                .and_then(|i| paren[i + 1..].split(']').next())
                .filter(|a| crate::dpkg::valid_arch(a))
                .map(str::to_string);
            Some((PackageName::new(name).ok()?, version.to_string(), arch))
        })
        .collect()
}

/// Download `name=version` into `dir` (`apt-get download`), returning the file.
pub fn apt_download(name: &PackageName, version: &str, dir: &Path) -> Result<PathBuf, Error> {
    let spec = format!("{name}={version}");
    apt_get(
        duct::cmd(APT_GET, ["-q", "download", spec.as_str()])
            .dir(dir)
            .stdout_null(),
    )
    .and_then(|o| ok_or_refused(o, || format!("apt-get download {spec} failed")))?;
    std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{name}_")) && n.ends_with(".deb"))
        })
        .ok_or_else(|| Error::Refused(format!("apt-get download {spec} left no .deb")))
}

/// Directories mounted over with an overlay, in-root, none inside another.
fn overlay_dirs(root: &Root, inv: &Inventory, p: &Plan) -> Vec<(PathBuf, Vec<PathBuf>)> {
    let mut dirs: Vec<(PathBuf, Vec<PathBuf>)> = Vec::new();
    let mut add = |path: PathBuf, also: Vec<PathBuf>| {
        if !dirs.iter().any(|(d, _)| d == &path) {
            dirs.push((path, also));
        }
    };
    for r in &p.rebuilds {
        if let Some(k) = inv.kernel(&r.pair.kernel) {
            for t in &k.tree {
                add(t.path.clone(), t.also.clone());
            }
        }
        if let Ok(m) = root.canonicalize(Path::new(MODULES_DIR).join(r.pair.kernel.as_str())) {
            add(m, vec![Path::new(MODULES_DIR).join(r.pair.kernel.as_str())]);
        }
    }
    if let Ok(d) = root.canonicalize(DKMS_TREE) {
        add(d, Vec::new());
    }
    // A kernel installed new: its headers land in /usr/src and its build
    // link in /lib/modules, so both are overlaid whole.
    if p.rebuilds
        .iter()
        .any(|r| inv.kernel(&r.pair.kernel).is_none_or(|k| !k.has_headers()))
    {
        for (dir, alias) in [("/usr/src", None), (MODULES_DIR, Some("/lib/modules"))] {
            if let Ok(c) = root.canonicalize(dir) {
                add(c, alias.map(PathBuf::from).into_iter().collect());
            }
        }
    }
    // A directory inside another overlaid one is covered by it.
    let all: Vec<PathBuf> = dirs.iter().map(|(d, _)| d.clone()).collect();
    dirs.retain(|(d, _)| !all.iter().any(|o| o != d && d.starts_with(o)));
    dirs.sort();
    dirs
}

/// Mounts made in this process's private namespace, undone in reverse order
/// on drop, and the scratch directory removed after them.
struct Scratch {
    dir: PathBuf,
    mounted: Vec<PathBuf>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for m in self.mounted.iter().rev() {
            let _ = rustix::mount::unmount(m, rustix::mount::UnmountFlags::DETACH);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Enter a private mount namespace: from here on no mount of this process
/// reaches the system. Call before any thread is started, so that every
/// thread (and every dkms) lives in it.
fn private_namespace() -> Result<(), Error> {
    let refuse = |what: &str, e: rustix::io::Errno| {
        Error::Refused(format!(
            "preflight cannot run here: {what}: {e} (it needs root with CAP_SYS_ADMIN and overlayfs)"
        ))
    };
    // SAFETY: CLONE_NEWNS (which implies CLONE_FS) unshares no file
    // descriptor table; the caller is the only thread of the process.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .map_err(|e| refuse("unshare(CLONE_NEWNS)", e))?;
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::PRIVATE | rustix::mount::MountPropagationFlags::REC,
    )
    .map_err(|e| match e {
        // In a chroot whose directory is no mount point: without private
        // propagation our mounts would reach the host, so nothing is done.
        rustix::io::Errno::INVAL => refuse(
            "making mounts private (is \"/\" a mount point? in a chroot, bind-mount its directory onto itself first)",
            e,
        ),
        e => refuse("making mounts private", e),
    })
}

/// Test-build the pairs of `plan` against `debs` unpacked over the current
/// build trees. Enters a private mount namespace first: run it in a process
/// of its own (the `preflight` command is one).
#[allow(clippy::too_many_arguments)]
pub fn run(
    root: &Root,
    state: &State,
    cfg: &Config,
    tools: Tools,
    debs: &[Deb],
    p: &Plan,
    inv: &Inventory,
    started: &(dyn Fn(&QueuedPair, usize, usize) + Sync),
) -> Result<Vec<Tested>, Error> {
    if p.rebuilds.is_empty() {
        return Ok(Vec::new());
    }
    let exec = Executor::new(state, cfg, tools)?;
    private_namespace()?;
    let scratch = scratch_dir(state)?;
    let mut guard = Scratch {
        dir: scratch.clone(),
        mounted: Vec::new(),
    };
    let dirs = overlay_dirs(root, inv, p);
    for (i, (dir, _)) in dirs.iter().enumerate() {
        let target = root.host(dir);
        let upper = scratch.join(format!("o{i}/upper"));
        let work = scratch.join(format!("o{i}/work"));
        for d in [&upper, &work] {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            option_path(&target)?,
            option_path(&upper)?,
            option_path(&work)?
        );
        let data = std::ffi::CString::new(opts)
            .map_err(|_| Error::Refused("a NUL byte in a path".into()))?;
        rustix::mount::mount(
            "overlay",
            &target,
            "overlay",
            rustix::mount::MountFlags::empty(),
            data.as_c_str(),
        )
        .map_err(|e| {
            Error::Refused(format!(
                "preflight cannot run here: overlayfs over {}: {e}",
                dir.display()
            ))
        })?;
        guard.mounted.push(target);
    }
    // The new packages' files over the merged views.
    for (n, deb) in debs.iter().enumerate() {
        let x = scratch.join(format!("x{n}"));
        let out = duct::cmd(
            DPKG_DEB,
            [OsStr::new("-x"), deb.path.as_os_str(), x.as_os_str()],
        )
        .stdin_null()
        .stdout_null()
        .stderr_null()
        .unchecked()
        .run()
        .map_err(|e| Error::io(&deb.path, e))?;
        if !out.status.success() {
            return Err(Error::Unreadable {
                path: deb.path.clone(),
                why: "dpkg-deb -x failed".into(),
            });
        }
        for (dir, also) in &dirs {
            for name in std::iter::once(dir).chain(also) {
                let from = x.join(name.strip_prefix("/").unwrap_or(name));
                if from.is_dir() {
                    exec.copy(&from, &root.host(dir))?;
                }
            }
        }
    }
    let tested = build_all(&exec, state, cfg, p, started);
    drop(guard);
    Ok(tested)
}

/// `,` `:` and `\` separate overlayfs options; such a path is refused.
fn option_path(p: &Path) -> Result<String, Error> {
    let s = p.to_string_lossy();
    if s.contains([',', ':', '\\']) {
        return Err(Error::Refused(format!(
            "preflight cannot mount over {}: a ',', ':' or '\\' in the path",
            p.display()
        )));
    }
    Ok(s.into_owned())
}

/// `/var/lib/dkms-hook/preflight/run-PID`, after removing what a killed run
/// left (only one preflight runs at a time: `preflight/lock`).
fn scratch_dir(state: &State) -> Result<PathBuf, Error> {
    let dir = state.open()?.subdir("preflight")?;
    let lock = dir.create("lock", true)?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| Error::io(&dir.path().join("lock"), e.into()))?;
    for name in dir.names().into_iter().filter(|n| n.starts_with("run-")) {
        dir.remove_tree(&name)?;
    }
    let name = format!("run-{}", std::process::id());
    dir.subdir(&name)?;
    // The lock is held until the process ends.
    std::mem::forget(lock);
    Ok(dir.path().join(name))
}

/// Build every pair (modules in parallel, kernels of one module in turn).
fn build_all(
    exec: &Executor<'_>,
    state: &State,
    cfg: &Config,
    p: &Plan,
    started: &(dyn Fn(&QueuedPair, usize, usize) + Sync),
) -> Vec<Tested> {
    let mut groups: Vec<Vec<&Rebuild>> = Vec::new();
    for r in &p.rebuilds {
        match groups
            .iter_mut()
            .find(|g| g[0].pair.module == r.pair.module && g[0].pair.version == r.pair.version)
        {
            Some(g) => g.push(r),
            None => groups.push(vec![r]),
        }
    }
    let total = p.rebuilds.len();
    let count = std::sync::atomic::AtomicUsize::new(0);
    let next = Mutex::new(groups.into_iter());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..cfg.jobs.max(1) {
            s.spawn(|| loop {
                let Some(group) = next.lock().ok().and_then(|mut n| n.next()) else {
                    return;
                };
                for r in group {
                    let q = queued(r);
                    let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    started(&q, n, total);
                    let t = build_one(exec, state, r, &q);
                    if let Ok(mut v) = results.lock() {
                        v.push(t);
                    }
                }
            });
        }
    });
    let mut out = results.into_inner().unwrap_or_default();
    out.sort_by(|a, b| a.rebuild.pair.key().cmp(&b.rebuild.pair.key()));
    out
}

fn queued(r: &Rebuild) -> QueuedPair {
    QueuedPair {
        module: r.pair.module.clone(),
        version: r.pair.version.clone(),
        kernel: r.pair.kernel.clone(),
        arch: r.pair.arch.clone(),
        because: r.because.clone(),
        stale_since: 0,
    }
}

fn build_one(exec: &Executor<'_>, state: &State, r: &Rebuild, q: &QueuedPair) -> Tested {
    let t0 = Instant::now();
    let log = state
        .open()
        .and_then(|d| d.subdir("preflight"))
        .and_then(|d| {
            d.create(
                &format!("{}-{}-{}.dkms.log", q.module, q.version, q.kernel),
                false,
            )
        })
        .ok();
    let ran = exec.dkms(q, &["build", "--force"], log);
    let mut t = Tested {
        rebuild: r.clone(),
        ok: Some(true),
        skipped: None,
        reason: None,
        seconds: 0.0,
        make_log: None,
    };
    match ran {
        Ran::Exit(0) => {}
        Ran::Exit(EXIT_BUILD_EXCLUSIVE) => {
            t.ok = None;
            t.skipped = Some("excluded");
        }
        Ran::Exit(EXIT_NO_HEADERS) => {
            t.ok = None;
            t.skipped = Some("no-headers");
        }
        Ran::Exit(s) => {
            t.ok = Some(false);
            t.reason = Some(format!("dkms build exited {s}"));
            t.make_log = exec.keep_make_log_in(q, "preflight");
        }
        Ran::TimedOut => {
            t.ok = Some(false);
            t.reason = Some("dkms build took longer than build_timeout and was killed".into());
            t.make_log = exec.keep_make_log_in(q, "preflight");
        }
        Ran::SpawnFailed(e) => {
            t.ok = Some(false);
            t.reason = Some(e);
        }
    }
    t.seconds = t0.elapsed().as_secs_f64();
    t
}

/// `linux-kbuild-6.1 6.1.192-3` for the line "builds against …".
pub fn against(because: &[Cause]) -> String {
    because
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c.package,
                c.new.as_ref().map_or_else(String::new, ToString::to_string)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_simulation_lines() {
        let text = "NOTE: This is only a simulation!\n\
Inst linux-kbuild-6.1 [6.1.176-1] (6.1.192-3 Debian:12.12/stable [amd64])\n\
Inst tzdata [2024a-0+deb12u1] (2025b-0+deb12u1 Debian:12.12/stable [all])\n\
Conf linux-kbuild-6.1 (6.1.192-3 Debian:12.12/stable [amd64])\n";
        let got = parse_apt_simulation(text);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.as_str(), "linux-kbuild-6.1");
        assert_eq!(got[0].1, "6.1.192-3");
        assert_eq!(got[0].2.as_deref(), Some("amd64"));
    }

    #[test]
    fn overlay_options_refuse_separators() {
        assert!(option_path(Path::new("/usr/src/linux-headers-6.12.38+deb13-common")).is_ok());
        for bad in ["/a,b", "/a:b", "/a\\b"] {
            assert!(option_path(Path::new(bad)).is_err(), "{bad}");
        }
    }
}
