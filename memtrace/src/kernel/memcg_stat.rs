//! Where a memcg's statistics are, and which slot holds each item, from the running kernel's
//! BTF: the eBPF side reads them at the kill (`memtrace_common::memcg_stat`).
//!
//! `struct mem_cgroup` keeps the hierarchical statistics that `memory.stat` prints as:
//! - 5.10: `atomic_long_t vmstats[MEMCG_NR_STAT]`, indexed by item value;
//! - 5.13-6.1: `struct memcg_vmstats vmstats` with `long state[MEMCG_NR_STAT]`, by value;
//! - 6.2+: `struct memcg_vmstats *vmstats`; since 6.11 `state[]` holds only the items memcg
//!   counts (mm/memcontrol.c `memcg_node_stat_items[]` then `memcg_stat_items[]`), found
//!   through `memcg_stats_index()`. Those tables are not in BTF: the slot of an item is its
//!   place in [`MEMCG_NODE_ITEMS`] (every name the kernel's tables have had, in their order)
//!   filtered to the names the running kernel's `enum node_stat_item` has, followed by
//!   `enum memcg_stat_item`. The result is used only when its length is exactly
//!   `state[]`'s length in BTF; otherwise the breakdown is left out and the reason logged.

use btf_rs::Type;
use memtrace_common::{
    layout::ABSENT,
    memcg_stat::{MEMCG_STAT_ITEMS, MemcgStatLayout},
};

use super::btf::KernelBtf;

/// mm/memcontrol.c `memcg_node_stat_items[]` across 6.11..7.x, in table order: a name is in the
/// running kernel's table when its `enum node_stat_item` has it (the table's `#ifdef`s are the
/// enum's). `NR_VMALLOC` (7.x) and the `PGSTEAL_*`/`PGSCAN_*`/`PGREFILL` items (moved from
/// vm events in 7.x) appear where those kernels put them.
const MEMCG_NODE_ITEMS: &[&str] = &[
    "NR_INACTIVE_ANON",
    "NR_ACTIVE_ANON",
    "NR_INACTIVE_FILE",
    "NR_ACTIVE_FILE",
    "NR_UNEVICTABLE",
    "NR_SLAB_RECLAIMABLE_B",
    "NR_SLAB_UNRECLAIMABLE_B",
    "WORKINGSET_REFAULT_ANON",
    "WORKINGSET_REFAULT_FILE",
    "WORKINGSET_ACTIVATE_ANON",
    "WORKINGSET_ACTIVATE_FILE",
    "WORKINGSET_RESTORE_ANON",
    "WORKINGSET_RESTORE_FILE",
    "WORKINGSET_NODERECLAIM",
    "NR_ANON_MAPPED",
    "NR_FILE_MAPPED",
    "NR_FILE_PAGES",
    "NR_FILE_DIRTY",
    "NR_WRITEBACK",
    "NR_SHMEM",
    "NR_SHMEM_THPS",
    "NR_FILE_THPS",
    "NR_ANON_THPS",
    "NR_VMALLOC",
    "NR_KERNEL_STACK_KB",
    "NR_PAGETABLE",
    "NR_SECONDARY_PAGETABLE",
    "NR_SWAPCACHE",
    "PGPROMOTE_SUCCESS",
    "PGDEMOTE_KSWAPD",
    "PGDEMOTE_DIRECT",
    "PGDEMOTE_KHUGEPAGED",
    "PGDEMOTE_PROACTIVE",
    "PGSTEAL_KSWAPD",
    "PGSTEAL_DIRECT",
    "PGSTEAL_KHUGEPAGED",
    "PGSTEAL_PROACTIVE",
    "PGSTEAL_ANON",
    "PGSTEAL_FILE",
    "PGSCAN_KSWAPD",
    "PGSCAN_DIRECT",
    "PGSCAN_KHUGEPAGED",
    "PGSCAN_PROACTIVE",
    "PGSCAN_ANON",
    "PGSCAN_FILE",
    "PGREFILL",
    "NR_HUGETLB",
];

/// The kernel's name for each `memcg_stat::item`, in item order (`item` numbers them 0, 1, ...
/// and names each one's kernel item); the length is checked against their count.
const ITEM_NAMES: [&str; MEMCG_STAT_ITEMS] = [
    "NR_ANON_MAPPED",
    "NR_FILE_PAGES",
    "NR_SHMEM",
    "NR_ACTIVE_FILE",
    "NR_INACTIVE_FILE",
    "NR_SLAB_RECLAIMABLE_B",
    "NR_SLAB_UNRECLAIMABLE_B",
    "NR_KERNEL_STACK_KB",
    "NR_PAGETABLE",
    "MEMCG_SWAP",
    "MEMCG_KMEM",
    "NR_UNEVICTABLE",
];

/// An item's name -> its slot in `state[]`.
type SlotOf<'a> = Box<dyn Fn(&str) -> Option<u32> + 'a>;

/// Why the breakdown cannot be read on this kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemcgStatError {
    #[error("struct mem_cgroup has no vmstats member of a known shape")]
    NoVmstats,
    #[error("enum node_stat_item or memcg_stat_item is missing from BTF")]
    NoEnums,
    #[error(
        "memcg_vmstats.state[] has {btf} slots but memtrace's item tables give {ours}: this \
         kernel's mm/memcontrol.c tables differ from those memtrace knows"
    )]
    SlotCount { btf: usize, ours: usize },
}

/// The resolved layout, and the items this kernel does not count.
#[derive(Debug, Clone)]
pub struct StatResolved {
    pub layout: MemcgStatLayout,
    pub missing: Vec<&'static str>,
}

