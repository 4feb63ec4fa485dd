//! Reconciliation: memtrace's kill counts against the kernel's own counters, so a lost event
//! is reported, loudly, instead of silently missing. Per cgroup, the local `oom_kill` counter
//! (cgroup v1 `memory.oom_control`, v2 `memory.events.local`: both count the kills of tasks in
//! that cgroup only); host-wide, `/proc/vmstat` `oom_kill`. Victims that were already exiting
//! are marked without a kill and counted by neither, so they are left out of both sides.
//! Counts are kept per cgroup *incarnation* (its id, the directory's inode): a cgroup removed
//! and re-created under the same path is a new cgroup whose kernel counter starts at zero.

use std::{collections::HashMap, os::unix::fs::MetadataExt as _};

use crate::cgroup::{CgroupPaths, CgroupVersion, MemoryHierarchy, stats::parse_flat_keyed};

/// The kernel's local kill counter of one cgroup, `None` if the cgroup is gone.
pub fn cgroup_oom_kills(h: &MemoryHierarchy, path: &str) -> Option<u64> {
    let file = match h.version {
        CgroupVersion::V1 => "memory.oom_control",
        CgroupVersion::V2 => "memory.events.local",
    };
    let text = crate::pseudo_fs::read(h.dir(path).join(file)).ok()?;
    parse_flat_keyed(&text).ok()?.get("oom_kill").copied()
}

/// The counter of cgroup `id` at `path`; `None` if it is gone (or `path` now holds another
/// incarnation). Without an id, whatever cgroup is at `path`.
fn incarnation_oom_kills(h: &MemoryHierarchy, path: &str, id: Option<u64>) -> Option<u64> {
    if let Some(id) = id
        && std::fs::metadata(h.dir(path)).ok()?.ino() != id
    {
        return None;
    }
    cgroup_oom_kills(h, path)
}

/// One cgroup incarnation memtrace reported kills in: its path and, where the kernel gave
/// it, its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CgroupKey {
    pub path: String,
    pub id: Option<u64>,
}

/// Kills memtrace reported (victims marked without a kill left out).
#[derive(Debug, Clone, Default)]
pub struct KillCounts {
    pub by_cgroup: HashMap<CgroupKey, u64>,
    /// Every kill, also those whose cgroup could not be named: the host-wide side.
    pub total: u64,
}

impl KillCounts {
    pub fn add(&mut self, cgroup: Option<CgroupKey>) {
        self.total += 1;
        if let Some(k) = cgroup {
            *self.by_cgroup.entry(k).or_default() += 1;
        }
    }
}

pub fn vmstat_oom_kills() -> Option<u64> {
    let text = crate::pseudo_fs::read("/proc/vmstat").ok()?;
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
    /// Host-wide kills counted by the kernel since start, and reported by memtrace: at least
    /// the first, at most the second (kills during start-up may or may not have been seen).
    pub vmstat_kernel: Option<(u64, u64)>,
    pub vmstat_reported: u64,
}

/// `reported` against a kernel count known to lie in `lo..=hi`: `None` if it fits, else the
/// bound it breaks.
fn outside(reported: u64, (lo, hi): (u64, u64)) -> Option<u64> {
    if reported < lo {
        Some(lo)
    } else if reported > hi {
        Some(hi)
    } else {
        None
    }
}

impl Report {
    pub fn ok(&self) -> bool {
        self.mismatches.is_empty()
            && self
                .vmstat_kernel
                .is_none_or(|k| outside(self.vmstat_reported, k).is_none())
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
        if let Some(k) = self.vmstat_kernel.and_then(|k| outside(self.vmstat_reported, k)) {
            parts.push(format!("vmstat:kernel={k},reported={}", self.vmstat_reported));
        }
        format!("MISMATCH[{}]", parts.join(" "))
    }
}

