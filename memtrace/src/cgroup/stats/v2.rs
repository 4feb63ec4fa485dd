//! cgroup v2 memory files (Documentation/admin-guide/cgroup-v2.rst, "Memory Interface Files").

use std::path::Path;

use super::{CgroupVersion, MemoryStats, StatsError, optional, parse::*, required};

pub(super) fn read(dir: &Path) -> Result<MemoryStats, StatsError> {
    let usage = required(dir, "memory.current", parse_u64_file)?;
    let stat = required(dir, "memory.stat", parse_flat_keyed)?;
    let get = |key: &str| stat.get(key).copied();
    let need = |key: &'static str| {
        get(key).ok_or_else(|| StatsError::MissingKey {
            path: dir.join("memory.stat"),
            key,
        })
    };
    let events = optional(dir, "memory.events", parse_flat_keyed)?;
    let event = |key: &str| events.as_ref().and_then(|m| m.get(key).copied());
    let max = |name: &str| optional(dir, name, parse_max_v2).map(Option::flatten);
    Ok(MemoryStats {
        version: CgroupVersion::V2,
        usage,
        peak: optional(dir, "memory.peak", parse_u64_file)?,
        limit: max("memory.max")?,
        high: max("memory.high")?,
        low: max("memory.low")?,
        min: max("memory.min")?,
        swap_usage: optional(dir, "memory.swap.current", parse_u64_file)?,
        swap_limit: max("memory.swap.max")?,
        anon: need("anon")?,
        file: need("file")?,
        inactive_file: get("inactive_file").unwrap_or(0),
        active_file: get("active_file").unwrap_or(0),
        shmem: get("shmem").unwrap_or(0),
        mapped_file: get("file_mapped").unwrap_or(0),
        kernel: get("kernel"),
        slab: get("slab"),
        sock: get("sock"),
        high_events: event("high"),
        max_events: event("max"),
        oom_events: event("oom"),
        oom_kills: event("oom_kill"),
        oom_group_kills: event("oom_group_kill"),
        oom_group: optional(dir, "memory.oom.group", parse_u64_file)?.map(|v| v != 0),
        pressure: optional(dir, "memory.pressure", parse_pressure)?,
        ..MemoryStats::default()
    })
}
