//! The OOM context record: one per `oom_kill_process()` call, with what only the OOM killer
//! knows: the OOM domain (`oc->memcg`, NULL for a global OOM), its size (`totalpages`), the
//! chosen task and its score, the constraint and the allocation that failed. It precedes the
//! `mark_victim` record(s) of the same kill in the OOM ring buffer.

pub const KIND_OOM_CONTEXT: u32 = 3;

pub mod flags {
    /// From an fentry program.
    pub const SRC_FENTRY: u32 = 1 << 0;
    /// From a kprobe program.
    pub const SRC_KPROBE: u32 = 1 << 1;
    /// `oc->memcg` was set: a memcg OOM; `memcg_id` is valid.
    pub const MEMCG: u32 = 1 << 2;
    /// At least one kernel read failed.
    pub const READ_ERROR: u32 = 1 << 15;
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OomContextRecord {
    pub kind: u32,
    pub flags: u32,
    pub ktime_boot_ns: u64,
    /// Cgroup id of `oc->memcg`.
    pub memcg_id: u64,
    pub totalpages: u64,
    pub chosen_points: i64,
    pub gfp_mask: u32,
    pub order: i32,
    /// `enum oom_constraint`: 0 NONE, 1 CPUSET, 2 MEMORY_POLICY, 3 MEMCG.
    pub constraint: u32,
    pub chosen_pid: u32,
    pub chosen_tgid: u32,
    pub trigger_pid: u32,
}

pub const OOM_CONTEXT_RECORD_LEN: usize = core::mem::size_of::<OomContextRecord>();
const _: () = assert!(OOM_CONTEXT_RECORD_LEN == 8 + 8 * 4 + 4 * 6);

impl OomContextRecord {
    pub const fn zeroed() -> Self {
        Self {
            kind: KIND_OOM_CONTEXT,
            flags: 0,
            ktime_boot_ns: 0,
            memcg_id: 0,
            totalpages: 0,
            chosen_points: 0,
            gfp_mask: 0,
            order: 0,
            constraint: 0,
            chosen_pid: 0,
            chosen_tgid: 0,
            trigger_pid: 0,
        }
    }
}
