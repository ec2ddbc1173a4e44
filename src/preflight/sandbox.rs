//! The sandbox preflight builds in: a process that is PID 1 of a new PID
//! namespace, in a mount namespace of its own, where the whole system is
//! read-only, `nosuid` and `nodev`, except the private work directories.
//!
//! `dkms-hook preflight` ([`spawn`]) starts `dkms-hook preflight-sandbox`
//! as the first process of a new PID namespace, with `PR_SET_PDEATHSIG`:
//! when preflight dies, even by `kill -9`, the kernel kills the sandbox,
//! and with its PID 1 every process of the namespace (dkms, make, a
//! leftover `sleep`), and with the last of them the mounts. Nothing of a
//! preflight's builds can outlive it, so they are never noted in
//! `builds/`, and a concurrent post-invoke never takes them for a killed
//! run's leftovers.
//!
//! The sandbox ([`main`]) makes every mount private, then read-only,
//! `nosuid` and `nodev` (each one remounted: `mount_setattr` is not in
//! our system-call crate), binds the run directory back writable, unpacks
//! the packages onto a tmpfs of its own, mounts an overlay over each
//! affected directory (the packages' trees as lower layers above the
//! system's, the upper layer in the run directory; the builds' `TMPDIR` is
//! there too), a minimal read-only `/dev`
//! (null, zero, full, random, urandom, tty) and its own `/proc`, then
//! drops `CAP_SYS_ADMIN` and the other capabilities that could undo this
//! from the bounding set, and runs `dkms build --force` for each pair. It
//! reports on stdout, one JSON object a line, and leaves each pair's run
//! log, make.log and (for a build that succeeded) the built
//! `/var/lib/dkms/M/V/K/ARCH` in the run directory for preflight to read.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufRead, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustix::mount::{MountFlags, MountPropagationFlags};
use serde::{Deserialize, Serialize};

use crate::file_tree;
use crate::pair::PairId;
use crate::Error;

/// The hidden command the sandbox runs as.
pub const COMMAND: &str = "preflight-sandbox";
/// The most a job description may hold.
const CAP_JOB: u64 = 4 << 20;
/// The most of a make.log or run log that is kept.
pub const CAP_LOG: u64 = 16 << 20;
/// The capabilities a test build gives up: all but `CHOWN`,
/// `DAC_OVERRIDE`, `FOWNER`, `FSETID`, `KILL`, `SETGID`, `SETUID`,
/// `NET_BIND_SERVICE` and `AUDIT_WRITE` leave the bounding set (above all
/// `CAP_SYS_ADMIN`, which could remount the system writable,
/// `CAP_DAC_READ_SEARCH` (`open_by_handle_at`), `CAP_SYS_CHROOT`,
/// `CAP_MKNOD`, `CAP_SYS_MODULE`, `CAP_SYS_RAWIO`, `CAP_SYS_PTRACE`).
/// Listed one by one: rustix 0.38 (Debian 13's) has no set to iterate.
fn dropped_caps() -> [rustix::thread::Capability; 32] {
    use rustix::thread::Capability as C;
    [
        C::DACReadSearch,
        C::SetPermittedCapabilities,
        C::LinuxImmutable,
        C::NetBroadcast,
        C::NetAdmin,
        C::NetRaw,
        C::IPCLock,
        C::IPCOwner,
        C::SystemModule,
        C::SystemRawIO,
        C::SystemChangeRoot,
        C::SystemProcessTrace,
        C::SystemProcessAccounting,
        C::SystemAdmin,
        C::SystemBoot,
        C::SystemNice,
        C::SystemResource,
        C::SystemTime,
        C::SystemTTYConfig,
        C::MakeNode,
        C::Lease,
        C::AuditControl,
        C::SetFileCapabilities,
        C::MACOverride,
        C::MACAdmin,
        C::SystemLog,
        C::WakeAlarm,
        C::BlockSuspend,
        C::AuditRead,
        C::PerformanceMonitoring,
        C::BerkeleyPacketFilters,
        C::CheckpointRestore,
    ]
}

