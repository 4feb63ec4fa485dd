//! `mark_victim`: called once for every task the OOM killer kills, in the context of the task
//! that triggered the OOM (mm/oom_kill.c: `mark_oom_victim()` -> `trace_mark_victim()`).
//!
//! Variants, chosen by userspace: `tp_btf` and `raw_tp` get the victim's `task_struct *`
//! (TP_PROTO(struct task_struct *task, uid_t uid), since 6.8) and read everything from it.
//! The plain tracepoint gets the record the kernel formats (pid only before 6.8: 5.10 has
//! TP_PROTO(int pid)) and can only see the trigger's own task. There, fentry or kprobe on
//! `mark_oom_victim(struct task_struct *tsk)`, the function that fires the tracepoint, hands the
//! task to the tracepoint program through [`VICTIM_TASKS`]. The tracepoint still decides: the
//! function returns early, without the tracepoint, for a task already marked (TIF_MEMDIE set;
//! a group kill calls it twice on the chosen victim), and a call site the compiler inlined
//! (the function is static) leaves the tracepoint with its pid-only record, never without one.
use aya_ebpf::{
    EbpfContext,
    bindings::BPF_F_REUSE_STACKID,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_boot_ns,
        bpf_probe_read_kernel_str_bytes,
    },
    macros::{btf_tracepoint, fentry, kprobe, map, raw_tracepoint, tracepoint},
    maps::LruHashMap,
    programs::{
        BtfTracePointContext, FEntryContext, ProbeContext, RawTracePointContext, TracePointContext,
        tracing::StackIdContext,
    },
};
use aya_log_ebpf::warn;
use memtrace_common::{
    counters::{OOM_READ_ERRORS, OOM_RINGBUF_FULL, OOM_SEEN},
    layout::{ABSENT, MarkVictimTpLayout},
    oom::{OomVictimRecord, flags},
};

use crate::{
    kernel::{self, off, read},
    maps::{OOM_EVENTS, OOM_STACKS, OOM_STACKS_WANTED, bump},
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
    match try_oom_victim_task(&ctx, ctx.arg(0), Some(ctx.arg(1)), flags::SRC_TP_BTF) {
        Ok(ret) | Err(ret) => ret,
    }
}

#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn oom_victim_raw(ctx: RawTracePointContext) -> u32 {
    match try_oom_victim_task(&ctx, ctx.arg(0), Some(ctx.arg(1)), flags::SRC_RAW_TP) {
        Ok(ret) | Err(ret) => ret,
    }
}

/// The task `mark_oom_victim()` was called with, by the calling thread (its tid): the
/// tracepoint it fires next, in the same thread, takes it from here.
#[derive(Clone, Copy)]
pub struct StashedVictim {
    task: u64,
    /// `flags::SRC_FENTRY` or `flags::SRC_KPROBE`: the record says which variant gave the task.
    src: u32,
    _pad: u32,
}

/// OOM kills are serialised by oom_lock: a few entries suffice; LRU, so a call whose
/// tracepoint never came (an early return) is forgotten.
#[map]
static VICTIM_TASKS: LruHashMap<u32, StashedVictim> = LruHashMap::with_max_entries(256, 0);

#[inline(always)]
fn stash_victim(task: *const u8, src: u32) -> u32 {
    let tid = bpf_get_current_pid_tgid() as u32;
    let v = StashedVictim {
        task: task as u64,
        src,
        _pad: 0,
    };
    let _ = VICTIM_TASKS.insert(&tid, &v, 0);
    0
}

/// `mark_oom_victim(struct task_struct *tsk)` (mm/oom_kill.c), which fires the tracepoint:
/// the victim's task on kernels whose tracepoint passes its pid only. Emits nothing itself.
#[fentry(function = "mark_oom_victim")]
pub fn victim_fentry(ctx: FEntryContext) -> u32 {
    stash_victim(ctx.arg(0), flags::SRC_FENTRY)
}

