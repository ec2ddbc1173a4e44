//! The mail about failed rebuilds: its recipient (the address
//! unattended-upgrades mails, read as apt reads it, else the `mail` key),
//! its text (a subject that says FAILED, the result lines, the make.log's
//! last lines, what to run) and its sending through the `sendmail`
//! interface every MTA provides.

use std::ffi::OsString;
use std::path::{Component, Path};
use std::time::{Duration, Instant};

use super::{Run, MAX_RETRIES, RETRY_UNIT};
use crate::config::Config;
use crate::report::printable;
use crate::root::{Root, CAP_STATE};
use crate::state::{State, STATE_DIR};
use crate::tools::{wait_deadline, Tools, APT_CONFIG, SENDMAIL};

/// The key unattended-upgrades reads its recipient from
/// (`apt_pkg.config.find("Unattended-Upgrade::Mail", "")`).
pub const UU_MAIL_KEY: &str = "Unattended-Upgrade::Mail";
/// How long apt-config and sendmail may take: a hung MTA must not hold
/// apt's hook.
const TIMEOUT: Duration = Duration::from_secs(60);
/// The most of apt-config's output read.
const CAP_OUTPUT: usize = 64 << 10;
/// The make.log's tail in a mail: lines, bytes read from its end, and the
/// longest line kept.
const TAIL_LINES: usize = 30;
const TAIL_BYTES: usize = 16 << 10;
const LINE_MAX: usize = 300;
/// Failures shown with their make.log's tail; the rest by their line only.
const TAILS_MAX: usize = 3;

/// One failure in the mail.
#[derive(Debug, Clone)]
pub struct Failed {
    /// Its result line (`FAILED to rebuild …; see …make.log`).
    pub line: String,
    /// The kept make.log (in-root path, from the failure list).
    pub make_log: Option<String>,
    /// Mailed before: a scheduled retry failed again.
    pub again: bool,
    /// The scheduled retry's attempt number.
    pub retry: Option<u32>,
}

/// What one mail says.
#[derive(Debug, Default)]
pub struct News {
    pub failed: Vec<Failed>,
    /// Result lines of pairs that failed before and built now.
    pub fixed: Vec<String>,
}

impl News {
    pub fn is_empty(&self) -> bool {
        self.failed.is_empty() && self.fixed.is_empty()
    }

    /// `2 failures and 1 success`, for the log.
    pub fn summary(&self) -> String {
        let n = |k: usize, what: &str| format!("{k} {what}{}", if k == 1 { "" } else { "s" });
        match (self.failed.len(), self.fixed.len()) {
            (f, 0) => n(f, "failure"),
            (0, s) => n(s, "rebuild that had failed"),
            (f, s) => format!(
                "{} and {}",
                n(f, "failure"),
                n(s, "rebuild that had failed")
            ),
        }
    }
}

/// The recipient: `Unattended-Upgrade::Mail` when apt's configuration sets
/// it, else the `mail` key, else none; and a warning line for each source
/// that could not be used.
pub fn recipient(root: &Root, cfg: &Config, tools: &Tools) -> (Option<String>, Vec<String>) {
    let mut warnings = Vec::new();
    match apt_mail(root, tools) {
        Ok(Some(to)) => return (Some(to), warnings),
        Ok(None) => {}
        Err(e) => warnings.push(format!("cannot read {UU_MAIL_KEY}: {e}")),
    }
    (cfg.mail.clone(), warnings)
}

/// `Unattended-Upgrade::Mail`, as unattended-upgrades reads it.
fn apt_mail(root: &Root, tools: &Tools) -> Result<Option<String>, String> {
    match apt_config(root, tools, &[UU_MAIL_KEY])?.pop().flatten() {
        Some(v) => crate::config::mail_address(&v),
        None => Ok(None),
    }
}

