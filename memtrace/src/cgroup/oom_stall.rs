//! OOMs without a victim: a cgroup at its limit where the OOM killer cannot or will not kill.
//!
//! No hook fires for these (mark_victim needs a victim), so the daemon polls. Its cost must not
//! grow with idle cgroups by the second: the hierarchy is walked every [`WALK_EVERY`], each
//! cgroup's file read once in [`SLICES`] seconds (a slice a second, in turn), and only the
//! cgroups stalled now every second. At 2,000 cgroups the walk and a read of each every second,
//! with a quadratic check for removed cgroups, took about 10 % of a CPU (`cargo xtask bench
//! scale`). A stall is seen within about `SLICES` seconds, and its end within one.
//!
//! A cgroup cannot stall without reaching its limit, and a charge at the limit reclaims first
//! (mm/memcontrol.c try_charge_memcg -> try_to_free_mem_cgroup_pages, traced by
//! `mm_vmscan_memcg_reclaim_end`). Where the charge worker sees those, it feeds the cgroups
//! that reclaimed or came near their limit ([`StallWatch::pressed`]): they (and their
//! ancestors, whose limit it may be) are read every second for [`PRESSED_FOR`], and the others
//! once in [`FED_SLICES`] seconds only, as a safety net. At 500 busy cgroups that is 17 reads a
//! second, not 100.
//! - cgroup v1: `memory.oom_control` `under_oom 1` (the killer disabled with
//!   `oom_kill_disable 1`: the charging tasks sleep until memory is freed or the limit rises);
//! - cgroup v2: `memory.events` `oom` rising while `oom_kill` does not (the kernel counts every
//!   failed OOM attempt, mm/memcontrol.c try_charge_memcg -> memcg_memory_event(MEMCG_OOM)),
//!   e.g. every task at `oom_score_adj` -1000: the faulting task retries the fault for ever.
//!
//! The stall ends when `under_oom` falls back to 0 (v1), when a poll sees no new `oom` event
//! (v2), or when the cgroup is removed.

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;

use super::{CgroupVersion, MemoryHierarchy};

/// Why nothing was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StallReason {
    /// v1 `memory.oom_control` `oom_kill_disable 1`: tasks wait instead of dying.
    KillerDisabled,
    /// Every task in the cgroup has `oom_score_adj` -1000: none may be killed.
    AllTasksExempt,
    /// The kernel counted OOMs and no kill; memtrace cannot tell why.
    Unknown,
}

impl StallReason {
    pub fn describe(self) -> &'static str {
        match self {
            Self::KillerDisabled => {
                "the OOM killer is disabled (oom_kill_disable=1): its tasks wait for memory"
            }
            Self::AllTasksExempt => "every task has oom_score_adj -1000: the OOM killer may kill none",
            Self::Unknown => "the kernel counted OOMs without a kill, for a reason memtrace cannot see",
        }
    }
}

/// A stall that began, or (with `duration`) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomStall {
    pub cgroup: String,
    pub since: SystemTime,
    pub reason: StallReason,
    /// Tasks in the cgroup when the stall was seen.
    pub tasks: u32,
    /// Set on the end event: how long the cgroup stayed at its limit without a kill.
    pub duration: Option<Duration>,
    /// When this event was made.
    pub time: SystemTime,
}

#[derive(Debug, Default)]
struct Seen {
    /// v2: `oom` and `oom_kill` at the last poll.
    oom: u64,
    oom_kill: u64,
    known: bool,
    open: Option<(SystemTime, Instant, StallReason, u32)>,
}

/// Per-cgroup state between polls.
#[derive(Debug, Default)]
pub struct StallWatch {
    seen: HashMap<String, Seen>,
    /// The cgroups of the last walk, and when it was.
    cgroups: Vec<String>,
    walked: Option<Instant>,
    /// Where the next slice starts in `cgroups`.
    next: usize,
    /// Cgroups fed as pressed, read at every poll until then.
    pressed: HashMap<String, Instant>,
    /// Whether anything feeds pressed cgroups: then the rotation is slow.
    fed: bool,
}

/// One cgroup's file, as read.
enum Read {
    /// (`under_oom`, `oom_kill_disable`).
    V1((bool, bool)),
    /// (`oom`, `oom_kill`).
    V2((u64, u64)),
}

/// How often the list of cgroups is renewed (new and removed ones).
const WALK_EVERY: Duration = Duration::from_secs(5);
/// Every cgroup is read once in this many polls (seconds).
const SLICES: usize = 5;
/// The same when pressed cgroups are fed: the rotation is only a safety net then.
const FED_SLICES: usize = 30;
/// How long a cgroup fed as pressed is read at every poll.
pub const PRESSED_FOR: Duration = Duration::from_secs(10);

