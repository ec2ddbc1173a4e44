//! Settling a kernel once its pairs are rebuilt: one `depmod -a K`, then
//! one `update-initramfs -u -k K` when a rebuilt module is in the
//! initramfs. dkms installs with `--no-depmod` (see the parent module), and
//! a pair leaves the queue only when its kernel is settled.

use std::ffi::OsStr;
use std::sync::Mutex;

use super::{in_parallel, poisoned, Executor, Outcome, PairResult, Ran, Settled};
use crate::kernel::KernelRelease;
use crate::root::CAP_SMALL;
use crate::state::QueuedPair;
use crate::Error;

impl Executor<'_> {
    /// Settle every kernel that got a new module (or a killed run's one),
    /// `jobs` at a time, and let its pairs leave the queue.
    pub(super) fn settle_all(
        &self,
        queue: &Mutex<crate::state::Queue>,
        results: &[PairResult],
        settled: &(dyn Fn(&Settled) + Sync),
    ) -> Result<(), Error> {
        let mut kernels: Vec<(&KernelRelease, Vec<&QueuedPair>)> = Vec::new();
        for r in results {
            if !matches!(r.outcome, Outcome::Rebuilt { .. } | Outcome::AlreadyDone) {
                continue;
            }
            match kernels.iter_mut().find(|(k, _)| *k == &r.pair.id.kernel) {
                Some((_, pairs)) => pairs.push(&r.pair),
                None => kernels.push((&r.pair.id.kernel, vec![&r.pair])),
            }
        }
        in_parallel(self.config.jobs, kernels, |(kernel, pairs)| {
            let done = self.settle(kernel, &pairs);
            settled(&done);
            if !done.depmod {
                return Ok(()); // they stay queued: the next run settles them
            }
            let mut q = queue.lock().map_err(poisoned)?;
            q.pending.retain(|x| !pairs.iter().any(|p| p.id == x.id));
            self.state.save_queue(&q)
        })
    }

    /// Settle a kernel whose pairs `crate::guard` put back: `depmod -a K`,
    /// and, with `initramfs`, its initramfs as after a rebuild (without it
    /// when the kernel package's own hooks refresh the initramfs next).
    pub fn settle_put_back(
        &self,
        kernel: &KernelRelease,
        pairs: &[&QueuedPair],
        initramfs: bool,
    ) -> Settled {
        self.settle(kernel, if initramfs { pairs } else { &[] })
    }

    /// `depmod -a K` once, then `update-initramfs -u -k K` once when one of
    /// the pairs' modules is in the initramfs.
    fn settle(&self, kernel: &KernelRelease, pairs: &[&QueuedPair]) -> Settled {
        let mut done = Settled {
            kernel: kernel.clone(),
            depmod: false,
            initramfs: false,
            notes: Vec::new(),
        };
        match &self.depmod {
            Some(tool) => {
                let mut args = vec![OsStr::new("-a"), OsStr::new(kernel.as_str())];
                // As dkms does: the kernel's symbols, where the image has them.
                let map = format!("/boot/System.map-{kernel}");
                let map_host = self.state.root().resolve(&map).ok();
                if let Some(m) = &map_host {
                    args.extend([OsStr::new("-F"), m.as_os_str()]);
                }
                match self.run(tool, &args, None, None) {
                    Ran::Exit(0) => done.depmod = true,
                    Ran::Exit(s) => done.notes.push(format!(
                        "depmod -a {kernel} exited {s}: its rebuilt modules stay queued and the next run tries again"
                    )),
                    Ran::TimedOut => done
                        .notes
                        .push(format!("depmod -a {kernel} timed out and was killed")),
                    Ran::SpawnFailed(e) => done.notes.push(e),
                }
            }
            None => {
                // Under --root the host's depmod would not act on the root.
                done.depmod = true;
                done.notes.push(format!(
                    "modules.dep of {kernel} was not updated: under --root, depmod would act on the host (name a stand-in with DKMS_HOOK_DEPMOD)"
                ));
            }
        }
        if self.config.initramfs && pairs.iter().any(|p| self.in_initramfs(p)) {
            done.initramfs = self.refresh_initramfs(kernel, &mut done.notes);
        }
        done
    }

    /// The pair's module goes into the initramfs: dkms.conf says
    /// `REMAKE_INITRD=yes` or `/etc/initramfs-tools/modules` lists it (and
    /// the kernel has an initramfs).
    fn in_initramfs(&self, p: &QueuedPair) -> bool {
        let root = self.state.root();
        if !root.exists(format!("/boot/initrd.img-{}", p.id.kernel)) {
            return false;
        }
        let text = |path: String| {
            root.read(&path, CAP_SMALL)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let conf = text(format!(
            "/usr/src/{}-{}/dkms.conf",
            p.id.module, p.id.version
        ));
        let remake = conf.lines().any(|l| {
            let l = l.trim().replace(['"', '\''], "");
            l.eq_ignore_ascii_case("REMAKE_INITRD=yes")
        });
        let listed = text("/etc/initramfs-tools/modules".into())
            .lines()
            .any(|l| l.split_whitespace().next() == Some(p.id.module.as_str()));
        remake || listed
    }

    /// `update-initramfs -u -k K`; whether it succeeded.
    fn refresh_initramfs(&self, kernel: &KernelRelease, notes: &mut Vec<String>) -> bool {
        let Some(tool) = &self.update_initramfs else {
            notes.push(format!(
                "the initramfs of {kernel} was not refreshed: under --root, update-initramfs would act on the host (name a stand-in with DKMS_HOOK_UPDATE_INITRAMFS)"
            ));
            return false;
        };
        let args = [
            OsStr::new("-u"),
            OsStr::new("-k"),
            OsStr::new(kernel.as_str()),
        ];
        match self.run(tool, &args, None, None) {
            Ran::Exit(0) => true,
            Ran::Exit(s) => {
                notes.push(format!("update-initramfs -u -k {kernel} exited {s}"));
                false
            }
            Ran::TimedOut => {
                notes.push(format!(
                    "update-initramfs -u -k {kernel} timed out and was killed"
                ));
                false
            }
            Ran::SpawnFailed(e) => {
                notes.push(e);
                false
            }
        }
    }
}
