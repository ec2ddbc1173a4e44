//! `replay --dry-run`: from dpkg logs to a plan, on whole fake systems.

use std::io::Write;

use crate::fixture::{rebuilds, skipped, Fixture};

/// The real Debian 12 capture of bug #1040401 (examples/bug-1040401).
#[test]
fn bug_1040401_bookworm_capture() {
    let f = Fixture::sample();
    let plan = f.plan(&["var/log/dpkg.log"]);
    assert_eq!(rebuilds(&plan), ["acpi-call/1.2.2 @ 6.1.0-50-amd64"]);
    let because = &plan["rebuilds"][0]["because"];
    assert_eq!(because.as_array().unwrap().len(), 1);
    assert_eq!(because[0]["package"], "linux-kbuild-6.1");
    assert_eq!(because[0]["old"], "6.1.176-1");
    assert_eq!(because[0]["new"], "6.1.192-2");
    assert_eq!(skipped(&plan), ["acpi-call/1.2.2 @ 6.1.0-56-amd64: fresh"]);
    let kb = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["package"] == "linux-kbuild-6.1")
        .unwrap();
    assert_eq!(kb["architecture"], "amd64");
    assert_eq!(kb["new"], "6.1.192-2");
    assert_eq!(kb["unpacked"], "2026-11-23T20:57:37");
    // Neither linux-libc-dev, linux-perf nor the compiler metapackage feeds a tree.
    for c in plan["changes"].as_array().unwrap() {
        let p = c["package"].as_str().unwrap();
        assert!(
            p.starts_with("linux-headers-6.1.0-") || p == "linux-kbuild-6.1",
            "{p}"
        );
    }
}

