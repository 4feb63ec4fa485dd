//! A global OOM (the machine, not a cgroup, runs out), in the VMs only: their guests are small,
//! and a global OOM on a shared build host would kill other people's work. A bystander with
//! `oom_score_adj` 1000 dies first, then the grower itself: both are reported with
//! `constraint: global`, the right victim each time, and the counts reconcile.

use std::{os::unix::process::ExitStatusExt as _, time::Duration};

use memtrace_tests::{TestCgroup, Watcher, ebpf_available, procs};

/// Machines with more memory than this are not driven into a global OOM.
const SMALL_GUEST_KB: u64 = 4 << 20;

fn mem_total_kb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(u64::MAX)
}

#[test]
fn global_oom_bystander_then_grower() {
    if !ebpf_available("global_oom_bystander_then_grower") {
        return;
    }
    let total = mem_total_kb();
    if total > SMALL_GUEST_KB {
        eprintln!(
            "\n!!! SKIPPED global_oom_bystander_then_grower: {total} kB of RAM; a global OOM runs \
             only in the small guests of `cargo xtask vm`.\n"
        );
        return;
    }
    // This test and the memtrace it starts are exempt; the allocators say 0 and 1000 themselves.
    std::fs::write("/proc/self/oom_score_adj", "-1000").expect("oom_score_adj");
    let mut w = Watcher::start(&[]);
    // A second memtrace without oom_kill_process, as on hosts where it cannot be hooked (no
    // kprobes, fentry refused): the kernel's call stack at the kill must say global too.
    let mut by_path = Watcher::start(&["--variant", "oom_context=none"]);
    // No limits: cgroups only to keep the allocators apart (and named).
    let unlimited = u64::MAX / 2;
    let by = TestCgroup::new("global-bystander", unlimited);
    let grow = TestCgroup::new("global-grower", unlimited);
    let mut bystander = procs::alloc_in(&by, &["hold", "8"], Some(1000));
    procs::wait_ready(&mut bystander);
    let mut grower = procs::alloc_in(&grow, &["grow", "4"], Some(0));
    let st = bystander.wait().expect("wait bystander");
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    let st = grower.wait().expect("wait grower");
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
    for (pid, cg, bystander_kill) in [(bystander.id(), &by, true), (grower.id(), &grow, false)] {
        let ev = by_path.next_event(Duration::from_secs(60), |v| {
            memtrace_tests::is_kill(v) && v["process.pid"] == pid
        });
        eprintln!("event without oom_kill_process: {ev}");
        assert_eq!(ev["memtrace.constraint"], "global", "{ev}");
        assert_eq!(ev["memtrace.constraint_source"], "call_path", "{ev}");
        let ev = w.next_event(Duration::from_secs(60), |v| {
            memtrace_tests::is_kill(v) && v["process.pid"] == pid
        });
        eprintln!("event: {ev}");
        assert_eq!(ev["memtrace.cgroup.path"], cg.rel.as_str(), "{ev}");
        assert_eq!(ev["memtrace.constraint"], "global", "{ev}");
        let source = w.certain_constraint_source();
        assert_eq!(ev["memtrace.constraint_source"], source, "{ev}");
        assert!(ev.get("memtrace.oom_cgroup.path").is_none(), "{ev}");
        if bystander_kill {
            // It sleeps: someone else's allocation (the grower's, or any task's: in a global OOM
            // whoever allocates next triggers it) killed it.
            assert_eq!(ev["memtrace.trigger.is_victim"], false, "{ev}");
        }
    }
    let s = w.stop();
    let s2 = by_path.stop();
    drop(grow);
    drop(by);
    eprintln!("{s:?}");
    assert!(s.reconciled.starts_with("ok"), "{s:?}");
    assert!(s2.reconciled.starts_with("ok"), "{s2:?}");
}
