//! Cgroups that fill up without being sampled. The sampler sees one page fault in
//! `fault_period` per CPU, so a cgroup filled by few faults (with transparent huge pages one
//! fault charges 2 MiB: Debian's kernels default to THP `always`, and 59 MiB took a few dozen
//! faults there), by page cache written with write(2), or by kernel memory, can have no sample
//! at all, and the warnings, which look at sampled cgroups, never see it near its limit.
//!
//! Every few seconds the charge worker walks the hierarchy and reads the usage of each cgroup
//! that has a limit of its own: one small file per cgroup, never `memory.stat`. Limits change
//! rarely (a `docker update`, a resize), so each is read once in [`LIMIT_FOR`] (an unlimited one
//! once two sweeps agree: a runtime writes the limit after it creates the cgroup); a cgroup whose
//! usage the sampler read from the kernel since the last sweep needs no file at all. The ones
//! within reach of the warning threshold are handed to `rows`, which reads their files in full
//! while they stay there, as it does for sampled cgroups.

use std::{
    collections::{HashMap, HashSet},
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

/// How long a cgroup's own limit, once read, is taken as it is.
pub const LIMIT_FOR: Duration = Duration::from_secs(30);

/// How often the hierarchy is walked while new cgroups are learnt from the cgroup_mkdir hook
/// ([`LimitSweep::learn`]); without the hook, every sweep walks it.
pub const WALK_EVERY: Duration = Duration::from_secs(60);

pub struct LimitSweep {
    every: Duration,
    last: Option<Instant>,
    /// Each cgroup's own limit (`None`: unlimited) and when it was read.
    limits: HashMap<u64, (Option<u64>, Instant)>,
    /// Cgroups read unlimited once, not yet twice: believed until the next sweep only.
    unconfirmed: HashSet<u64>,
    /// The cgroups swept (id -> path), from the last walk and what was learnt since.
    cgroups: HashMap<u64, String>,
    walked: Option<Instant>,
    /// New cgroups are learnt ([`Self::learn`]): walk only every [`WALK_EVERY`].
    fed: bool,
}

impl LimitSweep {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            limits: HashMap::new(),
            unconfirmed: HashSet::new(),
            cgroups: HashMap::new(),
            walked: None,
            fed: false,
        }
    }

    /// Cgroups created since the last call (the cgroup_mkdir hook's records).
    pub fn learn(&mut self, created: Vec<(u64, String)>) {
        self.fed = true;
        self.cgroups.extend(created);
    }

    /// When a sweep is due at `now`: every cgroup (id, path) whose usage is at least `ratio` of
    /// its own limit. `sampled(id)`: the (usage, limit) bytes the kernel gave for `id` since the
    /// last sweep, if any. Cgroups that vanish mid-sweep are skipped.
    pub fn poll(
        &mut self,
        h: &MemoryHierarchy,
        ratio: f64,
        now: Instant,
        sampled: impl Fn(u64) -> Option<(u64, Option<u64>)>,
    ) -> Option<Vec<(u64, String)>> {
        if self.last.is_some_and(|t| now.duration_since(t) < self.every) {
            return None;
        }
        self.last = Some(now);
        if !self.fed || self.walked.is_none_or(|t| now.duration_since(t) >= WALK_EVERY) {
            self.cgroups = walk(h);
            self.walked = Some(now);
        }
        let (cgroups, unconfirmed) = (&mut self.cgroups, &mut self.unconfirmed);
        // An unlimited reading not yet confirmed is read again (see below).
        self.limits.retain(|id, (limit, at)| {
            cgroups.contains_key(id)
                && now.duration_since(*at) < LIMIT_FOR
                && !(limit.is_none() && unconfirmed.contains(id))
        });
        unconfirmed.retain(|id| cgroups.contains_key(id));
        let mut gone = Vec::new();
        let near = cgroups
            .iter()
            .filter(|(id, rel)| {
                let (usage, limit) = match sampled(**id) {
                    Some(reading) => reading,
                    None => {
                        let dir = h.dir(rel);
                        let limit = match self.limits.get(id) {
                            Some((l, _)) => *l,
                            None => {
                                let Some(l) = own_limit(&dir, h.version) else {
                                    gone.push(**id);
                                    return false;
                                };
                                // A runtime creates a cgroup, then writes its limit: an
                                // "unlimited" read between the two is kept for LIMIT_FOR only
                                // when the next sweep reads it too.
                                let first_unlimited = l.is_none() && !unconfirmed.remove(id);
                                if first_unlimited {
                                    unconfirmed.insert(**id);
                                } else {
                                    unconfirmed.remove(id);
                                }
                                self.limits.insert(**id, (l, now));
                                l
                            }
                        };
                        if limit.is_none() {
                            return false;
                        }
                        let Some(u) = usage(&dir, h.version) else {
                            gone.push(**id);
                            return false;
                        };
                        (u, limit)
                    }
                };
                limit.is_some_and(|l| usage as f64 >= ratio * l as f64)
            })
            .map(|(id, rel)| (*id, rel.clone()))
            .collect();
        // Removed (or the v2 root, which has no files): not read again until the next walk.
        for id in gone {
            self.cgroups.remove(&id);
        }
        Some(near)
    }
}

