//! The memcg charge path: per-cgroup counters in a per-CPU map, and one stack in N charges.
//! Variants, best first (the userspace hook table picks): fentry/kprobe on
//! `try_charge_memcg(memcg, gfp, nr_pages)` (mm/memcontrol.c, 5.15+), else the memcg event
//! tracepoint `count_memcg_events(memcg, item, val)` (6.16+) as tp_btf, raw_tp or plain
//! tracepoint. Reclaim stalls (vmscan) are in `reclaim.rs` and count into the same counters.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_F_USER_STACK,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_boot_ns},
    macros::{btf_tracepoint, fentry, kprobe, raw_tracepoint, tracepoint},
    programs::{
        BtfTracePointContext, FEntryContext, ProbeContext, RawTracePointContext, TracePointContext,
        tracing::StackIdContext,
    },
};
use memtrace_common::charge::{
    ChargeConfig, ChargeCounters, STACK_SPILLED, STACK_TASK_RESEND_NS, STACK_TASK_SAMPLED, StackKey,
    StackTask,
};

use crate::{
    kernel::{self, read},
    maps::{CHARGES, SAMPLE_TICK, STACK_COUNTS, STACK_TASKS, STACKS, STACKS_SPILL, TASKS_SENT, bump},
};

#[unsafe(no_mangle)]
static CHARGE_CONFIG: ChargeConfig = ChargeConfig::default_config();

macro_rules! cfg {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const CHARGE_CONFIG.$field) }
    };
}

/// Sampled mode: faults per sample, and whether each sample takes a stack.
#[inline(always)]
pub(crate) fn sampled_config() -> (u32, bool) {
    (cfg!(fault_period), cfg!(sample_every) != 0)
}

/// Pages per PMD-sized huge page; 0: no THP.
#[inline(always)]
pub(crate) fn pmd_pages() -> u32 {
    cfg!(pmd_pages)
}

/// What one hit counts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Count {
    Charge { pages: u64 },
    Uncharge,
    Fault,
    MajorFault,
}

/// The counters of a memcg, created on first sight. `key` is the cgroup id, never the
/// `mem_cgroup *`: a freed memcg's memory is reused by the slab for a new cgroup, whose
/// charges would land in the dead one's entry.
#[inline(always)]
pub(crate) fn counters(key: u64, memcg: *const u8, known_id: Option<u64>) -> Option<*mut ChargeCounters> {
    let id = || match known_id {
        Some(id) => Some(id),
        None => kernel::css_cgroup_id(memcg).ok(),
    };
    if let Some(c) = CHARGES.get_ptr_mut(&key) {
        // An entry inserted on another CPU has a zeroed copy on this one: name it once here.
        // SAFETY: this CPU's copy of a per-CPU value.
        unsafe {
            if (*c).cgroup_id == 0 {
                (*c).cgroup_id = id()?;
            }
        }
        return Some(c);
    }
    let cgroup_id = id()?;
    let fresh = ChargeCounters {
        cgroup_id,
        ..ChargeCounters::default()
    };
    CHARGES.insert(&key, &fresh, 0).ok()?;
    CHARGES.get_ptr_mut(&key)
}

/// Notes the memcg's usage and limit in pages (its page counter) in its counters, and when;
/// returns them.
#[inline(always)]
pub(crate) fn note_usage(c: &mut ChargeCounters, memcg: *const u8) -> Option<(u64, u64)> {
    let (usage, max) = kernel::memcg_usage_limit(memcg).ok()?;
    c.usage_pages = usage;
    c.limit_pages = max;
    // SAFETY: no preconditions.
    c.seen_ns = unsafe { bpf_ktime_get_boot_ns() };
    Some((usage, max))
}

