//! The guard around dkms 3.2's `kernel_preinst`: an in-place reinstall of a
//! kernel image, as its maintainer scripts run `/etc/kernel/preinst.d` and
//! `postinst.d` (the guard first, then dkms's hook, played by the dkms
//! stand-in's `kernel_preinst` and `autoinstall`), with a module whose
//! source no longer builds.

use std::process::Output;

use crate::fixture::{stderr, Fixture};

const K: &str = "6.1.0-50-amd64";
const KO: &str = "usr/lib/modules/6.1.0-50-amd64/updates/dkms/acpi_call.ko";
const BUILT: &str = "var/lib/dkms/acpi-call/1.2.2/6.1.0-50-amd64/x86_64/module/acpi_call.ko";
const LINK: &str = "var/lib/dkms/acpi-call/kernel-6.1.0-50-amd64-x86_64";
const RECORD: &str = "var/lib/dkms-hook/guarded.json";
const SAVED: &str = "var/lib/dkms-hook/guarded";

/// The sample (Debian 12 layout) with dkms 3.2's preinst.d hook installed,
/// the module's source broken, and the dkms-hook state started.
fn trixie_dkms() -> Fixture {
    let f = Fixture::sample();
    f.write_executable("etc/kernel/preinst.d/dkms", "#!/bin/sh\nexit 0\n");
    f.fake_dkms("fail-acpi-call", "");
    assert_eq!(f.run(&["post-invoke"]).status.code(), Some(0));
    f
}

/// What dkms's own hook does in `PHASE.d`: the stand-in's kernel action.
fn dkms_hook(f: &Fixture, action: &str) -> Output {
    std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/fake-dkms"),
    )
    .args([action, "-k", K])
    .env("DKMS_HOOK_ROOT", f.dir.path())
    .output()
    .unwrap()
}

