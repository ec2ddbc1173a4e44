//! `/etc/dkms/dkms-hook.conf`: `key=value` lines in the style of dkms's own
//! `framework.conf`, `#` comments, optional quotes.

use std::path::Path;
use std::time::Duration;

use crate::kernel::Role;
use crate::root::{Root, CAP_SMALL};
use crate::Error;

pub const CONFIG_FILE: &str = "/etc/dkms/dkms-hook.conf";
/// The longest build time limit accepted: a week. Larger values are typos
/// and would overflow the deadline arithmetic.
pub const MAX_BUILD_TIMEOUT: u64 = 7 * 24 * 3600;

/// Which kernels get rebuilds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelSelection {
    All,
    /// The running kernel and the newest installed one: enough on machines
    /// that keep many old kernels around and boot only the latest.
    RunningAndNewest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub trigger_kbuild: bool,
    pub trigger_headers: bool,
    pub trigger_compiler: bool,
    pub kernels: KernelSelection,
    pub jobs: usize,
    pub build_timeout: Duration,
    pub initramfs: bool,
    pub quiet: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            trigger_kbuild: true,
            trigger_headers: true,
            // A compiler upgrade rarely changes the ABI; off unless asked for.
            trigger_compiler: false,
            kernels: KernelSelection::All,
            jobs: 2,
            build_timeout: Duration::from_secs(1800),
            initramfs: true,
            quiet: false,
        }
    }
}

impl Config {
    pub fn triggers(&self, role: Role) -> bool {
        match role {
            Role::Headers => self.trigger_headers,
            Role::Kbuild => self.trigger_kbuild,
            Role::Compiler => self.trigger_compiler,
        }
    }

    /// Read the config under `root` (resolved inside it, a regular file of
    /// at most 1 MB). A missing file means defaults.
    pub fn load(root: &Root) -> Result<Config, Error> {
        let path = Path::new(CONFIG_FILE);
        match root.read(path, CAP_SMALL) {
            Ok(text) => Config::parse(&String::from_utf8_lossy(&text), path),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(Config::default())
            }
            Err(e) => Err(e),
        }
    }

    /// Parse config text; the first bad line is an error naming file and line.
    pub fn parse(text: &str, path: &Path) -> Result<Config, Error> {
        let mut c = Config::default();
        for (i, line) in text.lines().enumerate() {
            let err = |msg: String| Error::Config {
                path: path.to_path_buf(),
                line: i + 1,
                msg,
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(err(format!("expected key=value, found {line:?}")));
            };
            let (key, value) = (key.trim(), unquote(value.trim()));
            let boolean = || match value {
                "yes" | "true" | "1" | "on" => Ok(true),
                "no" | "false" | "0" | "off" => Ok(false),
                _ => Err(err(format!("{key}: expected yes or no, found {value:?}"))),
            };
            match key {
                "trigger_kbuild" => c.trigger_kbuild = boolean()?,
                "trigger_headers" => c.trigger_headers = boolean()?,
                "trigger_compiler" => c.trigger_compiler = boolean()?,
                "initramfs" => c.initramfs = boolean()?,
                "quiet" => c.quiet = boolean()?,
                "kernels" => {
                    c.kernels = match value {
                        "all" => KernelSelection::All,
                        "running-and-newest" => KernelSelection::RunningAndNewest,
                        _ => {
                            return Err(err(format!(
                                "kernels: expected all or running-and-newest, found {value:?}"
                            )))
                        }
                    }
                }
                "jobs" => {
                    c.jobs = value
                        .parse()
                        .ok()
                        .filter(|j| (1..=64).contains(j))
                        .ok_or_else(|| {
                            err(format!(
                                "jobs: expected a number from 1 to 64, found {value:?}"
                            ))
                        })?
                }
                "build_timeout" => {
                    let secs: u64 = value
                        .parse()
                        .ok()
                        .filter(|s| (1..=MAX_BUILD_TIMEOUT).contains(s))
                        .ok_or_else(|| {
                            err(format!(
                                "build_timeout: expected seconds from 1 to {MAX_BUILD_TIMEOUT}, found {value:?}"
                            ))
                        })?;
                    c.build_timeout = Duration::from_secs(secs);
                }
                _ => return Err(err(format!("unknown key {key:?}"))),
            }
        }
        Ok(c)
    }
}

fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = v.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_is_the_default() {
        let text = include_str!("../etc/dkms-hook.conf");
        assert_eq!(
            Config::parse(text, Path::new("x")).unwrap(),
            Config::default()
        );
        // Uncommenting every key keeps the defaults: the comments are true.
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix('#')
                    .filter(|l| l.contains('=') && !l.starts_with(' '))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            Config::parse(&uncommented, Path::new("x")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn values_and_errors() {
        let c = Config::parse(
            "jobs=4\nkernels=\"running-and-newest\"\ntrigger_compiler=yes\n",
            Path::new("f"),
        )
        .unwrap();
        assert_eq!(c.jobs, 4);
        assert_eq!(c.kernels, KernelSelection::RunningAndNewest);
        assert!(c.trigger_compiler);
        let e = Config::parse("# c\nfrob=1\n", Path::new("/etc/dkms/dkms-hook.conf")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/dkms/dkms-hook.conf:2: unknown key \"frob\""
        );
        assert!(Config::parse("jobs=0", Path::new("f")).is_err());
        // Regression (issue 11.12): this value panicked every later run.
        assert!(Config::parse("build_timeout=10000000000000000000", Path::new("f")).is_err());
        assert!(Config::parse("quiet=maybe", Path::new("f")).is_err());
        assert!(Config::parse("nonsense", Path::new("f")).is_err());
    }
}
