//! Memcg or global OOM, from the kernel's own call stack at the kill: the victim hook fires in
//! the task that ran out (mm/oom_kill.c `mark_oom_victim()`), inside either the memcg OOM
//! (`mem_cgroup_out_of_memory()` and its callers in mm/memcontrol.c) or the page allocator's
//! (`__alloc_pages_may_oom()` in mm/page_alloc.c, or sysrq-f). The eBPF side saves that stack
//! (`OOM_STACKS`, its id in the record); here it is read against the text ranges of those
//! functions from /proc/kallsyms. Used where `oom_kill_process` cannot be hooked (no kprobes,
//! fentry refused): there it is the only certain answer, where the page counters only guess.

use aya::maps::{MapData, StackTraceMap};

use crate::kernel::records::OomCallPath;

/// The memcg OOM's entry (mm/memcontrol.c `mem_cgroup_out_of_memory`) and the functions that
/// call it, so that a kernel whose compiler inlined it is still recognised: the charge path
/// (`try_charge_memcg`, `try_charge` before 5.16 names), a lowered v2 `memory.max`, and the v1
/// OOM that waits for the fault's end (`mem_cgroup_oom_synchronize`, `memcg1_` since 6.12).
const MEMCG: [&str; 7] = [
    "mem_cgroup_out_of_memory",
    "mem_cgroup_oom",
    "try_charge_memcg",
    "try_charge",
    "memory_max_write",
    "mem_cgroup_oom_synchronize",
    "memcg1_oom_synchronize",
];

/// The page allocator's OOM (mm/page_alloc.c), the pre-5.16 global OOM of a failed fault, and
/// sysrq-f (drivers/tty/sysrq.c).
const GLOBAL: [&str; 4] = [
    "__alloc_pages_may_oom",
    "__alloc_pages_slowpath",
    "pagefault_out_of_memory",
    "moom_callback",
];

/// Whether kallsyms' `name` is `wanted` or a compiler clone of it (`.constprop.0`, `.isra.0`;
/// not the `.cold` part, which holds no call to the OOM killer).
fn is(name: &str, wanted: &str) -> bool {
    name.strip_prefix(wanted)
        .is_some_and(|rest| rest.is_empty() || (rest.starts_with('.') && !rest.contains("cold")))
}

/// Text ranges `[start, end)` of the OOM entry points, on each side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OomPathRanges {
    pub memcg: Vec<(u64, u64)>,
    pub global: Vec<(u64, u64)>,
}

impl OomPathRanges {
    /// The ranges from lines like `ffffffff816ae600 t mem_cgroup_out_of_memory` (any order;
    /// module symbols and zero addresses, hidden by kptr_restrict, left out). A function ends
    /// where the next code symbol starts.
    pub fn from_kallsyms(lines: impl Iterator<Item = impl AsRef<str>>) -> Self {
        let mut code = Vec::new();
        let mut memcg = Vec::new();
        let mut global = Vec::new();
        for line in lines {
            let mut f = line.as_ref().split_whitespace();
            let (Some(addr), Some(kind), Some(name), None) = (f.next(), f.next(), f.next(), f.next()) else {
                continue;
            };
            let Some(addr) = u64::from_str_radix(addr, 16).ok().filter(|a| *a != 0) else {
                continue;
            };
            if !matches!(kind, "T" | "t" | "W" | "w") {
                continue;
            }
            code.push(addr);
            if MEMCG.iter().any(|w| is(name, w)) {
                memcg.push(addr);
            } else if GLOBAL.iter().any(|w| is(name, w)) {
                global.push(addr);
            }
        }
        code.sort_unstable();
        code.dedup();
        let range = |start: u64| {
            let next = code.partition_point(|a| *a <= start);
            code.get(next).map(|end| (start, *end))
        };
        Self {
            memcg: memcg.into_iter().filter_map(range).collect(),
            global: global.into_iter().filter_map(range).collect(),
        }
    }

    /// This kernel's ranges, streamed from /proc/kallsyms (one pass); `None` when it is
    /// unreadable or its addresses are hidden.
    pub fn of_this_kernel() -> Option<Self> {
        use std::io::BufRead;
        let why = "the constraint of a kill comes from the page counters";
        let file = match std::fs::File::open("/proc/kallsyms") {
            Ok(f) => f,
            Err(e) => {
                log::info!("/proc/kallsyms: {e}: {why}");
                return None;
            }
        };
        let r = Self::from_kallsyms(std::io::BufReader::new(file).lines().map_while(Result::ok));
        if r.memcg.is_empty() {
            log::info!("/proc/kallsyms names no memcg OOM function (addresses hidden?): {why}");
            return None;
        }
        Some(r)
    }

