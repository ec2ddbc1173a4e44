//! What the administrator sees (issue 12): progress lines, wording that
//! says what really happened, one voice, warnings once per apt run and
//! where they are due, status exit codes for monitoring.

use crate::fixture::{rebuilds, stderr, Fixture, APT_POST_INVOKE};

const K: &str = "6.1.0-50-amd64";

/// The dpkg.log lines of one unpack of `linux-kbuild-6.1` OLD → NEW.
fn kbuild_unpack(at: &str, action: &str, old: &str, new: &str) -> String {
    format!(
        "{at} startup archives unpack\n\
         {at} {action} linux-kbuild-6.1:amd64 {old} {new}\n\
         {at} status half-configured linux-kbuild-6.1:amd64 {old}\n\
         {at} status unpacked linux-kbuild-6.1:amd64 {new}\n"
    )
}

/// Regression (issue 12.1): a line when each rebuild starts.
#[test]
fn each_rebuild_is_announced_when_it_starts() {
    let f = Fixture::pending();
    let out = f.run(&["post-invoke"]);
    let e = stderr(&out);
    let start = e
        .find("dkms-hook: rebuilding acpi-call/1.2.2 for 6.1.0-50-amd64 (1 of 1)…")
        .expect(&e);
    let end = e.find("dkms-hook: rebuilt acpi-call/1.2.2").expect(&e);
    assert!(start < end, "{e}");
}

/// Regression (issue 12.3): reinstalls, downgrades and unknown old versions
/// are called what they are.
#[test]
fn reinstall_downgrade_and_unknown_old_version_are_worded_as_such() {
    let f = Fixture::sample();
    let cases = [
        (
            kbuild_unpack("2026-11-24 10:00:00", "upgrade", "6.1.192-2", "6.1.192-2"),
            "linux-kbuild-6.1 6.1.192-2 reinstalled",
        ),
        (
            kbuild_unpack("2026-11-24 10:00:00", "upgrade", "6.1.192-2", "6.1.176-1"),
            "linux-kbuild-6.1 6.1.192-2 → 6.1.176-1, downgraded",
        ),
        (
            kbuild_unpack("2026-11-24 10:00:00", "install", "<none>", "6.1.192-2"),
            "linux-kbuild-6.1 6.1.192-2 unpacked at 2026-11-24 10:00:00",
        ),
    ];
    for (log, want) in cases {
        f.write("case.log", &log);
        f.mtime(
            "var/lib/dpkg/info/linux-kbuild-6.1.list",
            "2026-11-24T10:00:00Z",
        );
        let out = f.run(&["replay", "--dry-run", f.path("case.log").to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("would rebuild acpi-call/1.2.2 for {K} ({want}")),
            "{want}: {text}"
        );
    }
}

/// Regression (issue 12.4): one prefix for every warning.
#[test]
fn every_warning_has_one_prefix() {
    let f = Fixture::pending();
    f.write("var/lib/dkms-hook/queue.json", "{corrupt");
    std::fs::create_dir_all(f.path("usr/lib/modules/bad name")).unwrap();
    let out = f.run(&["post-invoke"]);
    let e = stderr(&out);
    assert!(e.contains("dkms-hook: warning: "), "{e}");
    assert!(!e.contains("warn:") && !e.contains("WARNING"), "{e}");
}

const HELLO: &str = r#"{"jsonrpc":"2.0","method":"org.debian.apt.hooks.hello","id":0,"params":{"versions":["0.1","0.2"]}}"#;
const BYE: &str = r#"{"jsonrpc":"2.0","method":"org.debian.apt.hooks.bye","params":{}}"#;

