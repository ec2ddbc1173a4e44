#![no_main]
//! State files (cursor.json, queue.json, failures.json): serde directly, and
//! the program's own reading path through `State` in one reused temp root.
//! The first byte picks the file; the rest is its content.
use dkms_hook::root::Root;
use dkms_hook::state::{Cursor, Failures, Queue, State, STATE_DIR, STATE_VERSION};
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

/// Whether `State` must accept what serde accepted directly: it reads the
/// file as a `serde_json::Value` first (which, unlike a direct struct parse,
/// rejects invalid UTF-8 even inside ignored fields) and refuses versions
/// newer than its own.
fn version_ok(data: &[u8]) -> bool {
    match serde_json::from_slice::<serde_json::Value>(data) {
        Ok(v) => v
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .map_or(true, |v| v <= u64::from(STATE_VERSION)),
        Err(_) => false,
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&sel, data)) = input.split_first() else { return };
    let (dir, st) = state();
    match sel % 3 {
        0 => {
            let direct = serde_json::from_slice::<Cursor>(data);
            std::fs::write(dir.join("cursor.json"), data).unwrap();
            let real = st.cursor();
            if let Ok(c) = &direct {
                if version_ok(data) {
                    assert_eq!(real.as_ref().ok(), Some(&Some(c.clone())), "State::cursor disagrees with serde: {real:?}");
                }
                let back: Cursor = serde_json::from_slice(&serde_json::to_vec(c).unwrap()).unwrap();
                assert_eq!(&back, c);
            }
        }
        1 => {
            let direct = serde_json::from_slice::<Queue>(data);
            std::fs::write(dir.join("queue.json"), data).unwrap();
            let real = st.queue();
            if let Ok(q) = &direct {
                if version_ok(data) {
                    assert_eq!(real.as_ref().ok(), Some(q), "State::queue disagrees with serde: {real:?}");
                }
                let back: Queue = serde_json::from_slice(&serde_json::to_vec(q).unwrap()).unwrap();
                assert_eq!(&back, q);
            }
        }
        _ => {
            let direct = serde_json::from_slice::<Failures>(data);
            std::fs::write(dir.join("failures.json"), data).unwrap();
            let real = st.failures();
            if let Ok(f) = &direct {
                if version_ok(data) {
                    assert_eq!(real.as_ref().ok(), Some(f), "State::failures disagrees with serde: {real:?}");
                }
                let back: Failures = serde_json::from_slice(&serde_json::to_vec(f).unwrap()).unwrap();
                assert_eq!(&back, f);
            }
        }
    }
});