#[inline(always)]
fn account<C: StackIdContext>(ctx: &C, memcg: *const u8, known_id: Option<u64>, what: Count) {
    // Three kernel reads per charge in the exact mode (--exact-charges), for an id that a
    // reused memcg cannot make stale.
    let Some(id) = known_id.or_else(|| kernel::css_cgroup_id(memcg).ok()) else {
        return;
    };
    let Some(c) = counters(id, memcg, Some(id)) else {
        return;
    };
    // SAFETY: a per-CPU map value: this CPU's copy, not shared.
    let c = unsafe { &mut *c };
    match what {
        Count::Charge { pages } => {
            c.charge_events += 1;
            c.charged_pages += pages;
        }
        Count::Uncharge => c.uncharge_events += 1,
        Count::Fault => c.faults += 1,
        Count::MajorFault => c.major_faults += 1,
    }
    let sampled = match what {
        Count::Charge { .. } => true,
        // Where the hook has no charge event (cgroup v2 tracepoints), faults stand in for them.
        Count::Fault => cfg!(sample_item) == cfg!(ev_pgfault),
        _ => false,
    };
    // A charge weighs its pages (a huge page is 512 of them), so that a stack charging huge
    // pages is sampled as often per byte as one charging small pages.
    let weight = match what {
        Count::Charge { pages } => pages.max(1),
        _ => 1,
    };
    if sampled {
        let n = tick(weight);
        if n > 0 {
            c.stack_samples += n;
            sample_stack(ctx, c.cgroup_id, n, true);
        }
    }
}

/// How many stacks `weight` more units take on this CPU: one every `sample_every` units.
#[inline(always)]
fn tick(weight: u64) -> u64 {
    let every = u64::from(cfg!(sample_every));
    if every == 0 {
        return 0;
    }
    let Some(t) = SAMPLE_TICK.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU slot.
    unsafe {
        *t += weight;
        if *t < every {
            return 0;
        }
        // checked: a plain division links a panic call the verifier refuses.
        let n = (*t).checked_div(every).unwrap_or(0);
        *t = (*t).checked_rem(every).unwrap_or(0);
        n
    }
}

/// A stack id in `STACKS`, else in `STACKS_SPILL` (with `STACK_SPILLED` set), else -1. A bucket
/// held by another stack gives -EEXIST (kernel/bpf/stackmap.c `__bpf_get_stackid`); memtrace
/// does not pass BPF_F_REUSE_STACKID, which would replace a stack that keys counted earlier
/// still point to. A stack lost in both maps is counted.
#[inline(always)]
fn stack_id<C: StackIdContext>(ctx: &C, flags: u64) -> i32 {
    const EEXIST: i32 = 17;
    match ctx.get_stackid(&STACKS, flags) {
        Ok(id) => id as i32,
        Err(e) if e == -EEXIST => match ctx.get_stackid(&STACKS_SPILL, flags) {
            Ok(id) => id as i32 | STACK_SPILLED,
            Err(_) => {
                bump(memtrace_common::counters::STACKS_COLLIDED);
                -1
            }
        },
        Err(_) => -1,
    }
}

