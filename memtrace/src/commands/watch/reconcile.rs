//! The counts the daemon reconciles with the kernel's own (cgroup/reconcile.rs): the kills it
//! reported per victim cgroup incarnation, and in all. The route stage counts each kill as it
//! sends it; exiting victims (marked, not killed) are counted by neither side. A kill sent
//! before its cgroup's path was known (late file reads) is counted by cgroup once the path
//! cache knows its id.

use crate::{
    cgroup::CgroupPaths,
    cgroup::reconcile::{CgroupKey, KillCounts, Mismatch, Reconciler, Report},
    enrich::kill::OomKill,
};

pub struct Reconciliation {
    reconciler: Reconciler,
    reported: KillCounts,
    /// Ids of victim cgroups whose path was not known when their kill was counted.
    unnamed: Vec<u64>,
    /// Kills delivered at the last periodic check.
    checked_at: u64,
}

impl Reconciliation {
    pub fn new(reconciler: Reconciler) -> Self {
        Self {
            reconciler,
            reported: KillCounts::default(),
            unnamed: Vec::new(),
            checked_at: 0,
        }
    }

    pub fn count(&mut self, kill: &OomKill) {
        if kill.victim_exiting {
            return;
        }
        let cgroup = kill.cgroup.as_ref();
        if let Some(id) = cgroup.filter(|c| c.path.is_none()).and_then(|c| c.id) {
            self.unnamed.push(id);
        }
        self.reported
            .add(cgroup.and_then(|c| c.path.clone().map(|path| CgroupKey { path, id: c.id })));
    }

    /// Counts by cgroup the kills whose cgroup's path is known by now.
    pub fn name(&mut self, paths: Option<&CgroupPaths>) {
        let Some(paths) = paths else { return };
        let reported = &mut self.reported;
        self.unnamed.retain(|&id| match paths.cached(id) {
            Some(path) => {
                let key = CgroupKey {
                    path: path.to_owned(),
                    id: Some(id),
                };
                *reported.by_cgroup.entry(key).or_default() += 1;
                false
            }
            None => true,
        });
    }

    /// While kills keep coming (`delivered` moved), and once more after: the mismatches that
    /// persisted since the previous check. `None`: nothing to check.
    pub fn periodic(&mut self, delivered: u64) -> Option<Vec<Mismatch>> {
        if delivered == self.checked_at && !self.reconciler.has_pending() {
            return None;
        }
        self.checked_at = delivered;
        Some(self.reconciler.check_persistent(&self.reported))
    }

    /// Just before the programs are detached at exit (see `Reconciler::closing`).
    pub fn closing(&mut self) {
        self.reconciler.closing(&self.reported);
    }

    pub fn check(&self) -> Report {
        self.reconciler.check(&self.reported)
    }
}
