//! Reclaim stalls: `vmscan:mm_vmscan_memcg_reclaim_begin/end` (mm/vmscan.c), as tp_btf or plain
//! tracepoint. The stall is timed per task and added to the charge counters of its memcg.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_boot_ns},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext, tracing::StackIdContext},
};

use super::charge::counters;
use crate::{kernel, maps::RECLAIM_START};

#[inline(always)]
fn reclaim_begin() {
    let pid = bpf_get_current_pid_tgid() as u32;
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let _ = RECLAIM_START.insert(&pid, &now, 0);
}

#[inline(always)]
fn reclaim_end<C: StackIdContext>(ctx: &C) {
    let pid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: a map value read once, then removed.
    let Some(start) = (unsafe { RECLAIM_START.get(&pid) }).copied() else {
        return;
    };
    let _ = RECLAIM_START.remove(&pid);
    let took = unsafe { bpf_ktime_get_boot_ns() }.saturating_sub(start);
    // The stall is charged to the stalled task's memcg (the limit may be an ancestor's).
    let current = unsafe { bpf_get_current_task() } as *const u8;
    let Ok(memcg) = kernel::task_memcg(current) else {
        return;
    };
    let _ = ctx;
    // Keyed by cgroup id (a freed memcg's memory is reused); reclaim is rare, the read is cheap.
    let Ok(id) = kernel::css_cgroup_id(memcg) else {
        return;
    };
    if let Some(c) = counters(id, memcg, Some(id)) {
        // SAFETY: this CPU's copy.
        let c = unsafe { &mut *c };
        c.reclaim_stalls += 1;
        c.reclaim_ns += took;
        // A stall means the cgroup is at a limit: note where it stands, for the pre-OOM check
        // (charges made by syscalls, such as page cache writes, are seen here, not by faults).
        if let Ok((usage, max)) = kernel::memcg_usage_limit(memcg) {
            c.usage_pages = usage;
            c.limit_pages = max;
            c.seen_ns = unsafe { bpf_ktime_get_boot_ns() };
        }
    }
}

#[btf_tracepoint(function = "mm_vmscan_memcg_reclaim_begin")]
pub fn reclaim_beg_btf(_ctx: BtfTracePointContext) -> u32 {
    reclaim_begin();
    0
}

#[btf_tracepoint(function = "mm_vmscan_memcg_reclaim_end")]
pub fn reclaim_end_btf(ctx: BtfTracePointContext) -> u32 {
    reclaim_end(&ctx);
    0
}

#[tracepoint(category = "vmscan", name = "mm_vmscan_memcg_reclaim_begin")]
pub fn reclaim_beg_tp(_ctx: TracePointContext) -> u32 {
    reclaim_begin();
    0
}

#[tracepoint(category = "vmscan", name = "mm_vmscan_memcg_reclaim_end")]
pub fn reclaim_end_tp(ctx: TracePointContext) -> u32 {
    reclaim_end(&ctx);
    0
}