/// Counts `weight` samples of the current stack (user, and kernel if asked) in `cgroup_id`.
#[inline(always)]
pub(crate) fn sample_stack<C: StackIdContext>(ctx: &C, cgroup_id: u64, weight: u64, with_kernel: bool) {
    let kernel_stack = if with_kernel { stack_id(ctx, 0) } else { -1 };
    let user_stack = stack_id(ctx, u64::from(BPF_F_USER_STACK));
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let key = StackKey {
        cgroup_id,
        tgid,
        kernel_stack,
        user_stack,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    match STACK_COUNTS.get_ptr_mut(&key) {
        // SAFETY: this CPU's copy of a per-CPU value.
        Some(n) => unsafe { *n += weight },
        None => {
            let _ = STACK_COUNTS.insert(&key, &weight, 0);
            // SAFETY: the current task, valid for the duration of the program.
            let (start_ns, mm) = kernel::process_identity(unsafe { bpf_get_current_task() } as *const u8);
            let now = unsafe { bpf_ktime_get_boot_ns() };
            // SAFETY: a map value, read by value.
            let sent = unsafe { TASKS_SENT.get(&tgid) }.copied();
            let known = (start_ns != 0 || mm != 0)
                && sent.is_some_and(|[s, m, at]| {
                    s == start_ns && m == mm && now.saturating_sub(at) < STACK_TASK_RESEND_NS
                });
            // Marked sent only once it is: a record lost to a full ring is sent again with
            // the next new stack (it was marked before, and the process's maps were then not
            // read for 30 s, its frames left as addresses).
            if !known && send_task(tgid, STACK_TASK_SAMPLED, start_ns, mm) {
                let _ = TASKS_SENT.insert(&tgid, &[start_ns, mm, now], 0);
            }
        }
    }
}

/// Writes a process to `STACK_TASKS` for userspace to read its mappings; false (and counted)
/// when the ring is full.
#[inline(always)]
pub(crate) fn send_task(tgid: u32, kind: u32, start_ns: u64, mm: u64) -> bool {
    let task = StackTask {
        tgid,
        kind,
        start_ns,
        mm,
    };
    let sent = STACK_TASKS.output(&task, 0).is_ok();
    if !sent {
        bump(memtrace_common::counters::STACK_TASKS_RINGBUF_FULL);
    }
    sent
}

/// Maps a memcg event item to what it counts.
#[inline(always)]
fn event_count(item: u32, val: u64) -> Option<Count> {
    if item == cfg!(ev_pgpgin) {
        Some(Count::Charge { pages: 0 })
    } else if item == cfg!(ev_pgfault) {
        Some(Count::Fault)
    } else if item == cfg!(ev_pgmajfault) {
        Some(Count::MajorFault)
    } else if item == cfg!(ev_pgpgout) {
        let _ = val;
        Some(Count::Uncharge)
    } else {
        None
    }
}

// try_charge_memcg(struct mem_cgroup *memcg, gfp_t gfp_mask, unsigned int nr_pages)
#[fentry(function = "try_charge_memcg")]
pub fn charge_fentry(ctx: FEntryContext) -> u32 {
    let memcg: *const u8 = ctx.arg(0);
    let pages: u32 = ctx.arg(2);
    account(
        &ctx,
        memcg,
        None,
        Count::Charge {
            pages: u64::from(pages),
        },
    );
    0
}

#[kprobe]
pub fn charge_kprobe(ctx: ProbeContext) -> u32 {
    let (Some(memcg), Some(pages)) = (ctx.arg::<*const u8>(0), ctx.arg::<u32>(2)) else {
        return 0;
    };
    account(
        &ctx,
        memcg,
        None,
        Count::Charge {
            pages: u64::from(pages),
        },
    );
    0
}

// TP_PROTO(struct mem_cgroup *memcg, int item, unsigned long val)
#[btf_tracepoint(function = "count_memcg_events")]
pub fn memcg_ev_btf(ctx: BtfTracePointContext) -> u32 {
    let item: u32 = ctx.arg(1);
    if let Some(what) = event_count(item, ctx.arg(2)) {
        let memcg: *const u8 = ctx.arg(0);
        account(&ctx, memcg, None, what);
    }
    0
}

#[raw_tracepoint(tracepoint = "count_memcg_events")]
pub fn memcg_ev_raw(ctx: RawTracePointContext) -> u32 {
    let item: u32 = ctx.arg(1);
    if let Some(what) = event_count(item, ctx.arg(2)) {
        let memcg: *const u8 = ctx.arg(0);
        account(&ctx, memcg, None, what);
    }
    0
}

/// The formatted record: `u64 id` at 8, `int item` at 16, `unsigned long val` at 24 (checked
/// against tracefs by userspace before attaching).
#[tracepoint(category = "memcg", name = "count_memcg_events")]
pub fn memcg_ev_tp(ctx: TracePointContext) -> u32 {
    let base = ctx.as_ptr() as *const u8;
    let (Ok(id), Ok(item), Ok(val)) = (read::<u64>(base, 8), read::<u32>(base, 16), read::<u64>(base, 24))
    else {
        return 0;
    };
    if let Some(what) = event_count(item, val) {
        account(&ctx, core::ptr::null(), Some(id), what);
    }
    0
}
