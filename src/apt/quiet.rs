//! Whether apt's JSON hook has anything left to do in this apt run. apt
//! starts the hook once per hook point: `apt-get install` and `apt upgrade`
//! call it with pre-prompt, package-list, statistics and post, each a
//! fork, a `sh -c`, the program, and a JSON message apt builds from its
//! whole cache once the hook has answered the hello (~5 ms a call on a
//! 2-core VM, most of what dkms-hook's hooks cost an apt run that does not
//! concern the kernels).
//!
//! The first call that shows apt's package list (pre-prompt) decides: when
//! the transaction changes no kernel's build tree, or once the warning has
//! been said, `/run/dkms-hook/json-quiet-PID-START` is written (apt's pid
//! and start time, the process the hook's `sh -c` is a child of). Later
//! calls of the same apt process then end at once: the hook line in
//! `80dkms-hook` tests the record with shell builtins and does not start
//! the program, and the program itself checks it again before it touches
//! the socket. A hook that ends without reading apt's hello is one apt
//! accepts silently: the hello is still unread in the socket when it
//! closes, so apt's read fails with `ECONNRESET` (Linux's
//! `unix_release_sock`), or apt's write of the hello came after the close
//! and failed with `EPIPE`, which errno still holds when apt's read meets
//! the end; apt takes either as the hook's end (apt-private's
//! `RunJsonHook`, apt 2.6 and 3.0), and builds no message. The program
//! therefore never reads the hello without answering it.
//!
//! One flow can change apt's plan after pre-prompt: `--fix-missing` with
//! archives missing (`FixMissing` keeps packages back before the package
//! list is shown). A warning that this adds comes from post-invoke, after
//! dpkg, instead of before the prompt.
//!
//! A record is believed when its content is exactly ours; a pid and start
//! time mean something only until reboot, hence `/run`. Records of apt
//! processes that have ended are dropped when the next one is written.

use std::path::PathBuf;

use crate::root::Root;
use crate::state_dir::Dir;

/// The record's name before `-PID-START`.
const PREFIX: &str = "json-quiet";
/// The whole content of a record.
const CONTENT: &[u8] = b"the JSON hook has nothing more to say in this apt run\n";

/// The quiet record of one apt process.
#[derive(Debug)]
pub struct Quiet {
    dir: PathBuf,
    name: String,
}

impl Quiet {
    /// The record of the apt process this JSON hook call comes from (the
    /// nearest frontend above: the one that ran `sh -c`); `None` outside
    /// apt.
    pub fn current(root: &Root) -> Option<Quiet> {
        let (pid, start) = super::frontend::step()?;
        Some(Quiet {
            dir: root.inside(super::warned::RUN_DIR).ok()?,
            name: format!("{PREFIX}-{pid}-{start}"),
        })
    }

    /// Whether an earlier call of this apt run left the rest quiet.
    pub fn is_set(&self) -> bool {
        let Some(d) = Dir::open_existing(&self.dir) else {
            return false;
        };
        let cap = u64::try_from(CONTENT.len()).unwrap_or(u64::MAX);
        d.read(&self.name, cap)
            .ok()
            .flatten()
            .is_some_and(|b| b == CONTENT)
    }

    /// Leave the rest of this apt run's JSON hook calls quiet (best effort:
    /// without the record they cost what they did before).
    pub fn set(&self) {
        let r = Dir::open_top(&self.dir).and_then(|d| {
            super::frontend::tidy_records(&d, PREFIX, |_| false);
            d.write_unsynced(&self.name, CONTENT)
        });
        if let Err(e) = r {
            log::debug!("{e}");
        }
    }
}
