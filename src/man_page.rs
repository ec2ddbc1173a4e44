//! The documents generated from the clap definitions and `status`'s exit
//! statuses (both handed in by `cli`, which is above this module) and from
//! the model's states: the man page dkms-hook(8) and the shell completion
//! scripts (`make install` writes both).

use std::io::Write;

use crate::model::PairState;

/// The promises of the SAFETY section, each with the tests that attack it
/// (SECURITY.md has them all).
const SAFETY: &[&str] = &[
    "A working module is never lost. dkms build --force deletes the working build before it starts: dkms-hook runs it only after the pair's dkms directory and every installed module file are backed up, and a build that fails puts both back, byte-identical, so that dkms status says installed again (tests: rebuild::a_failed_build_keeps_the_working_module, rebuild::sigkill_at_50_points_loses_nothing_and_installs_nothing_twice, tests/e2e/run.sh).",
    "dkms 3.1.6 and later (Debian 13) remove every module of a kernel (dkms kernel_preinst, from /etc/kernel/preinst.d/dkms) before its image is upgraded or reinstalled in place, and build them again afterwards; a module that no longer builds would be gone and apt would exit 100. The guard, /etc/kernel/preinst.d/00-dkms-hook-guard and postinst.d/00-dkms-hook-guard, runs before dkms's hooks: it saves each built module of the kernel first and puts it back before dkms autoinstall, which then finds it installed; the kernel package configures and apt exits 0. A run killed in between is finished by the next run or at boot. With dkms 3.0.10 (Debian 12) it does nothing (tests: guard::the_guard_keeps_the_module_through_an_in_place_reinstall, guard::a_run_killed_between_preinst_and_postinst_is_finished_later, guard::a_planted_guard_record_is_checked_and_bounded, tests/e2e/run-trixie.sh scenario 6).",
    "The build a rebuild replaced is kept (one per module, version and kernel; keep_previous). dkms-hook rollback MODULE/VERSION KERNEL puts it back, dkms tree and installed files, after checking it: complete, no links, each installed copy identical to its build and below /lib/modules/KERNEL, and its vermagic that of the kernel's own modules (with only the kernel's headers installed, of the current build); otherwise, or when another version of the module is installed for the kernel, it refuses in one line and changes nothing. The pair is then held: sync, retry and the hooks leave it alone until dkms-hook unhold. The build it replaced becomes the previous one. A rollback killed anywhere loses neither build and is finished by running it again (tests: rollback::a_rollback_killed_anywhere_loses_nothing_and_is_finished_by_running_it_again, rollback::a_planted_or_corrupt_previous_build_is_not_used, rollback::rollback_refuses_a_previous_build_of_another_kernel_abi).",
    "The hooks never make apt, dpkg or run-parts fail, and everything dkms-hook reads, its own state included, is untrusted input. SECURITY.md in the source states each promise with the tests that attack it.",
];

