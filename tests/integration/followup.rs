//! A failed rebuild reaches the administrator by mail, through a stand-in
//! sendmail that keeps each mail and a stand-in apt-config that answers
//! `Unattended-Upgrade::Mail`; and the scheduled retry is bounded.

use std::path::Path;
use std::process::Output;

use crate::fixture::{stderr, Fixture};

const PAIR: &str = "acpi-call/1.2.2 for 6.1.0-50-amd64";

fn here(stand_in: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/integration")
        .join(stand_in)
}

/// The real binary with both stand-ins named.
fn run(f: &Fixture, args: &[&str]) -> Output {
    f.cmd(args)
        .env("DKMS_HOOK_SENDMAIL", here("fake-sendmail"))
        .env("DKMS_HOOK_APT_CONFIG", here("fake-apt-config"))
        .output()
        .unwrap()
}

/// Each mail kept by the stand-in, in order.
fn mails(f: &Fixture) -> Vec<String> {
    (0..)
        .map(|n| f.path(&format!("fake-mail/sent/{n}.eml")))
        .take_while(|p| p.exists())
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

fn subject(mail: &str) -> &str {
    mail.lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or_default()
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

/// The sample after its first transaction, with unattended-upgrades'
/// recipient `uu` (none: not set) and the second transaction appended:
/// the next post-invoke rebuilds acpi-call for 6.1.0-50-amd64, which fails
/// when `fail`.
fn stale(uu: Option<&str>, fail: bool) -> Fixture {
    let (f, second) = Fixture::before_second_transaction();
    f.run(&["post-invoke"]);
    if let Some(to) = uu {
        f.write("fake-mail/uu-mail", to);
    }
    if fail {
        f.fake_dkms("fail-acpi-call", "");
    }
    let mut log = f.read("var/log/dpkg.log");
    log.extend_from_slice(second.as_bytes());
    f.write("var/log/dpkg.log", log);
    f
}

/// Builds the dkms stand-in started, failed ones too.
fn builds(f: &Fixture) -> usize {
    std::fs::read_to_string(f.path("dkms-calls.log"))
        .unwrap_or_default()
        .lines()
        .filter(|c| c.starts_with("build ") && c.ends_with(" start"))
        .count()
}

#[test]
fn a_failed_rebuild_is_mailed_once_with_a_subject_that_says_failed() {
    let f = stale(Some("root"), true);
    let out = run(&f, &["post-invoke"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let sent = mails(&f);
    assert_eq!(sent.len(), 1, "{}", stderr(&out));
    let m = &sent[0];
    assert_eq!(
        std::fs::read_to_string(f.path("fake-mail/sent/0.args")).unwrap(),
        "-t\n-oi\n"
    );
    assert!(m.starts_with("To: root\n"), "{m}");
    assert_eq!(
        subject(m),
        format!("FAILED: dkms-hook on {} could not rebuild {PAIR}", host())
    );
    assert!(m.contains("Auto-Submitted: auto-generated\n"), "{m}");
    assert!(m.contains("after its post-invoke run"), "{m}");
    assert!(
        m.contains(&format!(
            "\nFAILED to rebuild {PAIR} (linux-kbuild-6.1 6.1.176-1 → 6.1.192-2): "
        )),
        "{m}"
    );
    let log = "/var/lib/dkms-hook/logs/acpi-call-1.2.2-6.1.0-50-amd64.make.log";
    assert!(m.contains(&format!("The last lines of {log}:\n| ")), "{m}");
    assert!(
        m.lines()
            .any(|l| l.starts_with("| ") && l.contains("implicit declaration")),
        "{m}"
    );
    assert!(m.contains("\n    dkms-hook retry\n"), "{m}");
    let logged = String::from_utf8(f.read("var/log/dkms-hook.log")).unwrap();
    assert!(logged.contains("mailed 1 failure to root"), "{logged}");
    // The same failure is not mailed again: not by the next hook, not by
    // a retry by hand that fails the same way.
    run(&f, &["post-invoke"]);
    let again = run(&f, &["retry"]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(builds(&f), 2, "the retry did build");
    assert_eq!(mails(&f).len(), 1);
}

#[test]
fn no_mail_when_all_is_well() {
    let f = stale(Some("root"), false);
    let out = run(&f, &["post-invoke"]);
    assert!(
        stderr(&out).contains(&format!("rebuilt {PAIR}")),
        "{}",
        stderr(&out)
    );
    assert!(mails(&f).is_empty());
    // Nothing to say: apt's configuration was not even read.
    assert!(!f.path("fake-mail/apt-calls").exists());
    let out = run(&f, &["retry", "--scheduled"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    assert!(mails(&f).is_empty());
}

#[test]
fn the_mail_key_is_used_when_unattended_upgrades_names_no_recipient() {
    let f = stale(None, true);
    f.write("etc/dkms/dkms-hook.conf", "mail=admin@example.org\n");
    run(&f, &["post-invoke"]);
    let sent = mails(&f);
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0].starts_with("To: admin@example.org\n"),
        "{}",
        sent[0]
    );
    // Unattended-Upgrade::Mail, read as apt reads it, comes first.
    let f = stale(Some("ops'team@example.org"), true);
    f.write("etc/dkms/dkms-hook.conf", "mail=admin@example.org\n");
    run(&f, &["post-invoke"]);
    assert!(mails(&f)[0].starts_with("To: ops'team@example.org\n"));
    assert_eq!(
        std::fs::read_to_string(f.path("fake-mail/apt-calls")).unwrap(),
        "shell V0 Unattended-Upgrade::Mail\n"
    );
    // Neither: no mail, and no line about one.
    let f = stale(None, true);
    let out = run(&f, &["post-invoke"]);
    assert!(mails(&f).is_empty());
    assert!(!stderr(&out).contains("mail"), "{}", stderr(&out));
}

#[test]
fn the_scheduled_retry_is_bounded_and_its_result_mailed() {
    let f = stale(Some("root"), true);
    run(&f, &["post-invoke"]);
    assert_eq!(mails(&f).len(), 1);
    for n in 1..=3 {
        let out = run(&f, &["retry", "--scheduled"]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let sent = mails(&f);
        assert_eq!(sent.len(), 1 + n, "retry {n}");
        let m = &sent[n];
        assert_eq!(
            subject(m),
            format!(
                "FAILED again: dkms-hook on {} could not rebuild {PAIR} (scheduled retry {n} of 3)",
                host()
            )
        );
        assert!(m.contains("after its scheduled retry run"), "{m}");
        assert_eq!(
            m.contains("there will be no more scheduled retries"),
            n == 3,
            "{m}"
        );
    }
    assert_eq!(builds(&f), 4);
    // Spent: the timer's next runs build nothing, mail nothing, say so.
    std::fs::remove_file(f.path("fake-dkms/fail-acpi-call")).unwrap();
    let out = run(&f, &["retry", "--scheduled"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains(&format!(
            "not retrying {PAIR}: its 3 scheduled retries failed; run dkms-hook retry"
        )),
        "{}",
        stderr(&out)
    );
    assert_eq!(builds(&f), 4);
    assert_eq!(mails(&f).len(), 4);
    // The administrator's retry builds it: that is mailed too.
    let out = run(&f, &["retry"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let sent = mails(&f);
    assert_eq!(sent.len(), 5);
    assert_eq!(
        subject(&sent[4]),
        format!(
            "rebuilt now: dkms-hook on {} rebuilt {PAIR}, which had failed",
            host()
        )
    );
}

#[test]
fn a_scheduled_retry_that_succeeds_is_mailed_and_a_new_failure_counts_afresh() {
    let f = stale(Some("root"), true);
    run(&f, &["post-invoke"]);
    run(&f, &["retry", "--scheduled"]);
    std::fs::remove_file(f.path("fake-dkms/fail-acpi-call")).unwrap();
    let out = run(&f, &["retry", "--scheduled"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let sent = mails(&f);
    assert_eq!(sent.len(), 3);
    assert!(
        subject(&sent[2]).starts_with("rebuilt now: "),
        "{}",
        sent[2]
    );
    assert!(
        sent[2].contains(&format!("\nrebuilt {PAIR} (")),
        "{}",
        sent[2]
    );
    // Nothing failed any more: the timer is silent.
    let out = run(&f, &["retry", "--scheduled"]);
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
    assert_eq!(mails(&f).len(), 3);
    let followup: serde_json::Value =
        serde_json::from_slice(&f.read("var/lib/dkms-hook/followup.json")).unwrap();
    assert_eq!(followup["failures"], serde_json::json!([]));
}

#[test]
fn a_failing_sendmail_never_fails_the_hook() {
    let f = stale(Some("root"), true);
    f.write("fake-mail/fail", "");
    let out = run(&f, &["post-invoke"]);
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    let said: Vec<&str> = err.lines().filter(|l| l.contains("mail")).collect();
    assert_eq!(
        said,
        [format!(
            "dkms-hook: warning: could not mail 1 failure: {} exited 75: sendmail: fatal: no route to the relay",
            here("fake-sendmail").display()
        )],
        "{err}"
    );
    assert!(mails(&f).is_empty());
    // Not mailed is not forgotten: the next run that rebuilds mails it.
    std::fs::remove_file(f.path("fake-mail/fail")).unwrap();
    let out = run(&f, &["retry"]);
    assert_eq!(out.status.code(), Some(1));
    let sent = mails(&f);
    assert_eq!(sent.len(), 1);
    assert!(subject(&sent[0]).starts_with("FAILED: "), "{}", sent[0]);
    assert!(sent[0].contains("after its retry run"), "{}", sent[0]);
}

#[test]
fn under_root_without_stand_ins_no_mail_program_runs() {
    let f = stale(None, true);
    f.write("etc/dkms/dkms-hook.conf", "mail=root\n");
    // An apt-config on PATH would record its call.
    let bin = f.path("path-bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(here("fake-apt-config"), bin.join("apt-config")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = f
        .cmd(&["post-invoke"])
        .env("PATH", path)
        .env_remove("DKMS_HOOK_SENDMAIL")
        .env_remove("DKMS_HOOK_APT_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains(&format!("FAILED to rebuild {PAIR}")),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("mail"), "{}", stderr(&out));
    assert!(!f.path("fake-mail").exists(), "nothing ran");
    // And it was not recorded as mailed: a run with a stand-in mails it.
    let out = run(&f, &["retry"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(mails(&f).len(), 1);
}

/// `followup.json` is input: a corrupt one is set aside, and an entry
/// forging its retry count (or anything else out of range) is dropped, so
/// the failure counts afresh.
#[test]
fn a_corrupt_or_forged_followup_json_is_not_trusted() {
    let f = stale(Some("root"), true);
    run(&f, &["post-invoke"]);
    let record = "var/lib/dkms-hook/followup.json";
    f.write(record, "{\"version\":1,\"failures\":[");
    let out = run(&f, &["retry", "--scheduled"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(f.path(&format!("{record}.corrupt")).exists());
    let mut v: serde_json::Value = serde_json::from_slice(&f.read(record)).unwrap();
    assert_eq!(v["failures"][0]["retries"], 1, "{v}");
    v["failures"][0]["retries"] = 99.into();
    f.write(record, v.to_string());
    let out = run(&f, &["retry", "--scheduled"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("more than 3 retries"),
        "{}",
        stderr(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&f.read(record)).unwrap();
    assert_eq!(v["failures"][0]["retries"], 1, "{v}");
    assert_eq!(builds(&f), 3);
}

/// A working module that could not be put back is mailed the same way,
/// and says so.
#[test]
fn a_module_that_could_not_be_restored_is_mailed() {
    let f = stale(Some("root"), true);
    f.fake_dkms("break-dest", "");
    let out = run(&f, &["post-invoke"]);
    assert_eq!(out.status.code(), Some(0));
    let sent = mails(&f);
    assert_eq!(sent.len(), 1, "{}", stderr(&out));
    assert!(subject(&sent[0]).starts_with("FAILED: "), "{}", sent[0]);
    assert!(
        sent[0].contains("the working module could NOT be restored"),
        "{}",
        sent[0]
    );
}
