//! Before you reboot (issue 15): the signature of each rebuilt module where
//! the kernel checks them, Secure Boot and dkms's key as the stand-in
//! mokutil tells them, `broken` pairs, and failures at journal priority.

use crate::fixture::{assert_says, stderr, Fixture};

const K: &str = "6.1.0-50-amd64";
const KO: &str = "usr/lib/modules/6.1.0-50-amd64/updates/dkms/acpi_call.ko";
const BUILT: &str = "var/lib/dkms/acpi-call/1.2.2/6.1.0-50-amd64/x86_64/module/acpi_call.ko";
const TRAILER: &[u8] = b"~Module signature appended~\n";

/// The pending fixture on a kernel built with `CONFIG_MODULE_SIG=y`, with
/// Secure Boot `sb` ("enabled"/"disabled") as mokutil tells it.
fn signing_kernel(sb: &str) -> Fixture {
    let f = Fixture::pending();
    kernel_config(
        &f,
        "CONFIG_MODULE_SIG=y\n# CONFIG_MODULE_SIG_FORCE is not set\n",
    );
    f.write("fake-mokutil/sb", sb);
    f
}

/// [`signing_kernel`], with dkms signing its modules with its key.
fn signed_with_dkms_key(sb: &str) -> Fixture {
    let f = signing_kernel(sb);
    f.fake_dkms("sign", "");
    f.write("var/lib/dkms/mok.pub", "certificate");
    f
}

/// `lines` added to the `.config` in K's build tree.
fn kernel_config(f: &Fixture, lines: &str) {
    let config = format!("usr/src/linux-headers-{K}/.config");
    let mut text = f.read(&config);
    text.extend_from_slice(lines.as_bytes());
    f.write(&config, text);
}

fn module(release: &str, signed: bool) -> Vec<u8> {
    let mut m = b"\x7fELF\x02\x01\x01\0".repeat(512);
    m.extend_from_slice(format!("license=GPL\0vermagic={release} SMP mod_unload \0").as_bytes());
    m.extend_from_slice(&[0xaa; 4096]);
    if signed {
        m.extend_from_slice(&[0x30; 700]);
        m.extend_from_slice(TRAILER);
    }
    m
}

#[test]
fn an_unsigned_module_under_secure_boot_is_a_loud_warning() {
    let f = signing_kernel("enabled");
    let out = f.run(&["post-invoke"]);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        e.contains(&format!("dkms-hook: warning: acpi-call/1.2.2 for {K} is NOT SIGNED and Secure Boot is on: it will not load after the reboot")),
        "{e}"
    );
    assert!(
        e.contains("rebuilt acpi-call/1.2.2"),
        "it stays installed: {e}"
    );
    let row = f.status_row(K);
    assert_eq!(row["signed"], false);
    assert_eq!(row["key_enrolled"], serde_json::Value::Null);
    let status = f.run(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("NOT SIGNED: will not load after the reboot"),
        "{text}"
    );
    assert_eq!(status.status.code(), Some(1), "it needs attention");
}

#[test]
fn an_unsigned_module_without_secure_boot_is_no_finding() {
    let f = signing_kernel("disabled");
    let e = stderr(&f.run(&["post-invoke"]));
    assert!(!e.contains("NOT SIGNED"), "{e}");
    assert_eq!(f.status_row(K)["signed"], false);
    assert_eq!(f.run(&["status", "--quiet"]).status.code(), Some(0));
}

#[test]
fn a_kernel_that_enforces_signatures_is_told_without_secure_boot() {
    let f = signing_kernel("disabled");
    kernel_config(&f, "CONFIG_MODULE_SIG_FORCE=y\n");
    let out = f.run(&["post-invoke"]);
    assert_says(
        &out,
        0,
        "is NOT SIGNED and the kernel enforces module signatures",
    );
}