/// The values of `keys` in apt's configuration (`None` for an unset key),
/// by `apt-config shell V0 KEY0 V1 KEY1 …`: apt's own reading of it
/// (`APT_CONFIG`, apt.conf, apt.conf.d, case-insensitive keys), as
/// unattended-upgrades reads it through python-apt. Under `--root` only a
/// named stand-in runs (the real one reads the host's): all unset then.
pub fn apt_config(
    root: &Root,
    tools: &Tools,
    keys: &[&str],
) -> Result<Vec<Option<String>>, String> {
    let Some(prog) = program(root, tools.apt_config.as_ref(), APT_CONFIG) else {
        return Ok(vec![None; keys.len()]);
    };
    let mut args = vec!["shell".to_string()];
    for (i, k) in keys.iter().enumerate() {
        args.push(format!("V{i}"));
        args.push(k.to_string());
    }
    let handle = duct::cmd(&prog, &args)
        .env("DKMS_HOOK_ROOT", root.dir())
        .stdin_null()
        .stdout_capture()
        .stderr_null()
        .unchecked()
        .start()
        .map_err(|e| format!("{}: {e}", prog.to_string_lossy()))?;
    let out = finished(&handle, &prog)?;
    if !out.status.success() {
        return Err(format!(
            "{} exited {}",
            prog.to_string_lossy(),
            out.status.code().unwrap_or(-1)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(CAP_OUTPUT)]);
    let mut values = vec![None; keys.len()];
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let slot = line
            .strip_prefix('V')
            .and_then(|r| r.split_once('='))
            .and_then(|(i, _)| i.parse::<usize>().ok())
            .filter(|&i| i < keys.len());
        let value = slot.and_then(|i| shell_value(line, &format!("V{i}")).map(|v| (i, v)));
        let (i, v) = value
            .ok_or_else(|| format!("cannot read apt-config's answer {:?}", first_line(line)))?;
        values[i] = Some(v);
    }
    Ok(values)
}

/// apt's reading of a boolean (`StringToBool`): yes, true, with, enable,
/// on or 1, in any case.
pub fn apt_true(value: &str) -> bool {
    ["yes", "true", "with", "enable", "on", "1"]
        .iter()
        .any(|t| value.trim().eq_ignore_ascii_case(t))
}

/// The value of `NAME='…'` as apt-config shell prints it (a `'` inside
/// is `'\''`).
fn shell_value(text: &str, name: &str) -> Option<String> {
    let rest = text
        .trim_end_matches('\n')
        .strip_prefix(name)?
        .strip_prefix('=')?;
    let mut value = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => loop {
                match chars.next()? {
                    '\'' => break,
                    c => value.push(c),
                }
            },
            '\\' => value.push(chars.next()?),
            _ => return None,
        }
    }
    Some(value)
}

/// The program to run: the stand-in, else the real one on the host root
/// only.
fn program(root: &Root, stand_in: Option<&OsString>, real: &str) -> Option<OsString> {
    match stand_in {
        Some(s) => Some(s.clone()),
        None if root.is_host_root() => Some(real.into()),
        None => None,
    }
}

/// The child's output, or an error once it ran past [`TIMEOUT`] (it is
/// killed then).
fn finished<'h>(
    handle: &'h duct::Handle,
    prog: &OsString,
) -> Result<&'h std::process::Output, String> {
    match wait_deadline(handle, Instant::now() + TIMEOUT) {
        Ok(Some(out)) => Ok(out),
        Ok(None) => {
            let _ = handle.kill();
            Err(format!(
                "{} did not finish within {} s",
                prog.to_string_lossy(),
                TIMEOUT.as_secs()
            ))
        }
        Err(e) => Err(format!("{}: {e}", prog.to_string_lossy())),
    }
}

fn first_line(text: &str) -> String {
    printable(text.lines().next().unwrap_or_default())
        .chars()
        .take(LINE_MAX)
        .collect()
}

/// Send the mail through `sendmail -t -oi` (recipients from the header; a
/// line with a lone `.` does not end it). `Ok(false)`: nothing ran (under
/// `--root` without a stand-in).
pub fn send(
    state: &State,
    tools: &Tools,
    to: &str,
    news: &News,
    run: Run<'_>,
) -> Result<bool, String> {
    let root = state.root();
    let Some(prog) = program(root, tools.sendmail.as_ref(), SENDMAIL) else {
        log::debug!("under --root without DKMS_HOOK_SENDMAIL: no mail sent");
        return Ok(false);
    };
    let text = message(state, to, &host_name(), news, run);
    let handle = duct::cmd(&prog, ["-t", "-oi"])
        .env("DKMS_HOOK_ROOT", root.dir())
        .stdin_bytes(text)
        .stdout_null()
        .stderr_capture()
        .unchecked()
        .start()
        .map_err(|e| format!("{}: {e}", prog.to_string_lossy()))?;
    let out = finished(&handle, &prog)?;
    if out.status.success() {
        return Ok(true);
    }
    let said = first_line(&String::from_utf8_lossy(&out.stderr));
    Err(format!(
        "{} exited {}{}",
        prog.to_string_lossy(),
        out.status.code().unwrap_or(-1),
        if said.is_empty() {
            String::new()
        } else {
            format!(": {said}")
        }
    ))
}

/// This machine's name, as unattended-upgrades names it in its subject.
fn host_name() -> String {
    let u = rustix::system::uname();
    String::from_utf8_lossy(u.nodename().to_bytes()).into_owned()
}

