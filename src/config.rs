//! `/etc/dkms/dkms-hook.conf`: `key=value` lines in the style of dkms's own
//! `framework.conf`, `#` comments, optional quotes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::kernel::Role;
use crate::root::{Root, CAP_SMALL};
use crate::Error;

pub const CONFIG_FILE: &str = "/etc/dkms/dkms-hook.conf";
/// The longest build time limit accepted: a week. Larger values are typos
/// and would overflow the deadline arithmetic.
pub const MAX_BUILD_TIMEOUT: u64 = 7 * 24 * 3600;

/// `prometheus_textfile` in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Textfile {
    /// node_exporter's directory (`crate::metrics::TEXTFILE_DIR`) when it
    /// exists.
    Auto,
    Off,
    /// This directory.
    Dir(PathBuf),
}

/// What `pre-install-pkgs` does with a transaction that changes a build
/// tree in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreflightMode {
    Off,
    /// Test-build, print failures, let apt go on.
    Warn,
    /// Test-build, and stop apt before dpkg when a build fails.
    Block,
}

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
    /// The input roles whose change triggers a rebuild (`trigger_ROLE`).
    pub triggers: BTreeSet<Role>,
    pub kernels: KernelSelection,
    pub jobs: usize,
    pub build_timeout: Duration,
    pub initramfs: bool,
    /// Keep each pair's previous build after a rebuild, for `rollback`.
    pub keep_previous: bool,
    pub quiet: bool,
    pub preflight: PreflightMode,
    pub prometheus_textfile: Textfile,
    /// Where a failed rebuild is mailed when apt's configuration names no
    /// `Unattended-Upgrade::Mail` (`None`: no mail).
    pub mail: Option<String>,
    /// Under unattended-upgrades, rebuild once its run ends (after all its
    /// steps), and test-build each pair once per run.
    pub defer_unattended: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            triggers: BTreeSet::from([Role::Kbuild, Role::Headers]),
            // A compiler upgrade rarely changes the ABI; off unless asked for.
            kernels: KernelSelection::All,
            jobs: 2,
            build_timeout: Duration::from_secs(1800),
            initramfs: true,
            keep_previous: true,
            quiet: false,
            preflight: PreflightMode::Warn,
            prometheus_textfile: Textfile::Auto,
            mail: None,
            defer_unattended: true,
        }
    }
}

impl Config {
    pub fn triggers(&self, role: Role) -> bool {
        self.triggers.contains(&role)
    }

