//! Memory cgroups: where the memory controller is mounted, and cgroup id -> path.

pub mod hierarchy;
pub mod paths;

pub use hierarchy::{CgroupVersion, MemoryHierarchy};
pub use paths::CgroupPaths;
