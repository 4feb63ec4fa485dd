//! Cgroups that fill up without being sampled. The sampler sees one page fault in
//! `fault_period` per CPU, so a cgroup filled by few faults (with transparent huge pages one
//! fault charges 2 MiB: Debian's kernels default to THP `always`, and 59 MiB took a few dozen
//! faults there), by page cache written with write(2), or by kernel memory, can have no sample
//! at all, and the warnings, which look at sampled cgroups, never see it near its limit.
//!
//! Every few seconds the charge worker walks the hierarchy and reads each cgroup's own limit,
//! and the usage of those that have one: one or two small files per cgroup, never
//! `memory.stat`. The ones within reach of the warning threshold are handed to `rows`, which
//! reads their files in full while they stay there, as it does for sampled cgroups.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use crate::cgroup::{
    CgroupVersion, MemoryHierarchy,
    paths::walk,
    stats::{parse_limit_v1, parse_max_v2, parse_u64_file},
};

/// How often the hierarchy is swept: a cgroup filled without samples is seen within this.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

pub struct LimitSweep {
    every: Duration,
    last: Option<Instant>,
}

impl LimitSweep {
    pub fn new(every: Duration) -> Self {
        Self { every, last: None }
    }

    /// When a sweep is due at `now`: every cgroup (id, path) whose usage is at least `ratio` of
    /// its own limit. Cgroups that vanish mid-sweep are skipped.
    pub fn poll(&mut self, h: &MemoryHierarchy, ratio: f64, now: Instant) -> Option<Vec<(u64, String)>> {
        if self.last.is_some_and(|t| now.duration_since(t) < self.every) {
            return None;
        }
        self.last = Some(now);
        let near = walk(h)
            .into_iter()
            .filter(|(_, rel)| {
                usage_and_limit(&h.dir(rel), h.version).is_some_and(|(u, l)| u as f64 >= ratio * l as f64)
            })
            .collect();
        Some(near)
    }
}

/// A cgroup's usage and own limit; `None` when it has no limit (most cgroups: one read) or a
/// file cannot be read (the cgroup is gone, or is the v2 root, which has neither file).
pub(crate) fn usage_and_limit(dir: &Path, version: CgroupVersion) -> Option<(u64, u64)> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let (limit, usage) = match version {
        CgroupVersion::V1 => (
            parse_limit_v1(&read("memory.limit_in_bytes")?).ok()??,
            read("memory.usage_in_bytes")?,
        ),
        CgroupVersion::V2 => (parse_max_v2(&read("memory.max")?).ok()??, read("memory.current")?),
    };
    Some((parse_u64_file(&usage).ok()?, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cgroup(root: &Path, rel: &str, files: &[(&str, &str)]) {
        let dir = root.join(rel.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for (name, text) in files {
            std::fs::write(dir.join(name), text).expect("write");
        }
    }

    /// A hierarchy of this version in a new temporary directory (gone when it drops).
    fn hierarchy(version: CgroupVersion) -> (tempfile::TempDir, MemoryHierarchy) {
        let d = tempfile::tempdir().expect("tempdir");
        let h = MemoryHierarchy {
            version,
            root: d.path().to_path_buf(),
        };
        (d, h)
    }

    fn near(h: &MemoryHierarchy) -> Vec<String> {
        let mut s = LimitSweep::new(SWEEP_EVERY);
        let mut got: Vec<String> = s
            .poll(h, 0.8, Instant::now())
            .expect("the first poll sweeps")
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        got.sort();
        assert!(s.poll(h, 0.8, Instant::now()).is_none(), "not due again at once");
        got
    }

    #[test]
    fn v1_cgroups_near_their_own_limit() {
        let (d, h) = hierarchy(CgroupVersion::V1);
        cgroup(
            d.path(),
            "/",
            &[("memory.limit_in_bytes", "9223372036854771712\n")],
        );
        cgroup(
            d.path(),
            "/full",
            &[
                ("memory.limit_in_bytes", "100\n"),
                ("memory.usage_in_bytes", "90\n"),
            ],
        );
        cgroup(
            d.path(),
            "/room",
            &[
                ("memory.limit_in_bytes", "100\n"),
                ("memory.usage_in_bytes", "10\n"),
            ],
        );
        cgroup(
            d.path(),
            "/room/unlimited",
            &[
                ("memory.limit_in_bytes", "9223372036854771712\n"),
                ("memory.usage_in_bytes", "99\n"),
            ],
        );
        // Removed between the walk and the read: no usage file.
        cgroup(d.path(), "/gone", &[("memory.limit_in_bytes", "100\n")]);
        assert_eq!(near(&h), ["/full"]);
    }

    #[test]
    fn v2_cgroups_near_their_own_limit() {
        let (d, h) = hierarchy(CgroupVersion::V2);
        cgroup(
            d.path(),
            "/a",
            &[("memory.max", "max\n"), ("memory.current", "5\n")],
        );
        cgroup(
            d.path(),
            "/a/b",
            &[("memory.max", "1000\n"), ("memory.current", "800\n")],
        );
        cgroup(
            d.path(),
            "/c",
            &[("memory.max", "1000\n"), ("memory.current", "799\n")],
        );
        assert_eq!(near(&h), ["/a/b"]);
    }
}