/// Regression (issues 12.4 and 20.1): the warning apt showed before its
/// prompt is not shown again by the post-invoke of the same apt run, which
/// apt runs from a forked child of itself.
#[test]
fn a_warning_is_printed_once_per_apt_run() {
    let f = Fixture::pending();
    let stats =         r#"{"jsonrpc":"2.0","method":"org.debian.apt.hooks.install.statistics","params":{"command":"install","packages":[{"id":1,"name":"linux-kbuild-6.1","architecture":"amd64","mode":"upgrade","versions":{"current":{"id":2,"version":"6.1.176-1","architecture":"amd64"},"install":{"id":3,"version":"6.1.192-2","architecture":"amd64"}}}]}}"#
    .to_string();
    let out = f.under_fake_apt(
        &format!(r#""$HOOK" --root "$R" apt-json-hook; {APT_POST_INVOKE}"#),
        &[HELLO.into(), stats, BYE.into()],
    );
    // The JSON hook spoke before the prompt, post-invoke did not repeat it.
    assert!(
        out.contains("this upgrade changes the build tree of 6.1.0-50-amd64"),
        "{out}"
    );
    assert_eq!(
        out.matches("is newer than linux-headers-6.1.0-50-amd64")
            .count(),
        1,
        "{out}"
    );
    assert!(out.contains("rebuilt acpi-call/1.2.2"), "{out}");
}

/// Regression (issue 20.1): under apt-get (no JSON hook) the warning
/// Pre-Install-Pkgs printed before dpkg is not printed again by the
/// post-invoke that apt-get runs from a forked child of itself.
#[test]
fn a_warning_before_dpkg_is_not_repeated_after_it_under_apt_get() {
    let f = Fixture::pending();
    f.write("etc/dkms/dkms-hook.conf", "preflight = off\n");
    f.write(
        "v3.txt",
        "VERSION 3\nAPT::Architecture=amd64\n\nlinux-kbuild-6.1 6.1.176-1 amd64 same < 6.1.192-2 amd64 same /var/cache/apt/archives/k.deb\n",
    );
    let out = f.under_fake_apt(
        &format!(r#""$HOOK" --root "$R" pre-install-pkgs < "$R/v3.txt"; {APT_POST_INVOKE}"#),
        &[],
    );
    let warning = "warning: 6.1.0-50-amd64: linux-kbuild-6.1 6.1.192-2 is newer than linux-headers-6.1.0-50-amd64 6.1.176-1";
    assert_eq!(out.matches(warning).count(), 1, "{out}");
    let (before, after) = out.split_at(out.find("rebuilding acpi-call/1.2.2").expect(&out));
    assert!(before.contains(warning), "said before dpkg:\n{out}");
    assert!(after.contains("rebuilt acpi-call/1.2.2"), "{out}");
}

/// Regression (issue 20.2): after `DKMS_HOOK_SUSPEND=1 dpkg -i` of a new
/// kbuild and `dkms-hook sync`, the next unrelated apt run reads that
/// change from dpkg.log but rebuilds nothing, and so warns of nothing.
#[test]
fn a_run_that_rebuilds_nothing_repeats_no_kbuild_warning() {
    let f = Fixture::pending();
    let suspended = f
        .cmd(&["post-invoke"])
        .env("DKMS_HOOK_SUSPEND", "1")
        .output()
        .unwrap();
    assert_eq!(stderr(&suspended), "");
    let sync = f.run(&["sync"]);
    assert!(
        stderr(&sync).contains("rebuilt acpi-call/1.2.2 for 6.1.0-50-amd64"),
        "{}",
        stderr(&sync)
    );
    let mut log = f.read("var/log/dpkg.log");
    log.extend_from_slice(
        b"2026-12-01 09:00:00 startup archives unpack\n\
          2026-12-01 09:00:00 upgrade hello:amd64 2.10-3 2.10-3\n\
          2026-12-01 09:00:00 status unpacked hello:amd64 2.10-3\n\
          2026-12-01 09:00:01 configure hello:amd64 2.10-3 2.10-3\n\
          2026-12-01 09:00:01 status installed hello:amd64 2.10-3\n",
    );
    f.write("var/log/dpkg.log", log);
    let out = f.run(&["post-invoke"]);
    assert_eq!(stderr(&out), "", "nothing to rebuild, nothing to say");
    assert_eq!(out.status.code(), Some(0));
}

/// Regression (issue 12.5): after the headers package is gone (and with it
/// the `build` link it owned), post-invoke and replay warn.
#[test]
fn removed_headers_are_warned_about_after_the_removal() {
    let f = Fixture::pending();
    std::fs::remove_file(f.path("usr/lib/modules/6.1.0-50-amd64/build")).unwrap();
    std::fs::remove_file(f.path("usr/lib/modules/6.1.0-50-amd64/source")).unwrap();
    let removal = "2026-11-24 10:00:00 startup packages remove\n\
                   2026-11-24 10:00:00 status installed linux-headers-6.1.0-50-amd64:amd64 6.1.176-1\n\
                   2026-11-24 10:00:00 remove linux-headers-6.1.0-50-amd64:amd64 6.1.176-1 <none>\n\
                   2026-11-24 10:00:00 status not-installed linux-headers-6.1.0-50-amd64:amd64 <none>\n";
    f.write("removal.log", removal);
    let plan = f.plan(&["removal.log"]);
    let want = "6.1.0-50-amd64: headers are gone (linux-headers-6.1.0-50-amd64): its dkms modules (acpi-call) stay installed but can no longer be rebuilt for 6.1.0-50-amd64";
    assert!(plan["warnings"].to_string().contains(want), "{plan}");
    let mut log = String::from_utf8(f.read("var/log/dpkg.log")).unwrap();
    log.push_str(removal);
    f.write("var/log/dpkg.log", log);
    let out = f.run(&["post-invoke"]);
    assert!(stderr(&out).contains(want), "{}", stderr(&out));
}

/// Regression (issue 12.7): a configure-only step (after `dpkg --unpack`)
/// changes no build tree and is not forecast as one.
#[test]
fn a_configure_only_step_is_no_forecast() {
    let f = Fixture::sample();
    let out = f.run_with_stdin(&["pre-install-pkgs"], b"VERSION 3\n\nlinux-kbuild-6.1 6.1.192-2 amd64 same = 6.1.192-2 amd64 same **CONFIGURE**\n");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
}

/// Regression (issue 12.8): the kernel-hook names each module, its
/// make.log and the command, once per apt run.
#[test]
fn kernel_hook_names_the_module_and_its_make_log() {
    let f = Fixture::sample();
    // Headers for a new kernel, but dkms built nothing for it.
    f.debian_kernel(
        "6.1.0-60-amd64",
        "6.1.200-1",
        "linux-kbuild-6.1",
        "2026-11-24T10:00:00Z",
    );
    let script = r#""$HOOK" --root "$R" kernel-hook postinst 6.1.0-60-amd64; "$HOOK" --root "$R" kernel-hook header_postinst 6.1.0-60-amd64"#;
    let out = f.under_fake_apt(script, &[]);
    let want = "warning: dkms did not build acpi-call/1.2.2 for 6.1.0-60-amd64; see /var/lib/dkms/acpi-call/1.2.2/build/make.log, then run: dkms install -m acpi-call -v 1.2.2 -k 6.1.0-60-amd64";
    assert_eq!(out.matches(want).count(), 1, "{out}");
    assert!(!out.contains("<module>"), "{out}");
}

/// Regression (issue 12.9): BUILD_EXCLUSIVE pairs are `excluded`, not stale
/// forever, and no rebuild is promised for them.
#[test]
fn build_exclusive_pairs_are_excluded() {
    let f = Fixture::sample();
    let conf = String::from_utf8(f.read("usr/src/acpi-call-1.2.2/dkms.conf")).unwrap();
    f.write(
        "usr/src/acpi-call-1.2.2/dkms.conf",
        conf + "BUILD_EXCLUSIVE_KERNEL=\"^6\\.1\\.0-56-\"\n",
    );
    let row = f.status_row(K);
    assert_eq!(row["state"], "excluded", "{row}");
    let plan = f.plan(&["var/log/dpkg.log"]);
    assert!(rebuilds(&plan).is_empty(), "{plan}");
}

/// Regression (issue 12.10): a kbuild older than a kernel's headers warns.
#[test]
fn a_kbuild_older_than_the_headers_warns() {
    let f = Fixture::sample();
    f.write(
        "down.log",
        kbuild_unpack("2026-11-24 10:00:00", "upgrade", "6.1.192-2", "6.1.100-1"),
    );
    f.mtime(
        "var/lib/dpkg/info/linux-kbuild-6.1.list",
        "2026-11-24T10:00:00Z",
    );
    let plan = f.plan(&["down.log"]);
    let w = plan["warnings"].to_string();
    assert!(
        w.contains("6.1.0-56-amd64: linux-kbuild-6.1 6.1.100-1 is older than linux-headers-6.1.0-56-amd64 6.1.192-2"),
        "{w}"
    );
}

/// Regression (issue 12.11): status exit codes for monitoring, and --quiet.
#[test]
fn status_exit_codes_tell_monitoring() {
    let f = Fixture::sample();
    let stale = f.run(&["status", "--quiet"]);
    assert_eq!(stale.status.code(), Some(1));
    assert!(stale.stdout.is_empty() && stale.stderr.is_empty());
    f.run(&["sync"]);
    let fresh = f.run(&["status"]);
    assert_eq!(
        fresh.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&fresh.stdout)
    );
    std::fs::remove_dir_all(f.path("var/lib/dpkg/info")).unwrap();
    assert_eq!(f.run(&["status", "-q"]).status.code(), Some(2));
}

/// Regression (issue 12.15): an error's cause is printed once.
#[test]
fn an_error_cause_is_printed_once() {
    let f = Fixture::sample();
    let out = f.run(&["replay", "--dry-run", "/nonexistent/dpkg.log"]);
    let e = stderr(&out);
    assert_eq!(e.matches("No such file or directory").count(), 1, "{e}");
}

/// Regression (issue 20.5): `status`'s failed row sent the reader to
/// `status --json`, the command being read. It names the kept make.log and
/// the command to run.
#[test]
fn a_failed_row_names_its_make_log_and_the_command() {
    let f = Fixture::pending();
    f.fake_dkms("fail-acpi-call", "");
    let out = f.run(&["post-invoke"]);
    assert!(
        stderr(&out).contains("FAILED to rebuild acpi-call/1.2.2"),
        "{}",
        stderr(&out)
    );
    let status = String::from_utf8(f.run(&["status"]).stdout).unwrap();
    let row = status
        .lines()
        .find(|l| l.contains(K))
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>().join(" "),
        "acpi-call/1.2.2 6.1.0-50-amd64 failed the last rebuild failed; see /var/lib/dkms-hook/logs/acpi-call-1.2.2-6.1.0-50-amd64.make.log; when the cause is fixed, run: dkms-hook retry",
        "{status}"
    );
    assert!(f
        .path("var/lib/dkms-hook/logs/acpi-call-1.2.2-6.1.0-50-amd64.make.log")
        .is_file());
}

