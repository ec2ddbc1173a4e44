//! `rollback` and `unhold`: the previous build kept by a rebuild, put back
//! byte-identical and held; refused on another ABI, another version, or a
//! previous build that is cut short, corrupt or planted; finished after a
//! kill; left alone by sync, retry and the hooks while held.

use std::process::{Output, Stdio};
use std::time::Duration;

use crate::fixture::{assert_says, stderr, Fixture};

/// The run exited 0 and said `text` on stdout.
#[track_caller]
fn assert_done(out: &Output, text: &str) {
    let o = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}{o}", stderr(out));
    assert!(o.contains(text), "{text:?} not said:\n{o}");
}

const K: &str = "6.1.0-50-amd64";
const PAIR: &str = "acpi-call/1.2.2";
const LIVE_KO: &str = "usr/lib/modules/6.1.0-50-amd64/updates/dkms/acpi_call.ko";
const LIVE_BUILT: &str = "var/lib/dkms/acpi-call/1.2.2/6.1.0-50-amd64/x86_64/module/acpi_call.ko";
const PREVIOUS: &str = "var/lib/dkms-hook/previous/acpi-call/1.2.2/6.1.0-50-amd64/x86_64";
const BACKUP: &str = "var/lib/dkms-hook/backups/acpi-call/1.2.2/6.1.0-50-amd64/x86_64";
const SAVED_KO: &str = "installed/usr/lib/modules/6.1.0-50-amd64/updates/dkms/acpi_call.ko";

fn vermagic(k: &str) -> String {
    format!("vermagic={k} SMP preempt mod_unload modversions\0")
}

/// The sample with real-looking modules (a vermagic), one of the kernel's
/// own modules, and the kbuild upgrade pending; then post-invoke rebuilds
/// the pair. Returns the fixture and the bytes of the build it replaced.
fn rebuilt() -> (Fixture, Vec<u8>) {
    let f = Fixture::pending();
    let original = format!("ko acpi-call {K} original\0{}", vermagic(K)).into_bytes();
    for p in [LIVE_KO, LIVE_BUILT] {
        f.write(p, &original);
        f.mtime(p, "2026-11-23T20:56:00Z");
    }
    f.write(
        &format!("usr/lib/modules/{K}/kernel/drivers/acpi/ac.ko"),
        format!("in-tree\0{}", vermagic(K)),
    );
    let out = f.run(&["post-invoke"]);
    assert!(
        stderr(&out).contains(&format!("rebuilt {PAIR} for {K}")),
        "{}",
        stderr(&out)
    );
    assert_ne!(f.read(LIVE_KO), original);
    (f, original)
}

fn rollback(f: &Fixture) -> Output {
    f.run(&["rollback", PAIR, K, "--reason", "oops on resume"])
}

fn holds(f: &Fixture) -> serde_json::Value {
    serde_json::from_slice(&f.read("var/lib/dkms-hook/holds.json")).unwrap()
}

