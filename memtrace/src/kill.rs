//! The OOM kill event as memtrace reports it: the kernel record, plus what userspace adds at
//! once (wall time, sequence number, the cgroup's path).

use std::time::SystemTime;

use crate::{
    cgroup::{CgroupPaths, paths::proc_memory_cgroup},
    clock,
    event::{HookSource, VictimRecord},
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
    pub trigger_pid: u32,
    pub trigger_tid: u32,
    pub trigger_comm: String,
    pub trigger_cgroup: Option<CgroupRef>,
    pub read_error: bool,
}

/// The largest page-counter value means "no limit" (PAGE_COUNTER_MAX).
fn limit_bytes(pages: u64, page_size: u64) -> Option<u64> {
    let bytes = pages.checked_mul(page_size)?;
    (bytes < (1 << 62)).then_some(bytes)
}

/// Builds [`OomKill`]s; owns what enrichment needs across events.
pub struct Enricher {
    paths: Option<CgroupPaths>,
    page_size: u64,
    seq: u64,
}

impl Enricher {
    pub fn new(paths: Option<CgroupPaths>) -> Self {
        // SAFETY: sysconf has no preconditions.
        let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        Self {
            paths,
            page_size,
            seq: 0,
        }
    }

    fn cgroup(&mut self, id: Option<u64>, pid: u32) -> Option<CgroupRef> {
        let paths = self.paths.as_mut()?;
        if let Some(id) = id {
            return Some(CgroupRef {
                id: Some(id),
                path: paths.resolve(id),
                source: PathSource::Kernel,
            });
        }
        // No id from the kernel (plain tracepoint, victim is not the current task): ask /proc
        // while the victim still exists. A task already in do_exit() has been moved to the root
        // css_set (kernel/cgroup/cgroup.c cgroup_exit), so "/" is not trusted: better no path
        // than the wrong one.
        let version = paths.hierarchy().version;
        let path = proc_memory_cgroup(pid, version).filter(|p| p != "/");
        Some(CgroupRef {
            id: None,
            path,
            source: PathSource::Procfs,
        })
    }

    pub fn enrich(&mut self, r: VictimRecord) -> OomKill {
        self.seq += 1;
        let tgid = r
            .victim_tgid
            .or_else(|| proc_tgid(r.victim_pid))
            .unwrap_or(r.victim_pid);
        let kb = |v: u64| v.saturating_mul(1024);
        let page = self.page_size;
        let (usage, limit) = match r.memcg_pages {
            Some((u, l)) => (u.checked_mul(page), limit_bytes(l, page)),
            None => (None, None),
        };
        let cgroup = self.cgroup(r.victim_memcg_id, r.victim_pid);
        let trigger_cgroup = self.cgroup(r.trigger_memcg_id, r.trigger_pid);
        OomKill {
            seq: self.seq,
            time: clock::wall_time(r.ktime_boot_ns),
            ktime_boot_ns: r.ktime_boot_ns,
            hook: r.source,
            pid: tgid,
            tid: r.victim_pid,
            comm: r.victim_comm,
            uid: r.victim_uid,
            oom_score_adj: r.oom_score_adj,
            total_vm_bytes: r.rss_kb.map(|x| kb(x.total_vm)),
            anon_rss_bytes: r.rss_kb.map(|x| kb(x.anon)),
            file_rss_bytes: r.rss_kb.map(|x| kb(x.file)),
            shmem_rss_bytes: r.rss_kb.map(|x| kb(x.shmem)),
            swap_bytes: r.swap_pages.map(|p| p.saturating_mul(page)),
            pgtables_bytes: r.pgtables_kb.map(kb),
            cgroup,
            memcg_usage_bytes: usage,
            memcg_limit_bytes: limit,
            trigger_pid: r.trigger_tgid,
            trigger_tid: r.trigger_pid,
            trigger_comm: r.trigger_comm,
            trigger_cgroup,
            read_error: r.read_error,
        }
    }
}

fn proc_tgid(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::RssKb;

    fn record() -> VictimRecord {
        VictimRecord {
            source: HookSource::TpBtf,
            ktime_boot_ns: clock::boot_ns(),
            victim_pid: 11,
            victim_tgid: Some(10),
            victim_comm: Some("python3".into()),
            victim_uid: Some(0),
            victim_memcg_id: None,
            trigger_pid: 11,
            trigger_tgid: 10,
            trigger_comm: "python3".into(),
            trigger_memcg_id: None,
            rss_kb: Some(RssKb {
                total_vm: 100,
                anon: 64,
                file: 2,
                shmem: 1,
            }),
            swap_pages: Some(3),
            pgtables_kb: Some(8),
            oom_score_adj: Some(0),
            memcg_pages: Some((16_384, u64::MAX / 4096)),
            read_error: false,
        }
    }

    #[test]
    fn units_and_sequence() {
        let mut e = Enricher::new(None);
        let k = e.enrich(record());
        assert_eq!((k.seq, k.pid, k.tid), (1, 10, 11));
        assert_eq!(k.anon_rss_bytes, Some(64 * 1024));
        assert_eq!(k.pgtables_bytes, Some(8 * 1024));
        assert_eq!(k.swap_bytes, Some(3 * e.page_size));
        assert_eq!(k.memcg_usage_bytes, Some(16_384 * e.page_size));
        assert_eq!(k.memcg_limit_bytes, None, "PAGE_COUNTER_MAX is no limit");
        assert_eq!(e.enrich(record()).seq, 2);
    }
}