/// At most this many cgroups are polled (a host with more is partly watched; logged).
const MAX_CGROUPS: usize = 4096;

impl StallWatch {
    /// `known`: the cgroups the daemon's path cache knows, when the cgroup_mkdir hook keeps it
    /// current (removed ones included: their reads fail, which ends their stalls); without
    /// it the hierarchy is walked.
    pub fn poll<'a>(
        &mut self,
        h: &MemoryHierarchy,
        known: Option<impl Iterator<Item = &'a str>>,
    ) -> Vec<OomStall> {
        let mut out = Vec::new();
        let now = SystemTime::now();
        if self.walked.is_none_or(|t| t.elapsed() >= WALK_EVERY) {
            let mut alive = match known {
                Some(paths) => paths
                    .filter(|p| *p != "/")
                    .take(MAX_CGROUPS)
                    .map(str::to_owned)
                    .collect(),
                None => {
                    let mut walked = Vec::new();
                    walk(&h.root, "", 0, &mut walked);
                    walked
                }
            };
            alive.sort_unstable();
            alive.dedup();
            // Cgroups no longer listed: an open stall ends with them.
            let gone: Vec<String> = self
                .seen
                .keys()
                .filter(|k| alive.binary_search(k).is_err())
                .cloned()
                .collect();
            for rel in gone {
                self.forget(&rel, now, &mut out);
            }
            self.cgroups = alive;
            self.walked = Some(Instant::now());
        }
        for rel in self.due() {
            self.check(h, &rel, now, &mut out);
        }
        out
    }

    /// Cgroups that reclaimed or came near their limit (the charge worker's), read at every
    /// poll for [`PRESSED_FOR`] with their ancestors; from the first call on, the others are
    /// read once in [`FED_SLICES`] polls.
    pub fn pressed(&mut self, cgroups: impl IntoIterator<Item = String>, now: Instant) {
        self.fed = true;
        let until = now + PRESSED_FOR;
        for cgroup in cgroups {
            let mut rel = cgroup.as_str();
            while !rel.is_empty() && rel != "/" {
                self.pressed.insert(rel.to_owned(), until);
                rel = rel.rsplit_once('/').map_or("", |(parent, _)| parent);
            }
        }
    }

    /// A removed cgroup: its open stall ends.
    fn forget(&mut self, rel: &str, now: SystemTime, out: &mut Vec<OomStall>) {
        if let Some(Seen { open: Some(open), .. }) = self.seen.remove(rel) {
            out.push(ended(rel, open, now));
        }
    }

    /// This poll's slice of the cgroups, every cgroup stalled now, and the pressed ones.
    fn due(&mut self) -> Vec<String> {
        let len = self.cgroups.len();
        let slices = if self.fed { FED_SLICES } else { SLICES };
        let n = len.div_ceil(slices);
        let mut due: Vec<String> = (0..n)
            .map(|i| self.cgroups[(self.next + i) % len].clone())
            .collect();
        self.next = if len == 0 { 0 } else { (self.next + n) % len };
        let now = Instant::now();
        self.pressed.retain(|_, until| *until > now);
        let mut listed: std::collections::HashSet<String> = due.iter().cloned().collect();
        let open = self
            .seen
            .iter()
            .filter(|(_, s)| s.open.is_some())
            .map(|(rel, _)| rel);
        for rel in open.chain(self.pressed.keys()) {
            if listed.insert(rel.clone()) {
                due.push(rel.clone());
            }
        }
        due
    }

    /// Reads one cgroup's file; a stall that begins or ends goes to `out`.
    fn check(&mut self, h: &MemoryHierarchy, rel: &str, now: SystemTime, out: &mut Vec<OomStall>) {
        let dir = h.dir(rel);
        let read = match h.version {
            CgroupVersion::V1 => v1_under_oom(&dir).map(Read::V1),
            CgroupVersion::V2 => v2_events(&dir).map(Read::V2),
        };
        let Some(read) = read else {
            if !dir.is_dir() {
                self.forget(rel, now, out);
            }
            return;
        };
        let seen = self.seen.entry(rel.to_owned()).or_default();
        let stalled = match read {
            Read::V1((under, disabled)) => under.then(|| {
                if disabled {
                    StallReason::KillerDisabled
                } else {
                    exempt_reason(&dir)
                }
            }),
            Read::V2((oom, kills)) => {
                let stalled = seen.known && oom > seen.oom && kills == seen.oom_kill;
                seen.known = true;
                seen.oom = oom;
                seen.oom_kill = kills;
                stalled.then(|| exempt_reason(&dir))
            }
        };
        match (stalled, seen.open) {
            (Some(reason), None) => {
                let tasks = tasks(&dir);
                seen.open = Some((now, Instant::now(), reason, tasks));
                out.push(OomStall {
                    cgroup: rel.to_owned(),
                    since: now,
                    reason,
                    tasks,
                    duration: None,
                    time: now,
                });
            }
            (None, Some(open)) => {
                seen.open = None;
                out.push(ended(rel, open, now));
            }
            _ => {}
        }
    }
}

