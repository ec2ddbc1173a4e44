//! `dkms-hook preflight`: which pairs are test-built for which `.deb`s, the
//! JSON contract and exit statuses, and that nothing on the system changes.
//! The overlay mounts need root: these tests are `#[ignore]`d otherwise
//! (`make check` runs them as root).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::fixture::{copies, stderr, uu_step, Fixture};

/// A `.deb` of `package` `version` holding `files` (in-root paths).
pub(crate) fn deb(f: &Fixture, package: &str, version: &str, files: &[&str]) -> String {
    deb_depending(f, package, version, files, "")
}

/// A `.deb` of linux-kbuild-6.1 `version` holding one file in `scripts/`.
pub(crate) fn kbuild_deb(f: &Fixture, version: &str, script: &str) -> String {
    let file = format!("/usr/lib/linux-kbuild-6.1/scripts/{script}");
    deb(f, "linux-kbuild-6.1", version, &[&file])
}

/// The sample system with every pair fresh.
pub(crate) fn synced() -> Fixture {
    let f = Fixture::sample();
    f.run(&["sync"]);
    f
}

/// A `.deb` of `package` `version` holding `files` (in-root paths; `P ->
/// T` is a symbolic link), depending on `depends`.
fn deb_depending(
    f: &Fixture,
    package: &str,
    version: &str,
    files: &[&str],
    depends: &str,
) -> String {
    deb_with(f, package, version, depends, |dir| {
        for file in files {
            let (path, target) = match file.split_once(" -> ") {
                Some((p, t)) => (p, Some(t)),
                None => (*file, None),
            };
            let p = dir.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            match target {
                Some(t) => std::os::unix::fs::symlink(t, &p).unwrap(),
                None => std::fs::write(&p, format!("{package} {version}\n")).unwrap(),
            }
        }
    })
}

/// A `.deb` whose tree `build` makes in the directory it is given.
fn deb_with(
    f: &Fixture,
    package: &str,
    version: &str,
    depends: &str,
    build: impl FnOnce(&Path),
) -> String {
    let dir = f.path(&format!("debs/{package}-{version}"));
    std::fs::create_dir_all(&dir).unwrap();
    build(&dir);
    std::fs::create_dir_all(dir.join("DEBIAN")).unwrap();
    std::fs::write(
        dir.join("DEBIAN/control"),
        format!(
            "Package: {package}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@example.org>\n{}Description: t\n",
            if depends.is_empty() { String::new() } else { format!("Depends: {depends}\n") }
        ),
    )
    .unwrap();
    let out = f.path(&format!("debs/{package}_{version}_amd64.deb"));
    let ok = std::process::Command::new("dpkg-deb")
        .args(["--root-owner-group", "-b"])
        .arg(&dir)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    out.display().to_string()
}

/// Every file under the fixture's system directories with its size, mode
/// and mtime (the state directory and the test's own files left out).
fn listing(f: &Fixture) -> Vec<String> {
    let mut out = Vec::new();
    for top in [
        "var/lib/dkms",
        "usr/lib/modules",
        "usr/src",
        "usr/lib/linux-kbuild-6.1",
        "var/lib/dpkg",
    ] {
        walk(&f.path(top), &mut out);
    }
    out.sort();
    out
}

/// The dkms calls of preflight's test builds, from their kept run logs
/// (the stand-in logs there when the root is read-only to it).
fn preflight_calls(f: &Fixture) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(f.path("var/lib/dkms-hook/preflight"))
        .unwrap()
        .flatten()
    {
        if e.file_name().to_string_lossy().ends_with(".dkms.log") {
            for l in std::fs::read_to_string(e.path()).unwrap().lines() {
                if let Some(c) = l
                    .strip_prefix("dkms-call: ")
                    .and_then(|c| c.strip_suffix(" done"))
                {
                    out.push(c.to_string());
                }
            }
        }
    }
    out.sort();
    out
}

