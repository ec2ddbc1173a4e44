//! Warnings before apt's prompt: the JSON hook through a real socketpair, and
//! Pre-Install-Pkgs v3 on stdin, against the sample system.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::Stdio;
use std::time::Duration;

use crate::fixture::{feed, pass_as_fd3, Fixture};

const HELLO: &str = r#"{"jsonrpc":"2.0","method":"org.debian.apt.hooks.hello","id":0,"params":{"versions":["0.1","0.2"]}}"#;

fn package(name: &str, mode: &str, current: Option<&str>, install: Option<&str>) -> String {
    let v = |x: Option<&str>| x.map_or(String::new(), |v| format!(r#""version":"{v}","#));
    let mut versions = Vec::new();
    if current.is_some() {
        versions.push(format!(
            r#""current":{{{}"architecture":"amd64"}}"#,
            v(current)
        ));
    }
    if install.is_some() {
        versions.push(format!(
            r#""install":{{{}"architecture":"amd64"}}"#,
            v(install)
        ));
    }
    format!(
        r#"{{"id":1,"name":"{name}","architecture":"amd64","mode":"{mode}","automatic":false,"versions":{{{}}}}}"#,
        versions.join(",")
    )
}

/// Run `apt-json-hook` with apt's side of a socketpair driven by `messages`;
/// returns (what apt read, the hook's stdout, exit code).
fn json_session(f: &Fixture, messages: &[String]) -> (String, String, Option<i32>) {
    let (apt, hook) = UnixStream::pair().unwrap();
    let fd = hook.as_raw_fd();
    let mut cmd = f.cmd(&["apt-json-hook"]);
    cmd.env("APT_HOOK_SOCKET", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    pass_as_fd3(&mut cmd, fd);
    let child = cmd.spawn().unwrap();
    drop(hook);
    apt.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = &apt;
    for m in messages {
        let _ = w.write_all(format!("{m}\n\n").as_bytes());
    }
    let _ = apt.shutdown(std::net::Shutdown::Write);
    let mut answer = String::new();
    let _ = (&apt).read_to_string(&mut answer);
    let out = child.wait_with_output().unwrap();
    (
        answer,
        String::from_utf8(out.stdout).unwrap(),
        out.status.code(),
    )
}

fn statistics(packages: &[String]) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","method":"org.debian.apt.hooks.install.statistics","params":{{"command":"upgrade","search-terms":[],"unknown-packages":[],"packages":[{}]}}}}"#,
        packages.join(",")
    )
}

const BYE: &str = r#"{"jsonrpc":"2.0","method":"org.debian.apt.hooks.bye","params":{}}"#;

#[test]
fn json_hook_warns_on_statistics_about_an_in_place_kbuild_upgrade() {
    let f = Fixture::sample();
    let msgs = [
        HELLO.to_string(),
        statistics(&[package(
            "linux-kbuild-6.1",
            "upgrade",
            Some("6.1.192-2"),
            Some("6.1.200-1"),
        )]),
        BYE.to_string(),
    ];
    let (answer, out, code) = json_session(&f, &msgs);
    assert_eq!(code, Some(0));
    assert!(
        answer.starts_with("{\"jsonrpc\":\"2.0\",\"id\":0,\"result\":{\"version\":\"0.2\"}}\n\n"),
        "{answer}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "dkms-hook: this upgrade changes the build tree of 6.1.0-50-amd64 in place (linux-kbuild-6.1 6.1.192-2 → 6.1.200-1); dkms-hook will rebuild acpi-call/1.2.2 for it after dpkg finishes; first, after the download, it test-builds them against the new packages"
    );
    assert!(lines[1].contains("build tree of 6.1.0-56-amd64"), "{out}");
    assert!(out.contains("warning: 6.1.0-50-amd64: linux-kbuild-6.1 6.1.200-1 is newer than linux-headers-6.1.0-50-amd64 6.1.176-1; a rebuild may fail, and the working module is then kept"), "{out}");
    assert_eq!(lines.len(), 4, "{out}");
}

/// apt's four JSON hook calls of one `apt-get install` (protocol 0.2),
/// each on its own socket, for a package list.
fn install_calls(packages: &[String]) -> Vec<Vec<String>> {
    ["pre-prompt", "package-list", "statistics", "post"]
        .iter()
        .map(|m| {
            let call = statistics(packages).replace("install.statistics", &format!("install.{m}"));
            vec![HELLO.to_string(), call, BYE.to_string()]
        })
        .collect()
}

/// The script of a fake apt that runs `hook` once per call, each with its
/// own socket as fd 3, after `before`; as apt does, it closes its end of
/// the call's socket once the hook has ended (and forks for the last one).
fn calls_script(before: &str, hook: &str, calls: usize) -> String {
    let mut script = before.to_string();
    for i in 3..3 + calls {
        script.push_str(&format!("{hook} 3<&{i}; exec {i}<&-; "));
    }
    script + ":"
}

/// [`calls_script`] running the program itself.
fn json_calls_script(before: &str, calls: usize) -> String {
    calls_script(before, "\"$HOOK\" --root \"$R\" apt-json-hook", calls)
}

/// The JSON hook line of apt.conf.d/80dkms-hook, as apt's `sh -c` runs it,
/// with the program and `/run/dkms-hook/` under the fixture's root; the
/// program through a wrapper that counts its starts in `$R/starts`.
fn json_hook_line(f: &Fixture) -> String {
    let conf = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/apt.conf.d/80dkms-hook"
    ))
    .unwrap();
    let line = conf
        .lines()
        .skip_while(|l| !l.starts_with("AptCli::Hooks::Install"))
        .nth(1)
        .unwrap()
        .trim();
    let line = line.strip_prefix('"').unwrap().strip_suffix("\";").unwrap();
    f.write_executable(
        "count-starts",
        "#!/bin/sh\necho start >> \"$R/starts\"\nexec \"$HOOK\" --root \"$R\" \"$@\"\n",
    );
    let wrapper = f.path("count-starts");
    assert!(line.contains("/usr/sbin/dkms-hook apt-json-hook") && line.contains("/run/dkms-hook/"));
    line.replace("/usr/sbin/dkms-hook", &wrapper.display().to_string())
        .replace(
            "/run/dkms-hook/",
            &format!("{}/", f.path("run/dkms-hook").display()),
        )
}

