//! The memory breakdown of a memcg, read in the kernel at the kill from the memcg's own
//! statistics (`memcg->vmstats->state[]`, what `memory.stat` prints), for the victim's cgroup
//! and for the cgroup that hit its limit.
//!
//! The statistics array is indexed differently across kernels: by `enum node_stat_item` /
//! `enum memcg_stat_item` value up to 6.10, by a compact index (mm/memcontrol.c
//! `memcg_stats_index()`) since. Userspace resolves each item's slot and the array's place from
//! the running kernel's BTF and hands them over as [`MemcgStatLayout`].

use crate::layout::ABSENT;

/// Items read, in record order.
pub mod item {
    /// `NR_ANON_MAPPED` (memory.stat `anon`, v1 `rss`).
    pub const ANON: usize = 0;
    /// `NR_FILE_PAGES` (`file`, v1 `cache`; includes shmem).
    pub const FILE: usize = 1;
    /// `NR_SHMEM` (`shmem`).
    pub const SHMEM: usize = 2;
    /// `NR_ACTIVE_FILE`, `NR_INACTIVE_FILE`.
    pub const ACTIVE_FILE: usize = 3;
    pub const INACTIVE_FILE: usize = 4;
    /// `NR_SLAB_RECLAIMABLE_B`, `NR_SLAB_UNRECLAIMABLE_B` (bytes in the kernel).
    pub const SLAB_RECLAIMABLE: usize = 5;
    pub const SLAB_UNRECLAIMABLE: usize = 6;
    /// `NR_KERNEL_STACK_KB` (kB in the kernel).
    pub const KERNEL_STACK: usize = 7;
    /// `NR_PAGETABLE`.
    pub const PAGETABLES: usize = 8;
    /// `MEMCG_SWAP`: swap entries charged to the memcg.
    pub const SWAP: usize = 9;
    /// `MEMCG_KMEM`: all kernel memory charged (memory.stat `kernel`, v2).
    pub const KMEM: usize = 10;
    /// `NR_ACTIVE_ANON` + `NR_INACTIVE_ANON` are not read; `NR_UNEVICTABLE` is (mlocked pages).
    pub const UNEVICTABLE: usize = 11;
}

/// Number of items in [`item`].
pub const MEMCG_STAT_ITEMS: usize = 12;

/// Where the statistics live, from BTF. Every value is in pages once read: `shift[i]` is the
/// right shift from the kernel's unit (bytes: PAGE_SHIFT, kB: PAGE_SHIFT - 10, pages: 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemcgStatLayout {
    /// Byte offset of `mem_cgroup.vmstats`: a pointer to `struct memcg_vmstats` (6.2+), the
    /// struct itself (5.13-6.1), or an `atomic_long_t` array (5.10). [`ABSENT`]: not readable.
    pub vmstats: u32,
    /// 1 when `vmstats` is a pointer to follow.
    pub vmstats_is_ptr: u32,
    /// Offset of the `long state[]` array from the (followed) `vmstats`.
    pub state: u32,
    /// Length of `state[]`: no slot at or past it is read.
    pub state_len: u32,
    /// The slot of each item in `state[]` ([`ABSENT`]: the kernel does not count it).
    pub index: [u32; MEMCG_STAT_ITEMS],
    pub shift: [u32; MEMCG_STAT_ITEMS],
}

impl MemcgStatLayout {
    pub const fn absent() -> Self {
        Self {
            vmstats: ABSENT,
            vmstats_is_ptr: 0,
            state: 0,
            state_len: 0,
            index: [ABSENT; MEMCG_STAT_ITEMS],
            shift: [0; MEMCG_STAT_ITEMS],
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(C)] of u32 only: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::MemcgStatLayout {}
}
