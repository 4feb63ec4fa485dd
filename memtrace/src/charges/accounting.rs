//! Charge accounting, userspace side: sums the kernel's per-CPU counters per cgroup, turns
//! them into rates, and keeps a sliding window of sampled stacks so that "what was charging
//! in the seconds before the kill" can be answered.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use memtrace_common::charge::{ChargeCounters, StackKey};
use serde::Serialize;

use crate::{
    cgroup::{CgroupPaths, read_memory_stats},
    charges::{maps::ChargeMaps, sweep::usage},
};

/// One cgroup's counters, summed over CPUs (and over memcg keys with the same id).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ChargeTotals {
    pub charge_events: u64,
    pub charged_pages: u64,
    pub uncharge_events: u64,
    pub faults: u64,
    pub major_faults: u64,
    pub reclaim_stalls: u64,
    pub reclaim_ns: u64,
    pub stack_samples: u64,
}

impl ChargeTotals {
    pub(crate) fn add(&mut self, c: &ChargeCounters) {
        self.charge_events += c.charge_events;
        self.charged_pages += c.charged_pages;
        self.uncharge_events += c.uncharge_events;
        self.faults += c.faults;
        self.major_faults += c.major_faults;
        self.reclaim_stalls += c.reclaim_stalls;
        self.reclaim_ns += c.reclaim_ns;
        self.stack_samples += c.stack_samples;
    }

    fn minus(&self, o: &Self) -> Self {
        Self {
            charge_events: self.charge_events.saturating_sub(o.charge_events),
            charged_pages: self.charged_pages.saturating_sub(o.charged_pages),
            uncharge_events: self.uncharge_events.saturating_sub(o.uncharge_events),
            faults: self.faults.saturating_sub(o.faults),
            major_faults: self.major_faults.saturating_sub(o.major_faults),
            reclaim_stalls: self.reclaim_stalls.saturating_sub(o.reclaim_stalls),
            reclaim_ns: self.reclaim_ns.saturating_sub(o.reclaim_ns),
            stack_samples: self.stack_samples.saturating_sub(o.stack_samples),
        }
    }
}

/// A cgroup's `memory` page counter as the kernel program last saw it (sampled mode, and
/// at each reclaim stall), in pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub usage_pages: u64,
    pub limit_pages: u64,
    /// CLOCK_BOOTTIME ns of the reading.
    pub seen_ns: u64,
}

impl Snapshot {
    /// The limit in bytes; `None` when unlimited (PAGE_COUNTER_MAX: LONG_MAX / PAGE_SIZE).
    pub fn limit_bytes(&self, page_size: u64) -> Option<u64> {
        (self.limit_pages < (1 << 50)).then_some(self.limit_pages * page_size)
    }
}

/// Who was sampled charging: cgroup, process.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SampleKey {
    pub cgroup_id: u64,
    pub tgid: u32,
    pub comm: String,
}

impl From<&StackKey> for SampleKey {
    fn from(k: &StackKey) -> Self {
        let end = k.comm.iter().position(|&b| b == 0).unwrap_or(k.comm.len());
        Self {
            cgroup_id: k.cgroup_id,
            tgid: k.tgid,
            comm: String::from_utf8_lossy(&k.comm[..end]).into_owned(),
        }
    }
}

/// Sampled stacks, aggregated: who, from where (instruction pointers, innermost first), and
/// how many samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub key: SampleKey,
    pub kernel_ips: Vec<u64>,
    pub user_ips: Vec<u64>,
    pub count: u64,
}

/// How long a cgroup that stopped charging stays in `rows`.
const ACTIVE_FOR: Duration = Duration::from_secs(30);

