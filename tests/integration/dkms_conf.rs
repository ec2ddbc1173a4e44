//! dkms.conf as dkms reads it: the committed corpus against dkms's own
//! verdicts (`tests/data/dkms-conf/expected.txt`, recorded by
//! `tests/dkms-conf/record.sh` from dkms's `read_conf` and checked again
//! against the installed dkms by both real-system tiers), and what the
//! administrator sees of excluded and undecided pairs.

use std::fs;
use std::path::{Path, PathBuf};

use dkms_hook::dkms_conf::{decide_file, evaluate_on_host, DkmsVersion, Verdict};
use dkms_hook::kernel::KernelRelease;

use crate::fixture::{rebuilds, Fixture};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dkms-conf")
}

/// The committed real kernel configs as `DIR/K/build/{.config,
/// include/config/auto.conf}`.
fn kernel_trees() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    for e in fs::read_dir(data().join("kernels")).unwrap() {
        let e = e.unwrap();
        let k = e.file_name().into_string().unwrap();
        let build = t.path().join(&k).join("build");
        fs::create_dir_all(build.join("include/config")).unwrap();
        for (gz, to) in [
            ("config.gz", ".config"),
            ("auto.conf.gz", "include/config/auto.conf"),
        ] {
            let mut text = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(fs::File::open(e.path().join(gz)).unwrap()),
                &mut text,
            )
            .unwrap();
            fs::write(build.join(to), text).unwrap();
        }
    }
    t
}

fn version(s: &str) -> DkmsVersion {
    let n: Vec<u32> = s.split('.').map(|p| p.parse().unwrap()).collect();
    DkmsVersion(n[0], n[1], n[2])
}

/// Every committed dkms.conf × real kernel config × dkms version: bash's
/// evaluation gives dkms's own answer, and the static reading (for
/// `--root`) gives it too or says it cannot tell; it never guesses.
#[test]
fn the_corpus_agrees_with_dkms() {
    let trees = kernel_trees();
    let expected = fs::read_to_string(data().join("expected.txt")).unwrap();
    let mut checked = 0;
    let mut undecided_statically = Vec::new();
    for line in expected.lines().filter(|l| !l.starts_with('#')) {
        let [conf, k, dkms, want] = line.split(' ').collect::<Vec<_>>()[..] else {
            panic!("bad line {line:?}");
        };
        let want = match want {
            "excluded" => Verdict::Excluded,
            "builds" => Verdict::Builds,
            w => panic!("bad verdict {w}"),
        };
        let dkms = version(dkms);
        let conf_path = data().join("confs").join(conf).join("dkms.conf");
        let build = trees.path().join(k).join("build");
        let config = if dkms >= DkmsVersion(3, 1, 4) {
            build.join("include/config/auto.conf")
        } else {
            build.join(".config")
        };
        let got = evaluate_on_host(
            dkms,
            "probe",
            "1",
            k,
            "x86_64",
            build.to_str().unwrap(),
            config.to_str().unwrap(),
            &[conf_path.to_str().unwrap()],
        );
        assert_eq!(got, want, "bash: {line}");
        let kernel = KernelRelease::new(k).unwrap();
        match decide_file(dkms, &conf_path, &kernel, "x86_64", Some(&config)).unwrap() {
            Verdict::Undecided(_) => undecided_statically.push(conf.to_string()),
            got => assert_eq!(got, want, "static: {line}"),
        }
        checked += 1;
    }
    assert!(checked >= 60, "only {checked} lines");
    // The scripts (an `if` around the assignment) are never guessed.
    for script in ["v4l2loopback-dkms_0.12.7-2", "digimend-dkms_11-2"] {
        assert!(undecided_statically.iter().any(|c| c == script), "{script}");
    }
    assert!(!undecided_statically.iter().any(|c| c.starts_with("evdi")));
}

/// The dkms version comes from the script's `--version` line, in 3.0's
/// and 3.2's spelling.
#[test]
fn the_dkms_version_is_read_from_its_script() {
    assert_eq!(
        DkmsVersion::parse_script(b"x\n            echo $\"dkms-3.0.10\"\n"),
        Some(DkmsVersion(3, 0, 10))
    );
    assert_eq!(
        DkmsVersion::parse_script(b"            echo \"dkms-3.2.2\"\n"),
        Some(DkmsVersion(3, 2, 2))
    );
    assert_eq!(
        DkmsVersion::parse_script(b"echo \"dkms-@RELEASE@\"\n"),
        None
    );
}