/// Whether the hook answered apt's hello on this socket.
fn answered(a: &std::io::Result<Vec<u8>>) -> bool {
    a.as_ref()
        .is_ok_and(|b| String::from_utf8_lossy(b).contains(r#""version":"0.2""#))
}

/// Issue 22: a no-op apt run paid for four JSON hook calls (four programs,
/// four messages apt builds from its whole cache). Now the first call
/// decides that this run has nothing for the kernels, and the other three
/// end without reading the socket: apt's hello is left unread (apt reads a
/// reset, which it takes as the hook's end), and apt builds no message.
#[test]
fn json_hook_answers_one_call_of_an_apt_run_that_does_not_concern_the_kernels() {
    let f = Fixture::sample();
    let calls = install_calls(&[package("hello", "upgrade", Some("2.10-2"), Some("2.10-3"))]);
    let calls: Vec<&[String]> = calls.iter().map(Vec::as_slice).collect();
    let (out, answers) = f.under_fake_apt_calls(&json_calls_script("", 4), &calls);
    assert_eq!(out, "");
    assert!(answered(&answers[0]), "{:?}", answers[0]);
    for (i, a) in answers.iter().enumerate().skip(1) {
        match a {
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "call {i}"),
            Ok(b) => assert!(
                b.is_empty(),
                "call {i} was answered: {}",
                String::from_utf8_lossy(b)
            ),
        }
    }
    let records: Vec<String> = std::fs::read_dir(f.path("run/dkms-hook"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("json-quiet-"))
        .collect();
    assert_eq!(records.len(), 1, "{records:?}");
}

/// A run that changes a build tree: the calls up to statistics are answered
/// and statistics warns once; the post call after it is left quiet. A
/// record that is not ours (planted with other content for this very apt
/// process) silences nothing.
#[test]
fn json_hook_stays_for_the_warning_and_believes_only_its_own_quiet_record() {
    let f = Fixture::sample();
    let kbuild = [package(
        "linux-kbuild-6.1",
        "upgrade",
        Some("6.1.192-2"),
        Some("6.1.200-1"),
    )];
    let calls = install_calls(&kbuild);
    let calls: Vec<&[String]> = calls.iter().map(Vec::as_slice).collect();
    let (out, answers) = f.under_fake_apt_calls(&json_calls_script("", 4), &calls);
    assert_eq!(
        out.matches("build tree of 6.1.0-50-amd64").count(),
        1,
        "{out}"
    );
    let got: Vec<bool> = answers.iter().map(answered).collect();
    assert_eq!(got, [true, true, true, false]);

    let f = Fixture::sample();
    let planted = "mkdir -p \"$R/run/dkms-hook\"; read -r s < /proc/$$/stat; set -- ${s##*) }; \
                   echo yes > \"$R/run/dkms-hook/json-quiet-$$-${20}\"; ";
    let calls = install_calls(&[package("hello", "upgrade", Some("2.10-2"), Some("2.10-3"))]);
    let calls: Vec<&[String]> = calls.iter().map(Vec::as_slice).collect();
    let (_, answers) = f.under_fake_apt_calls(&json_calls_script(planted, 4), &calls);
    let got: Vec<bool> = answers.iter().map(answered).collect();
    assert_eq!(
        got,
        [true, false, false, false],
        "the planted record is replaced, not believed"
    );
    // The control: the same record with our content is believed.
    let f = Fixture::sample();
    let ours = planted.replace(
        "echo yes",
        "echo 'the JSON hook has nothing more to say in this apt run'",
    );
    let (_, answers) = f.under_fake_apt_calls(&json_calls_script(&ours, 4), &calls);
    let got: Vec<bool> = answers.iter().map(answered).collect();
    assert_eq!(got, [false; 4]);
}

/// The hook line itself, as apt runs it: the shell finds the record the
/// program wrote (the same apt process, the same start time) and does not
/// start the program again; a run that concerns the kernels starts it up
/// to the warning.
#[test]
fn the_json_hook_line_starts_the_program_once_for_an_apt_run_that_does_not_concern_the_kernels() {
    for (packages, starts, want) in [
        (
            vec![package("hello", "upgrade", Some("2.10-2"), Some("2.10-3"))],
            1,
            [true, false, false, false],
        ),
        (
            vec![package(
                "linux-kbuild-6.1",
                "upgrade",
                Some("6.1.192-2"),
                Some("6.1.200-1"),
            )],
            3,
            [true, true, true, false],
        ),
    ] {
        let f = Fixture::sample();
        f.write("line", json_hook_line(&f));
        let calls = install_calls(&packages);
        let calls: Vec<&[String]> = calls.iter().map(Vec::as_slice).collect();
        let script = calls_script("", "sh -c \"$(cat \"$R/line\")\"", 4);
        let (out, answers) = f.under_fake_apt_calls(&script, &calls);
        let got: Vec<bool> = answers.iter().map(answered).collect();
        assert_eq!(got, want, "{out}");
        let n = std::fs::read_to_string(f.path("starts"))
            .unwrap()
            .lines()
            .count();
        assert_eq!(n, starts, "{out}");
    }
}

#[test]
fn json_hook_is_silent_on_pre_prompt_with_0_2_and_speaks_with_0_1() {
    let f = Fixture::sample();
    let pre = statistics(&[package(
        "linux-kbuild-6.1",
        "upgrade",
        Some("6.1.192-2"),
        Some("6.1.200-1"),
    )])
    .replace("install.statistics", "install.pre-prompt");
    let (_, out, code) = json_session(&f, &[HELLO.to_string(), pre.clone(), BYE.to_string()]);
    assert_eq!((out.as_str(), code), ("", Some(0)));
    let hello01 = HELLO.replace(r#"["0.1","0.2"]"#, r#"["0.1"]"#);
    let (answer, out, code) = json_session(&f, &[hello01, pre, BYE.to_string()]);
    assert!(answer.contains(r#""version":"0.1""#), "{answer}");
    assert!(out.contains("build tree of 6.1.0-50-amd64"), "{out}");
    assert_eq!(code, Some(0));
}

#[test]
fn json_hook_survives_garbage_unknown_methods_and_early_close() {
    let f = Fixture::sample();
    for msgs in [
        vec![HELLO.to_string(), "}}garbage{{".into(), BYE.to_string()],
        vec![
            HELLO.to_string(),
            r#"{"jsonrpc":"2.0","method":"org.debian.apt.hooks.frobnicate","params":{}}"#.into(),
            BYE.to_string(),
        ],
        vec![HELLO.to_string()],
        vec![
            HELLO.to_string(),
            statistics(&[]).split_at(40).0.to_string(),
        ],
        vec![],
    ] {
        let (_, out, code) = json_session(&f, &msgs);
        assert_eq!(code, Some(0), "{msgs:?}");
        assert_eq!(out, "", "{msgs:?}");
    }
    // No socket at all (run by hand).
    let out = f
        .cmd(&["apt-json-hook"])
        .env_remove("APT_HOOK_SOCKET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

fn pre_install(f: &Fixture, lines: &[&str], extra: &[&str]) -> (String, Option<i32>) {
    let text = format!(
        "VERSION 3\nAPT::Architecture=amd64\nCommandLine::AsString=apt-get%20upgrade\n\n{}\n",
        lines.join("\n")
    );
    let out = feed(f.cmd(&[&["pre-install-pkgs"], extra].concat()), text);
    (String::from_utf8(out.stdout).unwrap(), out.status.code())
}

#[test]
fn pre_install_pkgs_warns_when_headers_go_but_the_kernel_stays() {
    let f = Fixture::sample();
    f.write("boot/vmlinuz-6.1.0-50-amd64", "image");
    let (out, code) = pre_install(
        &f,
        &["linux-headers-6.1.0-50-amd64 6.1.176-1 amd64 none > - - none **REMOVE**"],
        &[],
    );
    assert_eq!(code, Some(0));
    assert_eq!(
        out.trim(),
        "dkms-hook: warning: 6.1.0-50-amd64: removing linux-headers-6.1.0-50-amd64 leaves this kernel without headers: its dkms modules (acpi-call/1.2.2) stay installed but can no longer be rebuilt for 6.1.0-50-amd64"
    );
    // The whole kernel going away is no risk.
    let (out, _) = pre_install(
        &f,
        &[
            "linux-headers-6.1.0-50-amd64 6.1.176-1 amd64 none > - - none **REMOVE**",
            "linux-image-6.1.0-50-amd64 6.1.176-1 amd64 none > - - none **REMOVE**",
        ],
        &[],
    );
    assert_eq!(out, "");
}

#[test]
fn pre_install_pkgs_warns_about_a_new_kernel_without_headers() {
    let f = Fixture::sample();
    let line = "linux-image-6.1.0-60-amd64 - - none < 6.1.200-1 amd64 none /var/cache/apt/archives/linux-image-6.1.0-60-amd64_6.1.200-1_amd64.deb";
    let (out, code) = pre_install(&f, &[line], &[]);
    assert_eq!(code, Some(0));
    assert_eq!(
        out.trim(),
        "dkms-hook: warning: 6.1.0-60-amd64: the new kernel comes without headers: dkms modules (acpi-call/1.2.2) will be missing for it; install linux-headers-6.1.0-60-amd64"
    );
    let with_headers = "linux-headers-6.1.0-60-amd64 - - none < 6.1.200-1 amd64 none /var/cache/apt/archives/h.deb";
    assert_eq!(pre_install(&f, &[line, with_headers], &[]).0, "");
    let (json, _) = pre_install(&f, &[line], &["--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["warnings"][0]
        .as_str()
        .unwrap()
        .contains("install linux-headers-6.1.0-60-amd64"));
}

#[test]
fn pre_install_pkgs_is_silent_for_unrelated_upgrades_and_bad_streams() {
    let f = Fixture::sample();
    let recorded = include_str!("../data/pre-install-pkgs-v3.txt");
    let out = f.run_with_stdin(&["pre-install-pkgs"], recorded.as_bytes());
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(0), &b""[..])
    );
    let out = f.run_with_stdin(&["pre-install-pkgs"], b"\x00\x01garbage");
    assert_eq!(
        (out.status.code(), out.stdout.as_slice()),
        (Some(0), &b""[..])
    );
}

/// Within one apt run, Pre-Install-Pkgs stays quiet when the JSON hook
/// already printed; another apt run gets its warnings again.
#[test]
fn pre_install_pkgs_is_quiet_after_the_json_hook_of_the_same_apt_run() {
    let f = Fixture::sample();
    let v3 = f.path("v3.txt");
    std::fs::write(
        &v3,
        "VERSION 3\nAPT::Architecture=amd64\n\nlinux-kbuild-6.1 6.1.192-2 amd64 same < 6.1.200-1 amd64 same /var/cache/apt/archives/k.deb\n",
    )
    .unwrap();
    let script = format!(
        "\"$HOOK\" --root \"$R\" apt-json-hook; \"$HOOK\" --root \"$R\" pre-install-pkgs < {}",
        v3.display()
    );
    let run = |json_messages: &[String]| f.under_fake_apt(&script, json_messages);
    let stats = statistics(&[package(
        "linux-kbuild-6.1",
        "upgrade",
        Some("6.1.192-2"),
        Some("6.1.200-1"),
    )]);
    let out = run(&[HELLO.to_string(), stats, BYE.to_string()]);
    let n = out.matches("build tree of 6.1.0-50-amd64").count();
    assert_eq!(
        n, 1,
        "the JSON hook spoke once, Pre-Install-Pkgs kept quiet:\n{out}"
    );
    // No JSON hook in this run (apt-get): Pre-Install-Pkgs speaks.
    let out = run(&[]);
    assert_eq!(
        out.matches("build tree of 6.1.0-50-amd64").count(),
        1,
        "{out}"
    );
}

/// A statistics message (protocol 0.2) for `apt COMMAND TERMS…` whose
/// package list is `packages`.
fn statistics_for(command: &str, terms: &[&str], packages: &[String]) -> String {
    let terms: Vec<String> = terms.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        r#"{{"jsonrpc":"2.0","method":"org.debian.apt.hooks.install.statistics","params":{{"command":"{command}","search-terms":[{}],"unknown-packages":[],"packages":[{}]}}}}"#,
        terms.join(","),
        packages.join(",")
    )
}

const KBUILD_REINSTALL_V3: &str = "VERSION 3\nAPT::Architecture=amd64\n\nlinux-kbuild-6.1 6.1.192-2 amd64 same = 6.1.192-2 amd64 same /var/cache/apt/archives/linux-kbuild-6.1_6.1.192-2_amd64.deb\n";

/// Regression (issue 20.3): apt's JSON hook does not list a reinstall (it
/// keeps apt's "keep" mode), so `apt install --reinstall linux-kbuild-6.1`
/// got no notice before the prompt, then a preflight and a full rebuild.
/// The hook reads `--reinstall` from apt's command line; Pre-Install-Pkgs,
/// which is told of the reinstall, does not say it again.
#[test]
fn a_reinstall_is_forecast_before_the_prompt() {
    let f = Fixture::sample();
    f.write("etc/dkms/dkms-hook.conf", "preflight = off\n");
    f.write("v3.txt", KBUILD_REINSTALL_V3);
    let stats = statistics_for("install", &["linux-kbuild-6.1"], &[]);
    let notice = "build tree of 6.1.0-50-amd64 in place (linux-kbuild-6.1 6.1.192-2 reinstalled)";
    let json_only = f.under_fake_apt_with_args(
        r#""$HOOK" --root "$R" apt-json-hook"#,
        &[HELLO.to_string(), stats.clone(), BYE.to_string()],
        &["install", "--reinstall", "linux-kbuild-6.1"],
    );
    assert!(
        json_only.contains(notice),
        "the JSON hook says it:\n{json_only}"
    );
    let both = f.under_fake_apt_with_args(
        r#""$HOOK" --root "$R" apt-json-hook; "$HOOK" --root "$R" pre-install-pkgs < "$R/v3.txt""#,
        &[HELLO.to_string(), stats.clone(), BYE.to_string()],
        &["install", "--reinstall", "linux-kbuild-6.1"],
    );
    assert_eq!(both.matches(notice).count(), 1, "said once:\n{both}");
    assert_eq!(both.matches("is newer than").count(), 1, "{both}");
    // With a newer candidate, `--reinstall P` would upgrade: a reinstall of
    // the installed version names it (`P=VERSION`).
    let pinned = f.under_fake_apt_with_args(
        r#""$HOOK" --root "$R" apt-json-hook"#,
        &[
            HELLO.to_string(),
            statistics_for("install", &["linux-kbuild-6.1=6.1.192-2"], &[]),
            BYE.to_string(),
        ],
        &["install", "--reinstall", "linux-kbuild-6.1=6.1.192-2"],
    );
    assert!(pinned.contains(notice), "{pinned}");
    // Without --reinstall apt reinstalls nothing: nothing to say.
    let plain = f.under_fake_apt_with_args(
        r#""$HOOK" --root "$R" apt-json-hook"#,
        &[HELLO.to_string(), stats, BYE.to_string()],
        &["install", "linux-kbuild-6.1"],
    );
    assert_eq!(plain, "");
    // apt's own reinstall command names itself in the message.
    let msgs = [
        HELLO.to_string(),
        statistics_for("reinstall", &["linux-kbuild-6.1:amd64"], &[]),
        BYE.to_string(),
    ];
    let (_, out, code) = json_session(&f, &msgs);
    assert_eq!(code, Some(0));
    assert!(out.contains(notice), "{out}");
}

/// Regression (issue 20.3): when the JSON hook could not tell (a reinstall
/// asked for in apt's configuration), Pre-Install-Pkgs of the same apt run
/// says it before dpkg, where it used to keep quiet because the JSON hook
/// had run.
#[test]
fn pre_install_pkgs_says_what_the_json_hook_could_not() {
    let f = Fixture::sample();
    f.write("etc/dkms/dkms-hook.conf", "preflight = off\n");
    f.write("v3.txt", KBUILD_REINSTALL_V3);
    let out = f.under_fake_apt_with_args(
        r#""$HOOK" --root "$R" apt-json-hook; "$HOOK" --root "$R" pre-install-pkgs < "$R/v3.txt""#,
        &[
            HELLO.to_string(),
            statistics_for("install", &["linux-kbuild-6.1"], &[]),
            BYE.to_string(),
        ],
        &[
            "-o",
            "APT::Get::ReInstall=true",
            "install",
            "linux-kbuild-6.1",
        ],
    );
    assert_eq!(
        out.matches(
            "build tree of 6.1.0-50-amd64 in place (linux-kbuild-6.1 6.1.192-2 reinstalled)"
        )
        .count(),
        1,
        "{out}"
    );
}

/// Regression (issue 20.4): a downgrade was announced as "this upgrade
/// changes the build tree"; each kind of change is called what it is.
#[test]
fn a_downgrade_is_announced_as_a_downgrade() {
    let f = Fixture::sample();
    let msgs = [
        HELLO.to_string(),
        statistics(&[package(
            "linux-kbuild-6.1",
            "downgrade",
            Some("6.1.192-2"),
            Some("6.1.176-1"),
        )]),
        BYE.to_string(),
    ];
    let (_, out, _) = json_session(&f, &msgs);
    assert!(
        out.starts_with("dkms-hook: this downgrade changes the build tree of 6.1.0-50-amd64 in place (linux-kbuild-6.1 6.1.192-2 → 6.1.176-1, downgraded); dkms-hook will rebuild acpi-call/1.2.2"),
        "{out}"
    );
    assert!(!out.contains("upgrade changes"), "{out}");
    let msgs = [
        HELLO.to_string(),
        statistics_for("reinstall", &["linux-kbuild-6.1"], &[]),
        BYE.to_string(),
    ];
    let (_, out, _) = json_session(&f, &msgs);
    assert!(
        out.starts_with("dkms-hook: this reinstall rewrites the build tree of 6.1.0-50-amd64 in place (linux-kbuild-6.1 6.1.192-2 reinstalled)"),
        "{out}"
    );
}

/// Regression (issue 20.7): on a system with headers and modules but no
/// kernel image (a build host, a container, a debootstrap root), removing
/// the headers was warned about only after the removal.
#[test]
fn pre_install_pkgs_warns_when_headers_go_on_a_system_without_an_image() {
    let f = Fixture::sample();
    assert!(!f.path("boot/vmlinuz-6.1.0-50-amd64").exists());
    let (out, code) = pre_install(
        &f,
        &["linux-headers-6.1.0-50-amd64 6.1.176-1 amd64 none > - - none **REMOVE**"],
        &[],
    );
    assert_eq!(code, Some(0));
    assert_eq!(
        out.trim(),
        "dkms-hook: warning: 6.1.0-50-amd64: removing linux-headers-6.1.0-50-amd64 leaves this kernel without headers: its dkms modules (acpi-call/1.2.2) stay installed but can no longer be rebuilt for 6.1.0-50-amd64"
    );
}
