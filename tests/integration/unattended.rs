//! unattended-upgrades: python-apt's `apt.Cache(rootdir="/")` lists every
//! hook entry twice, so apt-pkg runs Pre-Install-Pkgs and Post-Invoke twice
//! for each dpkg run. The second copy does nothing and says nothing; the
//! next dpkg run (another step) is served as before.

use crate::fixture::{copies, uu_step, Fixture};

/// The pre-install-pkgs info stream of linux-kbuild-6.1 OLD → NEW, as `name`.
fn v3_kbuild(f: &Fixture, name: &str, old: &str, new: &str) {
    f.write(
        name,
        format!("VERSION 3\nAPT::Architecture=amd64\n\nlinux-kbuild-6.1 {old} amd64 same < {new} amd64 same /var/cache/apt/archives/linux-kbuild-6.1_{new}_amd64.deb\n"),
    );
}

/// dpkg's part of a step, as the script `name`: linux-kbuild-6.1 OLD → NEW
/// unpacked now, a second later than anything built before, as dpkg.log
/// tells it.
fn dpkg_upgrades_kbuild(f: &Fixture, name: &str, old: &str, new: &str) {
    f.write(
        name,
        format!(
            "sleep 1.1\nt=$(date -u '+%Y-%m-%d %H:%M:%S')\nprintf '%s\\n' \"$t startup archives unpack\" \"$t upgrade linux-kbuild-6.1:amd64 {old} {new}\" \"$t status half-installed linux-kbuild-6.1:amd64 {old}\" \"$t status unpacked linux-kbuild-6.1:amd64 {new}\" >> \"$R/var/log/dpkg.log\"\n"
        ),
    );
}

/// The sample system, all fresh, the dpkg.log cursor at its end, preflight
/// off (and `conf`), and one step as `v3-a.txt` and `dpkg-a.sh`: linux-kbuild-6.1
/// 6.1.192-2 → 6.1.200-1.
fn kbuild_step_a(conf: &str) -> Fixture {
    let f = Fixture::sample();
    f.run(&["sync"]);
    f.run(&["init"]);
    f.write("etc/dkms/dkms-hook.conf", format!("preflight=off\n{conf}"));
    v3_kbuild(&f, "v3-a.txt", "6.1.192-2", "6.1.200-1");
    dpkg_upgrades_kbuild(&f, "dpkg-a.sh", "6.1.192-2", "6.1.200-1");
    f
}

fn builds(f: &Fixture) -> usize {
    f.dkms_calls()
        .iter()
        .filter(|c| c.starts_with("build "))
        .count()
}

fn log(f: &Fixture) -> String {
    String::from_utf8_lossy(&f.read("var/log/dkms-hook.log")).into_owned()
}

