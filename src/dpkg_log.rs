//! Readers for dpkg's `dpkg.log` and apt's `history.log`, plain or gzip'd.
//!
//! Both are streamed line by line into a [`ChangeSet`] through one reused
//! buffer: a replay of a 1 GB log must neither load it nor allocate per line.
//! Only `install`/`upgrade`/`remove`/`purge` lines and the `status unpacked`
//! line that follows an unpack matter; everything else is skipped after a
//! look at a few bytes.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use jiff::civil::DateTime;

use crate::change::{ChangeSet, Event};
use crate::Error;

/// How many leading lines may be unrecognisable before a file is judged not
/// to be a log at all (a rotated log can start with a cut line).
const SNIFF_LINES: u64 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Dpkg,
    AptHistory,
}

/// Open `path` (inside or outside the root: a replay names host paths),
/// transparently un-gzipping it.
pub fn open(path: &Path) -> Result<Box<dyn BufRead>, Error> {
    let io_err = |e| Error::io(path, e);
    let mut f = crate::root::open_regular(path)?;
    let mut magic = [0u8; 2];
    let n = read_prefix(&mut f, &mut magic).map_err(io_err)?;
    let f = {
        use std::io::Seek;
        let mut f = f;
        f.seek(io::SeekFrom::Start(0)).map_err(io_err)?;
        f
    };
    Ok(if n == 2 && magic == [0x1f, 0x8b] {
        Box::new(BufReader::with_capacity(
            256 * 1024,
            flate2::read::MultiGzDecoder::new(f),
        ))
    } else {
        Box::new(BufReader::with_capacity(256 * 1024, f))
    })
}

fn read_prefix(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Read every file in `paths` into `set`. A file that is no log at all is an
/// error naming it; malformed lines inside a log are skipped.
pub fn read_files(paths: &[impl AsRef<Path>], set: &mut ChangeSet) -> Result<(), Error> {
    for p in paths {
        let p = p.as_ref();
        parse_reader(open(p)?, set).map_err(|e| e.for_file(p))?;
        set.end_of_file();
    }
    Ok(())
}

/// Parse one log from a reader, detecting its format from its first lines.
/// Returns the number of bytes consumed.
pub fn parse_reader(r: impl BufRead, set: &mut ChangeSet) -> Result<u64, Error> {
    parse_lines(r, set, false)
}

/// Like [`parse_reader`], but a final line without its newline (dpkg is
/// still writing it) is left unread: the returned count ends at the last
/// complete line, where the next read starts.
pub fn parse_complete_lines(r: impl BufRead, set: &mut ChangeSet) -> Result<u64, Error> {
    parse_lines(r, set, true)
}

/// Lines longer than this are no dpkg.log lines; they are skipped without
/// being held in memory.
const MAX_LINE: usize = 1 << 20;

/// Per-file parsing state.
struct Lines {
    format: Option<LogFormat>,
    line_no: u64,
    nonblank: u64,
    history: HistoryBlock,
}

impl Lines {
    fn line(&mut self, raw: &[u8], set: &mut ChangeSet) -> Result<(), Error> {
        self.line_no += 1;
        // A crash can leave unflushed log data as a run of NUL bytes, which
        // then prefixes the next line dpkg writes: skip it and read on.
        let nuls = raw.iter().take_while(|&&b| b == 0).count();
        if nuls > 0 {
            log::debug!("skipped {nuls} NUL bytes before line {}", self.line_no);
        }
        let line = trim_eol(&raw[nuls..]);
        if !line.is_empty() {
            self.nonblank += 1;
        }
        let f = match self.format {
            Some(f) => f,
            None => match sniff(line) {
                Some(f) => *self.format.insert(f),
                None if self.nonblank >= SNIFF_LINES || line.contains(&0) => {
                    return Err(not_a_log())
                }
                None => return Ok(()),
            },
        };
        match f {
            LogFormat::Dpkg => parse_dpkg_line(line, self.line_no, set),
            LogFormat::AptHistory => self.history.line(line, self.line_no, set),
        }
        Ok(())
    }
}

fn not_a_log() -> Error {
    Error::Log {
        path: None,
        line: None,
        reason: "not a dpkg.log or apt history.log".into(),
    }
}

/// Lines are taken straight from the reader's buffer (found with memchr);
/// only a line split between two reads is copied. Against `read_until` into a
/// line buffer this doubled replay throughput (README, benchmarks).
fn parse_lines(
    mut r: impl BufRead,
    set: &mut ChangeSet,
    complete_only: bool,
) -> Result<u64, Error> {
    let mut st = Lines {
        format: None,
        line_no: 0,
        nonblank: 0,
        history: HistoryBlock::default(),
    };
    let mut carry: Vec<u8> = Vec::new();
    let mut skipping = false;
    // Bytes before the current buffer, and up to the last complete line.
    let mut offset: u64 = 0;
    let mut complete: u64 = 0;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Log {
                    path: None,
                    line: Some(st.line_no + 1),
                    reason: e.to_string(),
                })
            }
        };
        if buf.is_empty() {
            break;
        }
        let len = buf.len();
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', buf) {
            let piece = &buf[start..=end];
            if skipping {
                skipping = false;
                st.line_no += 1;
            } else if carry.is_empty() {
                st.line(piece, set)?;
            } else {
                carry.extend_from_slice(piece);
                st.line(&carry, set)?;
                carry.clear();
            }
            start = end + 1;
            complete = offset + start as u64;
        }
        let rest = &buf[start..];
        if !skipping {
            if carry.len() + rest.len() > MAX_LINE {
                log::debug!(
                    "line {}: longer than {MAX_LINE} bytes, skipped",
                    st.line_no + 1
                );
                carry = Vec::new();
                skipping = true;
            } else {
                carry.extend_from_slice(rest);
            }
        }
        r.consume(len);
        offset += len as u64;
    }
    if !carry.is_empty() && !complete_only {
        st.line(&carry, set)?;
    }
    if st.format.is_none() && st.nonblank > 0 {
        // Short and unrecognisable: still not a log.
        return Err(not_a_log());
    }
    Ok(if complete_only { complete } else { offset })
}