    /// Read the config under `root` (resolved inside it, a regular file of
    /// at most 1 MB). A missing file means defaults. Each bad line is one
    /// error naming file and line, and is ignored: the good keys still apply.
    pub fn load(root: &Root) -> (Config, Vec<Error>) {
        let path = Path::new(CONFIG_FILE);
        match root.read(path, CAP_SMALL) {
            Ok(text) => Config::parse_lines(&String::from_utf8_lossy(&text), path),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                (Config::default(), Vec::new())
            }
            Err(e) => (Config::default(), vec![e]),
        }
    }

    /// Parse config text strictly: the first bad line is the error.
    pub fn parse(text: &str, path: &Path) -> Result<Config, Error> {
        let (c, mut errors) = Config::parse_lines(text, path);
        match errors.is_empty() {
            true => Ok(c),
            false => Err(errors.remove(0)),
        }
    }

    /// Parse config text, keeping every good line and an error per bad one.
    pub fn parse_lines(text: &str, path: &Path) -> (Config, Vec<Error>) {
        let mut c = Config::default();
        let mut errors = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let r = match line.split_once('=') {
                None => Err(format!("expected key=value, found {line:?}")),
                Some((key, value)) => c.set(key.trim(), unquote(value.trim())),
            };
            if let Err(msg) = r {
                errors.push(Error::Config {
                    path: path.to_path_buf(),
                    line: i + 1,
                    msg,
                });
            }
        }
        (c, errors)
    }

    fn trigger(&mut self, role: Role, on: bool) {
        if on {
            self.triggers.insert(role);
        } else {
            self.triggers.remove(&role);
        }
    }

    /// Set one key; the message says what was expected.
    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let boolean = || match value {
            "yes" | "true" | "1" | "on" => Ok(true),
            "no" | "false" | "0" | "off" => Ok(false),
            _ => Err(format!("{key}: expected yes or no, found {value:?}")),
        };
        match key {
            "trigger_kbuild" => self.trigger(Role::Kbuild, boolean()?),
            "trigger_headers" => self.trigger(Role::Headers, boolean()?),
            "trigger_compiler" => self.trigger(Role::Compiler, boolean()?),
            "initramfs" => self.initramfs = boolean()?,
            "keep_previous" => self.keep_previous = boolean()?,
            "quiet" => self.quiet = boolean()?,
            "defer_unattended" => self.defer_unattended = boolean()?,
            "kernels" => {
                self.kernels = match value {
                    "all" => KernelSelection::All,
                    "running-and-newest" => KernelSelection::RunningAndNewest,
                    _ => {
                        return Err(format!(
                            "kernels: expected all or running-and-newest, found {value:?}"
                        ))
                    }
                }
            }
            "prometheus_textfile" => {
                self.prometheus_textfile = match value {
                    "auto" => Textfile::Auto,
                    "off" => Textfile::Off,
                    p if p.starts_with('/') => Textfile::Dir(p.into()),
                    _ => {
                        return Err(format!(
                            "prometheus_textfile: expected auto, off or an absolute directory, found {value:?}"
                        ))
                    }
                }
            }
            "preflight" => {
                self.preflight = match value {
                    "off" => PreflightMode::Off,
                    "warn" => PreflightMode::Warn,
                    "block" => PreflightMode::Block,
                    _ => {
                        return Err(format!(
                            "preflight: expected off, warn or block, found {value:?}"
                        ))
                    }
                }
            }
            "mail" => self.mail = mail_address(value)?,
            "jobs" => {
                self.jobs = value
                    .parse()
                    .ok()
                    .filter(|j| (1..=64).contains(j))
                    .ok_or_else(|| {
                        format!("jobs: expected a number from 1 to 64, found {value:?}")
                    })?
            }
            "build_timeout" => {
                let secs: u64 = value
                    .parse()
                    .ok()
                    .filter(|s| (1..=MAX_BUILD_TIMEOUT).contains(s))
                    .ok_or_else(|| {
                        format!(
                            "build_timeout: expected seconds from 1 to {MAX_BUILD_TIMEOUT}, found {value:?}"
                        )
                    })?;
                self.build_timeout = Duration::from_secs(secs);
            }
            _ => return Err(format!("unknown key {key:?}")),
        }
        Ok(())
    }
}

/// Every key, its default as written in the config file, and what it does:
/// the one table the shipped config and the man page's CONFIGURATION
/// section are checked against (tests below and in `man_page`).
pub const KEYS: &[(&str, &str, &str)] = &[
    ("trigger_kbuild", "yes", "Rebuild when a package owning a kernel's shared build infrastructure (linux-kbuild-X.Y: scripts/, tools/) is upgraded in place."),
    ("trigger_headers", "yes", "Rebuild when a kernel's headers (linux-headers-K, linux-headers-*-common, a make deb-pkg headers package) are upgraded in place."),
    ("trigger_compiler", "no", "Rebuild when the compiler the kernel tree was configured with (CC in .kernelvariables) is upgraded."),
    ("kernels", "all", "Which kernels get rebuilds: all, or running-and-newest."),
    ("jobs", "2", "How many dkms modules are rebuilt in parallel (1 to 64); the kernels of one module are rebuilt one after another."),
    ("build_timeout", "1800", "Time limit in seconds of one dkms build, cp or update-initramfs (1 to 604800); the process group is killed after it."),
    ("initramfs", "yes", "Refresh a kernel's initramfs (update-initramfs -u -k K) when a rebuilt module is part of it."),
    ("keep_previous", "yes", "After a successful rebuild, keep the build it replaced (one per module, version and kernel, under /var/lib/dkms-hook/previous) for dkms-hook rollback."),
    ("quiet", "no", "Print nothing in apt's output but failures and warnings."),
    ("prometheus_textfile", "auto", "Where to write dkms_hook.prom for node_exporter's textfile collector after every run that may change state: auto (/var/lib/prometheus/node-exporter when it exists), off, or a directory."),
    ("mail", "", "Where dkms-hook mails a failed rebuild (one mail per run, through /usr/sbin/sendmail) and the result of its scheduled retry, when apt's configuration sets no Unattended-Upgrade::Mail (that address comes first); empty: no mail."),
    ("defer_unattended", "yes", "Under unattended-upgrades, which installs in minimal steps, rebuild once its run ends, so that each module and kernel is built once per run; preflight=warn then test-builds each once per run. Not when unattended-upgrades reboots by itself (Automatic-Reboot, InstallOnShutdown): then after each step."),
    ("preflight", "warn", "When apt is about to change a kernel's build tree in place, test-build the affected modules against the downloaded packages before dpkg unpacks them: off, warn (print failures, let apt go on) or block (stop apt before anything is unpacked when a module would not build; dkms-hook status shows the block, and the same versions are not built again until an input changes; go on by fixing the module and running dkms-hook preflight, with preflight=warn, apt-mark hold on the package, or by hand with DKMS_HOOK_SUSPEND=1 apt ...)."),
];

