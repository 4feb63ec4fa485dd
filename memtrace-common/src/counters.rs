//! Indices into the per-CPU `COUNTERS` array map. Userspace sums them over CPUs.
//! `produced == delivered + dropped` is checked with these.

/// Times an OOM victim program ran (one per killed task).
pub const OOM_SEEN: u32 = 0;
/// OOM records that could not be reserved in the OOM ring buffer (buffer full): lost events.
pub const OOM_RINGBUF_FULL: u32 = 1;
/// Kernel reads (`bpf_probe_read_kernel`) that failed while filling an OOM record; the record is
/// still sent, with the affected `flags` bits cleared.
pub const OOM_READ_ERRORS: u32 = 2;

/// cgroup_mkdir records lost to a full `CGROUP_EVENTS` buffer (paths then come from rescans).
pub const CGROUP_RINGBUF_FULL: u32 = 3;

/// oom_kill_process runs, and their records lost to a full OOM ring buffer.
pub const OOM_CTX_SEEN: u32 = 4;
pub const OOM_CTX_RINGBUF_FULL: u32 = 5;

/// New-stack-task records lost to a full `STACK_TASKS` buffer: that process's frames stay
/// addresses if it exits before it is symbolized.
pub const STACK_TASKS_RINGBUF_FULL: u32 = 6;

/// User-sent SIGKILLs to another process (signal_generate), and their records lost to a full
/// `KILL_SIGNALS` buffer.
pub const USER_KILL_SEEN: u32 = 7;
pub const USER_KILL_RINGBUF_FULL: u32 = 8;

/// Sampled stacks lost because their bucket held another stack in `STACKS` and in
/// `STACKS_SPILL` (`-EEXIST` from bpf_get_stackid): that sample's frames are missing.
pub const STACKS_COLLIDED: u32 = 9;

pub const COUNTERS_LEN: u32 = 10;