/// `acpi-call/1.2.2 for 6.1.0-50-amd64` out of a result line.
fn pair_of(line: &str) -> &str {
    let rest = line
        .strip_prefix("FAILED to rebuild ")
        .or_else(|| line.strip_prefix("rebuilt "))
        .unwrap_or(line);
    rest.split(" (")
        .next()
        .unwrap_or(rest)
        .split(" was already")
        .next()
        .unwrap_or(rest)
}

/// The subject: FAILED plainly first when anything failed, with the host,
/// the pair and the kernel.
pub fn subject(host: &str, news: &News) -> String {
    let more = |n: usize| {
        if n > 1 {
            format!(" and {} more", n - 1)
        } else {
            String::new()
        }
    };
    let s = match news.failed.first() {
        Some(f) => format!(
            "FAILED{}: dkms-hook on {host} could not rebuild {}{}{}",
            if news.failed.iter().all(|f| f.again) {
                " again"
            } else {
                ""
            },
            pair_of(&f.line),
            more(news.failed.len()),
            f.retry
                .map(|n| format!(" (scheduled retry {n} of {MAX_RETRIES})"))
                .unwrap_or_default()
        ),
        None => format!(
            "rebuilt now: dkms-hook on {host} rebuilt {}{}, which had failed",
            news.fixed.first().map_or("", |l| pair_of(l)),
            more(news.fixed.len())
        ),
    };
    one_header_line(&s)
}

/// A header value: printable ASCII only, at most 900 bytes.
fn one_header_line(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(900)
        .collect()
}

/// The whole message, headers and body.
pub fn message(state: &State, to: &str, host: &str, news: &News, run: Run<'_>) -> String {
    let mut body = vec![format!(
        "dkms-hook on {host}, after its {} run:",
        if run.scheduled {
            "scheduled retry"
        } else {
            run.name
        }
    )];
    body.push(String::new());
    for f in &news.failed {
        body.push(f.line.clone());
        if let Some(n) = f.retry {
            body.push(format!(
                "  (scheduled retry {n} of {MAX_RETRIES}{})",
                if n >= MAX_RETRIES {
                    "; there will be no more scheduled retries"
                } else {
                    ""
                }
            ));
        }
    }
    for l in &news.fixed {
        body.push(format!("{l} (it had failed)"));
    }
    for f in news.failed.iter().take(TAILS_MAX) {
        let Some(log) = f.make_log.as_deref() else {
            continue;
        };
        if let Some(tail) = tail(state, log) {
            body.push(String::new());
            body.push(format!("The last lines of {log}:"));
            body.extend(tail.into_iter().map(|l| format!("| {l}")));
        }
    }
    if !news.failed.is_empty() {
        body.push(String::new());
        body.extend(
            [
                "The working module stays installed unless a line above says otherwise.",
                "What to do: read the make.log, fix its cause (often a newer version of",
                "the module's package, or a package the build needs), then run as root:",
                "",
                "    dkms-hook retry",
                "",
                "`dkms-hook status` shows every module and kernel.",
            ]
            .map(String::from),
        );
        let spent = news
            .failed
            .iter()
            .all(|f| f.retry.is_some_and(|n| n >= MAX_RETRIES));
        body.push(if spent {
            format!("{RETRY_UNIT} will not try again: its {MAX_RETRIES} retries are spent.")
        } else {
            format!("Until then {RETRY_UNIT} tries again once a day, {MAX_RETRIES} times at most, and mails the result.")
        });
    }
    let mut text = format!(
        "To: {}\nSubject: {}\nAuto-Submitted: auto-generated\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n",
        one_header_line(to),
        subject(host, news)
    );
    for l in body {
        // RFC 5322 lines end before 998 bytes; control characters escaped.
        let l = printable(&l);
        let cut = (0..=l.len().min(990))
            .rev()
            .find(|i| l.is_char_boundary(*i))
            .unwrap_or(0);
        text.push_str(&l[..cut]);
        text.push('\n');
    }
    text
}