fn guard(f: &Fixture, phase: &str) -> Output {
    let out = f.run(&["kernel-guard", phase, K, &format!("/boot/vmlinuz-{K}")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    out
}

fn mtime(f: &Fixture, p: &str) -> std::time::SystemTime {
    std::fs::metadata(f.path(p)).unwrap().modified().unwrap()
}

/// The module as dkms shows it: installed (link to an existing directory)
/// with the same bytes and build time.
fn assert_kept(f: &Fixture, ko: &[u8], built: &[u8], built_mtime: std::time::SystemTime) {
    assert_eq!(f.read(KO), ko, "installed module byte-identical");
    assert_eq!(f.read(BUILT), built, "dkms's built module is back");
    assert_eq!(mtime(f, BUILT), built_mtime, "with its build time");
    assert!(
        f.path(LINK).join("module/acpi_call.ko").exists(),
        "kernel-K-ARCH link back: dkms status says installed"
    );
}

#[test]
fn without_the_guard_dkms_kernel_preinst_loses_a_module_that_no_longer_builds() {
    let f = trixie_dkms();
    assert_eq!(dkms_hook(&f, "kernel_preinst").status.code(), Some(0));
    let post = dkms_hook(&f, "autoinstall");
    assert_eq!(post.status.code(), Some(11), "dkms's postinst.d hook fails");
    assert!(!f.path(KO).exists(), "the module is gone");
    assert!(std::fs::symlink_metadata(f.path(LINK)).is_err());
}

#[test]
fn the_guard_keeps_the_module_through_an_in_place_reinstall() {
    let f = trixie_dkms();
    let (ko, built, built_mtime) = (f.read(KO), f.read(BUILT), mtime(&f, BUILT));
    let pre = guard(&f, "preinst");
    assert!(pre.stderr.is_empty(), "{}", stderr(&pre));
    assert!(f.path(RECORD).exists());
    assert_eq!(dkms_hook(&f, "kernel_preinst").status.code(), Some(0));
    assert!(!f.path(KO).exists(), "dkms removed it");
    let post = guard(&f, "postinst");
    assert!(
        stderr(&post).contains("dkms-hook: put back acpi-call/1.2.2 for 6.1.0-50-amd64"),
        "{}",
        stderr(&post)
    );
    assert_kept(&f, &ko, &built, built_mtime);
    let depmod = String::from_utf8(f.read("depmod-calls.log")).unwrap();
    assert!(depmod.contains(&format!("-a {K}")), "{depmod}");
    // dkms's own postinst.d hook finds it installed: nothing to build.
    assert_eq!(dkms_hook(&f, "autoinstall").status.code(), Some(0));
    assert!(
        !f.dkms_calls().iter().any(|c| c.starts_with("build")),
        "{:?}",
        f.dkms_calls()
    );
    assert_kept(&f, &ko, &built, built_mtime);
    assert!(!f.path(RECORD).exists() && !f.path(SAVED).exists());
    // The pair of the other kernel was never touched.
    assert!(f
        .path("usr/lib/modules/6.1.0-56-amd64/updates/dkms/acpi_call.ko")
        .exists());
}

#[test]
fn a_run_killed_between_preinst_and_postinst_is_finished_later() {
    for next in ["post-invoke", "boot"] {
        let f = trixie_dkms();
        let (ko, built, built_mtime) = (f.read(KO), f.read(BUILT), mtime(&f, BUILT));
        guard(&f, "preinst");
        dkms_hook(&f, "kernel_preinst");
        // dpkg is killed here: postinst.d never runs.
        assert!(!f.path(KO).exists());
        let out = f.run(&[next]);
        assert_eq!(out.status.code(), Some(0));
        assert!(
            stderr(&out).contains("put back acpi-call/1.2.2 for 6.1.0-50-amd64"),
            "{next}: {}",
            stderr(&out)
        );
        assert_kept(&f, &ko, &built, built_mtime);
        assert!(
            !f.path(RECORD).exists() && !f.path(SAVED).exists(),
            "{next}"
        );
        // dpkg --configure -a later: the guard and dkms find it in place.
        let post = guard(&f, "postinst");
        assert!(post.stderr.is_empty(), "{}", stderr(&post));
        assert_eq!(dkms_hook(&f, "autoinstall").status.code(), Some(0));
        assert_kept(&f, &ko, &built, built_mtime);
    }
}

#[test]
fn a_second_preinst_keeps_what_the_first_saved() {
    // apt retried after a failed run: preinst.d runs again while the module
    // is still removed. What is saved must be the working module.
    let f = trixie_dkms();
    let (ko, built, built_mtime) = (f.read(KO), f.read(BUILT), mtime(&f, BUILT));
    guard(&f, "preinst");
    dkms_hook(&f, "kernel_preinst");
    guard(&f, "preinst");
    dkms_hook(&f, "kernel_preinst");
    guard(&f, "postinst");
    assert_eq!(dkms_hook(&f, "autoinstall").status.code(), Some(0));
    assert_kept(&f, &ko, &built, built_mtime);
}

#[test]
fn a_corrupt_guard_record_is_set_aside_and_the_saved_modules_still_come_back() {
    let f = trixie_dkms();
    let (ko, built, built_mtime) = (f.read(KO), f.read(BUILT), mtime(&f, BUILT));
    guard(&f, "preinst");
    dkms_hook(&f, "kernel_preinst");
    f.write(RECORD, "{\"version\": 1, \"guarded\": [ trunc");
    let post = guard(&f, "postinst");
    let err = stderr(&post);
    assert_kept(&f, &ko, &built, built_mtime);
    assert!(f.path(&format!("{RECORD}.corrupt")).exists(), "{err}");
    assert!(!f.path(SAVED).exists());
}

#[test]
fn a_lost_guard_record_still_puts_back_what_was_saved() {
    // The record could not be written after the backups (a full disk), or
    // names other pairs only: complete backups count all the same.
    let f = trixie_dkms();
    let (ko, built, built_mtime) = (f.read(KO), f.read(BUILT), mtime(&f, BUILT));
    guard(&f, "preinst");
    dkms_hook(&f, "kernel_preinst");
    f.write(
        RECORD,
        r#"{"version":1,"guarded":[{"module":"zfs","version":"2.3","kernel":"6.1.0-50-amd64","arch":"x86_64","time":1}]}"#,
    );
    let out = f.run(&["post-invoke"]);
    assert!(
        stderr(&out).contains("put back acpi-call/1.2.2"),
        "{}",
        stderr(&out)
    );
    assert_kept(&f, &ko, &built, built_mtime);
    assert!(!f.path(RECORD).exists() && !f.path(SAVED).exists());
}

#[test]
fn a_planted_guard_record_is_checked_and_bounded() {
    let f = trixie_dkms();
    let ko = f.read(KO);
    // Names that would leave the state directory, an entry without a
    // backup, a time out of range, and far too many entries.
    let mut entries = vec![
        r#"{"module":"../../../etc","version":"1","kernel":"6.1.0-50-amd64","arch":"x86_64","time":1}"#.to_string(),
        r#"{"module":"acpi-call","version":"1.2.2","kernel":"6.1.0-50-amd64","arch":"x86_64","time":99999999999999}"#.to_string(),
        r#"{"module":"acpi-call","version":"1.2.2","kernel":"6.1.0-56-amd64","arch":"x86_64","time":1}"#.to_string(),
    ];
    for i in 0..5000 {
        entries.push(format!(
            r#"{{"module":"m{i}","version":"1","kernel":"6.1.0-50-amd64","arch":"x86_64","time":1}}"#
        ));
    }
    f.write(
        RECORD,
        format!("{{\"version\":1,\"guarded\":[{}]}}", entries.join(",")),
    );
    let out = f.run(&["post-invoke"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("put back"), "{}", stderr(&out));
    assert_eq!(f.read(KO), ko, "nothing touched");
    assert!(!f.path(RECORD).exists(), "no entry with a backup: dropped");
    assert!(!f.path("etc/guarded").exists() && !f.path(SAVED).exists());
    // A link planted as the record is not followed.
    let outside = tempfile::tempdir().unwrap();
    let secret = outside.path().join("secret");
    std::fs::write(&secret, "keep").unwrap();
    f.link(RECORD, secret.to_str().unwrap());
    guard(&f, "postinst");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "keep");
    assert!(std::fs::symlink_metadata(f.path(RECORD)).is_err());
}

#[test]
fn a_backup_cut_short_is_not_used() {
    let f = trixie_dkms();
    guard(&f, "preinst");
    dkms_hook(&f, "kernel_preinst");
    std::fs::remove_file(f.path(&format!("{SAVED}/acpi-call/1.2.2/{K}/x86_64/complete"))).unwrap();
    let out = guard(&f, "postinst");
    assert!(!stderr(&out).contains("put back"), "{}", stderr(&out));
    assert!(!f.path(KO).exists());
    assert!(!f.path(RECORD).exists() && !f.path(SAVED).exists());
}

#[test]
fn a_saved_module_no_longer_needed_is_removed() {
    // dkms rebuilt the module itself (its source builds): the saved copy is
    // dropped and dkms's new build stays.
    let f = trixie_dkms();
    std::fs::remove_file(f.path("fake-dkms/fail-acpi-call")).unwrap();
    guard(&f, "preinst");
    dkms_hook(&f, "kernel_preinst");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(dkms_hook(&f, "autoinstall").status.code(), Some(0));
    let rebuilt = f.read(KO);
    assert!(String::from_utf8_lossy(&rebuilt).starts_with("rebuilt acpi-call"));
    let out = f.run(&["post-invoke"]);
    assert!(!stderr(&out).contains("put back"), "{}", stderr(&out));
    assert_eq!(f.read(KO), rebuilt);
    assert!(!f.path(RECORD).exists() && !f.path(SAVED).exists());
    // A removed kernel's saved modules are forgotten, not put back.
    guard(&f, "preinst");
    dkms_hook(&f, "kernel_preinst");
    f.run(&["kernel-hook", "prerm", K]);
    assert!(!f.path(RECORD).exists() && !f.path(SAVED).exists());
}

#[test]
fn without_dkms_kernel_preinst_the_guard_does_nothing() {
    // dkms 3.0.10 (Debian 12) has no preinst.d hook. Nothing is written,
    // not even the state directory or its lock.
    let f = Fixture::sample();
    let before = f.read(KO);
    for phase in ["preinst", "postinst"] {
        let out = guard(&f, phase);
        assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{phase}");
    }
    assert!(!f.path("var/lib/dkms-hook").exists());
    assert_eq!(f.read(KO), before);
    let suspended = f
        .cmd(&["kernel-guard", "preinst", K])
        .env("DKMS_HOOK_SUSPEND", "1")
        .output()
        .unwrap();
    assert_eq!(suspended.status.code(), Some(0));
}