/// Rates over the last interval and a window of stack samples.
pub struct ChargeMonitor {
    last: HashMap<u64, ChargeTotals>,
    last_at: Option<Instant>,
    /// Per poll: when, and the samples taken since the previous poll.
    window: VecDeque<(Instant, Vec<Sample>)>,
    keep: Duration,
    /// Per-second rates from the last poll.
    pub rates: HashMap<u64, Rate>,
    /// When each cgroup last charged, so a cgroup that filled up and went quiet is still
    /// looked at (by `rows`) for a while.
    last_active: HashMap<u64, Instant>,
    /// The kernel's latest usage reading per cgroup (sampled mode; reclaim stalls).
    pub snapshots: HashMap<u64, Snapshot>,
    /// Cgroups whose files `rows` read last time because they were near their limit: read
    /// again while they stay there, even without new samples.
    near: std::collections::HashSet<u64>,
    /// Cgroups that charged in the previous poll, and those that did then but not in this one.
    /// The kernel's usage snapshot is taken at a sample, so it can predate a burst's last
    /// charges (one in `fault_period` faults is sampled, and with transparent huge pages a
    /// fault charges 2 MiB: Debian's 5.10 filled 59 MiB in ~420 faults, one or two samples):
    /// `rows` reads the files of a cgroup that just went quiet once, to see where it stopped.
    active_prev: std::collections::HashSet<u64>,
    went_quiet: std::collections::HashSet<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Rate {
    pub charge_events_per_s: f64,
    pub charged_bytes_per_s: f64,
    pub faults_per_s: f64,
    pub reclaim_stalls_per_s: f64,
    /// Share of the interval spent in memcg reclaim, summed over tasks.
    pub reclaim_ms_per_s: f64,
    pub totals: ChargeTotals,
}

impl ChargeMonitor {
    pub fn new(keep: Duration) -> Self {
        Self {
            last: HashMap::new(),
            last_at: None,
            window: VecDeque::new(),
            keep,
            rates: HashMap::new(),
            last_active: HashMap::new(),
            snapshots: HashMap::new(),
            near: std::collections::HashSet::new(),
            active_prev: std::collections::HashSet::new(),
            went_quiet: std::collections::HashSet::new(),
        }
    }

    /// Reads the counters (rates) and drains the samples into the window.
    pub fn poll(&mut self, maps: &mut ChargeMaps, page_size: u64) {
        let now = Instant::now();
        let (totals, snapshots) = maps.read_totals();
        self.snapshots = snapshots;
        if let Some(at) = self.last_at {
            let secs = now.duration_since(at).as_secs_f64().max(1e-3);
            self.rates = totals
                .iter()
                .map(|(id, t)| {
                    let d = t.minus(self.last.get(id).unwrap_or(&ChargeTotals::default()));
                    let rate = Rate {
                        charge_events_per_s: d.charge_events as f64 / secs,
                        charged_bytes_per_s: (d.charged_pages * page_size) as f64 / secs,
                        faults_per_s: d.faults as f64 / secs,
                        reclaim_stalls_per_s: d.reclaim_stalls as f64 / secs,
                        reclaim_ms_per_s: d.reclaim_ns as f64 / 1e6 / secs,
                        totals: *t,
                    };
                    (*id, rate)
                })
                .collect();
        }
        let mut active_now = std::collections::HashSet::new();
        if self.last_at.is_none() {
            // First poll: everything counted since the programs attached is recent activity
            // (a burst sampled only before it is then seen to go quiet at the next poll).
            for id in totals.keys() {
                self.last_active.insert(*id, now);
                active_now.insert(*id);
            }
        }
        for (id, r) in &self.rates {
            if r.charge_events_per_s > 0.0 || r.faults_per_s > 0.0 || r.reclaim_stalls_per_s > 0.0 {
                self.last_active.insert(*id, now);
                active_now.insert(*id);
            }
        }
        self.went_quiet = self.active_prev.difference(&active_now).copied().collect();
        self.active_prev = active_now;
        self.last_active
            .retain(|_, t| now.duration_since(*t) < ACTIVE_FOR);
        self.last = totals;
        self.last_at = Some(now);
        let samples = maps.drain_samples();
        self.record(now, samples);
    }

    /// Adds one poll's samples, taken at `at`, to the window, and drops those older than the
    /// window keeps (what `poll` does with the drained samples; public for tests and replays).
    pub fn record(&mut self, at: Instant, samples: Vec<Sample>) {
        self.window.push_back((at, samples));
        while self
            .window
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > self.keep)
        {
            self.window.pop_front();
        }
    }

    /// Cgroups found near their limit without samples (`sweep`): `rows` reads their files
    /// while they stay near it.
    pub fn mark_near(&mut self, ids: impl IntoIterator<Item = u64>) {
        self.near.extend(ids);
    }

    /// The samples of the latest poll.
    pub fn latest(&self) -> &[Sample] {
        self.window.back().map_or(&[], |(_, s)| s.as_slice())
    }

    /// The most-sampled stacks of `cgroup_ids` over the last `within`, most first.
    pub fn top_samples(&self, cgroup_ids: &[u64], within: Duration, n: usize) -> Vec<Sample> {
        let now = Instant::now();
        let mut sum: HashMap<(&SampleKey, &[u64], &[u64]), u64> = HashMap::new();
        for (t, samples) in &self.window {
            if now.duration_since(*t) > within {
                continue;
            }
            for s in samples.iter().filter(|s| cgroup_ids.contains(&s.key.cgroup_id)) {
                *sum.entry((&s.key, &s.kernel_ips, &s.user_ips)).or_default() += s.count;
            }
        }
        let mut v: Vec<Sample> = sum
            .into_iter()
            .map(|((k, kips, uips), count)| Sample {
                key: k.clone(),
                kernel_ips: kips.to_vec(),
                user_ips: uips.to_vec(),
                count,
            })
            .collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.tgid.cmp(&b.key.tgid)));
        v.truncate(n);
        v
    }
}

