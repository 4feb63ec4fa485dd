//! The kernel's charge maps, taken out of the loaded object: per-cgroup counters, the sampled
//! stacks and their counts (drained each poll), the recorder of sampled processes' mappings,
//! and the cgroups whose processes are recorded at exec.

use std::collections::HashMap;

use aya::{
    Ebpf,
    maps::{MapData, MapError, PerCpuHashMap, RingBuf, StackTraceMap},
};
use memtrace_common::charge::{ChargeCounters, STACK_SPILLED, StackKey};

use crate::charges::{
    accounting::{ChargeTotals, Sample, SampleKey, Snapshot},
    task_maps,
};

/// The charge maps, taken out of the loaded object so that whoever polls them (a worker
/// thread in `watch`) owns them.
pub struct ChargeMaps {
    charges: PerCpuHashMap<MapData, u64, ChargeCounters>,
    counts: PerCpuHashMap<MapData, StackKey, u64>,
    stacks: StackTraceMap<MapData>,
    /// Stacks whose `STACKS` bucket was taken (ids with `STACK_SPILLED`).
    spill: StackTraceMap<MapData>,
    /// Records the mappings of sampled processes while they run (None: frames of processes
    /// that are gone stay addresses).
    _maps_recorder: Option<task_maps::Recorder>,
    /// Cgroups whose processes are recorded at exec (None: only when sampled).
    exec: Option<task_maps::ExecCgroups>,
}

impl ChargeMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, MapError> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .ok_or_else(|| MapError::InvalidName { name: name.into() })
        };
        let lost = "stacks of processes that exit will keep raw addresses";
        let _maps_recorder = match RingBuf::try_from(take("STACK_TASKS")?) {
            Ok(ring) => task_maps::Recorder::spawn(ring)
                .inspect_err(|e| log::warn!("{lost}: {e}"))
                .ok(),
            Err(e) => {
                log::warn!("{lost}: {e}");
                None
            }
        };
        let exec = match aya::maps::HashMap::try_from(take("EXEC_CGROUPS")?) {
            Ok(m) => Some(task_maps::ExecCgroups::new(m)),
            Err(e) => {
                log::warn!("processes will not be recorded at exec: {e}");
                None
            }
        };
        Ok(Self {
            charges: PerCpuHashMap::try_from(take("CHARGES")?)?,
            counts: PerCpuHashMap::try_from(take("STACK_COUNTS")?)?,
            stacks: StackTraceMap::try_from(take("STACKS")?)?,
            spill: StackTraceMap::try_from(take("STACKS_SPILL")?)?,
            _maps_recorder,
            exec,
        })
    }

    /// The cgroups whose processes have their mappings read when they exec (the `exec`
    /// hook): the ones whose stacks are named, so a process killed soon after its start is.
    pub fn record_execs_in(&mut self, ids: impl IntoIterator<Item = u64>) {
        if let Some(e) = &mut self.exec {
            e.set(ids);
        }
    }

    /// Counters per cgroup id, summed over CPUs (and over map keys with the same id), and the
    /// newest usage snapshot of each cgroup: one pass over the map, no file read.
    pub fn read_totals(&self) -> (HashMap<u64, ChargeTotals>, HashMap<u64, Snapshot>) {
        let mut out: HashMap<u64, ChargeTotals> = HashMap::new();
        let mut snaps: HashMap<u64, Snapshot> = HashMap::new();
        // An entry evicted (LRU) between listing and reading is skipped, not an error.
        for (_key, per_cpu) in self.charges.iter().filter_map(Result::ok) {
            for c in per_cpu.iter().filter(|c| c.cgroup_id != 0) {
                out.entry(c.cgroup_id).or_default().add(c);
                if c.seen_ns != 0 {
                    let s = snaps.entry(c.cgroup_id).or_default();
                    if c.seen_ns > s.seen_ns {
                        *s = Snapshot {
                            usage_pages: c.usage_pages,
                            limit_pages: c.limit_pages,
                            seen_ns: c.seen_ns,
                        };
                    }
                }
            }
        }
        (out, snaps)
    }

    /// Takes every sample out of the kernel maps: the counts are read then deleted, and so
    /// are the stacks they point to, so the maps hold one poll's worth and stay cheap to read
    /// however long memtrace runs. A sample counted between the read and the delete is lost
    /// (they are samples, not totals).
    pub fn drain_samples(&mut self) -> Vec<Sample> {
        let entries: Vec<(StackKey, u64)> = self
            .counts
            .iter()
            .filter_map(Result::ok)
            .map(|(k, per_cpu)| (k, per_cpu.iter().sum()))
            .collect();
        for (k, _) in &entries {
            let _ = self.counts.remove(k);
        }
        let mut ids: Vec<i32> = entries
            .iter()
            .flat_map(|(k, _)| [k.kernel_stack, k.user_stack])
            .filter(|id| *id >= 0)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        // An id with STACK_SPILLED is in the spill map (its bucket in STACKS was taken).
        let mut frames: HashMap<i32, Vec<u64>> = HashMap::with_capacity(ids.len());
        for id in &ids {
            let (map, raw) = match u32::try_from(id & !STACK_SPILLED) {
                Ok(raw) if id & STACK_SPILLED != 0 => (&mut self.spill, raw),
                Ok(raw) => (&mut self.stacks, raw),
                Err(_) => continue,
            };
            if let Ok(s) = map.get(&raw, 0) {
                frames.insert(*id, s.frames().iter().map(|f| f.ip).collect());
            }
            let _ = map.remove(&raw);
        }
        let ips = |id: i32| frames.get(&id).cloned().unwrap_or_default();
        entries
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| Sample {
                key: SampleKey::from(k),
                kernel_ips: ips(k.kernel_stack),
                user_ips: ips(k.user_stack),
                count: *n,
            })
            .collect()
    }
}
