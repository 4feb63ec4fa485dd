//! The charge side of `memtrace watch`, on a thread of its own so that nothing it does (map
//! reads, symbolization, cgroup file reads) can delay a kill event. Once a second it drains
//! the charge maps, symbolizes the new samples while their processes still run, publishes a
//! window of resolved stacks, and sends pre-OOM warnings to the event loop. A kill reads the
//! published window, memory only. With `charges.kill_stacks_wait` it first asks for a flush
//! ([`ChargeWatch::flush`]): the samples since the last poll are drained and published at once
//! (a runaway process is killed well within one interval of its start).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use crate::{
    cgroup::CgroupPaths,
    charges::accounting::{ChargeMonitor, Reads, Row, Sample, rows},
    charges::kill_context::{KillScope, Window},
    charges::maps::ChargeMaps,
    charges::stacks::HotStack,
    charges::sweep::{LimitSweep, SWEEP_EVERY},
    charges::symbolize::Symbols,
    charges::warnings::{PreOomWarning, WarnOptions, Warner},
    enrich::later_stacks::{KillStacks, LaterStacks, MAX_WAITING},
    enrich::names::{NameSources, Namer},
    output::metrics::Metrics,
};

/// Time per poll spent symbolizing user stacks; past it, frames stay addresses.
const SYMBOLIZE_BUDGET: Duration = Duration::from_millis(200);
/// User stacks are named only in cgroups with at most this much headroom (% of the limit
/// left): the ones a kill may soon ask about. Elsewhere they stay addresses, and the daemon
/// maps no ELF file of the host's busy processes.
const SYMBOLIZE_HEADROOM_PCT: f64 = 50.0;
/// Warnings and later stacks waiting for the event loop; past this they are dropped (and
/// logged). A storm's poll resolves a hundred kills' later stacks at once.
const NEWS_QUEUE: usize = 1024;
/// A cgroup with at most this much headroom (% of its limit), or that reclaimed, is pressed:
/// the OOM-stall poll reads it every second (see `cgroup::oom_stall`).
const PRESSED_HEADROOM_PCT: f64 = 5.0;
/// Pressed cgroups kept for the daemon between its takes, at most.
const MAX_PRESSED: usize = 4096;
/// How long the daemon's exit waits for the worker's thread to stop: a poll in progress stops
/// symbolizing at once, but a single file read or lookup still finishes.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// What the worker tells the event loop.
#[derive(Debug)]
pub enum News {
    Warning(PreOomWarning),
    /// The stacks of a kill sent before they were published.
    KillStacks(KillStacks),
}

/// Kills waiting for their stacks (see [`ChargeWatch::stacks_later`]).
#[derive(Debug, Default)]
struct Later {
    waiting: Vec<LaterStacks>,
    /// Given up: too many waiting, or the event loop's queue full.
    given_up: u64,
}

/// Cgroups (id, path) the daemon learnt and the worker has not yet taken; `None` until the
/// daemon feeds any.
type Inbox = Arc<Mutex<Option<Vec<(u64, String)>>>>;

/// What the daemon asks of the worker between its polls.
enum Ask {
    /// Drain and publish the samples now, naming the stacks of `cgroups` whatever their
    /// headroom was at the last poll (a kill's cgroup is at its limit now); `done` when the
    /// window has them.
    Flush {
        cgroups: Vec<u64>,
        done: tokio::sync::oneshot::Sender<()>,
    },
}

pub struct ChargeWatch {
    window: Arc<Mutex<Window>>,
    span: Duration,
    /// Asks for flushes; its drop wakes and stops the thread.
    asks: Option<std::sync::mpsc::Sender<Ask>>,
    thread: Option<JoinHandle<()>>,
    /// Set at drop: a poll in progress names no more stacks.
    stopping: Arc<AtomicBool>,
    /// Cgroups created since the worker's last poll (see [`Self::cgroups_created`]).
    created: Inbox,
    /// Cgroups that reclaimed or came near their limit since the last [`Self::take_pressed`].
    pressed: Arc<Mutex<Vec<String>>>,
    /// Polls and flushes begun (see [`Self::mark`]).
    begun: Arc<AtomicU64>,
    later: Arc<Mutex<Later>>,
}

