//! A cgroup's memory breakdown at the moment of the kill, from the counters the eBPF side read
//! in the kernel (`kernel::records::StatPages`), in bytes.

use memtrace_common::memcg_stat::item;
use serde::Serialize;

use crate::kernel::records::StatPages;

/// What filled a cgroup, at the kill. `None`: the running kernel does not count the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Breakdown {
    pub anon: Option<u64>,
    /// Page cache, shmem included (memory.stat `file`, v1 `cache`).
    pub file: Option<u64>,
    pub shmem: Option<u64>,
    pub active_file: Option<u64>,
    pub inactive_file: Option<u64>,
    pub unevictable: Option<u64>,
    pub slab_reclaimable: Option<u64>,
    pub slab_unreclaimable: Option<u64>,
    pub kernel_stack: Option<u64>,
    pub pagetables: Option<u64>,
    pub swap: Option<u64>,
    /// All kernel memory charged (memory.stat `kernel`); where the kernel lacks that counter,
    /// slab + stacks + page tables.
    pub kernel: Option<u64>,
}

impl Breakdown {
    /// The breakdown read at the kill, if it was flushed: a memcg's `state[]` is brought up to
    /// date by rstat flushes (mm/memcontrol.c: every 2 s, and on reads of memory.stat), so a
    /// cgroup created and filled since the last flush reads all zero at its OOM, which no cgroup
    /// at its limit really is. Then the post-kill files stand in (a flaky `filled_by: unknown`
    /// in tests/tests/why.rs, about 1 run in 8, came from using those zeros).
    pub fn at_kill(p: &StatPages, page_size: u64) -> Option<Self> {
        let b = Self::from_pages(p, page_size);
        let counted = [b.anon, b.file, b.kernel];
        let flushed = counted.iter().any(|v| v.is_some_and(|v| v > 0)) || counted.iter().all(Option::is_none);
        flushed.then_some(b)
    }

    pub fn from_pages(p: &StatPages, page_size: u64) -> Self {
        let b = |i: usize| p.get(i).map(|v| v.saturating_mul(page_size));
        let parts = [
            b(item::SLAB_RECLAIMABLE),
            b(item::SLAB_UNRECLAIMABLE),
            b(item::KERNEL_STACK),
            b(item::PAGETABLES),
        ];
        let summed = parts
            .iter()
            .any(Option::is_some)
            .then(|| parts.iter().flatten().fold(0u64, |a, v| a.saturating_add(*v)));
        Self {
            anon: b(item::ANON),
            file: b(item::FILE),
            shmem: b(item::SHMEM),
            active_file: b(item::ACTIVE_FILE),
            inactive_file: b(item::INACTIVE_FILE),
            unevictable: b(item::UNEVICTABLE),
            slab_reclaimable: parts[0],
            slab_unreclaimable: parts[1],
            kernel_stack: parts[2],
            pagetables: parts[3],
            swap: b(item::SWAP),
            kernel: b(item::KMEM).or(summed),
        }
    }

    /// `(json key suffix, value)` for every field, in a fixed order.
    pub fn fields(&self) -> [(&'static str, Option<u64>); 12] {
        [
            ("anon_bytes", self.anon),
            ("file_bytes", self.file),
            ("shmem_bytes", self.shmem),
            ("active_file_bytes", self.active_file),
            ("inactive_file_bytes", self.inactive_file),
            ("unevictable_bytes", self.unevictable),
            ("slab_reclaimable_bytes", self.slab_reclaimable),
            ("slab_unreclaimable_bytes", self.slab_unreclaimable),
            ("kernel_stack_bytes", self.kernel_stack),
            ("pagetables_bytes", self.pagetables),
            ("swap_bytes", self.swap),
            ("kernel_bytes", self.kernel),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_zero_at_the_kill_is_not_flushed() {
        let mut p = StatPages::default();
        for i in [item::ANON, item::FILE, item::KMEM] {
            p.set(i, Some(0));
        }
        assert_eq!(Breakdown::at_kill(&p, 4096), None);
        p.set(item::ANON, Some(1));
        assert!(Breakdown::at_kill(&p, 4096).is_some());
        // Nothing counted by this kernel: kept, each field says absent itself.
        assert!(Breakdown::at_kill(&StatPages::default(), 4096).is_some());
    }

    #[test]
    fn pages_to_bytes_and_kernel_fallback() {
        let mut p = StatPages::default();
        p.set(item::ANON, Some(10));
        p.set(item::SLAB_RECLAIMABLE, Some(1));
        p.set(item::PAGETABLES, Some(2));
        let b = Breakdown::from_pages(&p, 4096);
        assert_eq!(b.anon, Some(40_960));
        assert_eq!(b.file, None, "not counted is not zero");
        assert_eq!(b.kernel, Some(3 * 4096), "slab + page tables without MEMCG_KMEM");
        p.set(item::KMEM, Some(5));
        assert_eq!(Breakdown::from_pages(&p, 4096).kernel, Some(5 * 4096));
        p.set(item::ANON, Some(u32::MAX - 1));
        assert_eq!(
            Breakdown::from_pages(&p, 1 << 40).anon,
            Some(u64::MAX),
            "saturates"
        );
    }
}
