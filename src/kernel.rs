//! Installed kernels and their build trees: what `make -C /lib/modules/K/build`
//! reads, and which installed packages feed it (the *input packages*, found
//! in [`inputs`]).
//!
//! Ownership comes from dpkg's file lists, which works for every naming scheme
//! (Debian's `-common` + `linux-kbuild-X.Y`, trixie's per-version kbuild,
//! Ubuntu's `-generic` symlink farms, `make deb-pkg` single packages). Package
//! names are guessed from paths only where a file list is missing.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::dpkg::PackageName;
use crate::root::{open_regular, Root, CAP_SMALL};
use crate::Error;

mod inputs;
pub mod list_cache;

pub use inputs::{
    any_feeds_a_tree, find_all_inputs, find_changed_inputs, find_inputs, guess_missing_inputs,
    refresh_list_cache, roles_of, CacheUse, Input,
};

pub const MODULES_DIR: &str = "/lib/modules";

pub use crate::name::KernelRelease;

/// Why a package is an input of a kernel; each role can be switched off in
/// the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Owns files of the headers tree itself (`build`, `source`, `-common`).
    Headers,
    /// Owns a shared tree the headers link to (`scripts`, `tools`).
    Kbuild,
    /// Provides the compiler the tree names (`CC` in `.kernelvariables`).
    Compiler,
}

/// One directory that is part of a build tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeDir {
    /// In-root canonical path.
    pub path: PathBuf,
    pub role: Role,
    /// Other names of `path` on a merged-/usr system: file lists of older
    /// packages still say `/lib/…` for what is now `/usr/lib/…`.
    pub also: Vec<PathBuf>,
}

impl TreeDir {
    /// `path` and its aliases.
    pub fn names(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.path.as_path()).chain(self.also.iter().map(PathBuf::as_path))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub release: KernelRelease,
    /// `/boot/vmlinuz-K` exists.
    pub image: bool,
    /// Where `/lib/modules/K/build` points, resolved or not.
    pub build_link: Option<PathBuf>,
    /// The resolved build tree; empty when the headers are missing.
    pub tree: Vec<TreeDir>,
    /// The compiler the tree was configured with (`gcc-12`).
    pub compiler: Option<String>,
}

impl Kernel {
    pub fn has_headers(&self) -> bool {
        !self.tree.is_empty()
    }

    /// The package that presumably shipped the build tree, from the link's
    /// target (`/usr/src/linux-headers-K` → `linux-headers-K`): the name-pattern
    /// fallback used where the file list is gone, e.g. after a purge.
    ///
    /// Without the link (the headers package that owned it was removed),
    /// the name Debian and Ubuntu give it: `linux-headers-K`.
    pub fn headers_package_guess(&self) -> Option<PackageName> {
        match self.build_link.as_deref() {
            Some(link) => guess_owner(link),
            None => PackageName::new(&format!("linux-headers-{}", self.release)).ok(),
        }
    }
}

/// `/usr/src/NAME[/…]` or `/usr/lib/NAME[/…]` → `NAME`, if it is a valid
/// package name.
pub fn guess_owner(path: &Path) -> Option<PackageName> {
    let s = path.to_str()?;
    let rest = s
        .strip_prefix("/usr/src/")
        .or_else(|| s.strip_prefix("/usr/lib/"))?;
    PackageName::new(rest.split('/').next()?).ok()
}