/// Baselines taken at start, so counts from before memtrace ran are not held against it. They
/// are read twice, just before the programs attach and just after: a kill between the two may
/// or may not have been seen, so the kernel's count since start is a range, and a report is
/// a mismatch only outside it (one read after attaching took such a kill as a false mismatch).
pub struct Reconciler {
    hierarchy: MemoryHierarchy,
    /// Counters by cgroup id (the incarnation that existed at start).
    before: HashMap<u64, (String, u64)>,
    after: HashMap<u64, u64>,
    vmstat_before: Option<u64>,
    vmstat_after: Option<u64>,
    /// Mismatches seen at the previous check: only one that persists is reported, since a
    /// kill can be counted by the kernel a moment before its record is read.
    pending: Vec<Mismatch>,
    /// The counters just before the programs were detached at exit ([`Self::closing`]).
    closing: HashMap<CgroupKey, u64>,
    vmstat_closing: Option<u64>,
}

impl Reconciler {
    /// Reads the baselines; call it before attaching, and [`Self::attached`] right after.
    pub fn new(paths: &CgroupPaths) -> Self {
        let hierarchy = paths.hierarchy().clone();
        let before: HashMap<u64, (String, u64)> = paths
            .iter_ids()
            .filter_map(|(id, p)| {
                incarnation_oom_kills(&hierarchy, p, Some(id)).map(|n| (id, (p.to_owned(), n)))
            })
            .collect();
        let vmstat_before = vmstat_oom_kills();
        Self {
            hierarchy,
            after: before.iter().map(|(id, (_, n))| (*id, *n)).collect(),
            before,
            vmstat_before,
            vmstat_after: vmstat_before,
            pending: vec![],
            closing: HashMap::new(),
            vmstat_closing: None,
        }
    }

    /// Reads the counters once more just before the programs are detached: the kernel counts
    /// a kill (mm/oom_kill.c __oom_kill_process: count_vm_event(OOM_KILL), then
    /// mark_oom_victim()) a moment before memtrace's hook sees it, so a kill counted from here
    /// on may be marked after the detach, unseen. Those are not asked for; the kills counted
    /// before this must all be reported. (The start is bracketed the same way, by
    /// [`Self::new`] and [`Self::attached`].) Seen at exit while other processes kept being
    /// killed: vmstat kernel=7, reported=6.
    pub fn closing(&mut self, reported: &KillCounts) {
        self.vmstat_closing = vmstat_oom_kills();
        self.closing = reported
            .by_cgroup
            .keys()
            .filter_map(|key| {
                incarnation_oom_kills(&self.hierarchy, &key.path, key.id).map(|n| (key.clone(), n))
            })
            .collect();
    }

    /// Reads the baselines again, now that every kill is seen.
    pub fn attached(&mut self) {
        self.after = self
            .before
            .iter()
            .filter_map(|(id, (p, _))| incarnation_oom_kills(&self.hierarchy, p, Some(*id)).map(|n| (*id, n)))
            .collect();
        self.vmstat_after = vmstat_oom_kills();
    }

    /// The kernel's kills since start, from a counter's value now (and, at exit, its value
    /// before the detach): (certainly seen, possibly).
    fn since_start(now: u64, closing: Option<u64>, before: Option<u64>, after: Option<u64>) -> (u64, u64) {
        (
            closing
                .unwrap_or(now)
                .saturating_sub(after.or(before).unwrap_or(0)),
            now.saturating_sub(before.unwrap_or(0)),
        )
    }

    /// Compares `reported` (kills per cgroup incarnation) with the kernel's counters now.
    pub fn check(&self, reported: &KillCounts) -> Report {
        let mut r = Report::default();
        for (key, &n) in &reported.by_cgroup {
            match incarnation_oom_kills(&self.hierarchy, &key.path, key.id) {
                Some(k) => {
                    r.checked += 1;
                    // A cgroup created after start had a counter of zero. Without an id, the
                    // baseline of whatever was at that path.
                    let id = key.id.or_else(|| {
                        self.before
                            .iter()
                            .find_map(|(id, (p, _))| (*p == key.path).then_some(*id))
                    });
                    let before = id.and_then(|id| self.before.get(&id)).map(|(_, n)| *n);
                    let after = id.and_then(|id| self.after.get(&id)).copied();
                    let range = Self::since_start(k, self.closing.get(key).copied(), before, after);
                    if let Some(kernel) = outside(n, range) {
                        r.mismatches.push(Mismatch {
                            cgroup: key.path.clone(),
                            kernel,
                            reported: n,
                        });
                    }
                }
                None => r.gone += 1,
            }
        }
        r.mismatches.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
        r.vmstat_reported = reported.total;
        r.vmstat_kernel = vmstat_oom_kills()
            .filter(|_| self.vmstat_before.is_some())
            .map(|now| Self::since_start(now, self.vmstat_closing, self.vmstat_before, self.vmstat_after));
        r
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// A periodic check: returns the mismatches that persisted since the previous one.
    pub fn check_persistent(&mut self, reported: &KillCounts) -> Vec<Mismatch> {
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
            vmstat_kernel: Some((2, 3)),
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
            vmstat_kernel: Some((5, 6)),
            vmstat_reported: 4,
            ..Report::default()
        };
        assert!(!bad.ok());
        assert_eq!(
            bad.describe(),
            "MISMATCH[/a:kernel=5,reported=4 vmstat:kernel=5,reported=4]"
        );
    }

