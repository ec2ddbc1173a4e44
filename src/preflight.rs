//! Preflight: test-build every pair an upgrade will make stale against the
//! build tree *as it will be* once the upgrade's packages are unpacked, before
//! dpkg touches anything.
//!
//! The pairs come from the same planner as the forecast before apt's prompt
//! (`plan::plan` on the planned changes), so preflight and forecast always
//! agree on "which pairs, against which packages".
//!
//! How the build is kept off the system: it works in a private run
//! directory (`/var/lib/dkms-hook/preflight/run-PID-N`, 0700, made fresh),
//! and the real `dkms build --force` runs in [`sandbox`]: a new PID and
//! mount namespace where everything is read-only, `nosuid` and `nodev`,
//! each package is unpacked by [`crate::file_tree::unpack`] onto a tmpfs
//! of its own (never through a link, without set-id bits or device
//! nodes), with an overlay over each directory of the affected kernels' build
//! trees, each kernel's `/lib/modules/K` and `/var/lib/dkms`: the
//! packages' trees as lower layers above the system's, the upper layer in
//! the run directory. The kernel stacks the layers, so no file of a
//! package is ever copied into a merged view (where a link already there
//! would lead the copy out). The sandbox dies with preflight, and with it
//! every build and mount; the run directory is removed at the end, or by
//! the next preflight. The other way, dkms's
//! `--dkmstree`/`--kernelsourcedir` on a scratch copy, copies whole
//! headers trees and has to rewrite absolute includes such as the flavour
//! Makefile's `include /usr/src/linux-headers-…-common/Makefile`.

pub mod sandbox;

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use debversion::Version;

use crate::change::Change;
use crate::config::Config;
use crate::dkms::DKMS_TREE;
use crate::file_tree::{self, Budget};
use crate::inventory::Inventory;
use crate::kernel::{KernelRelease, MODULES_DIR};
use crate::name::PackageName;
use crate::pair::PairId;
use crate::plan::{self, Cause, Plan, Rebuild};
use crate::rebuild::kept;
use crate::root::Root;
use crate::state::{State, STATE_DIR};
use crate::tools::Tools;
use crate::Error;

pub use crate::tools::{APT_GET, DPKG_DEB};
use crate::tools::{
    DKMS_EXIT_BUILD_EXCLUSIVE as EXIT_BUILD_EXCLUSIVE, DKMS_EXIT_NO_HEADERS as EXIT_NO_HEADERS,
};
/// The most one package may unpack to (linux-headers-*-common: ~20,000
/// files, ~100 MB).
pub const UNPACK_BUDGET: Budget = Budget {
    entries: 400_000,
    bytes: 4 << 30,
};

