//! The text ranges that tell a memcg OOM from a global one by the kernel's own call stack at
//! the kill (memtrace-ebpf `oom_path`): on hosts where `oom_kill_process` cannot be hooked, the
//! only certain answer. From /proc/kallsyms, once per `watch` (one pass, ~30 ms here).

use memtrace_common::layout::OomPathRanges;

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

/// The ranges from lines like `ffffffff816ae600 t mem_cgroup_out_of_memory` (any order; module
/// symbols and zero addresses, hidden by kptr_restrict, left out). A function ends where the
/// next code symbol starts.
pub fn from_kallsyms(lines: impl Iterator<Item = impl AsRef<str>>) -> OomPathRanges {
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
        code.get(next).map(|end| [start, *end])
    };
    let mut out = OomPathRanges::absent();
    for (slots, starts) in [(&mut out.memcg, memcg), (&mut out.global, global)] {
        for (slot, r) in slots.iter_mut().zip(starts.into_iter().filter_map(range)) {
            *slot = r;
        }
    }
    out
}

/// This kernel's ranges; none (and the constraint comes from elsewhere) when kallsyms is
/// unreadable or its addresses are hidden.
pub fn ranges() -> OomPathRanges {
    // Streamed: the file is over 5 MB of text (5.4 MB on this 6.18 build).
    match std::fs::File::open("/proc/kallsyms") {
        Ok(f) => {
            let lines = std::io::BufRead::lines(std::io::BufReader::new(f)).map_while(Result::ok);
            let r = from_kallsyms(lines);
            if r.memcg[0][0] == 0 {
                log::info!(
                    "/proc/kallsyms names no memcg OOM function (addresses hidden?): the constraint of a kill comes from oom_kill_process or the page counters"
                );
            }
            r
        }
        Err(e) => {
            log::info!(
                "/proc/kallsyms: {e}: the constraint of a kill comes from oom_kill_process or the page counters"
            );
            OomPathRanges::absent()
        }
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
        let r = from_kallsyms(lines.iter());
        assert_eq!(r.memcg[0], [0xffffffff816b24e0, 0xffffffff816b2900]);
        assert_eq!(r.memcg[1], [0xffffffff816ae600, 0xffffffff816ae700]);
        assert_eq!(r.memcg[2], [0, 0], "cold parts and module symbols are not taken");
        assert_eq!(r.global[0], [0xffffffff8163e3f0, 0xffffffff8163e5f0]);
        assert_eq!(r.global[1], [0xffffffff8163e5f0, 0xffffffff8163f000]);
        assert_eq!(r.global[2], [0, 0], "a hidden address is not taken");
    }

    #[test]
    fn names_and_their_clones_only() {
        assert!(is("mem_cgroup_oom", "mem_cgroup_oom"));
        assert!(is("mem_cgroup_oom.constprop.0", "mem_cgroup_oom"));
        assert!(!is("mem_cgroup_oom_unlock", "mem_cgroup_oom"));
        assert!(!is("mem_cgroup_oom.cold", "mem_cgroup_oom"));
    }
}