/// One overlay: `target` (a host path) shows each package's tree at
/// `names` (the in-root directory and its other names; the last package
/// on top) above the system's, with writes going to `upper`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Overlay {
    pub target: PathBuf,
    pub names: Vec<PathBuf>,
    /// On the tmpfs at `run/x`, made by the sandbox.
    pub upper: PathBuf,
    pub work: PathBuf,
    /// The mode of `upper`, which the merged view's top takes.
    pub mode: u32,
}

/// What the sandbox is asked to do (written to its stdin).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    /// The root dkms acts on (`DKMS_HOOK_ROOT` of its environment).
    pub root: PathBuf,
    /// The run directory, the one place written outside the overlays.
    pub run: PathBuf,
    /// Host path of `/var/lib/dkms`.
    pub dkms_tree: PathBuf,
    pub dkms: PathBuf,
    pub overlays: Vec<Overlay>,
    /// The packages, unpacked onto a tmpfs at `run/x/N`.
    pub debs: Vec<PathBuf>,
    pub pairs: Vec<PairId>,
    pub timeout_secs: u64,
    pub jobs: usize,
}

/// How one pair's test build ended, as the sandbox reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Ended {
    Exit(i32),
    TimedOut,
    SpawnFailed(String),
}

/// One line of the sandbox's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Event {
    /// The sandbox is set up; no more refusals.
    Ready,
    Started(usize),
    Done {
        pair: usize,
        ended: Ended,
        seconds: f64,
        /// `kept/N` holds the built `/var/lib/dkms/M/V/K/ARCH`.
        kept: bool,
    },
    /// It cannot run here (no CAP_SYS_ADMIN, no overlayfs, a chroot whose
    /// "/" is no mount point…); nothing was changed.
    Refused(String),
}

/// Names in the run directory, shared by both sides.
pub fn run_log(i: usize) -> String {
    format!("{i}.dkms.log")
}
pub fn make_log(i: usize) -> String {
    format!("{i}.make.log")
}

/// Run `job` in a new sandbox: `on_event` sees each line it reports.
/// Returns once the sandbox has ended; its processes and mounts are gone
/// then (the PID namespace dies with its first process).
pub fn spawn(job: &Job, on_event: &mut dyn FnMut(Event)) -> Result<(), Error> {
    let me = std::env::current_exe().map_err(|e| Error::io(Path::new("/proc/self/exe"), e))?;
    let text = serde_json::to_vec(job).map_err(|e| Error::Refused(e.to_string()))?;
    let refuse = |what: &str, e: rustix::io::Errno| {
        Error::Refused(format!(
            "preflight cannot run here: {what}: {e} (it needs root with CAP_SYS_ADMIN and overlayfs)"
        ))
    };
    // The child of this thread becomes PID 1 of a new PID namespace;
    // this thread's later children must not: it goes back at once.
    let own = rustix::fs::open(
        "/proc/self/ns/pid",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| refuse("opening /proc/self/ns/pid", e))?;
    // CLONE_NEWPID touches no file descriptor table; it only sets this
    // thread's namespace for children, undone right after the spawn.
    rustix::thread::unshare(rustix::thread::UnshareFlags::NEWPID)
        .map_err(|e| refuse("unshare(CLONE_NEWPID)", e))?;
    // No thread may be started between the unshare and the way back
    // (clone refuses CLONE_THREAD then): the job goes through a pipe
    // written after the spawn, not duct's stdin writer thread.
    let (job_in, job_out) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::io(&me, e.into()))?;
    let (job_in, mut job_out) = (File::from(job_in), File::from(job_out));
    let started = duct::cmd(&me, [COMMAND])
        .stdin_file(job_in)
        .stderr_null()
        .unchecked()
        .before_spawn(|c| {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl and unshare are async-signal-safe system calls
            // with no memory effects; the forked child has one thread, as
            // unshare(CLONE_NEWNS) needs.
            unsafe {
                c.pre_exec(|| {
                    rustix::process::set_parent_process_death_signal(Some(
                        rustix::process::Signal::Kill,
                    ))?;
                    rustix::thread::unshare(rustix::thread::UnshareFlags::NEWNS)?;
                    Ok(())
                });
            }
            Ok(())
        })
        .reader();
    let back = rustix::thread::move_into_link_name_space(
        std::os::fd::AsFd::as_fd(&own),
        Some(rustix::thread::LinkNameSpaceType::ProcessID),
    );
    let reader = started.map_err(|e| Error::io(&me, e))?;
    back.map_err(|e| refuse("setns back to our PID namespace", e))?;
    // A sandbox that died early closes the pipe: its report says why.
    let _ = job_out.write_all(&text);
    drop(job_out);
    let mut lines = std::io::BufReader::new(&reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = std::io::Read::take(&mut lines, 64 << 10)
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io(&me, e))?;
        if n == 0 {
            break;
        }
        match serde_json::from_slice::<Event>(&line) {
            Ok(ev) => on_event(ev),
            Err(e) => log::debug!("sandbox: {e}"),
        }
    }
    let _ = reader.try_wait();
    Ok(())
}

