//! Reading an installed module file (`.ko`, `.ko.xz`, `.ko.zst`, `.ko.gz`)
//! for the two things [`super`] needs: the `vermagic=` of its `.modinfo` and
//! the signature trailer at its very end. Module files are hostile input (a
//! package or a dkms build put them there): every decoder streams into
//! [`Scan`], which holds a few hundred bytes, stops at [`Limits::output`]
//! decompressed bytes, and may use at most [`Limits::memory`] for its
//! window.
//!
//! xz goes through liblzma (`xz2`), which enforces the memory limit itself
//! and streams: lzma-rs 0.3's LZMA2 decoder held its whole output until a
//! dictionary reset, so a 458 KB bomb (`head -c 3G /dev/zero | xz -T1 -0`)
//! cost 25 s and 6.3 GB of RSS before its 1 GiB cap saw a byte; through
//! liblzma it is refused at the cap after 0.5 s in 7 MB (`/usr/bin/time -v
//! dkms-hook status` on a root holding it, by hand). ruzstd keeps its whole
//! window in memory, up to what the frame header asks (`zstd --long=30`:
//! 1 GiB, 2.6 s and 2.1 GB), so the header is read first and a window over
//! the limit is refused before anything is decoded (0.00 s, 7 MB). gzip's
//! window is 32 KiB. A refusal is remembered by [`super::FactsCache`].

use std::fmt;
use std::io::{self, BufRead, Read, Write};
use std::path::Path;

/// The most decompressed bytes read of one module. The largest real
/// modules (NVIDIA's) are ~60–100 MB; reading further only costs time.
pub const CAP_MODULE: u64 = 256 << 20;
/// The most memory a decoder may use: zstd's own default decoder limit
/// (window log 27), above what `xz -9` needs (65 MiB).
pub const CAP_DECODER_MEMORY: u64 = 128 << 20;
/// A vermagic longer than this is not one.
pub const MAX_VERMAGIC: usize = 256;
/// The trailer `scripts/sign-file` appends after the signature.
pub(crate) const SIGNATURE_MAGIC: &[u8] = b"~Module signature appended~\n";
const KEY: &[u8] = b"vermagic=";
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Magic, descriptor, window descriptor, dictionary id, content size.
const ZSTD_MAX_HEADER: usize = 4 + 1 + 1 + 4 + 8;

/// How much one module may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Decompressed bytes read at most.
    pub output: u64,
    /// Memory a decoder may use (xz's memlimit, zstd's window).
    pub memory: u64,
}

impl Limits {
    /// What an installed module may cost.
    pub const MODULE: Limits = Limits {
        output: CAP_MODULE,
        memory: CAP_DECODER_MEMORY,
    };
}

/// How a module file is compressed, by its name (as kmod decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
    Zstd,
    Gzip,
}

impl Compression {
    pub fn of(file: &Path) -> Compression {
        match file.extension().and_then(|e| e.to_str()) {
            Some("xz") => Compression::Xz,
            Some("zst") => Compression::Zstd,
            Some("gz") => Compression::Gzip,
            _ => Compression::None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Compression::None => "read",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
        }
    }
}

/// Why a module file was not read to its end.
#[derive(Debug)]
pub enum Refusal {
    /// More than [`Limits::output`] bytes (decompressed).
    TooLarge { cap: u64 },
    /// The decoder would need more than [`Limits::memory`].
    TooMuchMemory {
        format: &'static str,
        needs: Option<u64>,
        limit: u64,
    },
    /// Not valid data of its format.
    Corrupt { format: &'static str, msg: String },
    /// Reading the file failed (not a property of its content).
    Io(io::Error),
}

impl Refusal {
    /// A refusal that the same bytes would give again (worth remembering).
    pub fn is_content(&self) -> bool {
        !matches!(self, Refusal::Io(_))
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::TooLarge { cap } if cap % (1 << 20) == 0 => {
                write!(f, "larger than {} MiB decompressed", cap >> 20)
            }
            Refusal::TooLarge { cap } => write!(f, "larger than {cap} bytes decompressed"),
            Refusal::TooMuchMemory {
                format,
                needs: Some(n),
                limit,
            } => write!(
                f,
                "{format}: decoding needs {} MiB of memory, more than {} MiB",
                n.div_ceil(1 << 20),
                limit >> 20
            ),
            Refusal::TooMuchMemory { format, limit, .. } => {
                write!(
                    f,
                    "{format}: decoding needs more than {} MiB of memory",
                    limit >> 20
                )
            }
            Refusal::Corrupt { format, msg } => write!(f, "{format}: {msg}"),
            Refusal::Io(e) => e.fmt(f),
        }
    }
}

pub use crate::model::ModuleFacts;