/// A dkms.conf that hangs or floods is undecided within the time and
/// memory limits, and nothing it started is left running.
#[test]
fn a_hostile_dkms_conf_is_bounded() {
    let t = tempfile::tempdir().unwrap();
    let k = t.path().join("K/build");
    fs::create_dir_all(&k).unwrap();
    fs::write(k.join(".config"), "CONFIG_X=y\n").unwrap();
    let run = |body: &str| {
        let conf = t.path().join("dkms.conf");
        fs::write(&conf, body).unwrap();
        evaluate_on_host(
            DkmsVersion(3, 2, 2),
            "m",
            "1",
            "K",
            "x86_64",
            k.to_str().unwrap(),
            k.join(".config").to_str().unwrap(),
            &[conf.to_str().unwrap()],
        )
    };
    let marker = t.path().join("still-running");
    let hang = format!(
        "(sleep 30; touch {}) &\nwhile :; do :; done\n",
        marker.display()
    );
    assert!(matches!(run(&hang), Verdict::Undecided(w) if w.contains("gave up")));
    // A value of 4 GB fails at the memory limit; it does not take the
    // machine's memory.
    let flood = "PACKAGE_NAME=$(head -c 4000000000 /dev/zero | tr '\\0' x)\nBUILD_EXCLUSIVE_KERNEL=nothing\n";
    assert!(matches!(run(flood), Verdict::Undecided(_)));
    // The background job died with its group.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let ps = std::process::Command::new("pgrep")
        .args(["-f", &format!("touch {}", marker.display())])
        .output();
    if let Ok(ps) = ps {
        assert!(ps.stdout.is_empty(), "left running: {ps:?}");
    }
    // Regression (flaky `a_hostile_dkms_conf_is_bounded`): the subshell
    // that sources the file dying, as at the memory limit, read as a file
    // that sets nothing, so the pair "builds" whatever the file said.
    assert!(matches!(
        run("BUILD_EXCLUSIVE_KERNEL=nothing\nkill -9 $BASHPID\n"),
        Verdict::Undecided(w) if w.contains("did not finish")
    ));
    // A plain one still answers.
    assert_eq!(
        run("BUILD_EXCLUSIVE_CONFIG=\"CONFIG_X\"\n"),
        Verdict::Builds
    );
    assert_eq!(
        run("BUILD_EXCLUSIVE_CONFIG=\"CONFIG_Y\"\n"),
        Verdict::Excluded
    );
}

/// A file others may write is not sourced.
#[test]
fn a_dkms_conf_others_may_write_is_not_evaluated() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let conf = t.path().join("dkms.conf");
    fs::write(&conf, "BUILD_EXCLUSIVE_KERNEL=nothing\n").unwrap();
    fs::set_permissions(&conf, fs::Permissions::from_mode(0o666)).unwrap();
    let got = evaluate_on_host(
        DkmsVersion(3, 2, 2),
        "m",
        "1",
        "K",
        "x86_64",
        "/nonexistent",
        "/nonexistent/.config",
        &[conf.to_str().unwrap()],
    );
    assert!(matches!(got, Verdict::Undecided(w) if w.contains("other users")));
}

/// The sample system with acpi-call's dkms.conf replaced by a module's
/// real one.
fn sample_with_conf(conf: &str) -> Fixture {
    let f = Fixture::sample();
    f.write(
        "usr/src/acpi-call-1.2.2/dkms.conf",
        fs::read(data().join("confs").join(conf).join("dkms.conf")).unwrap(),
    );
    f
}

/// Regression (issue 20, real-system trial): v4l2loopback's dkms.conf sets
/// `BUILD_EXCLUSIVE_KERNEL` only inside an `if` on the kernel's config;
/// read as key=value its pairs were `excluded`, never rebuilt, and
/// `status` exited 1 forever. Under `--root` (nothing executed) a built
/// pair is judged as usual and rebuilt after the in-place kbuild upgrade.
#[test]
fn regression_v4l2loopback_is_rebuilt_not_excluded() {
    let f = sample_with_conf("v4l2loopback-dkms_0.12.7-2");
    let row = f.status_row("6.1.0-50-amd64");
    assert_eq!(row["state"], "stale", "{row}");
    let plan = f.plan(&["var/log/dpkg.log"]);
    assert_eq!(
        rebuilds(&plan),
        vec!["acpi-call/1.2.2 @ 6.1.0-50-amd64"],
        "{plan}"
    );
    let sync = f.run(&["sync"]);
    assert!(sync.status.success(), "{sync:?}");
    let status = f.run(&["status", "--quiet"]);
    assert_eq!(status.status.code(), Some(0), "{status:?}");
}

/// Under `--root` a script's verdict for a kernel dkms has not built for
/// is `undecided` (not `excluded`), and it is not a finding.
#[test]
fn a_script_under_root_is_undecided_not_excluded() {
    let f = sample_with_conf("v4l2loopback-dkms_0.12.7-2");
    f.debian_kernel(
        "6.1.0-57-amd64",
        "6.1.192-3",
        "linux-kbuild-6.1",
        "2026-11-24T10:00:00Z",
    );
    f.run(&["sync"]);
    let row = f.status_row("6.1.0-57-amd64");
    assert_eq!(row["state"], "undecided", "{row}");
    assert!(row["why"].as_str().unwrap().contains("dkms.conf"), "{row}");
    let status = f.run(&["status", "--quiet"]);
    assert_eq!(status.status.code(), Some(0), "{status:?}");
}

/// Regression (issue 20): after a kernel's headers were removed, a module
/// with `BUILD_EXCLUSIVE_CONFIG` showed `excluded` for it; a kernel
/// without headers is `no-headers` whatever the dkms.conf says.
#[test]
fn regression_a_kernel_without_headers_is_no_headers_not_excluded() {
    let f = sample_with_conf("evdi-dkms_1.12.0+dfsg-0.3");
    fs::remove_file(f.path("usr/lib/modules/6.1.0-56-amd64/build")).unwrap();
    let row = f.status_row("6.1.0-56-amd64");
    assert_eq!(row["state"], "no-headers", "{row}");
}

/// An excluded pair is dkms doing what it was told: `status` exits 0 (also
/// with `--quiet`) once everything else is fresh.
#[test]
fn an_excluded_pair_never_needs_attention() {
    let f = sample_with_conf("evdi-dkms_1.12.0+dfsg-0.3");
    // The sample's configs set neither CONFIG_I2C nor CONFIG_DRM: both
    // kernels are excluded, though acpi-call is installed for them.
    let row = f.status_row("6.1.0-50-amd64");
    assert_eq!(row["state"], "excluded", "{row}");
    for args in [&["status"][..], &["status", "--quiet"]] {
        let out = f.run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
    }
}
