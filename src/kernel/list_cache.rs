//! A cache of what dpkg's file lists say about the build trees: for each
//! list, keyed by its (inode, size, mtime, ctime), the kernels whose build
//! tree it feeds and in which role (what [`super::roles_of`] found in it);
//! and the key of dpkg's info directory itself when every entry was last
//! checked. With it, `status` on 6,000 packages neither opens nor stats a
//! list while the directory is unchanged, and stats each one (reading only
//! those that changed) once it changed (docs/benchmarks.md).
//!
//! `/var/lib/dkms-hook/file-lists.cache`, one record a line:
//!
//! ```text
//! dkms-hook file-lists cache 2
//! trees 1234567890123456789
//! info DEV INO CTIME_SECS CTIME_NANOS MTIME_SECS MTIME_NANOS
//! l linux-kbuild-6.1.list INO SIZE MTIME_SECS MTIME_NANOS CTIME_SECS CTIME_NANOS 6.1.0-10-amd64=kbuild
//! l libfoo1:amd64.list INO SIZE MTIME_SECS MTIME_NANOS CTIME_SECS CTIME_NANOS
//! end 9876543210
//! ```
//!
//! `trees` is a hash of the build trees the lists were searched for: when a
//! kernel comes or goes, or a tree moves, the whole cache is stale. `info`
//! (or `info -`) is the info directory's key. `end` is a hash of every byte
//! before it, so a cut or damaged file is noticed.
//!
//! **The directory's key.** dpkg never writes a `.list` in place: it
//! writes `P.list-new` and renames it over `P.list` (`write_filelist_except`
//! through `atomic_file_commit`, lib/dpkg/db-fsys-files.c and
//! atomic-file.c, dpkg 1.21 of Debian 12 to 1.23), and removes a list with
//! `unlink` (src/main/remove.c, and unpack.c when a package disappears).
//! Each of these changes the directory's ctime and mtime; so does every
//! other way to add, replace, rename or remove an entry. While the
//! directory's device, inode, ctime and mtime are those recorded, the
//! lists are the ones whose entries were checked then, and nothing is
//! stat'ed. ctime cannot be set back (only the clock can), so `touch -d` on
//! the directory does not make an old key match again. What this does not
//! notice is a list edited in place (written through its open file, which
//! changes only the list's own times): dpkg never does that; after a hand
//! edit, the next change of the directory (any package installed, upgraded
//! or removed) makes every list be stat'ed and the edited one read again.
//! The key is recorded only when the directory stayed the same while the
//! lists were checked and its last change is older than [`SETTLED`]: a
//! change in the same clock tick as the one recorded would keep the ctime.
//!
//! Written through the no-follow state directory, by runs as root only;
//! read by every run that reads all lists, as untrusted input: capped,
//! every number, name, kernel and role checked. A cache that is missing,
//! too large, corrupt, hostile or stale is ignored with one debug line,
//! and the lists are read; one stale entry only makes its list be read.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use super::{Kernel, KernelRelease, Role};
use crate::root::{Root, CAP_STATE};
use crate::Error;

/// The cache's file name in the state directory.
pub const FILE: &str = "file-lists.cache";
const MAGIC: &str = "dkms-hook file-lists cache 2";

/// How long ago the info directory must have last changed for its key to
/// be recorded: longer than a tick of the kernel's coarse clock, which
/// stamps file times (at most 10 ms), and than a second on file systems
/// that keep whole seconds only.
pub const SETTLED: Duration = Duration::from_millis(50);
const SETTLED_WHOLE_SECONDS: Duration = Duration::from_secs(2);

/// What identifies one version of a file list: dpkg replaces a list by
/// renaming a new one over it (a new inode), and an edit in place changes
/// its size, mtime or ctime (which cannot be set back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub ino: u64,
    pub size: u64,
    pub secs: i64,
    pub nanos: u32,
    pub ctime_secs: i64,
    pub ctime_nanos: u32,
}

impl Meta {
    /// The list's metadata from a stat, if it is a regular file (a link or
    /// FIFO as a list is never cached: reading it says what it is).
    pub fn of(st: &rustix::fs::Stat) -> Option<Meta> {
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
            return None;
        }
        Some(Meta {
            ino: st.st_ino,
            size: u64::try_from(st.st_size).ok()?,
            // rustix 0.38 holds the kernel's unsigned long: the bits are the signed time.
            secs: st.st_mtime as i64,
            nanos: u32::try_from(st.st_mtime_nsec).ok()?,
            ctime_secs: st.st_ctime as i64,
            ctime_nanos: u32::try_from(st.st_ctime_nsec).ok()?,
        })
    }

    /// The mtime: when dpkg last unpacked the package.
    pub fn modified(&self) -> Option<SystemTime> {
        time_of(self.secs, self.nanos)
    }
}