    /// A kill between the two baseline reads may have been seen or not: both are fine. A kill
    /// after attaching that was not reported is a mismatch.
    #[test]
    fn kills_during_start_up_are_ambiguous_later_ones_are_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("a")).expect("mkdir");
        let set = |n: u64| {
            std::fs::write(
                dir.path().join("a/memory.oom_control"),
                format!("oom_kill_disable 0\nunder_oom 0\noom_kill {n}\n"),
            )
            .expect("write")
        };
        set(4);
        let paths = CgroupPaths::new(MemoryHierarchy {
            version: CgroupVersion::V1,
            root: dir.path().to_owned(),
        });
        let mut r = Reconciler::new(&paths);
        set(5); // killed while attaching
        r.attached();
        let id = std::fs::metadata(dir.path().join("a")).expect("stat").ino();
        let reported = |n: u64| KillCounts {
            by_cgroup: HashMap::from([(
                CgroupKey {
                    path: "/a".to_owned(),
                    id: Some(id),
                },
                n,
            )]),
            total: n,
        };
        assert!(r.check(&reported(0)).mismatches.is_empty(), "not seen: fine");
        assert!(r.check(&reported(1)).mismatches.is_empty(), "seen: fine");
        set(6); // killed after attaching
        assert!(r.check(&reported(1)).mismatches.is_empty());
        assert_eq!(
            r.check(&reported(0)).mismatches,
            vec![Mismatch {
                cgroup: "/a".into(),
                kernel: 1,
                reported: 0
            }]
        );
        assert_eq!(
            r.check(&reported(3)).mismatches[0].kernel,
            2,
            "more than the kernel"
        );

        // Removed and re-created under the same path: a new incarnation, its counter from 0.
        // The old directory is moved aside and removed only once the new one exists: ext4
        // gave a just-freed inode number to the next directory (CI), and cgroup ids, unlike
        // inode numbers, are never reused.
        std::fs::rename(dir.path().join("a"), dir.path().join("a-gone")).expect("mv");
        std::fs::create_dir_all(dir.path().join("a")).expect("mkdir");
        std::fs::remove_dir_all(dir.path().join("a-gone")).expect("rm");
        set(1);
        let new_id = std::fs::metadata(dir.path().join("a")).expect("stat").ino();
        assert_ne!(new_id, id, "a new inode for the new incarnation");
        let mut counts = reported(2);
        counts.add(Some(CgroupKey {
            path: "/a".to_owned(),
            id: Some(new_id),
        }));
        let report = r.check(&counts);
        assert!(report.mismatches.is_empty(), "{report:?}");
        assert_eq!((report.checked, report.gone), (1, 1));
        assert_eq!(report.vmstat_reported, 3);
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

    /// At exit the kills counted after the closing read may have been marked after the detach:
    /// not asked for; those counted before it are.
    #[test]
    fn kills_during_the_detach_are_ambiguous_earlier_ones_are_not() {
        // 2 before start, 3 once attached, 8 just before the detach, 10 at the check.
        let range = Reconciler::since_start(10, Some(8), Some(2), Some(3));
        assert_eq!(range, (5, 8));
        assert_eq!(
            outside(6, range),
            None,
            "one counted before the detach was seen in flight"
        );
        assert_eq!(
            outside(4, range),
            Some(5),
            "one counted before the detach is missing"
        );
        assert_eq!(
            Reconciler::since_start(10, None, Some(2), Some(3)),
            (7, 8),
            "during the run"
        );
    }
}
