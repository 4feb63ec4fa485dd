//! The kill built from its record and its file reads: cgroup paths the caches did not know (a
//! walk of the hierarchy), the post-kill snapshot (about ten cgroup files), the container's
//! names (OCI and engine JSON), `/proc/meminfo` for the badness score, and the survivors next
//! in line (`/proc` of every task in the OOM cgroup). Everything it needs is owned ([`Work`]),
//! so the enricher runs it off the event loop within a time budget; without [`Files`] it
//! reads nothing and builds what the record and the caches alone say (a late kill).

use std::{collections::HashMap, sync::Arc, time::Duration};

use crate::{
    cgroup::{
        CgroupVersion, MemoryHierarchy, MemoryStats, paths, paths::proc_memory_cgroup, read_memory_stats,
        stats::parse_limit_v1,
    },
    enrich::at_kill::Breakdown,
    enrich::attribution::{Attribution, parse_cgroup_path},
    enrich::diagnosis::{self, Badness, Facts, Verdict},
    enrich::kill::{CgroupRef, OomCgroup, OomKill, PathSource, Snapshot},
    enrich::memsw::{AncestorMemsw, LimitKind, ancestor_memsw, memsw_limit_hit},
    enrich::names::{self, NameSources},
    enrich::next_in_line::{self, NextInLine},
    kernel::clock,
    kernel::records::{OomCallPath, OomContext, VictimRecord},
};

/// One kill's record and what the enricher's caches and state said about it.
#[derive(Debug, Clone)]
pub struct Work {
    pub r: VictimRecord,
    pub seq: u64,
    pub tgid: u32,
    pub context: Option<OomContext>,
    pub page_size: u64,
    pub ws_alert_ratio: f64,
    /// The memory hierarchy's version, when there is one.
    pub version: Option<CgroupVersion>,
    /// Paths the cache knew for the ids the record names.
    pub known: HashMap<u64, String>,
    /// Ids it did not know that a walk may find (not looked for in vain lately).
    pub unknown: Vec<u64>,
    /// Attributions the cache had, by cgroup path.
    pub named: HashMap<String, Option<Attribution>>,
}

impl Work {
    /// The memory cgroups the kill names: victim, trigger, OOM memcg (record and context).
    pub fn memcg_ids(&self) -> impl Iterator<Item = u64> + use<> {
        memcg_ids(&self.r, self.context.as_ref())
    }
}

/// The memory cgroups a victim record and its OOM context name.
pub fn memcg_ids(r: &VictimRecord, context: Option<&OomContext>) -> impl Iterator<Item = u64> + use<> {
    [
        r.victim_memcg_id,
        r.trigger_memcg_id,
        r.oom_memcg.map(|m| m.id),
        context.and_then(|c| c.memcg_id),
    ]
    .into_iter()
    .flatten()
}

/// What a build may read.
#[derive(Debug, Clone)]
pub struct Files {
    pub hierarchy: Option<MemoryHierarchy>,
    pub names: NameSources,
    /// Test hook (`MEMTRACE_TEST_ENRICH_DELAY_MS`): the reads take this much longer.
    pub delay: Option<Duration>,
}

/// What a build found that the caches keep.
#[derive(Debug, Default)]
pub struct Learned {
    /// A walk of the hierarchy, if one was made, and the ids it was made for.
    pub walked: Option<HashMap<u64, String>>,
    pub asked: Vec<u64>,
    pub named: Vec<(String, Option<Attribution>)>,
}

/// The largest page-counter value means "no limit" (PAGE_COUNTER_MAX).
fn limit_bytes(pages: u64, page_size: u64) -> Option<u64> {
    let bytes = pages.checked_mul(page_size)?;
    (bytes < (1 << 62)).then_some(bytes)
}

