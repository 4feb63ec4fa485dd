//! Why a task was killed: the kernel's badness score recomputed, and a one-line verdict.
//! Pure functions of what the kernel reported at the kill and the cgroup snapshot read just
//! after it, so they are tested without a kernel.

use serde::Serialize;

use crate::{cgroup::MemoryStats, enrich::at_kill::Breakdown, output::human_bytes};

/// `oom_score_adj` value that exempts a task from the OOM killer.
pub const OOM_SCORE_ADJ_MIN: i32 = -1000;

/// The victim's score as mm/oom_kill.c `oom_badness()` computes it:
/// `rss + swap entries + page-table pages + oom_score_adj * (totalpages / 1000)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Badness {
    pub points: i64,
    pub rss_pages: u64,
    pub swap_pages: u64,
    pub pgtables_pages: u64,
    pub adj_points: i64,
    /// The size of the OOM domain in pages (the memcg's limit, plus usable swap, for a memcg
    /// OOM; RAM + swap for a global one). Not the victim's size.
    pub totalpages: u64,
}

pub fn badness(
    rss_pages: u64,
    swap_pages: u64,
    pgtables_pages: u64,
    oom_score_adj: i32,
    totalpages: u64,
) -> Badness {
    let base = rss_pages
        .saturating_add(swap_pages)
        .saturating_add(pgtables_pages);
    // The kernel divides totalpages by 1000 first (integer arithmetic): keep that rounding.
    let adj_points =
        i64::from(oom_score_adj).saturating_mul(i64::try_from(totalpages / 1000).unwrap_or(i64::MAX));
    let points = if oom_score_adj == OOM_SCORE_ADJ_MIN {
        i64::MIN // the kernel returns LONG_MIN: never chosen
    } else {
        i64::try_from(base).unwrap_or(i64::MAX).saturating_add(adj_points)
    };
    Badness {
        points,
        rss_pages,
        swap_pages,
        pgtables_pages,
        adj_points,
        totalpages,
    }
}

/// Which limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Constraint {
    /// A memory cgroup reached its limit.
    Memcg,
    /// No cgroup was at its limit: the machine ran out of memory.
    Global,
    /// The kernel gave no memory cgroup data for this kill (no BTF, or the plain tracepoint
    /// with a victim that is not the triggering task): memcg or global cannot be told.
    Unknown,
}

impl Constraint {
    /// As in the JSON `memtrace.constraint` and the `constraint` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Memcg => "memcg",
            Self::Global => "global",
            Self::Unknown => "unknown",
        }
    }
}

impl Serialize for Constraint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// How the constraint was told, i.e. how sure it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConstraintSource {
    /// The OOM killer's own `oom_control` (oom_kill_process hooked by kprobe or fentry):
    /// `oc->memcg` set or not. Certain.
    Kernel,
    /// The kernel's call stack at the kill (where oom_kill_process is not hooked): through
    /// mm/memcontrol.c's OOM, or through the page allocator's and no memcg code. Certain about
    /// memcg or not; a cpuset or mempolicy OOM counts as global, as with `Kernel`.
    CallPath,
    /// The page counters read at the kill: a memcg OOM when an ancestor-or-self of the
    /// victim's cgroup was within a charge of its limit, else global. A heuristic: a global OOM
    /// that strikes while the victim's cgroup happens to be that close to its limit is
    /// reported as memcg.
    Limits,
    /// Nothing to tell it from: the constraint is `unknown`.
    None,
}

/// What filled the memory that ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FilledBy {
    Anon,
    Shmem,
    PageCache,
    Kernel,
    Unknown,
}

impl FilledBy {
    fn describe(self) -> &'static str {
        match self {
            Self::Anon => "anonymous memory (heap/stack growth)",
            Self::Shmem => "shmem/tmpfs (files in memory that no kill frees)",
            Self::PageCache => "page cache that could not be reclaimed",
            Self::Kernel => "kernel memory (slab, sockets, page tables)",
            Self::Unknown => "unknown contents",
        }
    }
}

