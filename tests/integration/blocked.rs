//! Blocks: a test build that fails under `preflight = block` stops apt and
//! is a recorded state (`blocked.json`): `status` (lines, `--json`'s
//! `blocked`, exit 1), the login notice, the textfile and the log say it;
//! the same packages with the same inputs are not test-built again; the
//! block ends when its version (or a newer one) is installed, its kernel or
//! module goes, or a preflight builds it; the record is read back as
//! hostile input. The tests that run the sandbox need root and are
//! `#[ignore]`d otherwise (`make check` runs them as root).

use std::fs;

use crate::fixture::{stderr, Fixture};
use crate::preflight::{kbuild_deb, synced};

const LOG: &str = "/var/lib/dkms-hook/preflight/acpi-call-1.2.2-6.1.0-50-amd64.make.log";

/// Pre-Install-Pkgs' stream for linux-kbuild-6.1 6.1.192-2 → `deb`'s version.
fn stream(deb: &str, version: &str) -> String {
    format!("VERSION 3\n\nlinux-kbuild-6.1 6.1.192-2 amd64 same < {version} amd64 same {deb}\n")
}

/// The synced sample with `preflight = block`, a textfile directory, a
/// kbuild 6.1.201-1 that no module builds against, and that upgrade
/// stopped once: (fixture, the `.deb`).
fn blocked_once() -> (Fixture, String) {
    let f = synced();
    f.fake_dkms("poison", "");
    f.write(
        "etc/dkms/dkms-hook.conf",
        "preflight=block\nprometheus_textfile=/var/lib/prom\n",
    );
    fs::create_dir_all(f.path("var/lib/prom")).unwrap();
    let bad = kbuild_deb(&f, "6.1.201-1", "preflight-poison");
    let out = f.run_with_stdin(&["pre-install-pkgs"], stream(&bad, "6.1.201-1"));
    assert_eq!(out.status.code(), Some(100), "{}", stderr(&out));
    (f, bad)
}

/// The kept run logs of test builds (one per pair built), removed.
fn take_build_logs(f: &Fixture) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(f.path("var/lib/dkms-hook/preflight"))
        .unwrap()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".dkms.log") {
            fs::remove_file(e.path()).unwrap();
            out.push(name);
        }
    }
    out.sort();
    out
}

fn status_json(f: &Fixture) -> serde_json::Value {
    serde_json::from_slice(&f.run(&["status", "--json"]).stdout).unwrap()
}

fn log(f: &Fixture) -> String {
    fs::read_to_string(f.path("var/log/dkms-hook.log")).unwrap_or_default()
}

/// Set the installed version of linux-kbuild-6.1 in dpkg's status.
fn install_kbuild(f: &Fixture, version: &str) {
    let status = String::from_utf8(f.read("var/lib/dpkg/status")).unwrap();
    let at = status.find("Package: linux-kbuild-6.1\n").unwrap();
    let v = at + status[at..].find("Version: ").unwrap();
    let end = v + status[v..].find('\n').unwrap();
    let status = format!("{}Version: {version}{}", &status[..v], &status[end..]);
    f.write("var/lib/dpkg/status", status);
}

