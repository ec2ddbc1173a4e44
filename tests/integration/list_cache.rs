//! The file-list cache (`/var/lib/dkms-hook/file-lists.cache`): the same
//! answers with it and without it, stale entries noticed, corrupt and
//! hostile caches ignored, and runs as a user never writing it.

use std::os::unix::fs::symlink;
use std::process::Output;

use dkms_hook::inventory::Inventory;
use dkms_hook::kernel::CacheUse;
use dkms_hook::root::Root;

use crate::fixture::{stderr, Fixture};

const CACHE: &str = "var/lib/dkms-hook/file-lists.cache";

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Write the cache as a root run would (in-process, whoever runs the tests).
/// What any package change does to dpkg's info directory (a list added and
/// removed): edits in place are noticed with it, not before.
fn info_dir_changes(f: &Fixture) {
    let other = f.path("var/lib/dpkg/info/hello.list");
    std::fs::write(&other, "/.\n").unwrap();
    std::fs::remove_file(&other).unwrap();
}

fn write_cache(f: &Fixture) {
    Inventory::full_with(&Root::new(f.dir.path()), CacheUse::Refresh).unwrap();
    assert!(f.path(CACHE).is_file());
}

fn status(f: &Fixture) -> Output {
    let o = f
        .cmd(&["status", "--json"])
        .env("DKMS_HOOK_LOG", "debug")
        .output()
        .unwrap();
    assert!(o.status.code().is_some_and(|c| c < 3), "{}", stderr(&o));
    o
}

/// `status --json` through whatever cache there is, and again computed
/// from the lists alone: they must agree. Returns the first run.
fn agrees_with_the_lists(f: &Fixture) -> Output {
    let cached = status(f);
    let _ = std::fs::remove_file(f.path(CACHE));
    let plain = status(f);
    assert!(
        !stderr(&plain).contains("from the cache"),
        "{}",
        stderr(&plain)
    );
    assert_eq!(
        String::from_utf8_lossy(&cached.stdout),
        String::from_utf8_lossy(&plain.stdout)
    );
    cached
}

#[test]
fn status_is_the_same_with_and_without_the_cache() {
    for f in [Fixture::sample(), Fixture::pending()] {
        write_cache(&f);
        let o = agrees_with_the_lists(&f);
        assert!(
            stderr(&o).contains("12 of 12 lists from the cache"),
            "{}",
            stderr(&o)
        );
    }
}

/// A change to the fixture's file lists, given the kbuild list's path.
type ListChange = fn(&Fixture, &str);

#[test]
fn a_stale_cache_is_noticed() {
    let kbuild = "var/lib/dpkg/info/linux-kbuild-6.1.list";
    // Each change makes the kbuild list feed no kernel any more, keeping
    // what the change does not touch (size, mtime or inode) as it was.
    let changes: [(&str, ListChange); 5] = [
        ("same size and mtime, new inode", |f, p| {
            let old = std::fs::metadata(f.path(p)).unwrap();
            let new = vec![b'x'; usize::try_from(old.len()).unwrap()];
            f.write(&format!("{p}.new"), new);
            let n = f.path(&format!("{p}.new"));
            std::fs::File::options()
                .write(true)
                .open(&n)
                .unwrap()
                .set_modified(old.modified().unwrap())
                .unwrap();
            std::fs::rename(n, f.path(p)).unwrap();
        }),
        // Edits in place are noticed with the info directory's next change
        // (the cache's documented limit; dpkg never edits in place): without
        // one, whether the directory's key was recorded depends on how long
        // ago the fixture was made.
        (
            "edited in place, same mtime, then any package change",
            |f, p| {
                let old = std::fs::metadata(f.path(p)).unwrap();
                std::fs::write(f.path(p), "/.\n").unwrap();
                crate::fixture::set_mtime(&f.path(p), old.modified().unwrap());
                info_dir_changes(f);
            },
        ),
        ("same size, other mtime, then any package change", |f, p| {
            let len = std::fs::metadata(f.path(p)).unwrap().len();
            std::fs::write(f.path(p), vec![b'y'; usize::try_from(len).unwrap()]).unwrap();
            info_dir_changes(f);
        }),
        ("removed", |f, p| std::fs::remove_file(f.path(p)).unwrap()),
        ("another list added that feeds the kernel", |f, _| {
            f.package(
                "my-kbuild",
                "amd64",
                "1",
                &["/usr/lib/linux-kbuild-6.1/scripts/x"],
                "2026-11-23T21:00:00Z",
            );
        }),
    ];
    for (what, change) in changes {
        let f = Fixture::sample();
        let before = status(&f);
        write_cache(&f);
        change(&f, kbuild);
        let after = agrees_with_the_lists(&f);
        assert_ne!(
            before.stdout, after.stdout,
            "{what}: the change changes nothing"
        );
        assert!(
            !stderr(&after).contains("12 of 12"),
            "{what}: {}",
            stderr(&after)
        );
    }
}