#[test]
fn a_signed_module_with_an_unenrolled_key_names_the_command_once() {
    let f = signed_with_dkms_key("enabled");
    let e = stderr(&f.run(&["post-invoke"]));
    assert!(!e.contains("NOT SIGNED"), "{e}");
    let want = "which is not enrolled (with Secure Boot on the module will not load): run mokutil --import /var/lib/dkms/mok.pub, reboot and enrol it in MokManager";
    assert_eq!(e.matches(want).count(), 1, "{e}");
    let row = f.status_row(K);
    assert_eq!(row["signed"], true);
    assert_eq!(row["signer"], "DKMS module signing key");
    assert_eq!(row["key_enrolled"], false);
    // Enrolled now: no warning, and status says so.
    f.write("fake-mokutil/enrolled", "");
    assert_eq!(f.status_row(K)["key_enrolled"], true);
    let st = f.run(&["status"]);
    assert!(!stderr(&st).contains("not enrolled"), "{}", stderr(&st));
    assert!(!String::from_utf8_lossy(&st.stdout).contains("not enrolled"));
}

#[test]
fn a_key_waiting_for_enrolment_says_to_confirm_it() {
    let f = signed_with_dkms_key("enabled");
    f.write("fake-mokutil/pending", "");
    let out = f.run(&["post-invoke"]);
    let want = "which is waiting to be enrolled: confirm it in MokManager at the next boot";
    assert_says(&out, 0, want);
}

/// Under `--root` the host's mokutil is never asked; the root's EFI
/// variable tells Secure Boot.
#[test]
fn under_root_the_efi_variable_of_the_root_tells_secure_boot() {
    let f = Fixture::pending();
    kernel_config(&f, "CONFIG_MODULE_SIG=y\n");
    f.write(
        "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-e398b6ce5aa4",
        [6u8, 0, 0, 0, 1],
    );
    let out = f
        .cmd(&["post-invoke"])
        .env_remove("DKMS_HOOK_MOKUTIL")
        .output()
        .unwrap();
    let e = stderr(&out);
    assert!(e.contains("is NOT SIGNED and Secure Boot is on"), "{e}");
    assert!(!f.path("mokutil-calls.log").exists());
}

/// A zstd frame of raw blocks with its content size: ruzstd 0.7 (Debian
/// 13's) only decodes.
fn zst(bytes: &[u8]) -> Vec<u8> {
    let mut b = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
    b.extend_from_slice(&u64::try_from(bytes.len()).unwrap().to_le_bytes());
    let blocks: Vec<&[u8]> = bytes.chunks(128 << 10).collect();
    for (i, block) in blocks.iter().enumerate() {
        let last = u32::from(i + 1 == blocks.len());
        let header = last | (u32::try_from(block.len()).unwrap() << 3);
        b.extend_from_slice(&header.to_le_bytes()[..3]);
        b.extend_from_slice(block);
    }
    b
}

#[test]
fn signatures_are_read_from_plain_xz_and_zstd_modules() {
    let f = Fixture::sample();
    f.run(&["sync"]);
    let k2 = "6.1.0-56-amd64";
    let plain = module(K, true);
    let mut xz = xz2::write::XzEncoder::new(Vec::new(), 6);
    std::io::Write::write_all(&mut xz, &plain).unwrap();
    let xz = xz.finish().unwrap();
    let zst = zst(&module(k2, false));
    for (kernel, bytes) in [(K, &xz), (k2, &zst)] {
        let ext = if kernel == K { "xz" } else { "zst" };
        for dir in [
            format!("usr/lib/modules/{kernel}/updates/dkms"),
            format!("var/lib/dkms/acpi-call/1.2.2/{kernel}/x86_64/module"),
        ] {
            std::fs::remove_file(f.path(&format!("{dir}/acpi_call.ko"))).unwrap();
            f.write(&format!("{dir}/acpi_call.ko.{ext}"), bytes);
        }
    }
    assert_eq!(f.status_row(K)["signed"], true, "xz, signed");
    assert_eq!(f.status_row(k2)["signed"], false, "zstd, unsigned");
    // Not a module at all: nothing can be told.
    f.write(
        &format!("usr/lib/modules/{k2}/updates/dkms/acpi_call.ko.zst"),
        "garbage",
    );
    assert_eq!(f.status_row(k2)["signed"], serde_json::Value::Null);
}

