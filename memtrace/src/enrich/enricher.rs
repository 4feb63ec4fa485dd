//! The enrich stage: one owner of everything a kill event carries. From the kernel's record it
//! builds the [`OomKill`]: cgroup paths, the oom_kill_process context, the post-kill snapshot,
//! the container, the badness score, the verdict and what would have avoided the kill, the
//! charging stacks before it, its OOM episode and where its flame graph goes. What it keeps
//! across events (path and name caches, contexts waiting for their victim, open episodes) is
//! its own; the counts the daemon reconciles are not (commands/watch).

use std::{path::PathBuf, sync::Arc};

use crate::{
    cgroup::{CgroupPaths, MemoryStats, paths::proc_memory_cgroup, read_memory_stats},
    charges::worker::ChargeWatch,
    enrich::at_kill::Breakdown,
    enrich::diagnosis::{self, Badness, Facts, Verdict},
    enrich::episodes::{EpisodeSummary, Episodes},
    enrich::kill::{CgroupRef, Enriched, OomCgroup, OomKill, PathSource, Snapshot},
    enrich::memsw::{LimitKind, memsw_limit_hit},
    enrich::names::{NameSources, Namer},
    enrich::next_in_line::{self, NextInLine},
    kernel::clock,
    kernel::records::{OomContext, VictimRecord},
    output::flamegraph,
};

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
    /// Where kill flame graphs are written (`charges.kill_flamegraph_dir`), if anywhere.
    pub flamegraph_dir: Option<PathBuf>,
}

impl Default for EnrichOptions {
    fn default() -> Self {
        Self {
            ws_alert_ratio: 0.9,
            names: NameSources::default(),
            flamegraph_dir: None,
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
    /// The charge worker's window of stacks, for the kill's hotspots.
    charges: Option<ChargeWatch>,
    episodes: Episodes,
}

/// The parts of a kill worked out from more than its record, for [`assemble`].
struct Parts {
    seq: u64,
    tgid: u32,
    cgroup: Option<CgroupRef>,
    trigger_cgroup: Option<CgroupRef>,
    oom_cgroup: Option<OomCgroup>,
    context: Option<OomContext>,
    snapshot: Option<Snapshot>,
    attribution: Option<crate::enrich::attribution::Attribution>,
    badness: Option<Badness>,
    extra_limit_bytes: Option<u64>,
    next_in_line: Option<NextInLine>,
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
            charges: None,
            episodes: Episodes::default(),
        }
    }

