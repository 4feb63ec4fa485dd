//! `mark_victim`: called once for every task the OOM killer kills, in the context of the task
//! that triggered the OOM (mm/oom_kill.c: `mark_oom_victim()` -> `trace_mark_victim()`).
//!
//! Three variants, chosen by userspace: `tp_btf` and `raw_tp` get the victim's
//! `task_struct *` (TP_PROTO(struct task_struct *task, uid_t uid), since 6.8) and read
//! everything from it; the plain tracepoint gets the record the kernel formats (pid only before
//! 6.8) and can only see the trigger's own task.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::{btf_tracepoint, raw_tracepoint, tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext, TracePointContext},
};
use aya_log_ebpf::warn;
use memtrace_common::{
    counters::{OOM_READ_ERRORS, OOM_RINGBUF_FULL, OOM_SEEN},
    layout::{ABSENT, MarkVictimTpLayout},
    oom::{OomVictimRecord, flags},
};

use crate::{
    kernel::{self, off, read},
    maps::{OOM_EVENTS, bump},
    memcg_stat,
};

/// Tracepoint field offsets, from tracefs; patched by userspace.
#[unsafe(no_mangle)]
static MARK_VICTIM_TP: MarkVictimTpLayout = MarkVictimTpLayout::absent();

macro_rules! tp_off {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const MARK_VICTIM_TP.$field) }
    };
}

#[btf_tracepoint(function = "mark_victim")]
pub fn oom_victim_btf(ctx: BtfTracePointContext) -> u32 {
    match try_oom_victim_task(&ctx, ctx.arg(0), ctx.arg(1), flags::SRC_TP_BTF) {
        Ok(ret) | Err(ret) => ret,
    }
}

#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn oom_victim_raw(ctx: RawTracePointContext) -> u32 {
    match try_oom_victim_task(&ctx, ctx.arg(0), ctx.arg(1), flags::SRC_RAW_TP) {
        Ok(ret) | Err(ret) => ret,
    }
}

