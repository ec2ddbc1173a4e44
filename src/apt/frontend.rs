//! The apt process a hook runs under: which one it is (pid and start time,
//! the key of one apt run) and what its command line asks for. Read from
//! the host's `/proc`; outside apt there is none.
//!
//! apt runs its hooks from different processes of one run: the JSON hooks
//! and `Pre-Install-Pkgs` from apt itself (fork, exec `sh -c`), but
//! `DPkg::Post-Invoke` from a forked child of apt that calls `system()`
//! (apt-pkg's `RunScripts`). That child is also named `apt`, so the run is
//! the outermost of the `apt` processes in a row, not the nearest; the
//! nearest is the one step ([`step`]) a hook invocation belongs to.
//!
//! unattended-upgrades is a python process named `unattended-upgr` (the
//! kernel keeps 15 bytes of `unattended-upgrade`); python-apt forks it for
//! each `cache.commit()` (`InstallProgress.run`) and apt-pkg runs the hooks
//! from that fork, so its run, too, is the outermost of its name in a row.

/// Frontends whose hooks we may serve in one run.
const FRONTENDS: &[&str] = &["apt", "apt-get", "aptitude", UNATTENDED];
/// unattended-upgrades' process name (15 bytes of `unattended-upgrade`).
const UNATTENDED: &str = "unattended-upgr";

/// How far up the process tree to look (hook → sh → apt child → apt).
const MAX_DEPTH: usize = 16;

/// What one `/proc/PID/stat` says about its process.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stat {
    comm: String,
    ppid: u32,
    start: u64,
}