/// Regressions (hooks twice under unattended-upgrades; the same modules
/// rebuilt in each step of one run): the forecast, the kbuild warning and
/// the rebuild were each done and said twice per step, and each pair was
/// built once per step that fed it. Now each copy's work is done once, and
/// each pair is built once, after the run.
#[test]
fn hooks_listed_twice_by_python_apt_do_the_work_once() {
    let f = kbuild_step_a("");
    v3_kbuild(&f, "v3-b.txt", "6.1.200-1", "6.1.201-1");
    dpkg_upgrades_kbuild(&f, "dpkg-b.sh", "6.1.200-1", "6.1.201-1");
    let before = builds(&f);
    // Two steps of one unattended-upgrades run; in the second, the second
    // copies log what they do. Between them, what was built is counted.
    let out = f.under_fake_unattended_upgrades(&format!(
        "{}; sleep 1; cp \"$R/dkms-calls.log\" \"$R/mid.log\"; {w}-a; {}; {w}-b",
        uu_step("a", "v3-a.txt", "dpkg-a.sh", ""),
        uu_step("b", "v3-b.txt", "dpkg-b.sh", "DKMS_HOOK_LOG=debug"),
        w = r#"grep -h ^waiter "$R"/run/dkms-hook/uu-* > "$R/waiter""#,
    ));
    let kernels = ["6.1.0-50-amd64", "6.1.0-56-amd64"];
    let waits = "2 rebuild(s) wait until unattended-upgrades ends, so that each is built once, after all its steps: acpi-call/1.2.2 for 6.1.0-50-amd64, acpi-call/1.2.2 for 6.1.0-56-amd64";
    let a = copies(&out, "a");
    for k in kernels {
        assert!(
            a[0].contains(&format!("changes the build tree of {k} in place")),
            "the first copy forecasts:\n{out}"
        );
    }
    assert!(
        a[0].contains("for it once unattended-upgrades ends (after all its steps)"),
        "…when the rebuild comes:\n{out}"
    );
    assert!(a[2].contains(waits), "the first copy queues:\n{out}");
    assert!(!a[2].contains("rebuilt"), "…and builds nothing:\n{out}");
    assert_eq!(a[1], "", "the second Pre-Install-Pkgs says nothing:\n{out}");
    assert_eq!(a[3], "", "the second Post-Invoke says nothing:\n{out}");
    // Another step (a new fork, other input) is served, once.
    let b = copies(&out, "b");
    for k in kernels {
        assert!(
            b[0].contains(&format!("changes the build tree of {k} in place"))
                && b[0].contains("6.1.201-1"),
            "{out}"
        );
    }
    assert!(b[2].contains(waits), "{out}");
    // Its second copies did nothing but note that (debug log asked for).
    for (copy, what) in [(&b[1], "Pre-Install-Pkgs"), (&b[3], "post-invoke")] {
        let lines: Vec<&str> = copy.lines().collect();
        assert_eq!(lines.len(), 1, "{what}: only the skip:\n{out}");
        assert!(lines[0].contains("was handled already"), "{out}");
    }
    // Each line said once in a step (the kbuild warning too).
    for step in [a, b] {
        let said: Vec<&str> = step.iter().flat_map(|c| c.lines()).collect();
        for l in &said {
            assert_eq!(said.iter().filter(|m| *m == l).count(), 1, "{l}\n{out}");
        }
    }
    // One waiter for the run: the second step found it running.
    let waiter = f.read("waiter-a");
    assert!(waiter.starts_with(b"waiter "), "{out}");
    assert_eq!(waiter, f.read("waiter-b"), "{out}");
    let mid = String::from_utf8_lossy(&f.read("mid.log"))
        .lines()
        .filter(|l| l.starts_with("build ") && l.ends_with(" done"))
        .count();
    assert_eq!(mid, before, "nothing built while the run went on:\n{out}");
    f.wait_for_waiters();
    assert_eq!(
        builds(&f) - before,
        2,
        "one build per pair, after the run:\n{out}"
    );
    let log = log(&f);
    for k in kernels {
        let line =
            format!("rebuilt acpi-call/1.2.2 for {k} (linux-kbuild-6.1 6.1.192-2 → 6.1.201-1)");
        assert_eq!(log.matches(&line).count(), 1, "{line}\n{log}");
    }
    assert!(
        !f.path("run/dkms-hook")
            .read_dir()
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("uu-")),
        "the run's record is gone with its waiter"
    );
    assert_eq!(f.run(&["status"]).status.code(), Some(0), "all fresh");
}

