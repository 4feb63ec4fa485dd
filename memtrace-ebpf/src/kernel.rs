//! Reads of kernel structs at offsets that userspace resolved from BTF (see
//! `memtrace_common::layout`). Every read goes through `bpf_probe_read_kernel`, so a bad pointer
//! is an error value, never a fault.

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_buf};
use memtrace_common::{
    layout::{ABSENT, KernelLayout},
    oom::COMM_LEN,
};

#[unsafe(no_mangle)]
pub static KERNEL_LAYOUT: KernelLayout = KernelLayout::absent();

/// log2 of the page size; patched by userspace.
#[unsafe(no_mangle)]
static PAGE_SHIFT: u32 = 12;

/// One field of the layout. Volatile, so that the compiler does not fold the placeholder value.
macro_rules! off {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const $crate::kernel::KERNEL_LAYOUT.$field) }
    };
}
pub(crate) use off;

#[inline(always)]
pub fn page_shift() -> u32 {
    unsafe { core::ptr::read_volatile(&raw const PAGE_SHIFT) }
}

/// Reads a `T` at `base + offset`.
#[inline(always)]
pub fn read<T>(base: *const u8, offset: u32) -> Result<T, i64> {
    if base.is_null() || offset == ABSENT {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read_kernel validates the address.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize).cast::<T>()) }.map_err(i64::from)
}

#[inline(always)]
pub fn read_comm(task: *const u8, out: &mut [u8; COMM_LEN]) -> Result<(), i64> {
    let offset = off!(task_comm);
    if task.is_null() || offset == ABSENT {
        return Err(-1);
    }
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel_buf(task.wrapping_add(offset as usize), out) }.map_err(i64::from)
}

/// The memory cgroup of a task: `task->cgroups->subsys[memory_cgrp_id]`. The css is the first
/// member of `struct mem_cgroup`, so this pointer is also the `mem_cgroup *`.
#[inline(always)]
pub fn task_memcg(task: *const u8) -> Result<*const u8, i64> {
    let subsys = off!(cset_subsys);
    let id = off!(memory_cgrp_id);
    if subsys == ABSENT || id == ABSENT || id >= 16 {
        return Err(-1);
    }
    let cset: *const u8 = read(task, off!(task_cgroups))?;
    let css: *const u8 = read(cset, subsys + id * 8)?;
    if css.is_null() { Err(-1) } else { Ok(css) }
}

/// `css->cgroup->kn->id`: the cgroup id userspace sees as the directory's inode number.
#[inline(always)]
pub fn css_cgroup_id(css: *const u8) -> Result<u64, i64> {
    let cgroup: *const u8 = read(css, off!(css_cgroup))?;
    let kn: *const u8 = read(cgroup, off!(cgroup_kn))?;
    read(kn, off!(kn_id))
}

/// `memcg->memory.usage` and `memcg->memory.max`, in pages.
#[inline(always)]
pub fn memcg_usage_limit(memcg: *const u8) -> Result<(u64, u64), i64> {
    let counter = off!(memcg_memory);
    let usage_off = off!(page_counter_usage);
    let max_off = off!(page_counter_max);
    if counter == ABSENT || usage_off == ABSENT || max_off == ABSENT {
        return Err(-1);
    }
    let usage: i64 = read(memcg, counter + usage_off)?;
    let max: u64 = read(memcg, counter + max_off)?;
    Ok((usage.max(0) as u64, max))
}

/// How close to its limit a memcg must be to count as the one that hit it: try_charge fails
/// when usage + the charge exceeds max, and a charge is at most a batch (MEMCG_CHARGE_BATCH =
/// 64 pages) or a THP (512 pages on x86_64).
const AT_LIMIT_SLACK_PAGES: u64 = 512 + 64;
/// Deepest hierarchy walked; deeper ones are reported as unknown.
const MAX_DEPTH: u32 = 12;

/// The memcg that hit its limit, as [`oom_memcg`] found it.
pub struct AtLimit {
    /// Cgroup id, usage and max (pages) of the counter at its limit, levels above the start.
    pub id: u64,
    pub usage: u64,
    pub max: u64,
    pub depth: u32,
    /// The counter is `memsw` (cgroup v1 memory+swap), not `memory`.
    pub memsw: bool,
}

/// The memcg that hit its limit. cgroup v1 first: try_charge_memcg (mm/memcontrol.c) charges
/// `memsw` at every level before `memory`, so a memsw counter at its limit is where a failed
/// charge stopped; then the `memory` counters. Returns what was found and whether the memsw
/// counters were walked (the layout has them on v1 only).
#[inline(always)]
pub fn oom_memcg(memcg: *const u8) -> (Option<AtLimit>, bool) {
    let memsw = off!(memcg_memsw);
    let walked = memsw != ABSENT;
    if walked && let Some(found) = first_at_limit(memcg, memsw) {
        return (Some(AtLimit { memsw: true, ..found }), true);
    }
    (first_at_limit(memcg, off!(memcg_memory)), walked)
}

