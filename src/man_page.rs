//! The documents generated from the clap definitions (handed in by `cli`):
//! the man page dkms-hook(8) and the shell completion scripts (`make
//! install` writes both).

use std::io::Write;

/// dkms-hook(8): clap_mangen's sections for the program, and one entry per
/// command in a COMMANDS section (clap_mangen would point to one page per
/// command, which we do not ship).
pub fn render(cmd: clap::Command, out: &mut dyn Write) -> std::io::Result<()> {
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
            esc(default)
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
    writeln!(out, ".SH SEE ALSO\ndkms(8), apt.conf(5), dpkg.cfg(5)")?;
    man.render_version_section(out)
}

/// The completion script for `shell`. clap_complete's bash script names
/// its case labels `dkms__subcmd__hook__…` where it sets `dkms__hook__…`
/// (a binary name with a dash), so no subcommand option would complete;
/// and it offers hidden commands. Both are mended here.
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
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "dkms-hook", &mut script);
    let script = String::from_utf8_lossy(&script);
    if shell != clap_complete::Shell::Bash {
        return out.write_all(script.as_bytes());
    }
    for line in script.lines() {
        let line = line.replace("dkms__subcmd__hook", "dkms__hook");
        let line = match line.split_once("opts=\"") {
            Some((indent, rest)) => {
                let words = rest.trim_end_matches('"');
                let kept: Vec<&str> = words
                    .split(' ')
                    .filter(|w| !hidden.iter().any(|h| h == w))
                    .collect();
                format!("{indent}opts=\"{}\"", kept.join(" "))
            }
            None => line,
        };
        writeln!(out, "{line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn man_page_documents_every_command_on_one_page() {
        let mut page = Vec::new();
        super::render(
            <crate::cli::Cli as clap::CommandFactory>::command(),
            &mut page,
        )
        .unwrap();
        let page = String::from_utf8(page).unwrap();
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

    /// The bash script is mended by two string rewrites; this pins what
    /// they rely on, so that a clap_complete that changes its output (or
    /// fixes the name mismatch) fails here rather than in a user's shell.
    #[test]
    fn the_bash_completion_mends_still_apply() {
        use clap::CommandFactory;
        let mut cmd = crate::cli::Cli::command();
        let mut raw = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, "dkms-hook", &mut raw);
        let raw = String::from_utf8(raw).unwrap();
        assert!(
            raw.contains("dkms__subcmd__hook"),
            "clap_complete no longer writes dkms__subcmd__hook: drop the rewrite"
        );
        assert!(raw
            .lines()
            .any(|l| l.contains("opts=\"") && l.contains(" man ")));
        let mut ours = Vec::new();
        super::completions(
            crate::cli::Cli::command(),
            clap_complete::Shell::Bash,
            &mut ours,
        )
        .unwrap();
        let ours = String::from_utf8(ours).unwrap();
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
}
