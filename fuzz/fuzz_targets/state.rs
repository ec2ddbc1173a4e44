#![no_main]
//! State files (cursor.json, queue.json, failures.json, findings.json,
//! holds.json, blocked.json, followup.json) and the unattended-upgrades run
//! record in /run/dkms-hook:
//! serde directly, and
//! the program's own reading path through `State` in one reused temp root.
//! The first byte picks the file; the rest is its content.
use dkms_hook::apt::unattended::UnattendedRun;
use dkms_hook::apt::warned::RUN_DIR;
use dkms_hook::followup;
use dkms_hook::root::Root;
use dkms_hook::model::Hold;
use dkms_hook::preflight::blocked::{self, BLOCKED};
use dkms_hook::state::{State, HOLDS, MAX_ENTRIES, MAX_TIME, STATE_DIR};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

static DIR: OnceLock<(PathBuf, State)> = OnceLock::new();

fn state() -> &'static (PathBuf, State) {
    DIR.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("dkms-hook-fuzz-state-{}", std::process::id()));
        let root = Root::new(root);
        let dir = root.host(STATE_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        (dir, State::new(&root))
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&sel, data)) = input.split_first() else { return };
    let (dir, st) = state();
    match sel % 8 {
        0 => {
            std::fs::write(dir.join("cursor.json"), data).unwrap();
            if let Ok(Some(c)) = st.cursor() {
                st.save_cursor(&c).unwrap();
                assert_eq!(st.cursor().unwrap(), Some(c));
            }
        }
        1 => {
            std::fs::write(dir.join("queue.json"), data).unwrap();
            // Whatever the bytes, every entry that comes back is valid, and
            // what is saved reads back the same.
            if let Ok(q) = st.queue() {
                for p in &q.pending {
                    assert!(p.stale_since <= MAX_TIME);
                    assert!(!p.id.module.as_str().contains('/') && !p.id.module.as_str().starts_with('-'));
                }
                st.save_queue(&q).unwrap();
                assert_eq!(st.queue().unwrap(), q);
            }
        }
        2 => {
            std::fs::write(dir.join("failures.json"), data).unwrap();
            if let Ok(f) = st.failures() {
                for x in &f.failed {
                    assert!(x.time <= MAX_TIME);
                    assert!(!x.id.kernel.as_str().contains('/'));
                }
                st.save_failures(&f).unwrap();
                assert_eq!(st.failures().unwrap(), f);
            }
        }
        3 => {
            std::fs::write(dir.join(HOLDS), data).unwrap();
            // Every hold that comes back has checked names, a bounded time
            // and a one-line reason of bounded length.
            if let Ok(h) = st.holds() {
                assert!(h.len() <= MAX_ENTRIES);
                for x in &h {
                    assert!(x.since <= MAX_TIME);
                    assert!(x.reason.len() <= Hold::MAX_REASON);
                    assert!(!x.reason.chars().any(char::is_control));
                    assert!(!x.id.arch.as_str().contains('/'));
                }
                st.save_holds(&h).unwrap();
                assert_eq!(st.holds().unwrap(), h);
            }
        }
        5 => {
            std::fs::write(dir.join(BLOCKED), data).unwrap();
            // Every block that comes back has checked names, a bounded
            // time, a one-line failure, only its own make.log and bounded
            // package lines; recorded again, it reads back the same.
            let b = blocked::read(st);
            assert!(b.len() <= MAX_ENTRIES);
            for x in &b {
                assert!(x.inputs.time <= MAX_TIME);
                assert!(x.failure.len() <= Hold::MAX_REASON);
                assert!(!x.failure.chars().any(char::is_control));
                assert!(x.make_log.as_ref().is_none_or(|m| *m == blocked::Blocked::kept_make_log(x.id())));
                assert!(!x.id().module.as_str().contains('/'));
                assert!(!x.because.is_empty());
            }
            if blocked::record(st, &b).is_ok() {
                let mut sorted = b.clone();
                sorted.sort_by(|a, c| a.id().cmp(c.id()));
                assert_eq!(blocked::read(st), sorted);
            }
        }
        6 => {
            // Whatever followup.json holds, the schedule is bounded: no
            // failure retried past its limit.
            std::fs::write(dir.join(followup::FOLLOWUP), data).unwrap();
            let _ = followup::schedule(st);
        }
        7 => {
            // A run record: only checked pairs come back, and a waiter only
            // when it is a live process of ours (never, here).
            let run = UnattendedRun::of(st.root(), 1, 1).unwrap();
            let rd = st.root().host(RUN_DIR);
            std::fs::create_dir_all(&rd).unwrap();
            std::fs::write(rd.join("uu-1-1"), data).unwrap();
            for p in run.tested() {
                assert!(!p.module.as_str().contains('/') && !p.kernel.as_str().contains('/'));
            }
            assert_eq!(run.waiter(), None);
        }
        _ => {
            std::fs::write(dir.join("findings.json"), data).unwrap();
            // Entries without arch (older files) are dropped, the rest
            // checked like the queue's; saved, they read back the same.
            let found = st.findings();
            for x in &found {
                assert!(x.time <= MAX_TIME);
                assert!(!x.id.module.as_str().contains('/'));
            }
            st.save_findings(&found).unwrap();
            assert_eq!(st.findings(), found);
        }
    }
});
