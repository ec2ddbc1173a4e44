//! The planner: a pure function from (changes, inventory, config) to the pairs
//! to rebuild, the pairs skipped with their reason, and warnings. No I/O, so
//! every scenario is a table test.

use std::cmp::Ordering;
use std::time::{Duration, SystemTime};

use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use serde::Serialize;

use crate::change::Change;
use crate::config::{Config, KernelSelection};
use crate::dkms::Pair;
use crate::dkms_conf::Verdict;
use crate::inventory::Inventory;
use crate::kernel::{Input, Kernel, KernelRelease, Role};
pub use crate::model::{Assessment, Cause, PairState};
use crate::name::{DkmsArch, ModuleName, ModuleVersion};
use crate::pair::PairId;
use crate::state::Failure;

mod warning;
pub use warning::{lines as warning_lines, Warning};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuild {
    pub pair: Pair,
    pub because: Vec<Cause>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkipReason {
    /// Built after every change to its kernel's inputs.
    Fresh,
    NoHeaders,
    KernelRemoved,
    NotInstalled,
    Excluded,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Fresh => "fresh",
            SkipReason::NoHeaders => "no-headers",
            SkipReason::KernelRemoved => "kernel-removed",
            SkipReason::NotInstalled => "not-installed",
            SkipReason::Excluded => "excluded",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    pub pair: Pair,
    pub reason: SkipReason,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The changes that touch some kernel's build tree.
    pub changes: Vec<Change>,
    pub rebuilds: Vec<Rebuild>,
    pub skipped: Vec<Skip>,
    pub warnings: Vec<Warning>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.rebuilds.is_empty() && self.skipped.is_empty() && self.warnings.is_empty()
    }

    /// The warnings as the lines the admin reads.
    pub fn warning_lines(&self) -> Vec<String> {
        warning::lines(&self.warnings)
    }
}