#[test]
fn bug_1040401_human_output_names_the_cause() {
    let f = Fixture::sample();
    let log = f.path("var/log/dpkg.log");
    let out = f.run(&["replay", "--dry-run", log.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let first = text.lines().next().unwrap();
    assert_eq!(
        first,
        "dkms-hook: would rebuild acpi-call/1.2.2 for 6.1.0-50-amd64 (linux-kbuild-6.1 6.1.176-1 → 6.1.192-2)"
    );
}

#[test]
fn apt_history_is_a_weaker_source_with_the_same_answer() {
    let f = Fixture::sample();
    let plan = f.plan(&["var/log/apt/history.log"]);
    assert_eq!(rebuilds(&plan), ["acpi-call/1.2.2 @ 6.1.0-50-amd64"]);
    assert_eq!(skipped(&plan), ["acpi-call/1.2.2 @ 6.1.0-56-amd64: fresh"]);
    assert_eq!(plan["rebuilds"][0]["because"][0]["old"], "6.1.176-1");
}

#[test]
fn root_option_before_or_after_the_subcommand_and_from_env() {
    let f = Fixture::sample();
    let log = f.path("var/log/dpkg.log");
    let bin = env!("CARGO_BIN_EXE_dkms-hook");
    let after = std::process::Command::new(bin)
        .args(["replay", "--dry-run", "--json", "--root"])
        .arg(f.dir.path())
        .arg(&log)
        .env("TZ", "UTC")
        .output()
        .unwrap();
    let env = std::process::Command::new(bin)
        .args(["replay", "--dry-run", "--json"])
        .arg(&log)
        .env("DKMS_HOOK_ROOT", f.dir.path())
        .env("TZ", "UTC")
        .output()
        .unwrap();
    for out in [after, env] {
        let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(rebuilds(&plan), ["acpi-call/1.2.2 @ 6.1.0-50-amd64"]);
    }
}

/// The system of the seed report, rebuilt from its text: 6.1.0-9 on
/// linux-kbuild-6.1, 6.3.0-1 and the new 6.3.0-2 on linux-kbuild-6.3, the
/// NVIDIA legacy module on all three.
fn seed_system() -> Fixture {
    let f = Fixture::new();
    f.kbuild("linux-kbuild-6.1", "6.1.27-1", "2023-05-01T10:00:00Z");
    f.kbuild("linux-kbuild-6.3", "6.3.11-1", "2023-07-04T13:23:40Z");
    f.debian_kernel(
        "6.1.0-9-amd64",
        "6.1.27-1",
        "linux-kbuild-6.1",
        "2023-05-01T10:00:00Z",
    );
    f.debian_kernel(
        "6.3.0-1-amd64",
        "6.3.7-1",
        "linux-kbuild-6.3",
        "2023-06-20T09:00:00Z",
    );
    f.debian_kernel(
        "6.3.0-2-amd64",
        "6.3.11-1",
        "linux-kbuild-6.3",
        "2023-07-04T13:23:45Z",
    );
    f.package(
        "linux-headers-amd64",
        "amd64",
        "6.3.11-1",
        &["/usr/share/doc/linux-headers-amd64/copyright"],
        "2023-07-04T13:23:50Z",
    );
    f.package(
        "linux-compiler-gcc-12-x86",
        "amd64",
        "6.3.11-1",
        &["/usr/share/doc/linux-compiler-gcc-12-x86/copyright"],
        "2023-07-04T13:23:20Z",
    );
    f.package(
        "linux-libc-dev",
        "amd64",
        "6.3.11-1",
        &["/usr/include/linux/version.h"],
        "2023-07-04T13:24:00Z",
    );
    f.package(
        "linux-source-6.3",
        "all",
        "6.3.11-1",
        &["/usr/src/linux-source-6.3.tar.xz"],
        "2023-07-04T13:24:00Z",
    );
    f.package(
        "nvidia-kernel-source",
        "amd64",
        "390.157-1",
        &["/usr/src/nvidia-kernel-390.157.tar.xz"],
        "2023-07-04T13:24:00Z",
    );
    for k in ["6.1.0-9-amd64", "6.3.0-1-amd64"] {
        f.dkms_pair(
            "nvidia-legacy-390xx",
            "390.157",
            k,
            "nvidia-legacy-390xx",
            "2023-06-20T09:05:00Z",
        );
    }
    f.dkms_pair(
        "nvidia-legacy-390xx",
        "390.157",
        "6.3.0-2-amd64",
        "nvidia-legacy-390xx",
        "2023-07-04T13:24:30Z",
    );
    f.write(
        "var/log/dpkg.log",
        "\
2023-07-04 13:23:14 startup archives unpack
2023-07-04 13:23:20 upgrade linux-compiler-gcc-12-x86:amd64 6.3.7-1 6.3.11-1
2023-07-04 13:23:20 status unpacked linux-compiler-gcc-12-x86:amd64 6.3.11-1
2023-07-04 13:23:30 install linux-headers-6.3.0-2-common:all <none> 6.3.11-1
2023-07-04 13:23:35 status unpacked linux-headers-6.3.0-2-common:all 6.3.11-1
2023-07-04 13:23:40 upgrade linux-kbuild-6.3:amd64 6.3.7-1 6.3.11-1
2023-07-04 13:23:40 status half-configured linux-kbuild-6.3:amd64 6.3.7-1
2023-07-04 13:23:40 status unpacked linux-kbuild-6.3:amd64 6.3.7-1
2023-07-04 13:23:40 status half-installed linux-kbuild-6.3:amd64 6.3.7-1
2023-07-04 13:23:40 status unpacked linux-kbuild-6.3:amd64 6.3.11-1
2023-07-04 13:23:45 install linux-headers-6.3.0-2-amd64:amd64 <none> 6.3.11-1
2023-07-04 13:23:45 status unpacked linux-headers-6.3.0-2-amd64:amd64 6.3.11-1
2023-07-04 13:23:50 upgrade linux-headers-amd64:amd64 6.3.7-1 6.3.11-1
2023-07-04 13:23:50 status unpacked linux-headers-amd64:amd64 6.3.11-1
2023-07-04 13:24:00 upgrade linux-libc-dev:amd64 6.3.7-1 6.3.11-1
2023-07-04 13:24:00 status unpacked linux-libc-dev:amd64 6.3.11-1
2023-07-04 13:24:00 upgrade linux-source-6.3:all 6.3.7-1 6.3.11-1
2023-07-04 13:24:00 status unpacked linux-source-6.3:all 6.3.11-1
2023-07-04 13:24:00 upgrade nvidia-kernel-source:amd64 390.154-1 390.157-1
2023-07-04 13:24:00 status unpacked nvidia-kernel-source:amd64 390.157-1
2023-07-04 13:24:10 startup packages configure
2023-07-04 13:24:30 configure linux-headers-6.3.0-2-amd64:amd64 6.3.11-1 <none>
2023-07-04 13:24:30 status installed linux-headers-6.3.0-2-amd64:amd64 6.3.11-1
",
    );
    f
}

#[test]
fn bug_1040401_seed_report_system() {
    let f = seed_system();
    let plan = f.plan(&["var/log/dpkg.log"]);
    assert_eq!(
        rebuilds(&plan),
        ["nvidia-legacy-390xx/390.157 @ 6.3.0-1-amd64"]
    );
    assert_eq!(
        skipped(&plan),
        ["nvidia-legacy-390xx/390.157 @ 6.3.0-2-amd64: fresh"]
    );
    let causes: Vec<&str> = plan["rebuilds"][0]["because"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["package"].as_str().unwrap())
        .collect();
    assert_eq!(causes, ["linux-kbuild-6.3"]);
    let named: Vec<&str> = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["package"].as_str().unwrap())
        .collect();
    for never in [
        "linux-compiler-gcc-12-x86",
        "linux-headers-amd64",
        "linux-libc-dev",
        "linux-source-6.3",
        "nvidia-kernel-source",
    ] {
        assert!(!named.contains(&never), "{never} named in {named:?}");
    }
}

/// A `make deb-pkg` kernel rebuilt with the same release: one headers package
/// holds the whole tree, scripts included.
#[test]
fn in_place_headers_upgrade_of_a_deb_pkg_kernel() {
    let f = Fixture::new();
    let tree = "/usr/src/linux-headers-6.6.7-custom";
    f.package(
        "linux-headers-6.6.7-custom",
        "amd64",
        "6.6.7-2",
        &[
            &format!("{tree}/Makefile"),
            &format!("{tree}/scripts/basic/fixdep"),
            &format!("{tree}/include/generated/autoconf.h"),
            &format!("/lib/modules/6.6.7-custom/build -> {tree}"),
        ],
        "2026-02-01T12:00:05Z",
    );
    f.dkms_pair(
        "zfs",
        "2.2.2",
        "6.6.7-custom",
        "zfs",
        "2026-01-10T08:00:00Z",
    );
    f.write(
        "var/log/dpkg.log",
        "2026-02-01 12:00:00 startup archives unpack\n\
         2026-02-01 12:00:01 upgrade linux-headers-6.6.7-custom:amd64 6.6.7-1 6.6.7-2\n\
         2026-02-01 12:00:05 status unpacked linux-headers-6.6.7-custom:amd64 6.6.7-2\n",
    );
    let plan = f.plan(&["var/log/dpkg.log"]);
    assert_eq!(rebuilds(&plan), ["zfs/2.2.2 @ 6.6.7-custom"]);
    assert_eq!(plan["rebuilds"][0]["because"][0]["role"], "headers");
}

/// Ubuntu: `-generic` is a farm of links into `linux-headers-ABI`.
#[test]
fn ubuntu_generic_headers_link_into_the_common_tree() {
    let f = Fixture::new();
    let common = "/usr/src/linux-headers-6.5.0-14";
    let gen = "/usr/src/linux-headers-6.5.0-14-generic";
    f.package(
        "linux-headers-6.5.0-14",
        "all",
        "6.5.0-14.14",
        &[
            &format!("{common}/Makefile"),
            &format!("{common}/arch/x86/Makefile"),
            &format!("{common}/include/linux/module.h"),
        ],
        "2026-03-01T10:00:01Z",
    );
    f.package(
        "linux-headers-6.5.0-14-generic",
        "amd64",
        "6.5.0-14.14",
        &[
            &format!("{gen}/.config"),
            &format!("{gen}/scripts/basic/fixdep"),
            &format!("{gen}/arch -> ../linux-headers-6.5.0-14/arch"),
            &format!("{gen}/include -> ../linux-headers-6.5.0-14/include"),
            &format!("/lib/modules/6.5.0-14-generic/build -> {gen}"),
        ],
        "2026-01-01T10:00:00Z",
    );
    f.dkms_pair(
        "virtualbox",
        "7.0.10",
        "6.5.0-14-generic",
        "vboxdrv",
        "2026-01-05T10:00:00Z",
    );
    f.write(
        "var/log/dpkg.log",
        "2026-03-01 10:00:00 upgrade linux-headers-6.5.0-14:all 6.5.0-14.14 6.5.0-14.14+fix1\n\
         2026-03-01 10:00:01 status unpacked linux-headers-6.5.0-14:all 6.5.0-14.14+fix1\n",
    );
    let plan = f.plan(&["var/log/dpkg.log"]);
    assert_eq!(rebuilds(&plan), ["virtualbox/7.0.10 @ 6.5.0-14-generic"]);
}

/// Debian 13: per-version kbuild packages named like the kernel.
#[test]
fn trixie_per_version_kbuild() {
    let f = Fixture::new();
    let v = "6.12.38+deb13";
    f.kbuild(
        &format!("linux-kbuild-{v}"),
        "6.12.38-1",
        "2026-04-01T10:00:01Z",
    );
    f.debian_kernel(
        &format!("{v}-amd64"),
        "6.12.38-1",
        &format!("linux-kbuild-{v}"),
        "2026-01-01T10:00:00Z",
    );
    f.dkms_pair(
        "v4l2loopback",
        "0.13.2",
        &format!("{v}-amd64"),
        "v4l2loopback",
        "2026-01-01T10:05:00Z",
    );
    f.write(
        "var/log/dpkg.log",
        format!(
            "2026-04-01 10:00:00 upgrade linux-kbuild-{v}:amd64 6.12.38-1 6.12.38-1+b1\n\
             2026-04-01 10:00:01 status unpacked linux-kbuild-{v}:amd64 6.12.38-1+b1\n"
        ),
    );
    let plan = f.plan(&["var/log/dpkg.log"]);
    assert_eq!(
        rebuilds(&plan),
        [format!("v4l2loopback/0.13.2 @ {v}-amd64")]
    );
    assert_eq!(plan["rebuilds"][0]["because"][0]["role"], "kbuild");
}

/// `replay /var/log/dpkg.log*` lists newest first; the answer must not depend on it.
#[test]
fn rotated_logs_in_glob_order() {
    let f = Fixture::sample();
    let log = std::fs::read_to_string(f.path("var/log/dpkg.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    // Oldest third gzip'd as .2.gz, middle as .1, newest stays dpkg.log.
    let (a, rest) = lines.split_at(30);
    let (b, c) = rest.split_at(50);
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(f.path("var/log/dpkg.log.2.gz")).unwrap(),
        Default::default(),
    );
    gz.write_all((a.join("\n") + "\n").as_bytes()).unwrap();
    gz.finish().unwrap();
    f.write("var/log/dpkg.log.1", b.join("\n") + "\n");
    f.write("var/log/dpkg.log", c.join("\n") + "\n");
    let plan = f.plan(&[
        "var/log/dpkg.log",
        "var/log/dpkg.log.1",
        "var/log/dpkg.log.2.gz",
    ]);
    assert_eq!(rebuilds(&plan), ["acpi-call/1.2.2 @ 6.1.0-50-amd64"]);
    assert_eq!(plan["rebuilds"][0]["because"][0]["old"], "6.1.176-1");
    assert_eq!(skipped(&plan), ["acpi-call/1.2.2 @ 6.1.0-56-amd64: fresh"]);
    let reversed = f.plan(&[
        "var/log/dpkg.log.2.gz",
        "var/log/dpkg.log.1",
        "var/log/dpkg.log",
    ]);
    assert_eq!(plan, reversed);
}

#[test]
fn purged_headers_leave_a_warning() {
    let f = Fixture::sample();
    // What `apt purge linux-headers-6.1.0-50-amd64` leaves: no tree, no list.
    std::fs::remove_dir_all(f.path("usr/src/linux-headers-6.1.0-50-amd64")).unwrap();
    std::fs::remove_file(f.path("var/lib/dpkg/info/linux-headers-6.1.0-50-amd64.list")).unwrap();
    f.write(
        "var/log/dpkg.log",
        "2026-11-24 09:00:00 startup packages purge\n\
         2026-11-24 09:00:01 remove linux-headers-6.1.0-50-amd64:amd64 6.1.176-1 <none>\n\
         2026-11-24 09:00:02 purge linux-headers-6.1.0-50-amd64:amd64 6.1.176-1 <none>\n",
    );
    let plan = f.plan(&["var/log/dpkg.log"]);
    assert!(rebuilds(&plan).is_empty());
    assert_eq!(
        skipped(&plan),
        ["acpi-call/1.2.2 @ 6.1.0-50-amd64: no-headers"]
    );
    let w = plan["warnings"][0].as_str().unwrap();
    assert!(
        w.starts_with("6.1.0-50-amd64: headers are gone (linux-headers-6.1.0-50-amd64)"),
        "{w}"
    );
    assert!(w.contains("acpi-call"), "{w}");
}

#[test]
fn unrelated_transaction_changes_nothing() {
    let f = Fixture::sample();
    f.write(
        "var/log/dpkg.log",
        "2026-11-24 09:00:00 startup archives unpack\n\
         2026-11-24 09:00:01 upgrade hello:amd64 2.10-3 2.10-3+b1\n\
         2026-11-24 09:00:01 status unpacked hello:amd64 2.10-3+b1\n\
         2026-11-24 09:00:02 upgrade linux-libc-dev:amd64 6.1.192-2 6.1.193-1\n\
         2026-11-24 09:00:02 status unpacked linux-libc-dev:amd64 6.1.193-1\n",
    );
    let plan = f.plan(&["var/log/dpkg.log"]);
    assert_eq!(
        plan,
        serde_json::json!({"changes": [], "rebuilds": [], "skipped": [], "warnings": []})
    );
    let log = f.path("var/log/dpkg.log");
    let out = f.run(&["replay", "--dry-run", log.to_str().unwrap()]);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "dkms-hook: nothing to rebuild\n"
    );
}

#[test]
fn a_file_that_is_no_log_is_one_line_naming_it() {
    let f = Fixture::sample();
    let bad = f.path("boot.img");
    std::fs::write(&bad, b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0garbage").unwrap();
    let out = f.run(&["replay", "--dry-run", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("boot.img") && err.contains("not a dpkg.log"),
        "{err}"
    );
    let missing = f.run(&["replay", "--dry-run", "/nonexistent/dpkg.log"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8(missing.stderr)
        .unwrap()
        .contains("/nonexistent/dpkg.log"));
}

/// 100 MB of log in an address space of 96 MB: the reader streams.
#[test]
fn replay_of_a_100_mb_log_runs_in_bounded_memory() {
    let f = Fixture::sample();
    let path = f.path("var/log/big.log");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut n = 0u64;
    while n < 100 << 20 {
        let line = format!(
            "2026-11-20 10:{:02}:{:02} status half-configured libfoo{}:amd64 1.{}-1\n",
            (n / 60) % 60,
            n % 60,
            n % 5000,
            n % 7
        );
        n += line.len() as u64;
        w.write_all(line.as_bytes()).unwrap();
    }
    w.flush().unwrap();
    drop(w);
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_dkms-hook"));
    cmd.arg("--root")
        .arg(f.dir.path())
        .args(["replay", "--dry-run", "--json"])
        .arg(&path)
        .env("TZ", "UTC");
    crate::fixture::limit_address_space(&mut cmd, 96 << 20);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Above 4 MB the reader folds only packages that can matter; the plan must
/// not change.
#[test]
fn a_big_log_is_filtered_without_changing_the_plan() {
    let f = Fixture::sample();
    let small = f.plan(&["var/log/dpkg.log"]);
    let mut big = String::new();
    let mut n = 0;
    while big.len() < 5 << 20 {
        big.push_str(&format!(
            "2026-11-01 10:00:00 upgrade libfoo{}:amd64 1.0-1 1.1-1\n2026-11-01 10:00:00 status unpacked libfoo{}:amd64 1.1-1\n",
            n % 3000,
            n % 3000
        ));
        n += 1;
    }
    big.push_str(&String::from_utf8(f.read("var/log/dpkg.log")).unwrap());
    f.write("var/log/dpkg.log", big);
    assert_eq!(f.plan(&["var/log/dpkg.log"]), small);
}

/// The compiler a tree names (`CC` in .kernelvariables) is an input only
/// when `trigger_compiler=yes`.
#[test]
fn compiler_upgrades_count_only_when_configured() {
    let f = Fixture::sample();
    f.package(
        "gcc-12",
        "amd64",
        "12.2.0-14+deb12u1",
        &["/usr/bin/gcc-12", "/usr/bin/x86_64-linux-gnu-gcc-12"],
        "2026-11-24T09:00:01Z",
    );
    f.write(
        "var/log/dpkg.log",
        "2026-11-24 09:00:00 upgrade gcc-12:amd64 12.2.0-14 12.2.0-14+deb12u1\n\
         2026-11-24 09:00:01 status unpacked gcc-12:amd64 12.2.0-14+deb12u1\n",
    );
    assert!(rebuilds(&f.plan(&["var/log/dpkg.log"])).is_empty());
    f.write("etc/dkms/dkms-hook.conf", "trigger_compiler=yes\n");
    let plan = f.plan(&["var/log/dpkg.log"]);
    assert_eq!(
        rebuilds(&plan),
        [
            "acpi-call/1.2.2 @ 6.1.0-50-amd64",
            "acpi-call/1.2.2 @ 6.1.0-56-amd64"
        ]
    );
    assert_eq!(plan["rebuilds"][0]["because"][0]["role"], "compiler");
}

/// A Debian 13 system: relative `build` link, no `source` link.
fn trixie_system() -> (Fixture, String) {
    let f = Fixture::new();
    let v = "6.12.38+deb13";
    let k = format!("{v}-amd64");
    f.kbuild(
        &format!("linux-kbuild-{v}"),
        "6.12.38-1",
        "2026-01-01T10:00:00Z",
    );
    f.trixie_kernel(
        &k,
        "6.12.38-1",
        &format!("linux-kbuild-{v}"),
        "2026-01-01T10:00:00Z",
    );
    f.write(&format!("boot/vmlinuz-{k}"), "image");
    f.dkms_pair(
        "acpi-call",
        "1.2.2",
        &k,
        "acpi_call",
        "2026-01-01T10:05:00Z",
    );
    (f, k)
}

/// Regression (issue 11.19): the relative link made the headers package
/// look like `modules`, so neither warning appeared on Debian 13.
#[test]
fn trixie_relative_build_link_keeps_both_warnings() {
    let (f, k) = trixie_system();
    let v = "6.12.38+deb13";
    f.write(
        "var/log/dpkg.log",
        format!(
            "2026-04-01 10:00:00 upgrade linux-kbuild-{v}:amd64 6.12.38-1 6.12.38-2\n\
             2026-04-01 10:00:01 status unpacked linux-kbuild-{v}:amd64 6.12.38-2\n"
        ),
    );
    // The dpkg database says what was unpacked.
    let status = String::from_utf8(f.read("var/lib/dpkg/status"))
        .unwrap()
        .replace(
            &format!("Package: linux-kbuild-{v}\nStatus: install ok installed\nPriority: optional\nArchitecture: amd64\nVersion: 6.12.38-1"),
            &format!("Package: linux-kbuild-{v}\nStatus: install ok installed\nPriority: optional\nArchitecture: amd64\nVersion: 6.12.38-2"),
        );
    f.write("var/lib/dpkg/status", status);
    let plan = f.plan(&["var/log/dpkg.log"]);
    assert_eq!(rebuilds(&plan), [format!("acpi-call/1.2.2 @ {k}")]);
    let w = plan["warnings"].to_string();
    assert!(
        w.contains(&format!(
            "{k}: linux-kbuild-{v} 6.12.38-2 is newer than linux-headers-{k} 6.12.38-1"
        )),
        "{w}"
    );
    // Before apt removes the headers: the removal warning.
    let out = f.run_with_stdin(
        &["pre-install-pkgs"],
        format!("VERSION 3\n\nlinux-headers-{k} 6.12.38-1 amd64 same > - - none **REMOVE**\n"),
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("dkms-hook: warning: {k}: removing linux-headers-{k} leaves this kernel without headers: its dkms modules (acpi-call/1.2.2) stay installed but can no longer be rebuilt for {k}")
    );
}

/// The JSON contract (docs/design.md): these field names are relied on by
/// other code; fields may be added, never renamed or removed.
#[test]
fn json_contract_field_names_are_stable() {
    let f = Fixture::sample();
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let has = |v: &serde_json::Value, want: &[&str]| {
        let k = keys(v);
        for w in want {
            assert!(k.iter().any(|x| x == w), "{w} missing from {k:?}");
        }
    };
    let plan = f.plan(&["var/log/dpkg.log"]);
    has(&plan, &["changes", "rebuilds", "skipped", "warnings"]);
    has(
        &plan["changes"][0],
        &["package", "architecture", "old", "new", "unpacked"],
    );
    has(
        &plan["rebuilds"][0],
        &["module", "version", "kernel", "because"],
    );
    has(
        &plan["rebuilds"][0]["because"][0],
        &["package", "old", "new"],
    );
    has(
        &plan["skipped"][0],
        &["module", "version", "kernel", "reason"],
    );
    let st: serde_json::Value =
        serde_json::from_slice(&f.run(&["status", "--json"]).stdout).unwrap();
    has(
        &st,
        &[
            "changes", "rebuilds", "skipped", "warnings", "pairs", "queued",
        ],
    );
    has(
        &st["pairs"][0],
        &[
            "module",
            "version",
            "kernel",
            "state",
            "why",
            "signed",
            "signer",
            "key_enrolled",
        ],
    );
    assert_eq!(st["changes"], serde_json::json!([]));
    let run: serde_json::Value = serde_json::from_slice(
        &f.run(&[
            "replay",
            "--json",
            f.path("var/log/dpkg.log").to_str().unwrap(),
        ])
        .stdout,
    )
    .unwrap();
    has(
        &run["results"][0],
        &[
            "module",
            "version",
            "kernel",
            "outcome",
            "exit_status",
            "make_log",
            "line",
        ],
    );
}