#[test]
fn a_rebuild_keeps_the_previous_build_and_rollback_puts_it_back_and_holds_it() {
    let (f, original) = rebuilt();
    let rebuilt_ko = f.read(LIVE_KO);
    assert_eq!(f.read(&format!("{PREVIOUS}/{SAVED_KO}")), original);
    assert!(f.path(&format!("{PREVIOUS}/complete")).exists());
    assert!(
        !f.path(BACKUP).exists(),
        "the backup became the previous build"
    );
    let row = f.status_row(K);
    assert!(row["previous"]["built"].is_string(), "{row}");
    assert_eq!(row["held"], serde_json::Value::Null);

    let out = rollback(&f);
    assert_done(&out, &format!("rolled back {PAIR} for {K}"));
    assert_eq!(f.read(LIVE_KO), original, "installed copy put back");
    assert_eq!(f.read(LIVE_BUILT), original, "dkms tree put back");
    let depmod = String::from_utf8(f.read("depmod-calls.log")).unwrap();
    assert!(
        depmod
            .lines()
            .last()
            .unwrap()
            .starts_with(&format!("-a {K}")),
        "{depmod}"
    );
    // The build it replaced is the previous one now: nothing is lost.
    assert_eq!(f.read(&format!("{PREVIOUS}/{SAVED_KO}")), rebuilt_ko);

    let row = f.status_row(K);
    assert_eq!(row["state"], "held", "{row}");
    assert_eq!(row["held"]["reason"], "oops on resume");
    assert!(row["why"]
        .as_str()
        .unwrap()
        .contains("dkms-hook unhold acpi-call/1.2.2 6.1.0-50-amd64"));
    let status = f.run(&["status"]);
    assert_eq!(status.status.code(), Some(0), "held is no finding");

    // sync, retry and the hooks leave it alone.
    let calls = f.dkms_calls().len();
    f.write(
        "var/lib/dkms-hook/queue.json",
        format!(
            r#"{{"version":1,"pending":[{{"module":"acpi-call","version":"1.2.2","kernel":"{K}","arch":"x86_64","because":[],"stale_since":1}}]}}"#
        ),
    );
    let out = f.run(&["post-invoke"]);
    assert!(
        stderr(&out).contains(&format!("left {PAIR} for {K} alone: held")),
        "{}",
        stderr(&out)
    );
    assert!(
        !stderr(&out).contains("rebuilding"),
        "a held pair is not announced: {}",
        stderr(&out)
    );
    for cmd in ["sync", "retry"] {
        assert_eq!(f.run(&[cmd]).status.code(), Some(0), "{cmd}");
    }
    assert_eq!(
        f.dkms_calls().len(),
        calls,
        "no dkms run for a held pair: {:?}",
        f.dkms_calls()
    );
    assert_eq!(f.read(LIVE_KO), original);
}

#[test]
fn unhold_lets_sync_rebuild_it() {
    let (f, original) = rebuilt();
    assert_eq!(rollback(&f).status.code(), Some(0));
    let out = f.run(&["unhold", PAIR, K]);
    assert_done(&out, &format!("{PAIR} for {K} is no longer held"));
    assert_eq!(holds(&f)["held"], serde_json::json!([]));
    assert_eq!(f.status_row(K)["state"], "stale");
    let calls = f.dkms_calls().len();
    assert_eq!(f.run(&["sync"]).status.code(), Some(0));
    assert_eq!(f.dkms_calls().len(), calls + 2, "built and installed");
    assert_ne!(f.read(LIVE_KO), original);
    let again = f.run(&["unhold", PAIR, K]);
    assert_says(&again, 2, "is not held");
}

#[test]
fn rollback_refuses_without_a_previous_build_or_with_another_version() {
    let f = Fixture::pending();
    let out = rollback(&f);
    assert_says(
        &out,
        2,
        &format!("no previous build of {PAIR} for {K} is kept"),
    );
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    for bad in ["acpi-call", "../x/1", "acpi-call/1.2.2/.."] {
        let out = f.run(&["rollback", bad, K]);
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", stderr(&out));
    }
    let (f, original) = rebuilt();
    let live = f.read(LIVE_KO);
    // acpi-call 1.3 is installed for K now: 1.2.2's build cannot replace it.
    f.dkms_pair("acpi-call", "1.3", K, "acpi_call", "2026-11-24T10:00:00Z");
    let out = rollback(&f);
    assert_says(
        &out,
        2,
        "acpi-call/1.3 is the version installed for 6.1.0-50-amd64",
    );
    assert_ne!(f.read(&format!("{PREVIOUS}/{SAVED_KO}")), live);
    assert_eq!(f.read(&format!("{PREVIOUS}/{SAVED_KO}")), original, "kept");
    assert!(!f.path("var/lib/dkms-hook/holds.json").exists());
}