/// When the change hit the disk, as a point in time; `None` means "not yet"
/// (apt's planned changes), which is after every build.
fn unpack_instant(unpacked: Option<DateTime>, tz: &TimeZone) -> Option<SystemTime> {
    let dt = unpacked?;
    let ts = tz.to_ambiguous_timestamp(dt).compatible().ok()?;
    let secs = u64::try_from(ts.as_second()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// A pair is stale when its module was built before the change was unpacked.
/// dpkg.log has whole seconds: a build within the logged second counts as
/// before it, because a needless rebuild costs minutes while a missed one
/// leaves a stale module.
fn built_before(built: Option<SystemTime>, unpacked: Option<SystemTime>) -> bool {
    match (built, unpacked) {
        (_, None) | (None, _) => true,
        (Some(b), Some(u)) => b < u + Duration::from_secs(1),
    }
}

fn matches(input: &Input, c: &Change) -> bool {
    input.package == c.package
        && match (&input.architecture, &c.architecture) {
            (Some(a), Some(b)) => a == b || a == "all" || b == "all",
            _ => true,
        }
}

/// Kernels chosen by the `kernels` setting.
fn selected(inv: &Inventory, cfg: &Config, k: &KernelRelease) -> bool {
    match cfg.kernels {
        KernelSelection::All => true,
        KernelSelection::RunningAndNewest => {
            inv.running.as_ref() == Some(k) || newest(&inv.kernels).is_some_and(|n| &n.release == k)
        }
    }
}

/// Kernel releases compare like Debian versions (`6.1.0-9` < `6.1.0-50`).
pub fn compare_releases(a: &KernelRelease, b: &KernelRelease) -> Ordering {
    crate::dpkg::compare_versions(a.as_str(), b.as_str())
}

fn newest(kernels: &[Kernel]) -> Option<&Kernel> {
    kernels
        .iter()
        .filter(|k| k.has_headers())
        .max_by(|a, b| compare_releases(&a.release, &b.release))
}

/// Plan rebuilds for `changes` (read from logs, or planned by apt).
pub fn plan(changes: &[Change], inv: &Inventory, cfg: &Config) -> Plan {
    let mut out = Plan::default();
    let mut relevant: Vec<&Change> = Vec::new();
    for k in &inv.kernels {
        // Deduplicated at the end: a change can feed several kernels.
        relevant.extend(plan_kernel(k, changes, inv, cfg, &mut out));
    }
    // Pairs of kernels that are gone, when the log shows their removal.
    for p in &inv.pairs {
        if inv.kernel(&p.id.kernel).is_none()
            && changes
                .iter()
                .any(|c| c.is_removal() && c.package.as_str().ends_with(p.id.kernel.as_str()))
        {
            out.skipped.push(Skip {
                pair: p.clone(),
                reason: SkipReason::KernelRemoved,
            });
        }
    }
    relevant.sort_by(|a, b| (&a.package, &a.architecture).cmp(&(&b.package, &b.architecture)));
    relevant.dedup_by(|a, b| std::ptr::eq(*a, *b));
    out.changes = relevant.into_iter().cloned().collect();
    out
}

/// One kernel's part of the plan: its rebuilds, skips and warnings go into
/// `out`; the changes that touch its build tree are returned.
fn plan_kernel<'c>(
    k: &Kernel,
    changes: &'c [Change],
    inv: &Inventory,
    cfg: &Config,
    out: &mut Plan,
) -> Vec<&'c Change> {
    let inputs = inv.inputs.get(&k.release).map(Vec::as_slice).unwrap_or(&[]);
    // The changes to this kernel's inputs, with the role that triggers.
    let hits: Vec<(&Change, Role)> = changes
        .iter()
        .filter(|c| !c.is_removal())
        .filter_map(|c| inputs.iter().find(|i| matches(i, c)).map(|i| (c, i.role)))
        .filter(|(_, role)| cfg.triggers(*role))
        .collect();
    let headers_removed: Vec<&Change> = changes
        .iter()
        .filter(|c| c.is_removal() && k.headers_package_guess().as_ref() == Some(&c.package))
        .collect();
    let relevant: Vec<&Change> = hits
        .iter()
        .map(|(c, _)| *c)
        .chain(headers_removed.iter().copied())
        .collect();
    if relevant.is_empty() {
        return relevant;
    }
    let pairs: Vec<&Pair> = inv
        .pairs
        .iter()
        .filter(|p| p.id.kernel == k.release)
        .collect();
    if !k.has_headers() {
        if pairs.iter().any(|p| p.installed) {
            let package = headers_removed
                .first()
                .map(|c| c.package.to_string())
                .or_else(|| k.headers_package_guess().map(|p| p.to_string()))
                .unwrap_or_else(|| "its headers".into());
            out.warnings.push(Warning::HeadersGone {
                kernel: k.release.clone(),
                package,
                modules: pairs
                    .iter()
                    .filter(|p| p.installed)
                    .map(|p| p.id.module.to_string())
                    .collect(),
            });
        }
        out.skipped.extend(pairs.iter().map(|p| Skip {
            pair: (*p).clone(),
            reason: SkipReason::NoHeaders,
        }));
        return relevant;
    }
    let rebuilds_before = out.rebuilds.len();
    for p in pairs {
        let reason = if !p.installed {
            Some(SkipReason::NotInstalled)
        } else if !selected(inv, cfg, &k.release)
            || inv.is_excluded(p.id.module.as_str(), p.id.version.as_str(), &k.release)
        {
            Some(SkipReason::Excluded)
        } else {
            None
        };
        if let Some(reason) = reason {
            out.skipped.push(Skip {
                pair: p.clone(),
                reason,
            });
            continue;
        }
        let because = causes(p, &hits, inv);
        if because.is_empty() {
            out.skipped.push(Skip {
                pair: p.clone(),
                reason: SkipReason::Fresh,
            });
        } else {
            out.rebuilds.push(Rebuild {
                pair: p.clone(),
                because,
            });
        }
    }
    // The skew matters to the rebuilds of this run; a kernel whose
    // modules were rebuilt since (by `sync`, after a suspended run) has
    // nothing to be warned about.
    if out.rebuilds.len() > rebuilds_before {
        skew_warning(k, &hits, inv, &mut out.warnings);
    }
    relevant
}