fn ended(rel: &str, open: (SystemTime, Instant, StallReason, u32), now: SystemTime) -> OomStall {
    let (since, started, reason, tasks) = open;
    OomStall {
        cgroup: rel.to_owned(),
        since,
        reason,
        tasks,
        duration: Some(started.elapsed()),
        time: now,
    }
}

fn walk(dir: &Path, rel: &str, depth: u32, out: &mut Vec<String>) {
    if out.len() >= MAX_CGROUPS || depth > 16 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let child = format!("{rel}/{}", e.file_name().to_string_lossy());
            out.push(child.clone());
            walk(&e.path(), &child, depth + 1, out);
        }
    }
}

fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// (`under_oom`, `oom_kill_disable`) from v1 `memory.oom_control`.
fn v1_under_oom(dir: &Path) -> Option<(bool, bool)> {
    let text = crate::pseudo_fs::read(dir.join("memory.oom_control")).ok()?;
    Some((
        keyed(&text, "under_oom")? == 1,
        keyed(&text, "oom_kill_disable")? == 1,
    ))
}

/// (`oom`, `oom_kill`) from v2 `memory.events.local` (or `memory.events`).
fn v2_events(dir: &Path) -> Option<(u64, u64)> {
    let text = crate::pseudo_fs::read(dir.join("memory.events.local"))
        .or_else(|_| crate::pseudo_fs::read(dir.join("memory.events")))
        .ok()?;
    Some((keyed(&text, "oom")?, keyed(&text, "oom_kill")?))
}

