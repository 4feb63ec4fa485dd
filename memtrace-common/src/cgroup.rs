//! Cgroup creation records: memtrace learns each cgroup's id -> path as it is created, so a
//! cgroup removed right after a kill (a container torn down) is still named.

pub const KIND_CGROUP_MKDIR: u32 = 2;
pub const CGROUP_PATH_LEN: usize = 256;

/// `flags` bits.
pub mod flags {
    /// The path did not fit in [`super::CGROUP_PATH_LEN`] bytes.
    pub const PATH_TRUNCATED: u32 = 1 << 0;
}

/// Wire layout of a `cgroup:cgroup_mkdir` record in the `CGROUP_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CgroupMkdirRecord {
    pub kind: u32,
    pub flags: u32,
    /// Hierarchy id (`cgroup_root.hierarchy_id`; 0 is the cgroup2 default hierarchy).
    pub root: u32,
    pub level: u32,
    /// Cgroup id (kernfs node id).
    pub id: u64,
    /// Path relative to the hierarchy root, NUL-terminated.
    pub path: [u8; CGROUP_PATH_LEN],
}

pub const CGROUP_MKDIR_RECORD_LEN: usize = core::mem::size_of::<CgroupMkdirRecord>();
const _: () = assert!(CGROUP_MKDIR_RECORD_LEN == 4 * 4 + 8 + CGROUP_PATH_LEN);
