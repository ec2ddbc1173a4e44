//! The input packages of each kernel: which installed packages own files
//! of its build tree, read from dpkg's file lists (through [`list_cache`]),
//! with names guessed from paths only where a list is missing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::list_cache::{self, DirKey, ListCache, Lookup, Meta, Roles};
use super::{guess_owner, scan, Kernel, KernelRelease, Role, TreeDir};
use crate::dpkg::{self, FileList, PackageName};
use crate::root::{path_bytes, Root, CAP_LIST};
use crate::Error;

/// An input package of one kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    pub package: PackageName,
    pub architecture: Option<String>,
    pub role: Role,
    /// mtime of the file list: when dpkg last unpacked the package.
    pub unpacked: Option<SystemTime>,
}

/// Read a whole file into `buf`, returning its length, with as few
/// syscalls as possible: a short read of a regular file is its end, so a list
/// smaller than the buffer costs one read and no stat. `buf` only grows, and
/// is zeroed only when it does. Opened without following a link and
/// without blocking (a FIFO reads as empty), and refused beyond
/// [`CAP_LIST`] (a device node reads forever): the checks cost no syscall.
fn read_whole(path: &Path, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(crate::root::NOFOLLOW_NONBLOCK)
        .open(path)?;
    let mut len = 0;
    loop {
        if len as u64 > CAP_LIST {
            return Err(std::io::Error::other(format!(
                "larger than {CAP_LIST} bytes"
            )));
        }
        if buf.len() - len < 4096 {
            buf.resize((buf.len() * 2).max(64 * 1024), 0);
        }
        let room = buf.len() - len;
        let n = f.read(&mut buf[len..])?;
        len += n;
        if n == 0 || n < room {
            return Ok(len);
        }
    }
}

/// Which kernels a file list feeds, and in which role.
pub fn roles_of(list: &FileList, kernels: &[Kernel]) -> Vec<(KernelRelease, Role)> {
    let mut out = Vec::new();
    for k in kernels {
        let mut best: Option<Role> = None;
        for t in &k.tree {
            if t.names().any(|a| list.touches(path_bytes(a))) {
                best = Some(best.map_or(t.role, |b| b.min(t.role)));
            }
        }
        if let Some(role) = best {
            out.push((k.release.clone(), role));
        }
    }
    out
}

/// Input packages per kernel, found by reading the given file lists.
/// `candidates` are (package, arch, list path) as from [`dpkg::all_lists`].
/// A panic in a reader thread is an error, never "no inputs".
pub fn find_inputs(
    root: &Root,
    kernels: &[Kernel],
    candidates: &[(PackageName, Option<String>, PathBuf)],
) -> Result<BTreeMap<KernelRelease, Vec<Input>>, Error> {
    let found = scan_lists(kernels, candidates, None, false)?;
    Ok(inputs_of(root, kernels, candidates, &found, &|_| true))
}

/// [`find_inputs`] for planning changes: the compiler role is looked up
/// (its package's list read) only for a compiler among `changed`, the one
/// case in which a plan can use it.
pub fn find_changed_inputs(
    root: &Root,
    kernels: &[Kernel],
    candidates: &[(PackageName, Option<String>, PathBuf)],
    changed: &dyn Fn(&PackageName) -> bool,
) -> Result<BTreeMap<KernelRelease, Vec<Input>>, Error> {
    let found = scan_lists(kernels, candidates, None, false)?;
    Ok(inputs_of(root, kernels, candidates, &found, changed))
}

/// Whether one of `packages` (name, architecture if known) owns a file of
/// an installed kernel's build tree, as its file list says: the first and
/// cheap question about a change (the kernels' trees and these lists), the
/// one that decides whether anything else need be read.
pub fn any_feeds_a_tree(
    root: &Root,
    packages: &[(PackageName, Option<String>)],
) -> Result<bool, Error> {
    let kernels = scan(root, &mut Vec::new());
    if kernels.is_empty() {
        return Ok(false);
    }
    let mut lists = Vec::new();
    for (p, a) in packages {
        match dpkg::list_path(root, p, a.as_deref()) {
            Some(list) => lists.push((p.clone(), a.clone(), list)),
            // Without a list, a tree path naming it (as for a change).
            None if kernels
                .iter()
                .flat_map(|k| &k.tree)
                .any(|t| guess_owner(&t.path).as_ref() == Some(p)) =>
            {
                return Ok(true)
            }
            None => {}
        }
    }
    let found = scan_lists(&kernels, &lists, None, false)?;
    Ok(found.iter().any(|f| !f.roles.is_empty()))
}