/// Read one module file's facts from `r`, decoding it as `kind`, within
/// `limits`.
pub fn read_module(
    mut r: impl BufRead,
    kind: Compression,
    limits: Limits,
) -> Result<ModuleFacts, Refusal> {
    let mut scan = Scan::new(limits.output);
    let format = kind.name();
    let copied = match kind {
        Compression::None => io::copy(&mut r, &mut scan),
        Compression::Xz => {
            let stream = xz2::stream::Stream::new_stream_decoder(limits.memory, 0)
                .map_err(|e| corrupt(format, e))?;
            io::copy(
                &mut xz2::bufread::XzDecoder::new_stream(r, stream),
                &mut scan,
            )
        }
        Compression::Zstd => {
            // The header is read whole whatever the buffer holds (a short
            // read left the window unchecked: found by fuzzing), then put
            // back in front of the rest.
            let mut head = [0u8; ZSTD_MAX_HEADER];
            let n = read_up_to(&mut r, &mut head).map_err(Refusal::Io)?;
            if let Some(window) = zstd_window(&head[..n]) {
                if window > limits.memory {
                    return Err(Refusal::TooMuchMemory {
                        format,
                        needs: Some(window),
                        limit: limits.memory,
                    });
                }
            }
            let r = io::Cursor::new(&head[..n]).chain(r);
            let mut d = ruzstd::StreamingDecoder::new(r).map_err(|e| corrupt(format, e))?;
            io::copy(&mut d, &mut scan)
        }
        Compression::Gzip => io::copy(&mut flate2::bufread::GzDecoder::new(r), &mut scan),
    };
    match copied {
        Ok(_) => Ok(scan.finish()),
        Err(_) if scan.over_cap => Err(Refusal::TooLarge { cap: limits.output }),
        Err(e) if kind == Compression::None => Err(Refusal::Io(e)),
        Err(e) => match e
            .get_ref()
            .and_then(|i| i.downcast_ref::<xz2::stream::Error>())
        {
            Some(xz2::stream::Error::MemLimit) => Err(Refusal::TooMuchMemory {
                format,
                needs: None,
                limit: limits.memory,
            }),
            _ => Err(corrupt(format, e)),
        },
    }
}

fn corrupt(format: &'static str, e: impl fmt::Display) -> Refusal {
    Refusal::Corrupt {
        format,
        msg: e.to_string(),
    }
}