/// The sandbox itself (`dkms-hook preflight-sandbox`): the job on stdin,
/// events on stdout. Returns its exit status.
pub fn main() -> i32 {
    let say = |ev: &Event| {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, ev);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    };
    let job = match read_job() {
        Ok(j) => j,
        Err(e) => {
            say(&Event::Refused(e));
            return 2;
        }
    };
    if rustix::process::getpid().as_raw_nonzero().get() != 1 {
        say(&Event::Refused(
            "preflight-sandbox is started by dkms-hook preflight only".into(),
        ));
        return 2;
    }
    if let Err(e) = seal(&job) {
        say(&Event::Refused(format!("preflight cannot run here: {e}")));
        return 2;
    }
    say(&Event::Ready);
    build_all(&job, &|ev| say(&ev));
    0
}

fn read_job() -> Result<Job, String> {
    let mut text = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(std::io::stdin(), CAP_JOB),
        &mut text,
    )
    .map_err(|e| e.to_string())?;
    serde_json::from_slice(&text).map_err(|e| format!("job: {e}"))
}

fn errno(what: impl std::fmt::Display, e: rustix::io::Errno) -> String {
    format!("{what}: {e}")
}

/// Make the system read-only for everything this process starts, except
/// the run directory and the overlays' upper layers.
fn seal(job: &Job) -> Result<(), String> {
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(|e| match e {
        // In a chroot whose directory is no mount point: without private
        // propagation our mounts would reach the host, so nothing is done.
        rustix::io::Errno::INVAL => errno(
            "making mounts private (is \"/\" a mount point? in a chroot, bind-mount its directory onto itself first)",
            e,
        ),
        e => errno("making mounts private", e),
    })?;
    for (point, noexec) in mount_points()? {
        // /proc and /dev are replaced below; what is under them goes with them.
        if point.starts_with("/proc") || point.starts_with("/dev") {
            continue;
        }
        let mut flags =
            MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV;
        if noexec {
            flags |= MountFlags::NOEXEC;
        }
        rustix::mount::mount_remount(&point, flags, "")
            .map_err(|e| errno(format!("remounting {} read-only", point.display()), e))?;
    }
    let run = &job.run;
    rustix::mount::mount_bind(run, run).map_err(|e| errno(run.display(), e))?;
    rustix::mount::mount_remount(
        run,
        MountFlags::BIND | MountFlags::NOSUID | MountFlags::NODEV,
        "",
    )
    .map_err(|e| errno(run.display(), e))?;
    // The packages' trees, on a tmpfs that dies with the namespace: nothing
    // of them survives preflight, and unpacking costs no disk journal.
    let x = job.run.join("x");
    rustix::mount::mount(
        "tmpfs",
        &x,
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        c"mode=700",
    )
    .map_err(|e| errno(format!("tmpfs on {}", x.display()), e))?;
    let xfd = file_tree::open_dir(&x).map_err(|e| format!("{}: {e}", x.display()))?;
    let mut trees = Vec::new();
    for (i, deb) in job.debs.iter().enumerate() {
        let into = file_tree::make_dir(&xfd, OsStr::new(&i.to_string()), 0o700)
            .map_err(|e| format!("{}: {e}", x.display()))?;
        super::with_tar_stream(deb, Duration::from_secs(job.timeout_secs), &mut |r| {
            file_tree::unpack(r, &into, super::UNPACK_BUDGET)
        })
        .map_err(|e| format!("{}: {e}", deb.display()))?;
        trees.push((x.join(i.to_string()), into));
    }
    for o in &job.overlays {
        let (Some(dir), Some(upper), Some(work)) = (
            o.upper.parent().and_then(Path::file_name),
            o.upper.file_name(),
            o.work.file_name(),
        ) else {
            return Err(format!("{}: not a layer path", o.upper.display()));
        };
        let ofd = match file_tree::open_beneath(&xfd, Path::new(dir)) {
            Some(fd) => fd,
            None => file_tree::make_dir(&xfd, dir, 0o700)
                .map_err(|e| format!("{}: {e}", o.upper.display()))?,
        };
        for (name, mode) in [(upper, o.mode), (work, 0o700)] {
            file_tree::make_dir(&ofd, name, mode)
                .map_err(|e| format!("{}: {e}", o.upper.display()))?;
        }
        let mut lowers = Vec::new();
        for (path, fd) in trees.iter().rev() {
            for n in &o.names {
                let rel = n.strip_prefix("/").unwrap_or(n);
                // Only a real directory of the package's own tree, never
                // one reached through a link it ships.
                if file_tree::open_beneath(fd, rel).is_some() {
                    lowers.push(option_path(&path.join(rel))?);
                }
            }
        }
        lowers.push(option_path(&o.target)?);
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            option_path(&o.upper)?,
            option_path(&o.work)?
        );
        // Legacy mount data is one page.
        if opts.len() >= 4000 {
            return Err(format!("too many layers over {}", o.target.display()));
        }
        rustix::mount::mount(
            "overlay",
            &o.target,
            "overlay",
            MountFlags::NOSUID | MountFlags::NODEV,
            c(&opts)?.as_c_str(),
        )
        .map_err(|e| errno(format!("overlayfs over {}", o.target.display()), e))?;
    }
    minimal_dev()?;
    rustix::mount::mount(
        "proc",
        "/proc",
        "proc",
        MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC | MountFlags::RDONLY,
        "",
    )
    .map_err(|e| errno("proc on /proc", e))?;
    for cap in dropped_caps() {
        // A capability this kernel does not know is not there to drop.
        let _ = rustix::thread::remove_capability_from_bounding_set(cap);
    }
    Ok(())
}