/// How [`find_all_inputs`] uses the file-list cache ([`list_cache`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    /// Use a valid cache, write nothing: runs as a user, and replays.
    Read,
    /// Also write the cache back when it changed: root runs.
    Refresh,
}

/// [`find_inputs`] over every list of dpkg's info directory, through the
/// cache ([`list_cache`]): while the directory is as the cache recorded
/// it, no list is stat'ed or read (dpkg changes a list only by renaming or
/// removing it, which changes the directory); otherwise every list is
/// stat'ed and only those whose key is not cached are read. Without a
/// usable cache, and not refreshing, this is exactly [`find_inputs`] of
/// every list (no stat).
pub fn find_all_inputs(
    root: &Root,
    kernels: &[Kernel],
    cache_use: CacheUse,
) -> Result<BTreeMap<KernelRelease, Vec<Input>>, Error> {
    let info = root
        .resolve(dpkg::INFO_DIR)
        .map_err(|e| Error::io(Path::new(dpkg::INFO_DIR), e))?;
    let started = SystemTime::now();
    let before = DirKey::of(&info);
    let cache = list_cache::load(root, kernels);
    if let Some(entries) = cache.as_ref().and_then(|c| c.if_unchanged(before)) {
        log::debug!(
            "file lists: {n} of {n} lists from the cache, none stat'ed: the info directory is unchanged",
            n = entries.len()
        );
        return Ok(inputs_of_entries(root, kernels, &info, entries));
    }
    let candidates = dpkg::all_lists(root)?;
    let names: Vec<&str> = candidates
        .iter()
        .map(|c| list_name(&c.2).unwrap_or_default())
        .collect();
    let lookup = cache.as_ref().map(|c| c.lookup(&names));
    let refresh = cache_use == CacheUse::Refresh;
    let found = scan_lists(
        kernels,
        &candidates,
        lookup.as_ref(),
        lookup.is_some() || refresh,
    )?;
    let hits = found.iter().filter(|f| f.hit).count();
    if lookup.is_some() {
        log::debug!("file lists: {hits} of {} lists from the cache", names.len());
    }
    // The directory's key goes with the entries only when it held still
    // while they were checked, and long enough before (list_cache::SETTLED).
    let key = before.filter(|b| DirKey::of(&info) == Some(*b) && b.settled(started));
    let unchanged = lookup
        .as_ref()
        .is_some_and(|l| l.same_listing() && hits == names.len());
    let new_key = key.is_some() && cache.as_ref().and_then(ListCache::info) != key;
    if refresh && (!unchanged || new_key) {
        let entries = found
            .iter()
            .filter_map(|f| {
                Some(list_cache::Entry {
                    name: names[f.index].to_string(),
                    meta: f.meta?,
                    roles: f.roles.clone(),
                })
            })
            .collect();
        // A cache that cannot be written only costs the next run time.
        if let Err(e) = list_cache::save(root, &ListCache::new(kernels, key, entries)) {
            log::debug!("{e}");
        }
    }
    Ok(inputs_of(root, kernels, &candidates, &found, &|_| true))
}

