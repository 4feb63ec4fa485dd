//! The enrich stage: one owner of everything a kill event carries. From the kernel's record it
//! builds the [`OomKill`]: cgroup paths, the oom_kill_process context, the post-kill snapshot,
//! the container, the badness score, the verdict and what would have avoided the kill
//! ([`crate::enrich::build`]), then the charging stacks before it, its OOM episode and where
//! its flame graph goes. What it keeps across events (path and name caches, contexts waiting
//! for their victim, open episodes) is its own; the counts the daemon reconciles are not
//! (commands/watch).
//!
//! The daemon never waits on the filesystem for longer than a budget per kill
//! ([`Enricher::enrich_within`]): the file reads run on tokio's blocking pool, and a kill whose
//! reads are not done in time goes out with what the record and the caches say, marked late
//! (`memtrace.enrich.late`) and counted; what the reads still learn is kept for later kills.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::Duration,
};

use crate::{
    cgroup::CgroupPaths,
    charges::worker::ChargeWatch,
    enrich::build::{self, Files, Learned, Work},
    enrich::episodes::{EpisodeSummary, Episodes},
    enrich::kill::{Enriched, OomKill},
    enrich::names::{NameSources, Namer},
    kernel::records::{OomContext, VictimRecord},
    output::flamegraph,
};

/// The default time a kill waits for its file reads.
pub const DEFAULT_BUDGET: Duration = Duration::from_millis(50);
/// File reads still running past their budget at most; past that, a kill reads nothing (a
/// filesystem that hangs must not pile up threads).
const MAX_LATE_READS: usize = 4;
/// A group kill marks its tasks within one oom_kill_process call: well under this.
const GROUP_KILL_WINDOW_NS: u64 = 500_000_000;

#[derive(Debug, Clone)]
pub struct EnrichOptions {
    /// Working-set alert threshold as a fraction of the limit, for the verdict.
    pub ws_alert_ratio: f64,
    /// Where container names are looked up.
    pub names: NameSources,
    /// Where kill flame graphs are written (`charges.kill_flamegraph_dir`), if anywhere.
    pub flamegraph_dir: Option<PathBuf>,
    /// Test hook (`MEMTRACE_TEST_ENRICH_DELAY_MS`): every kill's file reads take this longer.
    pub read_delay: Option<Duration>,
}

impl Default for EnrichOptions {
    fn default() -> Self {
        Self {
            ws_alert_ratio: 0.9,
            names: NameSources::default(),
            flamegraph_dir: None,
            read_delay: None,
        }
    }
}

/// Builds [`OomKill`]s; owns what enrichment needs across events.
pub struct Enricher {
    paths: Option<CgroupPaths>,
    page_size: u64,
    seq: u64,
    opts: EnrichOptions,
    files: Arc<Files>,
    /// Cgroup -> container and names, kept after the container is gone.
    namer: Namer,
    /// Recent oom_kill_process records, waiting for their victim.
    contexts: Vec<OomContext>,
    /// The charge worker's window of stacks, for the kill's hotspots.
    charges: Option<ChargeWatch>,
    episodes: Episodes,
    /// What file reads learnt, sent when they end (on time or late).
    learned_tx: mpsc::Sender<Learned>,
    learned_rx: mpsc::Receiver<Learned>,
    /// File reads running now.
    reading: Arc<AtomicUsize>,
}

/// Counts a file read as running while it lives (a panic in it included).
struct Reading(Arc<AtomicUsize>);

