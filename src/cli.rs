//! Command-line interface: the clap definitions (also the source of the man
//! page) and the dispatch to the library. This is the one place that prints
//! and turns errors into exit codes.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::change::ChangeSet;
use crate::config::Config;
use crate::inventory::Inventory;
use crate::report::{self, PREFIX};
use crate::root::Root;
use crate::{dpkg_log, plan};

/// Exit status of usage errors and unreadable input.
pub const EXIT_USAGE: i32 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "dkms-hook",
    version,
    about = "Rebuild DKMS modules when a kernel's build tree changes in place",
    long_about = "dkms-hook closes Debian bug #1040401: dkms rebuilds out-of-tree modules only when a new kernel \
or headers package appears, not when linux-kbuild-X.Y, a linux-headers-*-common or a kernel's headers are \
upgraded in place with the same release string. dkms-hook reads what dpkg changed, finds every installed \
kernel whose build tree those packages feed, and rebuilds each dkms module built before the change."
)]
pub struct Cli {
    /// Operate on the system below DIR instead of / (absolute symlinks resolve inside it).
    #[arg(long, global = true, value_name = "DIR", env = "DKMS_HOOK_ROOT")]
    pub root: Option<PathBuf>,
    /// Print debug messages (or set DKMS_HOOK_LOG, env_logger syntax).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Plan (and with issue-3's executor, perform) rebuilds for the changes in dpkg logs.
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Only show what would be rebuilt.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
    /// dpkg.log files (plain or .gz, any order) or apt history.log files.
    #[arg(required = true, value_name = "LOG")]
    pub logs: Vec<PathBuf>,
}

fn init_logging(verbose: bool) {
    let env =
        env_logger::Env::new().filter_or("DKMS_HOOK_LOG", if verbose { "debug" } else { "warn" });
    let _ = env_logger::Builder::from_env(env)
        .format(|buf, rec| {
            writeln!(
                buf,
                "{PREFIX} {}: {}",
                rec.level().as_str().to_lowercase(),
                rec.args()
            )
        })
        .try_init();
}

/// Parse arguments, run, and return the exit status.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { 0 };
        }
    };
    init_logging(cli.verbose);
    let root = Root::new(cli.root.clone().unwrap_or_else(|| PathBuf::from("/")));
    let result = match &cli.command {
        Command::Replay(a) => replay(&root, a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{PREFIX} {e:#}");
            EXIT_USAGE
        }
    }
}

fn load_config(root: &Root) -> Config {
    Config::load(root).unwrap_or_else(|e| {
        eprintln!("{PREFIX} {e}; using defaults");
        Config::default()
    })
}

fn replay(root: &Root, a: &ReplayArgs) -> anyhow::Result<i32> {
    if !a.dry_run {
        anyhow::bail!("replay without --dry-run needs the rebuild executor, which this version lacks; use --dry-run");
    }
    let mut set = ChangeSet::new();
    dpkg_log::read_files(&a.logs, &mut set).context("cannot replay")?;
    let changes = set.finish();
    let inv = Inventory::for_changes(root, &changes);
    let cfg = load_config(root);
    let mut p = plan::plan(&changes, &inv, &cfg);
    p.warnings.splice(0..0, inv.warnings.iter().cloned());
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", report::to_json_string(&report::plan_json(&p)))?;
    } else if p.is_empty() {
        writeln!(out, "{PREFIX} nothing to rebuild")?;
    } else {
        for l in report::plan_lines(&p, "would rebuild") {
            writeln!(out, "{l}")?;
        }
    }
    Ok(0)
}
