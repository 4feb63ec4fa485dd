//! A kill's stacks sent after it. The charge worker publishes its samples once a second, so a
//! process killed within a second of its start (a runaway allocator) has no stack in its kill
//! unless the kill waits for a flush (`charges.kill_stacks_wait`), which costs emit delay. By
//! default the kill goes out at once, and once the worker's next poll has published the
//! victim's samples they follow as a `memtrace.oom_kill_stacks` event: the stacks the kill
//! would have carried, at no cost to the kill. The worker resolves them, off the event loop
//! (resolving a storm's hundred kills a second on it held kills for 200 ms).

use std::{path::PathBuf, time::SystemTime};

use crate::{
    charges::kill_context::{KillScope, top_of},
    charges::stacks::HotStack,
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
    /// The kill carried its victim's stacks, but as addresses (a poll published them before
    /// their cgroup was near its limit): only named ones are news.
    pub unnamed: bool,
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
    /// What to wait for, if the kill went out without a stack of its victim, or with its
    /// stacks as addresses only.
    pub fn of(kill: &OomKill, scope: KillScope, after: u64, flamegraph: Option<PathBuf>) -> Option<Self> {
        let mut victims = kill.hotspots.iter().filter(|h| h.pid == kill.pid).peekable();
        let unnamed = victims.peek().is_some();
        if victims.any(|h| h.unnamed_user().is_none()) {
            return None;
        }
        Some(Self {
            scope,
            after,
            unnamed,
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

    /// The update, if its scope's stacks (`summed`: [`KillScope::sum`]) now have one of the
    /// victim; `None`: it charged nothing that was sampled, and the kill said all there is.
    pub fn resolve(self, summed: &[HotStack]) -> Option<KillStacks> {
        let hotspots = top_of(summed.to_vec(), self.scope.pid);
        let news = |h: &HotStack| h.pid == self.scope.pid && (!self.unnamed || h.unnamed_user().is_none());
        if !hotspots.iter().any(news) {
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

    /// A kill whose victim's stacks went out as addresses waits for them named, and only a
    /// named one is sent.
    #[test]
    fn a_kill_with_its_victims_stacks_as_addresses_waits_for_names() {
        let mut kill = crate::sinks::tests::kill();
        let scope = KillScope {
            ids: vec![7],
            pid: kill.pid,
        };
        let unnamed = HotStack {
            user: vec!["0x5649285de491".into()],
            ..stack(kill.pid)
        };
        kill.hotspots = vec![unnamed.clone()];
        let l = LaterStacks::of(&kill, scope.clone(), 5, None).expect("waits");
        assert!(l.unnamed);
        assert!(l.resolve(std::slice::from_ref(&unnamed)).is_none(), "nothing new");
        let named = HotStack {
            user: vec!["memtrace_test_allocate_huge".into()],
            ..stack(kill.pid)
        };
        let l = LaterStacks::of(&kill, scope, 5, None).expect("waits");
        let u = l.resolve(&[named]).expect("named now");
        assert_eq!(&*u.hotspots[0].user[0], "memtrace_test_allocate_huge");
    }
}