/// dkms-hook(8): clap_mangen's sections for the program, one entry per
/// command in a COMMANDS section (clap_mangen would point to one page per
/// command, which we do not ship), and a STATUS section with every state
/// and `status_exits` (exit status, when).
pub fn render(
    cmd: clap::Command,
    status_exits: &[(i32, &str)],
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let esc = |t: &str| {
        t.replace('\\', "\\e")
            .replace('-', "\\-")
            .replace("\n.", "\n\\&.")
    };
    let man = clap_mangen::Man::new(cmd.clone()).section("8");
    man.render_title(out)?;
    man.render_name_section(out)?;
    // clap_mangen's synopsis shows `[--root]` without its value.
    writeln!(
        out,
        ".SH SYNOPSIS\n\\fBdkms\\-hook\\fR [\\fB\\-\\-root\\fR \\fIDIR\\fR] [\\fB\\-v\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR] [\\fIARGS\\fR]"
    )?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    writeln!(out, ".SH COMMANDS")?;
    for sub in cmd.get_subcommands().filter(|c| !c.is_hide_set()) {
        let mut sub = sub
            .clone()
            .bin_name(format!("dkms-hook {}", sub.get_name()));
        let usage = sub.render_usage().to_string();
        writeln!(out, ".TP\n.B {}", esc(usage.trim_start_matches("Usage: ")))?;
        let about = sub
            .get_long_about()
            .or(sub.get_about())
            .map(|a| a.to_string())
            .unwrap_or_default();
        writeln!(out, "{}", esc(&about))?;
        for arg in sub.get_arguments().filter(|a| {
            !a.is_hide_set()
                && a.get_id() != "help"
                && a.get_id() != "root"
                && a.get_id() != "verbose"
        }) {
            let name = match arg.get_long() {
                Some(l) => format!("--{l}"),
                None => arg
                    .get_value_names()
                    .and_then(|v| v.first())
                    .map_or(arg.get_id().to_string(), |v| v.to_string()),
            };
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            writeln!(out, ".RS\n.TP\n.B {}\n{}\n.RE", esc(&name), esc(&help))?;
        }
    }
    status_section(out, status_exits, &esc)?;
    writeln!(out, ".SH CONFIGURATION")?;
    writeln!(
        out,
        "{}",
        esc(&format!(
            "{} holds key=value lines; # starts a comment. Every key is listed there, commented out at its default. A bad line is reported (file:line) and ignored; the other keys still apply.",
            crate::config::CONFIG_FILE
        ))
    )?;
    for (key, default, doc) in crate::config::KEYS {
        writeln!(
            out,
            ".TP\n.B {}\n{} Default: {}.",
            esc(key),
            esc(doc),
            if default.is_empty() {
                "empty".into()
            } else {
                esc(default)
            }
        )?;
    }
    if let Some(after) = cmd.get_after_long_help() {
        for block in after.to_string().split("\n\n") {
            let mut lines = block.lines();
            let title = lines
                .next()
                .unwrap_or_default()
                .trim_end_matches(':')
                .to_uppercase();
            writeln!(out, ".SH {}", esc(&title))?;
            for l in lines {
                writeln!(out, ".br\n{}", esc(l.trim()))?;
            }
        }
    }
    // Left-aligned: the long test names cannot be spread over a justified
    // line (groff warns, and lintian with it), nor hyphenated.
    writeln!(out, ".SH SAFETY\n.ad l\n.nh")?;
    for p in SAFETY {
        writeln!(out, ".PP\n{}", esc(p))?;
    }
    writeln!(out, ".ad b\n.hy")?;
    writeln!(out, ".SH SEE ALSO\ndkms(8), apt.conf(5), dpkg.cfg(5)")?;
    man.render_version_section(out)
}

/// What each state of `status` means (a new state does not compile until
/// it is told here).
fn meaning(s: PairState) -> &'static str {
    match s {
        PairState::Fresh => "built after every change to the kernel's input packages.",
        PairState::Stale => "an input package of the kernel was unpacked after the module was built (dpkg rewrites a package's file list when it unpacks it); dkms-hook sync rebuilds it.",
        PairState::Failed => "the last rebuild failed; the row names the kept make.log, and dkms-hook retry rebuilds it once the cause is fixed.",
        PairState::Missing => "the module is installed for other kernels but not for this one.",
        PairState::NoHeaders => "the kernel's headers (or its config) are gone.",
        PairState::Excluded => "dkms would not build the module for this kernel: its dkms.conf, evaluated as the installed dkms evaluates it, excludes it (BUILD_EXCLUSIVE_*, OBSOLETE_BY).",
        PairState::Undecided => "not built, and whether dkms would build it cannot be told: under --root, a dkms.conf that is more than plain assignments, or one whose evaluation failed.",
        PairState::Broken => "the installed module's vermagic names another kernel: it will not load.",
        PairState::Held => "put back to its previous build by dkms-hook rollback, and left alone by sync, retry and the hooks until dkms-hook unhold (or until another version of the module is installed).",
    }
}

