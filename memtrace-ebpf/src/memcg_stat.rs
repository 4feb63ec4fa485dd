//! Reads a memcg's memory breakdown from its own statistics (`memcg->vmstats->state[]`), at
//! slots userspace resolved from BTF (`memtrace_common::memcg_stat`). These are the counters
//! `memory.stat` prints: hierarchical, and as fresh as the last rstat flush (README "At the
//! kill").

use memtrace_common::{
    layout::ABSENT,
    memcg_stat::{MEMCG_STAT_ITEMS, MemcgStatLayout},
    oom::STAT_ABSENT,
};

use crate::kernel::{off, read};

#[unsafe(no_mangle)]
static MEMCG_STAT_LAYOUT: MemcgStatLayout = MemcgStatLayout::absent();

macro_rules! stat_off {
    ($($field:tt)+) => {
        unsafe { core::ptr::read_volatile(&raw const MEMCG_STAT_LAYOUT.$($field)+) }
    };
}

/// Fills `out` (pages, [`STAT_ABSENT`] for what the kernel does not count) from `memcg`.
/// False when the statistics could not be found at all.
#[inline(always)]
pub fn read_stats(memcg: *const u8, out: &mut [u32; MEMCG_STAT_ITEMS]) -> bool {
    let vmstats = stat_off!(vmstats);
    if memcg.is_null() || vmstats == ABSENT {
        return false;
    }
    let base = if stat_off!(vmstats_is_ptr) != 0 {
        match read::<*const u8>(memcg, vmstats) {
            Ok(p) if !p.is_null() => p,
            _ => return false,
        }
    } else {
        memcg.wrapping_add(vmstats as usize)
    };
    let state = base.wrapping_add(stat_off!(state) as usize);
    let len = stat_off!(state_len);
    let mut any = false;
    // One bounded index for three arrays: the form the verifier is known to accept here.
    #[allow(clippy::needless_range_loop)]
    for i in 0..MEMCG_STAT_ITEMS {
        let idx = stat_off!(index[i]);
        let shift = stat_off!(shift[i]) & 63;
        out[i] = STAT_ABSENT;
        if idx == ABSENT || idx >= len || idx >= 4096 {
            continue;
        }
        if let Ok(v) = read::<i64>(state, idx * 8) {
            // Per-CPU batching can leave a flushed total briefly negative: clamp at 0.
            let pages = (v.max(0) as u64) >> shift;
            out[i] = if pages >= u64::from(STAT_ABSENT) {
                STAT_ABSENT - 1
            } else {
                pages as u32
            };
            any = true;
        }
    }
    any
}

/// The memcg `depth` levels above `memcg`, following `memory.parent` (the page counter's
/// parent is the parent memcg's `memory` counter: mm/memcontrol.c mem_cgroup_css_alloc).
#[inline(always)]
pub fn ancestor(memcg: *const u8, depth: u32) -> Option<*const u8> {
    let counter_off = off!(memcg_memory);
    let parent_off = off!(page_counter_parent);
    if counter_off == ABSENT || parent_off == ABSENT {
        return None;
    }
    let mut counter = memcg.wrapping_add(counter_off as usize);
    // A constant bound with an equality exit: a loop bounded by `depth` itself is one the
    // verifier cannot bound.
    for level in 0..12u32 {
        if level == depth {
            return Some(counter.wrapping_sub(counter_off as usize));
        }
        counter = read(counter, parent_off).ok()?;
        if counter.is_null() {
            return None;
        }
    }
    None
}
