//! cgroup v1 memory files (Documentation/admin-guide/cgroup-v1/memory.rst).

use std::path::Path;

use super::{CgroupVersion, MemoryStats, StatsError, optional, parse::*, required};

pub(super) fn read(dir: &Path) -> Result<MemoryStats, StatsError> {
    let usage = required(dir, "memory.usage_in_bytes", parse_u64_file)?;
    let stat = required(dir, "memory.stat", parse_flat_keyed)?;
    // total_* keys are hierarchical (cgroup-v1/memory.rst 5.2); prefer them.
    let get = |key: &str| {
        stat.get(&format!("total_{key}"))
            .or_else(|| stat.get(key))
            .copied()
    };
    let need = |key: &'static str| {
        get(key).ok_or_else(|| StatsError::MissingKey {
            path: dir.join("memory.stat"),
            key,
        })
    };
    let (anon, file) = (need("rss")?, need("cache")?);
    let oom = optional(dir, "memory.oom_control", parse_flat_keyed)?;
    let oom_get = |key: &str| oom.as_ref().and_then(|m| m.get(key).copied());
    let kmem = optional(dir, "memory.kmem.usage_in_bytes", parse_u64_file)?;
    Ok(MemoryStats {
        version: CgroupVersion::V1,
        usage,
        peak: optional(dir, "memory.max_usage_in_bytes", parse_u64_file)?,
        limit: optional(dir, "memory.limit_in_bytes", parse_limit_v1)?.flatten(),
        hierarchical_limit: get("hierarchical_memory_limit").filter(|&v| v < V1_UNLIMITED),
        hierarchical_memsw_limit: get("hierarchical_memsw_limit").filter(|&v| v < V1_UNLIMITED),
        swap_usage: get("swap"),
        memsw_usage: optional(dir, "memory.memsw.usage_in_bytes", parse_u64_file)?,
        memsw_limit: optional(dir, "memory.memsw.limit_in_bytes", parse_limit_v1)?.flatten(),
        anon,
        file,
        inactive_file: get("inactive_file").unwrap_or(0),
        active_file: get("active_file").unwrap_or(0),
        shmem: get("shmem").unwrap_or(0),
        mapped_file: get("mapped_file").unwrap_or(0),
        kernel: Some(kmem.unwrap_or_else(|| usage.saturating_sub(anon.saturating_add(file)))),
        oom_kills: oom_get("oom_kill"),
        under_oom: oom_get("under_oom").map(|v| v != 0),
        oom_kill_disable: oom_get("oom_kill_disable").map(|v| v != 0),
        failcnt: optional(dir, "memory.failcnt", parse_u64_file)?,
        swappiness: optional(dir, "memory.swappiness", parse_u64_file)?,
        ..MemoryStats::default()
    })
}