/// STATUS: every state of `status` ([`PairState::ALL`]) and its exit
/// statuses.
fn status_section(
    out: &mut dyn Write,
    status_exits: &[(i32, &str)],
    esc: &dyn Fn(&str) -> String,
) -> std::io::Result<()> {
    writeln!(out, ".SH STATUS")?;
    writeln!(
        out,
        "{}",
        esc("dkms-hook status shows one row per installed kernel × dkms module, in one of these states:")
    )?;
    for s in PairState::ALL {
        let attention = if s.needs_attention() {
            " Needs attention."
        } else {
            ""
        };
        writeln!(
            out,
            ".TP\n.B {}\n{}{attention}",
            esc(s.name()),
            esc(meaning(s))
        )?;
    }
    writeln!(out, ".PP\nExit status of \\fBstatus\\fR:")?;
    for (code, when) in status_exits {
        writeln!(out, ".TP\n.B {code}\n{}", esc(when))?;
    }
    Ok(())
}

/// The completion script for `shell`.
///
/// For bash, two things are mended. clap_complete 4.6 names the states of
/// its dispatch loop after the function (`dkms__hook__subcmd__replay`) but
/// builds its case arms from each subcommand's bin name with every `-`
/// escaped as `__subcmd__` (`dkms__subcmd__hook__subcmd__replay`), so no
/// subcommand option would complete (clap-rs/clap#6421): then the
/// subcommands' bin names are set spelled like the function, and both
/// agree (4.5, Debian 13's, writes agreeing names and would fail on such
/// bin names, so its script is taken as it is). And it offers hidden
/// commands: they are taken out of its `opts` lines. The result is checked
/// ([`bash_dead_states`]) before it is written.
pub fn completions(
    mut cmd: clap::Command,
    shell: clap_complete::Shell,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let hidden: Vec<String> = cmd
        .get_subcommands()
        .filter(|c| c.is_hide_set())
        .map(|c| c.get_name().to_string())
        .collect();
    if shell != clap_complete::Shell::Bash {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, BIN, &mut script);
        return out.write_all(&script);
    }
    let mut mended = bash_without(cmd.clone(), &hidden);
    if !bash_dead_states(&mended).is_empty() {
        // Built first, so that clap's `help` subcommand is there too.
        cmd.build();
        mended = bash_without(bash_bin_names(cmd, &BIN.replace('-', "__")), &hidden);
    }
    let dead = bash_dead_states(&mended);
    if !dead.is_empty() {
        return Err(std::io::Error::other(format!(
            "clap_complete's bash script no longer matches what dkms-hook mends: no case arm for {}",
            dead.join(", ")
        )));
    }
    out.write_all(mended.as_bytes())
}

/// clap_complete's bash script for `cmd`, without the `hidden` commands in
/// its `opts` lines.
fn bash_without(mut cmd: clap::Command, hidden: &[String]) -> String {
    let mut script = Vec::new();
    clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, BIN, &mut script);
    let script = String::from_utf8_lossy(&script);
    let mut mended = String::new();
    for line in script.lines() {
        let line = match line.split_once("opts=\"") {
            Some((indent, rest)) => {
                let words = rest.trim_end_matches('"');
                let kept: Vec<&str> = words
                    .split(' ')
                    .filter(|w| !hidden.iter().any(|h| h == w))
                    .collect();
                format!("{indent}opts=\"{}\"", kept.join(" "))
            }
            None => line.to_string(),
        };
        mended.push_str(&line);
        mended.push('\n');
    }
    mended
}

/// `cmd` with each subcommand's bin name, all the way down, spelled from
/// `bin` as clap_complete spells its bash function (`dkms__hook replay`).
fn bash_bin_names(mut cmd: clap::Command, bin: &str) -> clap::Command {
    let names: Vec<String> = cmd
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    for n in names {
        let sub_bin = format!("{bin} {n}");
        cmd = cmd.mut_subcommand(&n, |c| bash_bin_names(c.bin_name(&sub_bin), &sub_bin));
    }
    cmd
}