struct Worker {
    maps: ChargeMaps,
    monitor: ChargeMonitor,
    warner: Warner,
    paths: CgroupPaths,
    window: Arc<Mutex<Window>>,
    keep: Duration,
    news: mpsc::Sender<News>,
    page_size: u64,
    /// Headroom (% of the limit) per cgroup at the last poll.
    headroom: HashMap<u64, f64>,
    /// Where the charge counters and warnings are counted for /metrics.
    metrics: Option<Arc<Metrics>>,
    /// The warning threshold (working set / limit).
    near_ratio: f64,
    /// Finds cgroups near their limit that no sample showed.
    sweep: LimitSweep,
    /// Cgroups the daemon learnt from the cgroup_mkdir hook; `None` until it feeds any.
    created: Inbox,
    /// Where the pressed cgroups of each poll are left for the daemon.
    pressed: Arc<Mutex<Vec<String>>>,
    /// Container and pod names for the warnings (a few file reads per new cgroup, here off
    /// the event loop).
    namer: Namer,
    /// The daemon is exiting: stacks are left as addresses.
    stopping: Arc<AtomicBool>,
    /// Polls and flushes begun; each is numbered by it.
    begun: Arc<AtomicU64>,
    /// Kills waiting for their stacks: a poll numbered above theirs names and sends them.
    later: Arc<Mutex<Later>>,
    /// How far back a kill's stacks look.
    span: Duration,
}

