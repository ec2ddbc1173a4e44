//! `dkms-conf.json` in the state directory: verdicts by input key.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::Verdict;
use crate::root::{Root, CAP_STATE};

/// `dkms-conf.json` in the state directory: verdicts by input key. Read by
/// every run as untrusted input (capped, each record checked), written by
/// root runs only.
#[derive(Debug, Default)]
pub(super) struct ConfCache {
    records: HashMap<u64, Verdict>,
    used: HashMap<u64, Verdict>,
    changed: bool,
}

pub(super) const CACHE_FILE: &str = "dkms-conf.json";
const CACHE_VERSION: u32 = 1;
const CACHE_MAX: usize = 4096;
const MAX_WHY: usize = 512;

#[derive(Serialize, Deserialize)]
struct CacheOnDisk {
    version: u32,
    verdicts: Vec<CacheRecord>,
}

#[derive(Serialize, Deserialize)]
struct CacheRecord {
    key: String,
    #[serde(flatten)]
    verdict: Verdict,
}

impl ConfCache {
    pub(super) fn load(root: &Root) -> ConfCache {
        let Some(dir) = crate::state_dir::open_existing_in(root) else {
            return ConfCache::default();
        };
        match dir.read_only(CACHE_FILE, CAP_STATE) {
            Ok(Some(d)) => ConfCache::parse(&d).unwrap_or_else(|why| {
                log::debug!("{CACHE_FILE}: ignored: {why}");
                ConfCache::default()
            }),
            Ok(None) => ConfCache::default(),
            Err(e) => {
                log::debug!("{e}");
                ConfCache::default()
            }
        }
    }

    pub(super) fn parse(data: &[u8]) -> Result<ConfCache, String> {
        let disk: CacheOnDisk = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        if disk.version != CACHE_VERSION {
            return Err(format!("version {}", disk.version));
        }
        let records = disk
            .verdicts
            .into_iter()
            .take(CACHE_MAX)
            .filter(|r| match &r.verdict {
                Verdict::Undecided(why) => {
                    why.len() <= MAX_WHY && !why.chars().any(char::is_control)
                }
                _ => true,
            })
            .filter_map(|r| Some((u64::from_str_radix(&r.key, 16).ok()?, r.verdict)))
            .collect();
        Ok(ConfCache {
            records,
            ..ConfCache::default()
        })
    }

    pub(super) fn get(&mut self, key: u64) -> Option<Verdict> {
        let v = self.records.get(&key)?.clone();
        self.used.insert(key, v.clone());
        Some(v)
    }

    pub(super) fn put(&mut self, key: u64, mut v: Verdict) {
        if let Verdict::Undecided(why) = &mut v {
            why.truncate(MAX_WHY);
            why.retain(|c| !c.is_control());
        }
        self.used.insert(key, v);
        self.changed = true;
    }

    /// Only this run's verdicts are written: one run sees every pair.
    pub(super) fn save(&self, root: &Root) {
        if !self.changed {
            return;
        }
        let mut verdicts: Vec<CacheRecord> = self
            .used
            .iter()
            .map(|(k, v)| CacheRecord {
                key: format!("{k:016x}"),
                verdict: v.clone(),
            })
            .collect();
        verdicts.sort_by(|a, b| a.key.cmp(&b.key));
        verdicts.truncate(CACHE_MAX);
        let disk = CacheOnDisk {
            version: CACHE_VERSION,
            verdicts,
        };
        let Ok(bytes) = serde_json::to_vec(&disk) else {
            return;
        };
        if let Err(e) =
            crate::state_dir::open_in(root).and_then(|d| d.write_atomic(CACHE_FILE, &bytes))
        {
            log::debug!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damaged_and_hostile_caches_are_ignored() {
        for bad in [
            &b"{garbage"[..],
            br#"{"version": 2, "verdicts": []}"#,
            br#"{"version": 1, "verdicts": [{"key": 5}]}"#,
        ] {
            assert!(
                ConfCache::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let odd = br#"{"version": 1, "verdicts": [{"key": "zz", "verdict": "excluded"}, {"key": "01", "verdict": "undecided", "why": "a\u001b[31m"}, {"key": "02", "verdict": "builds"}]}"#;
        let c = ConfCache::parse(odd).unwrap();
        assert_eq!(c.records.len(), 1, "{:?}", c.records);
        assert_eq!(c.records.get(&2), Some(&Verdict::Builds));
    }
}