fn time_of(secs: i64, nanos: u32) -> Option<SystemTime> {
    let t = if secs >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    };
    t?.checked_add(Duration::from_nanos(u64::from(nanos)))
}

/// What identifies one state of dpkg's info directory: every entry
/// created, renamed over, renamed away or removed changes its ctime and
/// mtime (see the module's comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirKey {
    pub dev: u64,
    pub ino: u64,
    pub ctime_secs: i64,
    pub ctime_nanos: u32,
    pub mtime_secs: i64,
    pub mtime_nanos: u32,
}

impl DirKey {
    /// The key of the directory at `path` (a host path), if it is one.
    pub fn of(path: &std::path::Path) -> Option<DirKey> {
        let st = rustix::fs::stat(path).ok()?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Directory {
            return None;
        }
        Some(DirKey {
            dev: st.st_dev,
            ino: st.st_ino,
            ctime_secs: st.st_ctime as i64,
            ctime_nanos: u32::try_from(st.st_ctime_nsec).ok()?,
            mtime_secs: st.st_mtime as i64,
            mtime_nanos: u32::try_from(st.st_mtime_nsec).ok()?,
        })
    }

    /// Whether the directory's last change was long enough before `now`
    /// that a change after `now` gets another ctime (see [`SETTLED`]).
    pub fn settled(&self, now: SystemTime) -> bool {
        let margin = if self.ctime_nanos == 0 {
            SETTLED_WHOLE_SECONDS
        } else {
            SETTLED
        };
        time_of(self.ctime_secs, self.ctime_nanos)
            .and_then(|c| c.checked_add(margin))
            .is_some_and(|c| c < now)
    }
}

/// What a list says: the kernels it feeds, with the role.
pub type Roles = Vec<(KernelRelease, Role)>;

/// One list as cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The list's file name in dpkg's info directory.
    pub name: String,
    pub meta: Meta,
    pub roles: Roles,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListCache {
    trees: u64,
    /// The info directory's key when every entry was checked against its
    /// list; `None` after a partial refresh or when it kept changing.
    info: Option<DirKey>,
    /// In the order of the lists when written: `dpkg::all_lists`'s order,
    /// so an unchanged directory is matched entry by entry, without a hash.
    entries: Vec<Entry>,
}

/// How the lists of this run find their entries: by position while the
/// directory listing is the one cached, by name once it changed.
pub struct Lookup<'a> {
    cache: &'a ListCache,
    by_name: Option<HashMap<&'a str, usize>>,
}

impl Lookup<'_> {
    /// What list number `i`, named `name`, said, if it is still the version
    /// cached.
    pub fn get(&self, i: usize, name: &str, meta: &Meta) -> Option<&Roles> {
        let j = match &self.by_name {
            None => i,
            Some(m) => *m.get(name)?,
        };
        let e = self.cache.entries.get(j)?;
        (e.name == name && e.meta == *meta).then_some(&e.roles)
    }

    /// Whether the directory lists exactly the lists cached, in order.
    pub fn same_listing(&self) -> bool {
        self.by_name.is_none()
    }
}

impl ListCache {
    /// A cache for the build trees of `kernels`, of `entries` in the order
    /// of the lists.
    pub fn new(kernels: &[Kernel], info: Option<DirKey>, entries: Vec<Entry>) -> ListCache {
        ListCache {
            trees: trees_key(kernels),
            info,
            entries,
        }
    }

    /// The entries, if the info directory is still as it was when every
    /// one of them was checked (its key is `now`): then they are what the
    /// lists say, without a look at any list.
    pub fn if_unchanged(&self, now: Option<DirKey>) -> Option<&[Entry]> {
        (self.info.is_some() && self.info == now).then_some(&self.entries[..])
    }

    /// The info directory's key recorded with the entries.
    pub fn info(&self) -> Option<DirKey> {
        self.info
    }

    /// Forget the directory's key: the entries were not all checked.
    pub fn set_info(&mut self, info: Option<DirKey>) {
        self.info = info;
    }