fn trim_eol(mut l: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r'] = l {
        l = rest;
    }
    l
}

fn sniff(line: &[u8]) -> Option<LogFormat> {
    if line.starts_with(b"Start-Date:") {
        Some(LogFormat::AptHistory)
    } else if parse_time(line).is_some() && line.len() > 20 {
        Some(LogFormat::Dpkg)
    } else {
        None
    }
}

/// `YYYY-MM-DD HH:MM:SS` at the start of a line (history.log puts two spaces
/// between date and time; callers normalise that).
fn parse_time(l: &[u8]) -> Option<DateTime> {
    let d = |i: usize, n: usize| -> Option<i32> {
        let s = l.get(i..i + n)?;
        let mut v = 0i32;
        for &c in s {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + i32::from(c - b'0');
        }
        Some(v)
    };
    if l.get(4) != Some(&b'-') || l.get(7) != Some(&b'-') || l.get(13) != Some(&b':') {
        return None;
    }
    let (year, month, day) = (d(0, 4)?, d(5, 2)?, d(8, 2)?);
    let (hour, minute, second) = (d(11, 2)?, d(14, 2)?, d(17, 2)?);
    jiff::civil::DateTime::new(
        i16::try_from(year).ok()?,
        i8::try_from(month).ok()?,
        i8::try_from(day).ok()?,
        i8::try_from(hour).ok()?,
        i8::try_from(minute).ok()?,
        i8::try_from(second).ok()?,
        0,
    )
    .ok()
}

fn words(l: &[u8]) -> impl Iterator<Item = &[u8]> {
    l.split(|&c| c == b' ').filter(|w| !w.is_empty())
}

fn version_word(w: &[u8]) -> Option<Option<&str>> {
    if w == b"<none>" {
        return Some(None);
    }
    std::str::from_utf8(w).ok().map(Some)
}

/// One dpkg.log line. Most lines are `status` lines of packages with nothing
/// pending; they cost a prefix test and one hash lookup.
fn parse_dpkg_line(line: &[u8], line_no: u64, set: &mut ChangeSet) {
    let Some(rest) = line.get(20..) else {
        log::debug!("dpkg.log line {line_no}: too short, skipped");
        return;
    };
    if let Some(st) = rest.strip_prefix(b"status unpacked ") {
        let mut w = words(st);
        let (Some(pkg), Some(ver), None) = (w.next(), w.next(), w.next()) else {
            log::debug!("dpkg.log line {line_no}: malformed status line, skipped");
            return;
        };
        if !set.is_pending(pkg) {
            return;
        }
        let (Some(at), Ok(version)) = (parse_time(line), std::str::from_utf8(ver)) else {
            log::debug!("dpkg.log line {line_no}: bad time or version, skipped");
            return;
        };
        set.record(pkg, (at, line_no), Event::Unpacked { version });
        return;
    }
    let kind_len = rest.iter().position(|&c| c == b' ').unwrap_or(rest.len());
    let kind = &rest[..kind_len];
    let unpacking = match kind {
        b"install" | b"upgrade" => true,
        b"remove" | b"purge" => false,
        // status, startup, configure, trigproc, disappear, conffile: nothing
        // to fold (`disappear` is followed by `status not-installed`, and a
        // disappeared package owns no files any more).
        b"status" | b"startup" | b"configure" | b"trigproc" | b"disappear" | b"conffile" => return,
        _ => {
            log::debug!("dpkg.log line {line_no}: unknown action, skipped");
            return;
        }
    };
    let mut w = words(&rest[kind_len..]);
    let (Some(pkg), Some(old), Some(new), None) = (w.next(), w.next(), w.next(), w.next()) else {
        let kind = String::from_utf8_lossy(kind);
        log::debug!("dpkg.log line {line_no}: malformed {kind} line, skipped");
        return;
    };
    if !set.wants(pkg) {
        return;
    }
    let (Some(at), Some(old), Some(new)) = (parse_time(line), version_word(old), version_word(new))
    else {
        log::debug!("dpkg.log line {line_no}: bad time or version, skipped");
        return;
    };
    let event = if unpacking {
        let Some(new) = new else {
            log::debug!("dpkg.log line {line_no}: unpack without a version, skipped");
            return;
        };
        Event::Unpacking { old, new }
    } else {
        Event::Removed { old }
    };
    set.record(pkg, (at, line_no), event);
}

