//! The route stage: every event to the sinks and the metrics, counted. A kill is counted for
//! reconciliation and remembered (a pre-OOM warning about its cgroup that comes after it is
//! late, and dropped); its flame graph is drawn after the event is out.

use std::{path::PathBuf, sync::Arc};

use super::reconcile::Reconciliation;
use crate::{
    cgroup::CgroupPaths,
    cgroup::oom_stall::OomStall,
    charges::stacks::HotStack,
    charges::warnings::{PreOomWarning, RecentKills},
    enrich::episodes::EpisodeSummary,
    enrich::kill::Enriched,
    enrich::later_stacks::KillStacks,
    enrich::user_kill::UserKill,
    kernel::clock,
    output::flamegraph,
    output::metrics::Metrics,
    sinks::{Event, Sinks},
};

/// What was routed, for the exit summary.
#[derive(Debug, Default)]
pub struct Delivery {
    pub delivered: u64,
    pub warnings: u64,
    /// Warnings dropped because a kill in their cgroup came first.
    pub late_warnings: u64,
    pub decode_errors: u64,
    /// Userspace SIGKILL records read, and those reported (known memory killers, or all).
    pub user_kills_seen: u64,
    pub user_kills: u64,
    /// Kills sent before their file reads were done.
    pub enrich_late: u64,
    /// Kills' stacks sent after them (`memtrace.oom_kill_stacks`).
    pub stack_updates: u64,
    /// Kills still waiting for their stacks at exit, or given up.
    pub stack_updates_unsent: u64,
}

pub struct Router {
    pub sinks: Sinks,
    pub metrics: Arc<Metrics>,
    host: String,
    pub delivery: Delivery,
    /// `None` without a memory hierarchy to read the kernel's counters from.
    pub reconcile: Option<Reconciliation>,
    /// The last kill per cgroup, for pre-OOM warnings that would come too late.
    recent: RecentKills,
}

/// A kill's flame graph, drawn once its event is out (the event takes the stacks).
struct KillGraph {
    path: PathBuf,
    folded: Vec<String>,
    pid: u32,
}

impl KillGraph {
    fn of(path: Option<&PathBuf>, hotspots: &[HotStack], pid: u32) -> Option<Self> {
        Some(Self {
            path: path?.clone(),
            folded: hotspots.iter().map(HotStack::folded).collect(),
            pid,
        })
    }

    fn draw(self) {
        let title = format!("charges before the OOM kill of pid {}", self.pid);
        if let Err(e) = flamegraph::write(&self.path, &self.folded, &title) {
            log::warn!("kill flame graph: {e}");
        }
    }
}

impl Router {
    pub fn new(sinks: Sinks, metrics: Arc<Metrics>, host: String, reconcile: Option<Reconciliation>) -> Self {
        Self {
            sinks,
            metrics,
            host,
            delivery: Delivery::default(),
            reconcile,
            recent: RecentKills::default(),
        }
    }

    pub fn kill(&mut self, e: Enriched) {
        if let Some(ended) = e.ended_episode {
            self.episode(ended);
        }
        let kill = e.kill;
        if let Some(r) = self.reconcile.as_mut() {
            r.count(&kill);
        }
        let victim = kill.cgroup.as_ref().and_then(|c| c.path.as_deref());
        let oom = kill.oom_cgroup.as_ref().and_then(|o| o.cgroup.path.as_deref());
        self.recent
            .note(victim.into_iter().chain(oom), kill.ktime_boot_ns);
        let delay = clock::boot_ns().saturating_sub(kill.ktime_boot_ns);
        self.metrics.record_kill(&kill);
        let graph = KillGraph::of(kill.flamegraph.as_ref(), &kill.hotspots, kill.pid);
        self.delivery.enrich_late += u64::from(kill.late);
        self.sinks
            .dispatch(Event::from_kill(kill, self.host.clone(), delay));
        if let Some(g) = graph {
            g.draw();
        }
        self.delivery.delivered += 1;
    }

    /// A kill's stacks, published after it went out; its flame graph is drawn (again) with
    /// them.
    pub fn kill_stacks(&mut self, k: KillStacks) {
        let graph = KillGraph::of(k.flamegraph.as_ref(), &k.hotspots, k.pid);
        self.delivery.stack_updates += 1;
        self.sinks.dispatch(Event::from_kill_stacks(k, self.host.clone()));
        if let Some(g) = graph {
            g.draw();
        }
    }

    pub fn episode(&mut self, e: EpisodeSummary) {
        self.sinks.dispatch(Event::from_episode(e, self.host.clone()));
    }

    pub fn stall(&mut self, s: OomStall) {
        self.sinks.dispatch(Event::from_stall(s, self.host.clone()));
    }

    /// A warning whose cgroup was killed in since its evidence began would come after its
    /// kill: it is dropped (the caller routes the kills already in the ring first).
    pub fn warning(&mut self, w: PreOomWarning) {
        if self.recent.suppresses(&w) {
            log::info!("pre-OOM warning for {} dropped: a kill there already", w.cgroup);
            self.delivery.late_warnings += 1;
        } else {
            self.sinks.dispatch(Event::from_warning(w, self.host.clone()));
            self.delivery.warnings += 1;
        }
    }

    pub fn user_kill(&mut self, k: UserKill) {
        self.delivery.user_kills += 1;
        self.sinks.dispatch(Event::from_user_kill(k, self.host.clone()));
    }

    /// Compares with the kernel's counters while kills keep coming, and once more after; a
    /// mismatch that persists is logged and counted.
    pub fn reconcile_now(&mut self, paths: Option<&CgroupPaths>) {
        let delivered = self.delivery.delivered;
        let Some(r) = self.reconcile.as_mut() else { return };
        r.name(paths);
        let Some(mismatches) = r.periodic(delivered) else {
            return;
        };
        self.metrics.reconciled(&mismatches);
        for m in mismatches {
            log::error!(
                "RECONCILE: cgroup {}: the kernel counted {} OOM kills since memtrace started, memtrace reported {}",
                m.cgroup,
                m.kernel,
                m.reported
            );
        }
    }
}