impl Drop for Reading {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Enricher {
    pub fn new(paths: Option<CgroupPaths>, opts: EnrichOptions) -> Self {
        // SAFETY: sysconf has no preconditions.
        let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let files = Arc::new(Files {
            hierarchy: paths.as_ref().map(|p| p.hierarchy().clone()),
            names: opts.names.clone(),
            delay: opts.read_delay,
        });
        let (learned_tx, learned_rx) = mpsc::channel();
        Self {
            paths,
            page_size,
            seq: 0,
            namer: Namer::new(opts.names.clone()),
            opts,
            files,
            contexts: Vec::new(),
            charges: None,
            episodes: Episodes::default(),
            learned_tx,
            learned_rx,
            reading: Arc::new(AtomicUsize::new(0)),
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

    /// The OOM invocation that killed this victim: the context that chose it or, for the
    /// other tasks a `memory.oom.group` kill takes with it (mm/oom_kill.c
    /// oom_kill_memcg_member, in the same oom_kill_process call, so the same trigger), the
    /// latest context of its trigger. Kept, not taken: a group's victims all need it (stale
    /// ones age out in `note_context`).
    fn context_for(&self, r: &VictimRecord, tgid: u32) -> Option<OomContext> {
        let chosen = self.contexts.iter().rev().find(|c| c.chosen_tgid == tgid);
        let same_oom = || {
            self.contexts.iter().rev().find(|c| {
                c.trigger_tgid == r.trigger_tgid
                    && c.ktime_boot_ns <= r.ktime_boot_ns
                    && r.ktime_boot_ns - c.ktime_boot_ns < GROUP_KILL_WINDOW_NS
            })
        };
        chosen.or_else(same_oom).cloned()
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

    /// The whole kill event of one victim record, its file reads done here, however long they
    /// take (tests, the fuzz target).
    pub fn enrich(&mut self, r: VictimRecord) -> Enriched {
        let work = self.prepare(r);
        let (kill, learned) = build::build(work, Some(&self.files));
        self.keep(learned);
        self.finish(kill)
    }

    /// The whole kill event of one victim record, its file reads on the blocking pool. Past
    /// `budget` the kill is not kept waiting: it is built from the record and the caches alone,
    /// marked late, and what the reads learn is kept when they end.
    pub async fn enrich_within(&mut self, r: VictimRecord, budget: Duration) -> Enriched {
        self.keep_learned();
        let work = self.prepare(r);
        if self.reading.load(Ordering::Relaxed) >= MAX_LATE_READS {
            log::warn!(
                "cgroup and container files are slow to read: kill {} sent without them",
                work.seq
            );
            return self.late(work);
        }
        let fallback = work.clone();
        let (files, tx) = (Arc::clone(&self.files), self.learned_tx.clone());
        self.reading.fetch_add(1, Ordering::Relaxed);
        let reading = Reading(Arc::clone(&self.reading));
        let task = tokio::task::spawn_blocking(move || {
            let _reading = reading;
            let (kill, learned) = build::build(work, Some(&files));
            let _ = tx.send(learned);
            kill
        });
        let kill = match tokio::time::timeout(budget, task).await {
            Ok(Ok(kill)) => kill,
            Ok(Err(e)) => {
                log::error!("reading the files of kill {}: {e}", fallback.seq);
                return self.late(fallback);
            }
            Err(_) => return self.late(fallback),
        };
        self.keep_learned();
        self.finish(kill)
    }

    /// The kill from its record and the caches alone.
    fn late(&mut self, work: Work) -> Enriched {
        let (mut kill, _) = build::build(work, None);
        kill.late = true;
        self.finish(kill)
    }

    /// What the record and the caches say: no file is read (but the tgid, from /proc, on
    /// kernels whose record lacks it).
    fn prepare(&mut self, r: VictimRecord) -> Work {
        self.seq += 1;
        let tgid = r
            .victim_tgid
            .or_else(|| proc_tgid(r.victim_pid))
            .unwrap_or(r.victim_pid);
        let context = self.context_for(&r, tgid);
        let ids = [
            r.victim_memcg_id,
            r.trigger_memcg_id,
            r.oom_memcg.map(|m| m.id),
            context.as_ref().and_then(|c| c.memcg_id),
        ];
        let (mut known, mut unknown, mut named) = (HashMap::new(), Vec::new(), HashMap::new());
        if let Some(paths) = self.paths.as_ref() {
            for id in ids.into_iter().flatten() {
                match paths.cached(id) {
                    Some(p) => {
                        known.insert(id, p.to_owned());
                    }
                    None if paths.would_walk(id) && !unknown.contains(&id) => unknown.push(id),
                    None => {}
                }
            }
        }
        let victim_path = r.victim_memcg_id.and_then(|id| known.get(&id));
        if let Some(p) = victim_path
            && let Some(a) = self.namer.cached(p)
        {
            named.insert(p.clone(), a);
        }
        Work {
            r,
            seq: self.seq,
            tgid,
            context,
            page_size: self.page_size,
            ws_alert_ratio: self.opts.ws_alert_ratio,
            version: self.paths.as_ref().map(|p| p.hierarchy().version),
            known,
            unknown,
            named,
        }
    }

    /// Keeps what file reads learnt: paths from a walk, container names.
    fn keep(&mut self, l: Learned) {
        if let (Some(paths), Some(walked)) = (self.paths.as_mut(), l.walked) {
            paths.learn(walked, &l.asked);
        }
        for (path, a) in l.named {
            self.namer.remember(&path, a);
        }
    }

    /// What reads that have ended since learnt, late ones included.
    pub fn keep_learned(&mut self) {
        while let Ok(l) = self.learned_rx.try_recv() {
            self.keep(l);
        }
    }

    /// Hotspots, episode and flame graph: from memory, on the event loop.
    fn finish(&mut self, mut kill: OomKill) -> Enriched {
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
        enrich::kill::Snapshot,
        kernel::clock,
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

    /// File reads slower than the budget do not hold the kill: it goes out late, from the
    /// record and the caches, and what the reads still find serves the kills after it.
    #[tokio::test(flavor = "current_thread")]
    async fn reads_past_the_budget_leave_the_kill_late_and_are_kept() {
        use std::os::unix::fs::MetadataExt as _;

        use crate::cgroup::{CgroupVersion, MemoryHierarchy};

        let root = tempfile::tempdir().expect("tempdir");
        let paths = CgroupPaths::new(MemoryHierarchy {
            version: CgroupVersion::V1,
            root: root.path().to_owned(),
        });
        let delay = Duration::from_secs(1);
        let opts = EnrichOptions {
            read_delay: Some(delay),
            ..EnrichOptions::default()
        };
        let mut e = Enricher::new(Some(paths), opts);
        // Made after the first walk: only a walk in the reads can find it.
        let cg = root.path().join("late");
        std::fs::create_dir_all(&cg).expect("mkdir");
        std::fs::write(cg.join("memory.usage_in_bytes"), "4096\n").expect("write");
        let id = std::fs::metadata(&cg).expect("stat").ino();
        let mut r = record();
        r.victim_memcg_id = Some(id);
        r.oom_memcg = None;

        let started = std::time::Instant::now();
        let k = e.enrich_within(r.clone(), Duration::from_millis(50)).await.kill;
        assert!(
            started.elapsed() < delay,
            "waited {:?} for the reads",
            started.elapsed()
        );
        assert!(k.late);
        assert_eq!((k.seq, k.pid), (1, 10));
        assert_eq!(k.cgroup.as_ref().and_then(|c| c.path.as_deref()), None);
        assert!(k.snapshot.is_none() && k.next_in_line.is_none());
        assert_eq!(
            k.anon_rss_bytes,
            Some(64 * 1024),
            "the record's own fields are all there"
        );
        let json = crate::output::json::event(&k, "h", 0);
        assert_eq!(json["memtrace.enrich.late"], true);

        // The late reads end, and their walk is kept.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while e.reading.load(Ordering::Relaxed) > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        e.keep_learned();
        assert_eq!(e.paths().and_then(|p| p.cached(id)), Some("/late"));
        let k = e.enrich_within(r, Duration::from_secs(30)).await.kill;
        assert!(!k.late);
        assert_eq!(k.seq, 2);
        assert_eq!(k.cgroup.and_then(|c| c.path).as_deref(), Some("/late"));
        assert!(k.snapshot.is_some());
    }

    /// A `memory.oom.group` kill: one oom_kill_process context (chosen pid 10, trigger 10),
    /// then a victim record per task. The chosen task and the others of the group all get the
    /// OOM's context; a victim of a later OOM by another trigger does not.
    #[test]
    fn a_group_kill_gives_every_victim_its_oom_context() {
        use crate::kernel::records::KernelConstraint;

        let mut e = Enricher::new(None, EnrichOptions::default());
        let base = record();
        e.note_context(OomContext {
            ktime_boot_ns: base.ktime_boot_ns,
            memcg_id: Some(5),
            totalpages: 16_384,
            chosen_points: 900,
            gfp_mask: 0xcc0,
            order: 0,
            constraint: KernelConstraint::Memcg,
            chosen_pid: 10,
            chosen_tgid: 10,
            trigger_tgid: 10,
            read_error: false,
        });
        let victim = |pid: u32, trigger: u32, after_ns: u64| {
            let mut r = base.clone();
            (r.victim_pid, r.victim_tgid, r.trigger_tgid, r.trigger_pid) = (pid, Some(pid), trigger, trigger);
            r.ktime_boot_ns += after_ns;
            r
        };
        for (pid, after) in [(10, 1_000), (20, 2_000), (30, 3_000)] {
            let k = e.enrich(victim(pid, 10, after)).kill;
            let c = k
                .context
                .unwrap_or_else(|| panic!("pid {pid} has the OOM's context"));
            assert_eq!((c.memcg_id, c.chosen_tgid), (Some(5), 10));
        }
        assert!(
            e.enrich(victim(40, 99, 4_000)).kill.context.is_none(),
            "another trigger's OOM"
        );
        assert!(
            e.enrich(victim(50, 10, 2 * GROUP_KILL_WINDOW_NS))
                .kill
                .context
                .is_none(),
            "a later OOM by the same trigger whose context was lost"
        );
    }
}
