//! The OOM kill event as memtrace reports it: the kernel record, plus what userspace adds at
//! once: wall time, sequence number, cgroup paths, a post-kill snapshot of the cgroup stats,
//! container attribution, the badness score and a verdict.

use std::{sync::Arc, time::SystemTime};

use crate::{
    cgroup::reconcile::{CgroupKey, KillCounts},
    cgroup::{CgroupPaths, MemoryStats, StatsError, paths::proc_memory_cgroup, read_memory_stats},
    charges::warnings::RecentKills,
    enrich::at_kill::Breakdown,
    enrich::attribution::Attribution,
    enrich::diagnosis::{self, Badness, Facts, Verdict},
    enrich::memsw::{LimitKind, memsw_limit_hit},
    enrich::names::{NameSources, Namer},
    enrich::next_in_line::{self, NextInLine},
    kernel::clock,
    kernel::records::{HookSource, OomContext, VictimRecord},
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
    /// The OOM episode this kill belongs to (set by the daemon, which sees every kill).
    pub episode: Option<crate::enrich::episodes::EpisodeRef>,
    /// Post-kill snapshot of the OOM cgroup (or, in a global OOM, the victim's cgroup).
    pub snapshot: Option<Snapshot>,
    pub attribution: Option<Attribution>,
    /// The OOM killer's own view (oom_kill_process hook, where the kernel allows it).
    pub context: Option<OomContext>,
    /// The top charging stacks of the OOM cgroup in the seconds before the kill (filled by
    /// the daemon, which owns the charge maps).
    pub hotspots: Vec<crate::charges::stacks::HotStack>,
    pub badness: Option<Badness>,
    pub verdict: Verdict,
    pub trigger_pid: u32,
    pub trigger_tid: u32,
    pub trigger_comm: String,
    pub trigger_cgroup: Option<CgroupRef>,
    /// Marked as a victim while already exiting: the kernel sent no kill.
    pub victim_exiting: bool,
    pub read_error: bool,
}

/// The largest page-counter value means "no limit" (PAGE_COUNTER_MAX).
fn limit_bytes(pages: u64, page_size: u64) -> Option<u64> {
    let bytes = pages.checked_mul(page_size)?;
    (bytes < (1 << 62)).then_some(bytes)
}

#[derive(Debug, Clone)]
pub struct EnrichOptions {
    /// Working-set alert threshold as a fraction of the limit, for the verdict.
    pub ws_alert_ratio: f64,
    /// Where container names are looked up.
    pub names: NameSources,
}

impl Default for EnrichOptions {
    fn default() -> Self {
        Self {
            ws_alert_ratio: 0.9,
            names: NameSources::default(),
        }
    }
}

/// Builds [`OomKill`]s; owns what enrichment needs across events.
pub struct Enricher {
    paths: Option<CgroupPaths>,
    page_size: u64,
    seq: u64,
    opts: EnrichOptions,
    /// Cgroup -> container and names, kept after the container is gone.
    namer: Namer,
    /// Recent oom_kill_process records, waiting for their victim.
    contexts: Vec<OomContext>,
    /// Kills reported per victim cgroup incarnation, and in all (exiting victims excluded),
    /// for reconciliation.
    pub kills: KillCounts,
    /// The last kill per cgroup, for pre-OOM warnings that would come too late.
    pub recent: RecentKills,
}

impl Enricher {
    pub fn new(paths: Option<CgroupPaths>, opts: EnrichOptions) -> Self {
        // SAFETY: sysconf has no preconditions.
        let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        Self {
            paths,
            page_size,
            seq: 0,
            namer: Namer::new(opts.names.clone()),
            opts,
            contexts: Vec::new(),
            kills: KillCounts::default(),
            recent: RecentKills::default(),
        }
    }

    /// Keeps an oom_kill_process record until the victim it chose is reported.
    pub fn note_context(&mut self, c: OomContext) {
        // A context's victim follows it within the same OOM invocation; older ones are stale.
        let now = c.ktime_boot_ns;
        self.contexts
            .retain(|old| now.saturating_sub(old.ktime_boot_ns) < 10_000_000_000);
        if self.contexts.len() >= 64 {
            self.contexts.remove(0);
        }
        self.contexts.push(c);
    }

    fn take_context(&mut self, tgid: u32) -> Option<OomContext> {
        let i = self.contexts.iter().rposition(|c| c.chosen_tgid == tgid)?;
        Some(self.contexts.remove(i))
    }

