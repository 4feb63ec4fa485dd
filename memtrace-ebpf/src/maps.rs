//! Maps shared by the programs.

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, RingBuf},
};
use memtrace_common::counters::COUNTERS_LEN;

/// OOM victim records only: bulk traffic (charges, stacks) never shares this buffer, so it can
/// neither delay nor crowd out a kill. Userspace may resize it at load time.
#[map]
pub static OOM_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// cgroup creation records (rare, small): id -> path before any kill needs it.
#[map]
pub static CGROUP_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

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
