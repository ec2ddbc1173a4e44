//! What apt tells a hook it is about to change, read from either channel,
//! and what dkms-hook keeps of it:
//!
//! * [`info_stream`]: the `DPkg::Pre-Install-Pkgs` info stream (hook
//!   protocol `VERSION 2` and `VERSION 3`), on stdin or `APT_HOOK_INFO_FD`;
//! * [`json_hook`]: the JSON-RPC hook socket of `AptCli::Hooks::Install` and
//!   `Upgrade` (protocol `0.1` and `0.2`), named by `APT_HOOK_SOCKET`;
//! * [`frontend`]: the apt process a hook runs under (the key of one apt
//!   run) and what its command line asks for;
//! * [`warned`]: which lines one apt run has already shown;
//! * [`once`]: whether a hook invocation repeats one of the same step
//!   (python-apt runs every hook list entry twice);
//! * [`quiet`]: whether the JSON hook has anything left to do in this apt
//!   run (apt starts it at four hook points of one install).
//!
//! Both channels are reduced to a list of [`AptChange`], turned into the
//! planner's [`Change`]s by [`AptChange::to_change`]. Library code: nothing
//! here prints. Problems come back as [`AptHookError`]; skipped input is
//! reported through `log::debug!`.

use std::fmt;
use std::io::{self, BufRead};
use std::os::fd::{BorrowedFd, OwnedFd};

use serde::Serialize;

use crate::change::Change;
use crate::dpkg::PackageName;

pub mod frontend;
pub mod info_stream;
pub mod json_hook;
pub mod once;
pub mod quiet;
pub mod unattended;
pub mod warned;

pub use info_stream::{parse_pre_install_reader, PreInstallPkgs};
pub use json_hook::{parse_message, serve_json_hook, JsonHookSession};

/// Cap on everything one protocol session may send. apt's real streams are
/// far smaller (a 5,000-package dist-upgrade: ~1 MB of info stream, a few MB
/// of JSON); parsed, input costs ~20× its size in memory, so this keeps a
/// hook run within a few hundred MB whatever the peer sends.
pub const MAX_STREAM_BYTES: usize = 16 * 1024 * 1024;

/// What apt is going to do to one package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AptAction {
    Install,
    Upgrade,
    Downgrade,
    Reinstall,
    Remove,
    Purge,
    /// Configured only, nothing unpacked (`dpkg --unpack` earlier, then
    /// `apt-get -f install`): no build tree changes.
    Configure,
}

/// One package change announced by apt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AptChange {
    pub package: String,
    /// `None` when the protocol does not say (info stream version 2).
    pub architecture: Option<String>,
    /// Installed version, `None` if not installed.
    pub old: Option<String>,
    /// Version to be installed, `None` on removal.
    pub new: Option<String>,
    pub action: AptAction,
}

/// Why reading a hook protocol failed.
#[derive(Debug)]
pub enum AptHookError {
    Io(io::Error),
    Protocol(String),
    /// The peer sent more than [`MAX_STREAM_BYTES`]: nothing of it is used.
    TooLarge(&'static str),
}

impl fmt::Display for AptHookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AptHookError::Io(e) => write!(f, "i/o error: {e}"),
            AptHookError::Protocol(msg) => write!(f, "protocol error: {msg}"),
            AptHookError::TooLarge(what) => write!(
                f,
                "{what} larger than {MAX_STREAM_BYTES} bytes; ignored (no warnings for this run)"
            ),
        }
    }
}

impl std::error::Error for AptHookError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AptHookError::Io(e) => Some(e),
            AptHookError::Protocol(_) | AptHookError::TooLarge(_) => None,
        }
    }
}

impl From<io::Error> for AptHookError {
    fn from(e: io::Error) -> Self {
        AptHookError::Io(e)
    }
}

impl AptChange {
    /// The planner's view of this change; `None` when it changes no build
    /// tree (a configure-only step) or does not name a valid package.
    pub fn to_change(&self) -> Option<Change> {
        let package = PackageName::new(&self.package).ok()?;
        let old = self.old.as_deref().and_then(|v| v.parse().ok());
        let new = match self.action {
            // Only unpacks change a build tree.
            AptAction::Configure => return None,
            AptAction::Remove | AptAction::Purge => None,
            _ => Some(self.new.as_deref()?.parse().ok()?),
        };
        Some(Change::planned(
            package,
            self.architecture.clone(),
            old,
            new,
        ))
    }
}

/// The package a search term of apt's command line names: `P`, `P:ARCH`,
/// `P=VERSION`, `P:ARCH=VERSION` or `P/RELEASE` → (P, ARCH, VERSION).
pub fn search_term_package(term: &str) -> (&str, Option<&str>, Option<&str>) {
    let (name, version) = match term.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (term.split('/').next().unwrap_or(term), None),
    };
    match name.split_once(':') {
        Some((n, a)) => (n, Some(a), version),
        None => (name, None, version),
    }
}

/// The reinstalls apt's JSON hook does not announce: apt lists only
/// packages it installs, upgrades or removes, and a reinstall keeps apt's
/// "keep" mode. When the command line asks for reinstalls (see
/// [`frontend::asks_reinstall`]), each search term that names an installed
/// package (see [`search_term_package`]; a version, if given, the installed
/// one) not among `announced` is reinstalled at its installed version.
pub fn unannounced_reinstalls(
    terms: &[String],
    announced: &[AptChange],
    installed: &[crate::dpkg::Installed],
) -> Vec<AptChange> {
    let mut out: Vec<AptChange> = Vec::new();
    for t in terms {
        let (name, arch, version) = search_term_package(t);
        if announced.iter().any(|c| c.package == name) || out.iter().any(|c| c.package == name) {
            continue;
        }
        let Some(i) = installed.iter().find(|i| {
            i.name.as_str() == name
                && i.state == "installed"
                && arch.is_none_or(|a| i.architecture.as_deref().is_none_or(|ia| ia == a))
        }) else {
            continue;
        };
        let v = i.version.to_string();
        if version.is_some_and(|want| want != v) {
            continue; // another version: apt lists that change itself
        }
        out.push(AptChange {
            package: name.to_owned(),
            architecture: i.architecture.clone().or_else(|| arch.map(str::to_owned)),
            old: Some(v.clone()),
            new: Some(v),
            action: AptAction::Reinstall,
        });
    }
    out
}