#[test]
#[ignore = "needs root (a private mount namespace and overlayfs); make check runs it as root"]
fn a_block_is_recorded_and_said_by_status_motd_textfile_and_log() {
    let f = synced();
    f.fake_dkms("poison", "");
    f.write(
        "etc/dkms/dkms-hook.conf",
        "preflight=block\nprometheus_textfile=/var/lib/prom\n",
    );
    fs::create_dir_all(f.path("var/lib/prom")).unwrap();
    assert_eq!(f.run(&["status"]).status.code(), Some(0));
    assert_eq!(status_json(&f)["blocked"], serde_json::json!([]));
    let bad = kbuild_deb(&f, "6.1.201-1", "preflight-poison");
    let out = f.run_with_stdin(&["pre-install-pkgs"], stream(&bad, "6.1.201-1"));
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(100), "{e}");
    for said in [
        "dkms-hook: preflight: FAILED acpi-call/1.2.2 for 6.1.0-50-amd64 against linux-kbuild-6.1 6.1.201-1",
        "dkms-hook: preflight = block: stopping apt before anything is unpacked; recorded: dkms-hook status shows it",
        // What works where no one can set a variable for the run.
        "dkms-hook: to go on: fix the module and run dkms-hook preflight (a build that passes ends the block); or set preflight=warn in /etc/dkms/dkms-hook.conf",
        "or apt-mark hold linux-kbuild-6.1 until it builds (unattended-upgrades then installs the rest); by hand: DKMS_HOOK_SUSPEND=1 apt …",
    ] {
        assert!(e.contains(said), "{said}\n{e}");
    }

    // status: a line per blocked pair, `blocked` in --json, exit 1.
    let out = f.run(&["status"]);
    let o = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "a block needs attention: {o}");
    assert!(
        o.contains("dkms-hook: BLOCKED since ") && o.contains(&format!(": preflight = block stopped apt before linux-kbuild-6.1 6.1.201-1: acpi-call/1.2.2 for 6.1.0-50-amd64 fails to build against it (dkms build exited 10); see {LOG}; to go on: fix it and run dkms-hook preflight, or preflight=warn in /etc/dkms/dkms-hook.conf")),
        "{o}"
    );
    let v = status_json(&f);
    let b = v["blocked"].as_array().unwrap();
    assert_eq!(b.len(), 2, "{v}");
    assert_eq!(b[0]["module"], "acpi-call");
    assert_eq!(b[0]["version"], "1.2.2");
    assert_eq!(b[0]["kernel"], "6.1.0-50-amd64");
    assert_eq!(b[1]["kernel"], "6.1.0-56-amd64");
    assert_eq!(b[0]["arch"], "x86_64");
    assert_eq!(
        b[0]["against"],
        serde_json::json!([{"package": "linux-kbuild-6.1", "role": "kbuild", "old": "6.1.192-2", "new": "6.1.201-1"}])
    );
    assert_eq!(b[0]["failure"], "dkms build exited 10");
    assert_eq!(b[0]["make_log"], LOG);
    assert!(b[0]["since"].as_str().unwrap().starts_with("20"), "{v}");
    assert!(v["pairs"].as_array().is_some() && v["queued"].as_array().is_some());
    assert!(String::from_utf8(f.read(LOG))
        .unwrap()
        .contains("preflight-poison"));

    // The login notice.
    let out = f.run(&["motd"]);
    let m = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = m.lines().collect();
    assert_eq!(lines.len(), 2, "{m}");
    assert!(
        lines[0]
            .starts_with("dkms-hook: the upgrade to linux-kbuild-6.1 6.1.201-1 is blocked since "),
        "{m}"
    );
    assert!(
        lines[0].ends_with(
            ": acpi-call/1.2.2 for 6.1.0-50-amd64 fails to build against it; see: dkms-hook status"
        ),
        "{m}"
    );

    // The textfile, written by the blocking run itself.
    let prom = fs::read_to_string(f.path("var/lib/prom/dkms_hook.prom")).unwrap();
    assert!(prom.contains("\ndkms_hook_preflight_blocked 2\n"), "{prom}");
    assert!(
        prom.contains("dkms_hook_preflight_blocked_info{module=\"acpi-call\",version=\"1.2.2\",kernel=\"6.1.0-50-amd64\",against=\"linux-kbuild-6.1 6.1.201-1\"} 1"),
        "{prom}"
    );

    // The log.
    let l = log(&f);
    assert!(
        l.contains(&format!("preflight = block stopped apt: acpi-call/1.2.2 for 6.1.0-50-amd64 fails to build against linux-kbuild-6.1 6.1.201-1 (dkms build exited 10); see {LOG}")),
        "{l}"
    );
}