/// The changes among `hits` unpacked after `p` was built: why it is stale.
fn causes(p: &Pair, hits: &[(&Change, Role)], inv: &Inventory) -> Vec<Cause> {
    hits.iter()
        .filter_map(|(c, role)| {
            // The first unpack after the build names the version the
            // module was built against.
            let step = c
                .steps
                .iter()
                .find(|s| built_before(p.built, unpack_instant(s.unpacked, &inv.tz)))?;
            Some(Cause {
                package: c.package.clone(),
                role: *role,
                old: step.old.clone(),
                new: c.new.clone(),
                unpacked: unpack_instant(c.unpacked, &inv.tz),
            })
        })
        .collect()
}

/// A kbuild newer than the kernel's own headers: the combination that broke
/// module builds in the seed report of #1040401. Said for a kernel whose
/// modules this plan rebuilds.
fn skew_warning(
    k: &Kernel,
    hits: &[(&Change, Role)],
    inv: &Inventory,
    warnings: &mut Vec<Warning>,
) {
    let Some(headers) = k.headers_package_guess() else {
        return;
    };
    let Some(hv) = inv.installed_version(&headers).map(|i| &i.version) else {
        return;
    };
    for (c, role) in hits {
        if *role != Role::Kbuild {
            continue;
        }
        let Some(kv) = &c.new else { continue };
        if kv.cmp(hv) != Ordering::Equal {
            warnings.push(Warning::KbuildSkew {
                kernel: k.release.clone(),
                kbuild: c.package.clone(),
                kbuild_version: kv.clone(),
                headers: headers.clone(),
                headers_version: hv.clone(),
            });
        }
    }
}

/// The warnings for an upgrade apt is about to make: the plan for the planned
/// changes, plus the risks only visible beforehand (headers about to be
/// removed under an installed kernel, a new kernel coming without headers).
pub fn forecast(changes: &[Change], inv: &Inventory, cfg: &Config) -> Plan {
    let mut p = plan(changes, inv, cfg);
    let modules = |k: Option<&KernelRelease>| -> Vec<String> {
        let mut m: Vec<String> = inv
            .pairs
            .iter()
            .filter(|x| x.installed && k.is_none_or(|k| &x.id.kernel == k))
            .map(|x| format!("{}/{}", x.id.module, x.id.version))
            .collect();
        m.sort();
        m.dedup();
        m
    };
    let removed = |name: &str| {
        changes
            .iter()
            .any(|c| c.is_removal() && c.package.as_str() == name)
    };
    let added = |name: &str| {
        changes
            .iter()
            .any(|c| !c.is_removal() && c.package.as_str() == name)
    };
    for k in &inv.kernels {
        let Some(headers) = k.headers_package_guess() else {
            continue;
        };
        let image_goes = changes.iter().any(|c| {
            c.is_removal()
                && c.package.as_str().starts_with("linux-image-")
                && c.package.as_str().ends_with(k.release.as_str())
        });
        // dkms 3.0.10 and 3.2 both keep the modules when only the headers
        // go (checked on Debian 12 and 13); removing the image removes them.
        // A kernel with headers and modules but no image (build hosts,
        // containers) keeps them too, so it is warned about alike.
        let mods = modules(Some(&k.release));
        if removed(headers.as_str()) && k.has_headers() && !image_goes && !mods.is_empty() {
            p.warnings.push(Warning::HeadersRemoved {
                kernel: k.release.clone(),
                headers,
                modules: mods,
            });
        }
    }
    let all = modules(None);
    for c in changes
        .iter()
        .filter(|c| !c.is_removal() && c.old.is_none())
    {
        let Some(release) = c.package.as_str().strip_prefix("linux-image-") else {
            continue;
        };
        let release = release.strip_suffix("-unsigned").unwrap_or(release);
        let Ok(k) = KernelRelease::new(release) else {
            continue;
        };
        // Metapackages (linux-image-amd64) name no release with a digit.
        if !release.starts_with(|ch: char| ch.is_ascii_digit()) || all.is_empty() {
            continue;
        }
        let headers = format!("linux-headers-{k}");
        let has = inv.kernel(&k).is_some_and(Kernel::has_headers)
            || added(&headers)
            || inv.installed.contains_key(&headers);
        if !has {
            p.warnings.push(Warning::NewKernelWithoutHeaders {
                kernel: k,
                headers,
                modules: all.clone(),
            });
        }
    }
    p
}

