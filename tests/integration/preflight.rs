//! `dkms-hook preflight`: which pairs are test-built for which `.deb`s, the
//! JSON contract and exit statuses, and that nothing on the system changes.
//! The overlay mounts need root: these tests are `#[ignore]`d otherwise
//! (`make check` runs them as root).

use std::path::Path;

use crate::fixture::{stderr, Fixture};

/// A `.deb` of `package` `version` holding `files` (in-root paths).
fn deb(f: &Fixture, package: &str, version: &str, files: &[&str]) -> String {
    deb_depending(f, package, version, files, "")
}

/// A `.deb` of linux-kbuild-6.1 `version` holding one file in `scripts/`.
fn kbuild_deb(f: &Fixture, version: &str, script: &str) -> String {
    let file = format!("/usr/lib/linux-kbuild-6.1/scripts/{script}");
    deb(f, "linux-kbuild-6.1", version, &[&file])
}

/// The sample system with every pair fresh.
fn synced() -> Fixture {
    let f = Fixture::sample();
    f.run(&["sync"]);
    f
}

fn deb_depending(
    f: &Fixture,
    package: &str,
    version: &str,
    files: &[&str],
    depends: &str,
) -> String {
    let dir = f.path(&format!("debs/{package}-{version}"));
    for file in files {
        let p = dir.join(file.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("{package} {version}\n")).unwrap();
    }
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
    // Only test builds ran, no install; the scratch directory is gone.
    assert!(f.dkms_calls()[calls_before..]
        .iter()
        .all(|c| c.starts_with("build ")));
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

/// A killed preflight leaves no mount (they die with its namespace) and its
/// scratch directory is removed by the next run.
#[test]
#[ignore = "needs root (a private mount namespace and overlayfs); make check runs it as root"]
fn a_killed_preflight_leaves_nothing_for_long() {
    let f = synced();
    f.fake_dkms("sleep", "30");
    let good = kbuild_deb(&f, "6.1.200-1", "Kbuild.include");
    let before = listing(&f);
    let mut child = f.cmd(&["preflight", &good]).spawn().unwrap();
    f.wait_for_build();
    child.kill().unwrap();
    child.wait().unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(f.dir.path().to_str().unwrap()),
        "a mount survived"
    );
    assert_eq!(listing(&f), before);
    std::fs::remove_file(f.path("fake-dkms/sleep")).unwrap();
    let out = f.run(&["preflight", &good]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let left = std::fs::read_dir(f.path("var/lib/dkms-hook/preflight"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("run-"))
        .count();
    assert_eq!(left, 0);
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
        &[&format!("/usr/src/linux-headers-{k}/Makefile")],
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
    assert!(f
        .dkms_calls()
        .iter()
        .any(|c| c == &format!("build acpi-call 1.2.2 {k}")));
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
