//! The per-kill budget for file reads (`watch.enrich_budget`, 50 ms): with every kill's reads
//! made 3 s slower (the `MEMTRACE_TEST_ENRICH_DELAY_MS` test hook), a real kill's event still
//! goes out at once, from the kernel's record and the caches, marked late and counted; without
//! the hook the same kill is complete.

use std::time::Duration;

use memtrace_tests::{TestCgroup, Watcher, ebpf_available, procs};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(60);
const DELAY_MS: u64 = 3000;

fn kill_in(w: &mut Watcher, cg: &TestCgroup) -> Value {
    let mut child = procs::alloc_in(cg, &["grow"], None);
    let pid = child.id();
    let _ = child.wait();
    w.next_event(WAIT, |v| {
        v["event.name"] == "memtrace.oom_kill" && v["process.pid"] == pid
    })
}

#[test]
fn slow_file_reads_do_not_hold_the_kill() {
    if !ebpf_available("slow_file_reads_do_not_hold_the_kill") {
        return;
    }
    let mut slow = Watcher::command(&[]);
    slow.env("MEMTRACE_TEST_ENRICH_DELAY_MS", DELAY_MS.to_string());
    let mut w = Watcher::spawn(slow);
    let cg = TestCgroup::new("late", 32 * MIB);
    let ev = kill_in(&mut w, &cg);
    eprintln!("late event: {ev}");
    assert_eq!(ev["memtrace.enrich.late"], true, "{ev}");
    assert!(ev.get("memtrace.snapshot.when").is_none(), "no snapshot: {ev}");
    assert!(ev["memtrace.verdict"].is_string(), "{ev}");
    // Had it waited for its reads, it would be at least DELAY_MS late.
    let delay_us = ev["memtrace.emit_delay_us"].as_u64().expect("emit delay");
    assert!(
        delay_us < DELAY_MS * 1000 * 3 / 4,
        "{delay_us} µs: the kill waited for its reads"
    );
    let path_known = ev["memtrace.cgroup.path"] == cg.rel.as_str();
    let s = w.stop();
    assert!(s.enrich_late >= 1, "{s:?}");
    // The cgroup_mkdir hook gave its path: counted by cgroup, late or not.
    if path_known {
        assert!(s.reconciled.starts_with("ok"), "{s:?}");
    }

    let mut w = Watcher::start(&[]);
    let ev = kill_in(&mut w, &cg);
    assert!(ev.get("memtrace.enrich.late").is_none(), "{ev}");
    assert_eq!(ev["memtrace.snapshot.when"], "post_kill", "{ev}");
    let s = w.stop();
    assert!(s.reconciled.starts_with("ok"), "{s:?}");
}