/// The kill, and what the caches learn; reads files only with `files`.
pub fn build(work: Work, files: Option<&Files>) -> (OomKill, Learned) {
    if let Some(d) = files.and_then(|f| f.delay) {
        std::thread::sleep(d);
    }
    let mut b = Builder {
        w: work,
        files,
        walked: None,
        named: Vec::new(),
    };
    let kill = b.kill();
    let learned = Learned {
        asked: if b.walked.is_some() {
            b.w.unknown
        } else {
            Vec::new()
        },
        walked: b.walked,
        named: b.named,
    };
    (kill, learned)
}

struct Builder<'a> {
    w: Work,
    files: Option<&'a Files>,
    walked: Option<HashMap<u64, String>>,
    named: Vec<(String, Option<Attribution>)>,
}

/// The parts of a kill worked out from more than its record, for [`assemble`].
struct Parts {
    cgroup: Option<CgroupRef>,
    trigger_cgroup: Option<CgroupRef>,
    oom_cgroup: Option<OomCgroup>,
    snapshot: Option<Snapshot>,
    attribution: Option<Attribution>,
    badness: Option<Badness>,
    extra_limit_bytes: Option<u64>,
    next_in_line: Option<NextInLine>,
    /// An ancestor's memory+swap limit that binds the victim's cgroup and may have been hit.
    ancestor_memsw_limit: Option<u64>,
}