    /// The lookup for this run's lists, `names` in their order.
    pub fn lookup<'a>(&'a self, names: &[&str]) -> Lookup<'a> {
        let same = names.len() == self.entries.len()
            && names.iter().zip(&self.entries).all(|(n, e)| *n == e.name);
        Lookup {
            cache: self,
            by_name: (!same).then(|| {
                self.entries
                    .iter()
                    .enumerate()
                    .map(|(j, e)| (e.name.as_str(), j))
                    .collect()
            }),
        }
    }

    /// Replace or add the entries `upserts` and drop those named in
    /// `removed`, keeping `dpkg::all_lists`'s order. Whether anything
    /// changed.
    pub fn update(&mut self, upserts: Vec<Entry>, removed: &[&str]) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| !removed.contains(&e.name.as_str()));
        let mut changed = self.entries.len() != before;
        let index: HashMap<String, usize> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        for u in upserts {
            match index.get(&u.name) {
                Some(&i) if self.entries[i] == u => {}
                Some(&i) => {
                    self.entries[i] = u;
                    changed = true;
                }
                None => {
                    self.entries.push(u);
                    changed = true;
                }
            }
        }
        if changed {
            self.entries
                .sort_by(|a, b| order_key(&a.name).cmp(&order_key(&b.name)));
        }
        changed
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        use std::fmt::Write;
        let mut out = format!("{MAGIC}\ntrees {}\n", self.trees);
        match &self.info {
            Some(d) => {
                let _ = writeln!(
                    out,
                    "info {} {} {} {} {} {}",
                    d.dev, d.ino, d.ctime_secs, d.ctime_nanos, d.mtime_secs, d.mtime_nanos
                );
            }
            None => out.push_str("info -\n"),
        }
        for e in &self.entries {
            let m = &e.meta;
            let _ = write!(
                out,
                "l {} {} {} {} {} {} {}",
                e.name, m.ino, m.size, m.secs, m.nanos, m.ctime_secs, m.ctime_nanos
            );
            for (k, role) in &e.roles {
                let _ = write!(out, " {k}={}", role_word(*role));
            }
            out.push('\n');
        }
        let sum = fnv1a(out.as_bytes());
        let _ = writeln!(out, "end {sum}");
        out.into_bytes()
    }

    /// Parse the file's bytes, for the build trees of `kernels`. Any flaw
    /// rejects the whole file, with the reason.
    pub fn parse(data: &[u8], kernels: &[Kernel]) -> Result<ListCache, String> {
        let text = std::str::from_utf8(data).map_err(|_| "not UTF-8".to_string())?;
        let body_len = text
            .strip_suffix('\n')
            .and_then(|t| t.rfind('\n'))
            .map(|i| i + 1)
            .ok_or("no end line")?;
        let (body, end) = text.split_at(body_len);
        let sum: u64 = end
            .strip_prefix("end ")
            .and_then(|s| s.trim_end_matches('\n').parse().ok())
            .ok_or("no end line")?;
        if sum != fnv1a(body.as_bytes()) {
            return Err("checksum mismatch".into());
        }
        let mut lines = body.lines();
        if lines.next() != Some(MAGIC) {
            return Err("not a file-lists cache of this version".into());
        }
        let trees: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("trees "))
            .and_then(|n| n.parse().ok())
            .ok_or("no trees line")?;
        if trees != trees_key(kernels) {
            return Err("built for other build trees".into());
        }
        let info = lines
            .next()
            .and_then(|l| l.strip_prefix("info "))
            .and_then(parse_dir_key)
            .ok_or("no info line")?;
        let mut entries = Vec::new();
        for (i, line) in lines.enumerate() {
            entries.push(parse_entry(line, kernels).ok_or_else(|| format!("bad entry {}", i + 1))?);
        }
        let mut names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err("a list is named twice".into());
        }
        Ok(ListCache {
            trees,
            info,
            entries,
        })
    }
}

/// `-` (no key) or `DEV INO CTIME_SECS CTIME_NANOS MTIME_SECS MTIME_NANOS`.
fn parse_dir_key(text: &str) -> Option<Option<DirKey>> {
    if text == "-" {
        return Some(None);
    }
    let mut w = text.split(' ');
    let nanos = |w: Option<&str>| w?.parse().ok().filter(|n| *n < 1_000_000_000);
    let key = DirKey {
        dev: w.next()?.parse().ok()?,
        ino: w.next()?.parse().ok()?,
        ctime_secs: w.next()?.parse().ok()?,
        ctime_nanos: nanos(w.next())?,
        mtime_secs: w.next()?.parse().ok()?,
        mtime_nanos: nanos(w.next())?,
    };
    w.next().is_none().then_some(Some(key))
}