/// The program's name, as completions know it.
const BIN: &str = "dkms-hook";

/// The states a clap_complete bash script's dispatch loop can set
/// (`cmd="…"`) that no arm of its second `case` handles: completing after
/// such a subcommand would offer nothing. Empty when the script is sound.
fn bash_dead_states(script: &str) -> Vec<String> {
    let top = BIN.replace('-', "__");
    let states: std::collections::BTreeSet<&str> = script
        .lines()
        .filter_map(|l| l.trim().strip_prefix("cmd=\"")?.strip_suffix('"'))
        .filter(|s| !s.is_empty())
        .collect();
    let arms: std::collections::BTreeSet<&str> = script
        .lines()
        .filter_map(|l| l.trim().strip_suffix(')'))
        .filter(|a| a.starts_with(&top) && !a.contains([' ', '"', '$']))
        .collect();
    let mut dead: Vec<String> = states.difference(&arms).map(|s| s.to_string()).collect();
    if states.is_empty() || !arms.contains(top.as_str()) {
        dead.push(format!("{top} (no dispatch loop or top-level arm found)"));
    }
    dead
}

#[cfg(test)]
mod tests {
    /// The bash completion as `make install` writes it.
    fn ours() -> String {
        use clap::CommandFactory;
        let mut ours = Vec::new();
        super::completions(
            crate::cli::Cli::command(),
            clap_complete::Shell::Bash,
            &mut ours,
        )
        .unwrap();
        String::from_utf8(ours).unwrap()
    }

    /// The page as `make install` writes it.
    fn page() -> String {
        let mut page = Vec::new();
        super::render(
            <crate::cli::Cli as clap::CommandFactory>::command(),
            crate::cli::args::STATUS_EXITS,
            &mut page,
        )
        .unwrap();
        String::from_utf8(page).unwrap()
    }

    #[test]
    fn man_page_documents_every_command_on_one_page() {
        let page = page();
        assert!(
            page.starts_with(".ie") || page.contains(".TH dkms-hook 8"),
            "{}",
            &page[..200]
        );
        for cmd in [
            "replay",
            "post\\-invoke",
            "status",
            "sync",
            "retry",
            "apt\\-json\\-hook",
            "pre\\-install\\-pkgs",
            "kernel\\-hook",
        ] {
            assert!(
                page.contains(&format!(".B dkms\\-hook {cmd}")),
                "{cmd} missing"
            );
        }
        assert!(!page.contains("dkms-hook-replay(8)") && !page.contains("dkms\\-hook\\-replay(8)"));
        assert!(page.contains(".SH ENVIRONMENT") && page.contains("DKMS_HOOK_SUSPEND"));
        // Regression: configuration, --root's value, builds/.
        assert!(page.contains(".SH CONFIGURATION"));
        for (key, _, _) in crate::config::KEYS {
            assert!(
                page.contains(&format!(".B {}", key.replace('-', "\\-"))),
                "{key}"
            );
        }
        assert!(page.contains("\\fB\\-\\-root\\fR \\fIDIR\\fR"));
        assert!(page.contains("builds/"));
    }

    /// Every state of `status` has its entry in STATUS (the page is made
    /// from `PairState::ALL`, which a test of the model holds complete),
    /// and so has each of `status`'s exit statuses.
    #[test]
    fn man_page_lists_every_status_state_and_exit_status() {
        let page = page();
        let status = page
            .split(".SH STATUS\n")
            .nth(1)
            .and_then(|s| s.split("\n.SH ").next())
            .expect("a STATUS section");
        for s in crate::model::PairState::ALL {
            let entry = format!(".TP\n.B {}\n", s.name().replace('-', "\\-"));
            assert!(status.contains(&entry), "{} missing", s.name());
        }
        for code in [0, 1, 2] {
            assert!(
                status.contains(&format!(".TP\n.B {code}\n")),
                "exit status {code} missing"
            );
        }
        assert_eq!(
            crate::cli::args::STATUS_EXITS[1].0,
            crate::cli::args::EXIT_ATTENTION
        );
    }

