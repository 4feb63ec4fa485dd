//! The charge side of `memtrace watch`, on a thread of its own so that nothing it does (map
//! reads, symbolization, cgroup file reads) can delay a kill event. Once a second it drains
//! the charge maps, symbolizes the new samples while their processes still run, publishes a
//! window of resolved stacks, and sends pre-OOM warnings to the event loop. A kill reads the
//! published window, memory only. With `charges.kill_stacks_wait` it first asks for a flush
//! ([`ChargeWatch::flush`]): the samples since the last poll are drained and published at once
//! (a runaway process is killed well within one interval of its start).

use std::{
    collections::{HashMap, VecDeque},
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
    charges::maps::ChargeMaps,
    charges::stacks::{HotStack, merge_pids},
    charges::sweep::{LimitSweep, SWEEP_EVERY},
    charges::symbolize::{Frame, Symbols},
    charges::warnings::{PreOomWarning, WarnOptions, Warner},
    enrich::kill::OomKill,
    enrich::names::{NameSources, Namer},
    output::metrics::Metrics,
};

/// Stacks shown with a kill.
const KILL_STACKS: usize = 5;
/// Time per poll spent symbolizing user stacks; past it, frames stay addresses.
const SYMBOLIZE_BUDGET: Duration = Duration::from_millis(200);
/// User stacks are named only in cgroups with at most this much headroom (% of the limit
/// left): the ones a kill may soon ask about. Elsewhere they stay addresses, and the daemon
/// maps no ELF file of the host's busy processes.
const SYMBOLIZE_HEADROOM_PCT: f64 = 50.0;
/// Warnings waiting for the event loop; past this they are dropped (and logged).
const WARNING_QUEUE: usize = 256;
/// A cgroup with at most this much headroom (% of its limit), or that reclaimed, is pressed:
/// the OOM-stall poll reads it every second (see `cgroup::oom_stall`).
const PRESSED_HEADROOM_PCT: f64 = 5.0;
/// Pressed cgroups kept for the daemon between its takes, at most.
const MAX_PRESSED: usize = 4096;
/// How long the daemon's exit waits for the worker's thread to stop: a poll in progress stops
/// symbolizing at once, but a single file read or lookup still finishes.
const STOP_WAIT: Duration = Duration::from_secs(2);

type Window = VecDeque<(Instant, Vec<HotStack>)>;
/// A stack's identity when summing a window: cgroup, pid, comm, user and kernel frames.
type StackId<'a> = (u64, u32, &'a str, &'a [Frame], &'a [Frame]);

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
    /// The number of the last poll or flush whose samples are in the window.
    published: tokio::sync::watch::Receiver<u64>,
    /// Cgroups whose stacks the next poll names whatever their headroom (see
    /// [`Self::name_next_poll`]).
    urgent: Arc<Mutex<Vec<Urgent>>>,
}

/// A cgroup whose stacks the first poll numbered above `after` names.
#[derive(Debug, Clone, Copy)]
struct Urgent {
    cgroup: u64,
    after: u64,
}

/// The scope of a kill's stacks: its OOM cgroup and everything under it, and its victim.
#[derive(Debug, Clone, Default)]
pub struct KillScope {
    ids: Vec<u64>,
    pub pid: u32,
}

struct Worker {
    maps: ChargeMaps,
    monitor: ChargeMonitor,
    warner: Warner,
    paths: CgroupPaths,
    window: Arc<Mutex<Window>>,
    keep: Duration,
    warnings: mpsc::Sender<PreOomWarning>,
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
    /// The number of the last poll or flush whose samples are in the window.
    published: tokio::sync::watch::Sender<u64>,
    /// Cgroups of kills waiting for their stacks: named at the next poll.
    urgent: Arc<Mutex<Vec<Urgent>>>,
}

