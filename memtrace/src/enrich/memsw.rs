//! cgroup v1 memory+swap limits: which limit a memcg OOM hit, memory or memory+swap.

pub use crate::kernel::records::LimitKind;

use crate::{
    cgroup::MemoryStats,
    enrich::{
        at_kill::Breakdown,
        kill::{CgroupRef, OomCgroup},
    },
    kernel::records::VictimRecord,
};

impl LimitKind {
    /// From the cgroup's files: memory+swap where a memsw limit is set.
    pub fn of_files(stats: Option<&MemoryStats>) -> Self {
        match stats.and_then(|s| s.memsw_limit) {
            Some(_) => Self::MemorySwap,
            None => Self::Memory,
        }
    }

    /// Says in the verdict which limit was hit (diagnosis.rs writes "hit its N limit").
    pub fn name_in(self, summary: &mut String, limit_bytes: u64) {
        if self == Self::MemorySwap {
            let size = crate::output::human_bytes(limit_bytes);
            *summary = summary.replacen(
                &format!("hit its {size} limit"),
                &format!("hit its {size} memory+swap limit (memory.memsw.limit_in_bytes)"),
                1,
            );
        }
    }
}

/// How far below its limit memory+swap may read at the kill and still be the limit hit: the
/// swap figure is a per-CPU batched statistic (up to MEMCG_CHARGE_BATCH pages per CPU behind).
const MEMSW_SLACK_BYTES: u64 = 1 << 20;

/// cgroup v1 memory+swap, for a record whose in-kernel walk did not read the memsw counters
/// (`VictimRecord::memsw_walked`; where it did, its answer stands). `try_charge_memcg` charges
/// `memory.memsw` before `memory` (mm/memcontrol.c), so when memory plus swap at the kill was
/// at the memsw limit, that is the limit the failed charge hit; a cgroup whose memory was below
/// its limit while swap filled the rest is not found by a memory-only walk at all, and the kill
/// looked global. A guess: the swap figure is a statistic that lags (rstat) and is freed with
/// the victim. Judged on the OOM cgroup (or, when the walk found none, the victim's own cgroup)
/// with numbers from the kill; an ancestor's memsw limit is [`ancestor_memsw`]'s.
/// Not when the kernel itself named no memcg (a global OOM it decided).
pub fn memsw_limit_hit(
    oom: &mut Option<OomCgroup>,
    victim_cgroup: Option<&CgroupRef>,
    stats: Option<&MemoryStats>,
    r: &VictimRecord,
    page: u64,
    kernel_decided: bool,
) {
    let pages = if oom.is_some() {
        r.stats.oom
    } else {
        r.stats.victim
    };
    let at_kill = pages.and_then(|p| Breakdown::at_kill(&p, page));
    let victim_usage = r.memcg_pages.map(|(u, _)| u.saturating_mul(page));
    judge(oom, victim_cgroup, stats, at_kill, victim_usage, kernel_decided);
}

/// [`memsw_limit_hit`] on the numbers it takes from the record.
fn judge(
    oom: &mut Option<OomCgroup>,
    victim_cgroup: Option<&CgroupRef>,
    stats: Option<&MemoryStats>,
    at_kill: Option<Breakdown>,
    victim_usage: Option<u64>,
    kernel_decided: bool,
) {
    let (Some(memsw_limit), Some(swap)) = (stats.and_then(|s| s.memsw_limit), at_kill.and_then(|b| b.swap))
    else {
        return;
    };
    let usage = match (oom.as_ref(), victim_usage) {
        (Some(o), _) => o.usage_bytes,
        (None, Some(u)) if !kernel_decided => u,
        _ => return,
    };
    let memsw = usage.saturating_add(swap);
    if memsw.saturating_add(MEMSW_SLACK_BYTES) < memsw_limit {
        return;
    }
    match oom {
        Some(o) => {
            o.usage_bytes = memsw;
            o.limit_bytes = memsw_limit;
            o.limit = LimitKind::MemorySwap;
        }
        None => {
            *oom = victim_cgroup.map(|c| OomCgroup {
                cgroup: c.clone(),
                usage_bytes: memsw,
                limit_bytes: memsw_limit,
                limit: LimitKind::MemorySwap,
                depth: 0,
            });
        }
    }
}

/// What an ancestor's memory+swap limit says about a kill for which no OOM cgroup was found.
#[derive(Debug, Clone, PartialEq)]
pub enum AncestorMemsw {
    /// No ancestor's memsw limit is tighter than the victim's cgroup's own.
    NotBinding,
    /// This ancestor's memsw limit was hit: the victim's cgroup alone reached it.
    Hit(OomCgroup),
    /// An ancestor's limit binds, but the victim's cgroup's memory+swap did not reach it: its
    /// siblings may have filled the rest, or the machine ran out. memtrace cannot tell.
    MayHaveHit { limit_bytes: u64 },
}