/// Warnings for a kernel just installed (from /etc/kernel hooks): no headers,
/// or modules installed for other kernels that dkms did not build for it.
pub fn kernel_warnings(inv: &Inventory, k: &KernelRelease) -> Vec<Warning> {
    let mut out = Vec::new();
    let Some(kernel) = inv.kernel(k) else {
        return out;
    };
    // Excluded pairs (BUILD_EXCLUSIVE) are not missing: assess says so.
    let missing: Vec<(ModuleName, ModuleVersion)> = assess(inv, &Config::default(), &[])
        .into_iter()
        .filter(|a| &a.id.kernel == k && a.state == PairState::Missing)
        .map(|a| (a.id.module, a.id.version))
        .collect();
    let others: Vec<String> = {
        let mut m: Vec<String> = inv
            .pairs
            .iter()
            .filter(|p| p.installed && &p.id.kernel != k)
            .map(|p| p.id.module.to_string())
            .collect();
        m.sort();
        m.dedup();
        m
    };
    if !kernel.has_headers() && !others.is_empty() {
        out.push(Warning::KernelWithoutHeaders {
            kernel: k.clone(),
            modules: others,
        });
    } else {
        for (module, version) in missing {
            out.push(Warning::NotBuilt {
                kernel: k.clone(),
                module,
                version,
            });
        }
    }
    out
}