/// Regression (issue 20.8): `dkms-hook --help` listed each command with
/// its whole paragraph (status's ran to nine lines). The list has one short
/// line per command; the paragraph is in `help CMD`, `CMD --help` and the
/// man page.
#[test]
fn help_lists_each_command_in_one_short_line() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_dkms-hook"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let help = run(&["--help"]);
    let list: Vec<&str> = help
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    let names: Vec<&str> = list
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .collect();
    assert_eq!(
        names,
        [
            "replay",
            "post-invoke",
            "status",
            "sync",
            "retry",
            "rollback",
            "unhold",
            "preflight",
            "apt-json-hook",
            "pre-install-pkgs",
            "kernel-hook",
            "kernel-guard",
            "boot",
            "motd"
        ],
        "{help}"
    );
    let man = run(&["man"]);
    for (line, name) in list.iter().zip(&names) {
        assert!(line.chars().count() <= 80, "longer than 80 columns: {line}");
        let about = line.trim_start().trim_start_matches(name).trim();
        assert!(!about.contains(". "), "one sentence: {line}");
        // The paragraph: after the about line in `help CMD` and `CMD --help`.
        let long = run(&["help", name]);
        assert_eq!(long, run(&[name, "--help"]), "{name}");
        let mut paragraphs = long.split("\n\n");
        assert_eq!(
            paragraphs.next(),
            Some(format!("{about}.").as_str()),
            "{long}"
        );
        let paragraph = paragraphs.next().unwrap_or_default();
        assert!(
            paragraph.len() > about.len() && !paragraph.starts_with("Usage:"),
            "{name} has no paragraph:\n{long}"
        );
        // The man page keeps it (roff escapes each '-').
        let first_words: String = paragraph.split(' ').take(4).collect::<Vec<_>>().join(" ");
        assert!(
            man.contains(&first_words.replace('-', "\\-")),
            "{name}: {first_words:?} not in the man page"
        );
    }
    assert!(run(&["help", "status"])
        .contains("Exits 0 when all is well, 1 when something needs attention"));
}