    pub fn paths(&self) -> Option<&CgroupPaths> {
        self.paths.as_ref()
    }

    pub fn paths_mut(&mut self) -> Option<&mut CgroupPaths> {
        self.paths.as_mut()
    }

    fn cgroup(&mut self, id: Option<u64>, pid: u32) -> Option<CgroupRef> {
        if let Some(id) = id {
            let path = self.paths.as_mut().and_then(|p| p.resolve(id));
            return Some(CgroupRef {
                id: Some(id),
                path,
                source: PathSource::Kernel,
            });
        }
        let paths = self.paths.as_mut()?;
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

    fn snapshot(&self, path: &str) -> Option<Snapshot> {
        let paths = self.paths.as_ref()?;
        let h = paths.hierarchy();
        Some(match read_memory_stats(&h.dir(path), h.version) {
            Ok(s) => Snapshot::Read(Box::new(s)),
            Err(e) => Snapshot::Failed(Arc::new(e)),
        })
    }

    /// What would have avoided the kill (memcg OOMs only): the extra limit the failed charge
    /// needed, and the survivors next in line.
    fn avoid(
        &self,
        oom: &Option<OomCgroup>,
        at: Option<Breakdown>,
        order: Option<i32>,
        victim: u32,
        totalpages: Option<u64>,
    ) -> (Option<u64>, Option<NextInLine>) {
        let Some(oom) = oom else { return (None, None) };
        let page = self.page_size;
        let charge = order
            .and_then(|o| u32::try_from(o).ok())
            .filter(|&o| o < 20)
            .map_or(page, |o| page << o);
        let extra =
            at.and_then(|a| next_in_line::extra_limit_bytes(oom.usage_bytes, oom.limit_bytes, &a, charge));
        let next = match (self.paths.as_ref(), oom.cgroup.path.as_deref(), totalpages) {
            (Some(p), Some(path), Some(total)) => {
                Some(next_in_line::rank(&p.hierarchy().dir(path), victim, total, page))
            }
            _ => None,
        };
        (extra, next)
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
        let context = self.take_context(tgid);
        // The OOM killer's own decision, where oom_kill_process is hooked, wins over the
        // at-limit walk: in a global OOM a cgroup near its limit is a coincidence.
        let kernel_memcg = context.as_ref().map(|c| c.memcg_id);
        let walk = r.oom_memcg.filter(|m| match kernel_memcg {
            Some(Some(id)) => m.id == id,
            Some(None) => false,
            None => true,
        });
        let mut oom_cgroup = walk.and_then(|m| {
            let cgroup = self.cgroup(Some(m.id), 0)?;
            Some(OomCgroup {
                cgroup,
                usage_bytes: m.usage_pages.saturating_mul(page),
                limit_bytes: m.limit_pages.saturating_mul(page),
                limit: LimitKind::Memory,
                depth: m.depth,
            })
        });
        if let (None, Some(Some(id))) = (&oom_cgroup, kernel_memcg)
            && let Some(cgroup) = self.cgroup(Some(id), 0)
        {
            // The kernel named a memcg the walk did not find at its limit (its usage fell
            // before the hook read it, or a memory+swap limit): usage and limit from its files.
            let stats = cgroup.path.as_deref().and_then(|p| self.snapshot(p));
            let stats = stats.as_ref().and_then(Snapshot::stats);
            oom_cgroup = Some(OomCgroup {
                cgroup,
                usage_bytes: stats.map_or(0, |s| s.usage),
                limit_bytes: stats.and_then(|s| s.memsw_limit.or(s.limit)).unwrap_or(0),
                limit: LimitKind::of_files(stats),
                depth: 0,
            });
        }
        let victim_path = cgroup.as_ref().and_then(|c| c.path.clone());
        let oom_path = oom_cgroup.as_ref().and_then(|o| o.cgroup.path.as_deref());
        self.recent.note(
            victim_path.as_deref().into_iter().chain(oom_path),
            r.ktime_boot_ns,
        );
        let snap_path = oom_cgroup
            .as_ref()
            .and_then(|o| o.cgroup.path.clone())
            .or_else(|| victim_path.clone());
        let snapshot = snap_path.as_deref().and_then(|p| self.snapshot(p));
        let memsw_stats = snapshot.as_ref().and_then(Snapshot::stats);
        memsw_limit_hit(
            &mut oom_cgroup,
            cgroup.as_ref(),
            memsw_stats,
            &r,
            page,
            kernel_memcg.is_some(),
        );
        let attribution = victim_path.as_deref().and_then(|p| self.namer.attribute(p));
        if !r.victim_exiting {
            self.kills.add(victim_path.clone().map(|path| CgroupKey {
                path,
                id: cgroup.as_ref().and_then(|c| c.id),
            }));
        }

        let badness = r.rss_kb.map(|rss| {
            // Saturating: the record's counters are not trusted to be sane (fuzz/oom_record).
            let rss_pages = kb(rss.anon.saturating_add(rss.file).saturating_add(rss.shmem)) / page;
            let totalpages = match (&context, &oom_cgroup) {
                // The kernel's own, where oom_kill_process is hooked.
                (Some(c), _) if c.totalpages > 0 => c.totalpages,
                (_, Some(o)) => {
                    o.limit_bytes / page
                        + swap_pages_usable(snapshot.as_ref().and_then(Snapshot::stats), page)
                }
                (_, None) => machine_pages(page),
            };
            diagnosis::badness(
                rss_pages,
                r.swap_pages.unwrap_or(0),
                r.pgtables_kb.map_or(0, |k| kb(k) / page),
                r.oom_score_adj.unwrap_or(0),
                totalpages,
            )
        });
        let (extra_limit_bytes, next_in_line) = self.avoid(
            &oom_cgroup,
            r.stats.oom.and_then(|p| Breakdown::at_kill(&p, page)),
            context.as_ref().map(|c| c.order),
            tgid,
            badness.map(|b| b.totalpages),
        );
        let oom_path = oom_cgroup
            .as_ref()
            .map(|o| o.cgroup.path.as_deref().unwrap_or("?"));
        let cgroup_at_kill = r.stats.victim.and_then(|p| Breakdown::at_kill(&p, page));
        let oom_cgroup_at_kill = r.stats.oom.and_then(|p| Breakdown::at_kill(&p, page));
        // The verdict's cgroup: the OOM cgroup, or in a global OOM the victim's own.
        let verdict_at_kill = match &oom_cgroup {
            Some(_) => oom_cgroup_at_kill.as_ref(),
            None => cgroup_at_kill.as_ref(),
        };
        let mut verdict = diagnosis::verdict(&Facts {
            victim_is_trigger: r.trigger_tgid == tgid,
            victim_anon: r.rss_kb.map_or(0, |x| kb(x.anon)),
            victim_shmem: r.rss_kb.map_or(0, |x| kb(x.shmem)),
            oom_cgroup: oom_cgroup
                .as_ref()
                .zip(oom_path)
                .map(|(o, p)| (p, o.usage_bytes, o.limit_bytes)),
            post_kill: snapshot.as_ref().and_then(Snapshot::stats),
            at_kill: verdict_at_kill,
            ws_alert_ratio: self.opts.ws_alert_ratio,
            // The trigger's cgroup alone says nothing about the victim's: without the victim's
            // memcg data (a bystander seen by the plain tracepoint) nor the kernel's decision,
            // no OOM cgroup does not mean a global OOM.
            memcg_unknown: r.oom_memcg.is_none()
                && r.memcg_pages.is_none()
                && r.victim_memcg_id.is_none()
                && context.is_none(),
            kernel_decision: kernel_memcg.map(|m| m.is_some()),
        });
        if let Some(o) = &oom_cgroup {
            o.limit.name_in(&mut verdict.summary, o.limit_bytes);
        }
        if let Some(top) = next_in_line.as_ref().and_then(|n| n.candidates.first()) {
            verdict.summary.push_str(&format!(
                "; next in line: pid {} ({}, badness {})",
                top.pid, top.comm, top.badness.points
            ));
        }
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
            oom_cgroup,
            cgroup_at_kill,
            oom_cgroup_at_kill,
            extra_limit_bytes,
            next_in_line,
            episode: None,
            snapshot,
            attribution,
            context,
            hotspots: Vec::new(),
            badness,
            verdict,
            trigger_pid: r.trigger_tgid,
            trigger_tid: r.trigger_pid,
            trigger_comm: r.trigger_comm,
            trigger_cgroup,
            victim_exiting: r.victim_exiting,
            read_error: r.read_error,
        }
    }
}