/// Parse `/proc/PID/stat`: "pid (comm) state ppid … starttime(22nd)";
/// comm may hold spaces and parentheses, so it ends at the last `)`.
fn parse_stat(stat: &str) -> Option<Stat> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    Some(Stat {
        comm,
        ppid: fields.get(1)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// The apt run above `pid` (its pid and stat), with `stat` reading a
/// process's `/proc/PID/stat`: the first frontend process going up, then
/// up through its parents as long as they are the same frontend (forks of
/// it).
fn run_stat_of(pid: u32, stat: impl Fn(u32) -> Option<String>) -> Option<(u32, Stat)> {
    let mut pid = pid;
    let mut found: Option<(u32, Stat)> = None;
    for _ in 0..MAX_DEPTH {
        let Some(s) = stat(pid).as_deref().and_then(parse_stat) else {
            break;
        };
        match &found {
            Some((_, f)) if s.comm != f.comm => break,
            Some(_) => found = Some((pid, s.clone())),
            None if FRONTENDS.contains(&s.comm.as_str()) => found = Some((pid, s.clone())),
            None => {}
        }
        if s.ppid <= 1 {
            break;
        }
        pid = s.ppid;
    }
    found
}

/// The (pid, start time) of the apt run above `pid` ([`run_stat_of`]).
fn run_of(pid: u32, stat: impl Fn(u32) -> Option<String>) -> Option<(u32, u64)> {
    run_stat_of(pid, stat).map(|(pid, s)| (pid, s.start))
}

/// The (pid, start time) of the nearest frontend process above `pid`: the
/// one that ran this hook's entry of its list (see [`step`]).
fn step_of(pid: u32, stat: impl Fn(u32) -> Option<String>) -> Option<(u32, u64)> {
    let mut pid = pid;
    for _ in 0..MAX_DEPTH {
        let s = stat(pid).as_deref().and_then(parse_stat)?;
        if FRONTENDS.contains(&s.comm.as_str()) {
            return Some((pid, s.start));
        }
        if s.ppid <= 1 {
            return None;
        }
        pid = s.ppid;
    }
    None
}

fn proc_stat(pid: u32) -> Option<String> {
    crate::root::read_regular(
        std::path::Path::new(&format!("/proc/{pid}/stat")),
        crate::root::CAP_SMALL,
    )
    .ok()
    .map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// (pid, start time) of the apt run this process belongs to; `None`
/// outside apt.
pub fn run() -> Option<(u32, u64)> {
    run_of(std::process::id(), proc_stat)
}

/// (pid, start time) of the unattended-upgrades run this process belongs
/// to; `None` outside one (under apt, apt-get or aptitude too).
pub fn unattended_run() -> Option<(u32, u64)> {
    run_stat_of(std::process::id(), proc_stat)
        .filter(|(_, s)| s.comm == UNATTENDED)
        .map(|(pid, s)| (pid, s.start))
}

/// The (pid, start time) in the name of a record `PREFIX-PID-START` kept in
/// `/run/dkms-hook` for a process (both decimal, no sign); `None` for any
/// other name.
pub fn key_of_record(name: &str, prefix: &str) -> Option<(u32, u64)> {
    let (pid, start) = name
        .strip_prefix(prefix)?
        .strip_prefix('-')?
        .split_once('-')?;
    if !(pid.bytes().chain(start.bytes())).all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((pid.parse().ok()?, start.parse().ok()?))
}

/// Remove from `d` the records `PREFIX-PID-START` whose process no longer
/// runs, except those `keep` names (by record name).
pub fn tidy_records(d: &crate::state_dir::Dir, prefix: &str, keep: impl Fn(&str) -> bool) {
    for n in d.names() {
        if key_of_record(&n, prefix).is_some_and(|(pid, start)| !still_runs(pid, start))
            && !keep(&n)
        {
            d.remove(&n);
        }
    }
}

/// Whether the process `pid` that started at `start` still runs (a
/// recycled pid has another start time). A zombie has ended its work.
pub fn still_runs(pid: u32, start: u64) -> bool {
    proc_stat(pid).is_some_and(|t| {
        parse_stat(&t).is_some_and(|s| s.start == start)
            && !t
                .get(t.rfind(')').unwrap_or(0)..)
                .is_some_and(|rest| rest.starts_with(") Z"))
    })
}

/// Whether process `pid` started at `start` runs and is dkms-hook's
/// `COMMAND` (its command line has that word): a pid in a record is
/// believed only so far.
pub fn runs_command(pid: u32, start: u64, command: &str) -> bool {
    still_runs(pid, start)
        && crate::root::read_regular(
            std::path::Path::new(&format!("/proc/{pid}/cmdline")),
            crate::root::CAP_SMALL,
        )
        .is_ok_and(|b| b.split(|&c| c == 0).any(|w| w == command.as_bytes()))
}

/// The start time of process `pid` (clock ticks after boot, as `/proc`
/// says it), which with the pid names it across pid reuse.
pub fn start_of(pid: u32) -> Option<u64> {
    Some(parse_stat(&proc_stat(pid)?)?.start)
}

/// (pid, start time) of the frontend process that runs this hook's entry
/// of an apt hook list; `None` outside apt. apt-pkg runs every entry of
/// `DPkg::Pre-Install-Pkgs` from the process that runs dpkg (fork, exec
/// `sh -c`), and every entry of `DPkg::Post-Invoke` from one forked child
/// that calls `system()` for each (`RunScripts`): two entries of one list
/// for one dpkg run share it.
pub fn step() -> Option<(u32, u64)> {
    step_of(std::process::id(), proc_stat)
}

/// Whether the apt run's command line asks for reinstalls (`--reinstall`,
/// or apt's `reinstall` command). apt's JSON hooks do not list a reinstall
/// among the packages (it keeps apt's "keep" mode), so the hook learns of it
/// here.
pub fn asks_reinstall() -> bool {
    let Some((pid, _)) = run() else {
        return false;
    };
    crate::root::read_regular(
        std::path::Path::new(&format!("/proc/{pid}/cmdline")),
        crate::root::CAP_SMALL,
    )
    .is_ok_and(|b| cmdline_asks_reinstall(&b))
}

/// `/proc/PID/cmdline` (NUL-separated) of apt asks for reinstalls: the
/// option `--reinstall` anywhere, or `reinstall` as the command (the
/// first word after the program that is not an option).
fn cmdline_asks_reinstall(cmdline: &[u8]) -> bool {
    let mut words = cmdline.split(|&b| b == 0).skip(1);
    let mut command_seen = false;
    let mut takes_value = false;
    for w in words.by_ref() {
        if w == b"--reinstall" {
            return true;
        }
        if takes_value {
            takes_value = false;
            continue;
        }
        // apt's options with a separate value (-o X=Y, -c FILE, -t REL).
        if matches!(w, b"-o" | b"-c" | b"-t" | b"--option" | b"--config-file") {
            takes_value = true;
            continue;
        }
        if !command_seen && !w.starts_with(b"-") && !w.is_empty() {
            command_seen = true;
            if w == b"reinstall" {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A process table: pid → (comm, ppid, start time).
    fn table(rows: &[(u32, &str, u32, u64)]) -> impl Fn(u32) -> Option<String> {
        let map: HashMap<u32, String> = rows
            .iter()
            .map(|&(pid, comm, ppid, start)| {
                let mut fields = vec!["S".to_string(), ppid.to_string()];
                fields.extend((0..17).map(|i| i.to_string()));
                fields.push(start.to_string());
                fields.push("0".into());
                (pid, format!("{pid} ({comm}) {}", fields.join(" ")))
            })
            .collect();
        move |pid| map.get(&pid).cloned()
    }

    #[test]
    fn stat_lines_parse_with_odd_names() {
        let s =
            parse_stat("42 (a b) c)) S 7 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 999 0").unwrap();
        assert_eq!((s.comm.as_str(), s.ppid, s.start), ("a b) c)", 7, 999));
        assert_eq!(parse_stat("42 (x) S"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    /// Regression: apt runs DPkg::Post-Invoke from a forked
    /// child of itself, also named apt: the run is the outer apt, the one
    /// that ran the JSON hook and Pre-Install-Pkgs.
    #[test]
    fn post_invoke_under_apts_forked_child_belongs_to_the_same_run() {
        let procs = table(&[
            (1, "systemd", 0, 1),
            (100, "bash", 1, 50),
            (200, "apt", 100, 60),
            // JSON hook, Pre-Install-Pkgs: sh -c from apt itself.
            (300, "sh", 200, 70),
            (301, "dkms-hook", 300, 71),
            // Post-Invoke: apt's fork, system(), sh -c.
            (400, "apt", 200, 80),
            (401, "sh", 400, 81),
            (402, "dkms-hook", 401, 82),
        ]);
        assert_eq!(run_of(301, &procs), Some((200, 60)));
        assert_eq!(run_of(402, &procs), Some((200, 60)));
    }

    /// Regression (hooks twice under unattended-upgrades): python-apt's
    /// `apt.Cache(rootdir="/")` appends every hook list entry again, so
    /// apt-pkg runs each entry twice per dpkg run. unattended-upgrades is
    /// one run; each `cache.commit()` forks a step, Post-Invoke forks once
    /// more; both copies of an entry share their step.
    #[test]
    fn unattended_upgrades_is_one_run_and_each_dpkg_run_a_step() {
        let procs = table(&[
            (1, "systemd", 0, 1),
            (90, "apt.systemd.dai", 1, 40),
            (100, "unattended-upgr", 90, 50),
            // cache.commit(): InstallProgress.run forks; Pre-Install-Pkgs
            // twice from it, then Post-Invoke's fork with system() twice.
            (200, "unattended-upgr", 100, 60),
            (210, "sh", 200, 61),
            (211, "dkms-hook", 210, 62),
            (220, "sh", 200, 63),
            (221, "dkms-hook", 220, 64),
            (230, "unattended-upgr", 200, 65),
            (231, "sh", 230, 66),
            (232, "dkms-hook", 231, 67),
            (233, "sh", 230, 68),
            (234, "dkms-hook", 233, 69),
            // The next minimal step: a new fork.
            (300, "unattended-upgr", 100, 70),
            (310, "sh", 300, 71),
            (311, "dkms-hook", 310, 72),
        ]);
        for hook in [211, 221, 232, 234, 311] {
            assert_eq!(run_of(hook, &procs), Some((100, 50)), "{hook}");
        }
        assert_eq!(step_of(211, &procs), Some((200, 60)));
        assert_eq!(step_of(221, &procs), Some((200, 60)));
        assert_eq!(step_of(232, &procs), Some((230, 65)));
        assert_eq!(step_of(234, &procs), Some((230, 65)));
        assert_eq!(step_of(311, &procs), Some((300, 70)));
        assert_eq!(step_of(90, &procs), None);
    }

    #[test]
    fn no_frontend_no_run_and_another_frontend_is_another_run() {
        let procs = table(&[
            (1, "systemd", 0, 1),
            (100, "bash", 1, 50),
            (101, "dkms-hook", 100, 51),
            // apt-get run from an apt hook: the inner run is its own.
            (200, "apt", 100, 60),
            (201, "apt-get", 200, 61),
            (202, "sh", 201, 62),
            (203, "dkms-hook", 202, 63),
        ]);
        assert_eq!(run_of(101, &procs), None);
        assert_eq!(run_of(203, &procs), Some((201, 61)));
        // A process table that loops ends at MAX_DEPTH.
        let looped = table(&[(5, "apt", 6, 1), (6, "apt", 5, 2)]);
        assert!(run_of(5, &looped).is_some());
    }

    #[test]
    fn reinstall_is_read_from_apts_command_line() {
        let yes: &[&[u8]] = &[
            b"apt\0install\0--reinstall\0linux-kbuild-6.1\0",
            b"apt-get\0--reinstall\0install\0linux-kbuild-6.1\0",
            b"apt\0reinstall\0linux-kbuild-6.1\0",
            b"apt\0-o\0Debug::X=1\0reinstall\0p\0",
        ];
        for c in yes {
            assert!(cmdline_asks_reinstall(c), "{}", String::from_utf8_lossy(c));
        }
        let no: &[&[u8]] = &[
            b"apt\0install\0linux-kbuild-6.1\0",
            b"apt\0install\0reinstall\0",
            b"apt\0-o\0reinstall\0install\0x\0",
            b"",
            b"\0\0\0",
        ];
        for c in no {
            assert!(!cmdline_asks_reinstall(c), "{}", String::from_utf8_lossy(c));
        }
    }
}