#[kprobe]
pub fn victim_kprobe(ctx: ProbeContext) -> u32 {
    match ctx.arg::<*const u8>(0) {
        Some(task) => stash_victim(task, flags::SRC_KPROBE),
        None => 0,
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
fn start_record<C: StackIdContext>(
    ctx: &C,
    src: u32,
) -> Result<aya_ebpf::maps::ring_buf::RingBufEntry<OomVictimRecord>, u32> {
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
    // The kernel stack of the OOM, for userspace to tell a memcg OOM from a global one where
    // oom_kill_process cannot be hooked. REUSE: a bucket collision replaces an older, other
    // stack (most likely read already) rather than losing this one.
    if OOM_STACKS_WANTED.get(0).is_some_and(|w| *w != 0) {
        rec.kernel_stack = ctx
            .get_stackid(&OOM_STACKS, u64::from(BPF_F_REUSE_STACKID))
            .map_or(-1, |id| id as i32);
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
    let (found, memsw_walked) = kernel::oom_memcg(memcg);
    if memsw_walked {
        rec.flags |= flags::MEMSW_WALKED;
    }
    if let Some(at) = found {
        rec.oom_memcg_id = at.id;
        rec.oom_memcg_usage_pages = at.usage;
        rec.oom_memcg_limit_pages = at.max;
        rec.oom_memcg_depth = at.depth;
        rec.flags |= flags::HAS_OOM_MEMCG;
        if at.memsw {
            rec.flags |= flags::OOM_MEMCG_MEMSW;
        }
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

/// A record from the victim's `task_struct` (tp_btf and raw_tp).
#[inline(always)]
fn try_oom_victim_task<C: StackIdContext>(
    ctx: &C,
    task: *const u8,
    uid: Option<u32>,
    src: u32,
) -> Result<u32, u32> {
    let mut entry = start_record(ctx, src)?;
    // SAFETY: start_record initialised the entry.
    let rec = unsafe { entry.assume_init_mut() };
    if !fill_from_task(rec, task, uid) {
        read_failed(ctx, rec);
    }
    entry.submit(0);
    Ok(0)
}

#[inline(always)]
fn read_failed<C: EbpfContext>(ctx: &C, rec: &mut OomVictimRecord) {
    rec.flags |= flags::READ_ERROR;
    bump(OOM_READ_ERRORS);
    warn!(
        ctx,
        "mark_victim: a kernel read failed for victim pid {}", rec.victim_pid
    );
}

/// Everything the victim's `task_struct` gives; false when a read failed. `uid`: the
/// tracepoint's own argument; without it, what the tracepoint would pass, `task_uid(tsk)`.
#[inline(always)]
fn fill_from_task(rec: &mut OomVictimRecord, task: *const u8, uid: Option<u32>) -> bool {
    let mut ok = true;
    match uid.map_or_else(|| kernel::task_uid(task), Ok) {
        Ok(uid) => {
            rec.victim_uid = uid;
            rec.flags |= flags::HAS_UID;
        }
        Err(_) => ok = false,
    }
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
    ok
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
    let mut entry = start_record(ctx, flags::SRC_TRACEPOINT)?;
    // SAFETY: start_record initialised the entry.
    let rec = unsafe { entry.assume_init_mut() };
    let base = ctx.as_ptr() as *const u8;
    let mut ok = true;

    match read::<i32>(base, tp_off!(pid)) {
        Ok(pid) => rec.victim_pid = pid as u32,
        Err(_) => ok = false,
    }
    // The task mark_oom_victim() was called with, when fentry/kprobe on it is attached and it
    // is this record's victim: the whole record from the task, as tp_btf would give it.
    let tid = rec.trigger_pid;
    // SAFETY: the value is copied out before the entry is removed.
    if let Some(v) = unsafe { VICTIM_TASKS.get(&tid) }.copied() {
        let _ = VICTIM_TASKS.remove(&tid);
        let task = v.task as *const u8;
        if ok && read::<i32>(task, off!(task_pid)).is_ok_and(|p| p as u32 == rec.victim_pid) {
            rec.flags = (rec.flags & !flags::SRC_TRACEPOINT) | v.src;
            if !fill_from_task(rec, task, None) {
                read_failed(ctx, rec);
            }
            entry.submit(0);
            return Ok(0);
        }
    }
    let comm = tp_off!(comm);
    fill_from_tp_fields(rec, base, comm);
    let task = task_at_hand(rec);
    // Without BTF (no offsets) the task gives nothing: the record's own fields stand alone,
    // without a READ_ERROR for reads that were never possible.
    if let Some(task) = task
        && off!(task_pid) != ABSENT
    {
        if comm == ABSENT {
            // A pid-only record (5.10): the task at hand gives everything else too.
            ok &= fill_from_task(rec, task, None);
        } else {
            rec.victim_tgid = rec.trigger_tgid;
            rec.flags |= flags::HAS_VICTIM_TGID;
            ok &= fill_memcg(rec, task);
            mark_if_exiting(rec, task);
        }
    }
    if !ok {
        read_failed(ctx, rec);
    }
    entry.submit(0);
    Ok(0)
}

/// The fields the `oom:mark_victim` record carries beyond the pid (where the kernel's record
/// has them; a pid-only record leaves their offsets ABSENT and these reads fail).
/// `comm`: the comm field's offset.
#[inline(always)]
fn fill_from_tp_fields(rec: &mut OomVictimRecord, base: *const u8, comm: u32) {
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
}

/// The victim's task_struct, where it is at hand. The record names the victim by pid (a thread
/// id) only. When the victim is in the current thread group (an allocator killed by its own
/// charge, whichever of its threads charged), it is the current task, or the group leader,
/// which is what the OOM killer picks in a process whose allocating thread is another one (a
/// JVM, a Go runtime).
#[inline(always)]
fn task_at_hand(rec: &OomVictimRecord) -> Option<*const u8> {
    let current = unsafe { bpf_get_current_task() } as *const u8;
    if rec.victim_pid == rec.trigger_pid {
        Some(current)
    } else if rec.victim_pid == rec.trigger_tgid {
        read::<*const u8>(current, off!(task_group_leader))
            .ok()
            .filter(|t| !t.is_null())
    } else {
        None
    }
}
