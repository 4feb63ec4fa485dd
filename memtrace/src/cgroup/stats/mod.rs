//! Typed readers of Linux memory-cgroup files, cgroup v1 and v2.
//!
//! Formats come from Documentation/admin-guide/cgroup-v2.rst ("Memory Interface
//! Files", "Pressure Stall Information") and
//! Documentation/admin-guide/cgroup-v1/memory.rst. The `parse_*` functions are
//! pure and total: any input gives `Ok` or a `ParseError`, never a panic.

use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

pub use super::hierarchy::CgroupVersion;
pub use parse::{
    ParseError, ParseErrorKind, parse_flat_keyed, parse_limit_v1, parse_max_v2, parse_pressure,
    parse_u64_file,
};

mod parse;
#[cfg(test)]
mod tests;
mod v1;
mod v2;

/// What reading an open kernfs file returns once its cgroup has been removed.
const ENODEV: i32 = 19;
/// Pressure files answer this when PSI is disabled at boot (`psi=0`).
const EOPNOTSUPP: i32 = 95;

/// One line of a PSI file: stall percentages over 10/60/300 s and total stall time in µs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PsiLine {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    pub total_us: u64,
}

/// `memory.pressure`; `full` is optional as it is for CPU pressure on older kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Pressure {
    pub some: PsiLine,
    pub full: Option<PsiLine>,
}

/// Memory statistics normalised across cgroup versions; every size is in bytes.
/// A limit of `None` means unlimited (or that the file does not exist).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MemoryStats {
    pub version: CgroupVersion,
    /// v1 `memory.usage_in_bytes`, v2 `memory.current`.
    pub usage: u64,
    /// v1 `memory.max_usage_in_bytes`, v2 `memory.peak` (5.19+).
    pub peak: Option<u64>,
    /// v1 `memory.limit_in_bytes`, v2 `memory.max`.
    pub limit: Option<u64>,
    /// v1 `hierarchical_memory_limit` from memory.stat: the tightest ancestor limit.
    pub hierarchical_limit: Option<u64>,
    /// v1 `hierarchical_memsw_limit`: the tightest memory+swap limit, its own or an ancestor's.
    pub hierarchical_memsw_limit: Option<u64>,
    /// v2 `memory.high`, `memory.low`, `memory.min`.
    pub high: Option<u64>,
    pub low: Option<u64>,
    pub min: Option<u64>,
    /// Swap only: v1 `total_swap` (shown only with swap accounting), v2 `memory.swap.current`.
    pub swap_usage: Option<u64>,
    /// Swap only: v2 `memory.swap.max`. v1 has no swap-only limit, see `memsw_limit`.
    pub swap_limit: Option<u64>,
    /// v1 memory+swap counters `memory.memsw.{usage,limit}_in_bytes`.
    pub memsw_usage: Option<u64>,
    pub memsw_limit: Option<u64>,
    /// From memory.stat: v2 keys, v1 `total_*` keys (falling back to the local key).
    pub anon: u64,
    pub file: u64,
    pub inactive_file: u64,
    pub active_file: u64,
    pub shmem: u64,
    pub mapped_file: u64,
    /// v2 `kernel` (5.18+). v1: `memory.kmem.usage_in_bytes` when present, else the
    /// estimate `usage - (total_rss + total_cache)` (v1 charges kmem to usage too).
    pub kernel: Option<u64>,
    /// v2 only (`slab`, `sock` in memory.stat).
    pub slab: Option<u64>,
    pub sock: Option<u64>,
    /// v2 `memory.events` counters (hierarchical).
    pub high_events: Option<u64>,
    pub max_events: Option<u64>,
    pub oom_events: Option<u64>,
    /// v1 `oom_kill` from memory.oom_control (4.13+), v2 `oom_kill` from memory.events.
    pub oom_kills: Option<u64>,
    /// v2 `oom_group_kill` (5.17+) and `memory.oom.group`.
    pub oom_group_kills: Option<u64>,
    pub oom_group: Option<bool>,
    /// v1 memory.oom_control flags, `memory.failcnt`, `memory.swappiness`.
    pub under_oom: Option<bool>,
    pub oom_kill_disable: Option<bool>,
    pub failcnt: Option<u64>,
    pub swappiness: Option<u64>,
    /// v2 `memory.pressure` (needs CONFIG_PSI).
    pub pressure: Option<Pressure>,
}

impl MemoryStats {
    /// cAdvisor's `container_memory_working_set_bytes`: usage minus inactive file cache.
    pub fn working_set(&self) -> u64 {
        self.usage.saturating_sub(self.inactive_file)
    }

    /// Bytes left before the hard limit; `None` when unlimited.
    pub fn headroom(&self) -> Option<u64> {
        self.limit.map(|limit| limit.saturating_sub(self.usage))
    }

    /// `usage / limit`; `None` when unlimited (or a zero limit).
    pub fn usage_ratio(&self) -> Option<f64> {
        self.limit
            .filter(|&l| l > 0)
            .map(|l| self.usage as f64 / l as f64)
    }
}

#[derive(Debug, Error)]
pub enum StatsError {
    /// The file or the whole cgroup is gone: removed before or during the read.
    #[error("{path}: vanished (cgroup removed?)")]
    Vanished { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: ParseError },
    #[error("{path}: required key {key:?} missing")]
    MissingKey { path: PathBuf, key: &'static str },
}

/// Reads `dir/name`; `Ok(None)` if that file alone is missing (or PSI is disabled).
fn read_optional(dir: &Path, name: &str) -> Result<Option<String>, StatsError> {
    let path = dir.join(name);
    match crate::pseudo_fs::read(&path) {
        Ok(text) => Ok(Some(text)),
        // An absent optional file is normal; an absent cgroup is not.
        Err(e) if e.kind() == io::ErrorKind::NotFound && dir.is_dir() => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StatsError::Vanished { path: dir.to_owned() }),
        Err(e) if e.raw_os_error() == Some(ENODEV) => Err(StatsError::Vanished { path }),
        Err(e) if e.raw_os_error() == Some(EOPNOTSUPP) => Ok(None),
        Err(source) => Err(StatsError::Io { path, source }),
    }
}

type Parser<T> = fn(&str) -> Result<T, ParseError>;

pub(super) fn optional<T>(dir: &Path, name: &str, parse: Parser<T>) -> Result<Option<T>, StatsError> {
    read_optional(dir, name)?
        .map(|text| {
            parse(&text).map_err(|source| StatsError::Parse {
                path: dir.join(name),
                source,
            })
        })
        .transpose()
}

pub(super) fn required<T>(dir: &Path, name: &str, parse: Parser<T>) -> Result<T, StatsError> {
    optional(dir, name, parse)?.ok_or_else(|| StatsError::Vanished { path: dir.join(name) })
}

/// Reads the memory controller files of the cgroup directory `dir`. Only the usage
/// file and memory.stat are required; every other file may be absent (old kernel,
/// no swap accounting, no PSI) and leaves its field `None`.
pub fn read_memory_stats(dir: &Path, version: CgroupVersion) -> Result<MemoryStats, StatsError> {
    match version {
        CgroupVersion::V1 => v1::read(dir),
        CgroupVersion::V2 => v2::read(dir),
    }
}
