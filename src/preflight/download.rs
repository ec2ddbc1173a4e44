//! Without DEB files: what apt would install now (its simulation) and
//! `apt-get download` of the packages preflight needs.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::name::PackageName;
use crate::tools::APT_GET;
use crate::Error;

/// What `apt-get upgrade` (or `dist-upgrade`) would install now, from its
/// simulation: `Inst NAME [OLD] (NEW SUITE [ARCH])` lines.
pub fn apt_upgrade_candidates(
    apt_get: &OsStr,
    dist_upgrade: bool,
) -> Result<Vec<(PackageName, String, Option<String>)>, Error> {
    let action = if dist_upgrade {
        "dist-upgrade"
    } else {
        "upgrade"
    };
    let out = run_apt_get(duct::cmd(apt_get, ["-s", "-q", action]).stdout_capture())
        .and_then(|o| ok_or_refused(o, || format!("apt-get -s {action} failed")))?;
    Ok(parse_apt_simulation(&String::from_utf8_lossy(&out.stdout)))
}

/// Runs an apt-get command without input or error output.
fn run_apt_get(cmd: duct::Expression) -> Result<std::process::Output, Error> {
    cmd.stdin_null()
        .stderr_null()
        .unchecked()
        .run()
        .map_err(|e| Error::io(Path::new(APT_GET), e))
}

fn ok_or_refused(
    out: std::process::Output,
    why: impl FnOnce() -> String,
) -> Result<std::process::Output, Error> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(Error::Refused(why()))
    }
}

fn parse_apt_simulation(text: &str) -> Vec<(PackageName, String, Option<String>)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("Inst ")?;
            let (name, rest) = rest.split_once(' ')?;
            let paren = &rest[rest.find('(')? + 1..];
            let version = paren.split_whitespace().next()?;
            let arch = paren
                .rfind('[')
                .and_then(|i| paren[i + 1..].split(']').next())
                .filter(|a| crate::dpkg::valid_arch(a))
                .map(str::to_string);
            Some((PackageName::new(name).ok()?, version.to_string(), arch))
        })
        .collect()
}

/// Download `name=version` into `dir` (`apt-get download`), returning the file.
pub fn apt_download(
    apt_get: &OsStr,
    name: &PackageName,
    version: &str,
    dir: &Path,
) -> Result<PathBuf, Error> {
    let spec = format!("{name}={version}");
    run_apt_get(
        duct::cmd(apt_get, ["-q", "download", spec.as_str()])
            .dir(dir)
            .stdout_null(),
    )
    .and_then(|o| ok_or_refused(o, || format!("apt-get download {spec} failed")))?;
    std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{name}_")) && n.ends_with(".deb"))
        })
        .ok_or_else(|| Error::Refused(format!("apt-get download {spec} left no .deb")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_simulation_lines() {
        let text = "NOTE: This is only a simulation!\n\
Inst linux-kbuild-6.1 [6.1.176-1] (6.1.192-3 Debian:12.12/stable [amd64])\n\
Inst tzdata [2024a-0+deb12u1] (2025b-0+deb12u1 Debian:12.12/stable [all])\n\
Conf linux-kbuild-6.1 (6.1.192-3 Debian:12.12/stable [amd64])\n";
        let got = parse_apt_simulation(text);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0.as_str(), "linux-kbuild-6.1");
        assert_eq!(got[0].1, "6.1.192-3");
        assert_eq!(got[0].2.as_deref(), Some("amd64"));
    }
}