/// A cgroup's own limit (`Some(None)`: unlimited); `None` when the file cannot be read (the
/// cgroup is gone, or is the v2 root, which has none).
fn own_limit(dir: &Path, version: CgroupVersion) -> Option<Option<u64>> {
    let read = |name: &str| crate::pseudo_fs::read(dir.join(name)).ok();
    match version {
        CgroupVersion::V1 => parse_limit_v1(&read("memory.limit_in_bytes")?).ok(),
        CgroupVersion::V2 => parse_max_v2(&read("memory.max")?).ok(),
    }
}

/// A cgroup's usage, if its file can be read.
pub(crate) fn usage(dir: &Path, version: CgroupVersion) -> Option<u64> {
    let name = match version {
        CgroupVersion::V1 => "memory.usage_in_bytes",
        CgroupVersion::V2 => "memory.current",
    };
    parse_u64_file(&crate::pseudo_fs::read(dir.join(name)).ok()?).ok()
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
            .poll(h, 0.8, Instant::now(), |_| None)
            .expect("the first poll sweeps")
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        got.sort();
        assert!(
            s.poll(h, 0.8, Instant::now(), |_| None).is_none(),
            "not due again at once"
        );
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

    /// A cgroup the sampler read since the last sweep is judged by the kernel's reading, with
    /// no file read; the others read their limit once in LIMIT_FOR and their usage each sweep.
    #[test]
    fn kernel_readings_stand_for_files_and_limits_are_kept() {
        let (d, h) = hierarchy(CgroupVersion::V1);
        let files = |usage: &str| {
            [
                ("memory.limit_in_bytes", "100\n".to_owned()),
                ("memory.usage_in_bytes", usage.to_owned()),
            ]
        };
        let write = |rel: &str, usage: &str| {
            let f = files(usage);
            cgroup(
                d.path(),
                rel,
                &f.iter().map(|(n, t)| (*n, t.as_str())).collect::<Vec<_>>(),
            );
        };
        write("/sampled", "10\n");
        write("/unsampled", "10\n");
        let ids = walk(&h);
        let id = |rel: &str| {
            ids.iter()
                .find(|(_, p)| p.as_str() == rel)
                .map(|(id, _)| *id)
                .expect("walked")
        };
        let sampled_id = id("/sampled");
        let mut s = LimitSweep::new(Duration::ZERO);
        let t0 = Instant::now();
        // The files say 10 of 100; the kernel, since the last sweep, said 95 of 100.
        let got = s
            .poll(&h, 0.8, t0, |i| (i == sampled_id).then_some((95, Some(100))))
            .expect("due");
        assert_eq!(got.into_iter().map(|(_, p)| p).collect::<Vec<_>>(), ["/sampled"]);
        // The unsampled cgroup fills up; its limit is raised, which the sweep sees only after
        // LIMIT_FOR: until then 90 of the kept 100 is near.
        write("/unsampled", "90\n");
        std::fs::write(d.path().join("unsampled/memory.limit_in_bytes"), "1000\n").expect("write");
        let got = s
            .poll(&h, 0.8, t0 + Duration::from_secs(1), |_| None)
            .expect("due");
        assert_eq!(
            got.into_iter().map(|(_, p)| p).collect::<Vec<_>>(),
            ["/unsampled"]
        );
        let got = s
            .poll(&h, 0.8, t0 + LIMIT_FOR + Duration::from_secs(1), |_| None)
            .expect("due");
        assert!(got.is_empty(), "the new limit read after LIMIT_FOR: {got:?}");
    }

    /// A runtime creates the cgroup, then writes its limit: a sweep between the two reads it
    /// unlimited, and that reading, kept for LIMIT_FOR, hid the cgroup filling up for 30 s.
    #[test]
    fn an_unlimited_reading_is_kept_only_once_confirmed() {
        let (d, h) = hierarchy(CgroupVersion::V2);
        cgroup(
            d.path(),
            "/young",
            &[("memory.max", "max\n"), ("memory.current", "90\n")],
        );
        cgroup(
            d.path(),
            "/other",
            &[("memory.max", "max\n"), ("memory.current", "90\n")],
        );
        let mut s = LimitSweep::new(Duration::ZERO);
        let t0 = Instant::now();
        let paths = |v: Vec<(u64, String)>| v.into_iter().map(|(_, p)| p).collect::<Vec<_>>();
        assert!(paths(s.poll(&h, 0.8, t0, |_| None).expect("due")).is_empty());
        std::fs::write(d.path().join("young/memory.max"), "100\n").expect("write");
        let got = s
            .poll(&h, 0.8, t0 + Duration::from_secs(1), |_| None)
            .expect("due");
        assert_eq!(paths(got), ["/young"], "the limit written after the first read");
        // Read unlimited twice: kept; a limit written now is seen only after LIMIT_FOR.
        std::fs::write(d.path().join("other/memory.max"), "100\n").expect("write");
        let got = s
            .poll(&h, 0.8, t0 + Duration::from_secs(2), |_| None)
            .expect("due");
        assert_eq!(paths(got), ["/young"], "/other read unlimited at two sweeps");
    }

    /// Fed by the cgroup_mkdir hook, the sweep walks once a minute: a cgroup created since is
    /// swept because it was learnt, and one removed is dropped when its files are gone.
    #[test]
    fn learnt_cgroups_are_swept_between_walks() {
        let (d, h) = hierarchy(CgroupVersion::V2);
        let full = [("memory.max", "100\n"), ("memory.current", "90\n")];
        cgroup(d.path(), "/old", &full);
        let mut s = LimitSweep::new(Duration::ZERO);
        s.learn(vec![]);
        let t0 = Instant::now();
        let paths = |v: Vec<(u64, String)>| v.into_iter().map(|(_, p)| p).collect::<Vec<_>>();
        assert_eq!(paths(s.poll(&h, 0.8, t0, |_| None).expect("due")), ["/old"]);
        // Created after the walk: not seen by a walk, but learnt.
        cgroup(d.path(), "/new", &full);
        let new_id = walk(&h)
            .into_iter()
            .find(|(_, p)| p == "/new")
            .map(|(id, _)| id)
            .expect("walked");
        let unlearnt = s
            .poll(&h, 0.8, t0 + Duration::from_secs(1), |_| None)
            .expect("due");
        assert_eq!(paths(unlearnt), ["/old"], "no walk within WALK_EVERY");
        s.learn(vec![(new_id, "/new".into())]);
        let mut got = paths(
            s.poll(&h, 0.8, t0 + Duration::from_secs(2), |_| None)
                .expect("due"),
        );
        got.sort();
        assert_eq!(got, ["/new", "/old"]);
        std::fs::remove_dir_all(d.path().join("old")).expect("rm");
        let got = paths(
            s.poll(&h, 0.8, t0 + Duration::from_secs(3), |_| None)
                .expect("due"),
        );
        assert_eq!(got, ["/new"]);
        assert!(
            !s.cgroups.values().any(|p| p == "/old"),
            "a removed cgroup is dropped"
        );
    }
}
