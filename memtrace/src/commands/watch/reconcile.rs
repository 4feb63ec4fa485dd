//! The counts the daemon reconciles with the kernel's own (cgroup/reconcile.rs): the kills it
//! reported per victim cgroup incarnation, and in all. The route stage counts each kill as it
//! sends it; exiting victims (marked, not killed) are counted by neither side.

use crate::{
    cgroup::reconcile::{CgroupKey, KillCounts, Mismatch, Reconciler, Report},
    enrich::kill::OomKill,
};

pub struct Reconciliation {
    reconciler: Reconciler,
    reported: KillCounts,
    /// Kills delivered at the last periodic check.
    checked_at: u64,
}

impl Reconciliation {
    pub fn new(reconciler: Reconciler) -> Self {
        Self {
            reconciler,
            reported: KillCounts::default(),
            checked_at: 0,
        }
    }

    pub fn count(&mut self, kill: &OomKill) {
        if kill.victim_exiting {
            return;
        }
        self.reported.add(
            kill.cgroup
                .as_ref()
                .and_then(|c| c.path.clone().map(|path| CgroupKey { path, id: c.id })),
        );
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

    pub fn check(&self) -> Report {
        self.reconciler.check(&self.reported)
    }
}
