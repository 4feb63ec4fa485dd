//! The event loop: it waits on the rings, the one-second tick, the charge worker's news
//! and the signals, and moves each record through decode → enrich → route.

use std::collections::VecDeque;

use anyhow::Context as _;
use tokio::{
    sync::mpsc,
    task::JoinHandle,
    time::{Duration, interval},
};

use super::{COUNTER_CHECK, Signals, decode, heap::HeapTrim, route::Router, summary};
use crate::{
    cgroup::oom_stall::StallWatch,
    charges::worker::News,
    enrich::enricher::{Enricher, Pending},
    enrich::user_kill::UserKill,
    kernel::clock,
    kernel::hooks::HookId,
    kernel::oom_path::CallPaths,
    kernel::records::OomRecord,
    kernel::tracer::{AsyncRing, Tracer},
};

/// Kills whose file reads run at once: about two per CPU of this kind of machine; more would
/// only make each one slower against its budget.
const READS_AT_ONCE: usize = 4;

pub struct Daemon {
    /// Dropped last: dropping it detaches every program.
    pub tracer: Tracer,
    pub oom_ring: AsyncRing,
    pub cgroup_ring: Option<AsyncRing>,
    pub user_kill_ring: Option<AsyncRing>,
    /// Each kill's call path from its kernel stack, where oom_kill_process is not hooked.
    pub call_paths: Option<CallPaths>,
    /// The memory hierarchy's id, to pick its cgroups out of the cgroup_mkdir records.
    pub mem_root: Option<u32>,
    pub enricher: Enricher,
    /// Pre-OOM warnings and kills' later stacks from the charge worker.
    pub news: Option<mpsc::Receiver<News>>,
    pub router: Router,
    pub stalls: StallWatch,
    /// Ring-full losses already reported.
    pub reported_lost: u64,
    pub metrics_server: Option<JoinHandle<()>>,
    pub all_userspace_kills: bool,
    pub exit_after: Option<u64>,
    /// How long a kill waits for its file reads (`watch.enrich_budget`).
    pub enrich_budget: Duration,
    /// Gives freed heap back every few seconds.
    pub heap: HeapTrim,
}

