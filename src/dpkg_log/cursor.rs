//! Where the last run stopped reading dpkg.log ([`Cursor`], saved by
//! [`crate::state::State::save_cursor`]), and what to read next from it
//! ([`log_span`]): the same file from the offset, its rotated predecessor
//! and then the new one, or the whole log when it was replaced. A log is
//! recognised by device, inode and a fingerprint of the bytes before the
//! offset, so a truncated or rewritten log is never read from a stale
//! offset.

use std::fs;
use std::io::{self, Read, Seek};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state_dir::STATE_VERSION;

/// Bytes before the cursor that identify the log it was taken in.
const FINGERPRINT_LEN: u64 = 4096;

/// Where the last run stopped reading dpkg.log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub version: u32,
    pub device: u64,
    pub inode: u64,
    pub offset: u64,
    /// FNV-1a of the `FINGERPRINT_LEN` bytes before `offset`: a log replaced
    /// by another with the same inode or truncated is noticed.
    pub fingerprint: u64,
}

fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Where to read dpkg.log from, given the saved cursor.
#[derive(Debug, PartialEq, Eq)]
pub enum LogSpan {
    /// First run ever: start at the end.
    StartAtEnd,
    /// Read these (host path, offset) pieces in order.
    Files(Vec<(PathBuf, u64)>),
}

fn identity(p: &Path) -> Option<(u64, u64, u64)> {
    let m = fs::metadata(p).ok()?;
    Some((m.dev(), m.ino(), m.len()))
}

pub fn fingerprint(p: &Path, offset: u64) -> Option<u64> {
    // Not `File::open`: a FIFO in dpkg.log's place would block the hook.
    let mut f = crate::root::open_regular(p).ok()?;
    let start = offset.saturating_sub(FINGERPRINT_LEN);
    f.seek(io::SeekFrom::Start(start)).ok()?;
    let mut buf = vec![0; usize::try_from(offset - start).ok()?];
    f.read_exact(&mut buf).ok()?;
    Some(fnv1a(&buf))
}

/// A cursor at the current end of `log`.
pub fn cursor_at_end(log: &Path) -> Option<Cursor> {
    let (device, inode, len) = identity(log)?;
    Some(Cursor {
        version: STATE_VERSION,
        device,
        inode,
        offset: len,
        fingerprint: fingerprint(log, len)?,
    })
}

/// Decide what to read. `log` is the host path of dpkg.log; its rotated
/// predecessor is `log.1`.
pub fn log_span(cursor: Option<&Cursor>, log: &Path) -> LogSpan {
    let Some(c) = cursor else {
        return LogSpan::StartAtEnd;
    };
    let same = |p: &Path| {
        identity(p).is_some_and(|(d, i, len)| {
            d == c.device
                && i == c.inode
                && len >= c.offset
                && fingerprint(p, c.offset) == Some(c.fingerprint)
        })
    };
    if same(log) {
        return LogSpan::Files(vec![(log.to_path_buf(), c.offset)]);
    }
    let rotated = PathBuf::from(format!("{}.1", log.display()));
    if same(&rotated) {
        // logrotate moved our file aside: finish it, then the new one.
        return LogSpan::Files(vec![(rotated, c.offset), (log.to_path_buf(), 0)]);
    }
    // Replaced or truncated beyond recognition: read the whole current log.
    LogSpan::Files(vec![(log.to_path_buf(), 0)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn cursor_follows_rotation() {
        let t = tempfile::tempdir().unwrap();
        let log = t.path().join("dpkg.log");
        fs::write(&log, "a\nb\n").unwrap();
        assert_eq!(log_span(None, &log), LogSpan::StartAtEnd);
        let c = cursor_at_end(&log).unwrap();
        assert_eq!(
            log_span(Some(&c), &log),
            LogSpan::Files(vec![(log.clone(), 4)])
        );
        fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(b"c\n")
            .unwrap();
        assert_eq!(
            log_span(Some(&c), &log),
            LogSpan::Files(vec![(log.clone(), 4)])
        );
        let rotated = t.path().join("dpkg.log.1");
        fs::rename(&log, &rotated).unwrap();
        fs::write(&log, "d\n").unwrap();
        assert_eq!(
            log_span(Some(&c), &log),
            LogSpan::Files(vec![(rotated, 4), (log.clone(), 0)])
        );
    }

    #[test]
    fn a_rewritten_log_is_read_whole() {
        let t = tempfile::tempdir().unwrap();
        let log = t.path().join("dpkg.log");
        fs::write(&log, "aaaa\n").unwrap();
        let c = cursor_at_end(&log).unwrap();
        let mut f = fs::OpenOptions::new().write(true).open(&log).unwrap();
        f.write_all(b"bbbb\n").unwrap(); // same inode, same length, other bytes
        assert_eq!(
            log_span(Some(&c), &log),
            LogSpan::Files(vec![(log.clone(), 0)])
        );
    }
}