/// Regression (issue 20.9): `bash examples/demo.sh` showed only a dry-run
/// plan. It shows the whole job on the sample system (status stale, the
/// hook rebuilding, status fresh) in a throwaway copy, without root, and
/// prints what the README says it prints.
#[test]
fn the_demo_shows_the_whole_job_as_the_readme_says() {
    use std::os::unix::fs::PermissionsExt;
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    // What the demo uses, copied where any user can read it: as root (make
    // check) the demo runs as nobody, since it must need no root.
    let copy = tmp.path().join("repo");
    for dir in ["examples", "tests/integration"] {
        std::fs::create_dir_all(copy.join(dir)).unwrap();
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(repo.join(dir).join("."))
            .arg(copy.join(dir))
            .status()
            .unwrap();
        assert!(ok.success());
    }
    let bin = copy.join("dkms-hook");
    std::fs::copy(env!("CARGO_BIN_EXE_dkms-hook"), &bin).unwrap();
    let scratch = tmp.path().join("tmp");
    std::fs::create_dir(&scratch).unwrap();
    for p in [tmp.path(), &scratch] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o1777)).unwrap();
    }
    let mut cmd = if rustix::process::geteuid().is_root() {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "bash"]);
        c
    } else {
        std::process::Command::new("bash")
    };
    let out = cmd
        .arg(copy.join("examples/demo.sh"))
        .env("DKMS_HOOK_BIN", &bin)
        .env("TMPDIR", &scratch)
        .env("HOME", "/nonexistent")
        .current_dir(&scratch)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}{}", stderr(&out));
    // Seconds vary from run to run.
    let seconds = |t: &str| {
        t.lines()
            .map(|l| match l.rsplit_once(") in ") {
                Some((head, tail)) if tail.ends_with(" s") => format!("{head}) in N s"),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let shown = readme
        .split("```\n$ bash examples/demo.sh\n")
        .nth(1)
        .and_then(|r| r.split("\n```").next())
        .expect("README shows the demo's output");
    assert_eq!(
        seconds(text.trim()),
        seconds(shown.trim()),
        "README and demo differ"
    );
    for want in [
        "acpi-call/1.2.2  6.1.0-50-amd64  stale",
        "dkms-hook: rebuilt acpi-call/1.2.2 for 6.1.0-50-amd64 (linux-kbuild-6.1 6.1.176-1 → 6.1.192-2)",
        "acpi-call/1.2.2  6.1.0-50-amd64  fresh",
    ] {
        assert!(text.contains(want), "{want}:\n{text}");
    }
    // The throwaway copy is gone.
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
}
