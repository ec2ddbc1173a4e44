//! A transaction that does not concern the kernels (`apt install
//! --reinstall hello`): the hooks read what it changed and nothing else.
//! What they would read otherwise is made to speak up when read (a FIFO as
//! dpkg's status, an unsafe name in the dkms tree, a FIFO as the
//! configuration), and the same hooks on a transaction that does concern a
//! kernel show that it does.

use std::os::unix::fs::FileTypeExt;

use crate::fixture::{stderr, Fixture};

/// dpkg.log lines of `apt-get install --reinstall hello`.
const HELLO_REINSTALL: &str = "\
2026-11-24 09:00:00 startup archives unpack
2026-11-24 09:00:00 upgrade hello:amd64 2.10-3 2.10-3
2026-11-24 09:00:00 status half-configured hello:amd64 2.10-3
2026-11-24 09:00:00 status unpacked hello:amd64 2.10-3
2026-11-24 09:00:00 status half-installed hello:amd64 2.10-3
2026-11-24 09:00:01 status unpacked hello:amd64 2.10-3
2026-11-24 09:00:01 startup packages configure
2026-11-24 09:00:01 configure hello:amd64 2.10-3 <none>
2026-11-24 09:00:01 status unpacked hello:amd64 2.10-3
2026-11-24 09:00:01 status half-configured hello:amd64 2.10-3
2026-11-24 09:00:01 status installed hello:amd64 2.10-3
";

fn mkfifo(f: &Fixture, p: &str) {
    let path = f.path(p);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&path);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    assert!(std::fs::metadata(&path).unwrap().file_type().is_fifo());
}

fn append_log(f: &Fixture, lines: &str) {
    let mut log = f.read("var/log/dpkg.log");
    log.extend_from_slice(lines.as_bytes());
    f.write("var/log/dpkg.log", log);
}

/// The sample before its second transaction, cursor at the end of the log,
/// with dpkg's status a FIFO and a dkms module directory of an unsafe name:
/// a run that reads either says so.
fn poisoned() -> (Fixture, String) {
    let (f, second) = Fixture::before_second_transaction();
    assert_eq!(f.run(&["post-invoke"]).status.code(), Some(0));
    mkfifo(&f, "var/lib/dpkg/status");
    std::fs::create_dir_all(f.path("var/lib/dkms/evil module/1.0/6.1.0-50-amd64/x86_64/module"))
        .unwrap();
    (f, second)
}