impl KernelBtf {
    /// `mem_cgroup.vmstats`: (offset, is a pointer, offset of `state[]` in it, its length).
    fn vmstats(&self) -> Option<(u32, bool, u32, usize)> {
        let (off, ty) = self.member("mem_cgroup", "vmstats")?;
        let (is_ptr, inner) = match ty {
            Type::Array(a) => return Some((off, false, 0, a.len())),
            Type::Struct(s) => (false, s),
            Type::Ptr(p) => match self.strip(self.btf.resolve_chained_type(&p).ok()?)? {
                Type::Struct(s) => (true, s),
                _ => return None,
            },
            _ => return None,
        };
        let (state, ty) = self.find_member(&inner, "state", 0)?;
        match self.strip(ty)? {
            Type::Array(a) => Some((off, is_ptr, state, a.len())),
            _ => None,
        }
    }

    /// Resolves [`MemcgStatLayout`] for pages of `1 << page_shift` bytes.
    pub fn memcg_stat_layout(&self, page_shift: u32) -> Result<StatResolved, MemcgStatError> {
        let (vmstats, is_ptr, state, len) = self.vmstats().ok_or(MemcgStatError::NoVmstats)?;
        let node = self.enum_members("node_stat_item");
        let memcg = self.enum_members("memcg_stat_item");
        let value =
            |list: &[(String, u32)], name: &str| list.iter().find(|(n, _)| n == name).map(|&(_, v)| v);
        let (Some(swap), Some(nr_stat)) = (value(&memcg, "MEMCG_SWAP"), value(&memcg, "MEMCG_NR_STAT"))
        else {
            return Err(MemcgStatError::NoEnums);
        };
        let slot: SlotOf<'_> = if len == nr_stat as usize {
            // Indexed by item value.
            Box::new(|name| value(&node, name).or_else(|| value(&memcg, name)))
        } else {
            let node_slots: Vec<&str> = MEMCG_NODE_ITEMS
                .iter()
                .copied()
                .filter(|n| value(&node, n).is_some())
                .collect();
            let mut memcg_items: Vec<&(String, u32)> = memcg
                .iter()
                .filter(|(_, v)| (swap..nr_stat).contains(v))
                .collect();
            memcg_items.sort_by_key(|(_, v)| *v);
            let ours = node_slots.len() + memcg_items.len();
            if ours != len {
                return Err(MemcgStatError::SlotCount { btf: len, ours });
            }
            let memcg_names: Vec<String> = memcg_items.iter().map(|(n, _)| n.clone()).collect();
            Box::new(move |name| {
                let at = node_slots.iter().position(|n| *n == name).or_else(|| {
                    memcg_names
                        .iter()
                        .position(|n| n == name)
                        .map(|p| p + node_slots.len())
                })?;
                u32::try_from(at).ok()
            })
        };
        let mut layout = MemcgStatLayout {
            vmstats,
            vmstats_is_ptr: u32::from(is_ptr),
            state,
            state_len: u32::try_from(len).unwrap_or(0),
            ..MemcgStatLayout::absent()
        };
        let mut missing = Vec::new();
        for (i, name) in ITEM_NAMES.iter().enumerate() {
            layout.index[i] = slot(name).unwrap_or_else(|| {
                missing.push(*name);
                ABSENT
            });
            layout.shift[i] = if name.ends_with("_B") {
                page_shift
            } else if name.ends_with("_KB") {
                page_shift.saturating_sub(10)
            } else {
                0
            };
        }
        Ok(StatResolved { layout, missing })
    }
}

#[cfg(test)]
mod tests {
    use memtrace_common::memcg_stat::item;

    use super::*;

    /// `ITEM_NAMES` is indexed by `item`: its ends, and the items whose unit the name carries.
    #[test]
    fn item_names_follow_item_numbers() {
        let pinned = [
            (item::ANON, "NR_ANON_MAPPED"),
            (item::SLAB_RECLAIMABLE, "NR_SLAB_RECLAIMABLE_B"),
            (item::KERNEL_STACK, "NR_KERNEL_STACK_KB"),
            (item::UNEVICTABLE, "NR_UNEVICTABLE"),
        ];
        for (i, name) in pinned {
            assert_eq!(ITEM_NAMES[i], name);
        }
    }

    /// This machine's kernel: the table memtrace derives has exactly as many slots as BTF says,
    /// and the items sit where mm/memcontrol.c puts them (6.11+ compact order).
    #[test]
    fn resolves_running_kernel() {
        let Ok(btf) = KernelBtf::from_sys() else {
            eprintln!("SKIPPED: no kernel BTF on this machine");
            return;
        };
        let r = btf.memcg_stat_layout(12).expect("memcg stat layout");
        let l = r.layout;
        assert_ne!(l.vmstats, ABSENT);
        assert!(r.missing.is_empty(), "missing: {:?}", r.missing);
        assert_eq!(l.shift[item::SLAB_RECLAIMABLE], 12, "bytes to pages");
        assert_eq!(l.shift[item::KERNEL_STACK], 2, "kB to pages");
        assert_eq!(l.shift[item::ANON], 0);
        if l.state_len < 51 {
            // Compact: the LRU items lead memcg_node_stat_items[].
            assert_eq!(l.index[item::INACTIVE_FILE], 2);
            assert_eq!(l.index[item::ACTIVE_FILE], 3);
            assert_eq!(l.index[item::ANON], 14);
            assert_eq!(l.index[item::FILE], 16);
            assert_eq!(l.index[item::SHMEM], 19);
        }
        assert!(l.index.iter().all(|&i| i < l.state_len));
    }
}