/// State of the apt history block being read.
#[derive(Debug, Default)]
struct HistoryBlock {
    start: Option<DateTime>,
}

impl HistoryBlock {
    fn line(&mut self, line: &[u8], line_no: u64, set: &mut ChangeSet) {
        let Ok(line) = std::str::from_utf8(line) else {
            log::debug!("history.log line {line_no}: not UTF-8, skipped");
            return;
        };
        let Some((key, value)) = line.split_once(": ") else {
            if !line.trim().is_empty() {
                log::debug!("history.log line {line_no}: malformed, skipped");
            }
            return;
        };
        if key == "Start-Date" {
            // "2026-11-23  20:57:34": two spaces; squeeze to dpkg's form.
            let squeezed: String = value.split_whitespace().collect::<Vec<_>>().join(" ");
            self.start = parse_time(squeezed.as_bytes());
            if self.start.is_none() {
                log::debug!("history.log line {line_no}: bad Start-Date, block skipped");
            }
            return;
        }
        let removal = match key {
            "Install" | "Upgrade" | "Downgrade" | "Reinstall" => false,
            "Remove" | "Purge" => true,
            _ => return,
        };
        let Some(start) = self.start else { return };
        // "a:amd64 (1.0, automatic), b:amd64 (2.0, 3.0)": versions hold neither
        // ')' nor ','.
        for item in value.split("), ") {
            let item = item.trim().trim_end_matches(')');
            let Some((pkg, vers)) = item.split_once(" (") else {
                log::debug!("history.log line {line_no}: malformed entry {item:?}, skipped");
                continue;
            };
            if !set.wants(pkg.as_bytes()) {
                continue;
            }
            let vers: Vec<&str> = vers
                .split(", ")
                .map(str::trim)
                .filter(|v| *v != "automatic")
                .collect();
            let at = (start, line_no);
            match (removal, key, vers.as_slice()) {
                (true, _, [old, ..]) => {
                    set.record(pkg.as_bytes(), at, Event::Removed { old: Some(old) })
                }
                (false, "Install", [new]) => set.record_unpacked_now(pkg.as_bytes(), at, None, new),
                (false, "Reinstall", [v]) => {
                    set.record_unpacked_now(pkg.as_bytes(), at, Some(v), v)
                }
                (false, _, [old, new]) => {
                    set.record_unpacked_now(pkg.as_bytes(), at, Some(old), new)
                }
                _ => log::debug!("history.log line {line_no}: malformed entry {item:?}, skipped"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Change;

    fn parse(bytes: &[u8]) -> Result<Vec<Change>, Error> {
        let mut set = ChangeSet::new();
        parse_reader(bytes, &mut set)?;
        Ok(set.finish())
    }

    const UPGRADE: &[u8] = b"\
2026-11-23 20:57:34 startup archives unpack
2026-11-23 20:57:37 upgrade linux-kbuild-6.1:amd64 6.1.176-1 6.1.192-2
2026-11-23 20:57:37 status half-configured linux-kbuild-6.1:amd64 6.1.176-1
2026-11-23 20:57:37 status unpacked linux-kbuild-6.1:amd64 6.1.176-1
2026-11-23 20:57:37 status half-installed linux-kbuild-6.1:amd64 6.1.176-1
2026-11-23 20:57:37 status unpacked linux-kbuild-6.1:amd64 6.1.192-2
2026-11-23 20:57:38 startup packages configure
2026-11-23 20:57:38 configure linux-kbuild-6.1:amd64 6.1.192-2 <none>
2026-11-23 20:57:38 status installed linux-kbuild-6.1:amd64 6.1.192-2
2026-11-23 20:57:38 conffile /etc/x keep
2026-11-23 20:57:39 trigproc man-db:amd64 2.11.2-2 <none>
";

    #[test]
    fn upgrade_with_unpack_time() {
        let c = parse(UPGRADE).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].describe(), "linux-kbuild-6.1 6.1.176-1 → 6.1.192-2");
        assert_eq!(c[0].architecture.as_deref(), Some("amd64"));
        assert_eq!(c[0].unpacked, Some("2026-11-23T20:57:37".parse().unwrap()));
    }

    #[test]
    fn crlf_and_missing_final_newline() {
        let crlf: Vec<u8> = UPGRADE
            .split(|&c| c == b'\n')
            .flat_map(|l| l.iter().copied().chain(*b"\r\n"))
            .collect();
        assert_eq!(parse(&crlf).unwrap().len(), 1);
        assert_eq!(parse(&UPGRADE[..UPGRADE.len() - 1]).unwrap().len(), 1);
    }

    #[test]
    fn removal_purge_and_old_logs_without_arch() {
        let c = parse(
            b"2020-01-01 10:00:00 remove linux-headers-5.10.0-9-amd64 5.10.70-1 <none>\n\
              2020-01-01 10:00:01 purge linux-headers-5.10.0-9-common:all 5.10.70-1 <none>\n",
        )
        .unwrap();
        assert_eq!(c.len(), 2);
        assert!(c.iter().all(Change::is_removal));
        assert_eq!(c[0].architecture, None);
        assert_eq!(c[1].architecture.as_deref(), Some("all"));
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let c = parse(
            b"2026-11-23 20:57:37 upgrade linux-kbuild-6.1:amd64 6.1.176-1\n\
              2026-11-23 20:57:37 frobnicate x:amd64 1 2\n\
              2026-11-23 2x:57:37 upgrade y:amd64 1 2\n\
              garbage\n\
              2026-11-23 20:57:37 upgrade z:amd64 1 !!bad\n\
              2026-11-23 20:57:37 install ok:amd64 <none> 1.0\n\
              2026-11-23 20:57:37 status unpacked ok:amd64 1.0\n",
        )
        .unwrap();
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].package.as_str(), "ok");
        assert!(c[0].unpacked.is_some());
    }