/// Every kernel with a directory in `/lib/modules`, sorted by release.
/// Entries whose names are unsafe become warnings.
pub fn scan(root: &Root, warnings: &mut Vec<String>) -> Vec<Kernel> {
    let Ok(dir) = root.canonicalize(MODULES_DIR) else {
        return Vec::new();
    };
    let merged = merged_usr(root);
    let Ok(rd) = std::fs::read_dir(root.host(&dir)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for ent in rd.flatten() {
        let name = ent.file_name();
        let Some(name) = name.to_str() else {
            warnings.push(format!(
                "ignoring {}: name is not UTF-8",
                ent.path().display()
            ));
            continue;
        };
        if !ent.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        match KernelRelease::new(name) {
            Ok(k) => out.push(inspect(root, &dir, k, &merged)),
            Err(e) => warnings.push(format!("ignoring {}/{name}: {e}", dir.display())),
        }
    }
    out.sort_by(|a, b| a.release.cmp(&b.release));
    out
}

fn inspect(
    root: &Root,
    modules: &Path,
    release: KernelRelease,
    merged: &[(PathBuf, PathBuf)],
) -> Kernel {
    let kdir = modules.join(release.as_str());
    let build_link = root.link_target(&kdir.join("build")).ok();
    let image = root.exists(format!("/boot/vmlinuz-{release}"));
    let mut tree: Vec<TreeDir> = Vec::new();
    let push = |tree: &mut Vec<TreeDir>, path: PathBuf, role| {
        if !tree.iter().any(|t| t.path == path) {
            let also = aliases(merged, &path);
            tree.push(TreeDir { path, role, also });
        }
    };
    let mut compiler = None;
    if let Ok(build) = root.canonicalize(kdir.join("build")) {
        compiler = read_compiler(root, &build);
        push(&mut tree, build.clone(), Role::Headers);
        if let Ok(source) = root.canonicalize(kdir.join("source")) {
            push(&mut tree, source, Role::Headers);
        }
        for inc in makefile_includes(root, &build.join("Makefile")) {
            if let Ok(dir) = root.canonicalize(&inc) {
                push(&mut tree, dir, Role::Headers);
            }
        }
        // Top-level links lead to the rest of the tree: Debian's scripts/ and
        // tools/ into linux-kbuild, Ubuntu's farm into the common headers.
        let headers: Vec<PathBuf> = tree.iter().map(|t| t.path.clone()).collect();
        for dir in &headers {
            let Ok(rd) = std::fs::read_dir(root.host(dir)) else {
                continue;
            };
            let mut links: Vec<_> = rd
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
                .map(|e| dir.join(e.file_name()))
                .collect();
            links.sort();
            for link in links {
                match root.canonicalize(&link) {
                    Ok(target) => {
                        let inside = headers.iter().any(|h| target.starts_with(h))
                            || target.starts_with("/usr/src");
                        if !headers.iter().any(|h| target.starts_with(h)) {
                            let role = if inside { Role::Headers } else { Role::Kbuild };
                            push(&mut tree, target, role);
                        }
                    }
                    Err(e) => log::debug!("{}: {e}", link.display()),
                }
            }
        }
    }
    Kernel {
        release,
        image,
        build_link,
        tree,
        compiler,
    }
}

/// `include /usr/src/linux-headers-6.1.0-50-common/Makefile` in the flavour
/// Makefile names the common tree; only the first lines are looked at.
fn makefile_includes(root: &Root, makefile: &Path) -> Vec<PathBuf> {
    let Ok(f) = root
        .resolve(makefile)
        .map_err(|e| Error::io(makefile, e))
        .and_then(|p| open_regular(&p))
    else {
        return Vec::new();
    };
    BufReader::new(std::io::Read::take(f, CAP_SMALL))
        .lines()
        .take(20)
        .map_while(Result::ok)
        .filter_map(|l| {
            let p = Path::new(l.strip_prefix("include ")?.trim());
            (p.is_absolute() && p.file_name()? == "Makefile")
                .then(|| p.parent().map(Path::to_path_buf))?
        })
        .collect()
}

/// `CC` from Debian's `.kernelvariables` (`… $(CROSS_COMPILE)gcc-12`).
fn read_compiler(root: &Root, build: &Path) -> Option<String> {
    let text = root.read(build.join(".kernelvariables"), CAP_SMALL).ok()?;
    let text = String::from_utf8(text).ok()?;
    let line = text.lines().find(|l| {
        let l = l.trim_start().trim_start_matches("override ").trim_start();
        l.starts_with("CC ") || l.starts_with("CC=") || l.starts_with("CC:")
    })?;
    let word = line.split_whitespace().last()?;
    let word = word.rsplit(')').next()?;
    PackageName::new(word).ok().map(|p| p.to_string())
}

/// The top directories that are links into /usr (`/lib → usr/lib`).
fn merged_usr(root: &Root) -> Vec<(PathBuf, PathBuf)> {
    ["/lib", "/bin", "/sbin", "/lib64"]
        .iter()
        .map(|top| (PathBuf::from(top), Path::new("/usr").join(&top[1..])))
        .filter(|(top, usr)| root.canonicalize(top).is_ok_and(|c| &c == usr))
        .collect()
}

fn aliases(merged: &[(PathBuf, PathBuf)], dir: &Path) -> Vec<PathBuf> {
    merged
        .iter()
        .filter_map(|(top, usr)| Some(top.join(dir.strip_prefix(usr).ok()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_names_are_checked() {
        for bad in ["", "../x", "a/b", "6.1 0", "..", ".hidden", "a..b"] {
            assert!(KernelRelease::new(bad).is_err(), "{bad}");
        }
        for good in [
            "6.1.0-50-amd64",
            "6.12.38+deb13-amd64",
            "6.5.0-14-generic",
            "6.6.31+rpt-rpi-v8",
        ] {
            assert!(KernelRelease::new(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn owners_are_guessed_from_paths() {
        assert_eq!(
            guess_owner(Path::new("/usr/lib/linux-kbuild-6.1/scripts"))
                .unwrap()
                .as_str(),
            "linux-kbuild-6.1"
        );
        assert_eq!(
            guess_owner(Path::new("/usr/src/linux-headers-6.1.0-50-amd64"))
                .unwrap()
                .as_str(),
            "linux-headers-6.1.0-50-amd64"
        );
        assert!(guess_owner(Path::new("/opt/x")).is_none());
    }
}