/// Walks the `page_counter` at `counter_off` in `memcg` up its `parent` links to the first
/// whose usage is within [`AT_LIMIT_SLACK_PAGES`] of its max.
#[inline(always)]
fn first_at_limit(memcg: *const u8, counter_off: u32) -> Option<AtLimit> {
    let usage_off = off!(page_counter_usage);
    let max_off = off!(page_counter_max);
    let parent_off = off!(page_counter_parent);
    if counter_off == ABSENT || usage_off == ABSENT || max_off == ABSENT || parent_off == ABSENT {
        return None;
    }
    let mut counter = memcg.wrapping_add(counter_off as usize);
    for depth in 0..MAX_DEPTH {
        if counter.is_null() {
            return None;
        }
        let usage: i64 = read(counter, usage_off).ok()?;
        let max: u64 = read(counter, max_off).ok()?;
        let usage = usage.max(0) as u64;
        if usage.saturating_add(AT_LIMIT_SLACK_PAGES) >= max {
            // container_of(counter, struct mem_cgroup, <counter>); css is at offset 0.
            let css = counter.wrapping_sub(counter_off as usize);
            let id = css_cgroup_id(css).ok()?;
            return Some(AtLimit {
                id,
                usage,
                max,
                depth,
                memsw: false,
            });
        }
        counter = read(counter, parent_off).ok()?;
    }
    None
}

/// Did the OOM killer count a kill in `memcg` since its last victim was marked? The counter is
/// raised before mark_oom_victim() in __oom_kill_process(); the task_will_free_mem() paths
/// mark a victim without a kill and leave it alone. `None` when the kernel lacks the counter.
/// Keyed by cgroup id, never by the `mem_cgroup *`: a freed memcg's memory is reused by the slab
/// for a new cgroup (seen: one address for several incarnations of a re-created cgroup), whose
/// counter starts again from zero and would compare against the dead one's.
#[inline(always)]
pub fn memcg_counted_a_kill(memcg: *const u8) -> Option<bool> {
    let off = off!(memcg_oom_kills);
    if off == ABSENT {
        return None;
    }
    let now: i64 = read(memcg, off).ok()?;
    let now = now.max(0) as u64;
    let key = css_cgroup_id(memcg).ok()?;
    // SAFETY: a map value read once.
    let before = unsafe { crate::maps::OOM_KILLS_SEEN.get(&key) }.copied();
    let _ = crate::maps::OOM_KILLS_SEEN.insert(&key, &now, 0);
    // First sight of this cgroup: a counter still at zero has counted no kill; any other value
    // says nothing about this mark, so it is taken as a kill.
    Some(match before {
        Some(b) => now > b,
        None => now > 0,
    })
}

/// PF_EXITING (include/linux/sched.h): the task is already in do_exit(). SIGNAL_GROUP_EXIT is
/// no use here: __oom_kill_process() sends SIGKILL, which sets it, before mark_oom_victim().
#[inline(always)]
pub fn task_exiting(task: *const u8) -> bool {
    const PF_EXITING: u32 = 0x4;
    read::<u32>(task, off!(task_flags)).is_ok_and(|pf| pf & PF_EXITING != 0)
}

/// Who `task`'s process is, beyond its tgid: the group leader's `start_time` and the `mm`
/// (exec replaces it); 0 for what the layout lacks. A pid reused, or a process that exec'd,
/// reads differently, so userspace records its mappings again.
#[inline(always)]
pub fn process_identity(task: *const u8) -> (u64, u64) {
    let leader = read::<*const u8>(task, off!(task_group_leader)).unwrap_or(task);
    let start = read::<u64>(leader, off!(task_start_time)).unwrap_or(0);
    let mm = read::<u64>(task, off!(task_mm)).unwrap_or(0);
    (start, mm)
}

/// `task_uid(task)`: `task->real_cred->uid.val` (include/linux/cred.h), what the 6.8+
/// mark_victim tracepoint passes as its `uid` (from_kuid in the initial namespace, the identity).
#[inline(always)]
pub fn task_uid(task: *const u8) -> Result<u32, i64> {
    let cred: *const u8 = read(task, off!(task_real_cred))?;
    read(cred, off!(cred_uid))
}

/// `get_mm_counter(mm, member)`: the approximate count, as the kernel's own tracepoint reads it
/// (`percpu_counter_read_positive` since 6.2, an `atomic_long_t` before).
#[inline(always)]
pub fn mm_counter(mm: *const u8, member: u32) -> Result<u64, i64> {
    let base = off!(mm_rss_stat);
    let stride = off!(mm_rss_stride);
    let count = off!(mm_rss_count);
    if base == ABSENT || stride == ABSENT || count == ABSENT || member >= 8 {
        return Err(-1);
    }
    let value: i64 = read(mm, base + member * stride + count)?;
    Ok(value.max(0) as u64)
}