/// Everything the verdict is computed from. Sizes in bytes.
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    pub victim_is_trigger: bool,
    pub victim_anon: u64,
    pub victim_shmem: u64,
    /// The OOM cgroup (memcg OOM) with its usage and limit at the kill, from the kernel.
    pub oom_cgroup: Option<(&'a str, u64, u64)>,
    /// The OOM cgroup's (or, in a global OOM, the victim's cgroup's) stats after the kill.
    pub post_kill: Option<&'a MemoryStats>,
    /// The same cgroup's breakdown read in the kernel at the kill; preferred when present.
    pub at_kill: Option<&'a Breakdown>,
    /// Fraction of the limit at which a working-set alert fires (e.g. 0.9).
    pub ws_alert_ratio: f64,
    /// No memcg data came from the kernel, so no OOM cgroup does not mean a global OOM.
    pub memcg_unknown: bool,
    /// The OOM killer's own decision, where oom_kill_process is hooked: memcg OOM or not.
    pub kernel_decision: Option<bool>,
    /// The same from the kernel's call stack at the kill, where it was read.
    pub call_path_memcg: Option<bool>,
    /// cgroup v1: an ancestor's memory+swap limit binds the victim's cgroup, and no OOM cgroup
    /// was found: that limit may have been hit (by siblings' memory too), so not global.
    pub ancestor_memsw_limit: Option<u64>,
}

/// Which numbers the verdict rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// The cgroup's own counters, read in the kernel at the kill.
    AtKill,
    /// The cgroup's files, read after the kill (the victim's memory may be freed by then).
    PostKill,
    /// Neither: only the victim's own counters.
    Victim,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub constraint: Constraint,
    pub constraint_source: ConstraintSource,
    pub filled_by: FilledBy,
    pub basis: Basis,
    pub victim_is_trigger: bool,
    /// Working set (usage - inactive_file) over the limit at the kill; usage is the kernel's
    /// at the kill, inactive_file too when [`Basis::AtKill`], else from the snapshot after.
    pub working_set_ratio: Option<f64>,
    /// Whether an alert on working set >= `ws_alert_ratio` x limit would have fired.
    pub ws_alert_would_fire: Option<bool>,
    pub summary: String,
}

/// The largest of what filled the cgroup: from the counters at the kill when the kernel gave
/// them; otherwise from the snapshot after it, where the victim's anon memory is already freed,
/// so anon is the larger of the snapshot's and the victim's own at the kill.
fn filled_by(f: &Facts<'_>) -> (FilledBy, Basis) {
    // v1 cache and v2 file both include shmem.
    let (anon, shmem, cache, kernel, basis) = match (f.at_kill, f.post_kill) {
        (Some(a), _) if a.anon.is_some() && a.file.is_some() => (
            a.anon.unwrap_or(0),
            a.shmem.unwrap_or(0),
            a.file.unwrap_or(0).saturating_sub(a.shmem.unwrap_or(0)),
            a.kernel.unwrap_or(0),
            Basis::AtKill,
        ),
        (_, Some(s)) => (
            s.anon.max(f.victim_anon),
            s.shmem.max(f.victim_shmem),
            s.file.saturating_sub(s.shmem),
            s.kernel.unwrap_or(0),
            Basis::PostKill,
        ),
        _ => {
            let filled = if f.victim_anon > 0 {
                FilledBy::Anon
            } else {
                FilledBy::Unknown
            };
            return (filled, Basis::Victim);
        }
    };
    let parts = [
        (anon, FilledBy::Anon),
        (shmem, FilledBy::Shmem),
        (cache, FilledBy::PageCache),
        (kernel, FilledBy::Kernel),
    ];
    let filled = parts
        .into_iter()
        .filter(|(v, _)| *v > 0)
        .max_by_key(|(v, _)| *v)
        .map_or(FilledBy::Unknown, |(_, k)| k);
    (filled, basis)
}

