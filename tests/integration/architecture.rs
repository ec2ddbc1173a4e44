//! The shape of the crate: every module imports only modules of lower
//! layers (no loop, nothing running back up). The table is the one in
//! `src/lib.rs`'s "Layers"; the test checks that both agree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Lowest first; a module may import only modules of an earlier row.
const LAYERS: &[&[&str]] = &[
    &["root", "name", "tools", "file_tree"],
    &["state_dir", "dpkg", "time_zone"],
    &["change", "pair"],
    &["dpkg_log", "kernel"],
    &["dkms", "config"],
    &["model", "dkms_conf"],
    &["inventory", "state"],
    &["plan"],
    &["verify"],
    &["rebuild"],
    &["intake", "preflight", "guard", "rollback"],
    &["report", "metrics"],
    &["apt", "man_page", "followup"],
    &["cli"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The crate's top-level modules each file of `src/` names as
/// `crate::m` or in `crate::{m, …}`, outside its `#[cfg(test)]` part and
/// its comments.
fn imports(text: &str) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let code: String = code
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            out.extend(group.split(',').map(ident).filter(|m| !m.is_empty()));
        } else {
            let m = ident(rest);
            if !m.is_empty() {
                out.insert(m);
            }
        }
    }
    out
}

fn modules() -> BTreeMap<String, BTreeSet<String>> {
    fn walk(dir: &Path, top: Option<&str>, out: &mut BTreeMap<String, BTreeSet<String>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_stem().unwrap().to_str().unwrap().to_string();
            if p.is_dir() {
                walk(&p, Some(top.unwrap_or(&name)), out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let m = top.unwrap_or(&name).to_string();
                if m == "lib" || m == "main" {
                    continue;
                }
                let deps = imports(&std::fs::read_to_string(&p).unwrap());
                out.entry(m).or_default().extend(deps);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        None,
        &mut out,
    );
    out
}

#[test]
fn imports_follow_the_layers() {
    let mods = modules();
    let mut wrong = Vec::new();
    for (m, deps) in &mods {
        let Some(mine) = layer_of(m) else {
            wrong.push(format!("{m}: not in the layer table"));
            continue;
        };
        for d in deps.iter().filter(|d| *d != m && mods.contains_key(*d)) {
            match layer_of(d) {
                Some(l) if l < mine => {}
                Some(l) => wrong.push(format!("{m} (layer {mine}) imports {d} (layer {l})")),
                None => wrong.push(format!("{m} imports {d}, which is not in the table")),
            }
        }
    }
    for m in LAYERS.iter().flat_map(|l| l.iter()) {
        if !mods.contains_key(*m) {
            wrong.push(format!("{m}: in the table, not in src/"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// `src/lib.rs` tells the same layers, in the same order.
#[test]
fn lib_rs_tells_the_same_layers() {
    let lib =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let told: Vec<Vec<String>> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("//! - "))
        .filter_map(|l| {
            let (n, rest) = l.split_once(": ")?;
            n.parse::<usize>().ok()?;
            let names = rest.split(" — ").next()?;
            Some(
                names
                    .split(',')
                    .map(|s| s.trim().trim_matches('`').to_string())
                    .collect(),
            )
        })
        .collect();
    let table: Vec<Vec<String>> = LAYERS
        .iter()
        .map(|l| l.iter().map(|s| s.to_string()).collect())
        .collect();
    assert_eq!(told, table);
}

/// The checker itself: it sees grouped imports, skips test code and
/// comments, and would catch an import running up.
#[test]
fn the_checker_reads_imports_as_rustc_does() {
    let text = "use crate::{plan::X, state};\nuse crate::root::Root;\n// crate::cli\nfn f() { crate::report::log_line(); }\n#[cfg(test)]\nmod tests { use crate::cli; }\n";
    let got: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(got, ["plan", "report", "root", "state"]);
    assert!(layer_of("state") < layer_of("plan"));
}