/// Fill `buf` as far as `r` goes.
fn read_up_to(r: &mut impl io::Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The window a zstd frame asks for (RFC 8878 §3.1.1.1), from the start of
/// the data; `None` when it is no frame header (the decoder says why).
fn zstd_window(h: &[u8]) -> Option<u64> {
    if h.get(..4)? != ZSTD_MAGIC {
        return None;
    }
    let fhd = *h.get(4)?;
    let single_segment = fhd & 0x20 != 0;
    if !single_segment {
        let wd = *h.get(5)?;
        let base = 1u64 << (10 + (wd >> 3));
        return Some(base + base / 8 * u64::from(wd & 7));
    }
    // A single segment's window is its whole content.
    let dict_len = [0, 1, 2, 4][usize::from(fhd & 3)];
    let fcs_len = [1, 2, 4, 8][usize::from(fhd >> 6)];
    let at = 5 + dict_len;
    let fcs = h
        .get(at..at + fcs_len)?
        .iter()
        .rev()
        .fold(0u64, |v, b| (v << 8) | u64::from(*b));
    Some(if fcs_len == 2 { fcs + 256 } else { fcs })
}

/// A `Write` sink that finds `vermagic=…\0` across chunk borders and keeps
/// the last bytes for the trailer, so nothing is held in memory; it fails
/// once more than `cap` bytes came.
struct Scan {
    cap: u64,
    seen: u64,
    over_cap: bool,
    /// The end of the previous chunk while searching (a key cut in two).
    carry: Vec<u8>,
    /// `Some` from the key on; complete once `done`.
    vermagic: Option<Vec<u8>>,
    done: bool,
    tail: Vec<u8>,
}

impl Scan {
    fn new(cap: u64) -> Scan {
        Scan {
            cap,
            seen: 0,
            over_cap: false,
            carry: Vec::new(),
            vermagic: None,
            done: false,
            tail: Vec::new(),
        }
    }

    fn take_value(&mut self, bytes: &[u8]) {
        let v = self.vermagic.get_or_insert_with(Vec::new);
        match memchr::memchr(0, bytes) {
            Some(end) => {
                v.extend_from_slice(&bytes[..end]);
                self.done = true;
            }
            None => v.extend_from_slice(bytes),
        }
        if v.len() > MAX_VERMAGIC {
            self.vermagic = None;
            self.done = true;
        }
    }

    fn finish(self) -> ModuleFacts {
        // A real vermagic is short printable text; anything else (invalid
        // UTF-8 grew past MAX_VERMAGIC when made lossy: found by fuzzing)
        // is none.
        let vermagic = self
            .vermagic
            .filter(|_| self.done)
            .and_then(|v| String::from_utf8(v).ok())
            .filter(|v| !v.chars().any(char::is_control));
        ModuleFacts {
            signed: vermagic.is_some() && self.tail.ends_with(SIGNATURE_MAGIC),
            vermagic,
        }
    }
}

impl Write for Scan {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.seen = self.seen.saturating_add(buf.len() as u64);
        if self.seen > self.cap {
            self.over_cap = true;
            return Err(io::Error::other("cap reached"));
        }
        if !self.done {
            if self.vermagic.is_some() {
                self.take_value(buf);
            } else {
                let mut hay = std::mem::take(&mut self.carry);
                hay.extend_from_slice(buf);
                match memchr::memmem::find(&hay, KEY) {
                    Some(i) => self.take_value(&hay[i + KEY.len()..]),
                    None => {
                        let keep = hay.len().saturating_sub(KEY.len() - 1);
                        self.carry = hay.split_off(keep);
                    }
                }
            }
        }
        let keep = SIGNATURE_MAGIC.len();
        if buf.len() >= keep {
            self.tail.clear();
            self.tail.extend_from_slice(&buf[buf.len() - keep..]);
        } else {
            self.tail.extend_from_slice(buf);
            let extra = self.tail.len().saturating_sub(keep);
            self.tail.drain(..extra);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A stand-in module: a `.modinfo`-like string table, optionally the
    /// signature trailer.
    pub(crate) fn module_bytes(release: &str, signed: bool) -> Vec<u8> {
        let mut m = b"\x7fELF\x02\x01\x01\0padding".repeat(1000);
        m.extend_from_slice(b"license=GPL\0");
        m.extend_from_slice(
            format!("vermagic={release} SMP preempt mod_unload modversions \0").as_bytes(),
        );
        m.extend_from_slice(&[0x55; 5000]);
        if signed {
            m.extend_from_slice(&[0x30; 600]);
            m.extend_from_slice(b"\0\0\x02\0\0\0\0\0\0\0\x02\x58");
            m.extend_from_slice(SIGNATURE_MAGIC);
        }
        m
    }

    pub(crate) fn xz(bytes: &[u8]) -> Vec<u8> {
        let mut e = xz2::write::XzEncoder::new(Vec::new(), 0);
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// A zstd frame made at test time: one segment with its content size
    /// (the window is that size), raw blocks of 128 KiB. ruzstd 0.7 (Debian
    /// 13's) only decodes.
    pub(crate) fn zst(bytes: &[u8]) -> Vec<u8> {
        let mut b = ZSTD_MAGIC.to_vec();
        b.push(0xe0); // 8-byte content size, single segment, no checksum, no dictionary
        b.extend_from_slice(&u64::try_from(bytes.len()).unwrap().to_le_bytes());
        let blocks: Vec<&[u8]> = bytes.chunks(128 << 10).collect();
        for (i, block) in blocks.iter().enumerate() {
            let last = u32::from(i + 1 == blocks.len());
            let header = last | (u32::try_from(block.len()).unwrap() << 3); // Raw_Block
            b.extend_from_slice(&header.to_le_bytes()[..3]);
            b.extend_from_slice(block);
        }
        b
    }

    pub(crate) fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// A zstd bomb made by hand: a frame asking for a `window_log` window,
    /// then `blocks` RLE blocks of 128 KiB zeros (4 bytes each).
    pub(crate) fn zstd_bomb(window_log: u8, blocks: usize) -> Vec<u8> {
        let mut b = ZSTD_MAGIC.to_vec();
        b.push(0); // no checksum, no dictionary, no content size, not single segment
        b.push((window_log - 10) << 3);
        for i in 0..blocks {
            let last = u32::from(i + 1 == blocks);
            let header = last | (1 << 1) | (128 << 10 << 3); // RLE, 128 KiB
            b.extend_from_slice(&header.to_le_bytes()[..3]);
            b.push(0);
        }
        b
    }

    /// An xz bomb made at test time: `mib` MiB of zeros at preset 0
    /// (~2 KB per 10 MiB).
    pub(crate) fn xz_bomb(mib: usize) -> Vec<u8> {
        let mut e = xz2::write::XzEncoder::new(Vec::new(), 0);
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..mib {
            e.write_all(&zeros).unwrap();
        }
        e.finish().unwrap()
    }

    fn read(bytes: &[u8], kind: Compression, limits: Limits) -> Result<ModuleFacts, Refusal> {
        read_module(io::BufReader::with_capacity(4096, bytes), kind, limits)
    }

    /// Found by the fuzz target: 200 invalid UTF-8 bytes made a 600-byte
    /// "vermagic" once made lossy.
    #[test]
    fn a_vermagic_that_is_no_text_is_none() {
        for value in [&[0xff; 200][..], b"6.1.0-50-amd64\x1b[2J SMP"] {
            let m = [&b"vermagic="[..], value, b"\0"].concat();
            let facts = read(&m, Compression::None, Limits::MODULE).unwrap();
            assert_eq!(facts.vermagic, None, "{value:?}");
        }
    }

    #[test]
    fn the_key_and_the_value_cut_across_writes() {
        let m = module_bytes("6.12.57+deb13-amd64", true);
        let at = memchr::memmem::find(&m, KEY).unwrap();
        for cut in [at + 3, at + KEY.len() + 4, m.len() - 7] {
            let mut s = Scan::new(CAP_MODULE);
            for chunk in [&m[..cut], &m[cut..]] {
                for piece in chunk.chunks(5) {
                    s.write_all(piece).unwrap();
                }
            }
            let facts = s.finish();
            assert_eq!(facts.release(), Some("6.12.57+deb13-amd64"), "cut at {cut}");
            assert!(facts.signed);
        }
    }

    /// Bombs of every format stop at the output cap, after at most the cap:
    /// the sink fails at the first byte over it and decoding ends there.
    #[test]
    fn bombs_stop_at_the_output_cap() {
        let small = Limits {
            output: 4 << 20,
            memory: CAP_DECODER_MEMORY,
        };
        let zeros = vec![0u8; 16 << 20];
        for (kind, bytes) in [
            (Compression::Xz, xz_bomb(64)),
            (Compression::Zstd, zstd_bomb(20, 512)),
            (Compression::Gzip, gz(&zeros)),
            (Compression::None, zeros.clone()),
        ] {
            assert!(bytes.len() < 1 << 20 || kind == Compression::None);
            let e = read(&bytes, kind, small).unwrap_err();
            assert!(
                matches!(e, Refusal::TooLarge { cap } if cap == 4 << 20),
                "{kind:?}: {e}"
            );
            assert_eq!(e.to_string(), "larger than 4 MiB decompressed");
            // Within the cap the same data is read to its end.
            let roomy = Limits {
                output: 1 << 30,
                ..small
            };
            assert_eq!(
                read(&bytes, kind, roomy).unwrap().vermagic,
                None,
                "{kind:?}"
            );
        }
    }

    /// The window a zstd frame asks for is checked before decoding: a 98 KB
    /// frame of RLE blocks asking for 1 GiB cost 2.1 GB before.
    #[test]
    fn a_zstd_window_over_the_memory_limit_is_refused_before_decoding() {
        let bomb = zstd_bomb(30, 24 * 1024);
        assert!(bomb.len() < 100_000);
        let e = read(&bomb, Compression::Zstd, Limits::MODULE).unwrap_err();
        assert_eq!(
            e.to_string(),
            "zstd: decoding needs 1024 MiB of memory, more than 128 MiB"
        );
        // Single-segment frames: the window is the content size.
        let single = zst(&module_bytes("6.1.0-50-amd64", false));
        let w = zstd_window(&single).unwrap();
        assert!(w > 0 && w < 1 << 20, "{w}");
        let tight = Limits {
            output: CAP_MODULE,
            memory: 1024,
        };
        assert!(matches!(
            read(&single, Compression::Zstd, tight),
            Err(Refusal::TooMuchMemory { .. })
        ));
        assert!(read(&single, Compression::Zstd, Limits::MODULE).is_ok());
    }

    /// Found by the fuzz target: with a read buffer of a few bytes the
    /// header was not seen whole and the window went unchecked.
    #[test]
    fn the_zstd_window_is_checked_whatever_the_read_buffer() {
        let bomb = zstd_bomb(30, 4);
        for cap in [1, 2, 5, 13, 4096] {
            let r = io::BufReader::with_capacity(cap, &bomb[..]);
            let e = read_module(r, Compression::Zstd, Limits::MODULE).unwrap_err();
            assert!(matches!(e, Refusal::TooMuchMemory { .. }), "{cap}: {e}");
        }
    }

    /// liblzma refuses a dictionary over the memory limit from the header.
    #[test]
    fn an_xz_dictionary_over_the_memory_limit_is_refused() {
        let m = module_bytes("6.1.0-50-amd64", true);
        let e9 = {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 9);
            e.write_all(&m).unwrap();
            e.finish().unwrap()
        };
        let tight = Limits {
            output: CAP_MODULE,
            memory: 32 << 20,
        };
        let e = read(&e9, Compression::Xz, tight).unwrap_err();
        assert_eq!(
            e.to_string(),
            "xz: decoding needs more than 32 MiB of memory"
        );
        assert!(read(&e9, Compression::Xz, Limits::MODULE).unwrap().signed);
    }
}
