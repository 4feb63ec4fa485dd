//! Where an OOM came from, read off the kernel stack at the kill: the tracepoint fires in the
//! task that ran out (mm/oom_kill.c `mark_oom_victim()`), inside either the memcg OOM
//! (`mem_cgroup_out_of_memory()` and its callers in mm/memcontrol.c) or the page allocator's
//! (`__alloc_pages_may_oom()` in mm/page_alloc.c, or sysrq-f). Where `oom_kill_process` cannot
//! be hooked (no kprobes, no fentry), this is the kernel's own answer to "memcg or global".
//! Userspace patches the text ranges from /proc/kallsyms; without them nothing is said.

use aya_ebpf::{EbpfContext, helpers::generated::bpf_get_stack, macros::map, maps::PerCpuArray};
use memtrace_common::{
    layout::{OOM_PATH_SLOTS, OomPathRanges},
    oom::flags,
};

#[unsafe(no_mangle)]
static OOM_PATH_RANGES: OomPathRanges = OomPathRanges::absent();

/// Frames read: mark_oom_victim is 3-4 frames below the program and the OOM entry point 4-8
/// frames below it (the stack seen on 6.18: mark_oom_victim, __oom_kill_process,
/// oom_kill_process, out_of_memory, mem_cgroup_out_of_memory, try_charge_memcg, ...).
const DEPTH: usize = 24;

/// The stack, off the BPF stack (512 bytes, most of them taken by the record).
#[map]
static OOM_PATH_STACK: PerCpuArray<[u64; DEPTH]> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn within(ip: u64, range: *const [u64; 2]) -> bool {
    // SAFETY: a patched read-only global, read in place (not copied to the BPF stack).
    let [start, end] = unsafe { core::ptr::read_volatile(range) };
    start != 0 && ip >= start && ip < end
}

/// `flags::PATH_MEMCG`, `flags::PATH_GLOBAL` or 0 (no ranges, no stack, or neither found).
#[inline(always)]
pub fn classify<C: EbpfContext>(ctx: &C) -> u32 {
    let Some(buf) = OOM_PATH_STACK.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the helper writes at most `size` bytes into this CPU's map value.
    let n = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            buf.cast(),
            (DEPTH * core::mem::size_of::<u64>()) as u32,
            0,
        )
    };
    if n <= 0 {
        return 0;
    }
    let frames = (n as usize) / core::mem::size_of::<u64>();
    let mut global = false;
    for i in 0..DEPTH {
        if i >= frames {
            break;
        }
        // SAFETY: i < DEPTH, inside this CPU's map value.
        let ip = unsafe { (*buf)[i] };
        for s in 0..OOM_PATH_SLOTS {
            if within(ip, &raw const OOM_PATH_RANGES.memcg[s]) {
                return flags::PATH_MEMCG;
            }
            global |= within(ip, &raw const OOM_PATH_RANGES.global[s]);
        }
    }
    if global { flags::PATH_GLOBAL } else { 0 }
}
