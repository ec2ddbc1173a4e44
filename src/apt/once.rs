//! Whether a hook invocation repeats one already done for the same step:
//! python-apt's `apt.Cache(rootdir="/")`, as unattended-upgrades opens its
//! cache, reads `/etc/apt/apt.conf.d` a second time and appends every list
//! entry again, so apt-pkg runs each `DPkg::Pre-Install-Pkgs` and
//! `DPkg::Post-Invoke` entry twice for one dpkg run. The second copy must
//! cost nothing and say nothing.
//!
//! The same step is the same frontend process ([`super::frontend::step`]:
//! both copies of an entry run from one process, a new dpkg run comes from
//! a new fork or with other input), the same hook point and the same input
//! (a digest of what the hook was given). What was done is recorded in
//! `/run/dkms-hook/step-PID-START`, one `POINT DIGEST` line per invocation,
//! read back through the no-follow [`crate::state_dir::Dir`], bounded, each
//! line checked. A pid and start time mean something only until reboot,
//! hence `/run`.

use std::hash::Hasher;
use std::io::{self, BufRead, Read};
use std::path::PathBuf;

use crate::root::Root;
use crate::state_dir::Dir;

/// A record lists a handful of lines; anything larger is not one of ours.
const CAP_RECORD: u64 = 64 * 1024;

/// The hook points apt may run twice for one dpkg run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    PreInstallPkgs,
    PostInvoke,
}

impl Point {
    fn name(self) -> &'static str {
        match self {
            Point::PreInstallPkgs => "pre-install-pkgs",
            Point::PostInvoke => "post-invoke",
        }
    }
}

/// A reader that digests every byte its consumer takes: the hook's input
/// is parsed as it streams, and the digest says whether it is the same.
pub struct Digesting<R> {
    inner: R,
    hasher: std::collections::hash_map::DefaultHasher,
}

impl<R> Digesting<R> {
    pub fn new(inner: R) -> Self {
        Digesting {
            inner,
            hasher: Default::default(),
        }
    }

    /// The digest of the bytes read so far (however they were split).
    pub fn digest(&self) -> u64 {
        self.hasher.finish()
    }
}

impl<R: Read> Read for Digesting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.write(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Digesting<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        // fill_buf returns what is buffered (a read only when it is empty,
        // and a consumer consumes nothing it was not given).
        if amt == 0 {
            return;
        }
        if let Ok(b) = self.inner.fill_buf() {
            self.hasher.write(b.get(..amt).unwrap_or(b));
        }
        self.inner.consume(amt);
    }
}

/// Post-Invoke's input is dpkg.log: its device, inode, size and mtime
/// (nothing else writes it between two copies of the hook; the next dpkg
/// run does).
pub fn post_invoke_input(root: &Root) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut h = std::collections::hash_map::DefaultHasher::default();
    if let Ok(m) = root
        .inside(crate::intake::DPKG_LOG)
        .and_then(std::fs::symlink_metadata)
    {
        for v in [m.dev(), m.ino(), m.size()] {
            h.write_u64(v);
        }
        h.write_i64(m.mtime());
        h.write_i64(m.mtime_nsec());
    }
    h.finish()
}

/// One hook invocation of one step.
#[derive(Debug)]
pub struct Once {
    dir: PathBuf,
    name: String,
    line: String,
}

/// This invocation, when it runs under a frontend (`None` outside one:
/// nothing is deduplicated there).
pub fn step(root: &Root, point: Point, digest: u64) -> Option<Once> {
    let (pid, start) = super::frontend::step()?;
    Some(Once {
        dir: root.inside(super::warned::RUN_DIR).ok()?,
        name: format!("step-{pid}-{start}"),
        line: format!("{} {digest:016x}", point.name()),
    })
}

impl Once {
    /// Whether the same step already ran this hook point on this input.
    pub fn done_before(&self) -> bool {
        let Some(d) = Dir::open_existing(&self.dir) else {
            return false;
        };
        match d.read(&self.name, CAP_RECORD) {
            Ok(Some(b)) => records(&b).any(|l| l == self.line),
            Ok(None) => false,
            Err(e) => {
                log::debug!("{e}");
                false
            }
        }
    }

    /// Record this invocation as done (best effort: the worst a lost
    /// record costs is doing the work twice). Records of steps whose
    /// process is gone are dropped on the way.
    pub fn note_done(&self) {
        let r = Dir::open_top(&self.dir).and_then(|d| {
            super::frontend::tidy_records(&d, "step", |_| false);
            let mut lines: Vec<&str> = Vec::new();
            let old = d.read(&self.name, CAP_RECORD).unwrap_or_default();
            lines.extend(old.as_deref().map(records).into_iter().flatten());
            lines.push(&self.line);
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            d.write_unsynced(&self.name, text.as_bytes())
        });
        if let Err(e) = r {
            log::debug!("{e}");
        }
    }
}

/// The well-formed lines of a record (`POINT DIGEST`: a known point, 16
/// lowercase hex digits); anything else is not trusted as a record.
fn records(b: &[u8]) -> impl Iterator<Item = &str> {
    b.split(|&c| c == b'\n')
        .filter_map(|l| std::str::from_utf8(l).ok())
        .filter(|l| {
            l.split_once(' ').is_some_and(|(p, d)| {
                [Point::PreInstallPkgs, Point::PostInvoke]
                    .iter()
                    .any(|k| k.name() == p)
                    && d.len() == 16
                    && d.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pid of a record's name `step-PID-START`, `None` for any other name.
    fn step_pid(name: &str) -> Option<u32> {
        super::super::frontend::key_of_record(name, "step").map(|(pid, _)| pid)
    }

    #[test]
    fn the_digest_does_not_depend_on_how_the_input_is_read() {
        let input =
            b"VERSION 3\nAPT::Architecture=amd64\n\nhello - - none < 2.10-3 amd64 same /x.deb\n";
        let mut whole = Digesting::new(&input[..]);
        let mut all = Vec::new();
        whole.read_to_end(&mut all).unwrap();
        let mut lines = Digesting::new(std::io::BufReader::with_capacity(7, &input[..]));
        let mut l = String::new();
        while lines.read_line(&mut l).unwrap() > 0 {}
        assert_eq!(whole.digest(), lines.digest());
        let mut other = Digesting::new(&b"VERSION 3\n"[..]);
        other.read_to_end(&mut Vec::new()).unwrap();
        assert_ne!(whole.digest(), other.digest());
    }

    #[test]
    fn records_keep_only_well_formed_lines() {
        let b = b"pre-install-pkgs 0123456789abcdef\npost-invoke 0123456789ABCDEF\nother 0123456789abcdef\npost-invoke 12\n\xff\npost-invoke fedcba9876543210";
        let got: Vec<&str> = records(b).collect();
        assert_eq!(
            got,
            [
                "pre-install-pkgs 0123456789abcdef",
                "post-invoke fedcba9876543210"
            ]
        );
    }

    #[test]
    fn only_step_records_are_named_by_a_pid() {
        assert_eq!(step_pid("step-42-1234"), Some(42));
        for n in [
            "step-42",
            "step--1-2",
            "step-+4-2",
            "step-4-+2",
            "warned-42-1",
            "step-x-1",
            "step-42-1.tmp",
        ] {
            assert_eq!(step_pid(n), None, "{n}");
        }
    }
}
