//! cgroup v1 memory+swap limits: which limit a memcg OOM hit, memory or memory+swap.

use crate::{
    cgroup::MemoryStats,
    enrich::{
        at_kill::Breakdown,
        kill::{CgroupRef, OomCgroup},
    },
    kernel::records::VictimRecord,
};

/// The counter whose limit a memcg OOM hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// `memory.max` / v1 `memory.limit_in_bytes`.
    Memory,
    /// v1 `memory.memsw.limit_in_bytes`: memory and swap together.
    MemorySwap,
}

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

/// cgroup v1 memory+swap: `try_charge_memcg` charges `memory.memsw` before `memory`
/// (mm/memcontrol.c), so when memory plus swap read at the kill was at the memsw limit, that
/// is the limit the failed charge hit. The in-kernel walk looks at the memory counter only: a
/// cgroup whose memory was below its limit while swap filled the rest was not found at all,
/// and the kill looked global. Judged on the OOM cgroup (or, when the walk found none, the
/// victim's own cgroup) with numbers from the kill; ancestors' memsw limits are not checked.
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

    /// Memory below its limit while swap filled the rest: the walk found no cgroup at its
    /// limit, and without this the kill read as global.
    #[test]
    fn memsw_full_with_memory_below_its_limit_is_the_victims_memcg_oom() {
        let mut oom = None;
        let s = stats(Some(96 * MIB));
        judge(
            &mut oom,
            Some(&cg()),
            Some(&s),
            Some(swap(40 * MIB)),
            Some(56 * MIB),
            false,
        );
        let o = oom.expect("an OOM cgroup");
        assert_eq!(
            (o.limit, o.usage_bytes, o.limit_bytes),
            (LimitKind::MemorySwap, 96 * MIB, 96 * MIB)
        );
    }

    #[test]
    fn room_left_under_memsw_changes_nothing() {
        let mut oom = None;
        let s = stats(Some(96 * MIB));
        judge(
            &mut oom,
            Some(&cg()),
            Some(&s),
            Some(swap(10 * MIB)),
            Some(56 * MIB),
            false,
        );
        assert!(oom.is_none());
        // Nor without a memsw limit, nor when the kernel decided it was global.
        judge(
            &mut oom,
            Some(&cg()),
            Some(&stats(None)),
            Some(swap(40 * MIB)),
            Some(56 * MIB),
            false,
        );
        assert!(oom.is_none());
        judge(
            &mut oom,
            Some(&cg()),
            Some(&s),
            Some(swap(40 * MIB)),
            Some(56 * MIB),
            true,
        );
        assert!(oom.is_none());
    }
}