fn c(s: &str) -> Result<std::ffi::CString, String> {
    std::ffi::CString::new(s).map_err(|_| "a NUL byte in a path".to_string())
}

/// `,` `:` and `\` separate overlayfs options; such a path is refused.
pub fn option_path(p: &Path) -> Result<String, String> {
    let s = p
        .to_str()
        .ok_or_else(|| format!("{}: not UTF-8", p.display()))?;
    if s.contains([',', ':', '\\']) {
        return Err(format!(
            "cannot mount over {}: a ',', ':' or '\\' in the path",
            p.display()
        ));
    }
    Ok(s.to_string())
}

/// Every mount point of this namespace, and whether it is `noexec`.
fn mount_points() -> Result<Vec<(PathBuf, bool)>, String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let point = f.nth(4)?;
            let opts = f.next()?;
            Some((
                PathBuf::from(unescape(point)),
                opts.split(',').any(|o| o == "noexec"),
            ))
        })
        .collect())
}

/// mountinfo writes space, tab, newline and `\` as `\ooo`.
fn unescape(s: &str) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("0"), 8);
            if let Ok(v) = v {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    OsString::from_vec(out)
}

/// A `/dev` with only the harmless nodes a build uses, read-only.
fn minimal_dev() -> Result<(), String> {
    use rustix::fs::{FileType, Mode};
    rustix::mount::mount(
        "tmpfs",
        "/dev",
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        c"mode=755",
    )
    .map_err(|e| errno("tmpfs on /dev", e))?;
    let dev = file_tree::open_dir(Path::new("/dev")).map_err(|e| format!("/dev: {e}"))?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        rustix::fs::mknodat(
            &dev,
            name,
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(major, minor),
        )
        .map_err(|e| errno(format!("/dev/{name}"), e))?;
        rustix::fs::chmodat(
            &dev,
            name,
            Mode::from_raw_mode(0o666),
            rustix::fs::AtFlags::empty(),
        )
        .map_err(|e| errno(format!("/dev/{name}"), e))?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        rustix::fs::symlinkat(target, &dev, name).map_err(|e| errno(format!("/dev/{name}"), e))?;
    }
    rustix::mount::mount_remount(
        "/dev",
        MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NOEXEC,
        "",
    )
    .map_err(|e| errno("/dev read-only", e))
}