/// Wait (at most 20 s) until a test build in preflight's sandbox started.
fn wait_for_sandbox_build(f: &Fixture) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let started = std::fs::read_dir(f.path("var/lib/dkms-hook/preflight"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|r| r.file_name().to_string_lossy().starts_with("run-"))
            .flat_map(|r| {
                std::fs::read_dir(r.path().join("logs"))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .any(|l| {
                std::fs::read_to_string(l.path())
                    .unwrap_or_default()
                    .contains("dkms-call: build acpi-call")
            });
        if started {
            return;
        }
        assert!(Instant::now() < deadline, "no test build started");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn walk(dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        out.push(format!(
            "{} {} {:o} {:?}",
            e.path().display(),
            m.len(),
            std::os::unix::fs::PermissionsExt::mode(&m.permissions()),
            m.modified().ok()
        ));
        if m.is_dir() {
            walk(&e.path(), out);
        }
    }
}

#[test]
#[ignore = "needs root (a private mount namespace and overlayfs); make check runs it as root"]
fn preflight_tests_each_fed_pair_and_changes_nothing() {
    let f = synced();
    f.fake_dkms("poison", "");
    let good = kbuild_deb(&f, "6.1.200-1", "Kbuild.include");
    let bad = kbuild_deb(&f, "6.1.201-1", "preflight-poison");
    let before = listing(&f);
    let calls_before = f.dkms_calls().len();

    let out = f.run(&["preflight", &good]);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    for k in ["6.1.0-50-amd64", "6.1.0-56-amd64"] {
        assert!(
            e.contains(&format!("dkms-hook: preflight: acpi-call/1.2.2 for {k} builds against linux-kbuild-6.1 6.1.200-1 (")),
            "{e}"
        );
    }
    assert_eq!(listing(&f), before, "nothing on the system changed");
    // Only test builds ran, no install, and the root's own files were
    // read-only to them (the stand-in could not log its calls there).
    let calls = preflight_calls(&f);
    assert_eq!(
        calls,
        [
            "build acpi-call 1.2.2 6.1.0-50-amd64",
            "build acpi-call 1.2.2 6.1.0-56-amd64"
        ]
    );
    assert_eq!(f.dkms_calls().len(), calls_before);

    let out = f.run(&["preflight", "--json", &bad]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &v["results"][0];
    assert_eq!(r["ok"], false);
    assert_eq!(r["module"], "acpi-call");
    assert_eq!(r["against"][0]["package"], "linux-kbuild-6.1");
    assert_eq!(r["against"][0]["new"], "6.1.201-1");
    let log = r["make_log"].as_str().unwrap();
    assert!(
        log.starts_with("/var/lib/dkms-hook/preflight/acpi-call-1.2.2-6.1.0-"),
        "{log}"
    );
    assert!(String::from_utf8(f.read(log))
        .unwrap()
        .contains("preflight-poison"));
    assert_eq!(
        listing(&f),
        before,
        "nothing changed after a failed test build"
    );
    assert!(!f
        .path("usr/lib/linux-kbuild-6.1/scripts/preflight-poison")
        .exists());
    // The scratch directory is gone.
    let left: Vec<_> = std::fs::read_dir(f.path("var/lib/dkms-hook/preflight"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("run-"))
        .collect();
    assert!(left.is_empty(), "scratch left behind");
    // A package that feeds no kernel: nothing to test.
    let other = deb(&f, "hello", "2.10-3", &["/usr/bin/hello"]);
    let out = f.run(&["preflight", &other]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to test"));
    // Not a package: exit 2.
    let out = f.run(&["preflight", f.path("var/log/dpkg.log").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
#[ignore = "needs root (a private mount namespace and overlayfs); make check runs it as root"]
fn preflight_block_stops_apt_and_warn_lets_it_go_on() {
    let f = synced();
    f.fake_dkms("poison", "");
    let bad = kbuild_deb(&f, "6.1.201-1", "preflight-poison");
    let stream = format!(
        "VERSION 3\n\nlinux-kbuild-6.1 6.1.192-2 amd64 same < 6.1.201-1 amd64 same {bad}\n"
    );
    let out = f.run_with_stdin(&["pre-install-pkgs"], &stream);
    assert_eq!(
        out.status.code(),
        Some(0),
        "warn (the default) lets apt go on"
    );
    let e = stderr(&out);
    assert!(e.contains("dkms-hook: preflight: FAILED acpi-call/1.2.2 for 6.1.0-50-amd64 against linux-kbuild-6.1 6.1.201-1"), "{e}");
    assert!(
        !e.contains("builds against"),
        "only failures in apt's output: {e}"
    );
    f.write("etc/dkms/dkms-hook.conf", "preflight=block\n");
    let out = f.run_with_stdin(&["pre-install-pkgs"], &stream);
    assert_eq!(out.status.code(), Some(100), "block stops apt");
    assert!(
        stderr(&out).contains("preflight = block: stopping apt"),
        "{}",
        stderr(&out)
    );
    f.write("etc/dkms/dkms-hook.conf", "preflight=off\n");
    let out = f.run_with_stdin(&["pre-install-pkgs"], &stream);
    assert_eq!(out.status.code(), Some(0));
    assert!(!stderr(&out).contains("preflight"), "{}", stderr(&out));
}

/// A kernel the upgrade installs new: its pairs are test-built when its
/// headers' dependencies are given or installed, and reported otherwise.
#[test]
#[ignore = "needs root (a private mount namespace and overlayfs); make check runs it as root"]
fn a_new_kernel_is_test_built_when_its_headers_are_complete() {
    let f = synced();
    let k = "6.1.0-60-amd64";
    let flavour = deb_depending(
        &f,
        &format!("linux-headers-{k}"),
        "6.1.210-1",
        &[
            &format!("/usr/src/linux-headers-{k}/Makefile"),
            &format!("/lib/modules/{k}/build -> /usr/src/linux-headers-{k}"),
        ],
        "linux-headers-6.1.0-60-common (= 6.1.210-1), linux-kbuild-6.1 (>= 6.1.210-1)",
    );
    let before = listing(&f);
    let out = f.run(&["preflight", &flavour]);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    assert!(
        e.contains(&format!("dkms-hook: preflight: skipped acpi-call/1.2.2 for {k}: new kernel {k}: its headers need linux-headers-6.1.0-60-common, neither given nor installed")),
        "{e}"
    );
    let common = deb(
        &f,
        "linux-headers-6.1.0-60-common",
        "6.1.210-1",
        &["/usr/src/linux-headers-6.1.0-60-common/Makefile"],
    );
    let out = f.run(&["preflight", &flavour, &common]);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    assert!(
        e.contains(&format!("dkms-hook: preflight: acpi-call/1.2.2 for {k} builds against linux-headers-{k} 6.1.210-1 (")),
        "{e}"
    );
    assert!(preflight_calls(&f).contains(&format!("build acpi-call 1.2.2 {k}")));
    assert_eq!(listing(&f), before, "nothing on the system changed");
    assert!(!f.path(&format!("usr/src/linux-headers-{k}")).exists());
}

/// A preflight that cannot run is one warning and never blocks, even with
/// `preflight = block`; with `off`, the forecast says it can be run by hand.
#[test]
fn a_preflight_that_cannot_run_never_blocks() {
    let f = Fixture::sample();
    f.write("etc/dkms/dkms-hook.conf", "preflight=block\n");
    let stream = "VERSION 3\n\nlinux-kbuild-6.1 6.1.192-2 amd64 same < 6.1.201-1 amd64 same /nonexistent/linux-kbuild-6.1_6.1.201-1_amd64.deb\n";
    let out = f.run_with_stdin(&["pre-install-pkgs"], stream);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("warning: preflight could not run; the upgrade goes on"),
        "{}",
        stderr(&out)
    );
    f.write("etc/dkms/dkms-hook.conf", "preflight=off\n");
    let out = f.run_with_stdin(&["pre-install-pkgs"], stream);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("; run dkms-hook preflight first to test-build against the new packages"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A file outside the fixture root, holding "keep".
fn host_victim(t: &tempfile::TempDir, name: &str) -> String {
    let p = t.path().join(name);
    std::fs::write(&p, "keep").unwrap();
    p.display().to_string()
}

/// Issue 21.1: package contents land without following a link, neither
/// one the root holds (under --root, `scripts/evil -> /host/file`) nor one
/// an earlier package of the same run ships (`scripts/zz -> /host/file`,
/// then another package's `scripts/zz`).
#[test]
#[ignore = "needs root (a private mount namespace and overlayfs); make check runs it as root"]
fn package_contents_never_land_through_links() {
    let f = synced();
    let host = tempfile::tempdir().unwrap();
    let (v1, v2) = (host_victim(&host, "v1"), host_victim(&host, "v2"));
    f.link("usr/lib/linux-kbuild-6.1/scripts/evil", &v1);
    let kb = deb(
        &f,
        "linux-kbuild-6.1",
        "6.1.200-1",
        &[
            "/usr/lib/linux-kbuild-6.1/scripts/evil",
            &format!("/usr/lib/linux-kbuild-6.1/scripts/zz -> {v2}"),
        ],
    );
    let other = deb(
        &f,
        "hello",
        "2.10-3",
        &["/usr/lib/linux-kbuild-6.1/scripts/zz"],
    );
    let out = f.run(&["preflight", &kb, &other]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("builds against linux-kbuild-6.1 6.1.200-1"),
        "{}",
        stderr(&out)
    );
    for v in [&v1, &v2] {
        assert_eq!(
            std::fs::read_to_string(v).unwrap(),
            "keep",
            "{v} written through a link"
        );
    }
}

/// Issue 21.1: the build itself sees the system read-only: a build that
/// remounts and writes a host file, a file in the root's /etc, or creates
/// a new file changes nothing.
#[test]
#[ignore = "needs root (a private mount namespace and overlayfs); make check runs it as root"]
fn a_test_build_cannot_write_the_host() {
    let f = synced();
    let host = tempfile::tempdir().unwrap();
    let v = host_victim(&host, "victim");
    let new = host.path().join("new").display().to_string();
    f.write("etc/victim", "keep");
    let in_root = f.path("etc/victim").display().to_string();
    f.fake_dkms("write-host", &format!("{v}\n{new}\n{in_root}\n"));
    let good = kbuild_deb(&f, "6.1.200-1", "Kbuild.include");
    let out = f.run(&["preflight", &good]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&v).unwrap(), "keep");
    assert_eq!(std::fs::read_to_string(&in_root).unwrap(), "keep");
    assert!(!Path::new(&new).exists(), "a build created {new}");
}

/// Issue 21.2: a package's set-id files and device nodes are never made,
/// the run directory is 0700, and the overlays are nosuid,nodev.
#[test]
#[ignore = "needs root (a private mount namespace and overlayfs); make check runs it as root"]
fn unpacked_packages_are_private_and_inert() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let f = synced();
    f.fake_dkms("sleep", "2");
    f.fake_dkms("mounts", "");
    let kb = deb_with(&f, "linux-kbuild-6.1", "6.1.200-1", "", |dir| {
        let s = dir.join("usr/lib/linux-kbuild-6.1/scripts");
        std::fs::create_dir_all(&s).unwrap();
        std::fs::copy("/bin/true", s.join("suid")).unwrap();
        std::fs::set_permissions(s.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        let ok = std::process::Command::new("mknod")
            .args(["-m", "666"])
            .arg(s.join("mem"))
            .args(["c", "1", "1"])
            .status()
            .unwrap();
        assert!(ok.success());
    });
    let child = f
        .cmd(&["preflight", &kb])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_sandbox_build(&f);
    let pre = f.path("var/lib/dkms-hook/preflight");
    let mut seen = 0;
    let mut check = |p: &Path, m: &std::fs::Metadata| {
        seen += 1;
        assert_eq!(m.mode() & 0o6000, 0, "{} is set-id", p.display());
        let ft = m.file_type();
        // A whiteout (0:0) is how overlayfs notes a removal in its upper layer.
        assert!(
            !(ft.is_block_device() || ft.is_char_device()) || m.rdev() == 0,
            "{} is a device node",
            p.display()
        );
    };
    for run in std::fs::read_dir(&pre).unwrap().flatten() {
        if !run.file_name().to_string_lossy().starts_with("run-") {
            continue;
        }
        let m = std::fs::symlink_metadata(run.path()).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o700, "{}", run.path().display());
        assert_eq!(m.uid(), 0);
        walk_meta(&run.path(), &mut check);
    }
    assert!(
        seen >= 4,
        "the run directory is there, with nothing of the packages on disk"
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = std::fs::read_to_string(pre.join("acpi-call-1.2.2-6.1.0-50-amd64.dkms.log")).unwrap();
    let root = f.dir.path().display().to_string();
    let overlays: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("mountinfo:") && l.contains(" - overlay "))
        .collect();
    assert!(!overlays.is_empty(), "{log}");
    for l in &overlays {
        let opts = l.split(' ').nth(6).unwrap_or_default();
        assert!(opts.contains("nosuid") && opts.contains("nodev"), "{l}");
        assert!(l.contains(&root), "{l}");
    }
    // The packages' trees: a tmpfs of the sandbox's own, nosuid,nodev.
    let trees = log
        .lines()
        .find(|l| {
            l.starts_with("mountinfo:") && l.contains(" - tmpfs ") && l.contains("/preflight/run-")
        })
        .unwrap_or_else(|| panic!("no tmpfs for the packages' trees:\n{log}"));
    let opts = trees.split(' ').nth(6).unwrap_or_default();
    assert!(opts.contains("nosuid") && opts.contains("nodev"), "{trees}");
    // What the build sees: the 4755 file without set-id bits, no device.
    assert!(
        log.lines()
            .any(|l| l.starts_with("stat: 755 regular file ") && l.ends_with("/suid")),
        "{log}"
    );
    assert!(!log.contains("scripts/mem"), "{log}");
    let top = log
        .lines()
        .find(|l| l.split(' ').nth(5) == Some("/"))
        .unwrap_or_else(|| panic!("no / in {log}"));
    assert!(top.split(' ').nth(6).unwrap().starts_with("ro"), "{top}");
}

fn walk_meta(dir: &Path, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(m) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        f(&e.path(), &m);
        if m.is_dir() {
            walk_meta(&e.path(), f);
        }
    }
}

/// Issue 21.3: without DEB files, the packages are downloaded into a fresh
/// directory made by preflight under the state directory, 0700 and empty,
/// never a predictable path in /tmp.
#[test]
#[ignore = "needs root (a private mount namespace and overlayfs); make check runs it as root"]
fn downloads_go_to_a_fresh_private_directory() {
    let f = synced();
    let good = kbuild_deb(&f, "6.1.200-1", "Kbuild.include");
    let apt = f.path("bin-stubs/apt-get");
    f.write_executable(
        "bin-stubs/apt-get",
        format!(
            "#!/bin/sh\ncase \"$*\" in\n\
             *-s*) echo 'Inst linux-kbuild-6.1 [6.1.192-2] (6.1.200-1 Debian:12/stable [amd64])' ;;\n\
             *download*) stat -c '%n %a %U' \"$PWD\" > {log}; ls -A >> {log}; cp {good} . ;;\n\
             esac\n",
            log = f.path("apt-get.log").display()
        ),
    );
    let out = f
        .cmd(&["preflight"])
        .env("DKMS_HOOK_APT_GET", &apt)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("builds against linux-kbuild-6.1 6.1.200-1"),
        "{}",
        stderr(&out)
    );
    let log = std::fs::read_to_string(f.path("apt-get.log")).unwrap();
    let first = log.lines().next().unwrap();
    let pre = f.path("var/lib/dkms-hook/preflight").display().to_string();
    assert!(first.starts_with(&format!("{pre}/run-")), "{log}");
    assert!(first.ends_with(" 700 root"), "{log}");
    assert_eq!(log.lines().count(), 1, "not empty: {log}");
}

/// Issue 21.4: preflight's builds are not a killed run's leftovers: a
/// post-invoke taking the run lock meanwhile leaves them alone.
#[test]
#[ignore = "needs root (a private mount namespace and overlayfs); make check runs it as root"]
fn preflight_builds_survive_a_concurrent_post_invoke() {
    let f = synced();
    f.fake_dkms("sleep", "2");
    let good = kbuild_deb(&f, "6.1.200-1", "Kbuild.include");
    let child = f
        .cmd(&["preflight", &good])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_sandbox_build(&f);
    let builds = f.path("var/lib/dkms-hook/builds");
    let noted = std::fs::read_dir(&builds).map_or(0, |d| d.count());
    assert_eq!(noted, 0, "preflight noted a build in builds/");
    let post = f.run(&["post-invoke"]);
    assert_eq!(post.status.code(), Some(0));
    let out = child.wait_with_output().unwrap();
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    assert!(!e.contains("FAILED"), "{e}");
    assert_eq!(
        e.matches("builds against linux-kbuild-6.1 6.1.200-1")
            .count(),
        2,
        "{e}"
    );
}

/// Issue 21.5: a `linux-headers-X-common` is no kernel: its in-place
/// upgrade test-builds the kernels it feeds, and overlays neither /usr/src
/// nor /lib/modules whole.
#[test]
#[ignore = "needs root (a private mount namespace and overlayfs); make check runs it as root"]
fn a_common_headers_upgrade_is_no_new_kernel() {
    let f = synced();
    f.fake_dkms("mounts", "");
    let common = deb(
        &f,
        "linux-headers-6.1.0-50-common",
        "6.1.200-1",
        &["/usr/src/linux-headers-6.1.0-50-common/Makefile"],
    );
    let out = f.run(&["preflight", "--json", &common]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kernels: Vec<&str> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kernel"].as_str().unwrap())
        .collect();
    assert_eq!(kernels, ["6.1.0-50-amd64"], "{v}");
    let log = std::fs::read_to_string(
        f.path("var/lib/dkms-hook/preflight/acpi-call-1.2.2-6.1.0-50-amd64.dkms.log"),
    )
    .unwrap();
    for whole in ["usr/src", "usr/lib/modules"] {
        let p = f.path(whole).display().to_string();
        assert!(
            !log.lines()
                .any(|l| l.starts_with("mountinfo:") && l.split(' ').nth(5) == Some(p.as_str())),
            "{whole} overlaid whole:\n{log}"
        );
    }
}

/// Issue 21.6: `kill -9` of preflight takes its builds (and their
/// children) and its mounts along; nothing is noted for others to kill.
#[test]
#[ignore = "needs root (a private mount namespace and overlayfs); make check runs it as root"]
fn a_killed_preflight_takes_its_builds_and_mounts_along() {
    let f = synced();
    f.fake_dkms("sleep", "30");
    let good = kbuild_deb(&f, "6.1.200-1", "Kbuild.include");
    let before = listing(&f);
    let mut child = f.cmd(&["preflight", &good]).spawn().unwrap();
    wait_for_sandbox_build(&f);
    child.kill().unwrap(); // SIGKILL, to preflight alone
    child.wait().unwrap();
    let root = f.dir.path().display().to_string();
    let marker = format!("DKMS_HOOK_ROOT={root}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = Vec::new();
        for p in std::fs::read_dir("/proc").unwrap().flatten() {
            if !p
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                continue;
            }
            let env = std::fs::read(p.path().join("environ")).unwrap_or_default();
            let mounts = std::fs::read_to_string(p.path().join("mountinfo")).unwrap_or_default();
            if env.split(|b| *b == 0).any(|v| v == marker.as_bytes())
                || mounts
                    .lines()
                    .any(|l| l.contains(" - overlay ") && l.contains(&root))
            {
                left.push(p.file_name().to_string_lossy().into_owned());
            }
        }
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still alive after kill -9: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(listing(&f), before);
    let builds = f.path("var/lib/dkms-hook/builds");
    assert_eq!(std::fs::read_dir(&builds).map_or(0, |d| d.count()), 0);
    std::fs::remove_file(f.path("fake-dkms/sleep")).unwrap();
    let out = f.run(&["preflight", &good]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let left = std::fs::read_dir(f.path("var/lib/dkms-hook/preflight"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("run-"))
        .count();
    assert_eq!(left, 0, "the next preflight removes what a killed one left");
}

/// What dpkg does to the fixture when it unpacks `package` `new` in place:
/// the status, the file list (rewritten now) with `files`, the files, and
/// dpkg.log's lines.
fn unpack_in_place(f: &Fixture, package: &str, new: &str, files: &[&str]) {
    let status = std::fs::read_to_string(f.path("var/lib/dpkg/status")).unwrap();
    let mut out = String::new();
    let mut old = String::new();
    for para in status.split_inclusive("\n\n") {
        if para.starts_with(&format!("Package: {package}\n")) {
            let v = para
                .lines()
                .find_map(|l| l.strip_prefix("Version: "))
                .unwrap();
            old = v.to_string();
            out.push_str(&para.replace(&format!("Version: {v}\n"), &format!("Version: {new}\n")));
        } else {
            out.push_str(para);
        }
    }
    f.write("var/lib/dpkg/status", out);
    let list = format!("var/lib/dpkg/info/{package}.list");
    let mut text = String::from_utf8(f.read(&list)).unwrap();
    for file in files {
        f.write(file, format!("{package} {new}\n"));
        if !text.lines().any(|l| l == *file) {
            text.push_str(file);
            text.push('\n');
        }
    }
    f.write(&list, text);
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string();
    let mut log = f.read("var/log/dpkg.log");
    log.extend_from_slice(
        format!(
            "{now} upgrade {package}:amd64 {old} {new}\n{now} status unpacked {package}:amd64 {new}\n"
        )
        .as_bytes(),
    );
    f.write("var/log/dpkg.log", log);
}

/// Paid once: when dpkg unpacks exactly what preflight built against, the
/// step after dpkg installs preflight's build (checked, backed up, verified)
/// instead of compiling again, and says so; other versions build as before.
#[test]
#[ignore = "needs root (a private mount namespace and overlayfs); make check runs it as root"]
fn the_step_after_dpkg_installs_preflights_build_of_the_same_tree() {
    let f = synced();
    f.run(&["init"]); // the dpkg.log cursor at the end
    let script = "/usr/lib/linux-kbuild-6.1/scripts/Kbuild.include";
    // A new version of every file the installed one has: nothing dropped.
    let list = String::from_utf8(f.read("var/lib/dpkg/info/linux-kbuild-6.1.list")).unwrap();
    let mut files: Vec<&str> = list.lines().filter(|l| f.path(l).is_file()).collect();
    files.push(script);
    let whole = |v: &str| deb(&f, "linux-kbuild-6.1", v, &files);
    let good = whole("6.1.200-1");
    let out = f
        .cmd(&["preflight", &good])
        .env("DKMS_HOOK_LOG", "debug")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let kept = f.path("var/lib/dkms-hook/preflight/kept");
    assert_eq!(
        std::fs::read_dir(&kept).map_or(0, |d| d.count()),
        2,
        "one kept build per pair: {}",
        stderr(&out)
    );
    std::thread::sleep(Duration::from_millis(1100));
    unpack_in_place(&f, "linux-kbuild-6.1", "6.1.200-1", &[script]);
    let calls = f.dkms_calls().len();
    let out = f.run(&["post-invoke"]);
    let e = stderr(&out);
    for k in ["6.1.0-50-amd64", "6.1.0-56-amd64"] {
        assert!(
            e.contains(&format!(
                "dkms-hook: rebuilt acpi-call/1.2.2 for {k} (linux-kbuild-6.1 "
            )) && e
                .contains("installed preflight's build against these packages, not compiled again"),
            "{e}"
        );
        let ko =
            String::from_utf8(f.read(&format!("usr/lib/modules/{k}/updates/dkms/acpi_call.ko")))
                .unwrap();
        assert!(ko.contains(&format!("vermagic={k} ")), "{ko}");
    }
    let now: Vec<String> = f.dkms_calls()[calls..].to_vec();
    assert!(
        now.iter().all(|c| c.starts_with("install ")),
        "compiled again: {now:?}"
    );
    assert_eq!(now.len(), 2, "{now:?}");
    assert_eq!(std::fs::read_dir(&kept).unwrap().count(), 0, "used once");
    // status agrees that both pairs are fresh now.
    assert_eq!(f.status_row("6.1.0-50-amd64")["state"], "fresh");

    // Preflight built against 6.1.201-1; dpkg unpacks 6.1.202-1: built again.
    let v1 = whole("6.1.201-1");
    assert_eq!(f.run(&["preflight", &v1]).status.code(), Some(0));
    std::thread::sleep(Duration::from_millis(1100));
    unpack_in_place(&f, "linux-kbuild-6.1", "6.1.202-1", &[script]);
    let calls = f.dkms_calls().len();
    let out = f.run(&["post-invoke"]);
    let e = stderr(&out);
    assert!(e.contains("preflight's build of acpi-call/1.2.2 for 6.1.0-50-amd64 was not used (built against other packages than are installed now (linux-kbuild-6.1 6.1.202-1)): built again"), "{e}");
    assert!(!e.contains("not compiled again"), "{e}");
    let now: Vec<String> = f.dkms_calls()[calls..].to_vec();
    assert_eq!(
        now.iter().filter(|c| c.starts_with("build ")).count(),
        2,
        "{now:?}"
    );
}

/// A kept build is input like every state file: a link in its tree, a
/// forged record or a module for another kernel is not installed; the pair
/// builds as before.
#[test]
#[ignore = "needs root (a private mount namespace and overlayfs); make check runs it as root"]
fn a_forged_kept_build_is_not_installed() {
    let f = synced();
    f.run(&["init"]);
    let script = "/usr/lib/linux-kbuild-6.1/scripts/Kbuild.include";
    let list = String::from_utf8(f.read("var/lib/dpkg/info/linux-kbuild-6.1.list")).unwrap();
    let mut files: Vec<&str> = list.lines().filter(|l| f.path(l).is_file()).collect();
    files.push(script);
    let good = deb(&f, "linux-kbuild-6.1", "6.1.200-1", &files);
    assert_eq!(f.run(&["preflight", &good]).status.code(), Some(0));
    let kept = "var/lib/dkms-hook/preflight/kept";
    let host = tempfile::tempdir().unwrap();
    let victim = host_victim(&host, "victim");
    // 6.1.0-50: a link in the tree; 6.1.0-56: a module for another kernel.
    f.link(
        &format!("{kept}/acpi-call-1.2.2-6.1.0-50-amd64-x86_64/tree/module/evil.ko"),
        &victim,
    );
    f.write(
        &format!("{kept}/acpi-call-1.2.2-6.1.0-56-amd64-x86_64/tree/module/acpi_call.ko"),
        "vermagic=6.1.0-99-amd64 SMP\0",
    );
    std::thread::sleep(Duration::from_millis(1100));
    unpack_in_place(&f, "linux-kbuild-6.1", "6.1.200-1", &[script]);
    let calls = f.dkms_calls().len();
    let out = f.run(&["post-invoke"]);
    let e = stderr(&out);
    assert!(!e.contains("not compiled again"), "{e}");
    assert!(
        e.contains("evil.ko: neither a directory nor a regular file"),
        "{e}"
    );
    assert!(
        e.contains("its module is for kernel \"6.1.0-99-amd64\""),
        "{e}"
    );
    let now: Vec<String> = f.dkms_calls()[calls..].to_vec();
    assert_eq!(
        now.iter().filter(|c| c.starts_with("build ")).count(),
        2,
        "{now:?}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    assert!(
        std::fs::read_dir(f.path(kept)).unwrap().next().is_none(),
        "dropped"
    );
}

/// Regression (the Debian 12 tier): a dkms named without a path
/// (`DKMS_HOOK_DKMS=dkms`, as on a real system) is looked up in PATH inside
/// the sandbox, not taken for `./dkms`.
#[test]
#[ignore = "needs root (a private mount namespace and overlayfs); make check runs it as root"]
fn a_dkms_named_without_a_path_is_found_in_path() {
    let f = synced();
    let good = kbuild_deb(&f, "6.1.200-1", "Kbuild.include");
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration");
    let path = format!(
        "{}:{}",
        here.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = f
        .cmd(&["preflight", &good])
        .env("DKMS_HOOK_DKMS", "fake-dkms")
        .env("PATH", path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stderr(&out)
            .matches("builds against linux-kbuild-6.1 6.1.200-1")
            .count(),
        2
    );
}

/// The info stream of linux-kbuild-6.1 6.1.192-2 → NEW from the `.deb` `deb`.
fn kbuild_stream(new: &str, deb: &str) -> String {
    format!("VERSION 3\n\nlinux-kbuild-6.1 6.1.192-2 amd64 same < {new} amd64 same {deb}\n")
}

/// Regression (a passing test build said nothing inside apt, although the
/// forecast line announced the test build): Pre-Install-Pkgs says each
/// pair's result in one line, a pass too, and no progress lines.
#[test]
#[ignore = "needs root (a private mount namespace and overlayfs); make check runs it as root"]
fn a_passing_test_build_says_so_in_one_line_inside_apt() {
    let f = synced();
    let good = kbuild_deb(&f, "6.1.200-1", "Kbuild.include");
    let out = f.run_with_stdin(&["pre-install-pkgs"], kbuild_stream("6.1.200-1", &good));
    assert_eq!(out.status.code(), Some(0));
    let all = String::from_utf8_lossy(&out.stdout).into_owned() + &stderr(&out);
    assert!(
        all.contains("first, after the download, it test-builds them against the new packages"),
        "{all}"
    );
    for k in ["6.1.0-50-amd64", "6.1.0-56-amd64"] {
        let line = format!(
            "dkms-hook: preflight: acpi-call/1.2.2 for {k} builds against linux-kbuild-6.1 6.1.200-1 ("
        );
        assert_eq!(all.matches(&line).count(), 1, "{all}");
    }
    assert!(!all.contains("building"), "no progress lines: {all}");
}

/// Regression (hooks twice under unattended-upgrades): python-apt runs
/// Pre-Install-Pkgs twice for one dpkg run, and the second copy test-built
/// every pair again. Each test build says its result (above), so a second
/// copy that says nothing built nothing.
#[test]
#[ignore = "needs root (a private mount namespace and overlayfs); make check runs it as root"]
fn the_second_copy_of_pre_install_pkgs_test_builds_nothing() {
    let f = synced();
    f.run(&["init"]);
    let good = kbuild_deb(&f, "6.1.200-1", "Kbuild.include");
    f.write("v3.txt", kbuild_stream("6.1.200-1", &good));
    f.write("dpkg.sh", ":\n");
    let out = f.under_fake_unattended_upgrades(&uu_step("s", "v3.txt", "dpkg.sh", ""));
    let c = copies(&out, "s");
    for k in ["6.1.0-50-amd64", "6.1.0-56-amd64"] {
        let line = format!(
            "dkms-hook: preflight: acpi-call/1.2.2 for {k} builds against linux-kbuild-6.1 6.1.200-1 ("
        );
        assert_eq!(c[0].matches(&line).count(), 1, "{out}");
    }
    assert_eq!(c[1], "", "the second copy says nothing:\n{out}");
}

/// Regression (the same modules rebuilt in each step of one
/// unattended-upgrades run): under unattended-upgrades with
/// `preflight = warn`, a pair is test-built once per run. A new
/// linux-kbuild (both kernels) in one step, new headers of one kernel in
/// the next: the second step says that kernel's pair was test-built
/// already, in one line, and drops that test build (it replaces a package
/// the build read); after the run each pair is rebuilt once, the other
/// kernel's by installing its test build. With `block`, each step is
/// tested: what it lets through is what it tested.
#[test]
#[ignore = "needs root (a private mount namespace and overlayfs); make check runs it as root"]
fn under_unattended_upgrades_a_pair_is_test_built_once_per_run() {
    const HEADERS: &str = "linux-headers-6.1.0-50-amd64";
    for mode in ["warn", "block"] {
        let f = synced();
        f.run(&["init"]);
        f.write("etc/dkms/dkms-hook.conf", format!("preflight={mode}\n"));
        // A new version of every file each has (nothing dropped: test
        // builds are kept) and one more.
        let whole = |package: &str, version: &str, more: &str| {
            let list =
                String::from_utf8(f.read(&format!("var/lib/dpkg/info/{package}.list"))).unwrap();
            let mut files: Vec<&str> = list.lines().filter(|l| f.path(l).is_file()).collect();
            files.push(more);
            deb(&f, package, version, &files)
        };
        let a = whole(
            "linux-kbuild-6.1",
            "6.1.200-1",
            "/usr/lib/linux-kbuild-6.1/scripts/Kbuild.include",
        );
        let b = whole(
            HEADERS,
            "6.1.176-2",
            "/usr/src/linux-headers-6.1.0-50-amd64/include/new.h",
        );
        let steps = [
            ("a", "linux-kbuild-6.1", "6.1.192-2", "6.1.200-1", a),
            ("b", HEADERS, "6.1.176-1", "6.1.176-2", b),
        ];
        // dpkg's part: its log, and the new version in its status.
        for (tag, package, old, new, deb) in &steps {
            f.write(
                &format!("v3-{tag}.txt"),
                format!("VERSION 3\n\n{package} {old} amd64 same < {new} amd64 same {deb}\n"),
            );
            f.write(
                &format!("dpkg-{tag}.sh"),
                format!(
                    "sleep 1.1\nt=$(date -u '+%Y-%m-%d %H:%M:%S')\nprintf '%s\\n' \"$t startup archives unpack\" \"$t upgrade {package}:amd64 {old} {new}\" \"$t status unpacked {package}:amd64 {new}\" >> \"$R/var/log/dpkg.log\"\nperl -0pi -e 's/(Package: {package}\\n(?:.+\\n)*?Version: ){old}\\n/${{1}}{new}\\n/' \"$R/var/lib/dpkg/status\"\n"
                ),
            );
        }
        let out = f.under_fake_unattended_upgrades(&format!(
            "{}; {}; ls \"$R/var/lib/dkms-hook/preflight/kept\" > \"$R/kept\"",
            uu_step("a", "v3-a.txt", "dpkg-a.sh", ""),
            uu_step("b", "v3-b.txt", "dpkg-b.sh", "")
        ));
        let (sa, sb) = (copies(&out, "a"), copies(&out, "b"));
        let tested = |k: &str, against: &str| {
            format!("dkms-hook: preflight: acpi-call/1.2.2 for {k} builds against {against} (")
        };
        let earlier = "dkms-hook: preflight: acpi-call/1.2.2 for 6.1.0-50-amd64 was test-built earlier in this unattended-upgrades run; it is built once, when the run ends";
        for k in ["6.1.0-50-amd64", "6.1.0-56-amd64"] {
            let kbuild = tested(k, "linux-kbuild-6.1 6.1.200-1");
            assert_eq!(sa[0].matches(&kbuild).count(), 1, "{mode}:\n{out}");
        }
        let headers = tested("6.1.0-50-amd64", &format!("{HEADERS} 6.1.176-2"));
        assert!(!sb[0].contains("6.1.0-56-amd64"), "{mode}:\n{out}");
        if mode == "warn" {
            assert_eq!(sb[0].matches(earlier).count(), 1, "{mode}:\n{out}");
            assert!(!sb[0].contains(&headers), "{mode}:\n{out}");
            assert_eq!(
                String::from_utf8(f.read("kept")).unwrap(),
                "acpi-call-1.2.2-6.1.0-56-amd64-x86_64\n",
                "the first step's test build of 6.1.0-50-amd64 is dropped:\n{out}"
            );
        } else {
            assert!(sb[0].contains(&headers), "{mode}:\n{out}");
            assert!(!sb[0].contains(earlier), "{mode}:\n{out}");
        }
        f.wait_for_waiters();
        let log = String::from_utf8_lossy(&f.read("var/log/dkms-hook.log")).into_owned();
        for (k, because) in [
            (
                "6.1.0-50-amd64",
                format!("linux-kbuild-6.1 6.1.192-2 → 6.1.200-1, {HEADERS} 6.1.176-1 → 6.1.176-2"),
            ),
            (
                "6.1.0-56-amd64",
                "linux-kbuild-6.1 6.1.192-2 → 6.1.200-1".to_string(),
            ),
        ] {
            let line = format!("rebuilt acpi-call/1.2.2 for {k} ({because})");
            assert_eq!(
                log.matches(&line).count(),
                1,
                "{mode}: one rebuild, after the run: {line}\n{log}\n{out}"
            );
        }
        if mode == "warn" {
            // Not offered a test build of other packages (which it would
            // refuse with a warning); 6.1.0-56-amd64's is of the final ones.
            assert!(!log.contains("was not used"), "{log}");
            assert_eq!(
                log.matches(
                    "installed preflight's build against these packages, not compiled again"
                )
                .count(),
                1,
                "{log}"
            );
        }
    }
}