/// The inputs the cached `entries` of the lists in `info` (a host path)
/// say, as [`find_all_inputs`] finds them by stat'ing every list: the
/// entries that feed a kernel, under the names `dpkg::all_lists` accepts.
fn inputs_of_entries(
    root: &Root,
    kernels: &[Kernel],
    info: &Path,
    entries: &[list_cache::Entry],
) -> BTreeMap<KernelRelease, Vec<Input>> {
    let mut candidates = Vec::new();
    let mut found = Vec::new();
    for e in entries.iter().filter(|e| !e.roles.is_empty()) {
        let Some(stem) = e.name.strip_suffix(".list") else {
            continue;
        };
        let (pkg, arch) = match stem.split_once(':') {
            Some((p, a)) => (p, Some(a.to_string())),
            None => (stem, None),
        };
        let Ok(p) = PackageName::new(pkg) else {
            continue;
        };
        found.push(Facts {
            index: candidates.len(),
            meta: Some(e.meta),
            hit: true,
            roles: e.roles.clone(),
            modified: e.meta.modified(),
        });
        candidates.push((p, arch, info.join(&e.name)));
    }
    inputs_of(root, kernels, &candidates, &found, &|_| true)
}

/// Bring the file-list cache up to date after dpkg changed the packages of
/// `changed` (post-invoke, as root, after a transaction that fed a build
/// tree): dpkg rewrote or removed just their lists, so only those are
/// stat'ed, and read if they differ from their entries. Stat'ing every list
/// instead cost post-invoke 6.5 ms on 2,000 packages. Without a usable
/// cache (none yet, or a kernel came or went) every list is read once.
/// What this misses (a list changed behind dpkg's back) costs nothing but
/// time: the entries lose the info directory's key, so the next reader
/// stats every list.
pub fn refresh_list_cache(
    root: &Root,
    kernels: &[Kernel],
    changed: &[crate::change::Change],
) -> Result<(), Error> {
    let Some(mut cache) = list_cache::load(root, kernels) else {
        return find_all_inputs(root, kernels, CacheUse::Refresh).map(drop);
    };
    let info = root
        .resolve(dpkg::INFO_DIR)
        .map_err(|e| Error::io(Path::new(dpkg::INFO_DIR), e))?;
    let mut candidates = Vec::new();
    let mut gone = Vec::new();
    for c in changed {
        let arch = c.architecture.as_deref().filter(|a| dpkg::valid_arch(a));
        for a in [arch, None] {
            let name = match a {
                Some(a) => format!("{}:{a}.list", c.package),
                None => format!("{}.list", c.package),
            };
            let path = info.join(&name);
            if std::fs::symlink_metadata(&path).is_ok() {
                candidates.push((c.package.clone(), a.map(str::to_string), path));
            } else {
                gone.push(name);
            }
        }
    }
    candidates.sort();
    candidates.dedup();
    let names: Vec<&str> = candidates
        .iter()
        .map(|c| list_name(&c.2).unwrap_or_default())
        .collect();
    let found = scan_lists(kernels, &candidates, Some(&cache.lookup(&names)), true)?;
    let mut upserts = Vec::new();
    let mut keep = vec![false; names.len()];
    for f in &found {
        keep[f.index] = true;
        if let (false, Some(meta)) = (f.hit, f.meta) {
            upserts.push(list_cache::Entry {
                name: names[f.index].to_string(),
                meta,
                roles: f.roles.clone(),
            });
        }
    }
    // Lists that are gone, or are no regular files any more.
    let removed: Vec<&str> = names
        .iter()
        .zip(&keep)
        .filter(|(_, k)| !**k)
        .map(|(n, _)| *n)
        .chain(gone.iter().map(String::as_str))
        .collect();
    if cache.update(upserts, &removed) {
        // Not every list was looked at: the next reader stats them all.
        cache.set_info(None);
        list_cache::save(root, &cache)?;
    }
    Ok(())
}

fn list_name(path: &Path) -> Option<&str> {
    path.file_name()?.to_str()
}

/// What one file list says: its metadata (when stat'ed) and the kernels it
/// feeds.
struct Facts {
    index: usize,
    meta: Option<Meta>,
    /// Taken from the cache, not read.
    hit: bool,
    roles: Roles,
    modified: Option<SystemTime>,
}

