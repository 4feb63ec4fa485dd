//! Maps shared by the programs.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, RingBuf, StackTrace},
};
use memtrace_common::{
    charge::{ChargeCounters, EXEC_CGROUPS_MAX, StackKey},
    counters::COUNTERS_LEN,
};

/// OOM victim records only: bulk traffic (charges, stacks) never shares this buffer, so it can
/// neither delay nor crowd out a kill. Userspace may resize it at load time.
#[map]
pub static OOM_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// The kernel stack of each OOM kill (`OomVictimRecord::kernel_stack`), read (never deleted:
/// kills with the same stack share an id) by userspace as it decodes the record.
#[map]
pub static OOM_STACKS: StackTrace = StackTrace::with_max_entries(256, 0);
/// Non-zero when userspace reads `OOM_STACKS` (oom_kill_process not hooked): the stack walk
/// costs about 30 µs per kill, in the OOM killer's path, and is skipped otherwise.
#[map]
pub static OOM_STACKS_WANTED: Array<u32> = Array::with_max_entries(1, 0);

/// cgroup creation records (rare, small): id -> path before any kill needs it.
#[map]
pub static CGROUP_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Charge counters per memcg (`mem_cgroup *` -> counters), per CPU: no lock, no record per
/// charge. LRU, so a host with more cgroups than entries forgets the idle ones.
#[map]
pub static CHARGES: LruPerCpuHashMap<u64, ChargeCounters> = LruPerCpuHashMap::with_max_entries(8192, 0);

/// Sampled stacks of charging tasks, and how often each (cgroup, task, stacks) was seen.
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);
/// A stack whose bucket in `STACKS` holds another stack goes here instead (its id then has
/// `STACK_SPILLED` set): without it, every sample of a run whose one hot stack collided lost
/// its frames (kernel/bpf/stackmap.c: one stack per bucket, -EEXIST).
#[map]
pub static STACKS_SPILL: StackTrace = StackTrace::with_max_entries(4096, 0);
/// SIGKILLs sent from userspace (`signal_generate`): rare, and kept out of the OOM ring so
/// that ring's produced == delivered stays about kernel OOM kills alone.
#[map]
pub static KILL_SIGNALS: RingBuf = RingBuf::with_byte_size(16 * 1024, 0);

/// A task whose stack was sampled under a new key ([`StackTask`]): userspace reads its
/// /proc/<tgid>/maps at once, while the task is surely alive, so its frames can still be named
/// (by file offset) after it exits. Once per process (`TASKS_SENT`), and again every
/// `STACK_TASK_RESEND_NS` so that userspace keeps a process still charging.
#[map]
pub static STACK_TASKS: RingBuf = RingBuf::with_byte_size(16 * 1024, 0);
/// tgid -> [group leader start time, mm, when sent]: what `STACK_TASKS` said last. Without
/// it, every busy process was sent after every drain of the counts (80 records and wake-ups a
/// second with 500 busy cgroups).
#[map]
pub static TASKS_SENT: LruHashMap<u32, [u64; 3]> = LruHashMap::with_max_entries(4096, 0);
/// Cgroup ids whose processes are sent to `STACK_TASKS` when they exec (`probes/exec.rs`),
/// kept by userspace: cgroups near their limit in `watch`, the sampled ones in `hotspots`.
#[map]
pub static EXEC_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(EXEC_CGROUPS_MAX, 0);
#[map]
pub static STACK_COUNTS: LruPerCpuHashMap<StackKey, u64> = LruPerCpuHashMap::with_max_entries(16384, 0);

/// Start of a memcg direct reclaim, per task (pid).
#[map]
pub static RECLAIM_START: HashMap<u32, u64> = HashMap::with_max_entries(4096, 0);

/// Per-CPU charge weight (pages, or events) since the last stack, for one-in-N sampling.
#[map]
pub static SAMPLE_TICK: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The victim memcg's OOM-kill counter at its last mark_victim (cgroup id -> count; never the
/// `mem_cgroup *`, whose memory the slab reuses for new cgroups).
#[map]
pub static OOM_KILLS_SEEN: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// Per-CPU event counters, indexed by `memtrace_common::counters`.
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, programs on one CPU do not preempt each other here.
        unsafe { *slot += 1 }
    }
}