    /// Memcg if any frame is in the memcg OOM's code; global if none is and one is in the page
    /// allocator's; else nothing is said.
    pub fn classify(&self, frames: impl IntoIterator<Item = u64>) -> Option<OomCallPath> {
        let within = |ranges: &[(u64, u64)], ip: u64| ranges.iter().any(|(s, e)| (*s..*e).contains(&ip));
        let mut global = false;
        for ip in frames {
            if within(&self.memcg, ip) {
                return Some(OomCallPath::Memcg);
            }
            global |= within(&self.global, ip);
        }
        global.then_some(OomCallPath::Global)
    }
}

/// Reads each kill's stack out of `OOM_STACKS` and classifies it. A stack is never deleted:
/// kills with the same kernel stack (a storm in one code path) share its id, and deleting it
/// after the first lost it for the others still queued (one storm on this host: every kill
/// after the first without its call path). The map is a cache keyed by the stack's hash; a
/// bucket is only replaced by a different stack of the same hash (`BPF_F_REUSE_STACKID`).
pub struct CallPaths {
    stacks: StackTraceMap<MapData>,
    ranges: OomPathRanges,
}

impl CallPaths {
    pub fn new(stacks: StackTraceMap<MapData>, ranges: OomPathRanges) -> Self {
        Self { stacks, ranges }
    }

    /// The call path of the stack `id`; `None` if it cannot be read or names neither side.
    pub fn of(&self, id: u32) -> Option<OomCallPath> {
        let stack = match self.stacks.get(&id, 0) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("OOM kernel stack {id}: {e}: this kill's constraint comes from the page counters");
                return None;
            }
        };
        self.ranges.classify(stack.frames().iter().map(|f| f.ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_end_at_the_next_function_and_skip_hidden_and_cold() {
        let lines = [
            "ffffffff816b24e0 t try_charge_memcg",
            "ffffffff816ae600 t mem_cgroup_out_of_memory",
            "ffffffff816ae700 t mem_cgroup_out_of_memory.cold",
            "ffffffff816ae780 t next_one",
            "ffffffff816b2900 T after_charge",
            "ffffffff8163e3f0 t __alloc_pages_may_oom",
            "ffffffff8163e5f0 t __alloc_pages_slowpath.constprop.0",
            "ffffffff8163f000 T later",
            "ffffffff8163e400 d some_data",
            "0000000000000000 t moom_callback",
            "ffffffffc0001000 t try_charge [some_module]",
        ];
        let r = OomPathRanges::from_kallsyms(lines.iter());
        assert_eq!(
            r.memcg,
            vec![
                (0xffffffff816b24e0, 0xffffffff816b2900),
                (0xffffffff816ae600, 0xffffffff816ae700)
            ],
            "cold parts and module symbols are not taken"
        );
        assert_eq!(
            r.global,
            vec![
                (0xffffffff8163e3f0, 0xffffffff8163e5f0),
                (0xffffffff8163e5f0, 0xffffffff8163f000)
            ],
            "a hidden address is not taken"
        );
        // The stack seen on 6.18: mark_oom_victim, ..., out_of_memory, mem_cgroup_out_of_memory.
        assert_eq!(
            r.classify([0xffffffff81000010, 0xffffffff816ae650, 0xffffffff8163e400]),
            Some(OomCallPath::Memcg),
            "memcg code anywhere on the stack wins"
        );
        assert_eq!(
            r.classify([0xffffffff81000010, 0xffffffff8163e400]),
            Some(OomCallPath::Global)
        );
        assert_eq!(
            r.classify([0xffffffff81000010, 0xffffffff816ae700]),
            None,
            "the .cold part"
        );
    }

    #[test]
    fn names_and_their_clones_only() {
        assert!(is("mem_cgroup_oom", "mem_cgroup_oom"));
        assert!(is("mem_cgroup_oom.constprop.0", "mem_cgroup_oom"));
        assert!(!is("mem_cgroup_oom_unlock", "mem_cgroup_oom"));
        assert!(!is("mem_cgroup_oom.cold", "mem_cgroup_oom"));
    }

    /// This kernel's kallsyms (read as root, addresses shown) names the memcg OOM's code.
    #[test]
    fn this_kernel_has_memcg_oom_ranges() {
        let r = OomPathRanges::of_this_kernel().expect("kallsyms with addresses (tests run as root)");
        assert!(
            r.memcg.iter().all(|(s, e)| s < e) && !r.global.is_empty(),
            "{r:?}"
        );
    }
}
