//! One unattended-upgrades run, as the hooks of its steps share it.
//! unattended-upgrades installs in minimal steps, each its own dpkg run
//! with its own Pre-Install-Pkgs and Post-Invoke: new headers in one step
//! and a new linux-kbuild in the next made every stale pair build twice.
//! So under it the rebuild waits for the run to end (a waiter process,
//! started by the first Post-Invoke that queued something), and preflight
//! test-builds a pair once per run.
//!
//! What the steps share is recorded in `/run/dkms-hook/uu-PID-START` (the
//! run's pid and start time, as [`super::frontend::unattended_run`] finds
//! them; `/run`, since they mean something only until reboot):
//! `tested M V K ARCH` per pair test-built in this run, and
//! `waiter PID START` once the waiter runs. Read back through the
//! no-follow [`Dir`], bounded, each line checked; a record whose run and
//! waiter are both gone is dropped.

use std::path::PathBuf;

use crate::name::{DkmsArch, KernelRelease, ModuleName, ModuleVersion};
use crate::pair::PairId;
use crate::root::Root;
use crate::state_dir::Dir;

/// A record lists the pairs of one machine; anything larger is not ours.
const CAP_RECORD: u64 = 256 * 1024;
/// Lines read back from a record at most.
const MAX_LINES: usize = 4096;
/// The command the waiter runs as (`dkms-hook after-unattended-upgrades PID START`).
pub const WAITER_COMMAND: &str = "after-unattended-upgrades";

/// One unattended-upgrades run's record.
#[derive(Debug, Clone)]
pub struct UnattendedRun {
    pub pid: u32,
    pub start: u64,
    dir: PathBuf,
}

/// What a record says.
#[derive(Debug, Default, PartialEq, Eq)]
struct Record {
    tested: Vec<PairId>,
    waiter: Option<(u32, u64)>,
}

impl UnattendedRun {
    /// The run this process belongs to; `None` outside unattended-upgrades.
    pub fn current(root: &Root) -> Option<UnattendedRun> {
        let (pid, start) = super::frontend::unattended_run()?;
        UnattendedRun::of(root, pid, start)
    }

    /// The run of process `pid` started at `start` (the waiter's view).
    pub fn of(root: &Root, pid: u32, start: u64) -> Option<UnattendedRun> {
        Some(UnattendedRun {
            pid,
            start,
            dir: root.inside(super::warned::RUN_DIR).ok()?,
        })
    }

    fn name(&self) -> String {
        format!("uu-{}-{}", self.pid, self.start)
    }

    fn read(&self) -> Record {
        let Some(d) = Dir::open_existing(&self.dir) else {
            return Record::default();
        };
        match d.read(&self.name(), CAP_RECORD) {
            Ok(Some(b)) => parse(&b),
            Ok(None) => Record::default(),
            Err(e) => {
                log::debug!("{e}");
                Record::default()
            }
        }
    }

    /// Best effort: the worst a lost record costs is a second build.
    fn write(&self, r: &Record) {
        let mut text = String::new();
        for p in &r.tested {
            text.push_str(&format!(
                "tested {} {} {} {}\n",
                p.module, p.version, p.kernel, p.arch
            ));
        }
        if let Some((pid, start)) = r.waiter {
            text.push_str(&format!("waiter {pid} {start}\n"));
        }
        let w = Dir::open_top(&self.dir).and_then(|d| {
            tidy(&d, &self.name());
            d.write_unsynced(&self.name(), text.as_bytes())
        });
        if let Err(e) = w {
            log::debug!("{e}");
        }
    }

    /// The pairs test-built earlier in this run.
    pub fn tested(&self) -> Vec<PairId> {
        self.read().tested
    }

    /// Note these pairs as test-built in this run.
    pub fn note_tested(&self, pairs: &[PairId]) {
        let mut r = self.read();
        for p in pairs {
            if !r.tested.contains(p) {
                r.tested.push(p.clone());
            }
        }
        self.write(&r);
    }

    /// The waiter of this run, while it runs.
    pub fn waiter(&self) -> Option<(u32, u64)> {
        self.read().waiter.filter(|&w| is_waiter(w))
    }

    /// Note the waiter started for this run.
    pub fn note_waiter(&self, pid: u32, start: u64) {
        let mut r = self.read();
        r.waiter = Some((pid, start));
        self.write(&r);
    }

    /// The run and its waiter are done: the record goes.
    pub fn end(&self) {
        if let Some(d) = Dir::open_existing(&self.dir) {
            d.remove(&self.name());
        }
    }
}

/// Drop the records (other than `keep`) whose run and waiter are gone.
fn tidy(d: &Dir, keep: &str) {
    super::frontend::tidy_records(d, "uu", |n| {
        n == keep
            || d.read(n, CAP_RECORD)
                .ok()
                .flatten()
                .and_then(|b| parse(&b).waiter)
                .is_some_and(is_waiter)
    });
}

fn is_waiter((pid, start): (u32, u64)) -> bool {
    super::frontend::runs_command(pid, start, WAITER_COMMAND)
}

/// A record's well-formed lines; anything else is not trusted.
fn parse(b: &[u8]) -> Record {
    let mut r = Record::default();
    for line in b
        .split(|&c| c == b'\n')
        .take(MAX_LINES)
        .filter_map(|l| std::str::from_utf8(l).ok())
    {
        let w: Vec<&str> = line.split(' ').collect();
        match w.as_slice() {
            ["tested", m, v, k, a] => {
                let id = (|| {
                    Some(PairId {
                        module: ModuleName::new(m).ok()?,
                        version: ModuleVersion::new(v).ok()?,
                        kernel: KernelRelease::new(k).ok()?,
                        arch: DkmsArch::new(a).ok()?,
                    })
                })();
                if let Some(id) = id.filter(|id| !r.tested.contains(id)) {
                    r.tested.push(id);
                }
            }
            ["waiter", pid, start] => {
                if let (Ok(p), Ok(s)) = (pid.parse(), start.parse()) {
                    r.waiter = Some((p, s));
                }
            }
            _ => {}
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The run of a record's name `uu-PID-START`, `None` for any other name.
    fn run_of_name(name: &str) -> Option<(u32, u64)> {
        super::super::frontend::key_of_record(name, "uu")
    }

    #[test]
    fn records_keep_only_well_formed_lines() {
        let r = parse(
            b"tested acpi-call 1.2.2 6.1.0-50-amd64 x86_64\ntested ../x 1 6.1.0-50-amd64 x86_64\ntested a 1 k\nwaiter 12 x\nwaiter 4242 99\n\xff\ntested acpi-call 1.2.2 6.1.0-50-amd64 x86_64",
        );
        assert_eq!(r.tested.len(), 1);
        assert_eq!(
            r.tested[0].to_string(),
            "acpi-call/1.2.2 for 6.1.0-50-amd64"
        );
        assert_eq!(r.waiter, Some((4242, 99)));
    }

    #[test]
    fn only_run_records_are_named_by_a_run() {
        assert_eq!(run_of_name("uu-42-1234"), Some((42, 1234)));
        for n in [
            "uu-42",
            "uu-+4-2",
            "uu-4-+2",
            "step-42-1",
            "uu-x-1",
            "uu-42-1.tmp",
            ".uu-4-2.9.tmp",
        ] {
            assert_eq!(run_of_name(n), None, "{n}");
        }
    }
}