/// Where a list's file name sorts in `dpkg::all_lists`: by package, then
/// architecture (none first).
fn order_key(name: &str) -> (&str, Option<&str>, &str) {
    let stem = name.strip_suffix(".list").unwrap_or(name);
    match stem.split_once(':') {
        Some((p, a)) => (p, Some(a), name),
        None => (stem, None, name),
    }
}

/// `l NAME INO SIZE SECS NANOS [RELEASE=ROLE]...`, every part checked.
fn parse_entry(line: &str, kernels: &[Kernel]) -> Option<Entry> {
    let mut w = line.strip_prefix("l ")?.split(' ');
    let name = w.next()?;
    // A list's own file name: what `dpkg::all_lists` accepts.
    let stem = name.strip_suffix(".list")?;
    if stem.is_empty() || name.len() > 255 || !name.bytes().all(|c| c.is_ascii_graphic()) {
        return None;
    }
    if name.contains('/') {
        return None;
    }
    let nanos = |w: Option<&str>| w?.parse().ok().filter(|n| *n < 1_000_000_000);
    let meta = Meta {
        ino: w.next()?.parse().ok()?,
        size: w.next()?.parse().ok()?,
        secs: w.next()?.parse().ok()?,
        nanos: nanos(w.next())?,
        ctime_secs: w.next()?.parse().ok()?,
        ctime_nanos: nanos(w.next())?,
    };
    let mut roles = Roles::new();
    for r in w {
        let (k, role) = r.split_once('=')?;
        let k = kernels.iter().find(|x| x.release.as_str() == k)?;
        let role = match role {
            "headers" => Role::Headers,
            "kbuild" => Role::Kbuild,
            "compiler" => Role::Compiler,
            _ => return None,
        };
        roles.push((k.release.clone(), role));
    }
    Some(Entry {
        name: name.to_string(),
        meta,
        roles,
    })
}

fn role_word(r: Role) -> &'static str {
    match r {
        Role::Headers => "headers",
        Role::Kbuild => "kbuild",
        Role::Compiler => "compiler",
    }
}