    /// Kills get their hotspots from this charge worker's window from now on.
    pub fn with_charges(mut self, charges: Option<ChargeWatch>) -> Self {
        self.charges = charges;
        self
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

    /// Episodes quiet since before `now_ns` (boot time): ended, summarised once.
    pub fn ended_episodes(&mut self, now_ns: u64) -> Vec<EpisodeSummary> {
        self.episodes.ended(now_ns)
    }

    /// The whole kill event of one victim record.
    pub fn enrich(&mut self, r: VictimRecord) -> Enriched {
        let mut kill = self.kill(r);
        if let (Some(cw), Some(paths)) = (self.charges.as_ref(), self.paths.as_ref()) {
            kill.hotspots = cw.kill_context(paths, &kill);
        }
        let ended_episode = self.place_in_episode(&mut kill);
        kill.flamegraph = self
            .opts
            .flamegraph_dir
            .as_deref()
            .filter(|_| !kill.hotspots.is_empty())
            .map(|dir| flamegraph::kill_path(dir, kill.seq, kill.pid));
        Enriched { kill, ended_episode }
    }

    /// Gives the kill its episode (not to exiting victims: no kill was sent); returns the
    /// episode of its OOM domain that had been quiet long enough to end.
    fn place_in_episode(&mut self, kill: &mut OomKill) -> Option<EpisodeSummary> {
        if kill.victim_exiting {
            return None;
        }
        let oom = kill.oom_cgroup.as_ref();
        let freed = [
            kill.anon_rss_bytes,
            kill.file_rss_bytes,
            kill.shmem_rss_bytes,
            kill.swap_bytes,
        ]
        .into_iter()
        .flatten()
        .fold(0u64, u64::saturating_add);
        let (ep, ended) = self.episodes.note(
            oom.and_then(|o| o.cgroup.id).unwrap_or(0),
            oom.and_then(|o| o.cgroup.path.as_deref()),
            kill.cgroup.as_ref().and_then(|c| c.path.as_deref()),
            kill.ktime_boot_ns,
            kill.time,
            freed,
        );
        kill.episode = Some(ep);
        ended
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

    /// The cgroup at its limit. The OOM killer's own decision, where oom_kill_process is
    /// hooked (`kernel_memcg`), wins over the at-limit walk: in a global OOM a cgroup near its
    /// limit is a coincidence.
    fn oom_cgroup(&mut self, r: &VictimRecord, kernel_memcg: Option<Option<u64>>) -> Option<OomCgroup> {
        let page = self.page_size;
        let walk = r.oom_memcg.filter(|m| match kernel_memcg {
            Some(Some(id)) => m.id == id,
            Some(None) => false,
            None => true,
        });
        if let Some(m) = walk {
            return self.cgroup(Some(m.id), 0).map(|cgroup| OomCgroup {
                cgroup,
                usage_bytes: m.usage_pages.saturating_mul(page),
                limit_bytes: m.limit_pages.saturating_mul(page),
                limit: LimitKind::Memory,
                depth: m.depth,
            });
        }
        let cgroup = self.cgroup(Some(kernel_memcg.flatten()?), 0)?;
        // The kernel named a memcg the walk did not find at its limit (its usage fell before
        // the hook read it, or a memory+swap limit): usage and limit from its files.
        let stats = cgroup.path.as_deref().and_then(|p| self.snapshot(p));
        let stats = stats.as_ref().and_then(Snapshot::stats);
        Some(OomCgroup {
            usage_bytes: stats.map_or(0, |s| s.usage),
            limit_bytes: stats.and_then(|s| s.memsw_limit.or(s.limit)).unwrap_or(0),
            limit: LimitKind::of_files(stats),
            depth: 0,
            cgroup,
        })
    }

    /// Everything but the record's own fields, in the order each needs the one before.
    fn kill(&mut self, r: VictimRecord) -> OomKill {
        self.seq += 1;
        let tgid = r
            .victim_tgid
            .or_else(|| proc_tgid(r.victim_pid))
            .unwrap_or(r.victim_pid);
        let cgroup = self.cgroup(r.victim_memcg_id, r.victim_pid);
        let trigger_cgroup = self.cgroup(r.trigger_memcg_id, r.trigger_pid);
        let context = self.take_context(tgid);
        let kernel_memcg = context.as_ref().map(|c| c.memcg_id);
        let mut oom_cgroup = self.oom_cgroup(&r, kernel_memcg);
        let victim_path = cgroup.as_ref().and_then(|c| c.path.clone());
        let snap_path = oom_cgroup
            .as_ref()
            .and_then(|o| o.cgroup.path.clone())
            .or_else(|| victim_path.clone());
        let snapshot = snap_path.as_deref().and_then(|p| self.snapshot(p));
        let stats = snapshot.as_ref().and_then(Snapshot::stats);
        let page = self.page_size;
        memsw_limit_hit(
            &mut oom_cgroup,
            cgroup.as_ref(),
            stats,
            &r,
            page,
            kernel_memcg.is_some(),
        );
        let attribution = victim_path.as_deref().and_then(|p| self.namer.attribute(p));
        let badness = self.badness(&r, context.as_ref(), oom_cgroup.as_ref(), stats);
        let (extra_limit_bytes, next_in_line) = self.avoid(
            oom_cgroup.as_ref(),
            r.stats.oom.and_then(|p| Breakdown::at_kill(&p, page)),
            context.as_ref().map(|c| c.order),
            tgid,
            badness.map(|b| b.totalpages),
        );
        let parts = Parts {
            seq: self.seq,
            tgid,
            cgroup,
            trigger_cgroup,
            oom_cgroup,
            context,
            snapshot,
            attribution,
            badness,
            extra_limit_bytes,
            next_in_line,
        };
        let verdict = self.verdict(&r, &parts);
        assemble(r, parts, verdict, page)
    }

    /// The victim's badness as the OOM killer scored it (mm/oom_kill.c oom_badness).
    fn badness(
        &self,
        r: &VictimRecord,
        context: Option<&OomContext>,
        oom_cgroup: Option<&OomCgroup>,
        stats: Option<&MemoryStats>,
    ) -> Option<Badness> {
        let page = self.page_size;
        let kb = |v: u64| v.saturating_mul(1024);
        let rss = r.rss_kb?;
        // Saturating: the record's counters are not trusted to be sane (fuzz/oom_record).
        let rss_pages = kb(rss.anon.saturating_add(rss.file).saturating_add(rss.shmem)) / page;
        let totalpages = match (context, oom_cgroup) {
            // The kernel's own, where oom_kill_process is hooked.
            (Some(c), _) if c.totalpages > 0 => c.totalpages,
            (_, Some(o)) => o.limit_bytes / page + swap_pages_usable(stats, page),
            (_, None) => machine_pages(page),
        };
        Some(diagnosis::badness(
            rss_pages,
            r.swap_pages.unwrap_or(0),
            r.pgtables_kb.map_or(0, |k| kb(k) / page),
            r.oom_score_adj.unwrap_or(0),
            totalpages,
        ))
    }

    /// What would have avoided the kill (memcg OOMs only): the extra limit the failed charge
    /// needed, and the survivors next in line.
    fn avoid(
        &self,
        oom: Option<&OomCgroup>,
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

    /// The verdict, on the OOM cgroup or in a global OOM the victim's own.
    fn verdict(&self, r: &VictimRecord, p: &Parts) -> Verdict {
        let page = self.page_size;
        let kb = |v: u64| v.saturating_mul(1024);
        let oom_path = p
            .oom_cgroup
            .as_ref()
            .map(|o| o.cgroup.path.as_deref().unwrap_or("?"));
        let at_kill = match &p.oom_cgroup {
            Some(_) => r.stats.oom,
            None => r.stats.victim,
        }
        .and_then(|pages| Breakdown::at_kill(&pages, page));
        let kernel_memcg = p.context.as_ref().map(|c| c.memcg_id);
        let mut verdict = diagnosis::verdict(&Facts {
            victim_is_trigger: r.trigger_tgid == p.tgid,
            victim_anon: r.rss_kb.map_or(0, |x| kb(x.anon)),
            victim_shmem: r.rss_kb.map_or(0, |x| kb(x.shmem)),
            oom_cgroup: p
                .oom_cgroup
                .as_ref()
                .zip(oom_path)
                .map(|(o, path)| (path, o.usage_bytes, o.limit_bytes)),
            post_kill: p.snapshot.as_ref().and_then(Snapshot::stats),
            at_kill: at_kill.as_ref(),
            ws_alert_ratio: self.opts.ws_alert_ratio,
            // The trigger's cgroup alone says nothing about the victim's: without the victim's
            // memcg data (a bystander seen by the plain tracepoint) nor the kernel's decision,
            // no OOM cgroup does not mean a global OOM.
            memcg_unknown: r.oom_memcg.is_none()
                && r.memcg_pages.is_none()
                && r.victim_memcg_id.is_none()
                && p.context.is_none(),
            kernel_decision: kernel_memcg.map(|m| m.is_some()),
        });
        if let Some(o) = &p.oom_cgroup {
            o.limit.name_in(&mut verdict.summary, o.limit_bytes);
        }
        if let Some(top) = p.next_in_line.as_ref().and_then(|n| n.candidates.first()) {
            verdict.summary.push_str(&format!(
                "; next in line: pid {} ({}, badness {})",
                top.pid, top.comm, top.badness.points
            ));
        }
        verdict
    }
}

/// The kill from its record (units converted) and the parts worked out for it.
fn assemble(r: VictimRecord, p: Parts, verdict: Verdict, page: u64) -> OomKill {
    let kb = |v: u64| v.saturating_mul(1024);
    let (memcg_usage_bytes, memcg_limit_bytes) = match r.memcg_pages {
        Some((u, l)) => (u.checked_mul(page), limit_bytes(l, page)),
        None => (None, None),
    };
    OomKill {
        seq: p.seq,
        time: clock::wall_time(r.ktime_boot_ns),
        ktime_boot_ns: r.ktime_boot_ns,
        hook: r.source,
        pid: p.tgid,
        tid: r.victim_pid,
        comm: r.victim_comm,
        uid: r.victim_uid,
        oom_score_adj: r.oom_score_adj,
        total_vm_bytes: r.rss_kb.map(|x| kb(x.total_vm)),
        anon_rss_bytes: r.rss_kb.map(|x| kb(x.anon)),
        file_rss_bytes: r.rss_kb.map(|x| kb(x.file)),
        shmem_rss_bytes: r.rss_kb.map(|x| kb(x.shmem)),
        swap_bytes: r.swap_pages.map(|n| n.saturating_mul(page)),
        pgtables_bytes: r.pgtables_kb.map(kb),
        cgroup: p.cgroup,
        memcg_usage_bytes,
        memcg_limit_bytes,
        oom_cgroup: p.oom_cgroup,
        cgroup_at_kill: r.stats.victim.and_then(|s| Breakdown::at_kill(&s, page)),
        oom_cgroup_at_kill: r.stats.oom.and_then(|s| Breakdown::at_kill(&s, page)),
        extra_limit_bytes: p.extra_limit_bytes,
        next_in_line: p.next_in_line,
        episode: None,
        snapshot: p.snapshot,
        attribution: p.attribution,
        context: p.context,
        hotspots: Vec::new(),
        flamegraph: None,
        badness: p.badness,
        verdict,
        trigger_pid: r.trigger_tgid,
        trigger_tid: r.trigger_pid,
        trigger_comm: r.trigger_comm,
        trigger_cgroup: p.trigger_cgroup,
        victim_exiting: r.victim_exiting,
        read_error: r.read_error,
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
    use crate::{
        cgroup::StatsError,
        kernel::records::{HookSource, OomMemcg, RssKb},
    };

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
        let k = e.enrich(record()).kill;
        assert_eq!((k.seq, k.pid, k.tid), (1, 10, 11));
        assert_eq!(k.anon_rss_bytes, Some(64 * 1024));
        assert_eq!(k.pgtables_bytes, Some(8 * 1024));
        assert_eq!(k.swap_bytes, Some(3 * e.page_size));
        assert_eq!(k.memcg_usage_bytes, Some(16_384 * e.page_size));
        assert_eq!(k.memcg_limit_bytes, None, "PAGE_COUNTER_MAX is no limit");
        assert!(k.verdict.victim_is_trigger);
        assert_eq!(e.enrich(record()).kill.seq, 2);
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
        let k = e.enrich(r.clone()).kill;
        assert_eq!(k.cgroup.as_ref().and_then(|c| c.path.as_deref()), Some("/cg"));
        match &k.snapshot {
            Some(Snapshot::Failed(err)) => assert!(err.to_string().contains("memory.stat"), "{err}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(k.anon_rss_bytes, Some(64 * 1024));
        let json = crate::output::json::event(&k, "h", 0);
        assert!(json["memtrace.snapshot.error"].is_string(), "{json}");

        std::fs::remove_dir_all(&cg).expect("rm");
        let k = e.enrich(r).kill;
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
        let k = e.enrich(r).kill;
        let b = k.badness.expect("badness");
        assert_eq!(b.rss_pages, u64::MAX / e.page_size);
        assert_eq!(b.points, (b.rss_pages + b.swap_pages + b.pgtables_pages) as i64);
        assert_eq!(k.anon_rss_bytes, Some(u64::MAX));
    }
}
