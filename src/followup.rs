//! What follows a failed rebuild on a machine nobody watches (servers
//! upgraded each night by unattended-upgrades, whose own mail says
//! SUCCESS since the hooks exit 0): after each run, one mail about the
//! failures not mailed yet, about a scheduled retry's result and about
//! mailed failures that built since; and the scheduled retry
//! (`dkms-hook retry --scheduled`, from dkms-hook-retry.timer), a bounded
//! number of attempts per failure. Both are recorded in `followup.json`,
//! one entry per failure (pair and the changes that made it stale), so the
//! same failure is mailed once and retried at most [`MAX_RETRIES`] times.

pub mod mail;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::model::Cause;
use crate::pair::PairId;
use crate::rebuild::{Outcome, PairResult};
use crate::report;
use crate::state::{Entry, Failure, State, STATE_VERSION};
use crate::tools::Tools;
use crate::Error;

/// The record of what was mailed and retried, in the state directory.
pub const FOLLOWUP: &str = "followup.json";
/// Scheduled retries of one failure; then the timer leaves it alone.
pub const MAX_RETRIES: u32 = 3;
/// The unit whose timer runs the scheduled retry.
pub const RETRY_UNIT: &str = "dkms-hook-retry.timer";

/// One failure followed up: a pair and the changes its failed rebuild was
/// for (a new upgrade that fails again is a new failure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Followed {
    #[serde(flatten)]
    pub id: PairId,
    pub because: Vec<Cause>,
    /// The failure was mailed (so its end is mailed too).
    pub mailed: bool,
    /// Scheduled retries made for it.
    pub retries: u32,
    /// When it was first seen.
    pub time: u64,
}

impl Entry for Followed {
    fn times(&self) -> [u64; 1] {
        [self.time]
    }

    fn check(&self) -> Result<(), String> {
        if self.retries > MAX_RETRIES {
            return Err(format!("more than {MAX_RETRIES} retries"));
        }
        Ok(())
    }
}

impl Followed {
    fn of(f: &Failure) -> Followed {
        Followed {
            id: f.id.clone(),
            because: f.because.clone(),
            mailed: false,
            retries: 0,
            time: f.time,
        }
    }

    fn follows(&self, f: &Failure) -> bool {
        self.id == f.id && self.because == f.because
    }
}

/// The run whose results are followed up.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    /// `post-invoke`, `boot`, `sync`, `retry`, `replay`.
    pub name: &'a str,
    /// The timer's retry: each result is mailed, a failure again too.
    pub scheduled: bool,
}

/// What [`after_run`] did, for the command line to say.
#[derive(Debug, Default)]
pub struct Done {
    /// `mailed N line(s) to ADDR`, for the log.
    pub mailed: Option<String>,
    /// One line each: a mail that could not be sent, an unusable address.
    pub warnings: Vec<String>,
}

fn load(state: &State) -> Result<Vec<Followed>, Error> {
    let path = state.dir().join(FOLLOWUP);
    Ok(state
        .read_list_value(FOLLOWUP)?
        .map(|v| crate::state::valid_entries(&v, "failures", &path))
        .unwrap_or_default())
}

fn save(state: &State, failures: &[Followed]) -> Result<(), Error> {
    #[derive(Serialize)]
    struct File<'a> {
        version: u32,
        failures: &'a [Followed],
    }
    state.write_json(
        FOLLOWUP,
        &File {
            version: STATE_VERSION,
            failures,
        },
    )
}

/// The entries of the failures recorded now: the earlier entry of each
/// where there is one, a new one otherwise (entries of failures that are
/// gone are dropped).
fn current(old: &[Followed], failed: &[Failure]) -> Vec<Followed> {
    failed
        .iter()
        .map(|f| {
            old.iter()
                .find(|e| e.follows(f))
                .cloned()
                .unwrap_or_else(|| Followed::of(f))
        })
        .collect()
}

/// The scheduled retry's choice, counted and saved before any work.
#[derive(Debug, Default)]
pub struct Scheduled {
    /// Retried now.
    pub due: Vec<PairId>,
    /// Not retried: its scheduled retries are spent.
    pub spent: Vec<PairId>,
}

