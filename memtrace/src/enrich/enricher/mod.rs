//! The enrich stage: one owner of everything a kill event carries. From the kernel's record it
//! builds the [`OomKill`]: cgroup paths, the oom_kill_process context, the post-kill snapshot,
//! the container, the badness score, the verdict and what would have avoided the kill
//! ([`crate::enrich::build`]), then the charging stacks before it, its OOM episode and where
//! its flame graph goes. What it keeps across events (path and name caches, contexts waiting
//! for their victim, open episodes) is its own; the counts the daemon reconciles are not
//! (commands/watch).
//!
//! The daemon never waits on the filesystem for longer than a budget per kill
//! ([`Enricher::start`], [`Enricher::complete`]): the file reads run off the event loop
//! (`reader.rs`), those of kills that arrive together side by side, and a kill whose reads are
//! not done in time goes out with what the record and the caches say, marked late
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
    charges::kill_context::KillScope,
    charges::worker::ChargeWatch,
    enrich::build::{self, Files, Learned, Work},
    enrich::episodes::{EpisodeSummary, Episodes},
    enrich::kill::{Enriched, OomKill},
    enrich::later_stacks::LaterStacks,
    enrich::names::{NameSources, Namer},
    kernel::records::{OomContext, OomMemcg, VictimRecord},
    output::flamegraph,
};

use reader::Reader;

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
    /// How long a kill waits for the charge worker's flush (`charges.kill_stacks_wait`); zero:
    /// no flush, the kill takes the stacks of the last poll.
    pub kill_stacks_wait: Duration,
    /// Test hook (`MEMTRACE_TEST_ENRICH_DELAY_MS`): every kill's file reads take this longer.
    pub read_delay: Option<Duration>,
}

impl Default for EnrichOptions {
    fn default() -> Self {
        Self {
            ws_alert_ratio: 0.9,
            names: NameSources::default(),
            flamegraph_dir: None,
            kill_stacks_wait: Duration::ZERO,
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
    /// The last kill's OOM memcg from the kernel's walk: (trigger tgid, when, memcg).
    last_oom_memcg: Option<(u32, u64, OomMemcg)>,
    /// The charge worker's window of stacks, for the kill's hotspots.
    charges: Option<ChargeWatch>,
    episodes: Episodes,
    /// What file reads learnt, sent when they end (on time or late).
    learned_tx: mpsc::Sender<Learned>,
    learned_rx: mpsc::Receiver<Learned>,
    /// File reads running now.
    reading: Arc<AtomicUsize>,
    /// Kills started and not yet completed whose reads run.
    pending: usize,
    /// Runs the reads.
    reader: Reader,
}

impl Pending {
    /// Its reads walk the hierarchy for a cgroup the path cache does not know: the kills
    /// after it should wait for what the walk learns rather than walk again side by side.
    pub fn walks(&self) -> bool {
        self.reads.is_some() && !self.fallback.unknown.is_empty()
    }
}

/// A kill whose file reads were started ([`Enricher::start`]).
pub struct Pending {
    /// The kill without its reads, should they be late.
    fallback: Work,
    /// `None`: too many earlier reads are still running; this kill reads nothing.
    reads: Option<reader::Read<OomKill>>,
    /// Hears when the charge worker has published the samples up to this kill; waited for
    /// until `stacks_deadline` at most.
    stacks: Option<tokio::sync::oneshot::Receiver<()>>,
    stacks_deadline: tokio::time::Instant,
    deadline: tokio::time::Instant,
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
            last_oom_memcg: None,
            charges: None,
            episodes: Episodes::default(),
            learned_tx,
            learned_rx,
            reading: Arc::new(AtomicUsize::new(0)),
            pending: 0,
            reader: Reader::new(),
        }
    }

    /// Kills get their hotspots from this charge worker's window from now on.
    pub fn with_charges(mut self, charges: Option<ChargeWatch>) -> Self {
        self.charges = charges;
        self
    }