/// How a constraint without an OOM cgroup was told, for the verdict.
fn decided_by(source: ConstraintSource) -> &'static str {
    match source {
        ConstraintSource::CallPath => "the kernel's call path",
        _ => "the kernel's decision",
    }
}

pub fn verdict(f: &Facts<'_>) -> Verdict {
    let unknown = f.memcg_unknown || f.ancestor_memsw_limit.is_some();
    // The kernel's decision, else its call path, else the page counters.
    let decided = f
        .kernel_decision
        .map(|m| (m, ConstraintSource::Kernel))
        .or(f.call_path_memcg.map(|m| (m, ConstraintSource::CallPath)));
    let (constraint, constraint_source) = match (decided, f.oom_cgroup, unknown) {
        (Some((true, source)), ..) => (Constraint::Memcg, source),
        (Some((false, source)), ..) => (Constraint::Global, source),
        (None, Some(_), _) => (Constraint::Memcg, ConstraintSource::Limits),
        (None, None, false) => (Constraint::Global, ConstraintSource::Limits),
        (None, None, true) => (Constraint::Unknown, ConstraintSource::None),
    };
    let (filled, basis) = filled_by(f);
    let inactive_file = match (basis, f.at_kill, f.post_kill) {
        (Basis::AtKill, Some(a), _) => a.inactive_file,
        (_, _, Some(s)) => Some(s.inactive_file),
        _ => None,
    };
    let (working_set_ratio, ws_alert_would_fire) = match (f.oom_cgroup, inactive_file) {
        (Some((_, usage, limit)), Some(inactive)) if limit > 0 => {
            let ratio = usage.saturating_sub(inactive) as f64 / limit as f64;
            (Some(ratio), Some(ratio >= f.ws_alert_ratio))
        }
        _ => (None, None),
    };
    let mut summary = match f.oom_cgroup.filter(|_| constraint == Constraint::Memcg) {
        Some((path, _, 0)) => format!("memcg OOM: {path} hit its limit"),
        Some((path, _, limit)) => format!("memcg OOM: {path} hit its {} limit", human_bytes(limit)),
        None if constraint == Constraint::Memcg => format!("memcg OOM ({})", decided_by(constraint_source)),
        None if matches!(
            constraint_source,
            ConstraintSource::Kernel | ConstraintSource::CallPath
        ) =>
        {
            format!(
                "global OOM: the machine ran out of memory ({})",
                decided_by(constraint_source)
            )
        }
        None if f.ancestor_memsw_limit.is_some() && !f.memcg_unknown => format!(
            "memcg or global OOM: not known (an ancestor's {} memory+swap limit binds this cgroup, \
             which alone did not reach it: its siblings may have filled it)",
            human_bytes(f.ancestor_memsw_limit.unwrap_or(0))
        ),
        None if f.memcg_unknown => {
            "memcg or global OOM: not known (the kernel gave no memory cgroup data for this kill)".to_owned()
        }
        None => "global OOM: no cgroup was at its limit, the machine ran out of memory".to_owned(),
    };
    summary.push_str(&format!("; filled by {}", filled.describe()));
    summary.push_str(if f.victim_is_trigger {
        "; the victim triggered it"
    } else {
        "; the victim was a bystander (another task's allocation triggered it)"
    });
    if let (Some(r), Some(fire)) = (working_set_ratio, ws_alert_would_fire) {
        summary.push_str(&format!(
            "; working set was {:.0}% of the limit: a {:.0}% working-set alert {}",
            r * 100.0,
            f.ws_alert_ratio * 100.0,
            if fire {
                "would have fired"
            } else {
                "would NOT have fired"
            }
        ));
    }
    Verdict {
        constraint,
        constraint_source,
        filled_by: filled,
        basis,
        victim_is_trigger: f.victim_is_trigger,
        working_set_ratio,
        ws_alert_would_fire,
        summary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn badness_matches_the_kernel_formula() {
        // 64 MiB limit = 16384 pages; totalpages / 1000 = 16 (integer division first).
        let b = badness(16_000, 10, 40, 500, 16_384);
        assert_eq!(b.adj_points, 500 * 16);
        assert_eq!(b.points, 16_050 + 8_000);
        assert_eq!(badness(100, 0, 0, -999, 16_384).points, 100 - 999 * 16);
        assert_eq!(badness(100, 0, 0, OOM_SCORE_ADJ_MIN, 16_384).points, i64::MIN);
        assert_eq!(badness(u64::MAX, u64::MAX, 1, 1000, u64::MAX).points, i64::MAX);
    }

    fn stats(anon: u64, file: u64, shmem: u64, inactive_file: u64) -> MemoryStats {
        MemoryStats {
            anon,
            file,
            shmem,
            inactive_file,
            kernel: Some(1 << 20),
            ..MemoryStats::default()
        }
    }

    #[test]
    fn anon_vs_tmpfs_vs_cache() {
        let mib = 1u64 << 20;
        let anon_after = stats(mib, 2 * mib, 0, mib);
        let f = Facts {
            victim_is_trigger: true,
            victim_anon: 63 * mib,
            oom_cgroup: Some(("/a", 64 * mib, 64 * mib)),
            post_kill: Some(&anon_after),
            ws_alert_ratio: 0.9,
            ..Facts::default()
        };
        let v = verdict(&f);
        assert_eq!((v.constraint, v.filled_by), (Constraint::Memcg, FilledBy::Anon));
        assert_eq!(v.ws_alert_would_fire, Some(true));
        assert!(
            v.summary
                .starts_with("memcg OOM: /a hit its 64.0 MiB limit; filled by anonymous"),
            "{}",
            v.summary
        );

        let tmpfs = stats(mib, 60 * mib, 58 * mib, 0);
        let v = verdict(&Facts {
            victim_anon: 3 * mib,
            post_kill: Some(&tmpfs),
            ..f.clone()
        });
        assert_eq!(v.filled_by, FilledBy::Shmem);

        // Mostly inactive page cache: the working-set alert would not have fired.
        let cache = stats(mib, 62 * mib, 0, 40 * mib);
        let v = verdict(&Facts {
            victim_anon: mib,
            post_kill: Some(&cache),
            ..f.clone()
        });
        assert_eq!(v.filled_by, FilledBy::PageCache);
        assert_eq!(v.ws_alert_would_fire, Some(false));
        assert!(v.summary.contains("would NOT have fired"));
    }

    /// The counters at the kill win over the snapshot after it: the snapshot of an anon-filled
    /// cgroup after the kill shows mostly page cache, the kernel's counters at the kill do not.
    #[test]
    fn at_kill_counters_win() {
        let mib = 1u64 << 20;
        let after = stats(mib, 8 * mib, 0, 6 * mib);
        let at = Breakdown {
            anon: Some(60 * mib),
            file: Some(3 * mib),
            shmem: Some(0),
            inactive_file: Some(2 * mib),
            ..Breakdown::default()
        };
        let f = Facts {
            victim_is_trigger: true,
            victim_anon: 0,
            oom_cgroup: Some(("/a", 64 * mib, 64 * mib)),
            post_kill: Some(&after),
            at_kill: Some(&at),
            ws_alert_ratio: 0.9,
            ..Facts::default()
        };
        let v = verdict(&f);
        assert_eq!((v.filled_by, v.basis), (FilledBy::Anon, Basis::AtKill));
        assert_eq!(v.working_set_ratio, Some(62.0 / 64.0));
        let v = verdict(&Facts { at_kill: None, ..f });
        assert_eq!((v.filled_by, v.basis), (FilledBy::PageCache, Basis::PostKill));
    }

    /// What a verdict says of the constraint, and from what.
    fn decided(f: &Facts) -> (Constraint, ConstraintSource) {
        let v = verdict(f);
        (v.constraint, v.constraint_source)
    }

    /// oom_kill_process's decision wins over the page counters both ways, and says so.
    #[test]
    fn the_kernels_decision_wins() {
        let near = Facts {
            victim_anon: 1,
            oom_cgroup: Some(("/a", 64 << 20, 64 << 20)),
            kernel_decision: Some(false),
            ..Facts::default()
        };
        assert_eq!(decided(&near), (Constraint::Global, ConstraintSource::Kernel));
        let v = verdict(&near);
        assert!(v.summary.starts_with("global OOM"), "{}", v.summary);
        let counters = Facts {
            kernel_decision: None,
            ..near.clone()
        };
        assert_eq!(decided(&counters), (Constraint::Memcg, ConstraintSource::Limits));
        let no_cgroup = Facts {
            oom_cgroup: None,
            kernel_decision: Some(true),
            memcg_unknown: true,
            ..near
        };
        assert_eq!(decided(&no_cgroup), (Constraint::Memcg, ConstraintSource::Kernel));
    }

    /// The call path at the kill, where oom_kill_process is not hooked: it beats the page
    /// counters both ways (a global OOM while the victim's cgroup is near its limit; a memsw
    /// or no-data memcg OOM with no OOM cgroup found), and the kernel's decision beats it.
    #[test]
    fn the_call_path_comes_after_the_kernels_decision_and_before_the_counters() {
        let near = Facts {
            victim_anon: 1,
            oom_cgroup: Some(("/a", 64 << 20, 64 << 20)),
            call_path_memcg: Some(false),
            ..Facts::default()
        };
        assert_eq!(decided(&near), (Constraint::Global, ConstraintSource::CallPath));
        let v = verdict(&near);
        assert!(v.summary.starts_with("global OOM"), "{}", v.summary);
        let memsw = Facts {
            oom_cgroup: None,
            call_path_memcg: Some(true),
            ancestor_memsw_limit: Some(96 << 20),
            memcg_unknown: true,
            ..near.clone()
        };
        assert_eq!(decided(&memsw), (Constraint::Memcg, ConstraintSource::CallPath));
        let v = verdict(&memsw);
        assert!(
            v.summary.starts_with("memcg OOM (the kernel's call path)"),
            "{}",
            v.summary
        );
        let kernel = Facts {
            kernel_decision: Some(false),
            ..memsw
        };
        assert_eq!(decided(&kernel), (Constraint::Global, ConstraintSource::Kernel));
    }

    #[test]
    fn global_and_bystander() {
        let v = verdict(&Facts {
            victim_is_trigger: false,
            victim_anon: 1,
            ..Facts::default()
        });
        assert_eq!(v.constraint, Constraint::Global);
        assert!(v.summary.contains("bystander"));
        assert_eq!(v.working_set_ratio, None);
    }

    /// An ancestor's memory+swap limit binds and no OOM cgroup was found: not global.
    #[test]
    fn an_ancestors_memsw_limit_makes_it_unknown() {
        let v = verdict(&Facts {
            victim_is_trigger: true,
            victim_anon: 1,
            ancestor_memsw_limit: Some(96 << 20),
            ..Facts::default()
        });
        assert_eq!(
            (v.constraint, v.constraint_source),
            (Constraint::Unknown, ConstraintSource::None)
        );
        assert!(
            v.summary.contains("96.0 MiB memory+swap limit binds"),
            "{}",
            v.summary
        );
    }

    /// Without memcg data from the kernel (no BTF, or a tracepoint bystander) the absence of an
    /// OOM cgroup proves nothing: never claim a global OOM then.
    #[test]
    fn no_memcg_data_is_not_a_global_oom() {
        let v = verdict(&Facts {
            victim_is_trigger: true,
            victim_anon: 1,
            memcg_unknown: true,
            ..Facts::default()
        });
        assert_eq!(v.constraint, Constraint::Unknown);
        assert_eq!(v.constraint_source, ConstraintSource::None);
        assert!(
            v.summary.starts_with("memcg or global OOM: not known"),
            "{}",
            v.summary
        );
        assert!(!v.summary.contains("machine ran out"));
    }
}