#[test]
fn rollback_refuses_a_previous_build_of_another_kernel_abi() {
    let (f, _) = rebuilt();
    let live = f.read(LIVE_KO);
    // The kernel's own modules say another ABI than the previous build.
    f.write(
        &format!("usr/lib/modules/{K}/kernel/drivers/acpi/ac.ko"),
        format!("in-tree\0vermagic={K} SMP preempt mod_unload modversions RETPOLINE\0"),
    );
    let out = rollback(&f);
    assert_says(&out, 2, "was built for another kernel ABI");
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    assert_eq!(f.read(LIVE_KO), live, "nothing changed");
    assert!(!f.path("var/lib/dkms-hook/holds.json").exists());
}

/// Regression (the Debian 12 tier, headers without the kernel's image):
/// without a module of the kernel's own, the current build, which dkms
/// made against the kernel's headers, tells the ABI.
#[test]
fn without_the_kernel_image_the_current_build_tells_the_abi() {
    let (f, original) = rebuilt();
    std::fs::remove_dir_all(f.path(&format!("usr/lib/modules/{K}/kernel"))).unwrap();
    let rebuilt_built = f.read(LIVE_BUILT);
    // The current build says another ABI: refused.
    let other =
        String::from_utf8_lossy(&rebuilt_built).replace("modversions", "modversions RETPOLINE");
    f.write(LIVE_BUILT, &other);
    assert_says(&rollback(&f), 2, "was built for another kernel ABI");
    // Neither the kernel's modules nor a current build: cannot be told.
    std::fs::remove_file(f.path(LIVE_BUILT)).unwrap();
    assert_says(&rollback(&f), 2, "could be read to tell the kernel's ABI");
    // The current build as dkms made it: rolled back.
    f.write(LIVE_BUILT, &rebuilt_built);
    assert_eq!(rollback(&f).status.code(), Some(0));
    assert_eq!(f.read(LIVE_KO), original);
}

/// Each way a previous build can be cut short, corrupt or planted: refused
/// in one line, nothing on the system touched, no hold written.
#[test]
fn a_planted_or_corrupt_previous_build_is_not_used() {
    type Plant = fn(&Fixture);
    let cases: [(&str, Plant, &str); 7] = [
        (
            "cut short",
            |f| std::fs::remove_file(f.path(&format!("{PREVIOUS}/complete"))).unwrap(),
            "cut short",
        ),
        (
            "a link to a host file",
            |f| {
                f.link(
                    &format!("{PREVIOUS}/installed/usr/lib/modules/{K}/updates/dkms/x.ko"),
                    "/etc/shadow",
                )
            },
            "holds a link",
        ),
        (
            "a file outside /lib/modules",
            |f| {
                let ko = f.read(&format!("{PREVIOUS}/{SAVED_KO}"));
                f.write(&format!("{PREVIOUS}/installed/etc/cron.d/acpi_call.ko"), ko)
            },
            "outside /lib/modules",
        ),
        (
            "a file that is not its module",
            |f| {
                f.write(
                    &format!("{PREVIOUS}/installed/usr/lib/modules/{K}/updates/dkms/evil.ko"),
                    "x",
                )
            },
            "not one of its modules",
        ),
        (
            "an installed copy that differs",
            |f| {
                f.write(
                    &format!("{PREVIOUS}/{SAVED_KO}"),
                    format!("evil\0{}", vermagic(K)),
                )
            },
            "differs from its build",
        ),
        (
            "no installed copy",
            |f| std::fs::remove_file(f.path(&format!("{PREVIOUS}/{SAVED_KO}"))).unwrap(),
            "no installed copy",
        ),
        (
            "garbage instead of a module",
            |f| {
                for p in [
                    format!("{PREVIOUS}/{SAVED_KO}"),
                    format!("{PREVIOUS}/tree/module/acpi_call.ko"),
                ] {
                    f.write(&p, "garbage")
                }
            },
            "another kernel ABI",
        ),
    ];
    for (what, plant, says) in cases {
        let (f, _) = rebuilt();
        let live = f.read(LIVE_KO);
        plant(&f);
        let out = rollback(&f);
        assert_eq!(out.status.code(), Some(2), "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{what}: {}", stderr(&out));
        assert_eq!(stderr(&out).lines().count(), 1, "{what}: {}", stderr(&out));
        assert_eq!(f.read(LIVE_KO), live, "{what}: nothing changed");
        assert!(!f.path("var/lib/dkms-hook/holds.json").exists(), "{what}");
        assert!(!f.path("etc/shadow").exists() && !f.path("etc/cron.d/acpi_call.ko").exists());
    }
}