/// An fd apt names in the environment variable `var`. 0–2 are the standard
/// streams (apt passes 0 when the hook reads stdin): `None` for those and
/// for anything that is not an open fd, so that they are never taken over
/// and closed.
pub fn env_fd(var: &str) -> Option<OwnedFd> {
    let n: i32 = std::env::var(var).ok()?.trim().parse().ok()?;
    if n <= 2 {
        return None;
    }
    // SAFETY: only used to ask the kernel whether `n` is open; the borrow
    // ends before anything else happens to the fd.
    rustix::io::fcntl_getfd(unsafe { BorrowedFd::borrow_raw(n) }).ok()?;
    // SAFETY: apt handed this open fd to this process alone, and nothing
    // else in it takes ownership of it.
    Some(unsafe { std::os::fd::FromRawFd::from_raw_fd(n) })
}

/// Read one line (with its `\n`, if any) into `buf`, at most
/// [`MAX_STREAM_BYTES`]. Returns false at end of stream with nothing read.
/// The one line reader of both protocols.
pub(crate) fn read_line_capped<R: BufRead>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> Result<bool, AptHookError> {
    buf.clear();
    loop {
        let available = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        if available.is_empty() {
            return Ok(!buf.is_empty());
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(pos) => (available.get(..=pos).unwrap_or(available), true),
            None => (available, false),
        };
        if buf.len().saturating_add(chunk.len()) > MAX_STREAM_BYTES {
            return Err(AptHookError::TooLarge("a line"));
        }
        buf.extend_from_slice(chunk);
        let used = chunk.len();
        r.consume(used);
        if done {
            return Ok(true);
        }
    }
}

/// Keep debug logs of hostile input short.
fn truncate_for_log(s: &str) -> &str {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An `AptChange` in one line, for the protocol tests.
    pub(crate) fn change(
        package: &str,
        arch: Option<&str>,
        old: Option<&str>,
        new: Option<&str>,
        action: AptAction,
    ) -> AptChange {
        AptChange {
            package: package.to_owned(),
            architecture: arch.map(str::to_owned),
            old: old.map(str::to_owned),
            new: new.map(str::to_owned),
            action,
        }
    }

    /// `hello` 2.10-3 newly installed: the recorded samples' one package.
    pub(crate) fn hello_install() -> AptChange {
        change(
            "hello",
            Some("amd64"),
            None,
            Some("2.10-3"),
            AptAction::Install,
        )
    }

    #[test]
    fn changes_serialize_lowercase() {
        let c = AptChange {
            package: "a".into(),
            architecture: None,
            old: None,
            new: Some("1".into()),
            action: AptAction::Reinstall,
        };
        let json = serde_json::to_string(&c).expect("serialize");
        assert!(json.contains("\"action\":\"reinstall\""), "{json}");
    }

    #[test]
    fn unannounced_reinstalls_are_installed_search_terms() {
        let inst = |name: &str, state: &str| crate::dpkg::Installed {
            name: PackageName::new(name).unwrap(),
            architecture: Some("amd64".into()),
            version: "6.1.192-2".parse().unwrap(),
            state: state.into(),
        };
        let installed = [
            inst("linux-kbuild-6.1", "installed"),
            inst("hello", "installed"),
            inst("gone", "config-files"),
        ];
        let announced = [hello_install()];
        let terms: Vec<String> = [
            "linux-kbuild-6.1:amd64",
            "linux-kbuild-6.1",
            "hello",
            "gone",
            "unknown",
            "./x.deb",
            "linux-kbuild-6.1:arm64",
        ]
        .map(String::from)
        .to_vec();
        let got = unannounced_reinstalls(&terms, &announced, &installed);
        assert_eq!(
            got,
            [change(
                "linux-kbuild-6.1",
                Some("amd64"),
                Some("6.1.192-2"),
                Some("6.1.192-2"),
                AptAction::Reinstall
            )]
        );
        let wrong_arch = unannounced_reinstalls(&terms[6..], &[], &installed);
        assert!(wrong_arch.is_empty(), "{wrong_arch:?}");
        // The forms apt takes: P=VERSION (the installed one), P/RELEASE.
        for t in [
            "linux-kbuild-6.1=6.1.192-2",
            "linux-kbuild-6.1:amd64=6.1.192-2",
            "linux-kbuild-6.1/bookworm",
        ] {
            let got = unannounced_reinstalls(&[t.to_string()], &[], &installed);
            assert_eq!(got.len(), 1, "{t}: {got:?}");
            assert_eq!(got[0].new.as_deref(), Some("6.1.192-2"), "{t}");
        }
        let other = unannounced_reinstalls(&["linux-kbuild-6.1=6.1.200-1".into()], &[], &installed);
        assert!(other.is_empty(), "{other:?}");
    }

    #[test]
    fn error_display_is_one_lowercase_line() {
        let e = AptHookError::Protocol("bad thing".to_owned());
        assert_eq!(e.to_string(), "protocol error: bad thing");
        let e: AptHookError = io::Error::other("x").into();
        assert!(e.to_string().starts_with("i/o error: "));
        assert!(std::error::Error::source(&e).is_some());
    }
}