#[test]
fn corrupt_and_hostile_caches_are_ignored() {
    let f = Fixture::sample();
    let good = status(&f).stdout;
    write_cache(&f);
    let real = f.read(CACHE);
    let mut cut = real.clone();
    cut.truncate(real.len() / 2);
    let mut flipped = real.clone();
    flipped[60] ^= 0x20;
    let huge = vec![b'l'; 17 << 20];
    for bad in [
        &b""[..],
        b"\0\0\0",
        &cut,
        &flipped,
        b"\xff\xfe garbage\n",
        &huge,
    ] {
        std::fs::remove_file(f.path(CACHE)).unwrap();
        f.write(CACHE, bad);
        let o = status(&f);
        assert_eq!(o.stdout, good, "{}", stderr(&o));
        assert!(!stderr(&o).contains("from the cache"));
    }
    // A link is not followed, whatever it points to.
    let elsewhere = f.path("elsewhere");
    std::fs::write(&elsewhere, &real).unwrap();
    std::fs::remove_file(f.path(CACHE)).unwrap();
    symlink(&elsewhere, f.path(CACHE)).unwrap();
    let o = status(&f);
    assert_eq!(o.stdout, good);
    assert!(!stderr(&o).contains("from the cache"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&elsewhere).unwrap(), real);
}

#[test]
fn a_read_only_run_never_writes_the_cache() {
    let f = Fixture::sample();
    let root = Root::new(f.dir.path());
    Inventory::full_with(&root, CacheUse::Read).unwrap();
    assert!(!f.path(CACHE).exists());
    assert!(!f.path("var/lib/dkms-hook").exists());
    // A stale cache is left as it is.
    write_cache(&f);
    f.write(CACHE, b"stale");
    Inventory::full_with(&root, CacheUse::Read).unwrap();
    assert_eq!(f.read(CACHE), b"stale");
    // The binary: as a user, `status` reads only; as root it refreshes.
    std::fs::remove_file(f.path(CACHE)).unwrap();
    status(&f);
    assert_eq!(f.path(CACHE).exists(), is_root());
}

#[test]
fn post_invoke_as_root_refreshes_the_cache() {
    let f = Fixture::pending();
    let _ = std::fs::remove_file(f.path(CACHE));
    f.run(&["post-invoke"]);
    assert_eq!(f.path(CACHE).exists(), is_root());
    if is_root() {
        let o = status(&f);
        assert!(
            stderr(&o).contains("12 of 12 lists from the cache"),
            "{}",
            stderr(&o)
        );
    }
}

/// After dpkg changed packages, post-invoke looks at their lists only: the
/// cache then holds what the lists say, and every list is a hit again.
#[test]
fn the_changed_packages_lists_are_refreshed() {
    use dkms_hook::change::Change;
    use dkms_hook::dpkg::PackageName;
    let f = Fixture::sample();
    let root = Root::new(f.dir.path());
    write_cache(&f);
    std::fs::write(f.path("var/lib/dpkg/info/linux-kbuild-6.1.list"), "/.\n").unwrap();
    std::fs::remove_file(f.path("var/lib/dpkg/info/hello.list")).unwrap();
    let changed: Vec<Change> = ["linux-kbuild-6.1", "hello"]
        .iter()
        .map(|p| {
            Change::planned(
                PackageName::new(p).unwrap(),
                Some("amd64".into()),
                None,
                None,
            )
        })
        .collect();
    let kernels = Inventory::full_with(&root, CacheUse::Read).unwrap().kernels;
    dkms_hook::kernel::refresh_list_cache(&root, &kernels, &changed).unwrap();
    let o = agrees_with_the_lists(&f);
    assert!(
        stderr(&o).contains("11 of 11 lists from the cache"),
        "{}",
        stderr(&o)
    );
}