/// The lists' facts, in candidate order. With `stat`, every list is stat'ed
/// first (before any read, so a list replaced meanwhile is cached under its
/// old metadata and read again next time) and a cache hit is not read.
/// Lists that feed nothing are left out unless stat'ed (the cache keeps them).
fn scan_lists(
    kernels: &[Kernel],
    candidates: &[(PackageName, Option<String>, PathBuf)],
    cache: Option<&Lookup<'_>>,
    stat: bool,
) -> Result<Vec<Facts>, Error> {
    // `status` reads every list (6,000 on a desktop), so the first test is
    // cheap: a list touching a tree directory names its parent directory, and
    // the tree directories of all kernels share a handful of parents
    // (/usr/src/, /usr/lib/linux-kbuild-6.1/). Searching once for those few,
    // with finders built once, and reading without a stat per file, took
    // `status` on 6,000 lists from 69 ms to 22 ms; the cache takes it below.
    let mut parents: Vec<Vec<u8>> = kernels
        .iter()
        .flat_map(|k| k.tree.iter().flat_map(TreeDir::names))
        .filter_map(Path::parent)
        .map(|p| [path_bytes(p), b"/"].concat())
        .collect();
    parents.sort();
    parents.dedup();
    let finders: Vec<memchr::memmem::Finder> =
        parents.iter().map(memchr::memmem::Finder::new).collect();
    // Lists are stat'ed relative to their directory, opened once: a path
    // walk per list costs more than the stat.
    let info = candidates
        .first()
        .and_then(|c| c.2.parent())
        .filter(|_| stat)
        .and_then(|d| {
            let fd = rustix::fs::open(
                d,
                rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok()?;
            Some((d.to_path_buf(), fd))
        });
    let scan = |first: usize, chunk: &[(PackageName, Option<String>, PathBuf)]| {
        scan_chunk(kernels, &finders, info.as_ref(), cache, stat, first, chunk)
    };
    // A few lists (a transaction's) are read here: a thread costs more
    // than reading them. A panic is the run's error all the same.
    if candidates.len() <= INLINE_LISTS {
        return std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scan(0, candidates)))
            .map_err(|_| Error::Refused("the file-list reader panicked".into()));
    }
    // Two threads: on 6,000 lists the syscalls dominate (open, read, close).
    let half = candidates.len().div_ceil(2).max(1);
    std::thread::scope(|s| {
        let workers: Vec<_> = candidates
            .chunks(half)
            .enumerate()
            .map(|(c, chunk)| {
                let scan = &scan;
                s.spawn(move || scan(c * half, chunk))
            })
            .collect();
        join_readers(workers)
    })
}

/// Lists read without starting threads.
const INLINE_LISTS: usize = 32;

/// [`scan_lists`] of the lists `chunk`, the first of which is candidate
/// number `first`.
fn scan_chunk(
    kernels: &[Kernel],
    finders: &[memchr::memmem::Finder<'_>],
    info: Option<&(PathBuf, rustix::fd::OwnedFd)>,
    cache: Option<&Lookup<'_>>,
    stat: bool,
    first: usize,
    chunk: &[(PackageName, Option<String>, PathBuf)],
) -> Vec<Facts> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for (i, (_, _, path)) in chunk.iter().enumerate() {
        let index = first + i;
        let meta = if stat { stat_list(info, path) } else { None };
        let hit = meta.and_then(|m| cache?.get(index, list_name(path)?, &m));
        if let (Some(m), Some(roles)) = (meta, hit) {
            out.push(Facts {
                index,
                meta,
                hit: true,
                roles: roles.clone(),
                modified: m.modified(),
            });
            continue;
        }
        let len = match read_whole(path, &mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Other => {
                log::warn!("{}: refused: {e}", path.display());
                continue;
            }
            Err(e) => {
                log::debug!("{}: {e}", path.display());
                continue;
            }
        };
        let data = &buf[..len];
        let mut facts = Facts {
            index,
            meta,
            hit: false,
            roles: Vec::new(),
            modified: None,
        };
        if finders.iter().any(|f| f.find(data).is_some()) {
            facts.modified = match meta {
                Some(m) => m.modified(),
                None => std::fs::symlink_metadata(path)
                    .and_then(|m| m.modified())
                    .ok(),
            };
            let list = FileList {
                path: path.clone(),
                data: data.to_vec(),
                modified: facts.modified,
            };
            facts.roles = roles_of(&list, kernels);
        }
        if meta.is_some() || !facts.roles.is_empty() {
            out.push(facts);
        }
    }
    out
}

