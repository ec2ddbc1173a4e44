//! What goes into the queue: the changes dpkg made (dpkg.log from the
//! cursor, or the logs given to `replay`), planned against the inventory,
//! persisted as queued pairs *before* the cursor moves past them; also the
//! pairs `sync` finds stale and the failures `retry` takes up again. The
//! order of writes is what makes any interruption harmless. Call with the
//! lock held (except [`read_logs`] and [`plan_changes`], which only read).

use std::io::{BufReader, Seek, SeekFrom};
use std::path::Path;
use std::time::SystemTime;

use crate::change::{Change, ChangeSet};
use crate::config::Config;
use crate::dpkg_log;
use crate::dpkg_log::cursor::{self, Cursor, LogSpan};
use crate::inventory::Inventory;
use crate::kernel::CacheUse;
use crate::model::Cause;
use crate::plan::{self, PairState, Plan, Rebuild};
use crate::root::Root;
use crate::state::{self, Failure, QueuedPair, State};
use crate::Error;

pub const DPKG_LOG: &str = "/var/log/dpkg.log";

/// Plan for `changes` on this root.
pub fn plan_changes(root: &Root, changes: &[Change], cfg: &Config) -> Result<Plan, Error> {
    plan_on_inventory(root, changes, cfg).map(|(p, _)| p)
}

/// [`plan_changes`], and the inventory it planned on (whose warnings are
/// moved into the plan).
fn plan_on_inventory(
    root: &Root,
    changes: &[Change],
    cfg: &Config,
) -> Result<(Plan, Inventory), Error> {
    let mut inv = Inventory::for_changes(root, changes)?;
    let mut p = plan::plan(changes, &inv, cfg);
    p.warnings.splice(
        0..0,
        std::mem::take(&mut inv.warnings)
            .into_iter()
            .map(plan::Warning::Machine),
    );
    Ok((p, inv))
}

/// Seconds since the epoch of the newest cause of a rebuild; "now" for a
/// planned change.
fn stale_since(r: &Rebuild) -> u64 {
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    r.because
        .iter()
        .map(|c| c.unpacked.map_or_else(state::now_secs, secs))
        .max()
        .unwrap_or_else(state::now_secs)
}

/// Add the plan's rebuilds to the persistent queue (deduplicated).
pub fn enqueue(state: &State, plan: &Plan) -> Result<(), Error> {
    if plan.rebuilds.is_empty() {
        return Ok(());
    }
    let mut q = state.queue()?;
    for r in &plan.rebuilds {
        let p = &r.pair;
        let entry = QueuedPair {
            id: p.id.clone(),
            because: r.because.clone(),
            stale_since: stale_since(r),
        };
        match q.pending.iter_mut().find(|x| x.id == entry.id) {
            Some(x) => {
                x.stale_since = x.stale_since.max(entry.stale_since);
                merge_causes(&mut x.because, entry.because);
            }
            None => q.pending.push(entry),
        }
    }
    state.save_queue(&q)
}

/// A queued pair made stale again (another step of the same upgrade): one
/// cause per package, from its version before the first change to that of
/// the last (`6.1.192-2 → 6.1.201-1`), the other packages' kept.
fn merge_causes(queued: &mut Vec<Cause>, newer: Vec<Cause>) {
    for c in newer {
        match queued.iter_mut().find(|q| q.package == c.package) {
            Some(q) => {
                q.new = c.new;
                q.unpacked = c.unpacked;
            }
            None => queued.push(c),
        }
    }
}