/// The last lines of a kept make.log: a path under the state directory
/// only (the failure list is input), each level entered and the file
/// opened without following links (a kept log is at most 16 MB).
fn tail(state: &State, log: &str) -> Option<Vec<String>> {
    let rel = Path::new(log).strip_prefix(STATE_DIR).ok()?;
    let names: Vec<&str> = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => n.to_str(),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let (file, dirs) = names.split_last()?;
    if !file.ends_with(".make.log") {
        return None;
    }
    let mut dir = state.open_existing()?;
    for d in dirs {
        dir = dir.existing_subdir(d)?;
    }
    let bytes = dir.read_only(file, CAP_STATE).ok()??;
    let from = bytes.len().saturating_sub(TAIL_BYTES);
    let text = String::from_utf8_lossy(&bytes[from..]);
    let mut lines: Vec<&str> = text.lines().collect();
    if from > 0 && !lines.is_empty() {
        lines.remove(0); // cut in the middle
    }
    let start = lines.len().saturating_sub(TAIL_LINES);
    Some(
        lines[start..]
            .iter()
            .map(|l| printable(l).chars().take(LINE_MAX).collect())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_config_shell_values_are_unquoted() {
        assert_eq!(
            shell_value("MAIL='root'\n", "MAIL").as_deref(),
            Some("root")
        );
        assert_eq!(
            shell_value("MAIL='ro'\\''ot x'", "MAIL").as_deref(),
            Some("ro'ot x")
        );
        assert_eq!(shell_value("MAIL=''", "MAIL").as_deref(), Some(""));
        for bad in ["MAIL='open", "OTHER='x'", "MAIL=x", "MAIL='a'; rm"] {
            assert_eq!(shell_value(bad, "MAIL"), None, "{bad}");
        }
    }

    /// Under `--root` the real programs would act on the host: only a
    /// named stand-in runs.
    #[test]
    fn under_root_only_stand_ins_run() {
        let dir = tempfile::tempdir().unwrap();
        let jail = Root::new(dir.path());
        let stand_in = OsString::from("/bin/true");
        assert_eq!(program(&jail, None, SENDMAIL), None);
        assert_eq!(
            program(&jail, Some(&stand_in), SENDMAIL),
            Some(stand_in.clone())
        );
        assert_eq!(
            program(&Root::new("/"), None, SENDMAIL),
            Some(SENDMAIL.into())
        );
    }

    /// The failure list is input: a make.log path it names outside the
    /// state directory's logs is never read into a mail.
    #[test]
    fn only_kept_make_logs_are_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::new(&Root::new(dir.path()));
        let logs = dir.path().join("var/lib/dkms-hook/logs");
        std::fs::create_dir_all(&logs).unwrap();
        let mut text: String = (0..5000).map(|i| format!("line {i}\n")).collect();
        text.push_str("last \u{1b}[31mred\n");
        std::fs::write(logs.join("m-1-k.make.log"), &text).unwrap();
        std::fs::write(dir.path().join("secret.make.log"), "secret\n").unwrap();
        std::os::unix::fs::symlink("../../../../secret.make.log", logs.join("l.make.log")).unwrap();
        let got = tail(&state, "/var/lib/dkms-hook/logs/m-1-k.make.log").unwrap();
        assert_eq!(got.len(), TAIL_LINES);
        assert_eq!(got[TAIL_LINES - 2], "line 4999");
        assert!(!got[TAIL_LINES - 1].contains('\u{1b}'), "{got:?}");
        for hostile in [
            "/secret.make.log",
            "/var/lib/dkms-hook/../../../secret.make.log",
            "/var/lib/dkms-hook/logs/l.make.log",
            "/var/lib/dkms-hook/logs/m-1-k.make.log.x",
        ] {
            assert_eq!(tail(&state, hostile), None, "{hostile}");
        }
    }

    fn failed(line: &str) -> Failed {
        Failed {
            line: line.into(),
            make_log: None,
            again: false,
            retry: None,
        }
    }

    #[test]
    fn the_subject_says_failed_with_host_pair_and_kernel() {
        let mut news = News {
            failed: vec![failed(
                "FAILED to rebuild acpi-call/1.2.2 for 6.1.0-50-amd64 (linux-kbuild-6.1 6.1.176-1 → 6.1.192-2): dkms build failed",
            )],
            fixed: vec![],
        };
        assert_eq!(
            subject("srv1", &news),
            "FAILED: dkms-hook on srv1 could not rebuild acpi-call/1.2.2 for 6.1.0-50-amd64"
        );
        news.failed.push(Failed {
            again: true,
            retry: Some(2),
            ..failed("FAILED to rebuild bbswitch/0.8 for 6.1.0-50-amd64 (x)")
        });
        news.failed[0].again = true;
        news.failed[0].retry = Some(2);
        assert_eq!(
            subject("srv1", &news),
            "FAILED again: dkms-hook on srv1 could not rebuild acpi-call/1.2.2 for 6.1.0-50-amd64 and 1 more (scheduled retry 2 of 3)"
        );
        let fixed = News {
            failed: vec![],
            fixed: vec!["rebuilt acpi-call/1.2.2 for 6.1.0-50-amd64 (x) in 1.0 s".into()],
        };
        assert_eq!(
            subject("srv1", &fixed),
            "rebuilt now: dkms-hook on srv1 rebuilt acpi-call/1.2.2 for 6.1.0-50-amd64, which had failed"
        );
        // A header cannot be split by what a name carries.
        assert_eq!(one_header_line("a\nBcc: x\u{e9}"), "a?Bcc: x?");
    }
}