#[test]
fn a_module_for_another_kernel_is_broken_until_sync_rebuilds_it() {
    let f = Fixture::sample();
    f.run(&["sync"]);
    let wrong = module("6.1.0-99-amd64", false);
    f.write(KO, &wrong);
    f.write(BUILT, &wrong);
    let row = f.status_row(K);
    assert_eq!(row["state"], "broken");
    assert!(
        row["why"]
            .as_str()
            .unwrap()
            .contains("is for kernel 6.1.0-99-amd64"),
        "{row}"
    );
    assert_eq!(f.run(&["status", "--quiet"]).status.code(), Some(1));
    let out = f.run(&["sync"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(f.status_row(K)["state"], "fresh");
    assert!(String::from_utf8_lossy(&f.read(KO)).starts_with("rebuilt"));
}

/// Issue 15.6: under systemd (stderr is the journal) failures carry the
/// sd-daemon prefix for priority warning; progress lines do not.
#[test]
fn failures_reach_the_journal_at_priority_warning() {
    use std::os::unix::fs::MetadataExt;
    let f = Fixture::pending();
    f.fake_dkms("fail-acpi-call", "");
    let journal = f.path("journal");
    let file = std::fs::File::create(&journal).unwrap();
    let meta = file.metadata().unwrap();
    let status = f
        .cmd(&["boot"])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stderr(file)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let text = std::fs::read_to_string(&journal).unwrap();
    let failed = text.lines().find(|l| l.contains("FAILED")).expect(&text);
    assert!(failed.starts_with("<4>dkms-hook: "), "{text}");
    let progress = text
        .lines()
        .find(|l| l.contains("rebuilding"))
        .expect(&text);
    assert!(progress.starts_with("dkms-hook: "), "{text}");
    // Elsewhere (a terminal, apt) no prefix, even with JOURNAL_STREAM inherited.
    let out = f
        .cmd(&["retry"])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .output()
        .unwrap();
    let e = stderr(&out);
    assert!(e.contains("FAILED") && !e.contains("<4>"), "{e}");
}

/// Issue 15.5: the login notice names a module that will not load, from
/// the findings the last run kept (it reads no module file itself).
#[test]
fn the_login_notice_names_a_module_that_will_not_load() {
    let f = signing_kernel("enabled");
    f.run(&["post-invoke"]);
    let out = f.run(&["motd"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("dkms-hook: acpi-call/1.2.2 for {K} is NOT SIGNED and will not load after the reboot; see: dkms-hook status\n")
    );
    // Secure Boot turned off, the next run finds nothing: the notice is gone.
    f.write("fake-mokutil/sb", "disabled");
    f.run(&["sync"]);
    assert_eq!(f.run(&["motd"]).stdout, b"");
}

/// Issue 16: a module file is read again only when it changed; `status`
/// answers the same from the module-facts cache (written as root only).
#[test]
fn status_answers_the_same_from_the_module_facts_cache() {
    let f = signed_with_dkms_key("enabled");
    f.run(&["post-invoke"]);
    let cache = f.path("var/lib/dkms-hook/module-facts.json");
    let root = rustix::process::geteuid().is_root();
    assert_eq!(cache.exists(), root, "written by runs as root only");
    let from_cache = f.run(&["status", "--json"]).stdout;
    let _ = std::fs::remove_file(&cache);
    let read = f.run(&["status", "--json"]).stdout;
    assert_eq!(
        String::from_utf8_lossy(&from_cache),
        String::from_utf8_lossy(&read)
    );
    // A changed module is read again: its new vermagic shows.
    f.write(KO, module("6.1.0-99-amd64", true));
    assert_eq!(f.status_row(K)["state"], "broken");
}

/// Boot with nothing to do asks no firmware: queueing stale and broken
/// pairs reads module files only (mokutil and modinfo are for `status`).
#[test]
fn boot_with_nothing_to_do_runs_no_mokutil() {
    let f = signed_with_dkms_key("enabled");
    f.run(&["post-invoke"]);
    assert!(f.path("mokutil-calls.log").exists(), "post-invoke asked");
    std::fs::remove_file(f.path("mokutil-calls.log")).unwrap();
    let out = f.run(&["boot"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!f.path("mokutil-calls.log").exists());
}

/// Issue 22: module bombs. An xz bomb (300 MiB of zeros, 46 KB) and a
/// zstd frame asking for a 1 GiB window (3 GiB of RLE blocks, 98 KB) as
/// the installed modules: `status` in 256 MiB of address space refuses
/// both in one line each, and remembers the refusals (lzma-rs held the
/// whole xz output, ruzstd the whole window: both died here before).
#[test]
fn module_bombs_are_refused_in_bounded_memory_and_remembered() {
    use std::io::Write;
    let f = Fixture::sample();
    f.run(&["sync"]);
    let k2 = "6.1.0-56-amd64";
    let mut xz = xz2::write::XzEncoder::new(Vec::new(), 0);
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..300 {
        xz.write_all(&zeros).unwrap();
    }
    let xz = xz.finish().unwrap();
    let mut zst = vec![0x28, 0xb5, 0x2f, 0xfd, 0, (30 - 10) << 3];
    for i in 0..24 * 1024u32 {
        let last = u32::from(i + 1 == 24 * 1024);
        zst.extend_from_slice(&(last | 1 << 1 | 128 << 10 << 3).to_le_bytes()[..3]);
        zst.push(0);
    }
    assert!(xz.len() < 100_000 && zst.len() < 100_000);
    for (kernel, ext, bytes) in [(K, "xz", &xz), (k2, "zst", &zst)] {
        for dir in [
            format!("usr/lib/modules/{kernel}/updates/dkms"),
            format!("var/lib/dkms/acpi-call/1.2.2/{kernel}/x86_64/module"),
        ] {
            std::fs::remove_file(f.path(&format!("{dir}/acpi_call.ko"))).unwrap();
            f.write(&format!("{dir}/acpi_call.ko.{ext}"), bytes);
        }
    }
    let status = || {
        let mut cmd = f.cmd(&["status", "--json"]);
        crate::fixture::limit_address_space(&mut cmd, 256 << 20);
        let out = cmd.output().unwrap();
        assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        st["warnings"].to_string()
    };
    let w = status();
    for want in [
        format!("the installed module /usr/lib/modules/{K}/updates/dkms/acpi_call.ko.xz was not read (larger than 256 MiB decompressed)"),
        format!("the installed module /usr/lib/modules/{k2}/updates/dkms/acpi_call.ko.zst was not read (zstd: decoding needs 1024 MiB of memory, more than 128 MiB)"),
    ] {
        assert!(w.contains(&want), "{want}\n{w}");
    }
    if rustix::process::geteuid().is_root() {
        let cache = String::from_utf8(f.read("var/lib/dkms-hook/module-facts.json")).unwrap();
        assert_eq!(cache.matches("\"refused\"").count(), 2, "{cache}");
    }
    assert_eq!(status(), w, "the same from the cache");
}

/// Issue 22: `module-facts.json` was keyed by inode, size and mtime. A
/// module rewritten in place to name another kernel (same size), its mtime
/// put back as `touch -d` does, stayed `fresh` from the cache; without the
/// cache it is `broken`. The ctime, which cannot be set back, tells.
#[test]
fn a_module_rewritten_with_its_mtime_put_back_is_not_taken_from_the_cache() {
    let f = Fixture::sample();
    f.run(&["sync"]);
    f.write(KO, module(K, false));
    assert_eq!(f.status_row(K)["state"], "fresh");
    let cache = f.path("var/lib/dkms-hook/module-facts.json");
    assert_eq!(cache.exists(), rustix::process::geteuid().is_root());
    let before = std::fs::metadata(f.path(KO)).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let other = module("6.1.0-99-amd64", false);
    assert_eq!(other.len() as u64, before.len());
    std::fs::write(f.path(KO), &other).unwrap();
    crate::fixture::set_mtime(&f.path(KO), before.modified().unwrap());
    let row = f.status_row(K);
    assert_eq!(row["state"], "broken", "{row}");
    assert_eq!(f.run(&["status", "--quiet"]).status.code(), Some(1));
}