    /// The charge worker, if charges are watched.
    pub fn charges(&self) -> Option<&ChargeWatch> {
        self.charges.as_ref()
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

    /// Without oom_kill_process hooked, the OOM memcg comes from the kernel's walk up from
    /// each victim to a counter at its limit. The later tasks of a `memory.oom.group` kill are
    /// marked in the same call as the first, while the first ones already free their memory,
    /// so their walk can find the cgroup under its limit and the kill would read as global.
    /// A victim without an OOM memcg whose trigger's previous victim, within the group-kill
    /// window, had one inside which it lives gets that one (usage and limit as the kernel read
    /// them then; the depth from the paths).
    fn same_oom_memcg(&mut self, r: &mut VictimRecord) {
        if let Some(m) = r.oom_memcg {
            self.last_oom_memcg = Some((r.trigger_tgid, r.ktime_boot_ns, m));
            return;
        }
        let Some((trigger, at, m)) = self.last_oom_memcg else {
            return;
        };
        if trigger != r.trigger_tgid
            || at > r.ktime_boot_ns
            || r.ktime_boot_ns - at >= GROUP_KILL_WINDOW_NS
            || r.memcg_pages.is_none()
        {
            return;
        }
        let Some(paths) = self.paths.as_mut() else { return };
        let (Some(victim), Some(oom)) = (
            r.victim_memcg_id.and_then(|id| paths.resolve(id)),
            paths.resolve(m.id),
        ) else {
            return;
        };
        let Some(depth) = depth_below(&oom, &victim) else {
            return;
        };
        r.oom_memcg = Some(OomMemcg { depth, ..m });
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

    /// The whole kill event of one victim record, its file reads off the event loop. Past
    /// `budget` the kill is not kept waiting: it is built from the record and the caches alone,
    /// marked late, and what the reads learn is kept when they end.
    pub async fn enrich_within(&mut self, r: VictimRecord, budget: Duration) -> Enriched {
        let p = self.start(r, budget);
        self.complete(p).await
    }

    /// Takes a kill as far as the record and the caches go, and starts its file reads off the
    /// event loop ([`Reader`]), due `budget` from now. Kills that arrive together have their
    /// reads run side by side: [`Self::complete`] them in the order they were started (contexts,
    /// group kills and episodes are taken in the kernel's order), and a batch waits for its
    /// slowest read, not for the sum of them.
    pub fn start(&mut self, r: VictimRecord, budget: Duration) -> Pending {
        self.keep_learned();
        let work = self.prepare(r);
        let now = tokio::time::Instant::now();
        let deadline = now + budget;
        // The samples since the charge worker's last poll (a fast kill has no others), if the
        // kill may wait for them: it costs emit delay (BENCHMARKS.md §2).
        let wait = self.opts.kill_stacks_wait.min(budget);
        let stacks_deadline = now + wait;
        let stacks = self
            .charges
            .as_ref()
            .filter(|_| !wait.is_zero())
            .and_then(|cw| cw.flush(work.memcg_ids().collect()));
        // Reads running now that were not started by a kill still pending are late ones.
        let late_reads = self.reading.load(Ordering::Relaxed).saturating_sub(self.pending);
        if late_reads >= MAX_LATE_READS {
            log::warn!(
                "cgroup and container files are slow to read: kill {} sent without them",
                work.seq
            );
            return Pending {
                fallback: work,
                reads: None,
                stacks,
                stacks_deadline,
                deadline,
            };
        }
        let fallback = work.clone();
        let (files, tx) = (Arc::clone(&self.files), self.learned_tx.clone());
        self.reading.fetch_add(1, Ordering::Relaxed);
        self.pending += 1;
        let reading = Reading(Arc::clone(&self.reading));
        let reads = self.reader.run(move || {
            let _reading = reading;
            let (kill, learned) = build::build(work, Some(&files));
            let _ = tx.send(learned);
            kill
        });
        Pending {
            fallback,
            reads: Some(reads),
            stacks,
            stacks_deadline,
            deadline,
        }
    }

    /// The kill event of a started kill: its reads if they end by its deadline, else late.
    pub async fn complete(&mut self, p: Pending) -> Enriched {
        let Some(reads) = p.reads else {
            return self.late(p.fallback);
        };
        let done = reads.by(p.deadline).await;
        self.pending = self.pending.saturating_sub(1);
        let kill = match done {
            Some(Some(kill)) => kill,
            Some(None) => {
                log::error!(
                    "reading the files of kill {}: the read failed (panicked)",
                    p.fallback.seq
                );
                return self.late(p.fallback);
            }
            None => return self.late(p.fallback),
        };
        if let Some(stacks) = p.stacks
            && tokio::time::timeout_at(p.stacks_deadline, stacks).await.is_err()
        {
            log::debug!(
                "kill {}: the samples since the last charge poll were not published in time",
                p.fallback.seq
            );
        }
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
    fn prepare(&mut self, mut r: VictimRecord) -> Work {
        self.seq += 1;
        let tgid = r
            .victim_tgid
            .or_else(|| proc_tgid(r.victim_pid))
            .unwrap_or(r.victim_pid);
        let context = self.context_for(&r, tgid);
        if context.is_none() {
            self.same_oom_memcg(&mut r);
        }
        let ids = build::memcg_ids(&r, context.as_ref());
        let (mut known, mut unknown, mut named) = (HashMap::new(), Vec::new(), HashMap::new());
        if let Some(paths) = self.paths.as_ref() {
            for id in ids {
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
        // Said, not hidden: the event goes out without a path.
        let cgroup = kill.cgroup.as_ref();
        if cgroup.is_none_or(|c| c.path.is_none()) {
            log::warn!(
                "kill {} (pid {}): no path for its cgroup (id {:?}, {:?}): not learnt from cgroup_mkdir, not found by a walk or in /proc{}",
                kill.seq,
                kill.pid,
                cgroup.and_then(|c| c.id),
                cgroup.map(|c| c.source),
                if kill.late { "; sent late" } else { "" }
            );
        }
        let graph = |dir: &std::path::Path| flamegraph::kill_path(dir, kill.seq, kill.pid);
        let graph_path = self.opts.flamegraph_dir.as_deref().map(graph);
        if let (Some(cw), Some(paths)) = (self.charges.as_ref(), self.paths.as_ref()) {
            let scope = KillScope::of(paths, &kill);
            // Taken before the window is read: a poll begun after it has every sample so far.
            let after = cw.mark();
            kill.hotspots = cw.kill_context(&scope);
            if let Some(l) = LaterStacks::of(&kill, scope, after, graph_path.clone()) {
                cw.stacks_later(l);
            }
        }
        let ended_episode = self.place_in_episode(&mut kill);
        kill.flamegraph = graph_path.filter(|_| !kill.hotspots.is_empty());
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
    let status = crate::pseudo_fs::read(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// How many levels `inner` is below `outer` (cgroup paths); `None` when it is not inside.
fn depth_below(outer: &str, inner: &str) -> Option<u32> {
    let parts = |p: &str| p.split('/').filter(|c| !c.is_empty()).count();
    let inside = outer == "/"
        || inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'));
    inside.then(|| u32::try_from(parts(inner) - parts(outer)).unwrap_or(u32::MAX))
}

mod reader;
#[cfg(test)]
mod tests;