impl Worker {
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
        // the kill's later update asks for.
        if let Ok(mut u) = self.urgent.lock() {
            // A poll begun before the kill asked may have drained before its last samples:
            // the one after it names them.
            u.retain(|x| {
                if x.after >= number {
                    return true;
                }
                self.headroom.insert(x.cgroup, 0.0);
                false
            });
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
        self.publish_stacks(symbols, number);
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
            if self.warnings.try_send(warning).is_err() {
                log::warn!("pre-OOM warning dropped: the event loop is behind");
            }
        }
    }

    /// The samples since the last poll, into the window now: a kill is waiting for them. The
    /// rest of a poll (counter totals and rates, cgroup reads, warnings) waits for the next
    /// tick.
    fn flush(&mut self, symbols: &mut Symbols, urgent: &[u64]) {
        let t0 = Instant::now();
        let number = self.begun.fetch_add(1, Ordering::AcqRel) + 1;
        let samples = self.maps.drain_samples();
        self.monitor.record(t0, samples);
        for id in urgent {
            self.headroom.insert(*id, 0.0);
        }
        self.publish_stacks(symbols, number);
        log::debug!(
            "charge flush for a kill in cgroups {urgent:?}: {} samples, {:?}",
            self.monitor.latest().len(),
            t0.elapsed()
        );
    }

    /// This poll's samples, resolved within the time budget, into the window kills read;
    /// then its `number` is published.
    fn publish_stacks(&mut self, symbols: &mut Symbols, number: u64) {
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
        self.published.send_replace(number);
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
    ) -> std::io::Result<(Self, mpsc::Receiver<PreOomWarning>)> {
        // SAFETY: sysconf has no preconditions.
        let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let shared = Arc::new(Mutex::new(Window::new()));
        // Dropped to stop the thread: it sleeps until its next poll, an ask, or this.
        let (asks, asked) = std::sync::mpsc::channel::<Ask>();
        let (tx, rx) = mpsc::channel(WARNING_QUEUE);
        let created = Arc::new(Mutex::new(None));
        let pressed = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let begun = Arc::new(AtomicU64::new(0));
        let (published_tx, published) = tokio::sync::watch::channel(0);
        let urgent = Arc::new(Mutex::new(Vec::new()));
        let keep = window + interval;
        let mut worker = Worker {
            maps,
            // Only the latest poll's samples: the window kept is of symbolized stacks.
            monitor: ChargeMonitor::new(Duration::ZERO),
            warner: Warner::new(warn),
            paths,
            window: Arc::clone(&shared),
            keep,
            warnings: tx,
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
            published: published_tx,
            urgent: Arc::clone(&urgent),
        };
        let thread = std::thread::Builder::new()
            .name("memtrace-charges".into())
            .spawn(move || {
                // blazesym's symbolizer is not Send: it lives on this thread.
                let mut symbols = Symbols::new();
                let mut next = Instant::now();
                // One wake-up per poll: a 50 ms nap loop cost more at rest than some polls.
                loop {
                    let now = Instant::now();
                    if now >= next {
                        worker.poll(&mut symbols);
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
                            worker.flush(&mut symbols, &cgroups);
                            for d in dones {
                                let _ = d.send(());
                            }
                        }
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            })?;
        let watch = Self {
            window: shared,
            span: window,
            asks: Some(asks),
            thread: Some(thread),
            stopping,
            begun,
            published,
            urgent,
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

    /// Where a kill's stacks come from: its OOM cgroup and everything under it (the victim's
    /// own cgroup in a global OOM), and its victim, preferred when rows are merged.
    pub fn scope(paths: &CgroupPaths, kill: &OomKill) -> KillScope {
        let scope = kill
            .oom_cgroup
            .as_ref()
            .map(|o| &o.cgroup)
            .or(kill.cgroup.as_ref());
        let Some(scope) = scope else {
            return KillScope {
                ids: vec![],
                pid: kill.pid,
            };
        };
        let mut ids: Vec<u64> = scope.id.into_iter().collect();
        if let Some(prefix) = scope.path.as_deref() {
            let under = format!("{}/", prefix.trim_end_matches('/'));
            ids.extend(
                paths
                    .ids_with_paths()
                    .filter(|(_, p)| p.starts_with(&under))
                    .map(|(id, _)| id),
            );
        }
        KillScope { ids, pid: kill.pid }
    }

    /// The number of the last poll or flush begun: one numbered higher drains every sample
    /// taken before this call.
    pub fn mark(&self) -> u64 {
        self.begun.load(Ordering::Acquire)
    }

    /// Has the next poll name the stacks of a kill's scope (user frames are otherwise named
    /// only in cgroups near their limit, and a kill's has room again once its victim is gone).
    pub fn name_next_poll(&self, scope: &KillScope, after: u64) {
        if let Ok(mut u) = self.urgent.lock() {
            // Bounded should the worker stop polling.
            let room = MAX_PRESSED.saturating_sub(u.len());
            u.extend(
                scope
                    .ids
                    .iter()
                    .take(room)
                    .map(|&cgroup| Urgent { cgroup, after }),
            );
        }
    }

    /// Hears the number of each poll or flush whose samples are published.
    pub fn published(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.clone()
    }

    /// The top charging stacks of a kill's scope over the window, up to the worker's last
    /// poll.
    pub fn kill_context(&self, scope: &KillScope) -> Vec<HotStack> {
        let ids = &scope.ids;
        if ids.is_empty() {
            return vec![];
        }
        let Ok(window) = self.window.lock() else {
            return vec![];
        };
        let now = Instant::now();
        let mut sum: HashMap<StackId<'_>, u64> = HashMap::new();
        for (t, stacks) in window.iter() {
            if now.duration_since(*t) > self.span {
                continue;
            }
            for h in stacks.iter().filter(|h| ids.contains(&h.cgroup_id)) {
                *sum.entry((h.cgroup_id, h.pid, &h.comm, &h.user, &h.kernel))
                    .or_default() += h.count;
            }
        }
        let top: Vec<HotStack> = sum
            .into_iter()
            .map(|((cgroup_id, pid, comm, user, kernel), count)| HotStack {
                count,
                cgroup_id,
                pid,
                comm: comm.to_owned(),
                user: user.to_vec(),
                kernel: kernel.to_vec(),
                pids: 1,
            })
            .collect();
        let mut top = merge_pids(top, Some(scope.pid));
        top.truncate(KILL_STACKS);
        log::debug!("kill context: cgroups {ids:?}, {} stacks", top.len());
        top
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
