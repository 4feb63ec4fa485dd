//! The OOM kill event as memtrace reports it: the kernel record, plus what userspace adds at
//! once: wall time, sequence number, cgroup paths, a post-kill snapshot of the cgroup stats,
//! container attribution, the badness score, a verdict, the charging stacks before it and its
//! OOM episode. Built, all of it, by [`crate::enrich::enricher::Enricher`].

use std::{path::PathBuf, sync::Arc, time::SystemTime};

use crate::{
    cgroup::{MemoryStats, StatsError},
    charges::stacks::HotStack,
    enrich::at_kill::Breakdown,
    enrich::attribution::Attribution,
    enrich::diagnosis::{Badness, Verdict},
    enrich::episodes::{EpisodeRef, EpisodeSummary},
    enrich::memsw::LimitKind,
    enrich::next_in_line::NextInLine,
    kernel::records::{HookSource, OomContext},
};

/// Where a cgroup path came from: the kernel's record (exact) or /proc after the fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathSource {
    Kernel,
    Procfs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRef {
    pub id: Option<u64>,
    /// Relative to the memory hierarchy's root; `None` when the id is unknown and the cgroup
    /// was gone before memtrace first saw it.
    pub path: Option<String>,
    pub source: PathSource,
}

/// The cgroup that hit its limit, with its usage and limit read in the kernel at the kill.
#[derive(Debug, Clone, PartialEq)]
pub struct OomCgroup {
    pub cgroup: CgroupRef,
    pub usage_bytes: u64,
    pub limit_bytes: u64,
    /// Which of its limits: memory, or (cgroup v1) memory+swap.
    pub limit: LimitKind,
    /// Levels above the victim's cgroup (0: the victim's own).
    pub depth: u32,
}

/// Stats read just after the kill, or why they could not be.
#[derive(Debug, Clone)]
pub enum Snapshot {
    Read(Box<MemoryStats>),
    /// Typed (`StatsError::Vanished`: removed with its victim); shared, as kills are cloned.
    Failed(Arc<StatsError>),
}

// By meaning: two failures are the same when they say the same (io::Error has no PartialEq).
impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Read(a), Self::Read(b)) => a == b,
            (Self::Failed(a), Self::Failed(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

impl Snapshot {
    pub fn stats(&self) -> Option<&MemoryStats> {
        match self {
            Self::Read(s) => Some(s),
            Self::Failed(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OomKill {
    pub seq: u64,
    pub time: SystemTime,
    pub ktime_boot_ns: u64,
    pub hook: HookSource,
    /// Process id (tgid) and thread id of the victim.
    pub pid: u32,
    pub tid: u32,
    pub comm: Option<String>,
    pub uid: Option<u32>,
    pub oom_score_adj: Option<i32>,
    pub total_vm_bytes: Option<u64>,
    pub anon_rss_bytes: Option<u64>,
    pub file_rss_bytes: Option<u64>,
    pub shmem_rss_bytes: Option<u64>,
    pub swap_bytes: Option<u64>,
    pub pgtables_bytes: Option<u64>,
    pub cgroup: Option<CgroupRef>,
    /// The victim memcg's usage and limit in bytes, read in the kernel at the kill.
    pub memcg_usage_bytes: Option<u64>,
    pub memcg_limit_bytes: Option<u64>,
    pub oom_cgroup: Option<OomCgroup>,
    /// The memory breakdown of the victim's cgroup and of the OOM cgroup, read in the kernel
    /// at the kill (hierarchical, as fresh as the kernel's last stats flush).
    pub cgroup_at_kill: Option<Breakdown>,
    pub oom_cgroup_at_kill: Option<Breakdown>,
    /// The least extra limit the OOM cgroup needed for the failed charge (a lower bound).
    pub extra_limit_bytes: Option<u64>,
    /// The OOM cgroup's surviving tasks, ranked as the OOM killer would rank them now.
    pub next_in_line: Option<NextInLine>,
    /// The OOM episode this kill belongs to (exiting victims have none).
    pub episode: Option<EpisodeRef>,
    /// Post-kill snapshot of the OOM cgroup (or, in a global OOM, the victim's cgroup).
    pub snapshot: Option<Snapshot>,
    pub attribution: Option<Attribution>,
    /// The OOM killer's own view (oom_kill_process hook, where the kernel allows it).
    pub context: Option<OomContext>,
    /// The top charging stacks of the OOM cgroup in the seconds before the kill.
    pub hotspots: Vec<HotStack>,
    /// Where the flame graph of `hotspots` is written (`charges.kill_flamegraph_dir`), drawn
    /// after the event is out.
    pub flamegraph: Option<PathBuf>,
    pub badness: Option<Badness>,
    pub verdict: Verdict,
    pub trigger_pid: u32,
    pub trigger_tid: u32,
    pub trigger_comm: String,
    pub trigger_cgroup: Option<CgroupRef>,
    /// Marked as a victim while already exiting: the kernel sent no kill.
    pub victim_exiting: bool,
    pub read_error: bool,
    /// Its file reads (snapshot, names, paths unknown so far, next in line) were not done
    /// within the budget: sent without them.
    pub late: bool,
}

/// What the enrich stage hands on: the kill, and the episode its kill closed (an older one in
/// the same OOM domain, quiet for long enough), to be reported first.
#[derive(Debug)]
pub struct Enriched {
    pub kill: OomKill,
    pub ended_episode: Option<EpisodeSummary>,
}