/// When unattended-upgrades goes down with the machine at its end
/// (`Automatic-Reboot`, `InstallOnShutdown`), or with
/// `defer_unattended = no`, the rebuild is done after each step, as under
/// apt: a waiter would build while the machine shuts down.
#[test]
fn a_run_that_reboots_by_itself_is_rebuilt_after_each_step() {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration");
    for (conf, key) in [
        ("", Some("Unattended-Upgrade::Automatic-Reboot")),
        ("", Some("Unattended-Upgrade::InstallOnShutdown")),
        ("defer_unattended=no\n", None),
        // apt's configuration cannot be read: whether it reboots is unknown.
        ("", Some("unreadable")),
    ] {
        let f = kbuild_step_a(conf);
        let mut apt_config = here.join("fake-apt-config");
        match key {
            Some("unreadable") => apt_config = "/bin/false".into(),
            Some(key) => f.write(&format!("fake-mail/{key}"), "true"),
            None => {}
        }
        let before = builds(&f);
        let out = f.under_fake_unattended_upgrades(&format!(
            "export DKMS_HOOK_APT_CONFIG='{}'; {}",
            apt_config.display(),
            uu_step("a", "v3-a.txt", "dpkg-a.sh", "")
        ));
        let a = copies(&out, "a");
        assert!(
            a[2].contains("rebuilt acpi-call/1.2.2 for 6.1.0-50-amd64"),
            "{key:?} {conf}: rebuilt in the step:\n{out}"
        );
        assert!(!a[2].contains("wait until"), "{out}");
        assert!(a[0].contains("for it after dpkg finishes"), "{out}");
        assert_eq!(builds(&f) - before, 2, "{out}");
    }
}

/// A record is input: a planted `waiter` line naming a process that is not
/// our waiter (pid 1) is not believed, so a waiter is started and the
/// pairs are rebuilt after the run all the same.
#[test]
fn a_planted_waiter_is_not_believed() {
    let f = kbuild_step_a("");
    let before = builds(&f);
    let plant = r#"mkdir -p "$R/run/dkms-hook"; s=$(cut -d' ' -f22 /proc/$$/stat); s1=$(cut -d' ' -f22 /proc/1/stat); printf 'waiter 1 %s\ntested ../../etc 1 x y\n' "$s1" > "$R/run/dkms-hook/uu-$$-$s""#;
    let out = f.under_fake_unattended_upgrades(&format!(
        "{plant}; {}",
        uu_step("a", "v3-a.txt", "dpkg-a.sh", "")
    ));
    assert!(
        copies(&out, "a")[2].contains("wait until unattended-upgrades ends"),
        "{out}"
    );
    f.wait_for_waiters();
    assert_eq!(builds(&f) - before, 2, "rebuilt after the run:\n{out}");
}

/// Outside a front end (plain dpkg, a person) nothing is taken for a
/// repeat: the same input twice is served twice.
#[test]
fn the_same_input_outside_a_front_end_is_served_each_time() {
    let f = Fixture::sample();
    f.write("etc/dkms/dkms-hook.conf", "preflight=off\n");
    let v3 = "VERSION 3\nAPT::Architecture=amd64\n\nlinux-kbuild-6.1 6.1.192-2 amd64 same < 6.1.200-1 amd64 same /var/cache/apt/archives/k.deb\n";
    for _ in 0..2 {
        let out = f.run_with_stdin(&["pre-install-pkgs"], v3);
        let e = crate::fixture::stderr(&out) + &String::from_utf8_lossy(&out.stdout);
        assert!(
            e.contains("changes the build tree of 6.1.0-50-amd64 in place"),
            "{e}"
        );
    }
}