fn pids(dir: &Path) -> Vec<u32> {
    crate::pseudo_fs::read(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn tasks(dir: &Path) -> u32 {
    u32::try_from(pids(dir).len()).unwrap_or(u32::MAX)
}

/// Every task at -1000, or not known.
fn exempt_reason(dir: &Path) -> StallReason {
    let pids = pids(dir);
    let all_exempt = !pids.is_empty()
        && pids.iter().all(|p| {
            crate::pseudo_fs::read(format!("/proc/{p}/oom_score_adj")).is_ok_and(|a| a.trim() == "-1000")
        });
    if all_exempt {
        StallReason::AllTasksExempt
    } else {
        StallReason::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty v1 hierarchy in a new temporary directory (gone when it drops).
    fn v1_tree() -> (tempfile::TempDir, MemoryHierarchy) {
        let d = tempfile::tempdir().expect("tempdir");
        let h = MemoryHierarchy {
            version: CgroupVersion::V1,
            root: d.path().to_path_buf(),
        };
        (d, h)
    }

    #[test]
    fn parses_the_kernel_files() {
        let text = "oom_kill_disable 1\nunder_oom 1\noom_kill 0\n";
        assert_eq!(keyed(text, "under_oom"), Some(1));
        assert_eq!(keyed(text, "oom_kill"), Some(0));
        assert_eq!(
            keyed(
                "low 0\nhigh 0\nmax 5\noom 3\noom_kill 0\noom_group_kill 0\n",
                "oom"
            ),
            Some(3)
        );
        assert_eq!(keyed("oom_kill 2\n", "oom"), None);
    }

    /// Each cgroup is read once in `SLICES` polls; one stalled now is read at every poll, and
    /// its end is seen at the next; a removed one ends its stall at the next walk.
    #[test]
    fn cgroups_are_read_in_turn_and_stalls_every_poll() {
        let (d, h) = v1_tree();
        let oom = |rel: &str, under: u8| {
            let dir = d.path().join(rel);
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(
                dir.join("memory.oom_control"),
                format!("oom_kill_disable 1\nunder_oom {under}\n"),
            )
            .expect("write");
        };
        for i in 0..12 {
            oom(&format!("c{i}"), 0);
        }
        oom("c7", 1);
        // A round of slices reads every cgroup, 3 of 12 a poll (at most twice: slices round up).
        let mut w = StallWatch {
            cgroups: (0..12).map(|i| format!("/c{i}")).collect(),
            ..StallWatch::default()
        };
        let mut read = HashMap::<String, usize>::new();
        for _ in 0..SLICES {
            for rel in w.due() {
                *read.entry(rel).or_default() += 1;
            }
        }
        assert_eq!(read.len(), 12);
        assert!(read.values().all(|n| (1..=2).contains(n)), "{read:?}");
        assert_eq!(read.values().sum::<usize>(), 15);

        let mut w = StallWatch::default();
        let began = (0..SLICES).any(|_| {
            w.poll(&h, None::<std::iter::Empty<&str>>)
                .iter()
                .any(|s| s.cgroup == "/c7" && s.duration.is_none())
        });
        assert!(began, "the stall is seen within {SLICES} polls");
        assert_eq!(w.cgroups.len(), 12);
        // Ends at the next poll, stalled cgroups being read every time.
        oom("c7", 0);
        let ended = w.poll(&h, None::<std::iter::Empty<&str>>);
        assert!(
            ended.iter().any(|s| s.cgroup == "/c7" && s.duration.is_some()),
            "{ended:?}"
        );
        // Again stalled, then removed: the end comes with the next walk.
        oom("c3", 1);
        let mut seen_c3 = false;
        for _ in 0..SLICES {
            seen_c3 |= w
                .poll(&h, None::<std::iter::Empty<&str>>)
                .iter()
                .any(|s| s.cgroup == "/c3");
        }
        assert!(seen_c3);
        std::fs::remove_dir_all(d.path().join("c3")).expect("rm");
        w.walked = None;
        let gone = w.poll(&h, None::<std::iter::Empty<&str>>);
        assert!(
            gone.iter().any(|s| s.cgroup == "/c3" && s.duration.is_some()),
            "{gone:?}"
        );
    }

    /// Fed by the charge worker: a pressed cgroup and its ancestors are read at every poll
    /// until the feed is [`PRESSED_FOR`] old; every other cgroup once in `FED_SLICES` polls.
    #[test]
    fn pressed_cgroups_are_read_every_poll_and_the_rest_once_in_a_slow_round() {
        let mut w = StallWatch {
            cgroups: (0..60).map(|i| format!("/p/c{i}")).collect(),
            ..StallWatch::default()
        };
        w.pressed(["/p/c7".to_owned()], Instant::now());
        let mut read = HashMap::<String, usize>::new();
        for _ in 0..FED_SLICES {
            for rel in w.due() {
                *read.entry(rel).or_default() += 1;
            }
        }
        assert_eq!(read.get("/p/c7"), Some(&FED_SLICES));
        assert_eq!(read.get("/p"), Some(&FED_SLICES));
        assert!(
            read.iter()
                .filter(|(k, _)| !["/p", "/p/c7"].contains(&k.as_str()))
                .all(|(_, n)| *n == 1),
            "{read:?}"
        );
        assert_eq!(read.len(), 61);
        // A feed as old as PRESSED_FOR is over: only the slow round is read.
        let mut w = StallWatch {
            cgroups: (0..60).map(|i| format!("/p/c{i}")).collect(),
            ..StallWatch::default()
        };
        w.pressed(["/q/r".to_owned()], Instant::now() - PRESSED_FOR);
        let due = w.due();
        assert_eq!(due.len(), 60 / FED_SLICES, "{due:?}");
        assert!(w.pressed.is_empty());
    }

    /// From the path cache (no walk): a removed cgroup's stall ends when its read fails,
    /// without waiting for the list to be renewed.
    #[test]
    fn a_stall_from_the_path_cache_ends_with_its_cgroup() {
        let (d, h) = v1_tree();
        let dir = d.path().join("c5");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(
            dir.join("memory.oom_control"),
            "oom_kill_disable 1\nunder_oom 1\n",
        )
        .expect("write");
        let known = ["/", "/c5", "/removed-long-ago"];
        let mut w = StallWatch::default();
        let began = w.poll(&h, Some(known.into_iter()));
        assert!(
            began.iter().any(|s| s.cgroup == "/c5" && s.duration.is_none()),
            "{began:?}"
        );
        assert_eq!(w.cgroups, ["/c5", "/removed-long-ago"]);
        std::fs::remove_dir_all(&dir).expect("rm");
        let ended = w.poll(&h, Some(known.into_iter()));
        assert!(
            ended.iter().any(|s| s.cgroup == "/c5" && s.duration.is_some()),
            "{ended:?}"
        );
        assert!(w.seen.is_empty());
    }
}
