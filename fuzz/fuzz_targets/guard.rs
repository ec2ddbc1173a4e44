#![no_main]
//! The guard's record (guarded.json) through the program's own reading
//! path, in one reused temp root: whatever the bytes, every entry read back
//! has checked names and a bounded time, and there are at most MAX_ENTRIES.
use dkms_hook::guard::{self, MAX_ENTRIES, RECORD};
use dkms_hook::root::Root;
use dkms_hook::state::{State, MAX_TIME, STATE_DIR};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

static DIR: OnceLock<(PathBuf, State)> = OnceLock::new();

fn state() -> &'static (PathBuf, State) {
    DIR.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("dkms-hook-fuzz-guard-{}", std::process::id()));
        let root = Root::new(root);
        let dir = root.host(STATE_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        (dir, State::new(&root))
    })
}

fuzz_target!(|data: &[u8]| {
    let (dir, st) = state();
    std::fs::write(dir.join(RECORD), data).unwrap();
    if let Ok(list) = guard::guarded(st) {
        assert!(list.len() <= MAX_ENTRIES);
        for g in &list {
            assert!(g.time <= MAX_TIME);
            for name in g.id.backup_chain() {
                assert!(!name.contains('/') && !name.starts_with('-') && !name.contains(".."));
            }
        }
    }
});