/// Wait until the info directory's last change is settled
/// (`list_cache::SETTLED`), then write the cache as a root run would: it
/// records the directory's key.
fn write_settled_cache(f: &Fixture) {
    std::thread::sleep(dkms_hook::kernel::list_cache::SETTLED * 3);
    write_cache(f);
    let o = status(f);
    assert!(
        stderr(&o).contains("12 of 12 lists from the cache, none stat'ed"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn status_from_an_unchanged_info_directory_looks_at_no_list() {
    for f in [Fixture::sample(), Fixture::pending()] {
        write_settled_cache(&f);
        agrees_with_the_lists(&f);
    }
}

/// Each way dpkg changes a file list (lib/dpkg/db-fsys-files.c,
/// atomic-file.c, db-ctrl-upgrade.c, src/main/remove.c): a new list
/// written as `P.list-new` and renamed over `P.list`, a list removed, a
/// list renamed to its multiarch name, a new package's list added. Each is
/// noticed although no list is stat'ed while the directory is unchanged.
/// The replaced list keeps its size and mtime, so only the directory tells.
#[test]
fn every_change_dpkg_makes_to_the_lists_is_noticed() {
    let info = "var/lib/dpkg/info";
    let kbuild = "var/lib/dpkg/info/linux-kbuild-6.1.list";
    let changes: [(&str, ListChange); 4] = [
        ("written to P.list-new and renamed over P.list", |f, p| {
            let old = std::fs::metadata(f.path(p)).unwrap();
            let new = format!("{p}-new");
            f.write(&new, vec![b'x'; usize::try_from(old.len()).unwrap()]);
            crate::fixture::set_mtime(&f.path(&new), old.modified().unwrap());
            std::fs::rename(f.path(&new), f.path(p)).unwrap();
        }),
        ("removed (purge)", |f, p| {
            std::fs::remove_file(f.path(p)).unwrap()
        }),
        ("renamed to its multiarch name", |f, p| {
            let to = p.replace(".list", ":amd64.list");
            std::fs::rename(f.path(p), f.path(&to)).unwrap();
            // …and the new name's list feeds nothing any more.
            let new = format!("{to}-new");
            f.write(&new, "/.\n");
            std::fs::rename(f.path(&new), f.path(&to)).unwrap();
        }),
        ("a new package's list that feeds the kernel", |f, _| {
            let new = "var/lib/dpkg/info/my-kbuild.list-new";
            f.write(new, "/.\n/usr\n/usr/lib\n/usr/lib/linux-kbuild-6.1\n/usr/lib/linux-kbuild-6.1/scripts/x\n");
            std::fs::rename(f.path(new), f.path("var/lib/dpkg/info/my-kbuild.list")).unwrap();
        }),
    ];
    for (what, change) in changes {
        let f = Fixture::sample();
        f.package(
            "my-kbuild",
            "amd64",
            "1",
            &["/usr/lib/linux-kbuild-6.1/scripts/x"],
            "2026-11-23T21:00:00Z",
        );
        std::fs::remove_file(f.path(&format!("{info}/my-kbuild.list"))).unwrap();
        write_settled_cache(&f);
        let before = status(&f);
        change(&f, kbuild);
        let after = agrees_with_the_lists(&f);
        assert_ne!(
            before.stdout, after.stdout,
            "{what}: the change changes nothing"
        );
        assert!(
            !stderr(&after).contains("none stat'ed"),
            "{what}: {}",
            stderr(&after)
        );
    }
}

/// What the directory's key does not see, as documented in
/// `kernel::list_cache`: a list edited in place (dpkg never does that). The
/// next change dpkg makes in the directory brings it to light.
#[test]
fn a_list_edited_in_place_is_noticed_with_the_next_change_of_the_directory() {
    let f = Fixture::sample();
    let truth = status(&f).stdout;
    write_settled_cache(&f);
    let kbuild = f.path("var/lib/dpkg/info/linux-kbuild-6.1.list");
    let old = std::fs::metadata(&kbuild).unwrap();
    std::fs::write(&kbuild, vec![b'y'; usize::try_from(old.len()).unwrap()]).unwrap();
    crate::fixture::set_mtime(&kbuild, old.modified().unwrap());
    let unseen = status(&f);
    assert!(
        stderr(&unseen).contains("none stat'ed"),
        "{}",
        stderr(&unseen)
    );
    assert_eq!(unseen.stdout, truth, "the edit is not seen yet");
    // dpkg installs a package: its list is renamed into the directory.
    f.write(
        "var/lib/dpkg/info/other.list-new",
        "/.\n/usr/share/doc/other\n",
    );
    std::fs::rename(
        f.path("var/lib/dpkg/info/other.list-new"),
        f.path("var/lib/dpkg/info/other.list"),
    )
    .unwrap();
    let seen = agrees_with_the_lists(&f);
    assert_ne!(seen.stdout, truth, "the edit is seen now");
}