/// Build every pair: modules in parallel (`jobs`), the kernels of one
/// module in turn (they share `/var/lib/dkms/M/V/build`).
fn build_all(job: &Job, say: &(dyn Fn(Event) + Sync)) {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, p) in job.pairs.iter().enumerate() {
        match groups.iter_mut().find(|g| {
            let first = &job.pairs[g[0]];
            first.module == p.module && first.version == p.version
        }) {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    let next = Mutex::new(groups.into_iter());
    std::thread::scope(|s| {
        for _ in 0..job.jobs.max(1) {
            s.spawn(|| loop {
                let Some(group) = next.lock().ok().and_then(|mut n| n.next()) else {
                    return;
                };
                for i in group {
                    say(Event::Started(i));
                    say(build_one(job, i));
                }
            });
        }
    });
}

fn build_one(job: &Job, i: usize) -> Event {
    let p = &job.pairs[i];
    let t0 = Instant::now();
    let run = file_tree::open_dir(&job.run).ok();
    let logs = run
        .as_ref()
        .and_then(|r| file_tree::open_beneath(r, Path::new("logs")));
    let log = logs.as_ref().and_then(|l| {
        rustix::fs::openat(
            l,
            run_log(i).as_str(),
            rustix::fs::OFlags::WRONLY
                | rustix::fs::OFlags::CREATE
                | rustix::fs::OFlags::EXCL
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::from_raw_mode(0o600),
        )
        .ok()
        .map(File::from)
    });
    let words = [
        "build",
        "--force",
        "-m",
        p.module.as_str(),
        "-v",
        p.version.as_str(),
        "-k",
        p.kernel.as_str(),
    ];
    let args: Vec<&OsStr> = words.iter().map(OsStr::new).collect();
    let ended = run_dkms(job, &args, log);
    let tree = file_tree::open_dir(&job.dkms_tree).ok();
    let module = tree
        .as_ref()
        .and_then(|t| file_tree::open_beneath(t, &p.module_version_rel()));
    // make.log is in the build directory the next kernel's build reuses.
    if let (Some(m), Some(l)) = (&module, &logs) {
        if let Some(b) = file_tree::open_beneath(m, Path::new("build")) {
            copy_file(&b, "make.log", l, &make_log(i), CAP_LOG);
        }
    }
    // dkms makes a signing key where there is none (3.0: `mok.key`); the
    // overlay keeps it to itself, so what was signed with it is not kept.
    let new_key = job.overlays.iter().any(|o| {
        o.target == job.dkms_tree
            && ["mok.key", "mok.pub"]
                .iter()
                .any(|k| std::fs::symlink_metadata(o.upper.join(k)).is_ok())
    });
    let mut kept = false;
    if ended == Ended::Exit(0) && !new_key {
        let built = module
            .as_ref()
            .and_then(|m| file_tree::open_beneath(m, &p.kernel_arch_rel()));
        let dest = run
            .as_ref()
            .and_then(|r| file_tree::open_beneath(r, Path::new("kept")));
        if let (Some(b), Some(d)) = (built, dest) {
            let mut budget = crate::rebuild::kept::KEPT_BUDGET;
            match file_tree::copy_tree(&b, &d, OsStr::new(&i.to_string()), &mut budget) {
                Ok(()) => kept = true,
                Err(e) => log::debug!("not kept: {e}"),
            }
        }
    }
    Event::Done {
        pair: i,
        ended,
        seconds: t0.elapsed().as_secs_f64(),
        kept,
    }
}

/// Copy the regular file `name` below `from` to `to_name` below `to`,
/// at most `cap` bytes, without following links.
fn copy_file(from: &OwnedFd, name: &str, to: &OwnedFd, to_name: &str, cap: u64) {
    use rustix::fs::{Mode, OFlags};
    let Ok(src) = rustix::fs::openat(
        from,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return;
    };
    if !rustix::fs::fstat(&src).is_ok_and(|st| {
        rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::RegularFile
    }) {
        return;
    }
    let Ok(dst) = rustix::fs::openat(
        to,
        to_name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    ) else {
        return;
    };
    let _ = std::io::copy(
        &mut std::io::Read::take(File::from(src), cap),
        &mut File::from(dst),
    );
}

/// `dkms ARGS`, in its own process group, output to `log`, killed with its
/// group after the build time limit.
fn run_dkms(job: &Job, args: &[&OsStr], log: Option<File>) -> Ended {
    let Some(log) = log else {
        return Ended::SpawnFailed("cannot open the run log".into());
    };
    // An OsStr, not a Path: duct looks a bare name up in PATH only then.
    let expr = duct::cmd(job.dkms.as_os_str(), args)
        .env("DKMS_HOOK_ROOT", &job.root)
        // dkms, make and gcc take their temporary files there: /tmp is
        // read-only like the rest.
        .env("TMPDIR", job.run.join("tmp"))
        .stdin_null()
        .unchecked()
        .before_spawn(|c| {
            // Each build waits for its child on the thread that spawned it.
            crate::tools::own_group_dying_with_us(c);
            Ok(())
        })
        .stderr_to_stdout()
        .stdout_file(log);
    let handle = match expr.start() {
        Ok(h) => h,
        Err(e) => return Ended::SpawnFailed(format!("cannot run {}: {e}", job.dkms.display())),
    };
    let pgid = handle
        .pids()
        .first()
        .and_then(|p| i32::try_from(*p).ok())
        .unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(job.timeout_secs);
    match crate::tools::wait_deadline(&handle, deadline) {
        Ok(Some(out)) => Ended::Exit(out.status.code().unwrap_or(-1)),
        Ok(None) => {
            if let Some(pid) = rustix::process::Pid::from_raw(pgid) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::Kill);
            }
            let _ = handle.wait();
            Ended::TimedOut
        }
        Err(e) => Ended::SpawnFailed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_refuse_separators() {
        assert!(option_path(Path::new("/usr/src/linux-headers-6.12.38+deb13-common")).is_ok());
        for bad in ["/a,b", "/a:b", "/a\\b"] {
            assert!(option_path(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/mnt/a\\040b"), OsString::from("/mnt/a b"));
        assert_eq!(unescape("/x\\134"), OsString::from("/x\\"));
    }
}
