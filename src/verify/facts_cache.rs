//! A cache of what installed module files say (vermagic, signature), keyed
//! by each file's in-root path and its (device, inode, size, mtime, ctime):
//! the ctime, which no one can set back (`touch -d` sets the mtime, and
//! changes the ctime), catches a module rewritten in place with its mtime
//! restored, which an (inode, size, mtime) key took for the same file.
//! `status`, the textfile and the login notice's findings read a module
//! again only when it changed, not 100 MB of `nvidia.ko.xz` per kernel each time.
//!
//! `/var/lib/dkms-hook/module-facts.json`, written atomically through the
//! no-follow state directory by runs as root only; read by every run as
//! untrusted input: capped, each record checked (an absolute in-root path
//! without `..`, a short printable vermagic), a bad record dropped, a bad
//! file ignored with one debug line. Records of files not looked at in a
//! run are kept while their file exists, at most [`MAX_RECORDS`].

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{read_facts, ModuleFacts, MAX_VERMAGIC};
use crate::root::{open_regular, Root, CAP_STATE};
use crate::Error;

/// The cache's file name in the state directory.
pub const FILE: &str = "module-facts.json";
/// 2: keyed on the device and the ctime too; records of 1 are not trusted.
const VERSION: u32 = 2;
const MAX_RECORDS: usize = 4096;
/// A refusal's reason longer than this is not one of ours.
const MAX_REFUSAL: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    path: String,
    dev: u64,
    ino: u64,
    size: u64,
    mtime_secs: i64,
    mtime_nanos: u32,
    ctime_secs: i64,
    ctime_nanos: u32,
    vermagic: Option<String>,
    signed: bool,
    /// Why the file was not read to its end (a bomb, a corrupt stream): a
    /// refused file costs one read, not one per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
}

impl Record {
    fn is_sane(&self) -> bool {
        let path_ok = self.path.starts_with('/')
            && self.path.len() < 4096
            && !self.path.split('/').any(|c| c == "..")
            && !self.path.chars().any(char::is_control);
        let vermagic_ok = self
            .vermagic
            .as_ref()
            .is_none_or(|v| v.len() <= MAX_VERMAGIC && !v.chars().any(char::is_control));
        let refused_ok = self
            .refused
            .as_ref()
            .is_none_or(|v| v.len() <= MAX_REFUSAL && !v.chars().any(char::is_control));
        path_ok
            && vermagic_ok
            && refused_ok
            && self.mtime_nanos < 1_000_000_000
            && self.ctime_nanos < 1_000_000_000
    }

    fn same_file(&self, st: &rustix::fs::Stat) -> bool {
        self.dev == st.st_dev
            && self.ino == st.st_ino
            && i64::try_from(self.size) == Ok(st.st_size)
            // rustix 0.38 holds the kernel's unsigned long: the bits are the signed time.
            && self.mtime_secs == st.st_mtime as i64
            && u64::from(self.mtime_nanos) == st.st_mtime_nsec
            && self.ctime_secs == st.st_ctime as i64
            && u64::from(self.ctime_nanos) == st.st_ctime_nsec
    }
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    files: Vec<serde_json::Value>,
}

/// The facts known, and whether this run added any.
#[derive(Debug, Default)]
pub struct FactsCache {
    records: HashMap<String, Record>,
    changed: bool,
    /// Module files read (not answered from the cache) by this run.
    reads: usize,
}

impl FactsCache {
    /// The cache of this root; empty when there is none or it is unusable.
    /// Changes nothing on disk.
    pub fn load(root: &Root) -> FactsCache {
        let Some(dir) = crate::state_dir::open_existing_in(root) else {
            return FactsCache::default();
        };
        let data = match dir.read_only(FILE, CAP_STATE) {
            Ok(Some(d)) => d,
            Ok(None) => return FactsCache::default(),
            Err(e) => {
                log::debug!("{e}; module files are read instead");
                return FactsCache::default();
            }
        };
        FactsCache::parse(&data).unwrap_or_else(|why| {
            log::debug!("{}: ignored: {why}", dir.path().join(FILE).display());
            FactsCache::default()
        })
    }

    fn parse(data: &[u8]) -> Result<FactsCache, String> {
        let disk: OnDisk = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        if disk.version != VERSION {
            return Err(format!("version {}", disk.version));
        }
        let records = disk
            .files
            .into_iter()
            .take(MAX_RECORDS)
            .filter_map(|v| serde_json::from_value::<Record>(v).ok())
            .filter(Record::is_sane)
            .map(|r| (r.path.clone(), r))
            .collect();
        Ok(FactsCache {
            records,
            ..FactsCache::default()
        })
    }