/// One package file of the upgrade.
#[derive(Debug, Clone)]
pub struct Deb {
    pub path: PathBuf,
    pub package: PackageName,
    pub version: Version,
    pub architecture: Option<String>,
    /// The first alternative of each `Depends` entry, by name.
    pub depends: Vec<PackageName>,
    /// Its paths (`/usr/…`), once unpacked.
    pub files: Vec<PathBuf>,
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
        files: Vec::new(),
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

/// What preflight is to do for a set of packages.
pub struct Planned {
    pub plan: Plan,
    pub inventory: Inventory,
    /// Pairs of new kernels that cannot be test-built, with why.
    pub not_tested: NotTested,
    /// The kernels the packages install new.
    pub new_kernels: Vec<KernelRelease>,
}

/// The plan for installing `debs` (unpacked: their paths tell which of them
/// brings a new kernel) on this root: the planner's own answer for these
/// packages replacing what is installed.
pub fn plan_for(root: &Root, debs: &[Deb], cfg: &Config) -> Result<Planned, Error> {
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
    p.warnings.splice(
        0..0,
        inv.warnings.iter().cloned().map(plan::Warning::Machine),
    );
    let (not_tested, new) = new_kernels(root, debs, &inv, &mut p)?;
    Ok(Planned {
        plan: p,
        inventory: inv,
        not_tested,
        new_kernels: new,
    })
}

/// The kernel whose build link a package ships (`/lib/modules/K/build` or
/// `/usr/lib/modules/K/build`): what makes it a kernel's headers. A
/// `linux-headers-X-common` or a kbuild package ships none.
pub fn kernel_of(deb: &Deb) -> Option<KernelRelease> {
    deb.files.iter().find_map(|f| {
        let rest = f
            .strip_prefix("/lib/modules")
            .or_else(|_| f.strip_prefix("/usr/lib/modules"))
            .ok()?;
        let mut c = rest.components();
        let k = c.next()?.as_os_str().to_str()?;
        (c.next()?.as_os_str() == "build" && c.next().is_none())
            .then(|| KernelRelease::new(k).ok())
            .flatten()
    })
}

/// A kernel the upgrade installs new (a package ships its build link and no
/// such kernel has headers yet): each installed module is test-built for
/// it too, when everything that package depends on is among the `.deb`s
/// or installed; otherwise it is reported, with the reason.
fn new_kernels(
    root: &Root,
    debs: &[Deb],
    inv: &Inventory,
    p: &mut Plan,
) -> Result<(NotTested, Vec<KernelRelease>), Error> {
    let mut new = Vec::new();
    let mut skipped = Vec::new();
    let mut modules: Vec<&crate::dkms::Pair> = Vec::new();
    for pair in inv.pairs.iter().filter(|x| x.installed) {
        if !modules
            .iter()
            .any(|m| m.id.module == pair.id.module && m.id.version == pair.id.version)
        {
            modules.push(pair);
        }
    }
    for d in debs {
        let Some(k) = kernel_of(d) else {
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
                    id: PairId {
                        kernel: k.clone(),
                        ..m.id.clone()
                    },
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
                if !new.contains(&k) {
                    new.push(k.clone());
                }
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
    Ok((skipped, new))
}

/// What `apt-get upgrade` (or `dist-upgrade`) would install now, from its
/// simulation: `Inst NAME [OLD] (NEW SUITE [ARCH])` lines.
pub fn apt_upgrade_candidates(
    apt_get: &OsStr,
    dist_upgrade: bool,
) -> Result<Vec<(PackageName, String, Option<String>)>, Error> {
    let action = if dist_upgrade {
        "dist-upgrade"
    } else {
        "upgrade"
    };
    let out = run_apt_get(duct::cmd(apt_get, ["-s", "-q", action]).stdout_capture())
        .and_then(|o| ok_or_refused(o, || format!("apt-get -s {action} failed")))?;
    Ok(parse_apt_simulation(&String::from_utf8_lossy(&out.stdout)))
}

/// Runs an apt-get command without input or error output.
fn run_apt_get(cmd: duct::Expression) -> Result<std::process::Output, Error> {
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
pub fn apt_download(
    apt_get: &OsStr,
    name: &PackageName,
    version: &str,
    dir: &Path,
) -> Result<PathBuf, Error> {
    let spec = format!("{name}={version}");
    run_apt_get(
        duct::cmd(apt_get, ["-q", "download", spec.as_str()])
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

/// Directories mounted over with an overlay, in-root, each with its other
/// names, none inside another.
fn overlay_dirs(
    root: &Root,
    inv: &Inventory,
    p: &Plan,
    new: &[KernelRelease],
) -> Vec<(PathBuf, Vec<PathBuf>)> {
    let mut dirs: Vec<(PathBuf, Vec<PathBuf>)> = Vec::new();
    let mut add = |path: PathBuf, also: Vec<PathBuf>| {
        if !dirs.iter().any(|(d, _)| d == &path) {
            dirs.push((path, also));
        }
    };
    for r in &p.rebuilds {
        if let Some(k) = inv.kernel(&r.pair.id.kernel) {
            for t in &k.tree {
                add(t.path.clone(), t.also.clone());
            }
        }
        if let Ok(m) = root.canonicalize(Path::new(MODULES_DIR).join(r.pair.id.kernel.as_str())) {
            add(
                m,
                vec![Path::new(MODULES_DIR).join(r.pair.id.kernel.as_str())],
            );
        }
    }
    if let Ok(d) = root.canonicalize(DKMS_TREE) {
        add(d, Vec::new());
    }
    // A kernel installed new (its package ships `/lib/modules/K/build`):
    // its headers land in /usr/src and its build link in /lib/modules,
    // which do not exist yet, so these two are overlaid with the packages'
    // trees over them.
    if p.rebuilds.iter().any(|r| new.contains(&r.pair.id.kernel)) {
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

/// One preflight's private run directory,
/// `/var/lib/dkms-hook/preflight/run-PID-N` (mode 0700, made fresh with
/// mkdir, never reused), held under `preflight/lock` and removed on drop.
/// It holds the downloads, the mount point of the sandbox's tmpfs (the
/// packages' trees, the overlays' upper layers) and what the sandbox
/// reports.
pub struct Session {
    preflight: crate::state_dir::Dir,
    fd: OwnedFd,
    name: String,
    path: PathBuf,
    _lock: std::fs::File,
}

impl Session {
    /// Take `preflight/lock` (one preflight at a time), remove what a
    /// killed one left, and make a fresh run directory.
    pub fn begin(state: &State) -> Result<Session, Error> {
        let preflight = state.open()?.subdir("preflight")?;
        let lock = preflight.create("lock", true)?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::io(&preflight.path().join("lock"), e.into()))?;
        let top =
            file_tree::open_dir(preflight.path()).map_err(|e| Error::io(preflight.path(), e))?;
        for old in preflight
            .names()
            .into_iter()
            .filter(|n| n.starts_with("run-"))
        {
            file_tree::remove_tree(&top, OsStr::new(&old))
                .map_err(|e| Error::io(&preflight.path().join(&old), e))?;
        }
        let mut n = 0u32;
        let (name, fd) = loop {
            let name = format!("run-{}-{n}", std::process::id());
            match file_tree::make_dir(&top, OsStr::new(&name), 0o700) {
                Ok(fd) => break (name, fd),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => return Err(Error::io(&preflight.path().join(&name), e)),
            }
        };
        for sub in ["logs", "kept", "tmp", "x"] {
            file_tree::make_dir(&fd, OsStr::new(sub), 0o700)
                .map_err(|e| Error::io(&preflight.path().join(&name).join(sub), e))?;
        }
        Ok(Session {
            path: preflight.path().join(&name),
            preflight,
            fd,
            name,
            _lock: lock,
        })
    }

    /// Host path of the run directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh private directory for `apt-get download`.
    pub fn download_dir(&self) -> Result<PathBuf, Error> {
        file_tree::make_dir(&self.fd, OsStr::new("dl"), 0o700)
            .map_err(|e| Error::io(&self.path.join("dl"), e))?;
        Ok(self.path.join("dl"))
    }

    /// Read each package's paths (its tar stream's headers; nothing is
    /// written): the sandbox unpacks them, onto a tmpfs of its own.
    pub fn read_contents(&self, debs: &mut [Deb], timeout: Duration) -> Result<(), Error> {
        for deb in debs.iter_mut() {
            let listed = with_tar_stream(&deb.path, timeout, &mut |r| {
                file_tree::list(r, UNPACK_BUDGET)
            })
            .map_err(|why| Error::Unreadable {
                path: deb.path.clone(),
                why,
            })?;
            deb.files = listed.paths;
        }
        Ok(())
    }
}

/// Run `f` on the tar stream of the package at `path` (`dpkg-deb
/// --fsys-tarfile`), dpkg-deb killed after `timeout`; it must end well.
pub fn with_tar_stream<T>(
    path: &Path,
    timeout: Duration,
    f: &mut dyn FnMut(&mut dyn std::io::Read) -> Result<T, String>,
) -> Result<T, String> {
    let reader = duct::cmd(DPKG_DEB, [OsStr::new("--fsys-tarfile"), path.as_os_str()])
        .stdin_null()
        .stderr_null()
        .unchecked()
        .reader()
        .map_err(|e| format!("{DPKG_DEB}: {e}"))?;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let r = std::thread::scope(|s| {
        let reader = &reader;
        s.spawn(move || {
            if done_rx.recv_timeout(timeout).is_err() {
                let _ = reader.kill();
            }
        });
        let mut stream = reader;
        let r = f(&mut stream).and_then(|u| {
            // What follows the end marker is padding: read it (at most one
            // tar record's worth) so that dpkg-deb ends.
            let mut rest = std::io::Read::take(reader, 1 << 20);
            std::io::copy(&mut rest, &mut std::io::sink()).map_err(|e| e.to_string())?;
            Ok(u)
        });
        let _ = done_tx.send(());
        r
    });
    let r = match r {
        Ok(u) => u,
        Err(e) => {
            let _ = reader.kill();
            return Err(format!("cannot unpack: {e}"));
        }
    };
    if reader.try_wait().ok().flatten().map(|o| o.status.success()) != Some(true) {
        let _ = reader.kill();
        return Err("dpkg-deb --fsys-tarfile failed".into());
    }
    Ok(r)
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Ok(top) = file_tree::open_dir(self.preflight.path()) {
            if let Err(e) = file_tree::remove_tree(&top, OsStr::new(&self.name)) {
                log::warn!("{}: {e}", self.path.display());
            }
        }
    }
}

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
    let mut overlays = Vec::new();
    for (n, (dir, also)) in overlay_dirs(root, inv, p, new).into_iter().enumerate() {
        let target = root.host(&dir);
        // The merged view's top directory takes the upper layer's mode.
        let mode = std::fs::metadata(&target).map_or(0o755, |m| {
            std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777
        });
        // On the sandbox's tmpfs, which it mounts on `x`: the build's
        // writes never reach the disk, and none survives preflight.
        let o = session.path.join("x").join(format!("o{n}"));
        overlays.push(sandbox::Overlay {
            target,
            upper: o.join("upper"),
            work: o.join("work"),
            mode,
            names: std::iter::once(dir.clone()).chain(also).collect(),
        });
    }
    let job = sandbox::Job {
        root: root.dir().to_path_buf(),
        run: session.path.clone(),
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
        if let (true, Some(full)) = (kept && t.ok == Some(true), &full) {
            if let Err(e) = keep(session, state, debs, full, new, &t.rebuild, i) {
                log::debug!(
                    "preflight's build of {} not kept: {e}",
                    t.rebuild.pair.id.label()
                );
            }
        }
        let id = &t.rebuild.pair.id;
        session.keep_log(&sandbox::run_log(i), &id.run_log_name());
        if t.ok == Some(false) && session.keep_log(&sandbox::make_log(i), &id.kept_make_log_name())
        {
            t.make_log = Some(
                Path::new(STATE_DIR)
                    .join("preflight")
                    .join(id.kept_make_log_name()),
            );
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
        &session.path.join("kept").join(i.to_string()),
        &inputs,
    )
    .map_err(|e| e.to_string())
}

impl Session {
    /// Copy `logs/NAME` of the run directory to `preflight/AS` (at most
    /// [`sandbox::CAP_LOG`]); whether there was one.
    fn keep_log(&self, name: &str, as_name: &str) -> bool {
        let Some(logs) = file_tree::open_beneath(&self.fd, Path::new("logs")) else {
            return false;
        };
        let Ok(fd) = rustix::fs::openat(
            &logs,
            name,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::NONBLOCK
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) else {
            return false;
        };
        if !rustix::fs::fstat(&fd)
            .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode).is_file())
        {
            return false;
        }
        let mut r = std::io::Read::take(std::fs::File::from(fd), sandbox::CAP_LOG);
        // A log to read, not state: no fsync (each costs a journal commit).
        match self.preflight.create(as_name, false).and_then(|mut f| {
            std::io::copy(&mut r, &mut f).map_err(|e| Error::io(Path::new(as_name), e))
        }) {
            Ok(_) => true,
            Err(e) => {
                log::warn!("{e}");
                false
            }
        }
    }
}

fn tested_of(r: &Rebuild, ended: sandbox::Ended, seconds: f64) -> Tested {
    let mut t = Tested {
        rebuild: r.clone(),
        ok: Some(true),
        skipped: None,
        reason: None,
        seconds,
        make_log: None,
    };
    match ended {
        sandbox::Ended::Exit(0) => {}
        sandbox::Ended::Exit(EXIT_BUILD_EXCLUSIVE) => {
            t.ok = None;
            t.skipped = Some("excluded");
        }
        sandbox::Ended::Exit(EXIT_NO_HEADERS) => {
            t.ok = None;
            t.skipped = Some("no-headers");
        }
        sandbox::Ended::Exit(s) => {
            t.ok = Some(false);
            t.reason = Some(format!("dkms build exited {s}"));
        }
        sandbox::Ended::TimedOut => {
            t.ok = Some(false);
            t.reason = Some("dkms build took longer than build_timeout and was killed".into());
        }
        sandbox::Ended::SpawnFailed(e) => {
            t.ok = Some(false);
            t.reason = Some(e);
        }
    }
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
}