/// The charge worker's next news; never, without a worker.
async fn next_news(rx: &mut Option<mpsc::Receiver<News>>) -> Option<News> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Daemon {
    /// Until a signal, or `--exit-after` kills.
    pub async fn run(&mut self, signals: &mut Signals) -> anyhow::Result<()> {
        let mut tick = interval(COUNTER_CHECK);
        loop {
            tokio::select! {
                guard = self.oom_ring.readable_mut() => {
                    let mut guard = guard.context("polling the OOM ring buffer")?;
                    let errors = &mut self.router.delivery.decode_errors;
                    let records = decode::oom_records(guard.get_inner_mut(), errors, &self.router.metrics);
                    guard.clear_ready();
                    self.kills(records).await;
                }
                _ = tick.tick() => self.tick(),
                Some(news) = next_news(&mut self.news) => {
                    // Kills already in the ring go first: a warning whose cgroup was killed
                    // since its evidence began would come after its kill, and is dropped.
                    self.drain_kills().await;
                    self.route_news(news);
                }
                guard = decode::readable(self.user_kill_ring.as_mut()) => {
                    let mut guard = guard.context("polling the userspace kill ring buffer")?;
                    let signals = decode::user_kill_signals(guard.get_inner_mut());
                    guard.clear_ready();
                    self.user_kills(signals);
                }
                _ = signals.recv() => break,
            }
            if self
                .exit_after
                .is_some_and(|n| self.router.delivery.delivered >= n)
            {
                break;
            }
        }
        Ok(())
    }

    /// Enrich and route: cgroups created just before the kills are learnt first. Each kill
    /// waits at most the budget for its file reads; the reads of up to [`READS_AT_ONCE`] kills
    /// run side by side, so that a burst is not delayed by the sum of its reads. Kills are
    /// routed in the kernel's order.
    async fn kills(&mut self, records: Vec<OomRecord>) {
        self.learn_cgroups();
        let mut reading = VecDeque::with_capacity(READS_AT_ONCE);
        for r in records {
            match r {
                OomRecord::Victim(mut v) => {
                    if let (Some(c), Some(id)) = (self.call_paths.as_ref(), v.kernel_stack) {
                        v.call_path = c.of(id);
                    }
                    self.route_oldest(&mut reading, READS_AT_ONCE - 1).await;
                    let p = self.enricher.start(*v, self.enrich_budget);
                    let walks = p.walks();
                    reading.push_back(p);
                    // A walk for an unknown cgroup is waited for before the next kill starts,
                    // as one kill at a time did: kills side by side each walked the whole
                    // hierarchy, ran late and went without their paths (a storm benchmark
                    // round: 45 of 2,874 kills).
                    if walks {
                        self.route_oldest(&mut reading, 0).await;
                    }
                }
                OomRecord::Context(c) => self.enricher.note_context(c),
            }
        }
        self.route_oldest(&mut reading, 0).await;
    }

    /// Completes and routes the oldest kills in flight, in order, until at most `keep` remain.
    async fn route_oldest(&mut self, reading: &mut VecDeque<Pending>, keep: usize) {
        while reading.len() > keep
            && let Some(p) = reading.pop_front()
        {
            let enriched = self.enricher.complete(p).await;
            self.router.kill(enriched);
        }
    }

    fn route_news(&mut self, news: News) {
        match news {
            News::Warning(w) => self.router.warning(w),
            News::KillStacks(k) => self.router.kill_stacks(k),
        }
    }

    /// Whatever the OOM ring holds now, without waiting for more.
    async fn drain_kills(&mut self) {
        let errors = &mut self.router.delivery.decode_errors;
        let records = decode::oom_records(self.oom_ring.get_mut(), errors, &self.router.metrics);
        self.kills(records).await;
    }

    fn user_kills(&mut self, signals: Vec<crate::kernel::user_kill::UserKillSignal>) {
        for s in signals {
            self.router.delivery.user_kills_seen += 1;
            if let Some(k) = UserKill::from_signal(s, self.enricher.paths_mut(), self.all_userspace_kills) {
                self.router.user_kill(k);
            }
        }
    }

    /// New cgroups from the cgroup_mkdir ring, for the path cache and the charge worker.
    fn learn_cgroups(&mut self) {
        let learned = decode::learn_cgroups(
            self.cgroup_ring.as_mut(),
            self.enricher.paths_mut(),
            self.mem_root,
        );
        if self.cgroup_ring.is_some()
            && let Some(c) = self.enricher.charges()
        {
            c.cgroups_created(learned);
        }
    }

    /// Once a second: new cgroups, losses, ended episodes, stalls, stale metrics, and the
    /// reconciliation with the kernel's counters.
    fn tick(&mut self) {
        self.learn_cgroups();
        self.reported_lost = summary::report_losses(&self.tracer, self.reported_lost, &self.router.metrics);
        for e in self.enricher.ended_episodes(clock::boot_ns()) {
            self.router.episode(e);
        }
        // Cgroups at their limit reclaim first: with the reclaim hook, the charge worker names
        // where a stall can begin, and the rest are polled rarely. Taken every tick either way,
        // so that what the worker leaves does not pile up.
        if let Some(c) = self.enricher.charges() {
            let pressed = c.take_pressed();
            if self.tracer.selected(HookId::ReclaimEnd).is_some() {
                self.stalls.pressed(pressed, std::time::Instant::now());
            }
        }
        if let Some(p) = self.enricher.paths() {
            // The path cache is current while the cgroup_mkdir hook feeds it: no walk then.
            let known = self.cgroup_ring.is_some().then(|| p.iter());
            for s in self.stalls.poll(p.hierarchy(), known) {
                self.router.stall(s);
            }
            let h = p.hierarchy();
            self.router.metrics.sweep(|cgroup| h.dir(cgroup).is_dir());
        }
        self.enricher.keep_learned();
        self.router.reconcile_now(self.enricher.paths());
        self.heap.tick(std::time::Instant::now());
    }

    /// Records that arrived with the signal are still reported; nothing new is produced from
    /// here on, so the counters read below count exactly what the last drain can see.
    pub async fn finish(mut self, shutdown_timeout: Duration) {
        if let Some(r) = self.router.reconcile.as_mut() {
            r.closing();
        }
        self.tracer.stop_producing();
        if let Some(r) = self.user_kill_ring.as_mut() {
            let signals = decode::user_kill_signals(r.get_mut());
            self.user_kills(signals);
        }
        self.drain_kills().await;
        // Episodes still open at exit are summarised with what was seen.
        for e in self.enricher.ended_episodes(u64::MAX) {
            self.router.episode(e);
        }
        let reconciled = self.reconcile_at_exit().await;
        let counters = self.tracer.counters().unwrap_or_default();
        // What the worker has sent is routed (a warning queued first no longer hides the later
        // stacks behind it); kills still waiting for their stacks are counted.
        while let Some(news) = self.news.as_mut().and_then(|rx| rx.try_recv().ok()) {
            self.route_news(news);
        }
        let unsent = self.enricher.charges().map(|c| c.stacks_unsent());
        self.router.delivery.stack_updates_unsent = unsent.unwrap_or_default();
        summary::report_losses(&self.tracer, self.reported_lost, &self.router.metrics);
        let Self {
            tracer,
            enricher,
            router,
            metrics_server,
            ..
        } = self;
        // The charge worker (in the enricher) reads maps of the tracer's: it stops first.
        drop(enricher);
        drop(tracer);
        let reports = router.sinks.shutdown(shutdown_timeout).await;
        if let Some(s) = metrics_server {
            s.abort();
        }
        summary::sinks(&reports);
        summary::exit(&counters, &router.delivery, &reconciled);
    }

    fn reconcile_check(&mut self) -> Option<crate::cgroup::reconcile::Report> {
        let r = self.router.reconcile.as_mut()?;
        r.name(self.enricher.paths());
        Some(r.check())
    }

    /// The kernel counts a kill a moment before its record is written: a count that is short
    /// at exit is read again after the ring, a few times, before it is called a mismatch.
    async fn reconcile_at_exit(&mut self) -> String {
        self.enricher.keep_learned();
        let Some(mut report) = self.reconcile_check() else {
            return "unavailable".to_owned();
        };
        for _ in 0..5 {
            if report.ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.drain_kills().await;
            match self.reconcile_check() {
                Some(r) => report = r,
                None => break,
            }
        }
        report.describe()
    }
}
