//! What one apt run has been told already: a marker in `/run/dkms-hook/`,
//! keyed by the apt run ([`super::frontend::run`]: pid and start time, so a
//! recycled pid is not mistaken for the same run), listing the lines shown.
//! The JSON hook writes it before the prompt; Pre-Install-Pkgs then says
//! only what the JSON hook could not, and post-invoke and the kernel hooks
//! skip the warnings already said.

use std::path::PathBuf;

use crate::root::Root;

pub const RUN_DIR: &str = "/run/dkms-hook";

fn marker(root: &Root) -> Option<PathBuf> {
    let (pid, start) = super::frontend::run()?;
    let dir = root.inside(RUN_DIR).ok()?;
    Some(dir.join(format!("warned-{pid}-{start}")))
}

/// The lines (warnings, notices) already printed in this apt run (empty
/// outside apt, or when nothing was said yet).
pub fn said(root: &Root) -> Vec<String> {
    let Some(m) = marker(root) else {
        return Vec::new();
    };
    crate::root::read_regular(&m, crate::root::CAP_SMALL)
        .map(|b| {
            String::from_utf8_lossy(&b)
                .lines()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Note that this apt run has been told these lines (best effort: outside
/// apt there is nothing to note).
pub fn note_said(root: &Root, lines: &[String]) {
    let Some(m) = marker(root) else { return };
    let Some(dir) = m.parent() else { return };
    // Markers of finished runs are dropped on the way.
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name();
            let pid = name
                .to_str()
                .and_then(|n| n.strip_prefix("warned-"))
                .and_then(|n| n.split('-').next());
            if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let mut all = said(root);
    for w in lines {
        // One line per line said: a newline inside one is escaped.
        let w = w.replace('\n', " ");
        if !all.contains(&w) {
            all.push(w);
        }
    }
    let name = m.file_name().and_then(|n| n.to_str()).unwrap_or("warned");
    let text = all.iter().map(|w| format!("{w}\n")).collect::<String>();
    if let Err(e) =
        crate::state_dir::Dir::open_top(dir).and_then(|d| d.write_atomic(name, text.as_bytes()))
    {
        log::debug!("{e}");
    }
}

/// The lines not yet said in this apt run, noted as said now.
pub fn unsaid(root: &Root, lines: &[String]) -> Vec<String> {
    if lines.is_empty() {
        return Vec::new();
    }
    let before = said(root);
    let new: Vec<String> = lines
        .iter()
        .filter(|w| !before.contains(&w.replace('\n', " ")))
        .cloned()
        .collect();
    note_said(root, &new);
    new
}