/// Both builds, wherever they are complete: the live pair, the backup of
/// an interrupted rollback, the previous build.
fn complete_copies(f: &Fixture) -> Vec<Vec<u8>> {
    let mut out = vec![f.read(LIVE_KO)];
    for dir in [BACKUP, PREVIOUS] {
        if f.path(&format!("{dir}/complete")).exists() {
            out.push(f.read(&format!("{dir}/{SAVED_KO}")));
        }
    }
    out
}

fn unfinished(f: &Fixture) -> bool {
    f.path("var/lib/dkms-hook/holds.json").exists()
        && holds(f)["held"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["unfinished"] == true)
}

/// SIGKILL at 30 points of a rollback: both builds survive every kill
/// somewhere complete, and running the rollback again finishes it.
#[test]
fn a_rollback_killed_anywhere_loses_nothing_and_is_finished_by_running_it_again() {
    let (f, original) = rebuilt();
    let rebuilt_ko = f.read(LIVE_KO);
    f.write("fake-dkms/depmod-sleep", "0.05");
    let mut seed: u64 = 24;
    for i in 0..30 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut child = {
            use std::os::unix::process::CommandExt;
            f.cmd(&["rollback", PAIR, K])
                .process_group(0)
                .stderr(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        };
        std::thread::sleep(Duration::from_millis((seed >> 33) % 120));
        let pgid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::Kill);
        child.wait().unwrap();
        let copies = complete_copies(&f);
        assert!(
            copies.contains(&original),
            "kill {i}: the original build is lost"
        );
        assert!(
            copies.contains(&rebuilt_ko),
            "kill {i}: the rebuilt build is lost"
        );
        if unfinished(&f) {
            let row = f.status_row(K);
            assert!(
                row["why"]
                    .as_str()
                    .unwrap()
                    .contains("a rollback was cut short"),
                "{row}"
            );
            assert_says(&f.run(&["unhold", PAIR, K]), 2, "was cut short");
            let out = f.run(&["rollback", PAIR, K]);
            assert_eq!(out.status.code(), Some(0), "kill {i}: {}", stderr(&out));
        }
        assert!(!unfinished(&f));
        // Finished: the live pair is one build, whole, and the other is the
        // previous build.
        let live = f.read(LIVE_KO);
        assert_eq!(
            f.read(LIVE_BUILT),
            live,
            "kill {i}: dkms tree and installed copy agree"
        );
        let other = if live == original {
            &rebuilt_ko
        } else {
            &original
        };
        assert_eq!(
            &f.read(&format!("{PREVIOUS}/{SAVED_KO}")),
            other,
            "kill {i}"
        );
        assert!(!f.path(BACKUP).exists(), "kill {i}");
    }
}