/// Read dpkg.log from the cursor, plan, enqueue, then advance the cursor.
pub fn queue_from_dpkg_log(root: &Root, state: &State, cfg: &Config) -> Result<Plan, Error> {
    // Never a fallback to a path the host would resolve: under `--root` a
    // `var -> /var` link would read the host's log and move its cursor.
    let log = root
        .inside(DPKG_LOG)
        .map_err(|e| Error::io(Path::new(DPKG_LOG), e))?;
    let cursor = match state.cursor() {
        Ok(c) => c,
        Err(e @ (Error::StateTooNew { .. } | Error::UnsafeStateDir { .. })) => return Err(e),
        Err(e) => {
            // Re-reading the whole log costs only rebuilds of pairs that are
            // really stale: safer than skipping what the cursor covered.
            log::warn!("{e}; reading all of {}", log.display());
            Some(Cursor {
                version: state::STATE_VERSION,
                device: 0,
                inode: 0,
                offset: 0,
                fingerprint: 0,
            })
        }
    };
    let pieces = match cursor::log_span(cursor.as_ref(), &log) {
        LogSpan::StartAtEnd => {
            if let Some(c) = cursor::cursor_at_end(&log) {
                state.save_cursor(&c)?;
            }
            return Ok(Plan::default());
        }
        LogSpan::Files(p) => p,
    };
    let mut set = ChangeSet::new();
    let mut end = None;
    let mut read = 0;
    for (path, offset) in &pieces {
        let mut f = match crate::root::open_regular(path) {
            Ok(f) => f,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                continue
            }
            Err(e) => return Err(e),
        };
        f.seek(SeekFrom::Start(*offset))
            .map_err(|e| Error::io(path, e))?;
        let n = dpkg_log::parse_complete_lines(BufReader::new(f), &mut set)
            .map_err(|e| e.for_file(path))?;
        set.end_of_file();
        read += n;
        end = Some((path.clone(), offset + n));
    }
    if read == 0 && pieces.len() == 1 {
        // The common case after every dpkg run with nothing new: no
        // inventory, no write (each atomic write costs two fsyncs).
        return Ok(Plan::default());
    }
    let changes = set.finish();
    let (plan, inv) = plan_on_inventory(root, &changes, cfg)?;
    enqueue(state, &plan)?;
    // Only now, with the queue safe on disk, move past these changes.
    if let Some((path, offset)) = end {
        if let Some(mut c) = cursor::cursor_at_end(&path) {
            c.offset = offset;
            c.fingerprint = cursor::fingerprint(&path, offset).unwrap_or(0);
            state.save_cursor(&c)?;
        }
    }
    // dpkg changed the build trees: bring the file-list cache up to date
    // for the users' `status` (looking at the changed packages' lists
    // only). Root only: a user's run never writes it. After a transaction
    // that fed no tree (most of them) the cache is left alone: loading and
    // writing it would cost every apt run more than the few lists it
    // changed cost the next `status`, which stats every list then anyway
    // (dpkg renamed lists in the info directory, see `kernel::list_cache`).
    if !plan.changes.is_empty() && rustix::process::geteuid().is_root() {
        if let Err(e) = crate::kernel::refresh_list_cache(root, &inv.kernels, &changes) {
            log::debug!("file-list cache not refreshed: {e}");
        }
    }
    Ok(plan)
}

/// Logs larger than this are read through a filter of the packages that can
/// matter: finding those costs a scan of every file list (~20 ms on 6,000
/// packages), which pays off only when there is much to skip.
const FILTER_ABOVE: u64 = 4 << 20;

/// The changes in the given logs (any order, plain or gzip'd).
pub fn read_logs(root: &Root, logs: &[impl AsRef<Path>]) -> Result<Vec<Change>, Error> {
    let size: u64 = logs
        .iter()
        .filter_map(|l| std::fs::metadata(l).ok())
        .map(|m| m.len())
        .sum();
    let mut set = if size > FILTER_ABOVE {
        // A replay only reads the file-list cache, even as root: it writes
        // nothing of the state.
        ChangeSet::only(Inventory::full_with(root, CacheUse::Read)?.package_names())
    } else {
        ChangeSet::new()
    };
    dpkg_log::read_files(logs, &mut set)?;
    Ok(set.finish())
}

/// Queue every pair the file system shows stale (also those that went stale
/// before dkms-hook was installed) or broken: what `sync` rebuilds, and `boot` for the
/// running kernel (an inventory of that kernel only).
pub fn queue_stale(state: &State, inv: &Inventory, cfg: &Config) -> Result<Plan, Error> {
    let rows = crate::verify::assess(state.root(), inv, cfg, &[], None);
    let p = Plan {
        rebuilds: rows
            .iter()
            .filter(|r| matches!(r.state, PairState::Stale | PairState::Broken))
            .filter_map(|r| {
                Some(Rebuild {
                    pair: r.pair.clone()?,
                    because: r.because.clone(),
                })
            })
            .collect(),
        ..Plan::default()
    };
    enqueue(state, &p)?;
    Ok(p)
}

/// Queue again each pair whose last rebuild failed that `pick` picks:
/// what `retry` does (the scheduled retry picks those with attempts left).
pub fn queue_failures(state: &State, pick: impl Fn(&Failure) -> bool) -> Result<(), Error> {
    let failures = state.failures()?;
    let mut q = state.queue()?;
    for f in failures.failed.into_iter().filter(|f| pick(f)) {
        if !q.pending.iter().any(|p| p.id == f.id) {
            q.pending.push(QueuedPair {
                id: f.id,
                because: f.because,
                stale_since: f.time,
            });
        }
    }
    state.save_queue(&q)
}

/// Start the cursor at the end of dpkg.log unless one exists (the package's
/// postinst runs this once, so the history before it is not replayed).
pub fn init_cursor(root: &Root, state: &State) -> Result<(), Error> {
    if state.cursor().ok().flatten().is_some() {
        return Ok(());
    }
    match root
        .resolve(DPKG_LOG)
        .ok()
        .and_then(|l| cursor::cursor_at_end(&l))
    {
        Some(c) => state.save_cursor(&c),
        None => Ok(()),
    }
}
