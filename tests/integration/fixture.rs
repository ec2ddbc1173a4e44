//! Fake systems in a temp dir: dpkg database, kernel build trees, dkms tree
//! and logs, built with the layouts real distributions use, and a runner for
//! the real binary against them.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

pub struct Fixture {
    pub dir: tempfile::TempDir,
}

/// How a Debian release lays out a kernel's build links.
#[derive(Clone, Copy)]
enum Layout {
    Bookworm,
    Trixie,
}

/// `2026-11-23T20:56:02Z` or with fractions, as a SystemTime.
pub fn at(s: &str) -> SystemTime {
    let ts: jiff::Timestamp = s.parse().expect("RFC 3339 time");
    SystemTime::UNIX_EPOCH
        + std::time::Duration::from_nanos(u64::try_from(ts.as_nanosecond()).unwrap())
}

pub fn set_mtime(p: &Path, when: SystemTime) {
    // Set through the link itself would need utimensat; our links' times do not matter.
    let f = fs::File::options()
        .write(true)
        .open(p)
        .or_else(|_| fs::File::open(p))
        .unwrap();
    f.set_modified(when).unwrap();
}

impl Fixture {
    pub fn new() -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        for d in [
            "var/lib/dpkg/info",
            "var/log",
            "usr/lib/modules",
            "usr/src",
            "etc",
            "boot",
        ] {
            fs::create_dir_all(f.path(d)).unwrap();
        }
        // Merged /usr, as on Debian 12.
        symlink("usr/lib", f.path("lib")).unwrap();
        fs::write(f.path("var/lib/dpkg/status"), "").unwrap();
        f
    }

    /// The shipped sample of Debian bug #1040401 with its recorded mtimes.
    pub fn sample() -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bug-1040401");
        let ok = Command::new("cp")
            .arg("-a")
            .arg(src.join("root/."))
            .arg(f.dir.path())
            .status()
            .unwrap();
        assert!(ok.success());
        for line in fs::read_to_string(src.join("mtimes")).unwrap().lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (when, path) = line.split_once(' ').unwrap();
            set_mtime(&f.path(path), at(when));
        }
        f
    }

    /// The sample with its cursor after the first transaction: the next
    /// post-invoke finds the kbuild upgrade and rebuilds the pair of
    /// 6.1.0-50-amd64.
    pub fn pending() -> Fixture {
        let (f, second) = Fixture::before_second_transaction();
        f.run(&["post-invoke"]);
        let mut log = f.read("var/log/dpkg.log");
        log.extend_from_slice(second.as_bytes());
        f.write("var/log/dpkg.log", log);
        f
    }

    /// The sample with dpkg.log cut after the first transaction: the state
    /// before `apt-get install linux-headers-6.1.0-56-amd64`, and that
    /// second transaction's lines to append.
    pub fn before_second_transaction() -> (Fixture, String) {
        let f = Fixture::sample();
        let log = String::from_utf8(f.read("var/log/dpkg.log")).unwrap();
        let cut = log
            .find("2026-11-23 20:57:34 startup archives unpack")
            .unwrap();
        f.write("var/log/dpkg.log", &log[..cut]);
        (f, log[cut..].to_string())
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }

    pub fn write(&self, p: &str, content: impl AsRef<[u8]>) {
        let p = self.path(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    /// Write an executable file. Through a child process (`install`): a
    /// file this process has open for writing is also open in any child
    /// another test thread forks at that moment, until it execs, and
    /// running the file then fails with "Text file busy" (ETXTBSY).
    pub fn write_executable(&self, p: &str, content: impl AsRef<[u8]>) {
        let src = self.path(&format!(".executables/{}", p.replace('/', "_")));
        self.write(&format!(".executables/{}", p.replace('/', "_")), content);
        install_executable(&src, &self.path(p));
    }

    pub fn link(&self, p: &str, target: &str) {
        let p = self.path(p);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let _ = fs::remove_file(&p);
        symlink(target, p).unwrap();
    }

    pub fn mtime(&self, p: &str, when: &str) {
        set_mtime(&self.path(p), at(when));
    }

    /// An installed package: status paragraph, file list (with parent dirs)
    /// stamped `unpacked`, and its files on disk. Paths ending in `/` are
    /// directories; `path -> target` entries are symlinks.
    pub fn package(&self, name: &str, arch: &str, version: &str, files: &[&str], unpacked: &str) {
        let mut lines = vec!["/.".to_string()];
        for f in files {
            let (path, target) = match f.split_once(" -> ") {
                Some((p, t)) => (p, Some(t)),
                None => (*f, None),
            };
            let clean = path.trim_end_matches('/');
            let mut parents: Vec<&str> = Vec::new();
            let mut p = Path::new(clean).parent();
            while let Some(d) = p.and_then(|d| d.to_str()).filter(|d| *d != "/") {
                parents.push(d);
                p = Path::new(d).parent();
            }
            for d in parents.into_iter().rev() {
                if !lines.iter().any(|l| l == d) {
                    lines.push(d.to_string());
                }
            }
            lines.push(clean.to_string());
            match target {
                Some(t) => self.link(clean, t),
                None if path.ends_with('/') => fs::create_dir_all(self.path(clean)).unwrap(),
                None if !self.path(clean).exists() => {
                    self.write(clean, format!("{name} {version}\n"))
                }
                None => {}
            }
        }
        let list = format!("var/lib/dpkg/info/{name}.list");
        self.write(&list, lines.join("\n") + "\n");
        self.mtime(&list, unpacked);
        let mut status = fs::read_to_string(self.path("var/lib/dpkg/status")).unwrap();
        status.push_str(&format!(
            "Package: {name}\nStatus: install ok installed\nPriority: optional\nArchitecture: {arch}\nVersion: {version}\nDescription: {name}\n\n"
        ));
        self.write("var/lib/dpkg/status", status);
    }

    /// A Debian 12 kernel `ABI-FLAVOUR` (e.g. `6.3.0-1-amd64`): headers for the
    /// flavour and `-common`, linked to `kbuild` (`linux-kbuild-6.3`), with
    /// absolute `build` and `source` links.
    pub fn debian_kernel(&self, release: &str, version: &str, kbuild: &str, unpacked: &str) {
        self.kernel_with_layout(release, version, kbuild, unpacked, Layout::Bookworm);
    }

    /// A Debian 13 kernel (`6.12.38+deb13-amd64`): as Debian 12's, but
    /// `/usr/lib/modules/K/build` is the relative link
    /// `../../../src/linux-headers-K` and there is no `source` link.
    pub fn trixie_kernel(&self, release: &str, version: &str, kbuild: &str, unpacked: &str) {
        self.kernel_with_layout(release, version, kbuild, unpacked, Layout::Trixie);
    }

    fn kernel_with_layout(
        &self,
        release: &str,
        version: &str,
        kbuild: &str,
        unpacked: &str,
        layout: Layout,
    ) {
        let (abi, _flavour) = release.rsplit_once('-').unwrap();
        let common = format!("/usr/src/linux-headers-{abi}-common");
        let flav = format!("/usr/src/linux-headers-{release}");
        let kb = format!("/usr/lib/{kbuild}");
        self.package(
            &format!("linux-headers-{abi}-common"),
            "all",
            version,
            &[
                &format!("{common}/Makefile"),
                &format!("{common}/include/linux/module.h"),
                &format!("{common}/scripts -> ../../lib/{kbuild}/scripts"),
            ],
            unpacked,
        );
        self.write(
            &format!("{flav}/Makefile"),
            format!("include {common}/Makefile\n"),
        );
        self.package(
            &format!("linux-headers-{release}"),
            "amd64",
            version,
            &[
                &format!("{flav}/Makefile"),
                &format!("{flav}/.config"),
                &format!("{flav}/include/generated/autoconf.h"),
                &format!("{flav}/scripts -> ../../lib/{kbuild}/scripts"),
                &format!("{flav}/tools -> ../../lib/{kbuild}/tools"),
            ],
            unpacked,
        );
        let links = match layout {
            Layout::Bookworm => vec![
                format!("/lib/modules/{release}/build -> {flav}"),
                format!("/lib/modules/{release}/source -> {common}"),
            ],
            Layout::Trixie => vec![format!(
                "/usr/lib/modules/{release}/build -> ../../../src/linux-headers-{release}"
            )],
        };
        // The links belong to the flavour's headers package.
        let list = format!("var/lib/dpkg/info/linux-headers-{release}.list");
        let mut text = String::from_utf8(self.read(&list)).unwrap();
        for l in &links {
            let (path, target) = l.split_once(" -> ").unwrap();
            self.link(path, target);
            text.push_str(path);
            text.push('\n');
        }
        self.write(&list, text);
        self.mtime(&list, unpacked);
        if !self.path(&kb).exists() {
            fs::create_dir_all(self.path(&format!("{kb}/scripts/basic"))).unwrap();
            fs::create_dir_all(self.path(&format!("{kb}/tools/objtool"))).unwrap();
        }
        self.write(&format!("boot/vmlinuz-{release}"), "kernel");
    }

    /// A kbuild package owning `scripts/` and `tools/`.
    pub fn kbuild(&self, name: &str, version: &str, unpacked: &str) {
        let kb = format!("/usr/lib/{name}");
        self.package(
            name,
            "amd64",
            version,
            &[
                &format!("{kb}/scripts/Kbuild.include"),
                &format!("{kb}/scripts/basic/fixdep"),
                &format!("{kb}/tools/objtool/objtool"),
            ],
            unpacked,
        );
    }

    /// A dkms pair built (and installed) at `built`.
    pub fn dkms_pair(&self, module: &str, version: &str, release: &str, ko: &str, built: &str) {
        let dir = format!("var/lib/dkms/{module}/{version}/{release}/x86_64");
        self.write(
            &format!("{dir}/module/{ko}.ko"),
            format!("ko {module} {release}"),
        );
        self.write(&format!("{dir}/log/make.log"), "make.log");
        self.mtime(&format!("{dir}/module/{ko}.ko"), built);
        self.link(
            &format!("var/lib/dkms/{module}/kernel-{release}-x86_64"),
            &format!("{version}/{release}/x86_64"),
        );
        self.write(
            &format!("usr/lib/modules/{release}/updates/dkms/{ko}.ko"),
            format!("ko {module} {release}"),
        );
    }

    /// The real binary with `--root` on this fixture, in UTC, with the
    /// recording dkms stand-in.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_dkms-hook"));
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration");
        for (var, stand_in) in [
            ("DKMS_HOOK_DKMS", "fake-dkms"),
            ("DKMS_HOOK_MODINFO", "fake-modinfo"),
            ("DKMS_HOOK_DEPMOD", "fake-depmod"),
            ("DKMS_HOOK_MOKUTIL", "fake-mokutil"),
        ] {
            c.env(var, here.join(stand_in));
        }
        c.arg("--root")
            .arg(self.dir.path())
            .args(args)
            .env("TZ", "UTC")
            .env_remove("DKMS_HOOK_ROOT")
            .env_remove("DKMS_HOOK_SUSPEND")
            .env_remove("DKMS_HOOK_LOG");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// [`Fixture::run`] with a shell script as update-initramfs (named, as
    /// under `--root` it must be). [`RECORD_INITRAMFS`] records the calls.
    pub fn run_with_update_initramfs(&self, args: &[&str], script: &str) -> Output {
        let stub = self.path("bin-stubs/update-initramfs");
        self.write_executable("bin-stubs/update-initramfs", script);
        self.cmd(args)
            .env("DKMS_HOOK_UPDATE_INITRAMFS", stub)
            .output()
            .unwrap()
    }

    /// A shell named `apt` stands in for apt: the hooks are its children, as
    /// in a real apt run (run `post-invoke` as [`APT_POST_INVOKE`] does).
    /// Returns stdout and stderr together.
    pub fn under_fake_apt(&self, script: &str, json_messages: &[String]) -> String {
        self.under_fake_apt_with_args(script, json_messages, &[])
    }

    /// [`Fixture::under_fake_apt`] with more words on the stand-in apt's
    /// command line (`/proc/PID/cmdline`), such as `--reinstall`.
    pub fn under_fake_apt_with_args(
        &self,
        script: &str,
        json_messages: &[String],
        args: &[&str],
    ) -> String {
        self.under_frontend("apt", script, json_messages, args)
    }

    /// Wait (at most a minute) until the waiters started under a fake
    /// unattended-upgrades for this root are done (processes running
    /// `dkms-hook --root DIR after-unattended-upgrades …`).
    pub fn wait_for_waiters(&self) {
        let root = self.dir.path().as_os_str().as_encoded_bytes().to_vec();
        for _ in 0..600 {
            let waiting = fs::read_dir("/proc")
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| {
                    fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                        let words: Vec<&[u8]> = c.split(|&b| b == 0).collect();
                        words.contains(&&b"after-unattended-upgrades"[..])
                            && words.contains(&&root[..])
                    })
                });
            if !waiting {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("a waiter still runs after a minute");
    }

    /// A shell named `unattended-upgrade` stands in for unattended-upgrades
    /// (the kernel shows it as `unattended-upgr`). python-apt forks it for
    /// each dpkg run (a subshell, `( …; : )`), and runs each hook list
    /// entry twice (see [`uu_step`]). No JSON hooks.
    pub fn under_fake_unattended_upgrades(&self, script: &str) -> String {
        self.under_frontend("unattended-upgrade", script, &[], &[])
    }

    /// A copy of `sh` named `program` runs `script`, the hooks being its
    /// children; `json_messages` go to the JSON hook's socket on fd 3.
    fn under_frontend(
        &self,
        program: &str,
        script: &str,
        json_messages: &[String],
        args: &[&str],
    ) -> String {
        self.under_frontend_calls(program, script, &[json_messages], args)
            .0
    }

    /// [`Fixture::under_fake_apt`] with one JSON hook socket per call, on
    /// fds 3, 4, 5, … (the script gives each call its own as fd 3:
    /// `"$HOOK" … apt-json-hook 3<&4`). Returns stdout and stderr together,
    /// and what apt's end of each socket read back (its error when the
    /// hook left apt's messages unread: a reset).
    pub fn under_fake_apt_calls(
        &self,
        script: &str,
        calls: &[&[String]],
    ) -> (String, Vec<std::io::Result<Vec<u8>>>) {
        self.under_frontend_calls("apt", script, calls, &[])
    }

    fn under_frontend_calls(
        &self,
        program: &str,
        script: &str,
        calls: &[&[String]],
        args: &[&str],
    ) -> (String, Vec<std::io::Result<Vec<u8>>>) {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let apt_bin = self.path(&format!("fake-frontend/{program}"));
        if !apt_bin.exists() {
            install_executable(Path::new("/bin/sh"), &apt_bin);
        }
        let pairs: Vec<_> = calls
            .iter()
            .map(|_| std::os::unix::net::UnixStream::pair().unwrap())
            .collect();
        let mut cmd = std::process::Command::new(&apt_bin);
        cmd.arg("-c")
            .arg(format!("exec 2>&1; {script}"))
            .args(args)
            .env("HOOK", env!("CARGO_BIN_EXE_dkms-hook"))
            .envs(
                [
                    ("DKMS_HOOK_DKMS", "fake-dkms"),
                    ("DKMS_HOOK_MODINFO", "fake-modinfo"),
                    ("DKMS_HOOK_DEPMOD", "fake-depmod"),
                    ("DKMS_HOOK_MOKUTIL", "fake-mokutil"),
                ]
                .map(|(var, stand_in)| {
                    (
                        var,
                        Path::new(env!("CARGO_MANIFEST_DIR"))
                            .join("tests/integration")
                            .join(stand_in),
                    )
                }),
            )
            .env("R", self.dir.path())
            .env("TZ", "UTC")
            .env("APT_HOOK_SOCKET", "3")
            .stdout(std::process::Stdio::piped());
        let hook_ends: Vec<_> = pairs.iter().map(|(_, h)| h.as_raw_fd()).collect();
        pass_fds(&mut cmd, &hook_ends);
        let child = cmd.spawn().unwrap();
        let mut apt_ends = Vec::new();
        for ((apt, hook), messages) in pairs.into_iter().zip(calls) {
            drop(hook);
            let mut w = &apt;
            for m in messages.iter() {
                let _ = w.write_all(format!("{m}\n\n").as_bytes());
            }
            let _ = apt.shutdown(std::net::Shutdown::Write);
            apt_ends.push(apt);
        }
        let out = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
        let answers = apt_ends
            .iter()
            .map(|mut apt| {
                let mut b = Vec::new();
                apt.read_to_end(&mut b).map(|_| b)
            })
            .collect();
        (out, answers)
    }

    /// [`Fixture::run`] with `input` on stdin, as apt feeds Pre-Install-Pkgs.
    pub fn run_with_stdin(&self, args: &[&str], input: impl AsRef<[u8]>) -> Output {
        feed(self.cmd(args), input)
    }

    /// Wait (at most 20 s) until the dkms stand-in has started a build.
    pub fn wait_for_build(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !fs::read_to_string(self.path("dkms-calls.log"))
            .unwrap_or_default()
            .contains("build acpi-call")
        {
            assert!(std::time::Instant::now() < deadline, "build never started");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Run `post-invoke` in a process group of its own and SIGKILL the
    /// group once its build has started (set `fake-dkms/sleep` first).
    pub fn kill_post_invoke_mid_build(&self) {
        use std::os::unix::process::CommandExt;
        let mut child = self
            .cmd(&["post-invoke"])
            .process_group(0)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.wait_for_build();
        let pgid = rustix::process::Pid::from_raw(child.id().try_into().unwrap()).unwrap();
        rustix::process::kill_process_group(pgid, rustix::process::Signal::Kill).unwrap();
        child.wait().unwrap();
    }

    /// Completed dkms calls of the stand-in: `build acpi-call 1.2.2 K`.
    pub fn dkms_calls(&self) -> Vec<String> {
        fs::read_to_string(self.path("dkms-calls.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_suffix(" done").map(str::to_string))
            .collect()
    }

    /// Tell the dkms stand-in how to behave (see tests/integration/fake-dkms).
    pub fn fake_dkms(&self, control: &str, content: &str) {
        self.write(&format!("fake-dkms/{control}"), content);
    }

    pub fn read(&self, p: &str) -> Vec<u8> {
        fs::read(self.path(p)).unwrap()
    }

    /// The `status --json` row of the (only) module for kernel `k`.
    pub fn status_row(&self, k: &str) -> serde_json::Value {
        let st: serde_json::Value =
            serde_json::from_slice(&self.run(&["status", "--json"]).stdout).unwrap();
        st["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["kernel"] == k)
            .unwrap_or_else(|| panic!("no status row for {k}: {st}"))
            .clone()
    }

    /// `replay --dry-run --json` on the given in-root logs, parsed.
    pub fn plan(&self, logs: &[&str]) -> serde_json::Value {
        let mut args = vec!["replay".to_string(), "--dry-run".into(), "--json".into()];
        args.extend(logs.iter().map(|l| self.path(l).display().to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// How apt runs `DPkg::Post-Invoke` (apt-pkg's `RunScripts`): from a forked
/// child of itself (also named apt) through `system()`, for the scripts of
/// [`Fixture::under_fake_apt`]. The JSON hooks and Pre-Install-Pkgs run
/// from apt itself.
pub const APT_POST_INVOKE: &str = r#"( sh -c '"$HOOK" --root "$R" post-invoke; :'; : )"#;

/// One dpkg run (a step) of unattended-upgrades as apt-pkg runs its hooks
/// after python-apt's `apt.Cache(rootdir="/")` listed each entry twice: in a
/// fork of unattended-upgrades (python-apt's `InstallProgress.run`),
/// Pre-Install-Pkgs twice, each `sh -c` fed `$R/V3` on stdin, then the
/// script `$R/DPKG` (dpkg's part), then Post-Invoke twice from one more
/// fork through `system()`. `env SECOND` runs each second copy (words such
/// as `DKMS_HOOK_LOG=debug`, or none). Lines `==TAG1==` … `==TAG4==` mark
/// where each copy starts, `==TAGend==` the end ([`copies`]).
pub fn uu_step(tag: &str, v3: &str, dpkg: &str, second: &str) -> String {
    format!(
        r#"( echo =={tag}1==; sh -c '"$HOOK" --root "$R" pre-install-pkgs; :' < "$R/{v3}"; echo =={tag}2==; env {second} sh -c '"$HOOK" --root "$R" pre-install-pkgs; :' < "$R/{v3}"; sh "$R/{dpkg}"; ( echo =={tag}3==; sh -c '"$HOOK" --root "$R" post-invoke; :'; echo =={tag}4==; env {second} sh -c '"$HOOK" --root "$R" post-invoke; :'; : ); echo =={tag}end==; : )"#
    )
}

/// What each copy of a [`uu_step`] printed, in order: Pre-Install-Pkgs
/// twice, then Post-Invoke twice (the lines between its markers).
pub fn copies(out: &str, tag: &str) -> [String; 4] {
    let mut got: [String; 4] = Default::default();
    let mut now: Option<usize> = None;
    for line in out.lines() {
        if let Some(m) = line.strip_prefix("==").and_then(|l| l.strip_suffix("==")) {
            now = m
                .strip_prefix(tag)
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| (1..=4).contains(n))
                .map(|n| n - 1);
            continue;
        }
        if let Some(i) = now {
            got[i].push_str(line);
            got[i].push('\n');
        }
    }
    got
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The run's output says it rebuilt `pair` (`acpi-call/1.2.2 for
/// 6.1.0-50-amd64`).
#[track_caller]
pub fn assert_rebuilt(out: &Output, pair: &str) {
    let e = stderr(out);
    assert!(
        e.contains(&format!("dkms-hook: rebuilt {pair} (")),
        "{pair} not rebuilt:\n{e}"
    );
}

/// The run exited `code` and said `text` on stderr.
#[track_caller]
pub fn assert_says(out: &Output, code: i32, text: &str) {
    let e = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{e}");
    assert!(e.contains(text), "{text:?} not said:\n{e}");
}

/// `module/version @ kernel` of each rebuild in a JSON plan.
pub fn rebuilds(plan: &serde_json::Value) -> Vec<String> {
    pair_labels(&plan["rebuilds"], None)
}

/// `module/version @ kernel: reason` of each skipped pair.
pub fn skipped(plan: &serde_json::Value) -> Vec<String> {
    pair_labels(&plan["skipped"], Some("reason"))
}

fn pair_labels(list: &serde_json::Value, extra: Option<&str>) -> Vec<String> {
    let text = |r: &serde_json::Value, k: &str| r[k].as_str().unwrap().to_string();
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let label = format!(
                "{}/{} @ {}",
                text(r, "module"),
                text(r, "version"),
                text(r, "kernel")
            );
            match extra {
                Some(k) => format!("{label}: {}", text(r, k)),
                None => label,
            }
        })
        .collect()
}

/// Run `cmd` with its address space limited to `bytes`: a reader that loads
/// whole files or buffers a child's output fails under it.
pub fn limit_address_space(cmd: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // Safety: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let lim = rustix::process::Rlimit {
                current: Some(bytes),
                maximum: Some(bytes),
            };
            rustix::process::setrlimit(rustix::process::Resource::As, lim)
                .map_err(std::io::Error::from)
        });
    }
}

/// Give the child `fd` as descriptor 3, as apt passes its hook socket.
/// An update-initramfs that records its arguments in `initramfs-calls.log`.
pub const RECORD_INITRAMFS: &str =
    "#!/bin/sh\necho \"$@\" >> \"$DKMS_HOOK_ROOT/initramfs-calls.log\"\n";

/// Runs `cmd` with `input` on its stdin; stdout and stderr are captured.
pub fn feed(mut cmd: Command, input: impl AsRef<[u8]>) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_ref()).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

/// `install -D -m 0755 SRC DST` (see [`Fixture::write_executable`]).
pub fn install_executable(src: &Path, dst: &Path) {
    let st = Command::new("install")
        .args(["-D", "-m", "0755"])
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(st.success(), "install {} {}", src.display(), dst.display());
}

pub fn pass_as_fd3(cmd: &mut Command, fd: std::os::fd::RawFd) {
    pass_fds(cmd, &[fd]);
}

/// Hand the child `fds` as its fds 3, 4, 5, … (copied out of the way
/// first, so that no source is overwritten before it is passed on).
pub fn pass_fds(cmd: &mut Command, fds: &[std::os::fd::RawFd]) {
    use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let fds = fds.to_vec();
    // Safety: fcntl and dup2 are async-signal-safe; the targets are then
    // the child's own, and the copies close at exec.
    unsafe {
        cmd.pre_exec(move || {
            let mut copies = Vec::new();
            for &fd in &fds {
                copies.push(rustix::io::fcntl_dupfd_cloexec(
                    BorrowedFd::borrow_raw(fd),
                    64,
                )?);
            }
            for (target, copy) in (3..).zip(&copies) {
                let mut t = OwnedFd::from_raw_fd(target);
                rustix::io::dup2(copy, &mut t)?;
                std::mem::forget(t);
            }
            Ok(())
        });
    }
}

/// The textfile `prometheus_textfile=/var/lib/prom` makes dkms-hook write,
/// read by the Prometheus client library's own parser: each sample's value
/// summed under its name and the given labels
/// (`dkms_hook_pairs/state=stale`).
pub fn textfile_samples(f: &Fixture, labels: &[&str]) -> serde_json::Value {
    let wanted: Vec<String> = labels.iter().map(|l| format!("'{l}'")).collect();
    let script = format!(
        "import json, sys\n\
         from prometheus_client.parser import text_string_to_metric_families\n\
         out = {{}}\n\
         for fam in text_string_to_metric_families(open(sys.argv[1]).read()):\n\
         \x20   for s in fam.samples:\n\
         \x20       key = s.name + ''.join(sorted('/%s=%s' % kv for kv in s.labels.items() if kv[0] in ({},)))\n\
         \x20       out[key] = out.get(key, 0) + s.value\n\
         print(json.dumps(out))",
        wanted.join(", ")
    );
    let out = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .arg(f.path("var/lib/prom/dkms_hook.prom"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
