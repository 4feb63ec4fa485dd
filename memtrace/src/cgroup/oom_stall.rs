//! OOMs without a victim: a cgroup at its limit where the OOM killer cannot or will not kill.
//!
//! No hook fires for these (mark_victim needs a victim), so the daemon polls once a second:
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
}

/// At most this many cgroups are polled (a host with more is partly watched; logged).
const MAX_CGROUPS: usize = 4096;

impl StallWatch {
    pub fn poll(&mut self, h: &MemoryHierarchy) -> Vec<OomStall> {
        let mut out = Vec::new();
        let mut alive = Vec::new();
        walk(&h.root, "", 0, &mut alive);
        let now = SystemTime::now();
        for rel in &alive {
            let dir = h.dir(rel);
            let seen = self.seen.entry(rel.clone()).or_default();
            let stalled = match h.version {
                CgroupVersion::V1 => v1_under_oom(&dir).map(|(under, disabled)| {
                    under.then(|| {
                        if disabled {
                            StallReason::KillerDisabled
                        } else {
                            exempt_reason(&dir)
                        }
                    })
                }),
                CgroupVersion::V2 => v2_events(&dir).map(|(oom, kills)| {
                    let stalled = seen.known && oom > seen.oom && kills == seen.oom_kill;
                    seen.known = true;
                    seen.oom = oom;
                    seen.oom_kill = kills;
                    stalled.then(|| exempt_reason(&dir))
                }),
            };
            let Some(stalled) = stalled else { continue };
            match (stalled, seen.open) {
                (Some(reason), None) => {
                    let tasks = tasks(&dir);
                    seen.open = Some((now, Instant::now(), reason, tasks));
                    out.push(OomStall {
                        cgroup: rel.clone(),
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
        // Removed cgroups: an open stall ends with them.
        let gone: Vec<String> = self.seen.keys().filter(|k| !alive.contains(k)).cloned().collect();
        for rel in gone {
            if let Some(Seen { open: Some(open), .. }) = self.seen.remove(&rel) {
                out.push(ended(&rel, open, now));
            }
        }
        out
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
    let text = std::fs::read_to_string(dir.join("memory.oom_control")).ok()?;
    Some((
        keyed(&text, "under_oom")? == 1,
        keyed(&text, "oom_kill_disable")? == 1,
    ))
}

/// (`oom`, `oom_kill`) from v2 `memory.events.local` (or `memory.events`).
fn v2_events(dir: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(dir.join("memory.events.local"))
        .or_else(|_| std::fs::read_to_string(dir.join("memory.events")))
        .ok()?;
    Some((keyed(&text, "oom")?, keyed(&text, "oom_kill")?))
}

fn pids(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
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
            std::fs::read_to_string(format!("/proc/{p}/oom_score_adj")).is_ok_and(|a| a.trim() == "-1000")
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
}