/// A hash of every build-tree directory (and alias) of every kernel, with
/// its role: what the lists were searched for.
fn trees_key(kernels: &[Kernel]) -> u64 {
    let mut d = Vec::new();
    for k in kernels {
        d.extend_from_slice(k.release.as_str().as_bytes());
        d.push(0);
        for t in &k.tree {
            d.extend_from_slice(role_word(t.role).as_bytes());
            for n in t.names() {
                d.push(0);
                d.extend_from_slice(crate::root::path_bytes(n));
            }
            d.push(1);
        }
        d.push(2);
    }
    fnv1a(&d)
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The cache of this root, if there is a usable one for these build trees.
/// Changes nothing on disk.
pub fn load(root: &Root, kernels: &[Kernel]) -> Option<ListCache> {
    let dir = crate::state_dir::open_existing_in(root)?;
    let path = dir.path().join(FILE);
    let data = match dir.read_only(FILE, CAP_STATE) {
        Ok(Some(d)) => d,
        Ok(None) => return None,
        Err(e) => {
            log::debug!("{e}; file lists are read instead");
            return None;
        }
    };
    match ListCache::parse(&data, kernels) {
        Ok(c) => Some(c),
        Err(why) => {
            log::debug!("{}: ignored: {why}", path.display());
            None
        }
    }
}

/// Write the cache into the state directory (root runs only), without
/// fsync: a cache lost or cut in a crash only costs reading the lists.
pub fn save(root: &Root, cache: &ListCache) -> Result<(), Error> {
    crate::state_dir::open_in(root)?.write_unsynced(FILE, &cache.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    use crate::kernel::TreeDir;

    fn kernels() -> Vec<Kernel> {
        vec![Kernel {
            release: KernelRelease::new("6.1.0-10-amd64").unwrap(),
            image: true,
            build_link: None,
            tree: vec![TreeDir {
                path: PathBuf::from("/usr/lib/linux-kbuild-6.1"),
                role: Role::Kbuild,
                also: vec![],
            }],
            compiler: None,
        }]
    }

    fn sample() -> ListCache {
        let ks = kernels();
        let meta = Meta {
            ino: 12,
            size: 3400,
            secs: 1_767_225_600,
            nanos: 5,
            ctime_secs: 1_767_225_601,
            ctime_nanos: 7,
        };
        let entry = |name: &str, meta, roles| Entry {
            name: name.into(),
            meta,
            roles,
        };
        let kb = vec![(ks[0].release.clone(), Role::Kbuild)];
        ListCache::new(
            &ks,
            Some(DirKey {
                dev: 65024,
                ino: 2,
                ctime_secs: 1_767_225_602,
                ctime_nanos: 8,
                mtime_secs: 1_767_225_602,
                mtime_nanos: 8,
            }),
            vec![
                entry("linux-kbuild-6.1.list", meta, kb),
                entry("libfoo1:amd64.list", Meta { ino: 13, ..meta }, vec![]),
            ],
        )
    }

    #[test]
    fn round_trip() {
        let c = sample();
        assert_eq!(ListCache::parse(&c.to_bytes(), &kernels()), Ok(c));
    }

    #[test]
    fn a_stale_entry_is_a_miss() {
        let c = sample();
        let m = c.entries[0].meta;
        let name = "linux-kbuild-6.1.list";
        let same = c.lookup(&[name, "libfoo1:amd64.list"]);
        assert!(same.same_listing());
        assert!(same.get(0, name, &m).is_some());
        for other in [
            Meta { ino: 99, ..m },
            Meta { size: 1, ..m },
            Meta { secs: 1, ..m },
            Meta { nanos: 6, ..m },
            Meta {
                ctime_secs: 1_767_225_700,
                ..m
            },
            Meta {
                ctime_nanos: 9,
                ..m
            },
        ] {
            assert!(same.get(0, name, &other).is_none(), "{other:?}");
        }
        // A list added before it: found by name.
        let added = c.lookup(&["a.list", name, "libfoo1:amd64.list"]);
        assert!(!added.same_listing());
        assert!(added.get(0, "a.list", &m).is_none());
        assert!(added.get(1, name, &m).is_some());
        // A list removed.
        let removed = c.lookup(&["libfoo1:amd64.list"]);
        assert!(!removed.same_listing());
        assert!(removed
            .get(0, "libfoo1:amd64.list", &Meta { ino: 13, ..m })
            .is_some());
    }

    #[test]
    fn updates_keep_the_order_of_the_listing() {
        let mut c = sample();
        let m = c.entries[0].meta;
        let e = |name: &str| Entry {
            name: name.into(),
            meta: m,
            roles: vec![],
        };
        assert!(!c.update(vec![c.entries[0].clone()], &[]));
        assert!(c.update(
            vec![e("a.list"), e("libfoo1.list"), e("zz:i386.list")],
            &["linux-kbuild-6.1.list"]
        ));
        let names: Vec<&str> = c.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "a.list",
                "libfoo1.list",
                "libfoo1:amd64.list",
                "zz:i386.list"
            ]
        );
        assert!(c.lookup(&names).same_listing());
        assert!(!c.update(vec![], &["gone.list"]));
    }

    #[test]
    fn other_build_trees_make_it_stale() {
        let mut ks = kernels();
        ks[0].tree[0].path = PathBuf::from("/usr/lib/linux-kbuild-6.12");
        assert!(ListCache::parse(&sample().to_bytes(), &ks).is_err());
        assert!(ListCache::parse(&sample().to_bytes(), &[]).is_err());
    }

    /// Rewrite the body of a valid cache and fix its checksum, as someone
    /// who can write the file could.
    fn forged(body: &str) -> Vec<u8> {
        format!("{body}end {}\n", fnv1a(body.as_bytes())).into_bytes()
    }

    #[test]
    fn corrupt_and_hostile_caches_are_refused() {
        let good = sample().to_bytes();
        let text = String::from_utf8(good.clone()).unwrap();
        let body = &text[..text.rfind("end ").unwrap()];
        let head = body.lines().take(3).collect::<Vec<_>>().join("\n") + "\n";
        let trees = body.lines().take(2).collect::<Vec<_>>().join("\n") + "\n";
        let mut flipped = good.clone();
        flipped[40] ^= 1;
        let bad = vec![
            Vec::new(),
            b"\0\0\0\0".to_vec(),
            good[..good.len() - 1].to_vec(),
            good[..good.len() / 2].to_vec(),
            flipped,
            b"\xff\xfe".to_vec(),
            forged("dkms-hook file-lists cache 3\ntrees 1\ninfo -\n"),
            // Version 1 (no ctimes, no directory key) is not read.
            forged(&format!(
                "{}l x.list 1 2 3 4\n",
                trees.replace("cache 2", "cache 1")
            )),
        ];
        let forged_entries = [
            "l ../../etc/shadow.list 1 2 3 4 5 6",
            "l a/b.list 1 2 3 4 5 6",
            "l x.list 1 2 3 4",
            "l x.list 1 2 3 4 5 6 7",
            "l x.list 99999999999999999999999 2 3 4 5 6",
            "l x.list 1 -2 3 4 5 6",
            "l x.list 1 2 3 1000000000 5 6",
            "l x.list 1 2 3 4 5 1000000000",
            "l x.list 1 2 3 4 5 6 6.1.0-99-amd64=headers",
            "l x.list 1 2 3 4 5 6 6.1.0-10-amd64=root",
            "l x.list 1 2 3 4 5 6 ../x=headers",
            "l x.list 1 2 3 4 5 6\nl x.list 1 2 3 4 5 6",
            "l notalist 1 2 3 4 5 6",
            "rm -rf /",
        ];
        let forged_infos = [
            "",
            "info",
            "info 1 2 3 4 5",
            "info 1 2 3 4 5 6 7",
            "info 1 2 3 1000000000 5 6",
            "info 1 2 3 4 5 1000000000",
            "info -1 2 3 4 5 6",
            "info x",
        ];
        let bad = bad
            .into_iter()
            .chain(
                forged_entries
                    .iter()
                    .map(|e| forged(&format!("{head}{e}\n"))),
            )
            .chain(
                forged_infos
                    .iter()
                    .map(|i| forged(&format!("{trees}{i}\nl x.list 1 2 3 4 5 6\n"))),
            );
        for b in bad {
            assert!(
                ListCache::parse(&b, &kernels()).is_err(),
                "{:?}",
                String::from_utf8_lossy(&b)
            );
        }
        // The forging itself is sound: a well-formed forged body parses.
        for info in ["info -", "info 1 2 3 4 5 6"] {
            let c = ListCache::parse(
                &forged(&format!("{trees}{info}\nl x.list 1 2 3 4 5 6\n")),
                &kernels(),
            );
            assert!(c.is_ok(), "{info}");
        }
    }

    #[test]
    fn the_entries_are_used_unseen_only_with_the_directory_key_they_were_checked_under() {
        let c = sample();
        let key = c.info().unwrap();
        assert_eq!(c.if_unchanged(Some(key)).map(<[Entry]>::len), Some(2));
        for other in [
            DirKey {
                ctime_nanos: 9,
                ..key
            },
            DirKey {
                ctime_secs: key.ctime_secs + 1,
                ..key
            },
            DirKey {
                mtime_nanos: 9,
                ..key
            },
            DirKey { ino: 3, ..key },
            DirKey { dev: 1, ..key },
        ] {
            assert!(c.if_unchanged(Some(other)).is_none(), "{other:?}");
        }
        assert!(c.if_unchanged(None).is_none());
        let mut unkeyed = c.clone();
        unkeyed.set_info(None);
        assert!(unkeyed.if_unchanged(None).is_none());
        let back = ListCache::parse(&unkeyed.to_bytes(), &kernels()).unwrap();
        assert_eq!(back.info(), None);
    }

    #[test]
    fn a_directory_that_just_changed_is_not_settled() {
        let t = |secs: i64, nanos: u32| DirKey {
            dev: 1,
            ino: 2,
            ctime_secs: secs,
            ctime_nanos: nanos,
            mtime_secs: secs,
            mtime_nanos: nanos,
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(t(999_999, 900_000_000).settled(now));
        assert!(!t(999_999, 990_000_000).settled(now));
        assert!(!t(1_000_001, 5).settled(now));
        // Whole seconds only (a file system that keeps no more): two of them.
        assert!(!t(999_999, 0).settled(now));
        assert!(t(999_997, 0).settled(now));
        assert!(!t(i64::MAX, 1).settled(now));
    }

    #[test]
    fn mtimes_before_the_epoch_do_not_panic() {
        let m = Meta {
            ino: 1,
            size: 1,
            secs: i64::MIN,
            nanos: 999_999_999,
            ctime_secs: i64::MIN,
            ctime_nanos: 999_999_999,
        };
        let _ = m.modified();
        let m = Meta {
            secs: i64::MAX,
            ..m
        };
        let _ = m.modified();
    }
}