/// A step record is input: one planted as a link is set aside, never
/// followed (its target unchanged), and one too large or not of our lines
/// is not taken for a record; either way the first copy does the work and
/// the second stays quiet.
#[test]
fn planted_step_records_are_not_followed_or_trusted() {
    let f = Fixture::sample();
    f.write("etc/dkms/dkms-hook.conf", "preflight=off\n");
    // Other input in each step: warnings are said once per run.
    v3_kbuild(&f, "v3-x.txt", "6.1.192-2", "6.1.200-1");
    v3_kbuild(&f, "v3-y.txt", "6.1.192-2", "6.1.201-1");
    f.write("victim", "pre-install-pkgs 0123456789abcdef\n");
    let garbage = "pre-install-pkgs 0000000000000000\n".repeat(4000) + "not a record\n";
    f.write("garbage", &garbage);
    // Each step plants its record (named by its own pid and start time)
    // before the hooks run: a link to the victim, then a 136 KB file.
    let step = |tag: &str, plant: &str| {
        format!(
            r#"( sh -c 'echo $PPID > "$R/step.pid"'; p=$(cat "$R/step.pid"); s=$(cut -d' ' -f22 /proc/$p/stat); mkdir -p "$R/run/dkms-hook"; {plant} "$R/run/dkms-hook/step-$p-$s"; echo "$p-$s" > "$R/{tag}.name"; echo =={tag}1==; sh -c '"$HOOK" --root "$R" pre-install-pkgs; :' < "$R/v3-{tag}.txt"; echo =={tag}2==; sh -c '"$HOOK" --root "$R" pre-install-pkgs; :' < "$R/v3-{tag}.txt"; echo =={tag}end==; : )"#
        )
    };
    let out = f.under_fake_unattended_upgrades(&format!(
        "{}; {}",
        step("x", r#"ln -s "$R/victim""#),
        step("y", r#"cp "$R/garbage""#)
    ));
    for tag in ["x", "y"] {
        let c = copies(&out, tag);
        assert!(
            c[0].contains("changes the build tree of 6.1.0-50-amd64 in place"),
            "{tag}: the first copy works:\n{out}"
        );
        assert_eq!(c[1], "", "{tag}: the second is quiet:\n{out}");
    }
    assert_eq!(
        f.read("victim"),
        b"pre-install-pkgs 0123456789abcdef\n",
        "never written through the link"
    );
    let name = |tag: &str| {
        let n = String::from_utf8(f.read(&format!("{tag}.name"))).unwrap();
        format!("run/dkms-hook/step-{}", n.trim())
    };
    let x = name("x");
    assert!(
        f.path(&format!("{x}.aside")).is_symlink(),
        "set aside:\n{out}"
    );
    assert!(!f.path(&x).is_symlink(), "{out}");
    let y = f.read(&name("y"));
    assert!(
        y.len() < 100,
        "the oversized record was replaced: {} bytes",
        y.len()
    );
}

/// The waiter builds only once dpkg's lock is free too: when
/// unattended-upgrades is killed, the dpkg its last step started may still
/// be unpacking the build tree. Meanwhile it holds none of the run's
/// descriptors.
#[test]
fn the_waiter_waits_for_dpkg_s_lock() {
    let f = kbuild_step_a("");
    f.write("var/lib/dpkg/lock", "");
    let mut dpkg = std::process::Command::new("flock")
        .arg("--no-fork")
        .arg(f.path("var/lib/dpkg/lock"))
        .args(["sleep", "120"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let before = builds(&f);
    // The run also hands its hooks a pipe (fd 9) whose reader waits for
    // its end: the waiter, which outlives the run, must not hold it.
    let pipe = r#"mkfifo "$R/p"; ( cat "$R/p"; touch "$R/eof" ) >/dev/null 2>&1 & exec 9> "$R/p""#;
    let out = f.under_fake_unattended_upgrades(&format!(
        "{pipe}; {}",
        uu_step("a", "v3-a.txt", "dpkg-a.sh", "")
    ));
    assert!(
        copies(&out, "a")[2].contains("wait until unattended-upgrades ends"),
        "{out}"
    );
    // unattended-upgrades has ended; the waiter looks twice a second.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let during = builds(&f) - before;
    let pipe_closed = f.path("eof").exists();
    dpkg.kill().unwrap();
    dpkg.wait().unwrap();
    assert_eq!(
        during, 0,
        "nothing built while dpkg's lock was held:\n{out}"
    );
    assert!(pipe_closed, "the waiter kept the run's pipe open:\n{out}");
    f.wait_for_waiters();
    assert_eq!(
        builds(&f) - before,
        2,
        "built once the lock was free:\n{out}"
    );
}
