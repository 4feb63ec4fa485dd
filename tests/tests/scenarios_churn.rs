//! Container churn, as a crash-looping pod makes it: the same workload's cgroup removed and
//! re-created between kills, dozens of times, some removed while a kill is still in flight.
//! Freed `mem_cgroup`s are reused by the slab allocator, so state keyed by the kernel pointer
//! goes stale (a real kill reported as `memtrace.victim.exiting`, left out of the counts);
//! every kill here must be reported as a kill, in its own incarnation of the cgroup, and
//! reconcile with the kernel's own counters through memtrace's own output.

use std::{
    collections::HashMap,
    os::unix::{fs::MetadataExt as _, process::ExitStatusExt as _},
    time::{Duration, Instant},
};

use memtrace_tests::{TestCgroup, Watcher, ebpf_available, procs};

const MIB: u64 = 1 << 20;
const ROUNDS: usize = 30;

#[test]
fn recreated_cgroup_kills_are_all_kills() {
    if !ebpf_available("recreated_cgroup_kills_are_all_kills") {
        return;
    }
    let started = Instant::now();
    let mut w = Watcher::start(&[]);
    // One stable parent (the pod), one container cgroup re-created under the same name.
    let pod = TestCgroup::new("churn", 512 * MIB);
    let dir = pod.dir.join("app");
    let rel = format!("{}/app", pod.rel);
    if pod.version == memtrace::cgroup::CgroupVersion::V2 {
        pod.write("cgroup.subtree_control", "+memory");
    }
    let mut want: HashMap<u32, u64> = HashMap::new();
    for round in 0..ROUNDS {
        std::fs::create_dir(&dir).expect("mkdir app");
        let limit = match pod.version {
            memtrace::cgroup::CgroupVersion::V1 => "memory.limit_in_bytes",
            memtrace::cgroup::CgroupVersion::V2 => "memory.max",
        };
        std::fs::write(dir.join(limit), (16 * MIB).to_string()).expect("limit");
        if pod.version == memtrace::cgroup::CgroupVersion::V2 {
            let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        }
        let id = std::fs::metadata(&dir).expect("stat").ino();
        let mut child = procs::alloc_in_dir(&dir, &["grow"]);
        want.insert(child.id(), id);
        let last = round + 1 == ROUNDS;
        if round % 3 == 0 && !last {
            // A kill in flight while the cgroup goes: rmdir is retried from before the kill,
            // so it succeeds the moment the victim is gone, before memtrace has read anything.
            let rmdir = {
                let dir = dir.clone();
                std::thread::spawn(move || remove(&dir))
            };
            let st = child.wait().expect("wait");
            assert_eq!(st.signal(), Some(libc::SIGKILL), "round {round}: {st:?}");
            rmdir.join().expect("rmdir thread");
        } else {
            let st = child.wait().expect("wait");
            assert_eq!(st.signal(), Some(libc::SIGKILL), "round {round}: {st:?}");
            // The last incarnation stays until memtrace has reconciled: its kernel counter
            // (one kill) is checked against memtrace's count for this incarnation only.
            if !last {
                remove(&dir);
                // Time for the freed memcg to go back to the slab, where the next mkdir finds
                // it (seen here: the same mem_cgroup address for several incarnations).
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
    let mut seen: HashMap<u32, u64> = HashMap::new();
    while seen.len() < want.len() {
        let ev = w.next_event(Duration::from_secs(30), |v| {
            memtrace_tests::is_kill(v)
                && v["process.pid"]
                    .as_u64()
                    .is_some_and(|p| want.contains_key(&(p as u32)))
        });
        let pid = ev["process.pid"].as_u64().expect("pid") as u32;
        assert!(
            ev.get("memtrace.victim.exiting").is_none(),
            "a real kill reported as an exiting victim: {ev}"
        );
        assert_eq!(ev["memtrace.cgroup.path"], rel.as_str(), "{ev}");
        assert_eq!(ev["memtrace.constraint"], "memcg", "{ev}");
        let id = ev["memtrace.cgroup.id"].as_u64().expect("cgroup id");
        assert!(seen.insert(pid, id).is_none(), "pid {pid} reported twice");
    }
    assert_eq!(seen, want, "every victim, in its own incarnation of {rel}");
    let s = w.stop();
    remove(&dir);
    drop(pod);
    eprintln!("{ROUNDS} incarnations: {s:?}; took {:?}", started.elapsed());
    assert!(s.reconciled.starts_with("ok"), "{s:?}");
}

/// rmdir of a cgroup whose last task was just killed: retried while the kernel finishes it.
fn remove(dir: &std::path::Path) {
    for _ in 0..5000 {
        if std::fs::remove_dir(dir).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("could not remove {}", dir.display());
}