/// Judge every kernel × module from the file system alone: an input whose
/// file list (rewritten by dpkg on unpack) is newer than the pair's module is
/// stale. `failed` are the recorded failures.
pub fn assess(inv: &Inventory, cfg: &Config, failed: &[Failure]) -> Vec<Assessment> {
    // With the architecture of an installed pair: the one a pair dkms has
    // not built for a kernel (missing, excluded) would get.
    let mut modules: Vec<(&ModuleName, &ModuleVersion, &DkmsArch)> = inv
        .pairs
        .iter()
        .filter(|p| p.installed)
        .map(|p| (&p.id.module, &p.id.version, &p.id.arch))
        .collect();
    modules.sort_unstable();
    modules.dedup_by(|a, b| (a.0, a.1) == (b.0, b.1));
    let mut out = Vec::new();
    for k in &inv.kernels {
        for &(m, v, arch) in &modules {
            let pair = inv
                .pairs
                .iter()
                .find(|p| p.id.kernel == k.release && &p.id.module == m && p.installed);
            let mut a = Assessment {
                id: PairId {
                    module: m.clone(),
                    version: v.clone(),
                    kernel: k.release.clone(),
                    arch: pair.map_or(arch, |p| &p.id.arch).clone(),
                },
                state: PairState::Fresh,
                why: String::new(),
                pair: pair.cloned(),
                because: Vec::new(),
                check: None,
                previous: None,
                hold: None,
            };
            let failure = failed.iter().find(|f| f.id == a.id);
            if let Some(f) = failure.filter(|f| !f.restored) {
                a.state = PairState::Failed;
                a.why = format!(
                    "NEEDS ATTENTION: the working module could not be put back; its backup is in {} and the next run restores it",
                    f.backup.as_deref().unwrap_or("/var/lib/dkms-hook/backups")
                );
                out.push(a);
                continue;
            }
            match inv.verdict(m.as_str(), v.as_str(), &k.release) {
                Some(Verdict::Excluded) => {
                    a.state = PairState::Excluded;
                    a.why = "its dkms.conf (BUILD_EXCLUSIVE) excludes this kernel: dkms does not build it"
                        .into();
                    out.push(a);
                    continue;
                }
                // Only a pair dkms has not built is in doubt; a built one is
                // judged as usual below.
                Some(Verdict::Undecided(why)) if pair.is_none() => {
                    a.state = PairState::Undecided;
                    a.why = format!("cannot tell whether dkms builds it here: {why}");
                    out.push(a);
                    continue;
                }
                _ => {}
            }
            let Some(pair) = pair else {
                if !k.has_headers() {
                    continue; // nothing can be built there; not a finding
                }
                a.state = PairState::Missing;
                a.why = format!("installed for other kernels, not for {}", k.release);
                out.push(a);
                continue;
            };
            if &pair.id.version != v {
                continue;
            }
            if !k.has_headers() {
                a.state = PairState::NoHeaders;
                a.why = match k.headers_package_guess() {
                    Some(p) => format!("headers missing; install {p}"),
                    None => "headers missing".into(),
                };
            } else if let Some(f) = failure {
                a.state = PairState::Failed;
                // What to read and what to run, not another command to
                // look it up with: the kept make.log (or dkms's output
                // when the build left none), then the retry.
                let log = if f.make_log.is_empty() {
                    f.id.run_log().display().to_string()
                } else {
                    f.make_log.clone()
                };
                a.why = format!(
                    "the last rebuild failed; see {log}; when the cause is fixed, run: dkms-hook retry"
                );
            } else {
                for i in inv.inputs.get(&k.release).into_iter().flatten() {
                    // The list's mtime has nanoseconds: a plain comparison.
                    let Some(unpacked) = i.unpacked else { continue };
                    if !cfg.triggers(i.role) || pair.built.is_some_and(|b| b >= unpacked) {
                        continue;
                    }
                    let now = inv.installed_version(&i.package).map(|x| x.version.clone());
                    a.because.push(Cause {
                        package: i.package.clone(),
                        role: i.role,
                        old: None,
                        new: now,
                        unpacked: Some(unpacked),
                    });
                }
                if !a.because.is_empty() {
                    a.state = PairState::Stale;
                    let names: Vec<String> =
                        a.because.iter().map(|c| c.package.to_string()).collect();
                    a.why = format!("built before {} was unpacked", names.join(", "));
                }
            }
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dkms::{DkmsArch, ModuleName, ModuleVersion};
    use crate::dpkg::{Installed, PackageName};
    use crate::kernel::TreeDir;
    use std::collections::{BTreeMap, HashMap};
    use std::path::PathBuf;

    fn t(s: &str) -> DateTime {
        s.parse().unwrap()
    }
    fn at(s: &str) -> SystemTime {
        unpack_instant(Some(t(s)), &TimeZone::UTC).unwrap()
    }
    fn kr(s: &str) -> KernelRelease {
        KernelRelease::new(s).unwrap()
    }
    fn pkg(s: &str) -> PackageName {
        PackageName::new(s).unwrap()
    }
    fn kernel(k: &str, kbuild: &str) -> Kernel {
        Kernel {
            release: kr(k),
            image: true,
            build_link: Some(PathBuf::from(format!("/usr/src/linux-headers-{k}"))),
            tree: vec![
                TreeDir {
                    path: format!("/usr/src/linux-headers-{k}").into(),
                    role: Role::Headers,
                    also: vec![],
                },
                TreeDir {
                    path: format!("/usr/lib/{kbuild}/scripts").into(),
                    role: Role::Kbuild,
                    also: vec![],
                },
            ],
            compiler: None,
        }
    }
    fn pair(m: &str, k: &str, built: &str) -> Pair {
        Pair {
            id: crate::pair::PairId {
                module: ModuleName::new(m).unwrap(),
                version: ModuleVersion::new("1.0").unwrap(),
                kernel: kr(k),
                arch: DkmsArch::new("x86_64").unwrap(),
            },
            installed: true,
            built: Some(at(built)),
            built_names: Vec::new(),
        }
    }
    fn input(p: &str, role: Role) -> Input {
        Input {
            package: pkg(p),
            architecture: None,
            role,
            unpacked: None,
        }
    }
    fn change(p: &str, old: Option<&str>, new: Option<&str>, when: &str) -> Change {
        let mut c = Change::planned(
            pkg(p),
            Some("amd64".into()),
            old.map(|v| v.parse().unwrap()),
            new.map(|v| v.parse().unwrap()),
        );
        if c.is_removal() {
            c.removed = Some(t(when));
        } else {
            c.unpacked = Some(t(when));
            c.steps[0].unpacked = Some(t(when));
        }
        c
    }
    fn installed(p: &str, v: &str) -> Installed {
        Installed {
            name: pkg(p),
            architecture: None,
            version: v.parse().unwrap(),
            state: "installed".into(),
        }
    }

    /// The Debian 12 capture: two kernels sharing linux-kbuild-6.1.
    fn bookworm() -> Inventory {
        let mut inputs = BTreeMap::new();
        for k in ["6.1.0-50-amd64", "6.1.0-56-amd64"] {
            inputs.insert(
                kr(k),
                vec![
                    input(&format!("linux-headers-{k}"), Role::Headers),
                    input("linux-kbuild-6.1", Role::Kbuild),
                ],
            );
        }
        let mut installed_map = HashMap::new();
        installed_map.insert(
            "linux-headers-6.1.0-50-amd64".into(),
            vec![installed("linux-headers-6.1.0-50-amd64", "6.1.176-1")],
        );
        installed_map.insert(
            "linux-headers-6.1.0-56-amd64".into(),
            vec![installed("linux-headers-6.1.0-56-amd64", "6.1.192-2")],
        );
        Inventory {
            kernels: vec![
                kernel("6.1.0-50-amd64", "linux-kbuild-6.1"),
                kernel("6.1.0-56-amd64", "linux-kbuild-6.1"),
            ],
            pairs: vec![
                pair("acpi-call", "6.1.0-50-amd64", "2026-11-23T20:56:02"),
                pair("acpi-call", "6.1.0-56-amd64", "2026-11-23T20:57:41"),
            ],
            inputs,
            installed: installed_map,
            running: None,
            tz: TimeZone::UTC,
            verdicts: Default::default(),
            warnings: vec![],
        }
    }

    fn labels(p: &Plan) -> (Vec<String>, Vec<String>) {
        (
            p.rebuilds.iter().map(|r| r.pair.id.label()).collect(),
            p.skipped
                .iter()
                .map(|s| format!("{} {}", s.pair.id.label(), s.reason.as_str()))
                .collect(),
        )
    }

    #[test]
    fn kbuild_upgrade_rebuilds_the_older_kernel_only() {
        let inv = bookworm();
        let changes = vec![
            change(
                "linux-kbuild-6.1",
                Some("6.1.176-1"),
                Some("6.1.192-2"),
                "2026-11-23T20:57:37",
            ),
            change(
                "linux-headers-6.1.0-56-amd64",
                None,
                Some("6.1.192-2"),
                "2026-11-23T20:57:38",
            ),
            change("hello", Some("1"), Some("2"), "2026-11-23T20:57:38"),
        ];
        let p = plan(&changes, &inv, &Config::default());
        let (r, s) = labels(&p);
        assert_eq!(r, ["acpi-call/1.0 @ 6.1.0-50-amd64"]);
        assert_eq!(s, ["acpi-call/1.0 @ 6.1.0-56-amd64 fresh"]);
        assert_eq!(
            p.rebuilds[0].because[0].package.as_str(),
            "linux-kbuild-6.1"
        );
        assert_eq!(p.changes.len(), 2, "hello is not relevant");
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert!(p.warnings[0].to_string().starts_with("6.1.0-50-amd64: linux-kbuild-6.1 6.1.192-2 is newer than linux-headers-6.1.0-50-amd64 6.1.176-1"));
    }

    #[test]
    fn table() {
        struct Case {
            name: &'static str,
            changes: Vec<Change>,
            cfg: Config,
            rebuild: Vec<&'static str>,
            skipped: Vec<&'static str>,
        }
        let kb = || {
            change(
                "linux-kbuild-6.1",
                Some("6.1.176-1"),
                Some("6.1.192-2"),
                "2026-11-23T20:57:37",
            )
        };
        let both = vec![
            "acpi-call/1.0 @ 6.1.0-50-amd64",
            "acpi-call/1.0 @ 6.1.0-56-amd64",
        ];
        let cases = vec![
            Case {
                name: "nothing relevant",
                changes: vec![change("hello", None, Some("1"), "2026-11-23T20:57:37")],
                cfg: Config::default(),
                rebuild: vec![],
                skipped: vec![],
            },
            Case {
                name: "kbuild role off",
                changes: vec![kb()],
                cfg: Config {
                    triggers: [Role::Headers].into(),
                    ..Config::default()
                },
                rebuild: vec![],
                skipped: vec![],
            },
            Case {
                name: "in-place headers upgrade",
                changes: vec![change(
                    "linux-headers-6.1.0-56-amd64",
                    Some("6.1.192-2"),
                    Some("6.1.192-3"),
                    "2026-11-24T08:00:00",
                )],
                cfg: Config::default(),
                rebuild: vec!["acpi-call/1.0 @ 6.1.0-56-amd64"],
                skipped: vec![],
            },
            Case {
                name: "planned change (apt) is after every build",
                changes: vec![Change::planned(
                    pkg("linux-kbuild-6.1"),
                    None,
                    Some("1".parse().unwrap()),
                    Some("2".parse().unwrap()),
                )],
                cfg: Config::default(),
                rebuild: both.clone(),
                skipped: vec![],
            },
            Case {
                name: "built in the same second as the unpack counts as stale",
                changes: vec![change(
                    "linux-kbuild-6.1",
                    Some("1"),
                    Some("2"),
                    "2026-11-23T20:57:41",
                )],
                cfg: Config::default(),
                rebuild: both.clone(),
                skipped: vec![],
            },
            Case {
                name: "running-and-newest excludes old kernels",
                changes: vec![kb()],
                cfg: Config {
                    kernels: KernelSelection::RunningAndNewest,
                    ..Config::default()
                },
                rebuild: vec![],
                skipped: vec![
                    "acpi-call/1.0 @ 6.1.0-50-amd64 excluded",
                    "acpi-call/1.0 @ 6.1.0-56-amd64 fresh",
                ],
            },
        ];
        for c in cases {
            let p = plan(&c.changes, &bookworm(), &c.cfg);
            let (r, s) = labels(&p);
            assert_eq!(r, c.rebuild, "{}", c.name);
            assert_eq!(s, c.skipped, "{}", c.name);
        }
    }

    #[test]
    fn purged_headers_warn_and_skip() {
        let mut inv = bookworm();
        inv.kernels[0].tree.clear();
        let changes = vec![change(
            "linux-headers-6.1.0-50-amd64",
            Some("6.1.176-1"),
            None,
            "2026-11-24T08:00:00",
        )];
        let p = plan(&changes, &inv, &Config::default());
        let (r, s) = labels(&p);
        assert!(r.is_empty());
        assert_eq!(s, ["acpi-call/1.0 @ 6.1.0-50-amd64 no-headers"]);
        assert_eq!(p.warnings.len(), 1);
        assert!(
            p.warnings[0]
                .to_string()
                .contains("6.1.0-50-amd64: headers are gone (linux-headers-6.1.0-50-amd64)"),
            "{}",
            p.warnings[0]
        );
    }

    #[test]
    fn unbuilt_and_uninstalled_pairs() {
        let mut inv = bookworm();
        inv.pairs[1].installed = false;
        inv.pairs[0].built = None;
        let changes = vec![change(
            "linux-kbuild-6.1",
            Some("1"),
            Some("2"),
            "2020-01-01T00:00:00",
        )];
        let (r, s) = labels(&plan(&changes, &inv, &Config::default()));
        assert_eq!(
            r,
            ["acpi-call/1.0 @ 6.1.0-50-amd64"],
            "a pair without a built module is stale"
        );
        assert_eq!(s, ["acpi-call/1.0 @ 6.1.0-56-amd64 not-installed"]);
    }

    /// Regression: a change every pair was rebuilt after (by
    /// `sync`, while the hooks were suspended) rebuilds nothing, so the
    /// kbuild's skew is no warning of this run.
    #[test]
    fn a_skew_is_not_warned_when_nothing_is_rebuilt() {
        let mut inv = bookworm();
        for p in &mut inv.pairs {
            p.built = Some(at("2026-11-24T09:00:00"));
        }
        let changes = vec![change(
            "linux-kbuild-6.1",
            Some("6.1.176-1"),
            Some("6.1.192-2"),
            "2026-11-23T20:57:37",
        )];
        let p = plan(&changes, &inv, &Config::default());
        assert!(p.rebuilds.is_empty(), "{:?}", p.rebuilds);
        assert_eq!(p.warning_lines(), Vec::<String>::new());
    }

    /// Regression: headers about to be removed from a kernel
    /// with modules but no image (a build host, a container) are warned
    /// about before the prompt, as after the removal.
    #[test]
    fn removing_headers_warns_before_the_prompt_without_an_image() {
        let mut inv = bookworm();
        inv.kernels[0].image = false;
        let changes = vec![Change::planned(
            pkg("linux-headers-6.1.0-50-amd64"),
            Some("amd64".into()),
            Some("6.1.176-1".parse().unwrap()),
            None,
        )];
        let p = forecast(&changes, &inv, &Config::default());
        assert_eq!(
            p.warning_lines(),
            ["6.1.0-50-amd64: removing linux-headers-6.1.0-50-amd64 leaves this kernel without headers: its dkms modules (acpi-call/1.0) stay installed but can no longer be rebuilt for 6.1.0-50-amd64"]
        );
    }

    #[test]
    fn releases_sort_like_versions() {
        assert_eq!(
            compare_releases(&kr("6.1.0-9-amd64"), &kr("6.1.0-50-amd64")),
            Ordering::Less
        );
    }

    /// Each row names its pair with the pair's own architecture; a pair
    /// dkms has not built takes that of the module's installed pairs.
    #[test]
    fn assessed_rows_carry_the_pairs_architecture() {
        let mut inv = bookworm();
        inv.pairs[0].id.arch = DkmsArch::new("i686").unwrap();
        inv.pairs.remove(1);
        let rows = assess(&inv, &Config::default(), &[]);
        let arch = |k: &str| {
            rows.iter()
                .find(|r| r.id.kernel.as_str() == k)
                .map(|r| r.id.arch.to_string())
        };
        assert_eq!(arch("6.1.0-50-amd64").as_deref(), Some("i686"));
        let missing = rows
            .iter()
            .find(|r| r.id.kernel.as_str() == "6.1.0-56-amd64")
            .unwrap();
        assert_eq!(missing.state, PairState::Missing);
        assert_eq!(missing.id.arch.as_str(), "i686");
        assert_eq!(
            missing.id.dkms_dir(),
            std::path::Path::new("/var/lib/dkms/acpi-call/1.0/6.1.0-56-amd64/i686")
        );
    }
}