/// unattended-upgrades offers the same upgrade every night: while nothing
/// the build reads changed, the block answers at once from the record,
/// without downloading into a sandbox or building; a changed module source
/// or a newer version is built again.
#[test]
#[ignore = "needs root (a private mount namespace and overlayfs); make check runs it as root"]
fn a_standing_block_is_not_built_again_until_what_it_reads_changes() {
    let (f, bad) = blocked_once();
    assert_eq!(take_build_logs(&f).len(), 2, "both pairs were built once");
    let record = f.read("var/lib/dkms-hook/blocked.json");

    let out = f.run_with_stdin(&["pre-install-pkgs"], stream(&bad, "6.1.201-1"));
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(100), "still blocked: {e}");
    assert!(
        e.contains("dkms-hook: preflight: acpi-call/1.2.2 for 6.1.0-50-amd64 against linux-kbuild-6.1 6.1.201-1 still fails, as at ")
            && e.contains(&format!("; not built again: its packages and the module's source are the same; see {LOG}")),
        "{e}"
    );
    assert!(e.contains("preflight = block: stopping apt"), "{e}");
    assert!(!e.contains("FAILED"), "nothing was built: {e}");
    assert_eq!(
        take_build_logs(&f),
        Vec::<String>::new(),
        "nothing was built"
    );
    assert_eq!(
        f.read("var/lib/dkms-hook/blocked.json"),
        record,
        "the record stays as it was"
    );
    assert!(log(&f).contains("still fails, as at "), "{}", log(&f));
    assert!(
        log(&f).contains("; preflight = block stopped apt again"),
        "{}",
        log(&f)
    );

    // The module's source changed (a patched or reinstalled dkms package):
    // built again, and blocked again.
    f.write(
        "usr/src/acpi-call-1.2.2/fix.patch",
        "a fix that does not fix it\n",
    );
    let out = f.run_with_stdin(&["pre-install-pkgs"], stream(&bad, "6.1.201-1"));
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(100), "{e}");
    assert!(!e.contains("still fails"), "{e}");
    assert_eq!(take_build_logs(&f).len(), 2, "built again: {e}");
    // … and that failure is the record now.
    let out = f.run_with_stdin(&["pre-install-pkgs"], stream(&bad, "6.1.201-1"));
    assert!(stderr(&out).contains("still fails"), "{}", stderr(&out));
    assert_eq!(take_build_logs(&f), Vec::<String>::new());

    // A newer version of the package: built again; its failure replaces
    // the record of each pair.
    let newer = kbuild_deb(&f, "6.1.202-1", "preflight-poison");
    let out = f.run_with_stdin(&["pre-install-pkgs"], stream(&newer, "6.1.202-1"));
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(100), "{e}");
    assert!(!e.contains("still fails"), "{e}");
    assert_eq!(take_build_logs(&f).len(), 2, "built again: {e}");
    let v = status_json(&f);
    let b = v["blocked"].as_array().unwrap();
    assert_eq!(b.len(), 2, "{v}");
    assert!(
        b.iter().all(|b| b["against"][0]["new"] == "6.1.202-1"),
        "{v}"
    );

    // With preflight = warn the record is not consulted: the upgrade is
    // built and goes on.
    f.write("etc/dkms/dkms-hook.conf", "preflight=warn\n");
    let out = f.run_with_stdin(&["pre-install-pkgs"], stream(&newer, "6.1.202-1"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("still fails"), "{}", stderr(&out));
}

