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

pub mod cursor;

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

/// Which loop reads the lines of a dpkg.log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Every line is parsed by `parse_dpkg_line`.
    Simple,
    /// Lines that cannot change the [`ChangeSet`] are skipped after a look at
    /// their action word (and package name): see `skippable`. Others go to
    /// the simple parser, so both give the same changes.
    Fast,
}

impl Scan {
    /// The fast scan pays off with a filtered set: on a 1 GB log of
    /// unrelated packages it took the replay from 0.59 s to the figure in the
    /// README (2 cores). Unfiltered sets are those of logs below 4 MB
    /// (`intake::FILTER_ABOVE`) and of post-invoke's few new lines, read in
    /// under 3 ms either way: they keep the simple loop.
    pub fn for_set(set: &ChangeSet) -> Scan {
        if set.is_filtered() {
            Scan::Fast
        } else {
            Scan::Simple
        }
    }
}

/// Parse one log from a reader, detecting its format from its first lines.
/// Returns the number of bytes consumed.
pub fn parse_reader(r: impl BufRead, set: &mut ChangeSet) -> Result<u64, Error> {
    let scan = Scan::for_set(set);
    parse_lines(r, set, false, scan)
}

/// [`parse_reader`] with the line loop chosen by the caller: for tests and
/// fuzzing, which check that both loops agree.
pub fn parse_reader_with(r: impl BufRead, set: &mut ChangeSet, scan: Scan) -> Result<u64, Error> {
    parse_lines(r, set, false, scan)
}

