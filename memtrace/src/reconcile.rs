//! Reconciliation: memtrace's kill counts against the kernel's own counters, so a lost event
//! is reported, loudly, instead of silently missing. Per cgroup, the local `oom_kill` counter
//! (cgroup v1 `memory.oom_control`, v2 `memory.events.local`: both count the kills of tasks in
//! that cgroup only); host-wide, `/proc/vmstat` `oom_kill`. Victims that were already exiting
//! are marked without a kill and counted by neither, so they are left out of both sides.

use std::collections::HashMap;

use crate::cgroup::{CgroupPaths, CgroupVersion, MemoryHierarchy, stats::parse_flat_keyed};

/// The kernel's local kill counter of one cgroup, `None` if the cgroup is gone.
pub fn cgroup_oom_kills(h: &MemoryHierarchy, path: &str) -> Option<u64> {
    let file = match h.version {
        CgroupVersion::V1 => "memory.oom_control",
        CgroupVersion::V2 => "memory.events.local",
    };
    let text = std::fs::read_to_string(h.dir(path).join(file)).ok()?;
    parse_flat_keyed(&text).ok()?.get("oom_kill").copied()
}

pub fn vmstat_oom_kills() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/vmstat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

/// One cgroup whose counts disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub cgroup: String,
    pub kernel: u64,
    pub reported: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub checked: usize,
    /// Cgroups removed before they could be checked.
    pub gone: usize,
    pub mismatches: Vec<Mismatch>,
    /// Host-wide kills counted by the kernel since start, and reported by memtrace.
    pub vmstat_kernel: Option<u64>,
    pub vmstat_reported: u64,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.mismatches.is_empty() && self.vmstat_kernel.is_none_or(|k| k == self.vmstat_reported)
    }

    /// `ok` or what is wrong, for the exit summary.
    pub fn describe(&self) -> String {
        if self.ok() {
            return format!("ok({} cgroups, {} gone)", self.checked, self.gone);
        }
        let mut parts: Vec<String> = self
            .mismatches
            .iter()
            .map(|m| format!("{}:kernel={},reported={}", m.cgroup, m.kernel, m.reported))
            .collect();
        if let Some(k) = self.vmstat_kernel.filter(|k| *k != self.vmstat_reported) {
            parts.push(format!("vmstat:kernel={k},reported={}", self.vmstat_reported));
        }
        format!("MISMATCH[{}]", parts.join(" "))
    }
}

/// Baselines taken at start, so counts from before memtrace ran are not held against it.
pub struct Reconciler {
    hierarchy: MemoryHierarchy,
    baseline: HashMap<String, u64>,
    vmstat_baseline: Option<u64>,
    /// Mismatches seen at the previous check: only one that persists is reported, since a
    /// kill can be counted by the kernel a moment before its record is read.
    pending: Vec<Mismatch>,
}

impl Reconciler {
    pub fn new(paths: &CgroupPaths) -> Self {
        let hierarchy = paths.hierarchy().clone();
        let baseline = paths
            .iter()
            .filter_map(|p| cgroup_oom_kills(&hierarchy, p).map(|n| (p.to_owned(), n)))
            .collect();
        Self {
            hierarchy,
            baseline,
            vmstat_baseline: vmstat_oom_kills(),
            pending: vec![],
        }
    }

    /// Compares `reported` (kills per cgroup path) with the kernel's counters now.
    pub fn check(&self, reported: &HashMap<String, u64>) -> Report {
        let mut r = Report::default();
        for (path, &n) in reported {
            match cgroup_oom_kills(&self.hierarchy, path) {
                Some(k) => {
                    r.checked += 1;
                    // A cgroup created after start had a counter of zero.
                    let kernel = k.saturating_sub(self.baseline.get(path).copied().unwrap_or(0));
                    if kernel != n {
                        r.mismatches.push(Mismatch {
                            cgroup: path.clone(),
                            kernel,
                            reported: n,
                        });
                    }
                }
                None => r.gone += 1,
            }
        }
        r.mismatches.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
        r.vmstat_reported = reported.values().sum();
        r.vmstat_kernel = vmstat_oom_kills()
            .zip(self.vmstat_baseline)
            .map(|(now, base)| now.saturating_sub(base));
        r
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// A periodic check: returns the mismatches that persisted since the previous one.
    pub fn check_persistent(&mut self, reported: &HashMap<String, u64>) -> Vec<Mismatch> {
        let now = self.check(reported).mismatches;
        let persistent = now.iter().filter(|m| self.pending.contains(m)).cloned().collect();
        self.pending = now;
        persistent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_ok_and_mismatch() {
        let ok = Report {
            checked: 2,
            vmstat_kernel: Some(3),
            vmstat_reported: 3,
            ..Report::default()
        };
        assert_eq!(ok.describe(), "ok(2 cgroups, 0 gone)");
        let bad = Report {
            mismatches: vec![Mismatch {
                cgroup: "/a".into(),
                kernel: 5,
                reported: 4,
            }],
            vmstat_kernel: Some(5),
            vmstat_reported: 4,
            ..Report::default()
        };
        assert!(!bad.ok());
        assert_eq!(
            bad.describe(),
            "MISMATCH[/a:kernel=5,reported=4 vmstat:kernel=5,reported=4]"
        );
    }

    #[test]
    fn counters_from_fixture_trees() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("a")).expect("mkdir");
        std::fs::write(
            dir.path().join("a/memory.events.local"),
            "low 0\nhigh 0\nmax 9\noom 3\noom_kill 2\n",
        )
        .expect("write");
        let h = MemoryHierarchy {
            version: CgroupVersion::V2,
            root: dir.path().to_owned(),
        };
        assert_eq!(cgroup_oom_kills(&h, "/a"), Some(2));
        assert_eq!(cgroup_oom_kills(&h, "/gone"), None);
        let h1 = MemoryHierarchy {
            version: CgroupVersion::V1,
            ..h
        };
        std::fs::write(
            dir.path().join("a/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n",
        )
        .expect("write");
        assert_eq!(cgroup_oom_kills(&h1, "/a"), Some(7));
    }
}