/// A block ends when a preflight builds the pair against that version,
/// when its kernel goes, and when the version (or a newer one) is
/// installed after all; each ending is one line in the log, and `status`
/// is back to 0.
#[test]
#[ignore = "needs root (a private mount namespace and overlayfs); make check runs it as root"]
fn a_block_ends_when_built_installed_or_its_kernel_goes() {
    let (f, bad) = blocked_once();
    // The module was fixed: a preflight by hand builds it, which ends both.
    fs::remove_file(f.path("fake-dkms/poison")).unwrap();
    let out = f.run(&["preflight", &bad]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("dkms-hook: block ended: acpi-call/1.2.2 for 6.1.0-56-amd64 against linux-kbuild-6.1 6.1.201-1: a preflight built it"),
        "{}",
        stderr(&out)
    );
    assert!(!f.path("var/lib/dkms-hook/blocked.json").exists());
    assert!(
        log(&f).contains("block ended: acpi-call/1.2.2 for 6.1.0-50-amd64 against linux-kbuild-6.1 6.1.201-1: a preflight built it"),
        "{}",
        log(&f)
    );
    assert_eq!(status_json(&f)["blocked"], serde_json::json!([]));
    assert_eq!(f.run(&["status"]).status.code(), Some(0));

    // Blocked again; then kernel 6.1.0-56-amd64 is removed: its block ends
    // (status leaves it out at once, the next hook run forgets it).
    f.fake_dkms("poison", "");
    let out = f.run_with_stdin(&["pre-install-pkgs"], stream(&bad, "6.1.201-1"));
    assert_eq!(out.status.code(), Some(100), "{}", stderr(&out));
    fs::remove_dir_all(f.path("usr/lib/modules/6.1.0-56-amd64")).unwrap();
    assert_eq!(status_json(&f)["blocked"].as_array().unwrap().len(), 1);
    let out = f.run(&["post-invoke"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("dkms-hook: block ended: acpi-call/1.2.2 for 6.1.0-56-amd64 against linux-kbuild-6.1 6.1.201-1: kernel 6.1.0-56-amd64 is gone"),
        "{}",
        stderr(&out)
    );
    let m = String::from_utf8(f.run(&["motd"]).stdout).unwrap();
    assert_eq!(m.lines().count(), 1, "{m}");

    // The blocked version installed after all (preflight = warn, or by
    // hand with DKMS_HOOK_SUSPEND=1): the block ends after dpkg.
    install_kbuild(&f, "6.1.201-1");
    let out = f.run(&["post-invoke"]);
    assert!(
        stderr(&out).contains("dkms-hook: block ended: acpi-call/1.2.2 for 6.1.0-50-amd64 against linux-kbuild-6.1 6.1.201-1: linux-kbuild-6.1 6.1.201-1 is installed"),
        "{}",
        stderr(&out)
    );
    assert!(!f.path("var/lib/dkms-hook/blocked.json").exists());
    assert_eq!(f.run(&["motd"]).stdout, b"");
    assert!(log(&f).contains("kernel 6.1.0-56-amd64 is gone"));
    assert!(log(&f).contains("linux-kbuild-6.1 6.1.201-1 is installed"));
}

/// A block record as preflight writes it, for the pair of `kernel`.
fn record(module: &str, kernel: &str, new: &str) -> serde_json::Value {
    serde_json::json!({
        "module": module, "version": "1.2.2", "kernel": kernel, "arch": "x86_64",
        "packages": [format!("linux-kbuild-6.1 {new}")],
        "source": 7,
        "time": 1_795_467_461u64,
        "because": [{"package": "linux-kbuild-6.1", "role": "kbuild", "old": "6.1.192-2", "new": new, "unpacked": null}],
        "failure": "dkms build exited 10",
        "make_log": format!("/var/lib/dkms-hook/preflight/{module}-1.2.2-{kernel}.make.log"),
    })
}

fn write_records(f: &Fixture, records: &[serde_json::Value]) {
    f.write(
        "var/lib/dkms-hook/blocked.json",
        serde_json::json!({"version": 1, "blocked": records}).to_string(),
    );
}

/// The sample, synced (every pair fresh), writing its textfile to
/// `/var/lib/prom`, with these block records.
fn fresh_with_blocks(records: &[serde_json::Value]) -> Fixture {
    let f = Fixture::sample();
    f.run(&["sync"]);
    f.write(
        "etc/dkms/dkms-hook.conf",
        "prometheus_textfile=/var/lib/prom\n",
    );
    fs::create_dir_all(f.path("var/lib/prom")).unwrap();
    write_records(&f, records);
    f
}

/// A record as preflight leaves it is what `status`, the login notice and
/// the textfile show (without a sandbox: the record written here), and a
/// block whose version is installed, or a newer one, or whose module is
/// gone, is not shown and is forgotten by the next hook run.
#[test]
fn a_recorded_block_is_shown_until_it_ends() {
    let f = fresh_with_blocks(&[
        record("acpi-call", "6.1.0-50-amd64", "6.1.201-1"),
        record("gone-module", "6.1.0-50-amd64", "6.1.201-1"),
    ]);
    let out = f.run(&["status"]);
    let o = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{o}");
    let blocked: Vec<&str> = o.lines().filter(|l| l.contains("BLOCKED")).collect();
    assert_eq!(
        blocked.len(),
        1,
        "the module that is gone is not shown: {o}"
    );
    assert!(blocked[0].contains("acpi-call/1.2.2 for 6.1.0-50-amd64 fails to build against it"));
    let m = String::from_utf8(f.run(&["motd"]).stdout).unwrap();
    assert!(
        m.contains("dkms-hook: the upgrade to linux-kbuild-6.1 6.1.201-1 is blocked since "),
        "{m}"
    );
    if rustix::process::geteuid().is_root() {
        let prom = fs::read_to_string(f.path("var/lib/prom/dkms_hook.prom")).unwrap();
        assert!(prom.contains("\ndkms_hook_preflight_blocked 1\n"), "{prom}");
    }
    let out = f.run(&["post-invoke"]);
    assert!(
        stderr(&out).contains("block ended: gone-module/1.2.2 for 6.1.0-50-amd64 against linux-kbuild-6.1 6.1.201-1: gone-module/1.2.2 is gone"),
        "{}",
        stderr(&out)
    );
    // A newer version installed ends it too.
    install_kbuild(&f, "6.1.203-1");
    assert_eq!(status_json(&f)["blocked"], serde_json::json!([]));
    let out = f.run(&["post-invoke"]);
    assert!(
        stderr(&out).contains("block ended: acpi-call/1.2.2 for 6.1.0-50-amd64 against linux-kbuild-6.1 6.1.201-1: linux-kbuild-6.1 6.1.203-1 is installed"),
        "{}",
        stderr(&out)
    );
    assert!(!f.path("var/lib/dkms-hook/blocked.json").exists());
    assert_eq!(f.run(&["status"]).status.code(), Some(0));
}

/// `blocked.json` is input: planted or corrupt records are dropped one by
/// one (a name that leaves the tree, a make.log that is not the pair's own,
/// a failure that forges lines, a time past 9999, hundreds of packages, an
/// overlong or bad package line, no causes), a link in its place is not followed (nor
/// written through), a corrupt file is set aside, a newer version's is
/// left alone; a hook never fails on any of them.
#[test]
fn planted_or_corrupt_block_records_are_refused() {
    let f = Fixture::sample();
    f.run(&["sync"]);
    let good = record("acpi-call", "6.1.0-50-amd64", "6.1.201-1");
    let with = |k: &str, v: serde_json::Value| {
        let mut r = good.clone();
        r[k] = v;
        r
    };
    let many: Vec<String> = (0..600).map(|i| format!("p{i} 1")).collect();
    write_records(
        &f,
        &[
            with("module", "../../../../tmp/x".into()),
            with("make_log", "/etc/shadow".into()),
            with("failure", "x\n\u{1b}[2Jdkms-hook: all is well".into()),
            with("time", 9_223_372_036_854_775_807u64.into()),
            with("packages", many.into()),
            with("packages", serde_json::json!(["linux-kbuild-6.1"])),
            with(
                "packages",
                serde_json::json!([format!("p {}", "1".repeat(2000))]),
            ),
            with("packages", serde_json::json!(["Bad_Name! 1"])),
            with("because", serde_json::json!([])),
            with("kernel", "-rf".into()),
            good.clone(),
            serde_json::json!(7),
        ],
    );
    let v = status_json(&f);
    let b = v["blocked"].as_array().unwrap();
    assert_eq!(b.len(), 1, "only the good record: {v}");
    assert_eq!(b[0]["make_log"], LOG);
    let m = String::from_utf8(f.run(&["motd"]).stdout).unwrap();
    assert_eq!(m.lines().count(), 1, "{m}");
    assert!(!m.contains("all is well") && !m.contains("shadow"), "{m}");

    // A link in its place, to a record elsewhere: not read, not written.
    let t = tempfile::tempdir().unwrap();
    let victim = t.path().join("victim.json");
    let planted = serde_json::json!({"version": 1, "blocked": [good]}).to_string();
    fs::write(&victim, &planted).unwrap();
    fs::remove_file(f.path("var/lib/dkms-hook/blocked.json")).unwrap();
    std::os::unix::fs::symlink(&victim, f.path("var/lib/dkms-hook/blocked.json")).unwrap();
    let out = f.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["blocked"], serde_json::json!([]), "{}", stderr(&out));
    install_kbuild(&f, "6.1.201-1");
    assert_eq!(f.run(&["post-invoke"]).status.code(), Some(0));
    assert_eq!(f.run(&["motd"]).status.code(), Some(0));
    assert_eq!(fs::read_to_string(&victim).unwrap(), planted);
    assert!(
        fs::symlink_metadata(f.path("var/lib/dkms-hook/blocked.json.aside"))
            .unwrap()
            .is_symlink(),
        "the link is set aside, as every state file's"
    );
    assert!(!f.path("var/lib/dkms-hook/blocked.json").exists());
    install_kbuild(&f, "6.1.192-2");

    // Corrupt: set aside, said once, nothing shown.
    f.write("var/lib/dkms-hook/blocked.json", "{garbage");
    let out = f.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["blocked"], serde_json::json!([]));
    assert!(
        stderr(&out).contains("blocked.json: corrupt"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        f.read("var/lib/dkms-hook/blocked.json.corrupt"),
        b"{garbage"
    );

    // A newer dkms-hook's file: left alone.
    let newer = serde_json::json!({"version": 99, "blocked": []}).to_string();
    f.write("var/lib/dkms-hook/blocked.json", &newer);
    let out = f.run(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(f.run(&["post-invoke"]).status.code(), Some(0));
    assert_eq!(
        fs::read_to_string(f.path("var/lib/dkms-hook/blocked.json")).unwrap(),
        newer
    );
}

/// The textfile with a standing block, read back by the Prometheus client
/// library's own parser (skipped where `make check` skips the other
/// textfile test: its name contains that test's).
#[test]
#[ignore = "needs python3-prometheus-client (/usr/bin/python3); CI installs it"]
fn the_prometheus_textfile_parses_and_counts_blocks() {
    let f = fresh_with_blocks(&[
        record("acpi-call", "6.1.0-50-amd64", "6.1.201-1"),
        record("acpi-call", "6.1.0-56-amd64", "6.1.201-1"),
    ]);
    // A rebuild run writes the textfile (status does too, as root).
    f.run(&["retry"]);
    let m = crate::fixture::textfile_samples(&f, &["state", "kernel", "against"]);
    assert_eq!(m["dkms_hook_preflight_blocked"], 2.0, "{m}");
    assert_eq!(
        m["dkms_hook_preflight_blocked_info/against=linux-kbuild-6.1 6.1.201-1/kernel=6.1.0-56-amd64"],
        1.0,
        "{m}"
    );
    assert_eq!(m["dkms_hook_pairs/state=fresh"], 2.0, "{m}");
}
