//! Memory cgroups: where the memory controller is mounted, cgroup id -> path, and typed
//! readers of the memory files (v1 and v2).

pub mod hierarchy;
pub mod oom_stall;
pub mod paths;
pub mod reconcile;
pub mod stats;

pub use hierarchy::{CgroupVersion, MemoryHierarchy};
pub use paths::CgroupPaths;
pub use stats::{MemoryStats, StatsError, read_memory_stats};