/// Swap the memcg may use, for totalpages (mm/memcontrol.c mem_cgroup_get_max): min(swap
/// limit, swap on the machine). Zero without swap.
fn swap_pages_usable(stats: Option<&MemoryStats>, page: u64) -> u64 {
    let total = meminfo_kb("SwapTotal:").unwrap_or(0).saturating_mul(1024) / page;
    let limit = stats.and_then(|s| s.swap_limit).map_or(u64::MAX, |b| b / page);
    total.min(limit)
}

/// RAM + swap in pages: totalpages of a global OOM.
fn machine_pages(page: u64) -> u64 {
    let kb = meminfo_kb("MemTotal:")
        .unwrap_or(0)
        .saturating_add(meminfo_kb("SwapTotal:").unwrap_or(0));
    kb.saturating_mul(1024) / page
}

fn meminfo_kb(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
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
    use crate::kernel::records::{OomMemcg, RssKb};

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
            oom_memcg: Some(OomMemcg {
                id: 5,
                usage_pages: 16_384,
                limit_pages: 16_384,
                depth: 0,
            }),
            victim_exiting: false,
            read_error: false,
            stats: Box::default(),
        }
    }

    #[test]
    fn units_sequence_and_verdict() {
        let mut e = Enricher::new(None, EnrichOptions::default());
        let k = e.enrich(record());
        assert_eq!((k.seq, k.pid, k.tid), (1, 10, 11));
        assert_eq!(k.anon_rss_bytes, Some(64 * 1024));
        assert_eq!(k.pgtables_bytes, Some(8 * 1024));
        assert_eq!(k.swap_bytes, Some(3 * e.page_size));
        assert_eq!(k.memcg_usage_bytes, Some(16_384 * e.page_size));
        assert_eq!(k.memcg_limit_bytes, None, "PAGE_COUNTER_MAX is no limit");
        assert!(k.verdict.victim_is_trigger);
        assert_eq!(e.enrich(record()).seq, 2);
    }

    /// A cgroup file that cannot be read (here memory.stat is a directory: EISDIR, as EACCES
    /// would be for an unprivileged reader) or a cgroup that is gone: the kill is still
    /// reported in full, and the snapshot says what failed.
    #[test]
    fn unreadable_or_missing_cgroup_files_still_give_the_kill() {
        use std::os::unix::fs::MetadataExt as _;

        use crate::cgroup::{CgroupVersion, MemoryHierarchy};

        let root = tempfile::tempdir().expect("tempdir");
        let cg = root.path().join("cg");
        std::fs::create_dir_all(cg.join("memory.stat")).expect("mkdir");
        std::fs::write(cg.join("memory.usage_in_bytes"), "4096\n").expect("write");
        let id = std::fs::metadata(&cg).expect("stat").ino();
        let paths = CgroupPaths::new(MemoryHierarchy {
            version: CgroupVersion::V1,
            root: root.path().to_owned(),
        });
        let mut e = Enricher::new(Some(paths), EnrichOptions::default());
        let mut r = record();
        r.victim_memcg_id = Some(id);
        r.oom_memcg = None;
        let k = e.enrich(r.clone());
        assert_eq!(k.cgroup.as_ref().and_then(|c| c.path.as_deref()), Some("/cg"));
        match &k.snapshot {
            Some(Snapshot::Failed(err)) => assert!(err.to_string().contains("memory.stat"), "{err}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(k.anon_rss_bytes, Some(64 * 1024));
        let json = crate::output::json::event(&k, "h", 0);
        assert!(json["memtrace.snapshot.error"].is_string(), "{json}");

        std::fs::remove_dir_all(&cg).expect("rm");
        let k = e.enrich(r);
        assert_eq!(k.cgroup.and_then(|c| c.path).as_deref(), Some("/cg"), "path kept");
        match &k.snapshot {
            Some(Snapshot::Failed(err)) => {
                assert!(matches!(**err, StatsError::Vanished { .. }), "{err}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// Found by fuzz/oom_record: rss counters near u64::MAX overflowed the badness sum (a
    /// panic in debug builds, a wrapped score in release).
    #[test]
    fn huge_rss_counters_saturate() {
        let mut e = Enricher::new(None, EnrichOptions::default());
        let mut r = record();
        r.rss_kb = Some(RssKb {
            total_vm: u64::MAX,
            anon: u64::MAX - 10,
            file: 1 << 40,
            shmem: u64::MAX,
        });
        let k = e.enrich(r);
        let b = k.badness.expect("badness");
        assert_eq!(b.rss_pages, u64::MAX / e.page_size);
        assert_eq!(b.points, (b.rss_pages + b.swap_pages + b.pgtables_pages) as i64);
        assert_eq!(k.anon_rss_bytes, Some(u64::MAX));
    }
}
