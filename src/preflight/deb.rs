//! Package files as preflight reads them through `dpkg-deb`: their control
//! fields, their paths (the tar stream's headers; nothing is written), and
//! which kernel's headers one of them brings.

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use super::{Deb, Session};
use crate::file_tree::{self, Budget};
use crate::kernel::KernelRelease;
use crate::name::PackageName;
use crate::tools::DPKG_DEB;
use crate::Error;

/// The most one package may unpack to (linux-headers-*-common: ~20,000
/// files, ~100 MB).
pub const UNPACK_BUDGET: Budget = Budget {
    entries: 400_000,
    bytes: 4 << 30,
};

/// Read the name, version and architecture of a `.deb`.
pub fn read_deb(path: &Path) -> Result<Deb, Error> {
    let out = duct::cmd(
        DPKG_DEB,
        [
            OsStr::new("--field"),
            path.as_os_str(),
            OsStr::new("Package"),
            OsStr::new("Version"),
            OsStr::new("Architecture"),
            OsStr::new("Depends"),
        ],
    )
    .stdin_null()
    .stderr_null()
    .stdout_capture()
    .unchecked()
    .run()
    .map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let bad = |why: &str| Error::Unreadable {
        path: path.to_path_buf(),
        why: why.into(),
    };
    if !out.status.success() {
        return Err(bad("not a Debian package (dpkg-deb --field failed)"));
    }
    Ok(Deb {
        path: path.to_path_buf(),
        package: PackageName::new(field("Package").ok_or_else(|| bad("no Package field"))?)?,
        version: field("Version")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("no valid Version field"))?,
        architecture: field("Architecture")
            .filter(|a| crate::dpkg::valid_arch(a))
            .map(str::to_string),
        depends: field("Depends")
            .unwrap_or_default()
            .split(',')
            .filter_map(|d| {
                let first = d.split('|').next()?.trim();
                let name = first.split([' ', '(', ':']).next()?;
                PackageName::new(name).ok()
            })
            .collect(),
        files: Vec::new(),
    })
}

/// The kernel whose build link a package ships (`/lib/modules/K/build` or
/// `/usr/lib/modules/K/build`): what makes it a kernel's headers. A
/// `linux-headers-X-common` or a kbuild package ships none.
pub fn kernel_of(deb: &Deb) -> Option<KernelRelease> {
    deb.files.iter().find_map(|f| {
        let rest = f
            .strip_prefix("/lib/modules")
            .or_else(|_| f.strip_prefix("/usr/lib/modules"))
            .ok()?;
        let mut c = rest.components();
        let k = c.next()?.as_os_str().to_str()?;
        (c.next()?.as_os_str() == "build" && c.next().is_none())
            .then(|| KernelRelease::new(k).ok())
            .flatten()
    })
}

// Reading the paths is the session's step (it runs before planning), but
// what it does is read packages.
impl Session {
    /// Read each package's paths (its tar stream's headers; nothing is
    /// written): the sandbox unpacks them, onto a tmpfs of its own.
    pub fn read_contents(&self, debs: &mut [Deb], timeout: Duration) -> Result<(), Error> {
        for deb in debs.iter_mut() {
            let listed = with_tar_stream(&deb.path, timeout, &mut |r| {
                file_tree::list(r, UNPACK_BUDGET)
            })
            .map_err(|why| Error::Unreadable {
                path: deb.path.clone(),
                why,
            })?;
            deb.files = listed.paths;
        }
        Ok(())
    }
}

/// Run `f` on the tar stream of the package at `path` (`dpkg-deb
/// --fsys-tarfile`), dpkg-deb killed after `timeout`; it must end well.
pub fn with_tar_stream<T>(
    path: &Path,
    timeout: Duration,
    f: &mut dyn FnMut(&mut dyn std::io::Read) -> Result<T, String>,
) -> Result<T, String> {
    let reader = duct::cmd(DPKG_DEB, [OsStr::new("--fsys-tarfile"), path.as_os_str()])
        .stdin_null()
        .stderr_null()
        .unchecked()
        .reader()
        .map_err(|e| format!("{DPKG_DEB}: {e}"))?;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let r = std::thread::scope(|s| {
        let reader = &reader;
        s.spawn(move || {
            if done_rx.recv_timeout(timeout).is_err() {
                let _ = reader.kill();
            }
        });
        let mut stream = reader;
        let r = f(&mut stream).and_then(|u| {
            // What follows the end marker is padding: read it (at most one
            // tar record's worth) so that dpkg-deb ends.
            let mut rest = std::io::Read::take(reader, 1 << 20);
            std::io::copy(&mut rest, &mut std::io::sink()).map_err(|e| e.to_string())?;
            Ok(u)
        });
        let _ = done_tx.send(());
        r
    });
    let r = match r {
        Ok(u) => u,
        Err(e) => {
            let _ = reader.kill();
            return Err(format!("cannot unpack: {e}"));
        }
    };
    if reader.try_wait().ok().flatten().map(|o| o.status.success()) != Some(true) {
        let _ = reader.kill();
        return Err("dpkg-deb --fsys-tarfile failed".into());
    }
    Ok(r)
}
