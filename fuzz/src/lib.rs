//! Helpers shared by the fuzz targets.

use std::io::{self, BufRead, BufReader, Cursor, Read, Write};

/// A reader that hands out at most `chunk` bytes per `read`, so buffering and
/// line carrying across reads are exercised as they are with pipes/sockets.
pub struct Chunked<'a> {
    data: &'a [u8],
    pos: usize,
    chunk: usize,
}

impl<'a> Chunked<'a> {
    pub fn new(data: &'a [u8], chunk: usize) -> Self {
        Chunked { data, pos: 0, chunk: chunk.max(1) }
    }
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.data.len() - self.pos);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A small-buffer `BufRead` over `data` (capacity derived from the input
/// length so it varies as the fuzzer mutates).
pub fn small_bufread(data: &[u8]) -> impl BufRead + '_ {
    let cap = 1 + data.len() % 13;
    BufReader::with_capacity(cap, Chunked::new(data, cap))
}

/// Whole-buffer `BufRead`: the fast path (one `fill_buf` holds everything).
pub fn whole(data: &[u8]) -> Cursor<&[u8]> {
    Cursor::new(data)
}

/// A socket stand-in for the JSON hook: reads come from the input in chunks,
/// writes go to a Vec.
pub struct Duplex<'a> {
    pub input: Chunked<'a>,
    pub output: Vec<u8>,
}

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// dpkg.log / history.log: parse the whole buffer and through a tiny read
/// buffer, with `parse_reader` and `parse_complete_lines`; the chunking must
/// not change the outcome.
pub fn check_log(data: &[u8], only: &[&str]) {
    use dkms_hook::change::ChangeSet;
    use dkms_hook::dpkg_log::{parse_complete_lines, parse_reader, parse_reader_with, Scan};

    let new_set = || {
        if only.is_empty() {
            ChangeSet::new()
        } else {
            ChangeSet::only(only.iter().map(|s| s.to_string()))
        }
    };

    // parse_reader, fast path vs small buffer.
    let mut a = new_set();
    let ra = parse_reader(whole(data), &mut a);
    let mut b = new_set();
    let rb = parse_reader(small_bufread(data), &mut b);
    assert_eq!(ra.is_ok(), rb.is_ok(), "parse_reader: chunking changed the result: {ra:?} vs {rb:?}");
    if let (Ok(na), Ok(nb)) = (&ra, &rb) {
        assert_eq!(na, nb, "parse_reader: chunking changed the byte count");
        assert!(*na <= data.len() as u64, "parse_reader consumed {na} of {} bytes", data.len());
        let ca = a.finish();
        let cb = b.finish();
        assert_eq!(ca, cb, "parse_reader: chunking changed the changes");
        // The fast loop (skipping lines that cannot matter) and the simple
        // one give the same changes.
        for scan in [Scan::Simple, Scan::Fast] {
            let mut f = new_set();
            let rf = parse_reader_with(small_bufread(data), &mut f, scan);
            assert_eq!(rf.ok(), Some(*na), "{scan:?}: another byte count");
            assert_eq!(f.finish(), ca, "{scan:?}: other changes");
        }
    }

    // parse_complete_lines: the count ends just after a newline.
    let mut c = new_set();
    let rc = parse_complete_lines(whole(data), &mut c);
    let mut d = new_set();
    let rd = parse_complete_lines(small_bufread(data), &mut d);
    if let (Ok(nc), Ok(nd)) = (&rc, &rd) {
        assert_eq!(nc, nd, "parse_complete_lines: chunking changed the byte count");
        let n = *nc as usize;
        assert!(n <= data.len(), "parse_complete_lines consumed {n} of {} bytes", data.len());
        assert!(n == 0 || data[n - 1] == b'\n', "parse_complete_lines stopped mid-line at {n}");
        assert_eq!(c.finish(), d.finish(), "parse_complete_lines: chunking changed the changes");
    }

    // Two files in one set, split at a line boundary, with end_of_file between.
    if let Some(mid) = data.iter().position(|&b| b == b'\n') {
        let mut e = new_set();
        if parse_reader(whole(&data[..=mid]), &mut e).is_ok() {
            e.end_of_file();
            let _ = parse_reader(whole(&data[mid + 1..]), &mut e);
        }
        let _ = e.finish();
    }
}