#[tracepoint(category = "oom", name = "mark_victim")]
pub fn oom_victim_tp(ctx: TracePointContext) -> u32 {
    match try_oom_victim_tp(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

/// Reserves a zeroed record with the trigger's identity and the time filled in.
#[inline(always)]
fn start_record(src: u32) -> Result<aya_ebpf::maps::ring_buf::RingBufEntry<OomVictimRecord>, u32> {
    bump(OOM_SEEN);
    let Some(mut entry) = OOM_EVENTS.reserve::<OomVictimRecord>(0) else {
        bump(OOM_RINGBUF_FULL);
        return Err(0);
    };
    let mut rec = OomVictimRecord::zeroed();
    rec.flags = src;
    rec.ktime_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    rec.trigger_pid = pid_tgid as u32;
    rec.trigger_tgid = (pid_tgid >> 32) as u32;
    if let Ok(comm) = bpf_get_current_comm() {
        rec.trigger_comm = comm;
    }
    let current = unsafe { bpf_get_current_task() } as *const u8;
    if let Ok(memcg) = kernel::task_memcg(current)
        && let Ok(id) = kernel::css_cgroup_id(memcg)
    {
        rec.trigger_memcg_id = id;
        rec.flags |= flags::HAS_TRIGGER_MEMCG;
    }
    entry.write(rec);
    Ok(entry)
}

/// Fills the victim's memcg id and its page counter from the victim's `task_struct`.
#[inline(always)]
fn fill_memcg(rec: &mut OomVictimRecord, task: *const u8) -> bool {
    let Ok(memcg) = kernel::task_memcg(task) else {
        return false;
    };
    let mut ok = true;
    match kernel::css_cgroup_id(memcg) {
        Ok(id) => {
            rec.victim_memcg_id = id;
            rec.flags |= flags::HAS_VICTIM_MEMCG;
        }
        Err(_) => ok = false,
    }
    match kernel::memcg_usage_limit(memcg) {
        Ok((usage, limit)) => {
            rec.memcg_usage_pages = usage;
            rec.memcg_limit_pages = limit;
            rec.flags |= flags::HAS_MEMCG_COUNTERS;
        }
        Err(_) => ok = false,
    }
    if let Some((id, usage, limit, depth)) = kernel::oom_memcg(memcg) {
        rec.oom_memcg_id = id;
        rec.oom_memcg_usage_pages = usage;
        rec.oom_memcg_limit_pages = limit;
        rec.oom_memcg_depth = depth;
        rec.flags |= flags::HAS_OOM_MEMCG;
    }
    fill_stats(rec, memcg);
    ok
}

/// The memory breakdown of the victim's memcg and of the OOM memcg, at the kill.
#[inline(always)]
fn fill_stats(rec: &mut OomVictimRecord, memcg: *const u8) {
    if memcg_stat::read_stats(memcg, &mut rec.victim_stats) {
        rec.flags |= flags::HAS_VICTIM_STATS;
    }
    if rec.flags & flags::HAS_OOM_MEMCG != 0
        && let Some(oom) = memcg_stat::ancestor(memcg, rec.oom_memcg_depth)
        && memcg_stat::read_stats(oom, &mut rec.oom_stats)
    {
        rec.flags |= flags::HAS_OOM_STATS;
    }
}

/// Sets VICTIM_EXITING when the victim was marked without a kill: its memcg's kill counter did
/// not move (or, without the counter, it was already exiting).
#[inline(always)]
fn mark_if_exiting(rec: &mut OomVictimRecord, task: *const u8) {
    let counted = kernel::task_memcg(task)
        .ok()
        .and_then(kernel::memcg_counted_a_kill);
    if counted == Some(false) || (counted.is_none() && kernel::task_exiting(task)) {
        rec.flags |= flags::VICTIM_EXITING;
    }
}

/// Fills a record from the victim's `task_struct` (tp_btf and raw_tp variants).
#[inline(always)]
fn try_oom_victim_task<C: EbpfContext>(ctx: &C, task: *const u8, uid: u32, src: u32) -> Result<u32, u32> {
    let mut entry = start_record(src)?;
    // SAFETY: start_record initialised the entry.
    let rec = unsafe { entry.assume_init_mut() };
    let mut ok = true;

    rec.victim_uid = uid;
    rec.flags |= flags::HAS_UID;
    match (
        read::<i32>(task, off!(task_pid)),
        read::<i32>(task, off!(task_tgid)),
    ) {
        (Ok(pid), Ok(tgid)) => {
            rec.victim_pid = pid as u32;
            rec.victim_tgid = tgid as u32;
            rec.flags |= flags::HAS_VICTIM_TGID;
        }
        _ => ok = false,
    }
    if kernel::read_comm(task, &mut rec.victim_comm).is_ok() {
        rec.flags |= flags::HAS_VICTIM_COMM;
    } else {
        ok = false;
    }
    ok &= fill_memcg(rec, task);
    mark_if_exiting(rec, task);
    if let Ok(signal) = read::<*const u8>(task, off!(task_signal))
        && let Ok(adj) = read::<i16>(signal, off!(signal_oom_score_adj))
    {
        rec.oom_score_adj = i32::from(adj);
        rec.flags |= flags::HAS_OOM_SCORE_ADJ;
    }
    // A victim already past exit_mm() has no mm: no sizes, but still a victim.
    if let Ok(mm) = read::<*const u8>(task, off!(task_mm))
        && !mm.is_null()
    {
        ok &= fill_mm(rec, mm);
    }
    if !ok {
        rec.flags |= flags::READ_ERROR;
        bump(OOM_READ_ERRORS);
        warn!(
            ctx,
            "mark_victim: a kernel read failed for victim pid {}", rec.victim_pid
        );
    }
    entry.submit(0);
    Ok(0)
}

#[inline(always)]
fn fill_mm(rec: &mut OomVictimRecord, mm: *const u8) -> bool {
    let kb_shift = kernel::page_shift().saturating_sub(10);
    let counters = (
        kernel::mm_counter(mm, off!(mm_anonpages)),
        kernel::mm_counter(mm, off!(mm_filepages)),
        kernel::mm_counter(mm, off!(mm_shmempages)),
        read::<u64>(mm, off!(mm_total_vm)),
    );
    let mut ok = true;
    if let (Ok(anon), Ok(file), Ok(shmem), Ok(total_vm)) = counters {
        rec.anon_rss_kb = anon << kb_shift;
        rec.file_rss_kb = file << kb_shift;
        rec.shmem_rss_kb = shmem << kb_shift;
        rec.total_vm_kb = total_vm << kb_shift;
        rec.flags |= flags::HAS_RSS;
    } else {
        ok = false;
    }
    if let Ok(swap) = kernel::mm_counter(mm, off!(mm_swapents)) {
        rec.swap_ents = swap;
        rec.flags |= flags::HAS_SWAP;
    }
    if let Ok(bytes) = read::<i64>(mm, off!(mm_pgtables_bytes)) {
        rec.pgtables_kb = (bytes.max(0) as u64) >> 10;
        rec.flags |= flags::HAS_PGTABLES;
    }
    ok
}

fn try_oom_victim_tp(ctx: &TracePointContext) -> Result<u32, u32> {
    let mut entry = start_record(flags::SRC_TRACEPOINT)?;
    // SAFETY: start_record initialised the entry.
    let rec = unsafe { entry.assume_init_mut() };
    let base = ctx.as_ptr() as *const u8;
    let mut ok = true;

    match read::<i32>(base, tp_off!(pid)) {
        Ok(pid) => rec.victim_pid = pid as u32,
        Err(_) => ok = false,
    }
    let comm = tp_off!(comm);
    // __data_loc: the low 16 bits are the string's offset in the record.
    if comm != ABSENT
        && let Ok(loc) = read::<u32>(base, comm)
        && unsafe {
            bpf_probe_read_kernel_str_bytes(base.wrapping_add((loc & 0xffff) as usize), &mut rec.victim_comm)
        }
        .is_ok()
    {
        rec.flags |= flags::HAS_VICTIM_COMM;
    }
    if let (Ok(total_vm), Ok(anon), Ok(file), Ok(shmem)) = (
        read::<u64>(base, tp_off!(total_vm)),
        read::<u64>(base, tp_off!(anon_rss)),
        read::<u64>(base, tp_off!(file_rss)),
        read::<u64>(base, tp_off!(shmem_rss)),
    ) {
        rec.total_vm_kb = total_vm;
        rec.anon_rss_kb = anon;
        rec.file_rss_kb = file;
        rec.shmem_rss_kb = shmem;
        rec.flags |= flags::HAS_RSS;
    }
    if let Ok(uid) = read::<u32>(base, tp_off!(uid)) {
        rec.victim_uid = uid;
        rec.flags |= flags::HAS_UID;
    }
    if let Ok(pgtables) = read::<u64>(base, tp_off!(pgtables)) {
        rec.pgtables_kb = pgtables;
        rec.flags |= flags::HAS_PGTABLES;
    }
    if let Ok(adj) = read::<i16>(base, tp_off!(oom_score_adj)) {
        rec.oom_score_adj = i32::from(adj);
        rec.flags |= flags::HAS_OOM_SCORE_ADJ;
    }
    // The record names the victim by pid (a thread id) only. When the victim is in the current
    // thread group (an allocator killed by its own charge, whichever of its threads charged),
    // its task_struct is at hand: the current task, or the group leader, which is what the OOM
    // killer picks in a process whose allocating thread is another one (a JVM, a Go runtime).
    let current = unsafe { bpf_get_current_task() } as *const u8;
    let task = if rec.victim_pid == rec.trigger_pid {
        Some(current)
    } else if rec.victim_pid == rec.trigger_tgid {
        read::<*const u8>(current, off!(task_group_leader))
            .ok()
            .filter(|t| !t.is_null())
    } else {
        None
    };
    if let Some(task) = task {
        rec.victim_tgid = rec.trigger_tgid;
        rec.flags |= flags::HAS_VICTIM_TGID;
        ok &= fill_memcg(rec, task);
        mark_if_exiting(rec, task);
    }
    if !ok {
        rec.flags |= flags::READ_ERROR;
        bump(OOM_READ_ERRORS);
        warn!(
            ctx,
            "mark_victim: a kernel read failed for victim pid {}", rec.victim_pid
        );
    }
    entry.submit(0);
    Ok(0)
}
