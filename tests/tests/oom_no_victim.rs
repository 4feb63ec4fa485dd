//! An OOM with no victim is an event too. On cgroup v1 (the host): the OOM killer disabled
//! (`memory.oom_control` `oom_kill_disable 1`), so the allocator hangs at the limit. On cgroup
//! v2 (the VMs; the host's bounding set lacks CAP_SYS_RESOURCE, so -1000 cannot be set there):
//! the only task at `oom_score_adj` -1000, so the killer finds no victim and the allocator
//! retries its fault for ever. memtrace says which cgroup, since when and why nothing was
//! killed, and when it ends; it reports no kill.

use std::time::Duration;

use memtrace::cgroup::CgroupVersion;
use memtrace_tests::{TestCgroup, Watcher, ebpf_available, procs};

const MIB: u64 = 1 << 20;

#[test]
fn killer_disabled_stall_and_its_end() {
    if !ebpf_available("killer_disabled_stall_and_its_end") {
        return;
    }
    let cg = TestCgroup::new("novictim", 32 * MIB);
    let v1 = cg.version == CgroupVersion::V1;
    let mut w = Watcher::start(&[]);
    let (adj, reason) = if v1 {
        cg.write("memory.oom_control", "1");
        (None, "killer_disabled")
    } else {
        (Some(-1000), "all_tasks_exempt")
    };
    let mut grower = procs::alloc_in(&cg, &["grow"], adj);
    let ev = w.next_event(Duration::from_secs(30), |v| {
        v["event.name"] == "memtrace.oom_no_victim" && v["memtrace.cgroup.path"] == cg.rel.as_str()
    });
    eprintln!("start: {ev}");
    assert_eq!(ev["memtrace.stall.reason"], reason);
    assert_eq!(ev["memtrace.stall.tasks"], 1);
    assert_eq!(ev["severity_text"], "ERROR");
    assert!(ev["memtrace.stall.since"].is_string());
    // The grower hangs (no kill): still alive.
    assert!(grower.try_wait().expect("try_wait").is_none(), "hung, not killed");
    if v1 {
        let oom_control = std::fs::read_to_string(cg.dir.join("memory.oom_control")).expect("read");
        assert!(oom_control.contains("under_oom 1"), "{oom_control}");
    }
    // End it: kill the hung task (by pid), which frees the memory.
    let _ = grower.kill();
    let _ = grower.wait();
    let end = w.next_event(Duration::from_secs(30), |v| {
        v["event.name"] == "memtrace.oom_no_victim_end" && v["memtrace.cgroup.path"] == cg.rel.as_str()
    });
    eprintln!("end: {end}");
    assert_eq!(end["memtrace.stall.since"], ev["memtrace.stall.since"]);
    assert!(end["memtrace.stall.duration_s"].as_f64().is_some_and(|d| d > 0.0));
    // Nothing false: no kill event for this cgroup.
    let kills = w.events_for(Duration::from_millis(200), |v| {
        v["event.name"] == "memtrace.oom_kill" && v["memtrace.cgroup.path"] == cg.rel.as_str()
    });
    assert!(kills.is_empty(), "no kill was reported: {kills:?}");
    drop(cg);
    w.stop();
}
