//! Sampled charge accounting, the default: a software perf event fires this program once
//! every `fault_period` page faults per CPU (PERF_COUNT_SW_PAGE_FAULTS with a sample period),
//! instead of a program on every memcg event. Per sample it counts `fault_period` faults for
//! the faulting task's memcg, notes the memcg's usage and limit, and takes one stack. The
//! faults in between cost only the perf event's counter increment in the fault path
//! (arch/x86/mm/fault.c `perf_sw_event(PERF_COUNT_SW_PAGE_FAULTS, ...)`).
//! Charges not made by a page fault (page cache written by syscalls, kernel memory) are not
//! sampled here; they show in the usage read at the next sample or reclaim of that cgroup.

use aya_ebpf::{helpers::bpf_get_current_task, macros::perf_event, programs::PerfEventContext};

use crate::{
    kernel,
    probes::charge::{counters, note_usage, sample_stack, sampled_config},
};

#[perf_event]
pub fn charge_sample(ctx: PerfEventContext) -> u32 {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let Ok(memcg) = kernel::task_memcg(task) else {
        return 0;
    };
    let Ok(cgroup_id) = kernel::css_cgroup_id(memcg) else {
        return 0;
    };
    // Keyed by cgroup id, never by the `mem_cgroup *` (a freed memcg's memory is reused).
    let Some(c) = counters(cgroup_id, memcg, Some(cgroup_id)) else {
        return 0;
    };
    // SAFETY: this CPU's copy of a per-CPU value.
    let c = unsafe { &mut *c };
    let (period, stacks) = sampled_config();
    c.faults += u64::from(period);
    let _ = note_usage(c, memcg);
    if stacks {
        c.stack_samples += 1;
        sample_stack(&ctx, cgroup_id, 1, true);
    }
    0
}