#[test]
fn post_invoke_after_an_unrelated_transaction_reads_only_what_it_changed() {
    let (f, second) = poisoned();
    append_log(&f, HELLO_REINSTALL);
    let out = f.run(&["post-invoke"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stderr(&out), "", "read more than the transaction changed");
    assert!(f.dkms_calls().is_empty());
    // The cursor moved past it: the next run reads nothing again.
    let out = f.run(&["post-invoke"]);
    assert_eq!(stderr(&out), "");
    // A transaction that feeds a kernel's build tree: now the dkms tree and
    // dpkg's status are read (and the poison speaks up), and the pair is
    // rebuilt.
    append_log(&f, &second);
    let out = f.run(&["post-invoke"]);
    assert_eq!(out.status.code(), Some(0));
    let e = stderr(&out);
    assert!(e.contains("evil module"), "{e}");
    assert!(e.contains("status"), "{e}");
    assert_eq!(
        f.dkms_calls(),
        [
            "build acpi-call 1.2.2 6.1.0-50-amd64",
            "install acpi-call 1.2.2 6.1.0-50-amd64"
        ]
    );
}

#[test]
fn replay_of_an_unrelated_transaction_plans_nothing_and_reads_only_its_lists() {
    let (f, second) = poisoned();
    f.write("hello.log", HELLO_REINSTALL);
    f.write("kbuild.log", &second);
    let plan = |log: &str| {
        let out = f.run(&[
            "replay",
            "--dry-run",
            "--json",
            f.path(log).to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let p = plan("hello.log");
    assert_eq!(
        p,
        serde_json::json!({"changes": [], "rebuilds": [], "skipped": [], "warnings": []})
    );
    let p = plan("kbuild.log");
    assert_eq!(p["rebuilds"].as_array().unwrap().len(), 1, "{p}");
    let warnings = p["warnings"].to_string();
    assert!(warnings.contains("evil module"), "{warnings}");
}

#[test]
fn pre_install_pkgs_reads_the_configuration_once() {
    // (With preflight on, its child process says the line once more.)
    let f = Fixture::sample();
    f.write("etc/dkms/dkms-hook.conf", "frob = 1\npreflight = off\n");
    let stream = "VERSION 3\nAPT::Architecture=amd64\n\n\
        linux-kbuild-6.1 6.1.192-2 amd64 same < 6.1.200-1 amd64 same /var/cache/apt/archives/linux-kbuild-6.1_6.1.200-1_amd64.deb\n";
    let out = crate::fixture::feed(f.cmd(&["pre-install-pkgs"]), stream);
    assert_eq!(out.status.code(), Some(0));
    let e = stderr(&out);
    assert_eq!(e.matches("unknown key \"frob\"").count(), 1, "{e}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("build tree of 6.1.0-50-amd64"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

const HELLO: &str = r#"{"jsonrpc":"2.0","method":"org.debian.apt.hooks.hello","id":0,"params":{"versions":["0.1","0.2"]}}"#;
const BYE: &str = r#"{"jsonrpc":"2.0","method":"org.debian.apt.hooks.bye","params":{}}"#;

/// One JSON hook call of apt 2.x (protocol 0.2) with debug output on:
/// (what apt read, the hook's stdout, its stderr).
fn json_call(f: &Fixture, method: &str, command: &str, terms: &[&str]) -> (String, String, String) {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let notification = format!(
        r#"{{"jsonrpc":"2.0","method":"org.debian.apt.hooks.install.{method}","params":{{"command":"{command}","search-terms":{},"unknown-packages":[],"packages":[]}}}}"#,
        serde_json::to_string(terms).unwrap()
    );
    let (apt, hook) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut cmd = f.cmd(&["apt-json-hook"]);
    cmd.env("APT_HOOK_SOCKET", "3")
        .env("DKMS_HOOK_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    crate::fixture::pass_as_fd3(&mut cmd, hook.as_raw_fd());
    let child = cmd.spawn().unwrap();
    drop(hook);
    let mut w = &apt;
    for m in [HELLO, &notification, BYE] {
        w.write_all(format!("{m}\n\n").as_bytes()).unwrap();
    }
    apt.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    (&apt).read_to_string(&mut answer).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    (
        answer,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr(&out),
    )
}

#[test]
fn the_json_hook_reads_nothing_at_the_calls_it_has_nothing_to_do_at() {
    let f = Fixture::sample();
    mkfifo(&f, "etc/dkms/dkms-hook.conf");
    for method in ["package-list", "post", "fail"] {
        let (answer, out, err) = json_call(&f, method, "reinstall", &["linux-kbuild-6.1"]);
        assert!(answer.contains(r#""version":"0.2""#), "{method}: {answer}");
        assert_eq!((out.as_str(), err.as_str()), ("", ""), "{method}");
    }
    // pre-prompt looks at the list statistics will see, to decide whether
    // the rest of the run may stay quiet (apt::quiet), and says nothing.
    let (answer, out, err) = json_call(&f, "pre-prompt", "reinstall", &["linux-kbuild-6.1"]);
    assert!(answer.contains(r#""version":"0.2""#), "{answer}");
    assert_eq!(out, "");
    assert!(err.lines().all(|l| l.contains(": debug: ")), "{err}");
    // The call before the prompt reads the configuration (and says it
    // cannot), then forecasts the reinstall.
    let (_, out, err) = json_call(&f, "statistics", "reinstall", &["linux-kbuild-6.1"]);
    assert!(err.contains("dkms-hook.conf"), "{err}");
    assert!(out.contains("build tree of 6.1.0-50-amd64"), "{out}");
}

#[test]
fn an_unrelated_reinstall_is_judged_by_its_file_list_before_dpkg_status() {
    let f = Fixture::sample();
    mkfifo(&f, "var/lib/dpkg/status");
    let (_, out, err) = json_call(&f, "statistics", "reinstall", &["hello"]);
    assert_eq!(out, "");
    assert!(!err.contains("dpkg/status"), "{err}");
    // A reinstall that feeds a tree needs its installed version: the status
    // file is read (here refused, so nothing is forecast).
    let (_, _, err) = json_call(&f, "statistics", "reinstall", &["linux-kbuild-6.1"]);
    assert!(err.contains("dpkg/status"), "{err}");
}
