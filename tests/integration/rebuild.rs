//! Rebuilds with the recording dkms stand-in: post-invoke, replay, status,
//! sync, retry, and the state that makes them safe to interrupt.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::fixture::{assert_rebuilt, assert_says, Fixture, RECORD_INITRAMFS};

const OLD_KO: &str = "usr/lib/modules/6.1.0-50-amd64/updates/dkms/acpi_call.ko";
const NEW_KO: &str = "usr/lib/modules/6.1.0-56-amd64/updates/dkms/acpi_call.ko";
const OLD_BUILT: &str = "var/lib/dkms/acpi-call/1.2.2/6.1.0-50-amd64/x86_64/module/acpi_call.ko";

/// The sample with dpkg.log cut after the first transaction: the state
/// before `apt-get install linux-headers-6.1.0-56-amd64`, and that second
/// transaction's lines to append.
fn before_second_transaction() -> (Fixture, String) {
    Fixture::before_second_transaction()
}

fn append(f: &Fixture, path: &str, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(f.path(path))
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn post_invoke_rebuilds_the_stale_pair_once() {
    let (f, second) = before_second_transaction();
    // First run ever: the cursor starts at the end of the log.
    let first = f.run(&["post-invoke"]);
    assert_eq!(first.status.code(), Some(0));
    assert!(first.stderr.is_empty(), "{}", stderr(&first));
    assert!(f.path("var/lib/dkms-hook/cursor.json").exists());
    let untouched = f.read(NEW_KO);
    append(&f, "var/log/dpkg.log", &second);
    let out = f.run(&["post-invoke"]);
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    assert!(
        err.contains("dkms-hook: rebuilt acpi-call/1.2.2 for 6.1.0-50-amd64 (linux-kbuild-6.1 6.1.176-1 → 6.1.192-2) in "),
        "{err}"
    );
    assert_eq!(
        f.dkms_calls(),
        [
            "build acpi-call 1.2.2 6.1.0-50-amd64",
            "install acpi-call 1.2.2 6.1.0-50-amd64"
        ]
    );
    assert!(String::from_utf8(f.read(OLD_KO))
        .unwrap()
        .starts_with("rebuilt acpi-call 1.2.2 for 6.1.0-50-amd64"));
    assert_eq!(f.read(NEW_KO), untouched, "the fresh pair is not touched");
    let log = String::from_utf8(f.read("var/log/dkms-hook.log")).unwrap();
    assert!(
        log.contains("rebuilt acpi-call/1.2.2 for 6.1.0-50-amd64"),
        "{log}"
    );
    // A second run finds nothing new.
    let again = f.run(&["post-invoke"]);
    assert!(again.stderr.is_empty(), "{}", stderr(&again));
    assert_eq!(f.dkms_calls().len(), 2);
    assert!(!f.path("var/lib/dkms-hook/backups/acpi-call").exists());
}

/// The second transaction's rebuild fails: the system and post-invoke's
/// output, with what was installed and built before it.
struct FailedRebuild {
    f: Fixture,
    out: std::process::Output,
    ko: Vec<u8>,
    built: Vec<u8>,
    built_mtime: std::time::SystemTime,
}

fn failed_rebuild() -> FailedRebuild {
    let (f, second) = before_second_transaction();
    f.run(&["post-invoke"]);
    f.fake_dkms("fail-acpi-call", "");
    let ko = f.read(OLD_KO);
    let built = f.read(OLD_BUILT);
    let built_mtime = mtime(&f, OLD_BUILT);
    append(&f, "var/log/dpkg.log", &second);
    let out = f.run(&["post-invoke"]);
    FailedRebuild {
        f,
        out,
        ko,
        built,
        built_mtime,
    }
}

fn mtime(f: &Fixture, path: &str) -> std::time::SystemTime {
    std::fs::metadata(f.path(path)).unwrap().modified().unwrap()
}

#[test]
fn a_failed_build_keeps_the_working_module() {
    let r = failed_rebuild();
    let f = &r.f;
    assert_eq!(r.out.status.code(), Some(0), "a hook never fails apt");
    assert_eq!(f.read(OLD_KO), r.ko, "installed .ko byte-identical");
    // dkms's tree is back: built module, its time, the kernel link.
    assert_eq!(f.read(OLD_BUILT), r.built);
    assert_eq!(mtime(f, OLD_BUILT), r.built_mtime);
    let link = f.path("var/lib/dkms/acpi-call/kernel-6.1.0-50-amd64-x86_64");
    assert!(link.join("module/acpi_call.ko").exists());
    let kept =
        String::from_utf8(f.read("var/lib/dkms-hook/logs/acpi-call-1.2.2-6.1.0-50-amd64.make.log"))
            .unwrap();
    assert!(kept.contains("implicit declaration"));
}

#[test]
fn a_failed_build_is_said_with_its_log_and_dkms_output_stays_in_the_run_log() {
    let r = failed_rebuild();
    let err = stderr(&r.out);
    assert!(
        err.contains("FAILED to rebuild acpi-call/1.2.2 for 6.1.0-50-amd64"),
        "{err}"
    );
    assert!(err.contains("the working module was kept; see /var/lib/dkms-hook/logs/acpi-call-1.2.2-6.1.0-50-amd64.make.log"), "{err}");
    // Regression (issue 12.2): dkms's own stderr goes to the run log only.
    let output = String::from_utf8_lossy(&r.out.stdout).to_string() + &err;
    assert!(
        !output.contains("Error!") && !output.contains("Consult"),
        "{output}"
    );
    let run_log = String::from_utf8(
        r.f.read("var/lib/dkms-hook/logs/acpi-call-1.2.2-6.1.0-50-amd64.dkms.log"),
    )
    .unwrap();
    assert!(
        run_log.contains("Consult /var/lib/dkms/acpi-call/1.2.2/build/make.log"),
        "{run_log}"
    );
}

#[test]
fn a_failed_build_shows_in_status_until_retry_rebuilds_it() {
    let f = failed_rebuild().f;
    let row = f.status_row("6.1.0-50-amd64");
    assert_eq!(row["state"], "failed");
    assert_eq!(
        row["make_log"],
        "/var/lib/dkms-hook/logs/acpi-call-1.2.2-6.1.0-50-amd64.make.log"
    );
    // Fixed module: retry rebuilds it and clears the failure.
    std::fs::remove_file(f.path("fake-dkms/fail-acpi-call")).unwrap();
    let retry = f.run(&["retry"]);
    assert_eq!(retry.status.code(), Some(0), "{}", stderr(&retry));
    assert!(String::from_utf8(f.read(OLD_KO))
        .unwrap()
        .starts_with("rebuilt"));
    let st: serde_json::Value =
        serde_json::from_slice(&f.run(&["status", "--json"]).stdout).unwrap();
    assert!(
        st["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["state"] == "fresh"),
        "{st}"
    );
}

#[test]
fn replay_rebuilds_and_exits_1_on_failure() {
    let f = Fixture::sample();
    let log = f.path("var/log/dpkg.log");
    f.fake_dkms("fail-acpi-call", "");
    let out = f.run(&["replay", log.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    std::fs::remove_file(f.path("fake-dkms/fail-acpi-call")).unwrap();
    let out = f.run(&["replay", "--json", log.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["results"][0]["outcome"], "rebuilt");
    assert_eq!(v["results"].as_array().unwrap().len(), 1);
}

#[test]
fn build_exclusive_is_skipped_not_failed() {
    let f = Fixture::sample();
    f.fake_dkms("exclusive-acpi-call", "");
    let before = f.read(OLD_BUILT);
    let out = f.run(&["replay", f.path("var/log/dpkg.log").to_str().unwrap()]);
    assert_says(
        &out,
        0,
        "skipped acpi-call/1.2.2 for 6.1.0-50-amd64: dkms exited 77",
    );
    assert_eq!(
        f.read(OLD_BUILT),
        before,
        "dkms tree restored after build --force deleted it"
    );
}

#[test]
fn rotation_between_two_runs_loses_nothing() {
    let (f, second) = before_second_transaction();
    f.run(&["post-invoke"]);
    // Half of the transaction lands in the old file, then logrotate moves it.
    let (a, b) = second.split_at(
        second
            .find("2026-11-23 20:57:37 install linux-headers-6.1.0-56-amd64")
            .unwrap(),
    );
    append(&f, "var/log/dpkg.log", a);
    std::fs::rename(f.path("var/log/dpkg.log"), f.path("var/log/dpkg.log.1")).unwrap();
    f.write("var/log/dpkg.log", b);
    let out = f.run(&["post-invoke"]);
    assert_rebuilt(&out, "acpi-call/1.2.2 for 6.1.0-50-amd64");
    assert_eq!(f.dkms_calls().len(), 2);
}

#[test]
fn suspend_does_nothing_and_keeps_the_cursor() {
    let (f, second) = before_second_transaction();
    f.run(&["post-invoke"]);
    let cursor = f.read("var/lib/dkms-hook/cursor.json");
    append(&f, "var/log/dpkg.log", &second);
    let out = f
        .cmd(&["post-invoke"])
        .env("DKMS_HOOK_SUSPEND", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(f.dkms_calls().is_empty());
    assert_eq!(f.read("var/lib/dkms-hook/cursor.json"), cursor);
    // Resumed, the next run still sees the change.
    f.run(&["post-invoke"]);
    assert_eq!(f.dkms_calls().len(), 2);
}

#[test]
fn sigkill_mid_build_then_a_second_run_finishes_once() {
    let (f, second) = before_second_transaction();
    f.run(&["post-invoke"]);
    append(&f, "var/log/dpkg.log", &second);
    f.fake_dkms("sleep", "30");
    let installed = f.read(OLD_KO);
    f.kill_post_invoke_mid_build();
    // Killed while `build --force` had deleted the pair's directory.
    assert!(f.dkms_calls().is_empty());
    assert_eq!(
        f.read(OLD_KO),
        installed,
        "installed module untouched by the killed build"
    );
    assert!(
        !f.path(OLD_BUILT).exists(),
        "the kill came while dkms had deleted the pair's directory"
    );
    std::fs::remove_file(f.path("fake-dkms/sleep")).unwrap();
    let out = f.run(&["post-invoke"]);
    assert_rebuilt(&out, "acpi-call/1.2.2 for 6.1.0-50-amd64");
    assert_eq!(
        f.dkms_calls(),
        [
            "build acpi-call 1.2.2 6.1.0-50-amd64",
            "install acpi-call 1.2.2 6.1.0-50-amd64"
        ]
    );
    let q: serde_json::Value =
        serde_json::from_slice(&f.read("var/lib/dkms-hook/queue.json")).unwrap();
    assert_eq!(q["pending"], serde_json::json!([]));
    f.run(&["post-invoke"]);
    assert_eq!(f.dkms_calls().len(), 2, "nothing done twice");
}

#[test]
fn eight_concurrent_post_invokes_build_each_pair_once() {
    let (f, second) = before_second_transaction();
    f.run(&["post-invoke"]);
    append(&f, "var/log/dpkg.log", &second);
    f.fake_dkms("sleep", "0.3");
    let children: Vec<_> = (0..8)
        .map(|_| {
            f.cmd(&["post-invoke"])
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(
        f.dkms_calls(),
        [
            "build acpi-call 1.2.2 6.1.0-50-amd64",
            "install acpi-call 1.2.2 6.1.0-50-amd64"
        ]
    );
}

#[test]
fn a_hanging_build_is_killed_with_its_process_group() {
    let f = Fixture::sample();
    f.fake_dkms("hang", "");
    f.write("etc/dkms/dkms-hook.conf", "build_timeout=1\n");
    let before = f.read(OLD_KO);
    let started = Instant::now();
    let out = f.run(&["replay", f.path("var/log/dpkg.log").to_str().unwrap()]);
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_says(&out, 1, "took longer than 1 s and was killed");
    assert_eq!(f.read(OLD_KO), before);
    let child: i32 = String::from_utf8(f.read("fake-dkms/child.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // Gone, or a zombie waiting for init to reap it.
    let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
    let state = stat.rsplit(") ").next().and_then(|r| r.chars().next());
    assert!(
        matches!(state, None | Some('Z') | Some('X')),
        "the build's child survived: {stat}"
    );
}

#[test]
fn status_judges_from_the_file_system_and_sync_rebuilds() {
    let f = Fixture::sample();
    let out = f.run(&["status"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("acpi-call/1.2.2  6.1.0-50-amd64  stale"),
        "{text}"
    );
    assert!(
        lines[0].contains("built before linux-kbuild-6.1 was unpacked"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("acpi-call/1.2.2  6.1.0-56-amd64  fresh"),
        "{text}"
    );
    let v: serde_json::Value =
        serde_json::from_slice(&f.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(v["rebuilds"][0]["kernel"], "6.1.0-50-amd64");
    assert_eq!(
        v["rebuilds"][0]["because"][0]["package"],
        "linux-kbuild-6.1"
    );
    assert_eq!(v["skipped"][0]["reason"], "fresh");
    let out = f.run(&["sync"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        f.dkms_calls(),
        [
            "build acpi-call 1.2.2 6.1.0-50-amd64",
            "install acpi-call 1.2.2 6.1.0-50-amd64"
        ]
    );
    let v: serde_json::Value =
        serde_json::from_slice(&f.run(&["status", "--json"]).stdout).unwrap();
    assert!(v["rebuilds"].as_array().unwrap().is_empty(), "{v}");
}

#[test]
fn rebuilding_under_a_root_needs_a_dkms_stand_in() {
    let f = Fixture::sample();
    let out = f
        .cmd(&["replay", f.path("var/log/dpkg.log").to_str().unwrap()])
        .env_remove("DKMS_HOOK_DKMS")
        .output()
        .unwrap();
    assert_says(&out, 2, "needs DKMS_HOOK_DKMS");
}

#[test]
fn kernel_hooks_warn_and_forget() {
    let f = Fixture::sample();
    // A new kernel with modules dir but no headers.
    std::fs::create_dir_all(f.path("usr/lib/modules/6.1.0-60-amd64/kernel")).unwrap();
    let out = f.run(&[
        "kernel-hook",
        "postinst",
        "6.1.0-60-amd64",
        "/boot/vmlinuz-6.1.0-60-amd64",
    ]);
    assert_says(&out, 0, "warning: 6.1.0-60-amd64 has no headers: dkms modules (acpi-call) will not be built for it; install linux-headers-6.1.0-60-amd64");
    let quiet = f.run(&["kernel-hook", "header_postinst", "6.1.0-56-amd64"]);
    assert_eq!(
        (quiet.status.code(), quiet.stderr.is_empty()),
        (Some(0), true),
        "{}",
        stderr(&quiet)
    );
    // A failure recorded for a kernel is forgotten when it is removed.
    f.fake_dkms("fail-acpi-call", "");
    f.run(&["replay", f.path("var/log/dpkg.log").to_str().unwrap()]);
    assert!(String::from_utf8(f.read("var/lib/dkms-hook/failures.json"))
        .unwrap()
        .contains("6.1.0-50-amd64"));
    let out = f.run(&[
        "kernel-hook",
        "prerm",
        "6.1.0-50-amd64",
        "/boot/vmlinuz-6.1.0-50-amd64",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        !String::from_utf8(f.read("var/lib/dkms-hook/failures.json"))
            .unwrap()
            .contains("6.1.0-50-amd64")
    );
    let bad = f.run(&["kernel-hook", "postinst", "../../etc"]);
    assert_eq!(bad.status.code(), Some(0));
    assert!(stderr(&bad).contains("invalid kernel release"));
    let suspended = f
        .cmd(&["kernel-hook", "postinst", "6.1.0-60-amd64"])
        .env("DKMS_HOOK_SUSPEND", "1")
        .output()
        .unwrap();
    assert!(suspended.stderr.is_empty());
}

#[test]
fn a_bad_config_never_stops_the_hook() {
    let (f, second) = before_second_transaction();
    f.write("etc/dkms/dkms-hook.conf", "jobs=lots\n");
    f.run(&["post-invoke"]);
    append(&f, "var/log/dpkg.log", &second);
    let out = f.run(&["post-invoke"]);
    let err = stderr(&out);
    assert!(err.contains("/etc/dkms/dkms-hook.conf:1: jobs: expected a number from 1 to 64, found \"lots\"; this line is ignored"), "{err}");
    assert_rebuilt(&out, "acpi-call/1.2.2 for 6.1.0-50-amd64");
}

#[test]
fn a_failed_pair_is_retried_when_its_inputs_change_again() {
    let (f, second) = before_second_transaction();
    f.run(&["post-invoke"]);
    f.fake_dkms("fail-acpi-call", "");
    append(&f, "var/log/dpkg.log", &second);
    assert!(stderr(&f.run(&["post-invoke"])).contains("FAILED"));
    // Nothing new: the failure is not retried on every dpkg run.
    f.run(&["post-invoke"]);
    assert_eq!(
        f.dkms_calls().len(),
        0,
        "a failed build never completes in the stand-in"
    );
    std::fs::remove_file(f.path("fake-dkms/fail-acpi-call")).unwrap();
    f.run(&["post-invoke"]);
    assert_eq!(f.dkms_calls().len(), 0);
    // The next kbuild upgrade makes it stale again.
    let now = jiff::Timestamp::now()
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string();
    append(
        &f,
        "var/log/dpkg.log",
        &format!(
            "{now} upgrade linux-kbuild-6.1:amd64 6.1.192-2 6.1.200-1\n{now} status unpacked linux-kbuild-6.1:amd64 6.1.200-1\n"
        ),
    );
    let out = f.run(&["post-invoke"]);
    assert_rebuilt(&out, "acpi-call/1.2.2 for 6.1.0-50-amd64");
    assert_rebuilt(&out, "acpi-call/1.2.2 for 6.1.0-56-amd64");
    let st: serde_json::Value =
        serde_json::from_slice(&f.read("var/lib/dkms-hook/failures.json")).unwrap();
    assert_eq!(st["failed"], serde_json::json!([]));
}

#[test]
fn a_dkms_that_prints_100_mb_does_not_grow_the_hook() {
    let f = Fixture::sample();
    f.fake_dkms("spew", "");
    let mut cmd = f.cmd(&["replay", f.path("var/log/dpkg.log").to_str().unwrap()]);
    crate::fixture::limit_address_space(&mut cmd, 96 << 20);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_rebuilt(&out, "acpi-call/1.2.2 for 6.1.0-50-amd64");
    let log = f.path("var/lib/dkms-hook/logs/acpi-call-1.2.2-6.1.0-50-amd64.dkms.log");
    assert!(
        std::fs::metadata(log).unwrap().len() >= 100 << 20,
        "the output went to the run log"
    );
}

/// Three modules on two kernels, all stale: the next post-invoke rebuilds
/// six pairs.
fn three_modules_stale() -> Fixture {
    let (f, second) = before_second_transaction();
    for m in ["mod-b", "mod-c"] {
        for k in ["6.1.0-50-amd64", "6.1.0-56-amd64"] {
            f.dkms_pair(m, "2.0", k, &m.replace('-', "_"), "2026-11-23T20:56:00Z");
        }
        // Their source, as dkms add leaves it (a previous build is kept
        // while it is there).
        let ko = m.replace('-', "_");
        f.write(
            &format!("usr/src/{m}-2.0/dkms.conf"),
            format!("PACKAGE_NAME=\"{m}\"\nPACKAGE_VERSION=\"2.0\"\nBUILT_MODULE_NAME[0]=\"{ko}\"\nDEST_MODULE_LOCATION[0]=\"/updates/dkms\"\nAUTOINSTALL=\"yes\"\n"),
        );
        f.link(
            &format!("var/lib/dkms/{m}/2.0/source"),
            &format!("/usr/src/{m}-2.0"),
        );
    }
    f.mtime(NEW_KO, "2026-11-23T20:56:00Z");
    f.mtime(
        "var/lib/dkms/acpi-call/1.2.2/6.1.0-56-amd64/x86_64/module/acpi_call.ko",
        "2026-11-23T20:56:00Z",
    );
    f.run(&["post-invoke"]);
    append(&f, "var/log/dpkg.log", &second);
    f
}

/// Issue 16.3: dkms installs without depmod; each kernel gets one depmod
/// after its last pair, and one update-initramfs after that, however many
/// of its modules are in the initramfs.
#[test]
fn depmod_and_update_initramfs_run_once_per_kernel() {
    let f = three_modules_stale();
    f.write("boot/initrd.img-6.1.0-50-amd64", "initrd");
    f.write("etc/initramfs-tools/modules", "mod-b\nmod-c\n");
    let calls = f.path("initramfs-calls.log");
    let out = f.run_with_update_initramfs(&["post-invoke"], RECORD_INITRAMFS);
    let e = stderr(&out);
    assert_eq!(e.matches("dkms-hook: rebuilt ").count(), 6, "{e}");
    let mut depmod: Vec<String> = String::from_utf8(f.read("depmod-calls.log"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    depmod.sort();
    assert_eq!(depmod, ["-a 6.1.0-50-amd64", "-a 6.1.0-56-amd64"]);
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        "-u -k 6.1.0-50-amd64\n"
    );
    assert!(
        e.contains("dkms-hook: 6.1.0-50-amd64: initramfs refreshed"),
        "{e}"
    );
    // The depmod line comes after the kernel's last rebuild line.
    let last = e.rfind("rebuilt ").unwrap();
    assert!(e.find("initramfs refreshed").unwrap() > last, "{e}");
}

/// Under `--root` the host's depmod is never run: without a stand-in the
/// kernel is settled with a warning (its pairs leave the queue).
#[test]
fn under_root_depmod_runs_only_as_a_named_stand_in() {
    let f = Fixture::pending();
    let out = f
        .cmd(&["post-invoke"])
        .env_remove("DKMS_HOOK_DEPMOD")
        .output()
        .unwrap();
    assert_says(
        &out,
        0,
        "warning: modules.dep of 6.1.0-50-amd64 was not updated: under --root, depmod would act on the host",
    );
    assert!(!f.path("depmod-calls.log").exists());
    let q = String::from_utf8(f.read("var/lib/dkms-hook/queue.json")).unwrap();
    assert!(!q.contains("6.1.0-50-amd64"), "{q}");
}

/// A run killed after its installs but before depmod leaves the pairs
/// queued; the next run finds them rebuilt and settles their kernel.
#[test]
fn a_run_killed_before_depmod_is_settled_by_the_next() {
    let f = Fixture::pending();
    f.fake_dkms("depmod-sleep", "30");
    let mut child = f.cmd(&["post-invoke"]).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f.dkms_calls().iter().any(|c| c.starts_with("install")) {
        assert!(Instant::now() < deadline, "install never ran");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    let q = String::from_utf8(f.read("var/lib/dkms-hook/queue.json")).unwrap();
    assert!(q.contains("6.1.0-50-amd64"), "still queued: {q}");
    std::fs::remove_file(f.path("fake-dkms/depmod-sleep")).unwrap();
    let installs = f.dkms_calls().len();
    let out = f.run(&["post-invoke"]);
    assert!(
        stderr(&out).contains("was already rebuilt"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        f.dkms_calls().len(),
        installs,
        "nothing built or installed again"
    );
    assert_eq!(
        String::from_utf8(f.read("depmod-calls.log")).unwrap(),
        "-a 6.1.0-50-amd64\n"
    );
    let q = String::from_utf8(f.read("var/lib/dkms-hook/queue.json")).unwrap();
    assert!(!q.contains("6.1.0-50-amd64"), "{q}");
}

/// Three modules on two kernels, all stale; the hook is SIGKILLed (with its
/// process group) at 50 pseudo-random points. Between runs every installed
/// module is present; at the end every pair is rebuilt, none installed twice.
#[test]
fn sigkill_at_50_points_loses_nothing_and_installs_nothing_twice() {
    let f = three_modules_stale();
    f.fake_dkms("sleep", "0.05");
    let installed: Vec<String> = ["acpi_call", "mod_b", "mod_c"]
        .iter()
        .flat_map(|ko| {
            ["6.1.0-50-amd64", "6.1.0-56-amd64"]
                .map(move |k| format!("usr/lib/modules/{k}/updates/dkms/{ko}.ko"))
        })
        .collect();
    let mut seed: u64 = 1040401;
    for _ in 0..50 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_millis((seed >> 33) % 250);
        let mut child = {
            use std::os::unix::process::CommandExt;
            f.cmd(&["post-invoke"])
                .process_group(0)
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        };
        std::thread::sleep(delay);
        let pgid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::Kill);
        child.wait().unwrap();
        for ko in &installed {
            assert!(f.path(ko).exists(), "{ko} missing after a kill");
        }
    }
    std::fs::remove_file(f.path("fake-dkms/sleep")).unwrap();
    let out = f.run(&["post-invoke"]);
    assert_eq!(out.status.code(), Some(0));
    for ko in &installed {
        assert!(
            String::from_utf8(f.read(ko))
                .unwrap()
                .starts_with("rebuilt"),
            "{ko} not rebuilt:\n{}\n{}\n{}",
            String::from_utf8_lossy(&f.read("var/log/dkms-hook.log")),
            stderr(&out),
            String::from_utf8_lossy(&f.read("dkms-calls.log"))
        );
    }
    let calls = f.dkms_calls();
    for m in ["acpi-call 1.2.2", "mod-b 2.0", "mod-c 2.0"] {
        for k in ["6.1.0-50-amd64", "6.1.0-56-amd64"] {
            let n = calls
                .iter()
                .filter(|c| **c == format!("install {m} {k}"))
                .count();
            assert!(n <= 1, "{m} {k} installed {n} times");
        }
    }
    let q: serde_json::Value =
        serde_json::from_slice(&f.read("var/lib/dkms-hook/queue.json")).unwrap();
    assert_eq!(q["pending"], serde_json::json!([]));
    assert!(!f.path("var/lib/dkms-hook/backups/acpi-call").exists());
    // Each build a rebuild replaced is kept whole, also where the run that
    // installed the new one was killed before it kept the old (recover).
    for m in ["acpi-call/1.2.2", "mod-b/2.0", "mod-c/2.0"] {
        for k in ["6.1.0-50-amd64", "6.1.0-56-amd64"] {
            let p = format!("var/lib/dkms-hook/previous/{m}/{k}/x86_64/complete");
            assert!(
                f.path(&p).exists(),
                "{p} missing: {}",
                String::from_utf8_lossy(
                    &std::process::Command::new("find")
                        .arg(f.path("var/lib/dkms-hook"))
                        .output()
                        .unwrap()
                        .stdout
                )
            );
        }
    }
}

#[test]
fn a_module_in_the_initramfs_gets_it_refreshed() {
    let setup = || {
        let f = Fixture::sample();
        f.write("boot/initrd.img-6.1.0-50-amd64", "initrd");
        let conf = String::from_utf8(f.read("usr/src/acpi-call-1.2.2/dkms.conf")).unwrap();
        f.write(
            "usr/src/acpi-call-1.2.2/dkms.conf",
            conf + "REMAKE_INITRD=\"yes\"\n",
        );
        f
    };
    // Without a stand-in, --root never runs the host's update-initramfs.
    let f = setup();
    let out = f.run(&["replay", f.path("var/log/dpkg.log").to_str().unwrap()]);
    assert!(
        stderr(&out)
            .contains("warning: the initramfs of 6.1.0-50-amd64 was not refreshed: under --root"),
        "{}",
        stderr(&out)
    );
    // A recording update-initramfs, named as under --root it must be.
    let f = setup();
    let calls = f.path("initramfs-calls.log");
    let log = f.path("var/log/dpkg.log");
    let out = f.run_with_update_initramfs(&["replay", log.to_str().unwrap()], RECORD_INITRAMFS);
    assert!(
        stderr(&out).contains("initramfs refreshed"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(calls).unwrap(),
        "-u -k 6.1.0-50-amd64\n"
    );
}

/// A rebuild whose installed module is for another kernel (its vermagic
/// says so) counts as failed, and the working module is put back (issue
/// 15.1).
#[test]
fn a_module_built_for_another_kernel_is_not_kept() {
    let f = Fixture::pending();
    let working = f.read(OLD_KO);
    f.fake_dkms(
        "vermagic",
        "6.1.0-99-amd64 SMP preempt mod_unload modversions\n",
    );
    let out = f.run(&["post-invoke"]);
    assert_says(
        &out,
        0,
        "FAILED to rebuild acpi-call/1.2.2 for 6.1.0-50-amd64 (linux-kbuild-6.1 6.1.176-1 → 6.1.192-2): the installed module is for kernel \"6.1.0-99-amd64\", not 6.1.0-50-amd64",
    );
    assert!(
        stderr(&out).contains("the working module was kept"),
        "{}",
        stderr(&out)
    );
    assert_eq!(f.read(OLD_KO), working, "the working module is back");
    // With the right vermagic the same rebuild is kept.
    std::fs::remove_file(f.path("fake-dkms/vermagic")).unwrap();
    let out = f.run(&["retry"]);
    assert_rebuilt(&out, "acpi-call/1.2.2 for 6.1.0-50-amd64");
}

/// `dkms-hook boot` finishes the queue a killed run left, and never fails
/// the boot (issue 15.4).
#[test]
fn boot_finishes_what_a_killed_run_left() {
    let f = Fixture::pending();
    f.fake_dkms("sleep", "30");
    f.kill_post_invoke_mid_build();
    std::fs::remove_file(f.path("fake-dkms/sleep")).unwrap();
    let out = f.run(&["boot"]);
    assert_eq!(out.status.code(), Some(0));
    assert_rebuilt(&out, "acpi-call/1.2.2 for 6.1.0-50-amd64");
    let again = f.run(&["boot"]);
    assert_eq!(again.status.code(), Some(0));
    assert!(again.stderr.is_empty(), "{}", stderr(&again));
    // Whatever goes wrong, the boot goes on.
    f.write(
        "var/lib/dkms-hook/queue.json",
        r#"{"version": 9, "pending": []}"#,
    );
    assert_eq!(f.run(&["boot"]).status.code(), Some(0));
}

/// The login notice: nothing when all is well, a line per failed pair
/// (issue 15.5).
#[test]
fn the_login_notice_names_failed_pairs_only() {
    let f = Fixture::pending();
    let quiet = f.run(&["motd"]);
    assert_eq!(
        (quiet.status.code(), quiet.stdout.is_empty()),
        (Some(0), true)
    );
    f.fake_dkms("fail-acpi-call", "");
    f.run(&["post-invoke"]);
    let out = f.run(&["motd"]);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "dkms-hook: acpi-call/1.2.2 for 6.1.0-50-amd64 failed to rebuild (the working module was kept); see: dkms-hook status\n"
    );
}

/// node_exporter's textfile after runs that change state, read back by the
/// Prometheus client library's own parser (issue 15.7).
#[test]
#[ignore = "needs python3-prometheus-client (/usr/bin/python3); CI installs it"]
fn the_prometheus_textfile_parses_and_counts() {
    let f = Fixture::pending();
    f.write(
        "etc/dkms/dkms-hook.conf",
        "prometheus_textfile=/var/lib/prom\n",
    );
    std::fs::create_dir_all(f.path("var/lib/prom")).unwrap();
    let parse = |f: &Fixture| crate::fixture::textfile_samples(f, &["state", "signed"]);
    // Stale, before any rebuild: `status` as root writes the textfile too.
    if rustix::process::geteuid().is_root() {
        f.run(&["status"]);
        let m = parse(&f);
        assert_eq!(m["dkms_hook_pairs/state=stale"], 1.0, "{m}");
        assert_eq!(m["dkms_hook_pairs/state=broken"], 0.0, "{m}");
        assert_eq!(m["dkms_hook_running_kernel_ok"], 0.0, "{m}");
    }
    f.fake_dkms("fail-acpi-call", "");
    f.run(&["post-invoke"]);
    let m = parse(&f);
    assert_eq!(m["dkms_hook_pairs/state=failed"], 1.0, "{m}");
    assert_eq!(m["dkms_hook_pairs/state=fresh"], 1.0, "{m}");
    assert_eq!(m["dkms_hook_pairs/state=stale"], 0.0, "{m}");
    assert_eq!(m["dkms_hook_rebuild_failures_total"], 1.0, "{m}");
    assert_eq!(m["dkms_hook_rebuilds_total"], 0.0, "{m}");
    // Fixed: retried, rebuilt, counted, all fresh.
    std::fs::remove_file(f.path("fake-dkms/fail-acpi-call")).unwrap();
    f.run(&["retry"]);
    let m = parse(&f);
    assert_eq!(m["dkms_hook_pairs/state=fresh"], 2.0, "{m}");
    assert_eq!(m["dkms_hook_pairs/state=failed"], 0.0, "{m}");
    assert_eq!(m["dkms_hook_rebuilds_total"], 1.0, "{m}");
    assert_eq!(m["dkms_hook_rebuild_failures_total"], 1.0, "{m}");
    // The rebuilt module is a module without a signature; the other
    // kernel's is a placeholder file: nothing can be told.
    assert_eq!(
        m["dkms_hook_pair_info/signed=false/state=fresh"], 1.0,
        "{m}"
    );
    assert_eq!(
        m["dkms_hook_pair_info/signed=unknown/state=fresh"], 1.0,
        "{m}"
    );
    assert!(m["dkms_hook_last_run_timestamp_seconds"].as_f64().unwrap() > 1.7e9);
}

/// Issue 22: modules were compared and backed up with `std::fs::read`. Two
/// sparse 4 GiB `.ko` files (the built module, newer than the change, and
/// the installed copy) and one queued pair cost post-invoke 34 s and
/// 8.4 GB. Now, in 256 MiB of address space, the pair is refused in one
/// line before anything is touched, and both files stay as they were.
#[test]
fn sparse_4_gib_modules_are_refused_not_read() {
    let f = Fixture::sample();
    f.run(&["post-invoke"]); // the cursor starts at the end of the log
                             // A pair queued by an earlier run (killed after the build) whose built
                             // module is newer than the change: is_done compares it with the
                             // installed copy.
    f.write(
        "var/lib/dkms-hook/queue.json",
        r#"{"version":1,"pending":[{"module":"acpi-call","version":"1.2.2","kernel":"6.1.0-50-amd64","arch":"x86_64","because":"linux-kbuild-6.1 6.1.176-1 → 6.1.192-2","stale_since":1795467461}]}"#,
    );
    let four_gib = 4u64 << 30;
    for p in [OLD_KO, OLD_BUILT] {
        let file = std::fs::File::create(f.path(p)).unwrap();
        file.set_len(four_gib).unwrap();
    }
    let mut cmd = f.cmd(&["post-invoke"]);
    crate::fixture::limit_address_space(&mut cmd, 256 << 20);
    let out = cmd.output().unwrap();
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    assert!(
        e.contains("FAILED to rebuild acpi-call/1.2.2 for 6.1.0-50-amd64"),
        "{e}"
    );
    assert!(
        e.contains("acpi_call.ko: refused: a module file of 4096 MiB, larger than 256 MiB: not handled; nothing was changed"),
        "{e}"
    );
    for p in [OLD_KO, OLD_BUILT] {
        assert_eq!(std::fs::metadata(f.path(p)).unwrap().len(), four_gib, "{p}");
    }
    let calls = std::fs::read_to_string(f.path("dkms-calls.log")).unwrap_or_default();
    assert!(
        !calls.contains("6.1.0-50-amd64"),
        "dkms never ran for it: {calls}"
    );
}
