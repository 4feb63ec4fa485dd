//! Transparent huge page faults: `do_huge_pmd_anonymous_page(struct vm_fault *vmf)`
//! (mm/huge_memory.c), which an anonymous fault calls when its PMD is empty in a VMA that may
//! have huge pages. One such fault charges a whole PMD (512 pages on x86-64) where the sampled
//! mode's perf event counts one fault: a process that fills memory with huge pages was sampled
//! up to 512 times less than one using small pages, and its kill named others. Each call here
//! counts `pmd_pages / fault_period` stacks (at least one), the weight the sampler would have
//! given 512 small faults. Counted at entry, only for write faults (a read maps the huge zero
//! page) in a cgroup with room for a huge page under its own limit (else the charge reclaims
//! and, near an OOM, falls back to small pages, which the sampler counts). A fault that still
//! falls back (no huge page free, an ancestor's limit) is counted here and again by the
//! sampler. Rare (once per 2 MiB at most), so always on with the sampled mode.

use aya_ebpf::{
    helpers::bpf_get_current_task,
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext, tracing::StackIdContext},
};

use memtrace_common::layout::ABSENT;

use crate::{
    kernel::{self, off, read},
    probes::charge::{counters, note_usage, pmd_pages, sample_stack, sampled_config},
};

// do_huge_pmd_anonymous_page(struct vm_fault *vmf)
#[fentry(function = "do_huge_pmd_anonymous_page")]
pub fn thp_fentry(ctx: FEntryContext) -> u32 {
    let vmf: *const u8 = ctx.arg(0);
    match try_thp_fault(&ctx, vmf) {
        Ok(ret) | Err(ret) => ret,
    }
}

#[kprobe]
pub fn thp_kprobe(ctx: ProbeContext) -> u32 {
    let Some(vmf) = ctx.arg::<*const u8>(0) else {
        return 0;
    };
    match try_thp_fault(&ctx, vmf) {
        Ok(ret) | Err(ret) => ret,
    }
}

/// `FAULT_FLAG_WRITE` (include/linux/mm_types.h `enum fault_flag`, bit 0 since 2.6).
const FAULT_FLAG_WRITE: u32 = 1;

#[inline(always)]
fn try_thp_fault<C: StackIdContext>(ctx: &C, vmf: *const u8) -> Result<u32, u32> {
    let (period, stacks) = sampled_config();
    let pmd = pmd_pages();
    if period == 0 || pmd == 0 {
        return Ok(0);
    }
    // A read fault maps the huge zero page: nothing is charged.
    let flags_at = off!(vmf_flags);
    if flags_at != ABSENT && read::<u32>(vmf, flags_at).is_ok_and(|f| f & FAULT_FLAG_WRITE == 0) {
        return Ok(0);
    }
    // SAFETY: the current task, valid for the duration of the program.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let memcg = kernel::task_memcg(task).map_err(|_| 0u32)?;
    let id = kernel::css_cgroup_id(memcg).map_err(|_| 0u32)?;
    // Keyed by cgroup id, never by the `mem_cgroup *` (a freed memcg's memory is reused).
    let c = counters(id, memcg, Some(id)).ok_or(0u32)?;
    // SAFETY: this CPU's copy of a per-CPU value.
    let c = unsafe { &mut *c };
    // The cgroup's usage as the sampler notes it: a cgroup filled by huge pages is seen
    // nearing its limit without waiting for the limit sweep.
    // One fault (the perf event counts it too, as one in its period): the cgroup shows as
    // faulting, so it gets a row, a headroom, and named stacks near its limit.
    c.faults += 1;
    let usage = note_usage(c, memcg);
    // No room for a huge page under the limit: its charge must reclaim first and, near an OOM,
    // fails and falls back to small pages, which the page-fault sampler counts.
    if usage.is_some_and(|(used, max)| used.saturating_add(u64::from(pmd)) > max) {
        return Ok(0);
    }
    if stacks {
        // checked: a plain division links a panic call the verifier refuses.
        let weight = u64::from(pmd).checked_div(u64::from(period)).unwrap_or(1).max(1);
        c.stack_samples += weight;
        // User stack only, as the page-fault sampler takes (its samples of the same code
        // then count as one stack).
        sample_stack(ctx, id, weight, false);
    }
    Ok(0)
}