/// Regression: a rollback killed after the swap (in depmod) must not put
/// the swapped-out build back when run again.
#[test]
fn a_rollback_killed_after_the_swap_finishes_without_swapping_again() {
    let (f, original) = rebuilt();
    let rebuilt_ko = f.read(LIVE_KO);
    f.write("fake-dkms/depmod-sleep", "5");
    let mut child = {
        use std::os::unix::process::CommandExt;
        f.cmd(&["rollback", PAIR, K, "--reason", "oops on resume"])
            .process_group(0)
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    std::thread::sleep(Duration::from_millis(2000));
    let pgid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::Kill);
    child.wait().unwrap();
    assert!(unfinished(&f));
    assert_eq!(f.read(LIVE_KO), original);
    // Post-invoke leaves a pair whose rollback was cut short alone too.
    let out = f.run(&["post-invoke"]);
    assert_eq!(out.status.code(), Some(0));
    std::fs::remove_file(f.path("fake-dkms/depmod-sleep")).unwrap();
    assert_eq!(f.run(&["rollback", PAIR, K]).status.code(), Some(0));
    assert_eq!(f.read(LIVE_KO), original);
    assert_eq!(f.read(&format!("{PREVIOUS}/{SAVED_KO}")), rebuilt_ko);
    let row = f.status_row(K);
    assert_eq!(row["state"], "held");
    assert_eq!(
        row["held"]["reason"], "oops on resume",
        "run again, it keeps its reason"
    );
}

#[test]
fn keep_previous_no_keeps_no_previous_build() {
    let f = Fixture::pending();
    f.write("etc/dkms/dkms-hook.conf", "keep_previous=no\n");
    f.run(&["post-invoke"]);
    assert!(!f.path(PREVIOUS).exists());
    assert!(!f.path(BACKUP).exists());
    assert_says(&rollback(&f), 2, "no previous build");
}

/// Holds and previous builds do not outlive what they are about: a removed
/// kernel takes its own with it; a hold ends when another version of the
/// module is installed for the kernel.
#[test]
fn holds_and_previous_builds_end_with_their_kernel_or_version() {
    let (f, _) = rebuilt();
    assert_eq!(rollback(&f).status.code(), Some(0));
    f.dkms_pair("acpi-call", "1.3", K, "acpi_call", "2026-11-24T10:00:00Z");
    let out = f.run(&["post-invoke"]);
    assert!(
        stderr(&out).contains(&format!(
            "{PAIR} for {K} is no longer held: it is not the version installed"
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(holds(&f)["held"], serde_json::json!([]));
    assert!(
        f.path(PREVIOUS).exists(),
        "its module version is still there"
    );
    let out = f.run(&["kernel-hook", "prerm", K]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !f.path(PREVIOUS).exists(),
        "the removed kernel's previous build is gone"
    );
}

/// Under --root, the previous build is put back inside the root: a link in
/// the root to a host directory resolves inside the root.
#[test]
fn under_root_a_rollback_writes_only_inside_the_root() {
    let (f, original) = rebuilt();
    let host = tempfile::tempdir().unwrap();
    let outside = host.path().join("dkms");
    std::fs::create_dir(&outside).unwrap();
    let updates = f.path(&format!("usr/lib/modules/{K}/updates"));
    std::fs::remove_dir_all(&updates).unwrap();
    std::os::unix::fs::symlink(host.path(), &updates).unwrap();
    let out = rollback(&f);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        !outside.join("acpi_call.ko").exists(),
        "written on the host"
    );
    let inside = f.path(&format!("{}/dkms/acpi_call.ko", host.path().display()));
    assert_eq!(std::fs::read(inside).unwrap(), original);
}

/// A module version dkms removed takes its previous build with it: the
/// next post-invoke removes what nothing can roll back to any more.
#[test]
fn a_removed_module_version_takes_its_previous_build_with_it() {
    let (f, _) = rebuilt();
    assert!(f.path(PREVIOUS).exists());
    let source = f.path("var/lib/dkms/acpi-call/1.2.2/source");
    std::fs::remove_file(&source)
        .or_else(|_| std::fs::remove_dir_all(&source))
        .unwrap();
    assert_eq!(f.run(&["post-invoke"]).status.code(), Some(0));
    assert!(!f.path(PREVIOUS).exists(), "its previous build is gone");
    assert_says(&rollback(&f), 2, "no previous build");
}