    /// What the module file at `host` (in-root `inroot`) says: from the
    /// cache when it is the same file, else read (see [`super::inspect`]).
    /// A file whose content was refused ([`Error::Unreadable`]) is refused
    /// again from the cache.
    pub fn facts(&mut self, host: &Path, inroot: &str) -> Result<ModuleFacts, Error> {
        let f = open_regular(host)?;
        let st = rustix::fs::fstat(&f).map_err(|e| Error::io(host, e.into()))?;
        if let Some(r) = self.records.get(inroot).filter(|r| r.same_file(&st)) {
            return match &r.refused {
                Some(why) => Err(Error::Unreadable {
                    path: host.to_path_buf(),
                    why: why.clone(),
                }),
                None => Ok(ModuleFacts {
                    vermagic: r.vermagic.clone(),
                    signed: r.signed,
                }),
            };
        }
        self.reads += 1;
        let result = read_facts(f, host);
        let (facts, refused) = match &result {
            Ok(facts) => (facts.clone(), None),
            Err(Error::Unreadable { why, .. }) => (ModuleFacts::default(), Some(why.clone())),
            // A failed read says nothing of the content: not remembered.
            Err(_) => return result,
        };
        let record = Record {
            path: inroot.to_string(),
            dev: st.st_dev,
            ino: st.st_ino,
            size: u64::try_from(st.st_size).unwrap_or_default(),
            mtime_secs: st.st_mtime as i64,
            mtime_nanos: u32::try_from(st.st_mtime_nsec).unwrap_or_default(),
            ctime_secs: st.st_ctime as i64,
            ctime_nanos: u32::try_from(st.st_ctime_nsec).unwrap_or_default(),
            vermagic: facts.vermagic,
            signed: facts.signed,
            refused,
        };
        if record.is_sane() {
            self.records.insert(inroot.to_string(), record);
            self.changed = true;
        }
        result
    }

    /// How many module files this cache had to read.
    pub fn reads(&self) -> usize {
        self.reads
    }

    /// Write the cache when this run learnt something and may write
    /// (root); records of files that are gone are dropped. A cache that
    /// cannot be written only costs the next run time.
    pub fn save(&self, root: &Root, may_write: bool) {
        if !self.changed || !may_write {
            return;
        }
        let mut files: Vec<&Record> = self
            .records
            .values()
            .filter(|r| root.exists(&r.path))
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files.truncate(MAX_RECORDS);
        #[derive(Serialize)]
        struct Written<'a> {
            version: u32,
            files: Vec<&'a Record>,
        }
        let Ok(bytes) = serde_json::to_vec(&Written {
            version: VERSION,
            files,
        }) else {
            return;
        };
        let written = crate::state_dir::open_in(root).and_then(|d| d.write_atomic(FILE, &bytes));
        if let Err(e) = written {
            log::debug!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Root, std::path::PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let root = Root::new(t.path());
        let dir = t.path().join("usr/lib/modules/K/updates/dkms");
        std::fs::create_dir_all(&dir).unwrap();
        let ko = dir.join("m.ko");
        std::fs::write(&ko, b"x\0vermagic=K SMP \0~Module signature appended~\n").unwrap();
        (t, root, ko)
    }

    const INROOT: &str = "/usr/lib/modules/K/updates/dkms/m.ko";

    #[test]
    fn the_same_file_is_not_read_again_a_changed_one_is() {
        let (_t, root, ko) = setup();
        let mut c = FactsCache::load(&root);
        let first = c.facts(&ko, INROOT).unwrap();
        assert_eq!(first.release(), Some("K"));
        assert!(first.signed);
        assert_eq!(c.reads(), 1);
        c.save(&root, true);
        // The same file: the cache answers.
        let mut c = FactsCache::load(&root);
        assert_eq!(c.facts(&ko, INROOT).unwrap().release(), Some("K"));
        assert_eq!(c.reads(), 0);
        assert!(!c.changed);
        // A new mtime: read again.
        let f = std::fs::File::options().write(true).open(&ko).unwrap();
        let mtime = f.metadata().unwrap().modified().unwrap();
        f.set_modified(mtime + std::time::Duration::from_secs(1))
            .unwrap();
        assert_eq!(c.facts(&ko, INROOT).unwrap().release(), Some("K"));
        assert_eq!(c.reads(), 1);
        assert!(c.changed);
    }

