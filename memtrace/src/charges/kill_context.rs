//! A kill's charging stacks: the window of resolved stacks the charge worker publishes, and
//! what of it a kill reads (its scope: the OOM cgroup and everything under it).

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use crate::{
    cgroup::CgroupPaths,
    charges::stacks::{HotStack, merge_pids},
    charges::symbolize::Frame,
    enrich::kill::OomKill,
};

/// Stacks shown with a kill.
const KILL_STACKS: usize = 5;

/// The resolved stacks of each poll (or flush), oldest first.
pub type Window = VecDeque<(Instant, Vec<HotStack>)>;
/// A stack's identity when summing a window: cgroup, pid, comm, user and kernel frames.
type StackId<'a> = (u64, u32, &'a str, &'a [Frame], &'a [Frame]);

/// The scope of a kill's stacks: its OOM cgroup and everything under it, and its victim.
#[derive(Debug, Clone, Default)]
pub struct KillScope {
    pub ids: Vec<u64>,
    pub pid: u32,
}

impl KillScope {
    /// Its OOM cgroup and everything under it (the victim's own cgroup in a global OOM), and
    /// its victim, preferred when rows are merged.
    pub fn of(paths: &CgroupPaths, kill: &OomKill) -> Self {
        let scope = kill
            .oom_cgroup
            .as_ref()
            .map(|o| &o.cgroup)
            .or(kill.cgroup.as_ref());
        let mut ids: Vec<u64> = scope.and_then(|s| s.id).into_iter().collect();
        if let Some(prefix) = scope.and_then(|s| s.path.as_deref()) {
            let under = format!("{}/", prefix.trim_end_matches('/'));
            ids.extend(
                paths
                    .ids_with_paths()
                    .filter(|(_, p)| p.starts_with(&under))
                    .map(|(id, _)| id),
            );
        }
        Self { ids, pid: kill.pid }
    }

    /// The top charging stacks of this scope over the last `span` of the window.
    pub fn top_stacks(&self, window: &Window, span: Duration) -> Vec<HotStack> {
        let top = top_of(self.sum(window, span), self.pid);
        log::debug!("kill context: cgroups {:?}, {} stacks", self.ids, top.len());
        top
    }

    /// Every stack of this scope over the last `span` of the window, its samples summed; not
    /// yet merged across pids (see [`top_of`]).
    pub fn sum(&self, window: &Window, span: Duration) -> Vec<HotStack> {
        if self.ids.is_empty() {
            return vec![];
        }
        let now = Instant::now();
        let mut sum: HashMap<StackId<'_>, u64> = HashMap::new();
        for (t, stacks) in window.iter() {
            if now.duration_since(*t) > span {
                continue;
            }
            for h in stacks.iter().filter(|h| self.ids.contains(&h.cgroup_id)) {
                *sum.entry((h.cgroup_id, h.pid, &h.comm, &h.user, &h.kernel))
                    .or_default() += h.count;
            }
        }
        sum.into_iter()
            .map(|((cgroup_id, pid, comm, user, kernel), count)| HotStack {
                count,
                cgroup_id,
                pid,
                comm: comm.to_owned(),
                user: user.to_vec(),
                kernel: kernel.to_vec(),
                pids: 1,
            })
            .collect()
    }
}

/// A kill's stacks from its scope's [`KillScope::sum`]: rows that differ only by pid merged
/// (the victim's pid kept), the top few.
pub fn top_of(summed: Vec<HotStack>, victim: u32) -> Vec<HotStack> {
    let mut top = merge_pids(summed, Some(victim));
    top.truncate(KILL_STACKS);
    top
}