    #[test]
    fn an_unfinished_last_line_is_left_for_the_next_read() {
        let mut set = ChangeSet::new();
        let cut = &UPGRADE[..UPGRADE.len() - 10];
        let n = parse_complete_lines(cut, &mut set).unwrap();
        let n = usize::try_from(n).unwrap();
        assert_eq!(&cut[n - 1..n], b"\n");
        assert!(n < cut.len());
    }

    #[test]
    fn not_a_log() {
        let e = parse(b"\x7fELF\x02\x01\x01\0\0\0binary").unwrap_err();
        assert!(e.to_string().contains("not a dpkg.log"), "{e}");
        assert!(parse(b"hello world\n").is_err());
        assert_eq!(parse(b"").unwrap(), vec![]);
    }

    #[test]
    fn gzip_is_detected() {
        use std::io::Write;
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("dpkg.log.2.gz");
        let mut gz = flate2::write::GzEncoder::new(File::create(&p).unwrap(), Default::default());
        gz.write_all(UPGRADE).unwrap();
        gz.finish().unwrap();
        let mut set = ChangeSet::new();
        read_files(&[&p], &mut set).unwrap();
        assert_eq!(set.finish().len(), 1);
    }

    #[test]
    fn apt_history_uses_start_date() {
        let c = parse(
            b"\nStart-Date: 2026-11-23  20:57:34\n\
Commandline: apt-get install -y linux-headers-6.1.0-56-amd64\n\
Install: linux-headers-6.1.0-56-amd64:amd64 (6.1.192-2), linux-headers-6.1.0-56-common:amd64 (6.1.192-2, automatic)\n\
Upgrade: linux-kbuild-6.1:amd64 (6.1.176-1, 6.1.192-2)\n\
Remove: linux-headers-6.1.0-9-amd64:amd64 (6.1.27-1)\n\
End-Date: 2026-11-23  20:57:41\n",
        )
        .unwrap();
        assert_eq!(c.len(), 4);
        let kb = c
            .iter()
            .find(|c| c.package.as_str() == "linux-kbuild-6.1")
            .unwrap();
        assert_eq!(kb.describe(), "linux-kbuild-6.1 6.1.176-1 → 6.1.192-2");
        assert_eq!(kb.unpacked, Some("2026-11-23T20:57:34".parse().unwrap()));
        assert!(c
            .iter()
            .any(|c| c.package.as_str() == "linux-headers-6.1.0-9-amd64" && c.is_removal()));
    }
}