/// One cgroup in `memtrace top`, and what the pre-OOM warnings look at.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub cgroup: String,
    pub cgroup_id: u64,
    pub usage_bytes: Option<u64>,
    pub working_set_bytes: Option<u64>,
    pub limit_bytes: Option<u64>,
    pub headroom_pct: Option<f64>,
    pub oom_kills: Option<u64>,
    #[serde(flatten)]
    pub rate: Rate,
}

/// Which cgroups `rows` reads the memory files of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reads {
    /// Every active cgroup (exact mode, and `top`, which shows the working set of all).
    All,
    /// Only cgroups whose kernel usage reading is at least this fraction of their limit, that
    /// stalled in reclaim, or that have no kernel reading: the rest show the kernel's usage
    /// and limit and no working set. The cost then follows the cgroups near a limit, not the
    /// number of busy cgroups.
    NearLimit(f64),
}

/// One sample: rows for every cgroup that charged in the interval, busiest first.
pub fn rows(monitor: &mut ChargeMonitor, paths: &mut CgroupPaths, reads: Reads, page_size: u64) -> Vec<Row> {
    let h = paths.hierarchy().clone();
    let mut near_now = std::collections::HashSet::new();
    // Charging cgroups, and those near their limit without a sample (see `sweep`).
    let ids: std::collections::BTreeSet<u64> = monitor
        .rates
        .keys()
        .filter(|id| monitor.last_active.contains_key(id))
        .chain(&monitor.near)
        .copied()
        .collect();
    let quiet = Rate::default();
    let mut rows: Vec<Row> = ids
        .iter()
        .map(|id| (id, monitor.rates.get(id).unwrap_or(&quiet)))
        .map(|(id, rate)| {
            let cgroup = paths.resolve(*id).unwrap_or_else(|| format!("<id {id}>"));
            let snap = monitor.snapshots.get(id);
            let read_files = match (reads, snap) {
                (Reads::All, _) | (_, None) => true,
                (Reads::NearLimit(ratio), Some(s)) => {
                    // A cgroup that just went quiet: its snapshot may predate the burst's
                    // last charges, so its usage is read again (one small file; the limit is
                    // the kernel's), and its memory files only if that reading is near the
                    // limit. Reading them for every cgroup that paused cost 1.8 % of a CPU at
                    // 500 bursty cgroups.
                    monitor.near.contains(id)
                        || (monitor.went_quiet.contains(id)
                            && s.limit_bytes(page_size).is_some_and(|l| {
                                usage(&h.dir(&cgroup), h.version)
                                    .is_some_and(|u| u as f64 >= ratio * l as f64)
                            }))
                        || rate.reclaim_stalls_per_s > 0.0
                        || s.limit_bytes(page_size)
                            .is_some_and(|l| (s.usage_pages * page_size) as f64 >= ratio * l as f64)
                }
            };
            let stats = if read_files {
                read_memory_stats(&h.dir(&cgroup), h.version).ok()
            } else {
                None
            };
            let (usage, limit) = match (&stats, snap) {
                (Some(s), _) => (Some(s.usage), s.limit),
                (None, Some(s)) => (Some(s.usage_pages * page_size), s.limit_bytes(page_size)),
                (None, None) => (None, None),
            };
            if let (Reads::NearLimit(ratio), Some(s)) = (reads, &stats)
                && s.limit.is_some_and(|l| s.usage as f64 >= ratio * l as f64)
            {
                near_now.insert(*id);
            }
            Row {
                cgroup_id: *id,
                usage_bytes: usage,
                working_set_bytes: stats.as_ref().map(|s| s.working_set()),
                limit_bytes: limit,
                headroom_pct: usage
                    .zip(limit)
                    .map(|(u, l)| 100.0 * l.saturating_sub(u) as f64 / l.max(1) as f64),
                oom_kills: stats.as_ref().and_then(|s| s.oom_kills),
                rate: *rate,
                cgroup,
            }
        })
        .collect();
    monitor.near = near_now;
    rows.sort_by(|a, b| {
        let key = |r: &Row| r.rate.charge_events_per_s + r.rate.faults_per_s;
        key(b).total_cmp(&key(a)).then_with(|| a.cgroup.cmp(&b.cgroup))
    });
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_and_subtract_without_underflow() {
        let mut a = ChargeTotals::default();
        a.add(&ChargeCounters {
            cgroup_id: 1,
            charge_events: 5,
            charged_pages: 7,
            faults: 3,
            ..Default::default()
        });
        a.add(&ChargeCounters {
            cgroup_id: 1,
            charge_events: 1,
            ..Default::default()
        });
        assert_eq!((a.charge_events, a.charged_pages, a.faults), (6, 7, 3));
        let b = ChargeTotals {
            charge_events: 10,
            ..Default::default()
        };
        assert_eq!(a.minus(&b).charge_events, 0);
    }

    #[test]
    fn sample_keys_decode_comm() {
        let mut comm = [0u8; 16];
        comm[..5].copy_from_slice(b"alloc");
        let k = SampleKey::from(&StackKey {
            cgroup_id: 3,
            tgid: 9,
            kernel_stack: 12,
            user_stack: -14,
            _pad: 0,
            comm,
        });
        assert_eq!((k.comm.as_str(), k.cgroup_id, k.tgid), ("alloc", 3, 9));
    }

    /// Cgroups that stopped charging since the last poll: only the one whose fresh usage is
    /// near its limit has its memory files read (a working set); the far one costs its usage
    /// and limit files, nothing more.
    #[test]
    fn a_cgroup_that_went_quiet_far_from_its_limit_reads_no_memory_files() {
        use crate::cgroup::{CgroupVersion, MemoryHierarchy};
        let d = tempfile::tempdir().expect("tempdir");
        let stat = "cache 0\nrss 4096\ntotal_cache 0\ntotal_rss 4096\ntotal_inactive_file 0\n";
        for (name, usage) in [("far", "10485760\n"), ("close", "98566144\n")] {
            let dir = d.path().join(name);
            std::fs::create_dir(&dir).expect("mkdir");
            std::fs::write(dir.join("memory.limit_in_bytes"), "104857600\n").expect("write");
            std::fs::write(dir.join("memory.usage_in_bytes"), usage).expect("write");
            std::fs::write(dir.join("memory.stat"), stat).expect("write");
        }
        let mut paths = CgroupPaths::new(MemoryHierarchy {
            version: CgroupVersion::V1,
            root: d.path().to_path_buf(),
        });
        let id = |p: &CgroupPaths, name: &str| {
            p.iter_ids()
                .find(|(_, path)| *path == format!("/{name}"))
                .map(|(id, _)| id)
                .expect("walked")
        };
        let (far, close) = (id(&paths, "far"), id(&paths, "close"));
        let mut m = ChargeMonitor::new(Duration::from_secs(60));
        for id in [far, close] {
            // Sampled early in the burst: 1 MiB of 100.
            m.snapshots.insert(
                id,
                Snapshot {
                    usage_pages: 256,
                    limit_pages: 25600,
                    seen_ns: 0,
                },
            );
            m.rates.insert(id, Rate::default());
            m.last_active.insert(id, Instant::now());
            m.went_quiet.insert(id);
        }
        let rows = rows(&mut m, &mut paths, Reads::NearLimit(0.9), 4096);
        let ws = |id| {
            rows.iter()
                .find(|r| r.cgroup_id == id)
                .map(|r| r.working_set_bytes)
        };
        assert_eq!(ws(far), Some(None), "far from its limit: no memory.stat read");
        assert_eq!(ws(close), Some(Some(98566144)), "near its limit: read in full");
        let near: Vec<u64> = m.near.iter().copied().collect();
        assert_eq!(near, [close], "read again at the next poll while near");
    }

    #[test]
    fn top_samples_aggregate_within_the_window() {
        let mut m = ChargeMonitor::new(Duration::from_secs(60));
        let key = SampleKey {
            cgroup_id: 1,
            tgid: 5,
            comm: "a".into(),
        };
        let s = |count, user: Vec<u64>| Sample {
            key: key.clone(),
            kernel_ips: vec![1],
            user_ips: user,
            count,
        };
        m.window
            .push_back((Instant::now(), vec![s(3, vec![10]), s(1, vec![11])]));
        m.window.push_back((Instant::now(), vec![s(4, vec![10])]));
        let top = m.top_samples(&[1], Duration::from_secs(10), 5);
        assert_eq!(
            top.iter().map(|t| (t.user_ips[0], t.count)).collect::<Vec<_>>(),
            vec![(10, 7), (11, 1)]
        );
        assert!(m.top_samples(&[2], Duration::from_secs(10), 5).is_empty());
    }
}