/// cgroup v1: `hierarchical_memsw_limit` in the victim's memory.stat is the tightest memsw
/// limit on its path; when an ancestor's is tighter than its own, the in-kernel walk (memory
/// counters only) and [`memsw_limit_hit`] (the cgroup's own limit) both miss an OOM at it
/// whenever the memory counter was not at its limit then, and the kill looked global.
/// `victim_memsw`: the victim's cgroup's memory + swap at the kill (from the record);
/// `memsw_limit_of(path)` reads an ancestor's own memsw limit.
pub fn ancestor_memsw(
    victim: &CgroupRef,
    stats: &MemoryStats,
    victim_memsw: Option<u64>,
    mut memsw_limit_of: impl FnMut(&str) -> Option<u64>,
) -> AncestorMemsw {
    let Some(limit) = stats.hierarchical_memsw_limit else {
        return AncestorMemsw::NotBinding;
    };
    if stats.memsw_limit.is_some_and(|own| own <= limit) {
        return AncestorMemsw::NotBinding;
    }
    let reached = victim_memsw.is_some_and(|m| m.saturating_add(MEMSW_SLACK_BYTES) >= limit);
    let holder = victim.path.as_deref().and_then(|path| {
        let mut up = path.to_owned();
        let mut depth = 0;
        while let Some(i) = up.rfind('/') {
            up.truncate(i.max(1));
            depth += 1;
            if memsw_limit_of(&up) == Some(limit) {
                return Some((up, depth));
            }
            if up == "/" {
                break;
            }
        }
        None
    });
    match (reached, holder) {
        (true, Some((path, depth))) => AncestorMemsw::Hit(OomCgroup {
            cgroup: CgroupRef {
                id: None,
                path: Some(path),
                source: victim.source,
            },
            usage_bytes: victim_memsw.unwrap_or(0),
            limit_bytes: limit,
            limit: LimitKind::MemorySwap,
            depth,
        }),
        _ => AncestorMemsw::MayHaveHit { limit_bytes: limit },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::kill::PathSource;

    const MIB: u64 = 1 << 20;

    fn cg() -> CgroupRef {
        CgroupRef {
            id: Some(7),
            path: Some("/a".into()),
            source: PathSource::Kernel,
        }
    }

    fn stats(memsw_limit: Option<u64>) -> MemoryStats {
        MemoryStats {
            memsw_limit,
            ..MemoryStats::default()
        }
    }

    fn swap(bytes: u64) -> Breakdown {
        Breakdown {
            swap: Some(bytes),
            ..Breakdown::default()
        }
    }

    /// [`judge`] on the victim's cgroup [`cg`] using 56 MiB of memory and `swapped` of swap,
    /// no OOM cgroup found by the walk: the OOM cgroup it decides on, if any.
    fn judge_victim(s: &MemoryStats, swapped: u64, kernel_decided: bool) -> Option<OomCgroup> {
        let mut oom = None;
        judge(
            &mut oom,
            Some(&cg()),
            Some(s),
            Some(swap(swapped)),
            Some(56 * MIB),
            kernel_decided,
        );
        oom
    }

    /// Memory below its limit while swap filled the rest: the walk found no cgroup at its
    /// limit, and without this the kill read as global.
    #[test]
    fn memsw_full_with_memory_below_its_limit_is_the_victims_memcg_oom() {
        let o = judge_victim(&stats(Some(96 * MIB)), 40 * MIB, false).expect("an OOM cgroup");
        assert_eq!(
            (o.limit, o.usage_bytes, o.limit_bytes),
            (LimitKind::MemorySwap, 96 * MIB, 96 * MIB)
        );
    }

    #[test]
    fn room_left_under_memsw_changes_nothing() {
        let s = stats(Some(96 * MIB));
        assert!(judge_victim(&s, 10 * MIB, false).is_none());
        // Nor without a memsw limit, nor when the kernel decided it was global.
        assert!(judge_victim(&stats(None), 40 * MIB, false).is_none());
        assert!(judge_victim(&s, 40 * MIB, true).is_none());
    }

    #[test]
    fn an_ancestors_memsw_limit_is_found_or_said_unknown() {
        let victim = CgroupRef {
            id: Some(9),
            path: Some("/a/b/c".into()),
            source: PathSource::Kernel,
        };
        let stats = MemoryStats {
            hierarchical_memsw_limit: Some(96 * MIB),
            ..MemoryStats::default()
        };
        let limits = |p: &str| (p == "/a").then_some(96 * MIB);
        match ancestor_memsw(&victim, &stats, Some(96 * MIB - 4096), limits) {
            AncestorMemsw::Hit(o) => {
                assert_eq!(o.cgroup.path.as_deref(), Some("/a"));
                assert_eq!(
                    (o.depth, o.limit, o.limit_bytes),
                    (2, LimitKind::MemorySwap, 96 * MIB)
                );
            }
            other => panic!("{other:?}"),
        }
        // Siblings may hold the rest: not known.
        assert_eq!(
            ancestor_memsw(&victim, &stats, Some(40 * MIB), limits),
            AncestorMemsw::MayHaveHit {
                limit_bytes: 96 * MIB
            }
        );
        assert_eq!(
            ancestor_memsw(&victim, &stats, None, limits),
            AncestorMemsw::MayHaveHit {
                limit_bytes: 96 * MIB
            }
        );
        // Its own limit is the tightest: memsw_limit_hit's case, not this one.
        let own = MemoryStats {
            memsw_limit: Some(96 * MIB),
            ..stats.clone()
        };
        assert_eq!(
            ancestor_memsw(&victim, &own, Some(96 * MIB), limits),
            AncestorMemsw::NotBinding
        );
        // No memsw limit anywhere.
        assert_eq!(
            ancestor_memsw(&victim, &MemoryStats::default(), Some(96 * MIB), limits),
            AncestorMemsw::NotBinding
        );
    }
}