    /// The bash script is mended twice (subcommand bin names, hidden
    /// commands out of `opts`); this pins what both rely on, so that a
    /// clap_complete that changes its output (or fixes the name mismatch)
    /// fails here rather than in a user's shell.
    #[test]
    fn the_bash_completion_mends_still_apply() {
        use clap::CommandFactory;
        let mut cmd = crate::cli::Cli::command();
        let mut raw = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "dkms-hook", &mut raw);
        let raw = String::from_utf8(raw).unwrap();
        // 4.6 writes the mismatch; 4.5 (Debian 13's) agrees with itself.
        assert!(
            raw.contains("dkms__subcmd__hook") || super::bash_dead_states(&raw).is_empty(),
            "clap_complete's script disagrees in a new way"
        );
        assert!(raw
            .lines()
            .any(|l| l.contains("opts=\"") && l.contains(" man ")));
        let ours = ours();
        assert!(!ours.contains("dkms__subcmd__hook"));
        for hidden in ["man", "completions", "init"] {
            assert!(
                !ours
                    .lines()
                    .filter(|l| l.contains("opts=\""))
                    .any(|l| l.split(['"', ' ']).any(|w| w == hidden)),
                "{hidden} offered"
            );
        }
    }

    /// The mended bash script has an arm for every state its loop can
    /// reach, and the checker that `completions` runs would see the
    /// mismatch in clap_complete's own script.
    #[test]
    fn the_bash_completion_reaches_every_subcommand() {
        use clap::CommandFactory;
        let ours = ours();
        assert_eq!(super::bash_dead_states(&ours), Vec::<String>::new());
        // How the version spells a step down: `__subcmd__` (4.6), `__` (4.5).
        let sep = if ours.contains("cmd=\"dkms__hook__subcmd__") {
            "__subcmd__"
        } else {
            "__"
        };
        for sub in ["replay", "status", "post-invoke", "help sync"] {
            let state = format!("dkms__hook{sep}{}", sub.replace(['-', ' '], sep));
            assert!(ours.contains(&format!("cmd=\"{state}\"")), "{state}");
            assert!(ours.contains(&format!("\n        {state})\n")), "{state}");
        }
        // The top-level arm offers the commands, and so the hidden ones
        // were taken out of a line that is there.
        let top = ours
            .split("\n        dkms__hook)\n")
            .nth(1)
            .and_then(|a| a.lines().find(|l| l.contains("opts=\"")))
            .expect("the top-level arm's opts");
        assert!(
            top.contains(" replay ") && top.contains(" status "),
            "{top}"
        );
        for hidden in ["man", "completions", "init", "preflight-sandbox"] {
            assert!(!top.split(['"', ' ']).any(|w| w == hidden), "{hidden}");
        }

        let mut raw = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut crate::cli::Cli::command(),
            "dkms-hook",
            &mut raw,
        );
        let dead = super::bash_dead_states(&String::from_utf8(raw).unwrap());
        if sep == "__subcmd__" {
            assert!(
                dead.contains(&"dkms__hook__subcmd__replay".to_string()),
                "{dead:?}"
            );
        } else {
            assert_eq!(dead, Vec::<String>::new());
        }
        // Whatever the version: an arm gone is seen.
        let replay = format!("dkms__hook{sep}replay");
        let broken = ours.replace(&format!("\n        {replay})\n"), "\n        elsewhere)\n");
        assert_eq!(super::bash_dead_states(&broken), [replay]);
        assert_eq!(
            super::bash_dead_states("no script"),
            ["dkms__hook (no dispatch loop or top-level arm found)"]
        );
    }
}