/// Pick the failures the scheduled retry tries now and count the attempt
/// (saved first, so a killed retry still counts). Call with the lock held.
pub fn schedule(state: &State) -> Result<Scheduled, Error> {
    let failed = state.failures()?.failed;
    let mut list = current(&load(state)?, &failed);
    let mut s = Scheduled::default();
    for e in &mut list {
        if e.retries >= MAX_RETRIES {
            s.spent.push(e.id.clone());
        } else {
            e.retries += 1;
            s.due.push(e.id.clone());
        }
    }
    if !s.due.is_empty() {
        save(state, &list)?;
    }
    Ok(s)
}

/// The line a scheduled retry says of a failure it leaves alone.
pub fn spent_line(id: &PairId) -> String {
    format!(
        "not retrying {id}: its {MAX_RETRIES} scheduled retries failed; run dkms-hook retry once the cause is fixed"
    )
}

/// After a run (its results saved in the failure list): mail what the
/// administrator has not been told, at most one mail, and record it. Never
/// an error: what goes wrong is a warning line of [`Done`].
pub fn after_run(
    state: &State,
    cfg: &Config,
    tools: &Tools,
    results: &[PairResult],
    run: Run<'_>,
) -> Done {
    let mut done = Done::default();
    if let Err(e) = follow(state, cfg, tools, results, run, &mut done) {
        done.warnings
            .push(format!("mail about failed rebuilds: {e}"));
    }
    done
}

fn follow(
    state: &State,
    cfg: &Config,
    tools: &Tools,
    results: &[PairResult],
    run: Run<'_>,
    done: &mut Done,
) -> Result<(), Error> {
    let failed = state.failures()?.failed;
    let old = load(state)?;
    let mut list = current(&old, &failed);
    let mut news = mail::News::default();
    for r in results {
        let built = matches!(r.outcome, Outcome::Rebuilt { .. } | Outcome::AlreadyDone);
        let was = old.iter().find(|e| e.id == r.pair.id);
        if built && was.is_some_and(|e| e.mailed || (run.scheduled && e.retries > 0)) {
            news.fixed.push(report::result_line(r));
        }
    }
    for (e, f) in list.iter().zip(&failed) {
        let this_run = results
            .iter()
            .find(|r| r.pair.id == f.id && matches!(r.outcome, Outcome::Failed { .. }));
        let again = run.scheduled && this_run.is_some() && e.mailed;
        if e.mailed && !again {
            continue;
        }
        news.failed.push(mail::Failed {
            line: this_run.map_or_else(|| failure_line(f), report::result_line),
            make_log: Some(f.make_log.clone()).filter(|m| !m.is_empty()),
            again,
            retry: (run.scheduled && this_run.is_some()).then_some(e.retries),
        });
    }
    if news.is_empty() {
        if list != old {
            save(state, &list)?;
        }
        return Ok(());
    }
    let (to, warnings) = mail::recipient(state.root(), cfg, tools);
    done.warnings.extend(warnings);
    if let Some(to) = to {
        match mail::send(state, tools, &to, &news, run) {
            Ok(true) => {
                for e in &mut list {
                    e.mailed = true;
                }
                done.mailed = Some(format!("mailed {} to {to}", news.summary()));
            }
            Ok(false) => {}
            Err(e) => done
                .warnings
                .push(format!("could not mail {}: {e}", news.summary())),
        }
    }
    if list != old {
        save(state, &list)?;
    }
    Ok(())
}

/// A recorded failure's line, for a failure of an earlier run not mailed
/// yet (its mail could not be sent then).
fn failure_line(f: &Failure) -> String {
    format!(
        "FAILED to rebuild {} ({}){}; {}{}",
        f.id,
        report::causes(&f.because),
        f.exit_status
            .map(|s| format!(": dkms exited {s}"))
            .unwrap_or_default(),
        if f.restored {
            "the working module was kept"
        } else {
            "the working module could NOT be restored; the next run restores it"
        },
        if f.make_log.is_empty() {
            String::new()
        } else {
            format!("; see {}", f.make_log)
        }
    )
}
