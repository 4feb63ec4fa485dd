//! Charge accounting, userspace side: sums the kernel's per-CPU counters per cgroup, turns
//! them into rates, and keeps a sliding window of sampled stacks so that "what was charging
//! in the seconds before the kill" can be answered.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{MapError, PerCpuHashMap, StackTraceMap},
};
use memtrace_common::charge::{ChargeCounters, StackKey};
use serde::Serialize;

use crate::cgroup::{CgroupPaths, read_memory_stats};

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
    fn add(&mut self, c: &ChargeCounters) {
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

/// A sampled (cgroup, process, kernel stack, user stack).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SampleKey {
    pub cgroup_id: u64,
    pub tgid: u32,
    pub comm: String,
    pub kernel_stack: Option<u32>,
    pub user_stack: Option<u32>,
}

impl From<&StackKey> for SampleKey {
    fn from(k: &StackKey) -> Self {
        let end = k.comm.iter().position(|&b| b == 0).unwrap_or(k.comm.len());
        Self {
            cgroup_id: k.cgroup_id,
            tgid: k.tgid,
            comm: String::from_utf8_lossy(&k.comm[..end]).into_owned(),
            kernel_stack: u32::try_from(k.kernel_stack).ok(),
            user_stack: u32::try_from(k.user_stack).ok(),
        }
    }
}

/// Reads the charge maps of a loaded tracer.
pub fn read_totals(ebpf: &Ebpf) -> Result<HashMap<u64, ChargeTotals>, MapError> {
    let Some(map) = ebpf.map("CHARGES") else { return Ok(HashMap::new()) };
    let map = PerCpuHashMap::<_, u64, ChargeCounters>::try_from(map)?;
    let mut out: HashMap<u64, ChargeTotals> = HashMap::new();
    for entry in map.iter() {
        // An entry evicted (LRU) between listing and reading is skipped, not an error.
        let Ok((_memcg, per_cpu)) = entry else { continue };
        for c in per_cpu.iter() {
            if c.cgroup_id != 0 {
                out.entry(c.cgroup_id).or_default().add(c);
            }
        }
    }
    Ok(out)
}

pub fn read_samples(ebpf: &Ebpf) -> Result<HashMap<SampleKey, u64>, MapError> {
    let Some(map) = ebpf.map("STACK_COUNTS") else { return Ok(HashMap::new()) };
    let map = PerCpuHashMap::<_, StackKey, u64>::try_from(map)?;
    let mut out = HashMap::new();
    for entry in map.iter() {
        let Ok((key, per_cpu)) = entry else { continue };
        *out.entry(SampleKey::from(&key)).or_default() += per_cpu.iter().sum::<u64>();
    }
    Ok(out)
}

/// Instruction pointers of a captured stack, innermost first.
pub fn stack_ips(ebpf: &Ebpf, id: u32) -> Option<Vec<u64>> {
    let map = StackTraceMap::try_from(ebpf.map("STACKS")?).ok()?;
    let trace = map.get(&id, 0).ok()?;
    Some(trace.frames().iter().map(|f| f.ip).collect())
}

