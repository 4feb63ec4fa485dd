//! A kill's stacks sent after it. The charge worker publishes its samples once a second, so a
//! process killed within a second of its start (a runaway allocator) has no stack in its kill
//! unless the kill waits for a flush (`charges.kill_stacks_wait`), which costs emit delay. By
//! default the kill goes out at once, and once the worker's next poll has published the
//! victim's samples they follow as a `memtrace.oom_kill_stacks` event: the stacks the kill
//! would have carried, at no cost to the kill.

use std::{path::PathBuf, time::SystemTime};

use crate::{
    charges::stacks::HotStack,
    charges::worker::{ChargeWatch, KillScope},
    enrich::kill::OomKill,
};

/// Kills waiting for their stacks, at most; past that the oldest is given up (and logged).
pub const MAX_WAITING: usize = 1024;

/// A kill that went out without a stack of its victim, waiting for the worker's next poll.
#[derive(Debug)]
pub struct LaterStacks {
    pub scope: KillScope,
    /// The worker's poll number at the kill: the next one has every sample taken before it.
    pub after: u64,
    /// The update, but for its stacks.
    pub update: KillStacks,
}

/// The stacks of a kill sent before they were published.
#[derive(Debug, Clone, PartialEq)]
pub struct KillStacks {
    /// When the stacks were published.
    pub time: SystemTime,
    /// The kill's own identity, as in its event.
    pub kill_seq: u64,
    pub kill_time: SystemTime,
    pub pid: u32,
    pub comm: Option<String>,
    pub cgroup: Option<String>,
    pub hotspots: Vec<HotStack>,
    /// Where the kill's flame graph is drawn (`--flamegraph-dir`).
    pub flamegraph: Option<PathBuf>,
}

impl LaterStacks {
    /// What to wait for, if the kill went out without a stack of its victim.
    pub fn of(kill: &OomKill, scope: KillScope, after: u64, flamegraph: Option<PathBuf>) -> Option<Self> {
        if kill.hotspots.iter().any(|h| h.pid == kill.pid) {
            return None;
        }
        Some(Self {
            scope,
            after,
            update: KillStacks {
                time: kill.time,
                kill_seq: kill.seq,
                kill_time: kill.time,
                pid: kill.pid,
                comm: kill.comm.clone(),
                cgroup: kill.cgroup.as_ref().and_then(|c| c.path.clone()),
                hotspots: vec![],
                flamegraph,
            },
        })
    }

    /// The update, if the window now has a stack of the victim; `None`: it charged nothing
    /// that was sampled, and the kill said all there is.
    pub fn resolve(self, charges: &ChargeWatch) -> Option<KillStacks> {
        let hotspots = charges.kill_context(&self.scope);
        if !hotspots.iter().any(|h| h.pid == self.scope.pid) {
            log::debug!(
                "kill {}: no stack of pid {} in the poll after it",
                self.update.kill_seq,
                self.scope.pid
            );
            return None;
        }
        Some(KillStacks {
            time: SystemTime::now(),
            hotspots,
            ..self.update
        })
    }
}

/// The kills waiting for their stacks, in the order they went out, and the worker's poll
/// numbers to wake on.
#[derive(Debug, Default)]
pub struct Waiting {
    queue: std::collections::VecDeque<LaterStacks>,
    /// `None` without a charge worker.
    published: Option<tokio::sync::watch::Receiver<u64>>,
    /// Kills given up because [`MAX_WAITING`] were waiting.
    pub given_up: u64,
}

impl Waiting {
    pub fn new(charges: Option<&ChargeWatch>) -> Self {
        Self {
            published: charges.map(ChargeWatch::published),
            ..Self::default()
        }
    }

    pub fn push(&mut self, l: LaterStacks) {
        if self.queue.len() >= MAX_WAITING
            && let Some(old) = self.queue.pop_front()
        {
            self.given_up += 1;
            log::warn!(
                "kill {}: its later stacks given up ({MAX_WAITING} kills waiting for the charge worker)",
                old.update.kill_seq
            );
        }
        self.queue.push_back(l);
    }

    /// Kills still waiting (at exit: not sent).
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Returns when the worker has published a poll and a kill is waiting; never otherwise
    /// (nor once the worker is gone).
    pub async fn published(&mut self) {
        match self.published.as_mut().filter(|_| !self.queue.is_empty()) {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    self.published = None;
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }

    /// The updates of the kills whose next poll is published; those whose victim it has no
    /// stack of are done with.
    pub fn ready(&mut self, charges: &ChargeWatch) -> Vec<KillStacks> {
        let Some(rx) = self.published.as_mut() else {
            return vec![];
        };
        let published = *rx.borrow_and_update();
        let mut out = Vec::new();
        while self.queue.front().is_some_and(|l| l.after < published) {
            if let Some(l) = self.queue.pop_front()
                && let Some(update) = l.resolve(charges)
            {
                out.push(update);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(pid: u32) -> HotStack {
        HotStack {
            count: 3,
            cgroup_id: 7,
            pid,
            comm: "a".into(),
            user: vec![],
            kernel: vec![],
            pids: 1,
        }
    }

    /// Only a kill without a stack of its own victim waits; the update carries its identity.
    #[test]
    fn a_kill_waits_only_without_its_victims_stack() {
        let mut kill = crate::sinks::tests::kill();
        let scope = KillScope::default();
        kill.hotspots = vec![stack(kill.pid + 1)];
        let l = LaterStacks::of(&kill, scope.clone(), 5, None).expect("waits");
        assert_eq!(l.after, 5);
        assert_eq!(
            (l.update.kill_seq, l.update.pid, l.update.kill_time),
            (kill.seq, kill.pid, kill.time)
        );
        assert!(l.update.hotspots.is_empty());
        kill.hotspots.push(stack(kill.pid));
        assert!(LaterStacks::of(&kill, scope, 5, None).is_none());
    }
}