impl Worker {
    /// The worker thread: a poll each `interval`, and a flush whenever a kill asks for one.
    /// Returns when the `ChargeWatch` drops its end of `asked`.
    fn run(mut self, asked: &std::sync::mpsc::Receiver<Ask>, interval: Duration) {
        // blazesym's symbolizer is not Send: it lives on this thread.
        let mut symbols = Symbols::new();
        let mut next = Instant::now();
        // One wake-up per poll: a 50 ms nap loop cost more at rest than some polls.
        loop {
            let now = Instant::now();
            if now >= next {
                self.poll(&mut symbols);
                // A poll that overran its interval does not queue up polls behind it.
                next = (next + interval).max(Instant::now());
                continue;
            }
            match asked.recv_timeout(next - now) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Ok(Ask::Flush { mut cgroups, done }) => {
                    // Kills that came together share one flush.
                    let mut dones = vec![done];
                    while let Ok(Ask::Flush { cgroups: more, done }) = asked.try_recv() {
                        cgroups.extend(more);
                        dones.push(done);
                    }
                    cgroups.sort_unstable();
                    cgroups.dedup();
                    self.flush(&mut symbols, &cgroups);
                    for d in dones {
                        let _ = d.send(());
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    fn poll(&mut self, symbols: &mut Symbols) {
        let t0 = Instant::now();
        let number = self.begun.fetch_add(1, Ordering::AcqRel) + 1;
        self.monitor.poll(&mut self.maps, self.page_size);
        let read = t0.elapsed();
        // Memory files only of cgroups near a warning (their kernel usage reading within 10 % of
        // the limit below the threshold, or stalling in reclaim): cost follows them, not the
        // number of busy cgroups.
        let near_ratio = (self.near_ratio - 0.1).max(0.0);
        self.sweep_limits(near_ratio, t0);
        let near = Reads::NearLimit(near_ratio);
        let rows = rows(&mut self.monitor, &mut self.paths, near, self.page_size);
        self.headroom = rows
            .iter()
            .filter_map(|r| Some((r.cgroup_id, r.headroom_pct?)))
            .collect();
        // A kill's cgroup has room again once its victim is gone, but its stacks are the ones
        // the kill's later stacks ask for. (A poll begun before the kill may have drained
        // before its last samples: the one after it names and sends them.)
        let mut waited_for = vec![];
        if let Ok(l) = self.later.lock() {
            for w in l.waiting.iter().filter(|w| w.after < number) {
                for id in &w.scope.ids {
                    self.headroom.insert(*id, 0.0);
                    waited_for.push(*id);
                }
            }
        }
        // A process started in a cgroup whose stacks are named is recorded at its exec.
        self.maps.record_execs_in(
            self.headroom
                .iter()
                .filter(|(_, h)| **h <= SYMBOLIZE_HEADROOM_PCT)
                .map(|(id, _)| *id),
        );
        let pressed = rows.iter().filter(|r| {
            r.rate.reclaim_stalls_per_s > 0.0 || r.headroom_pct.is_some_and(|h| h <= PRESSED_HEADROOM_PCT)
        });
        if let Ok(mut p) = self.pressed.lock() {
            // Bounded should nobody take them (the stall poll's slow round still covers all).
            let room = MAX_PRESSED.saturating_sub(p.len());
            p.extend(pressed.take(room).map(|r| r.cgroup.clone()));
        }
        // Warnings first: symbolizing can take long (seconds per new binary in an emulated VM
        // guest), and a warning must not wait for it.
        self.warn(&rows);
        let publish = Instant::now();
        self.publish_stacks(symbols);
        self.name_published(symbols, &waited_for);
        self.send_later_stacks(number);
        log::debug!(
            "charge poll: {} cgroups charging, {} active, {} samples, {:?} (maps {read:?}, \
             stacks {:?})",
            self.monitor.rates.len(),
            rows.len(),
            self.monitor.latest().len(),
            t0.elapsed(),
            publish.elapsed()
        );
        for r in &rows {
            log::trace!(
                "row {} usage {:?} ws {:?} limit {:?}",
                r.cgroup,
                r.usage_bytes,
                r.working_set_bytes,
                r.limit_bytes
            );
        }
        if let Some(m) = &self.metrics {
            m.record_charges(&rows, self.page_size);
        }
    }

    /// Cgroups near their limit that no sample showed (see `sweep`), with what the daemon
    /// learnt of new cgroups; they are read in full by `rows` while they stay near.
    fn sweep_limits(&mut self, near_ratio: f64, now: Instant) {
        if let Some(created) = self
            .created
            .lock()
            .ok()
            .and_then(|mut c| c.as_mut().map(std::mem::take))
        {
            self.sweep.learn(created);
        }
        // The kernel's reading at a sample since the last sweep stands for the files.
        let since = crate::kernel::clock::boot_ns().saturating_sub(SWEEP_EVERY.as_nanos() as u64);
        let (snapshots, page_size) = (&self.monitor.snapshots, self.page_size);
        let sampled = |id| {
            let s = snapshots.get(&id).filter(|s| s.seen_ns >= since)?;
            Some((s.usage_pages * page_size, s.limit_bytes(page_size)))
        };
        if let Some(found) = self.sweep.poll(self.paths.hierarchy(), near_ratio, now, sampled) {
            let ids: Vec<u64> = found.iter().map(|(id, _)| *id).collect();
            for (id, path) in found {
                self.paths.remember(id, path);
            }
            self.monitor.mark_near(ids);
        }
    }

    /// Pre-OOM warnings, named, counted and sent to the event loop (never blocking it).
    fn warn(&mut self, rows: &[Row]) {
        for mut warning in self.warner.check(rows, Instant::now()) {
            warning.attribution = self.namer.attribute(&warning.cgroup);
            if let Some(m) = &self.metrics {
                m.record_warning(&warning);
            }
            if self.news.try_send(News::Warning(warning)).is_err() {
                log::warn!("pre-OOM warning dropped: the event loop is behind");
            }
        }
    }

    /// The samples since the last poll, into the window now: a kill is waiting for them. The
    /// rest of a poll (counter totals and rates, cgroup reads, warnings) waits for the next
    /// tick.
    fn flush(&mut self, symbols: &mut Symbols, urgent: &[u64]) {
        let t0 = Instant::now();
        self.begun.fetch_add(1, Ordering::AcqRel);
        let samples = self.maps.drain_samples();
        self.monitor.record(t0, samples);
        for id in urgent {
            self.headroom.insert(*id, 0.0);
        }
        self.publish_stacks(symbols);
        self.name_published(symbols, urgent);
        log::debug!(
            "charge flush for a kill in cgroups {urgent:?}: {} samples, {:?}",
            self.monitor.latest().len(),
            t0.elapsed()
        );
    }

    /// Stacks of `cgroups` (kills') that an earlier poll published as addresses (their
    /// cgroup was not near its limit then, or had no reading yet), named now that a kill asks
    /// for them (its flush, or the poll that sends its later stacks), within the time budget.
    /// In a 7.2 guest a huge-page filler's whole stack (127 samples) went out as addresses in
    /// its kill, the flush having no new sample to name. This thread alone writes the window,
    /// so the rows named are still there to replace.
    fn name_published(&mut self, symbols: &mut Symbols, cgroups: &[u64]) {
        if cgroups.is_empty() {
            return;
        }
        let started = Instant::now();
        let unnamed: Vec<(usize, usize, u32, Vec<u64>)> = match self.window.lock() {
            Ok(w) => w
                .iter()
                .enumerate()
                .flat_map(|(i, (_, stacks))| stacks.iter().enumerate().map(move |(j, h)| (i, j, h)))
                .filter(|(_, _, h)| cgroups.contains(&h.cgroup_id))
                .filter_map(|(i, j, h)| Some((i, j, h.pid, h.unnamed_user()?)))
                .collect(),
            Err(_) => return,
        };
        let mut named = Vec::with_capacity(unnamed.len());
        for (i, j, pid, addrs) in unnamed {
            if started.elapsed() >= SYMBOLIZE_BUDGET || self.stopping.load(Ordering::Relaxed) {
                break;
            }
            named.push((i, j, symbols.user(pid, &addrs)));
        }
        if !named.is_empty() {
            let got = named
                .iter()
                .filter(|(_, _, frames)| frames.iter().any(|f| !f.starts_with("0x")))
                .count();
            log::debug!(
                "{got} of {} stacks of cgroups {cgroups:?} published as addresses named for a kill",
                named.len()
            );
        }
        if let Ok(mut w) = self.window.lock() {
            for (i, j, frames) in named {
                if let Some(h) = w.get_mut(i).and_then(|(_, stacks)| stacks.get_mut(j)) {
                    h.user = frames;
                }
            }
        }
    }

    /// The stacks of the kills that waited for poll `number` (a kill's victim is sampled
    /// before its kill), to the event loop; from here, off it.
    fn send_later_stacks(&mut self, number: u64) {
        let ready: Vec<LaterStacks> = match self.later.lock() {
            Ok(mut l) => {
                let (ready, waiting) = std::mem::take(&mut l.waiting)
                    .into_iter()
                    .partition(|w| w.after < number);
                l.waiting = waiting;
                ready
            }
            Err(_) => return,
        };
        // Kills of one scope (a storm's hundred a second come from a few cgroups) share one
        // sum over the window, and the window is locked for that sum only: a kill being
        // enriched reads it too.
        let mut by_scope: HashMap<Vec<u64>, Vec<LaterStacks>> = HashMap::new();
        for w in ready {
            by_scope.entry(w.scope.ids.clone()).or_default().push(w);
        }
        let mut updates: Vec<KillStacks> = Vec::new();
        for kills in by_scope.into_values() {
            let Some(scope) = kills.first().map(|k| k.scope.clone()) else {
                continue;
            };
            let summed = match self.window.lock() {
                Ok(window) => scope.sum(&window, self.span),
                Err(_) => return,
            };
            updates.extend(kills.into_iter().filter_map(|k| k.resolve(&summed)));
        }
        let mut dropped = 0u64;
        for u in updates {
            if self.news.try_send(News::KillStacks(u)).is_err() {
                dropped += 1;
            }
        }
        if dropped > 0 {
            log::warn!("{dropped} kills' later stacks dropped: the event loop is behind");
            if let Ok(mut l) = self.later.lock() {
                l.given_up += dropped;
            }
        }
    }

    /// This poll's samples, resolved within the time budget, into the window kills read.
    fn publish_stacks(&mut self, symbols: &mut Symbols) {
        let started = Instant::now();
        let room = |s: &Sample| self.headroom.get(&s.key.cgroup_id).copied().unwrap_or(f64::MAX);
        // The time budget goes first to the cgroups closest to their limit (the ones whose
        // stacks a kill will ask for), and in each to its most-sampled stacks: the first
        // stack of a binary can take the whole budget to name (hundreds of ms in an emulated
        // guest), and a two-sample stack in libc took it from the filler's 126-sample one.
        let mut latest: Vec<&Sample> = self.monitor.latest().iter().collect();
        latest.sort_by(|a, b| room(a).total_cmp(&room(b)).then(b.count.cmp(&a.count)));
        let kernel_ips: Vec<u64> = latest.iter().flat_map(|s| s.kernel_ips.iter().copied()).collect();
        symbols.learn_kernel(&kernel_ips);
        let kernel_named = started.elapsed();
        let mut named = 0;
        let resolved: Vec<HotStack> = latest
            .into_iter()
            .map(|s| {
                if room(s) <= SYMBOLIZE_HEADROOM_PCT
                    && started.elapsed() < SYMBOLIZE_BUDGET
                    && !self.stopping.load(Ordering::Relaxed)
                {
                    named += 1;
                    HotStack::resolve(symbols, s)
                } else {
                    HotStack::resolve_kernel_only(symbols, s)
                }
            })
            .collect();
        log::trace!(
            "stacks: kernel frames named in {kernel_named:?}, {named} of {} user stacks named, {:?}",
            resolved.len(),
            started.elapsed()
        );
        let now = Instant::now();
        if let Ok(mut w) = self.window.lock() {
            w.push_back((now, resolved));
            while w.front().is_some_and(|(t, _)| now.duration_since(*t) > self.keep) {
                w.pop_front();
            }
        }
    }
}

impl ChargeWatch {
    /// Starts the worker. `window` is how far back a kill's stacks look; `paths` is a copy of
    /// the daemon's, so start-up walks the hierarchy once. The receiver gets its pre-OOM
    /// warnings (the event loop reads it; the enricher keeps the worker for kill stacks).
    pub fn spawn(
        maps: ChargeMaps,
        paths: CgroupPaths,
        window: Duration,
        warn: WarnOptions,
        interval: Duration,
        metrics: Option<Arc<Metrics>>,
        names: NameSources,
    ) -> std::io::Result<(Self, mpsc::Receiver<News>)> {
        // SAFETY: sysconf has no preconditions.
        let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let shared = Arc::new(Mutex::new(Window::new()));
        // Dropped to stop the thread: it sleeps until its next poll, an ask, or this.
        let (asks, asked) = std::sync::mpsc::channel::<Ask>();
        let (tx, rx) = mpsc::channel(NEWS_QUEUE);
        let created = Arc::new(Mutex::new(None));
        let pressed = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let begun = Arc::new(AtomicU64::new(0));
        let later = Arc::new(Mutex::new(Later::default()));
        let keep = window + interval;
        let worker = Worker {
            maps,
            // Only the latest poll's samples: the window kept is of symbolized stacks.
            monitor: ChargeMonitor::new(Duration::ZERO),
            warner: Warner::new(warn),
            paths,
            window: Arc::clone(&shared),
            keep,
            news: tx,
            page_size,
            headroom: HashMap::new(),
            metrics,
            near_ratio: warn.ratio,
            sweep: LimitSweep::new(SWEEP_EVERY),
            created: Arc::clone(&created),
            pressed: Arc::clone(&pressed),
            namer: Namer::new(names),
            stopping: Arc::clone(&stopping),
            begun: Arc::clone(&begun),
            later: Arc::clone(&later),
            span: window,
        };
        let thread = std::thread::Builder::new()
            .name("memtrace-charges".into())
            .spawn(move || worker.run(&asked, interval))?;
        let watch = Self {
            window: shared,
            span: window,
            asks: Some(asks),
            thread: Some(thread),
            stopping,
            begun,
            later,
            created,
            pressed,
        };
        Ok((watch, rx))
    }

    /// Asks the worker to publish the samples taken since its last poll, naming the stacks of
    /// `cgroups` (a kill's); the receiver hears when the window has them. `None`: the worker
    /// is gone.
    pub fn flush(&self, cgroups: Vec<u64>) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let (done, heard) = tokio::sync::oneshot::channel();
        self.asks.as_ref()?.send(Ask::Flush { cgroups, done }).ok()?;
        Some(heard)
    }

    /// Cgroups the cgroup_mkdir hook reported. Once fed, the limit sweep walks the hierarchy
    /// only once a minute (as a safety net) and learns new cgroups from here in between.
    pub fn cgroups_created(&self, cgroups: Vec<(u64, String)>) {
        if let Ok(mut c) = self.created.lock() {
            c.get_or_insert_with(Vec::new).extend(cgroups);
        }
    }

    /// Cgroups that reclaimed or came within a few % of their limit at the worker's polls
    /// since the last call: where an OOM stall can begin.
    pub fn take_pressed(&self) -> Vec<String> {
        self.pressed
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }

    /// The number of the last poll or flush begun: one numbered higher drains every sample
    /// taken before this call.
    pub fn mark(&self) -> u64 {
        self.begun.load(Ordering::Acquire)
    }

    /// A kill sent without a stack of its victim: the first poll begun after it names the
    /// stacks of its scope (user frames are otherwise named only in cgroups near their limit,
    /// and a kill's has room again once its victim is gone) and sends them to the event loop
    /// as [`News::KillStacks`], if its victim is among them.
    pub fn stacks_later(&self, l: LaterStacks) {
        let Ok(mut later) = self.later.lock() else { return };
        if later.waiting.len() >= MAX_WAITING {
            later.given_up += 1;
            log::warn!(
                "kill {}: its later stacks given up ({MAX_WAITING} kills waiting for the charge worker)",
                l.update.kill_seq
            );
            return;
        }
        later.waiting.push(l);
    }

    /// Kills whose later stacks were not sent: still waiting, or given up.
    pub fn stacks_unsent(&self) -> u64 {
        self.later
            .lock()
            .map(|l| (l.waiting.len() as u64).saturating_add(l.given_up))
            .unwrap_or_default()
    }

    /// The top charging stacks of a kill's scope over the window, up to the worker's last
    /// poll.
    pub fn kill_context(&self, scope: &KillScope) -> Vec<HotStack> {
        match self.window.lock() {
            Ok(window) => scope.top_stacks(&window, self.span),
            Err(_) => vec![],
        }
    }
}

impl Drop for ChargeWatch {
    /// Stops the worker, waiting at most [`STOP_WAIT`]: the daemon's exit is not held by a
    /// slow poll (one of 169 fresh samples took 10 s in an emulated guest). A thread still
    /// busy past that is left to end with the process; the maps it reads are its own fds.
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        drop(self.asks.take());
        let Some(t) = self.thread.take() else { return };
        let deadline = Instant::now() + STOP_WAIT;
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if t.is_finished() {
            let _ = t.join();
        } else {
            log::warn!("the charge worker did not stop within {STOP_WAIT:?}: left to end with the daemon");
        }
    }
}
