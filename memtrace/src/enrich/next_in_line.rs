//! What would have avoided the kill, and what dies if it happens again: the least extra limit
//! that would have let the failed charge succeed, and the OOM cgroup's surviving tasks ranked
//! by the badness the kernel would give them now (mm/oom_kill.c `oom_badness()`).

use std::path::Path;

use serde::Serialize;

use crate::enrich::{
    at_kill::Breakdown,
    diagnosis::{self, Badness, OOM_SCORE_ADJ_MIN},
};

/// How many survivors are reported.
pub const NEXT_IN_LINE: usize = 3;

/// A surviving task of the OOM cgroup and the score the OOM killer would give it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub pid: u32,
    pub comm: String,
    pub oom_score_adj: i32,
    pub badness: Badness,
}

/// The OOM cgroup's tasks as the OOM killer would rank them after this kill.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct NextInLine {
    /// Highest badness first, at most [`NEXT_IN_LINE`].
    pub candidates: Vec<Candidate>,
    /// Tasks with `oom_score_adj` -1000: never chosen.
    pub exempt: u32,
    /// Tasks seen in the cgroup and its descendants (the victim excluded).
    pub tasks: u32,
}

/// The least extra limit with which the charge that failed would have fit without reclaiming
/// anything more: usage at the kill minus reclaimable page cache (active + inactive file, read
/// at the kill), plus the charge (2^order pages, one page when the order is not known), over
/// the limit. A lower bound: a workload that keeps growing needs more.
pub fn extra_limit_bytes(usage: u64, limit: u64, at: &Breakdown, charge_bytes: u64) -> Option<u64> {
    let reclaimable = at.active_file?.saturating_add(at.inactive_file?);
    Some(
        usage
            .saturating_sub(reclaimable)
            .saturating_add(charge_bytes)
            .saturating_sub(limit),
    )
}

/// Ranks the tasks of the cgroup at `dir` (and its descendants), the victim `exclude` left
/// out. `totalpages` is the OOM domain's size, as for the victim's own badness.
pub fn rank(dir: &Path, exclude: u32, totalpages: u64, page_size: u64) -> NextInLine {
    let mut out = NextInLine::default();
    let mut all = Vec::new();
    for pid in tasks(dir, 0) {
        if pid == exclude {
            continue;
        }
        let Some(c) = candidate(pid, totalpages, page_size) else {
            continue; // gone, or a zombie without an mm: not a candidate
        };
        out.tasks += 1;
        if c.oom_score_adj == OOM_SCORE_ADJ_MIN {
            out.exempt += 1;
        } else {
            all.push(c);
        }
    }
    all.sort_by(|a, b| b.badness.points.cmp(&a.badness.points).then(a.pid.cmp(&b.pid)));
    all.truncate(NEXT_IN_LINE);
    out.candidates = all;
    out
}

/// Every process (tgid) in `dir` and below: `cgroup.procs` of each directory.
fn tasks(dir: &Path, depth: u32) -> Vec<u32> {
    let mut pids: Vec<u32> = crate::pseudo_fs::read(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    if depth < 16
        && let Ok(entries) = std::fs::read_dir(dir)
    {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(tasks(&e.path(), depth + 1));
            }
        }
    }
    pids
}

/// `oom_badness()` from /proc: rss (anon + file + shmem) + swap entries + page-table pages,
/// plus `oom_score_adj` × totalpages / 1000.
fn candidate(pid: u32, totalpages: u64, page_size: u64) -> Option<Candidate> {
    let status = crate::pseudo_fs::read(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    let pages = |v: u64| v.saturating_mul(1024) / page_size;
    let rss = kb("RssAnon:")?
        .saturating_add(kb("RssFile:")?)
        .saturating_add(kb("RssShmem:")?);
    let adj: i32 = crate::pseudo_fs::read(format!("/proc/{pid}/oom_score_adj"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = status
        .lines()
        .find_map(|l| l.strip_prefix("Name:"))
        .map_or_else(String::new, |n| n.trim().to_owned());
    Some(Candidate {
        pid,
        comm,
        oom_score_adj: adj,
        badness: diagnosis::badness(
            pages(rss),
            pages(kb("VmSwap:").unwrap_or(0)),
            pages(kb("VmPTE:").unwrap_or(0)),
            adj,
            totalpages,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_limit_is_what_the_charge_lacked() {
        let mib = 1u64 << 20;
        let at = Breakdown {
            active_file: Some(mib),
            inactive_file: Some(mib),
            ..Breakdown::default()
        };
        // 64 MiB used, 2 MiB of it reclaimable page cache: a 4 KiB charge fit.
        assert_eq!(extra_limit_bytes(64 * mib, 64 * mib, &at, 4096), Some(0));
        // 66 MiB of unreclaimable memory against 64 MiB, and a 2 MiB THP charge.
        assert_eq!(extra_limit_bytes(68 * mib, 64 * mib, &at, 2 * mib), Some(4 * mib));
        assert_eq!(extra_limit_bytes(1, 1, &Breakdown::default(), 1), None);
    }

    /// This test process itself is ranked with its own /proc numbers.
    #[test]
    fn ranks_this_process() {
        let me = std::process::id();
        let c = candidate(me, 1_000_000, 4096).expect("own /proc");
        assert!(c.badness.rss_pages > 0);
        assert_eq!(c.badness.totalpages, 1_000_000);
    }
}