/// A mail address or list of them as a header takes it: one line of at
/// most 998 bytes (RFC 5322), no control characters; empty is none.
pub fn mail_address(value: &str) -> Result<Option<String>, String> {
    let v = value.trim();
    if v.chars().any(char::is_control) || v.len() > 998 {
        return Err(format!(
            "mail: expected one line of addresses, found {:?}",
            v.chars().take(60).collect::<String>()
        ));
    }
    Ok((!v.is_empty()).then(|| v.to_string()))
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
    fn every_key_is_in_the_table_and_the_shipped_config_at_its_default() {
        let text = include_str!("../etc/dkms-hook.conf");
        let mut c = Config::default();
        for (key, default, _) in KEYS {
            assert!(
                text.contains(&format!("\n#{key}={default}\n")),
                "{key} missing from etc/dkms-hook.conf"
            );
            c.set(key, default).unwrap();
        }
        assert_eq!(c, Config::default());
    }

    #[test]
    fn a_bad_line_keeps_the_good_ones() {
        // Regression: one bad line discarded every setting.
        let (c, errors) = Config::parse_lines(
            "jobs=4\nfrob=1\nquiet=maybe\nkernels=running-and-newest\n",
            Path::new("/etc/dkms/dkms-hook.conf"),
        );
        assert_eq!(c.jobs, 4);
        assert_eq!(c.kernels, KernelSelection::RunningAndNewest);
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "/etc/dkms/dkms-hook.conf:2: unknown key \"frob\"",
                "/etc/dkms/dkms-hook.conf:3: quiet: expected yes or no, found \"maybe\""
            ]
        );
    }

    /// The address goes into a mail header: one line or an error.
    #[test]
    fn a_mail_address_is_one_line() {
        let c = Config::parse("mail=\"ops@example.org, root\"\n", Path::new("f")).unwrap();
        assert_eq!(c.mail.as_deref(), Some("ops@example.org, root"));
        assert_eq!(Config::parse("mail=\n", Path::new("f")).unwrap().mail, None);
        assert!(Config::parse("mail=a\rBcc: x\n", Path::new("f")).is_err());
        assert!(Config::parse(&format!("mail={}", "a".repeat(999)), Path::new("f")).is_err());
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
        assert!(c.triggers(Role::Compiler));
        let e = Config::parse("# c\nfrob=1\n", Path::new("/etc/dkms/dkms-hook.conf")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/dkms/dkms-hook.conf:2: unknown key \"frob\""
        );
        assert!(Config::parse("jobs=0", Path::new("f")).is_err());
        // Regression: this value panicked every later run.
        assert!(Config::parse("build_timeout=10000000000000000000", Path::new("f")).is_err());
        assert!(Config::parse("quiet=maybe", Path::new("f")).is_err());
        assert!(Config::parse("nonsense", Path::new("f")).is_err());
    }
}