/// Rates over the last interval and a window of stack samples.
pub struct ChargeMonitor {
    last: HashMap<u64, ChargeTotals>,
    last_at: Option<Instant>,
    last_samples: HashMap<SampleKey, u64>,
    /// Per poll: when, and the samples added since the previous poll.
    window: VecDeque<(Instant, HashMap<SampleKey, u64>)>,
    keep: Duration,
    /// Per-second rates from the last poll.
    pub rates: HashMap<u64, Rate>,
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
            last_samples: HashMap::new(),
            window: VecDeque::new(),
            keep,
            rates: HashMap::new(),
        }
    }

    /// Reads the maps and updates rates and the stack window.
    pub fn poll(&mut self, ebpf: &Ebpf, page_size: u64) -> Result<(), MapError> {
        let now = Instant::now();
        let totals = read_totals(ebpf)?;
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
        self.last = totals;
        self.last_at = Some(now);
        self.poll_samples(ebpf)
    }

    /// Reads only the stack samples (the rates stay as they were): what a kill needs, fast.
    pub fn poll_samples(&mut self, ebpf: &Ebpf) -> Result<(), MapError> {
        let now = Instant::now();
        let samples = read_samples(ebpf)?;
        let delta: HashMap<SampleKey, u64> = samples
            .iter()
            .filter_map(|(k, &n)| {
                let before = self.last_samples.get(k).copied().unwrap_or(0);
                // An LRU-evicted and re-created key starts again from a small count.
                let d = if n >= before { n - before } else { n };
                (d > 0).then(|| (k.clone(), d))
            })
            .collect();
        self.last_samples = samples;
        self.window.push_back((now, delta));
        while self.window.front().is_some_and(|(t, _)| now.duration_since(*t) > self.keep) {
            self.window.pop_front();
        }
        Ok(())
    }

    /// The sample keys seen in the latest poll.
    pub fn latest_keys(&self) -> impl Iterator<Item = &SampleKey> {
        self.window.back().into_iter().flat_map(|(_, d)| d.keys())
    }

    /// The most-sampled stacks of `cgroup_ids` over the last `within`, most first.
    pub fn top_samples(&self, cgroup_ids: &[u64], within: Duration, n: usize) -> Vec<(SampleKey, u64)> {
        let now = Instant::now();
        let mut sum: HashMap<&SampleKey, u64> = HashMap::new();
        for (t, delta) in &self.window {
            if now.duration_since(*t) > within {
                continue;
            }
            for (k, d) in delta {
                if cgroup_ids.contains(&k.cgroup_id) {
                    *sum.entry(k).or_default() += d;
                }
            }
        }
        let mut v: Vec<(SampleKey, u64)> = sum.into_iter().map(|(k, n)| (k.clone(), n)).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.tgid.cmp(&b.0.tgid)));
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

/// One sample: rows for every cgroup that charged in the interval, busiest first.
pub fn rows(monitor: &ChargeMonitor, paths: &mut CgroupPaths) -> Vec<Row> {
    let h = paths.hierarchy().clone();
    let mut rows: Vec<Row> = monitor
        .rates
        .iter()
        .filter(|(_, r)| r.charge_events_per_s > 0.0 || r.faults_per_s > 0.0 || r.reclaim_stalls_per_s > 0.0)
        .map(|(id, rate)| {
            let cgroup = paths.resolve(*id).unwrap_or_else(|| format!("<id {id}>"));
            let stats = read_memory_stats(&h.dir(&cgroup), h.version).ok();
            let limit = stats.as_ref().and_then(|s| s.limit);
            let usage = stats.as_ref().map(|s| s.usage);
            Row {
                cgroup_id: *id,
                usage_bytes: usage,
                working_set_bytes: stats.as_ref().map(|s| s.working_set()),
                limit_bytes: limit,
                headroom_pct: usage.zip(limit).map(|(u, l)| 100.0 * l.saturating_sub(u) as f64 / l.max(1) as f64),
                oom_kills: stats.as_ref().and_then(|s| s.oom_kills),
                rate: *rate,
                cgroup,
            }
        })
        .collect();
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
        a.add(&ChargeCounters { cgroup_id: 1, charge_events: 5, charged_pages: 7, faults: 3, ..Default::default() });
        a.add(&ChargeCounters { cgroup_id: 1, charge_events: 1, ..Default::default() });
        assert_eq!((a.charge_events, a.charged_pages, a.faults), (6, 7, 3));
        let b = ChargeTotals { charge_events: 10, ..Default::default() };
        assert_eq!(a.minus(&b).charge_events, 0);
    }

    #[test]
    fn sample_keys_decode_comm_and_missing_stacks() {
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
        assert_eq!(k.comm, "alloc");
        assert_eq!((k.kernel_stack, k.user_stack), (Some(12), None));
    }
}