impl Builder<'_> {
    fn hierarchy(&self) -> Option<&MemoryHierarchy> {
        self.files.and_then(|f| f.hierarchy.as_ref())
    }

    /// From the cache, else from one walk of the hierarchy for all of this kill's ids.
    fn path(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.w.known.get(&id) {
            return Some(p.clone());
        }
        if !self.w.unknown.contains(&id) {
            return None;
        }
        let h = self.hierarchy()?;
        if self.walked.is_none() {
            self.walked = Some(paths::walk(h));
        }
        self.walked.as_ref().and_then(|w| w.get(&id).cloned())
    }

    fn cgroup(&mut self, id: Option<u64>, pid: u32) -> Option<CgroupRef> {
        if let Some(id) = id {
            return Some(CgroupRef {
                id: Some(id),
                path: self.path(id),
                source: PathSource::Kernel,
            });
        }
        let version = self.w.version?;
        // No id from the kernel (plain tracepoint, victim is not the current task): ask /proc
        // while the victim still exists. A task already in do_exit() has been moved to the root
        // css_set (kernel/cgroup/cgroup.c cgroup_exit), so "/" is not trusted: better no path
        // than the wrong one.
        let path = self
            .files
            .and_then(|_| proc_memory_cgroup(pid, version))
            .filter(|p| p != "/");
        Some(CgroupRef {
            id: None,
            path,
            source: PathSource::Procfs,
        })
    }

    /// cgroup v1: an ancestor's memory+swap limit, for a kill no OOM cgroup was found for.
    fn ancestor_memsw(&self, victim: Option<&CgroupRef>, stats: Option<&MemoryStats>) -> AncestorMemsw {
        let (Some(victim), Some(stats), Some(h)) = (victim, stats, self.hierarchy()) else {
            return AncestorMemsw::NotBinding;
        };
        let limit_of = |path: &str| {
            crate::pseudo_fs::read(h.dir(path).join("memory.memsw.limit_in_bytes"))
                .ok()
                .and_then(|t| parse_limit_v1(&t).ok().flatten())
        };
        let (r, page) = (&self.w.r, self.w.page_size);
        let swap = r
            .stats
            .victim
            .and_then(|p| Breakdown::at_kill(&p, page))
            .and_then(|b| b.swap);
        let usage = r.memcg_pages.map(|(u, _)| u.saturating_mul(page));
        let memsw = usage.zip(swap).map(|(u, s)| u.saturating_add(s));
        ancestor_memsw(victim, stats, memsw, limit_of)
    }

    fn snapshot(&self, path: &str) -> Option<Snapshot> {
        let h = self.hierarchy()?;
        Some(match read_memory_stats(&h.dir(path), h.version) {
            Ok(s) => Snapshot::Read(Box::new(s)),
            Err(e) => Snapshot::Failed(Arc::new(e)),
        })
    }

    /// The container of `path`: from the cache, the engines' files, or (late) its path alone.
    fn attribution(&mut self, path: &str) -> Option<Attribution> {
        if let Some(a) = self.w.named.get(path) {
            return a.clone();
        }
        let Some(files) = self.files else {
            return Some(parse_cgroup_path(path)).filter(|a| *a != Attribution::default());
        };
        let a = names::resolve(&files.names, path);
        self.named.push((path.to_owned(), a.clone()));
        a
    }

    /// The cgroup at its limit. The OOM killer's own decision, where oom_kill_process is
    /// hooked (`kernel_memcg`), wins over the at-limit walk: in a global OOM a cgroup near its
    /// limit is a coincidence.
    fn oom_cgroup(&mut self, kernel_memcg: Option<Option<u64>>) -> Option<OomCgroup> {
        let page = self.w.page_size;
        let walk = self.w.r.oom_memcg.filter(|m| match kernel_memcg {
            Some(Some(id)) => m.id == id,
            Some(None) => false,
            None => true,
        });
        if let Some(m) = walk {
            return self.cgroup(Some(m.id), 0).map(|cgroup| OomCgroup {
                cgroup,
                usage_bytes: m.usage_pages.saturating_mul(page),
                limit_bytes: m.limit_pages.saturating_mul(page),
                limit: m.limit,
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
    fn kill(&mut self) -> OomKill {
        let r = self.w.r.clone();
        let page = self.w.page_size;
        let cgroup = self.cgroup(r.victim_memcg_id, r.victim_pid);
        let trigger_cgroup = self.cgroup(r.trigger_memcg_id, r.trigger_pid);
        let kernel_memcg = self.w.context.as_ref().map(|c| c.memcg_id);
        let mut oom_cgroup = self.oom_cgroup(kernel_memcg);
        let victim_path = cgroup.as_ref().and_then(|c| c.path.clone());
        let snap_path = oom_cgroup
            .as_ref()
            .and_then(|o| o.cgroup.path.clone())
            .or_else(|| victim_path.clone());
        let snapshot = snap_path.as_deref().and_then(|p| self.snapshot(p));
        let stats = snapshot.as_ref().and_then(Snapshot::stats);
        // Where the kernel's walk read the memsw counters, its answer stands; else a guess
        // from the statistics (the swap figure of which lags, see memsw.rs).
        if !r.memsw_walked {
            memsw_limit_hit(
                &mut oom_cgroup,
                cgroup.as_ref(),
                stats,
                &r,
                page,
                kernel_memcg.is_some(),
            );
        }
        let mut ancestor_memsw_limit = None;
        if oom_cgroup.is_none() && kernel_memcg.is_none() && !r.memsw_walked {
            match self.ancestor_memsw(cgroup.as_ref(), stats) {
                AncestorMemsw::Hit(o) => oom_cgroup = Some(o),
                AncestorMemsw::MayHaveHit { limit_bytes } => ancestor_memsw_limit = Some(limit_bytes),
                AncestorMemsw::NotBinding => {}
            }
        }
        let attribution = victim_path.as_deref().and_then(|p| self.attribution(p));
        let badness = self.badness(oom_cgroup.as_ref(), stats);
        let (extra_limit_bytes, next_in_line) = self.avoid(
            oom_cgroup.as_ref(),
            r.stats.oom.and_then(|p| Breakdown::at_kill(&p, page)),
            badness.map(|b| b.totalpages),
        );
        let parts = Parts {
            cgroup,
            trigger_cgroup,
            oom_cgroup,
            snapshot,
            attribution,
            badness,
            extra_limit_bytes,
            next_in_line,
            ancestor_memsw_limit,
        };
        let verdict = self.verdict(&parts);
        assemble(&self.w, r, parts, verdict)
    }

    /// The victim's badness as the OOM killer scored it (mm/oom_kill.c oom_badness). Late,
    /// only with the kernel's own totalpages (the others need /proc/meminfo).
    fn badness(&self, oom_cgroup: Option<&OomCgroup>, stats: Option<&MemoryStats>) -> Option<Badness> {
        let (r, page) = (&self.w.r, self.w.page_size);
        let kb = |v: u64| v.saturating_mul(1024);
        let rss = r.rss_kb?;
        // Saturating: the record's counters are not trusted to be sane (fuzz/oom_record).
        let rss_pages = kb(rss.anon.saturating_add(rss.file).saturating_add(rss.shmem)) / page;
        let totalpages = match (&self.w.context, oom_cgroup) {
            // The kernel's own, where oom_kill_process is hooked.
            (Some(c), _) if c.totalpages > 0 => c.totalpages,
            _ if self.files.is_none() => return None,
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
        totalpages: Option<u64>,
    ) -> (Option<u64>, Option<NextInLine>) {
        let Some(oom) = oom else { return (None, None) };
        let page = self.w.page_size;
        let order = self.w.context.as_ref().map(|c| c.order);
        let charge = order
            .and_then(|o| u32::try_from(o).ok())
            .filter(|&o| o < 20)
            .map_or(page, |o| page << o);
        let extra =
            at.and_then(|a| next_in_line::extra_limit_bytes(oom.usage_bytes, oom.limit_bytes, &a, charge));
        let next = match (self.hierarchy(), oom.cgroup.path.as_deref(), totalpages) {
            (Some(h), Some(path), Some(total)) => {
                Some(next_in_line::rank(&h.dir(path), self.w.tgid, total, page))
            }
            _ => None,
        };
        (extra, next)
    }

    /// The verdict, on the OOM cgroup or in a global OOM the victim's own.
    fn verdict(&self, p: &Parts) -> Verdict {
        let (r, page) = (&self.w.r, self.w.page_size);
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
        let context = self.w.context.as_ref();
        let mut verdict = diagnosis::verdict(&Facts {
            victim_is_trigger: r.trigger_tgid == self.w.tgid,
            victim_anon: r.rss_kb.map_or(0, |x| kb(x.anon)),
            victim_shmem: r.rss_kb.map_or(0, |x| kb(x.shmem)),
            oom_cgroup: p
                .oom_cgroup
                .as_ref()
                .zip(oom_path)
                .map(|(o, path)| (path, o.usage_bytes, o.limit_bytes)),
            post_kill: p.snapshot.as_ref().and_then(Snapshot::stats),
            at_kill: at_kill.as_ref(),
            ws_alert_ratio: self.w.ws_alert_ratio,
            // The trigger's cgroup alone says nothing about the victim's: without the victim's
            // memcg data (a bystander seen by the plain tracepoint) nor the kernel's decision,
            // no OOM cgroup does not mean a global OOM.
            memcg_unknown: r.oom_memcg.is_none()
                && r.memcg_pages.is_none()
                && r.victim_memcg_id.is_none()
                && context.is_none(),
            kernel_decision: context.map(|c| c.memcg_id.is_some()),
            call_path_memcg: r.call_path.map(|p| p == OomCallPath::Memcg),
            ancestor_memsw_limit: p.ancestor_memsw_limit,
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
fn assemble(w: &Work, r: VictimRecord, p: Parts, verdict: Verdict) -> OomKill {
    let page = w.page_size;
    let kb = |v: u64| v.saturating_mul(1024);
    let (memcg_usage_bytes, memcg_limit_bytes) = match r.memcg_pages {
        Some((u, l)) => (u.checked_mul(page), limit_bytes(l, page)),
        None => (None, None),
    };
    OomKill {
        seq: w.seq,
        time: clock::wall_time(r.ktime_boot_ns),
        ktime_boot_ns: r.ktime_boot_ns,
        hook: r.source,
        pid: w.tgid,
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
        context: w.context.clone(),
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
        late: false,
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
    let text = crate::pseudo_fs::read("/proc/meminfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