    /// A module rewritten in place (same inode and size) to name another
    /// kernel, its mtime put back as `touch -d` does: the ctime tells.
    #[test]
    fn a_module_rewritten_with_its_mtime_put_back_is_read_again() {
        let (_t, root, ko) = setup();
        let mut c = FactsCache::load(&root);
        assert_eq!(c.facts(&ko, INROOT).unwrap().release(), Some("K"));
        c.save(&root, true);
        let before = std::fs::metadata(&ko).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&ko, b"x\0vermagic=J SMP \0~Module signature appended~\n").unwrap();
        let f = std::fs::File::options().write(true).open(&ko).unwrap();
        f.set_modified(before.modified().unwrap()).unwrap();
        let after = std::fs::metadata(&ko).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (after.ino(), after.size(), after.mtime(), after.mtime_nsec()),
            (
                before.ino(),
                before.size(),
                before.mtime(),
                before.mtime_nsec()
            ),
            "the old key cannot tell"
        );
        let mut c = FactsCache::load(&root);
        assert_eq!(c.facts(&ko, INROOT).unwrap().release(), Some("J"));
        assert_eq!(c.reads(), 1);
    }

    /// A bomb is refused once: the refusal is remembered with the file's
    /// key, and the next run refuses it again without reading it.
    #[test]
    fn a_refused_module_costs_one_read() {
        let (t, root, _) = setup();
        let inroot = "/usr/lib/modules/K/updates/dkms/bomb.ko.zst";
        let bomb = t.path().join(inroot.trim_start_matches('/'));
        let zstd_bomb = crate::verify::module_file::tests::zstd_bomb;
        std::fs::write(&bomb, zstd_bomb(30, 24 * 1024)).unwrap();
        let mut c = FactsCache::load(&root);
        let e = c.facts(&bomb, inroot).unwrap_err();
        assert!(
            e.to_string()
                .ends_with("refused: zstd: decoding needs 1024 MiB of memory, more than 128 MiB"),
            "{e}"
        );
        assert_eq!(c.reads(), 1);
        c.save(&root, true);
        let mut c = FactsCache::load(&root);
        assert_eq!(
            c.facts(&bomb, inroot).unwrap_err().to_string(),
            e.to_string()
        );
        assert_eq!(c.reads(), 0, "answered from the cache");
        // Rewritten: read again.
        std::fs::write(&bomb, zstd_bomb(20, 4)).unwrap();
        assert_eq!(c.facts(&bomb, inroot).unwrap().vermagic, None);
        assert_eq!(c.reads(), 1);
    }

    #[test]
    fn a_run_that_may_not_write_writes_nothing() {
        let (t, root, ko) = setup();
        let mut c = FactsCache::load(&root);
        c.facts(&ko, INROOT).unwrap();
        c.save(&root, false);
        assert!(!t.path().join("var/lib/dkms-hook").exists());
    }

    #[test]
    fn corrupt_and_hostile_caches_are_ignored() {
        for bad in [
            &b"{garbage"[..],
            br#"{"version": 99, "files": []}"#,
            // Version 1 had no device and ctime: not trusted.
            br#"{"version": 1, "files": [{"path": "/m.ko", "ino": 1, "size": 1, "mtime_secs": 0, "mtime_nanos": 0, "vermagic": null, "signed": true}]}"#,
            br#"{"version": 2, "files": [{"path": "relative.ko", "dev": 1, "ino": 1, "size": 1, "mtime_secs": 0, "mtime_nanos": 0, "ctime_secs": 0, "ctime_nanos": 0, "vermagic": null, "signed": true}]}"#,
            br#"{"version": 2, "files": [{"path": "/a/../../etc/x.ko", "dev": 1, "ino": 1, "size": 1, "mtime_secs": 0, "mtime_nanos": 0, "ctime_secs": 0, "ctime_nanos": 0, "vermagic": null, "signed": true}]}"#,
            br#"{"version": 2, "files": [{"path": "/m.ko", "dev": 1, "ino": 1, "size": 1, "mtime_secs": 0, "mtime_nanos": 2000000000, "ctime_secs": 0, "ctime_nanos": 0, "vermagic": null, "signed": true}]}"#,
            br#"{"version": 2, "files": [{"path": "/m.ko", "dev": 1, "ino": 1, "size": 1, "mtime_secs": 0, "mtime_nanos": 0, "ctime_secs": 0, "ctime_nanos": 2000000000, "vermagic": null, "signed": true}]}"#,
            br#"{"version": 2, "files": [{"path": "/m.ko", "ino": -1}]}"#,
        ] {
            let c = FactsCache::parse(bad).unwrap_or_default();
            assert!(c.records.is_empty(), "{}", String::from_utf8_lossy(bad));
        }
        // The same record, sane: kept (so the ones above fail for their flaw).
        let good = br#"{"version": 2, "files": [{"path": "/m.ko", "dev": 1, "ino": 1, "size": 1, "mtime_secs": 0, "mtime_nanos": 0, "ctime_secs": 0, "ctime_nanos": 0, "vermagic": null, "signed": true, "refused": "larger than 256 MiB decompressed"}]}"#;
        assert_eq!(FactsCache::parse(good).unwrap().records.len(), 1);
        let bad_refusal = br#"{"version": 2, "files": [{"path": "/m.ko", "dev": 1, "ino": 1, "size": 1, "mtime_secs": 0, "mtime_nanos": 0, "ctime_secs": 0, "ctime_nanos": 0, "vermagic": null, "signed": true, "refused": "x\u001b[2J"}]}"#;
        assert!(FactsCache::parse(bad_refusal).unwrap().records.is_empty());
        let long = format!(
            r#"{{"version": 2, "files": [{{"path": "/m.ko", "dev": 1, "ino": 1, "size": 1, "mtime_secs": 0, "mtime_nanos": 0, "ctime_secs": 0, "ctime_nanos": 0, "vermagic": "{}", "signed": true}}]}}"#,
            "v".repeat(MAX_VERMAGIC + 1)
        );
        assert!(FactsCache::parse(long.as_bytes())
            .unwrap()
            .records
            .is_empty());
    }
}