/// Like [`parse_reader`], but a final line without its newline (dpkg is
/// still writing it) is left unread: the returned count ends at the last
/// complete line, where the next read starts.
pub fn parse_complete_lines(r: impl BufRead, set: &mut ChangeSet) -> Result<u64, Error> {
    let scan = Scan::for_set(set);
    parse_lines(r, set, true, scan)
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
/// line buffer this doubled replay throughput (docs/benchmarks.md).
fn parse_lines(
    mut r: impl BufRead,
    set: &mut ChangeSet,
    complete_only: bool,
    scan: Scan,
) -> Result<u64, Error> {
    let fast = scan == Scan::Fast;
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
        for end in Newlines::new(buf) {
            let piece = &buf[start..=end];
            if skipping {
                skipping = false;
                st.line_no += 1;
            } else if carry.is_empty() {
                if fast && st.format == Some(LogFormat::Dpkg) && skippable(piece, set) {
                    st.line_no += 1;
                } else {
                    st.line(piece, set)?;
                }
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

/// Whether a dpkg.log line (with its line end) certainly leaves `set` as it
/// is, judged from its action word and, for unpacks and removals, its
/// package name: what `parse_dpkg_line` would skip after parsing it. Most
/// lines of a real log are `status`, `configure` and `trigproc` lines of
/// packages with nothing pending. Anything unusual (NUL bytes, a short line,
/// an unknown action) is left to `parse_dpkg_line`.
#[inline]
fn skippable(line: &[u8], set: &ChangeSet) -> bool {
    // "YYYY-MM-DD HH:MM:SS " is 20 bytes; the action follows.
    if line.first() == Some(&0) {
        return false;
    }
    let Some(rest) = line.get(20..) else {
        return false;
    };
    let kind_len = match rest.first() {
        // A status line matters only while an unpack waits for it.
        Some(b's') => {
            return (rest.starts_with(b"status ") && !set.any_pending())
                || rest.starts_with(b"startup ")
        }
        Some(b'c') => return rest.starts_with(b"configure ") || rest.starts_with(b"conffile "),
        Some(b't') => return rest.starts_with(b"trigproc "),
        Some(b'u') if rest.starts_with(b"upgrade ") => 7,
        Some(b'i') if rest.starts_with(b"install ") => 7,
        Some(b'r') if rest.starts_with(b"remove ") => 6,
        Some(b'p') if rest.starts_with(b"purge ") => 5,
        _ => return false,
    };
    // The first word after the action, as `words` finds it. Where this word
    // ends the line, the simple parser finds too few words and skips the
    // line anyway.
    let args = &rest[kind_len..];
    let Some(from) = args.iter().position(|&c| c != b' ') else {
        return false;
    };
    let args = &args[from..];
    // Most names are rejected on their first eight bytes, gathered without
    // searching the line for the word's end.
    if !set.may_want_prefix(name_head(args)) {
        return true;
    }
    let pkg = &args[..args.iter().position(|&c| c == b' ').unwrap_or(args.len())];
    !set.may_want(pkg)
}

/// The first eight bytes of `args` up to the first space or colon, as
/// [`ChangeSet::may_want_prefix`] takes them: zero-padded, little-endian.
/// Branch-free on a whole word: a byte loop here cost a tenth of a replay.
fn name_head(args: &[u8]) -> u64 {
    let Some(word) = args.first_chunk::<8>() else {
        let mut head = [0u8; 8];
        for (d, &c) in head.iter_mut().zip(args) {
            if c == b' ' || c == b':' {
                break;
            }
            *d = c;
        }
        return u64::from_le_bytes(head);
    };
    const LOW: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let w = u64::from_le_bytes(*word);
    // High bit of each byte of `zero(x)`: that byte of x is zero (exact, no
    // carries between bytes).
    let zero = |x: u64| !(((x & LOW).wrapping_add(LOW)) | x | LOW);
    let stops = zero(w ^ 0x2020_2020_2020_2020) | zero(w ^ 0x3a3a_3a3a_3a3a_3a3a);
    // Keep the bytes below the first stop.
    match stops.trailing_zeros() {
        64 => w,
        bit => w & ((1u64 << (bit - 7)) - 1),
    }
}

/// The offsets of the newlines in `buf`, found 64 bytes at a time as a bit
/// mask and taken out bit by bit: a `memchr` call per line of ~60 bytes was a
/// third of a replay's time.
struct Newlines<'a> {
    buf: &'a [u8],
    /// Start of the block `mask` describes.
    base: usize,
    mask: u64,
}

impl<'a> Newlines<'a> {
    fn new(buf: &'a [u8]) -> Newlines<'a> {
        Newlines {
            buf,
            base: 0,
            mask: block_mask(buf),
        }
    }
}

impl Iterator for Newlines<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        while self.mask == 0 {
            self.base += 64;
            let block = self.buf.get(self.base..)?;
            if block.is_empty() {
                return None;
            }
            self.mask = block_mask(block);
        }
        let bit = self.mask.trailing_zeros() as usize;
        self.mask &= self.mask - 1;
        Some(self.base + bit)
    }
}

/// Bit `i` set where `block[i]` is a newline, for the first 64 bytes.
fn block_mask(block: &[u8]) -> u64 {
    match block.first_chunk::<64>() {
        Some(b) => newline_mask(b),
        None => block
            .iter()
            .enumerate()
            .fold(0, |m, (i, &c)| m | (u64::from(c == b'\n') << i)),
    }
}

/// Four SSE2 compares per 64 bytes. The two 8-byte halves of each 16 bytes
/// compile to one unaligned load, so no pointer is handled here.
#[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
fn newline_mask(b: &[u8; 64]) -> u64 {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_movemask_epi8, _mm_set1_epi8, _mm_set_epi64x};
    let mut mask = 0u64;
    for (i, q) in b.chunks_exact(16).enumerate() {
        let (lo, hi) = q.split_at(8);
        let half = |h: &[u8]| i64::from_le_bytes(<[u8; 8]>::try_from(h).unwrap_or_default());
        // SAFETY: these intrinsics take and return values only (no
        // pointers); their one requirement is SSE2, which this function is
        // compiled only with (`cfg(target_feature = "sse2")`, part of every
        // x86_64 target).
        let m = unsafe {
            let v = _mm_set_epi64x(half(hi), half(lo));
            _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(0x0a)))
        };
        // Only the low 16 bits can be set: never negative.
        mask |= u64::try_from(m).unwrap_or(0) << (16 * i);
    }
    mask
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
fn newline_mask(b: &[u8; 64]) -> u64 {
    memchr::memchr_iter(b'\n', b).fold(0, |m, i| m | (1 << i))
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

    /// Parse `bytes` through a read buffer of `cap` bytes with the given
    /// loop, into a set filtered to `only` (all packages when empty).
    fn parse_via(
        bytes: &[u8],
        cap: usize,
        scan: Scan,
        only: &[&str],
    ) -> Result<Vec<Change>, String> {
        let mut set = if only.is_empty() {
            ChangeSet::new()
        } else {
            ChangeSet::only(only.iter().map(|s| s.to_string()))
        };
        let r = std::io::BufReader::with_capacity(cap, bytes);
        parse_reader_with(r, &mut set, scan).map_err(|e| e.to_string())?;
        Ok(set.finish())
    }

    /// The names a filtered replay of the recorded bookworm system wants.
    const WANTED: &[&str] = &[
        "linux-kbuild-6.1",
        "linux-headers-6.1.0-50-common",
        "gcc-12",
        "ok",
        "pp",
    ];

    /// Both loops, every buffer size from tiny to whole, filtered and not:
    /// one answer.
    fn assert_loops_agree(bytes: &[u8]) {
        for only in [&[][..], WANTED] {
            let want = parse_via(bytes, 1 << 16, Scan::Simple, only);
            for cap in [1, 2, 3, 7, 20, 63, 64, 65, 200, 4096] {
                for scan in [Scan::Simple, Scan::Fast] {
                    let got = parse_via(bytes, cap, scan, only);
                    assert_eq!(got, want, "{scan:?}, buffer {cap}, only {only:?}");
                }
            }
        }
    }

    const BOOKWORM_DPKG_LOG: &[u8] =
        include_bytes!("../tests/data/bookworm-kbuild-upgrade-dpkg.log");
    const BOOKWORM_HISTORY: &[u8] =
        include_bytes!("../tests/data/bookworm-kbuild-upgrade-apt-history.log");

    #[test]
    fn the_fast_loop_agrees_on_the_recorded_logs() {
        let simple = parse_via(BOOKWORM_DPKG_LOG, 1 << 16, Scan::Simple, WANTED).unwrap();
        assert!(
            simple
                .iter()
                .any(|c| c.package.as_str() == "linux-kbuild-6.1" && c.unpacked.is_some()),
            "{simple:?}"
        );
        assert_loops_agree(BOOKWORM_DPKG_LOG);
        assert_loops_agree(BOOKWORM_HISTORY);
        assert_loops_agree(UPGRADE);
    }

    /// A dpkg.log as a year of upgrades writes it, with the damage real logs
    /// show: CRLF, NUL runs after a crash, cut and binary lines, unknown
    /// actions, repeated spaces. Deterministic (an LCG).
    fn generated(seed: u64, lines: usize) -> Vec<u8> {
        let mut x = seed;
        let mut next = |n: u64| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (x >> 33) % n
        };
        let pkgs = [
            "linux-kbuild-6.1:amd64",
            "linux-headers-6.1.0-50-amd64:amd64",
            "linux-image-6.1.0-50-amd64:amd64",
            "gcc-12:amd64",
            "gcc-12-base:amd64",
            "ok",
            "libfoo1:amd64",
            "libc6:amd64",
            "linux-im",
            "pp:amd64",
        ];
        let mut out = Vec::new();
        out.extend_from_slice(b"2026-01-01 10:00:00 startup archives unpack\n");
        for i in 0..lines {
            let p = pkgs[usize::try_from(next(10)).unwrap()];
            let (old, new) = (next(5), next(5));
            let t = format!(
                "2026-01-{:02} 1{}:{:02}:{:02}",
                1 + i / 2000 % 28,
                next(10),
                next(60),
                i % 60
            );
            let line = match next(16) {
                0 => format!("{t} upgrade {p} 1.{old}-1 1.{new}-1"),
                1 => format!("{t} install {p} <none> 1.{new}-1"),
                2 => format!("{t} remove {p} 1.{old}-1 <none>"),
                3 => format!("{t} purge {p} 1.{old}-1 <none>"),
                4..=6 => format!("{t} status unpacked {p} 1.{new}-1"),
                7 => format!("{t} status installed {p} 1.{new}-1"),
                8 => format!("{t} configure {p} 1.{new}-1 <none>"),
                9 => format!("{t} trigproc man-db:amd64 2.11.2-2 <none>"),
                10 => format!("{t} upgrade  {p}  1.{old}-1   1.{new}-1"),
                11 => format!("{t} upgrade {p} 1.{old}-1"),
                12 => format!("{t} frobnicate {p} 1 2"),
                13 => format!("{t} conffile /etc/x keep"),
                14 => format!("{t} disappear {p} 1.{old}-1"),
                _ => format!("{t} status half-configured {p} 1.{old}-1"),
            };
            match next(40) {
                0 => out.extend_from_slice(&[0; 7]),
                1 => out.extend_from_slice(b"\xff\xfe\x00garbage"),
                _ => {}
            }
            out.extend_from_slice(line.as_bytes());
            if next(30) == 0 {
                out.push(b'\r');
            }
            out.push(b'\n');
        }
        // A last line cut by a crash.
        out.extend_from_slice(b"2026-02-01 10:00:00 upgrade linux-kbuild-6.1:amd64 1.0-1 1.");
        out
    }

    #[test]
    fn the_fast_loop_agrees_on_generated_logs() {
        for seed in 0..6 {
            let log = generated(seed, 600);
            assert_loops_agree(&log);
            // Some changes of wanted packages do come through the filter.
            assert!(!parse_via(&log, 64, Scan::Fast, WANTED).unwrap().is_empty());
        }
    }

    #[test]
    fn the_fast_loop_handles_damage_at_buffer_boundaries() {
        let mut crlf = Vec::new();
        for &c in UPGRADE {
            if c == b'\n' {
                crlf.push(b'\r');
            }
            crlf.push(c);
        }
        let truncated = &UPGRADE[..UPGRADE.len() - 1];
        let mut nuls = b"\0\0\0\0".to_vec();
        nuls.extend_from_slice(UPGRADE);
        let mut binary = UPGRADE.to_vec();
        binary.extend_from_slice(b"2026-11-23 20:57:39 \xff\xfe\x00\x01 upgrade\n\x80\x80\n");
        binary.extend_from_slice(&[b'x'; 300]);
        for input in [&crlf[..], truncated, &nuls, &binary] {
            assert_loops_agree(input);
            let c = parse_via(input, 3, Scan::Fast, WANTED).unwrap();
            assert_eq!(c.len(), 1, "{c:?}");
            assert_eq!(c[0].describe(), "linux-kbuild-6.1 6.1.176-1 → 6.1.192-2");
        }
        // Not a log: the same error from both loops.
        assert_loops_agree(b"\x7fELF\x02\x01\x01\0\0\0binary");
    }

    #[test]
    fn newlines_are_found_in_every_block_position() {
        let mut buf = vec![b'a'; 300];
        for i in [0, 1, 15, 16, 63, 64, 65, 127, 128, 200, 299] {
            buf[i] = b'\n';
        }
        let want: Vec<usize> = memchr::memchr_iter(b'\n', &buf).collect();
        for start in 0..70 {
            let got: Vec<usize> = Newlines::new(&buf[start..]).map(|i| i + start).collect();
            let want: Vec<usize> = want.iter().copied().filter(|&i| i >= start).collect();
            assert_eq!(got, want, "from {start}");
        }
        assert_eq!(Newlines::new(b"").count(), 0);
    }

    #[test]
    fn only_lines_that_cannot_matter_are_skipped() {
        let mut set = ChangeSet::only(["linux-kbuild-6.1".to_string()]);
        let t = "2026-11-23 20:57:37";
        let line = |rest: &str| format!("{t} {rest}\n");
        for skip in [
            "status installed libfoo:amd64 1.0",
            "status unpacked linux-kbuild-6.1:amd64 1.0",
            "upgrade libfoo1:amd64 1.0 1.1",
            "upgrade linux-kbuild-6.10:amd64 1.0 1.1",
            "configure linux-kbuild-6.1:amd64 1.1 <none>",
            "trigproc man-db:amd64 2.11.2-2 <none>",
        ] {
            assert!(skippable(line(skip).as_bytes(), &set), "{skip}");
        }
        for keep in [
            "upgrade linux-kbuild-6.1:amd64 1.0 1.1",
            "install linux-image-6.1.0-9-amd64:amd64 <none> 1",
            "remove linux-kbuild-6.1 1.0 <none>",
            "frobnicate x 1 2",
        ] {
            assert!(!skippable(line(keep).as_bytes(), &set), "{keep}");
        }
        assert!(!skippable(b"\0\0\0 status installed x 1\n", &set));
        assert!(!skippable(b"short\n", &set));
        // While an unpack waits for its status line, status lines are read.
        let up = line("upgrade linux-kbuild-6.1:amd64 1.0 1.1");
        parse_dpkg_line(trim_eol(up.as_bytes()), 1, &mut set);
        assert!(!skippable(
            line("status installed libfoo:amd64 1.0").as_bytes(),
            &set
        ));
    }

    #[test]
    fn name_heads_stop_at_space_or_colon() {
        let slow = |args: &[u8]| {
            let mut head = [0u8; 8];
            for (d, &c) in head.iter_mut().zip(args) {
                if c == b' ' || c == b':' {
                    break;
                }
                *d = c;
            }
            u64::from_le_bytes(head)
        };
        for args in [
            &b"linux-kbuild-6.1:amd64 1 2"[..],
            b"gcc-12:amd64 1 2",
            b"ok 1 2",
            b"ok",
            b"",
            b":x",
            b" x",
            b"abcdefgh",
            b"abcdefg:",
            b"abcdefghij",
            b"\xff\xa0\xba\x80 x",
            b"\0\0\0\0\0\0\0\0\0",
        ] {
            assert_eq!(
                name_head(args),
                slow(args),
                "{:?}",
                String::from_utf8_lossy(args)
            );
        }
    }
}