/// A list's metadata, stat'ed relative to `info` when it lies there.
fn stat_list(info: Option<&(PathBuf, rustix::fd::OwnedFd)>, path: &Path) -> Option<Meta> {
    let flags = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
    let st = match info {
        Some((dir, fd)) if path.parent() == Some(dir.as_path()) => {
            rustix::fs::statat(fd, path.file_name()?, flags)
        }
        _ => rustix::fs::statat(rustix::fs::CWD, path, flags),
    };
    Meta::of(&st.ok()?)
}

/// The inputs per kernel from the lists' facts, and the compilers that
/// `compiler_wanted` accepts.
fn inputs_of(
    root: &Root,
    kernels: &[Kernel],
    candidates: &[(PackageName, Option<String>, PathBuf)],
    found: &[Facts],
    compiler_wanted: &dyn Fn(&PackageName) -> bool,
) -> BTreeMap<KernelRelease, Vec<Input>> {
    let mut out: BTreeMap<KernelRelease, Vec<Input>> = BTreeMap::new();
    for f in found {
        let (package, arch, _) = &candidates[f.index];
        for (k, role) in &f.roles {
            out.entry(k.clone()).or_default().push(Input {
                package: package.clone(),
                architecture: arch.clone(),
                role: *role,
                unpacked: f.modified,
            });
        }
    }
    // Compiler role: the package named like the compiler that ships it.
    for k in kernels {
        let Some(cc) = &k.compiler else { continue };
        let Ok(p) = PackageName::new(cc) else {
            continue;
        };
        if !compiler_wanted(&p) {
            continue;
        }
        let Some(path) = dpkg::list_path(root, &p, None) else {
            continue;
        };
        if let Ok(list) = dpkg::read_list(&path) {
            if list.touches(format!("/usr/bin/{cc}").as_bytes()) {
                out.entry(k.release.clone()).or_default().push(Input {
                    package: p,
                    architecture: None,
                    role: Role::Compiler,
                    unpacked: list.modified,
                });
            }
        }
    }
    out
}

/// The readers' findings; a reader that panicked is an error of the whole
/// run, never "no inputs" (which would be a missed rebuild with no message).
fn join_readers<T>(
    workers: Vec<std::thread::ScopedJoinHandle<'_, Vec<T>>>,
) -> Result<Vec<T>, Error> {
    let mut all = Vec::new();
    for w in workers {
        match w.join() {
            Ok(hits) => all.extend(hits),
            Err(_) => return Err(Error::Refused("a file-list reader thread panicked".into())),
        }
    }
    Ok(all)
}

/// Fallback where a tree directory is owned by no file list: guess the owner
/// from the path and accept it if dpkg has it installed.
pub fn guess_missing_inputs(
    kernels: &[Kernel],
    inputs: &mut BTreeMap<KernelRelease, Vec<Input>>,
    installed: &std::collections::HashMap<String, Vec<dpkg::Installed>>,
) {
    for k in kernels {
        for t in &k.tree {
            let Some(guess) = guess_owner(&t.path) else {
                continue;
            };
            let list = inputs.entry(k.release.clone()).or_default();
            if list.iter().any(|i| i.package == guess) {
                continue;
            }
            if installed
                .get(guess.as_str())
                .is_some_and(|v| v.iter().any(|i| i.has_files()))
            {
                log::debug!(
                    "{}: no file list owns {}, assuming {guess}",
                    k.release,
                    t.path.display()
                );
                list.push(Input {
                    package: guess,
                    architecture: None,
                    role: t.role,
                    unpacked: None,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a panicking reader was joined as "no inputs".
    #[test]
    fn a_panicking_reader_is_an_error() {
        let r = std::thread::scope(|s| {
            let ok = s.spawn(|| vec![1]);
            let bad = s.spawn(|| -> Vec<i32> { panic!("reader") });
            join_readers(vec![ok, bad])
        });
        assert!(r.is_err());
    }
}
