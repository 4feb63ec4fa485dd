//! Real-world OOM shapes, each with real kills, each reconciled against the kernel's own
//! counters through memtrace's own exit summary (`reconciled=ok`): many small processes, a
//! process that changes cgroup mid-allocation, a storm across cgroups created and removed
//! while it runs, and a fast allocator whose pre-OOM warning must not come after its kill.

use std::{
    collections::{HashMap, HashSet},
    os::unix::process::ExitStatusExt as _,
    time::{Duration, Instant},
};

use memtrace::cgroup::CgroupVersion;
use memtrace_tests::{TestCgroup, Watcher, ebpf_available, procs};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(30);

fn is_kill(v: &Value) -> bool {
    v["event.name"] == "memtrace.oom_kill"
}

/// Every kill event whose cgroup path starts with `prefix`, until `n` have arrived.
fn kills_under(w: &mut Watcher, prefix: &str, n: usize) -> Vec<Value> {
    let mut out = vec![];
    while out.len() < n {
        out.push(w.next_event(WAIT, |v| {
            is_kill(v)
                && v["memtrace.cgroup.path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with(prefix))
        }));
    }
    out
}

/// A fork-heavy workload: 40 small processes of 2 MiB each share a 48 MiB cgroup, one of them
/// keeps growing. The kernel kills the biggest (the grower); each kill is one event with the
/// victim's own pid, and the small ones live on.
#[test]
fn many_small_processes() {
    if !ebpf_available("many_small_processes") {
        return;
    }
    let started = Instant::now();
    let mut w = Watcher::start(&[]);
    let cg = TestCgroup::new("forks", 48 * MIB);
    let mut small = vec![];
    for _ in 0..40 {
        let mut c = procs::alloc_in(&cg, &["hold", "0"], None);
        procs::wait_ready(&mut c);
        small.push(c);
    }
    let mut growers = vec![];
    for _ in 0..3 {
        let mut g = procs::alloc_in(&cg, &["grow"], None);
        let st = g.wait().expect("wait");
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
        growers.push(g.id());
    }
    let evs = kills_under(&mut w, &cg.rel, growers.len());
    let got: Vec<u64> = evs.iter().filter_map(|e| e["process.pid"].as_u64()).collect();
    assert_eq!(
        got,
        growers.iter().map(|p| u64::from(*p)).collect::<Vec<_>>(),
        "{evs:#?}"
    );
    for ev in &evs {
        assert_eq!(ev["memtrace.constraint"], "memcg", "{ev}");
        assert_eq!(ev["memtrace.cgroup.path"], cg.rel.as_str(), "{ev}");
    }
    for c in &mut small {
        assert!(c.try_wait().expect("try_wait").is_none(), "a small process died");
    }
    let s = w.stop();
    for mut c in small {
        let _ = c.kill();
        let _ = c.wait();
    }
    drop(cg);
    eprintln!("many_small_processes: {s:?} in {:?}", started.elapsed());
    assert!(s.reconciled.starts_with("ok"), "{s:?}");
}

/// A process moved from one cgroup to another while it allocates: killed in the second, where
/// the kernel counts the kill, and reported there.
#[test]
fn process_changes_cgroup_mid_allocation() {
    if !ebpf_available("process_changes_cgroup_mid_allocation") {
        return;
    }
    let started = Instant::now();
    let mut w = Watcher::start(&[]);
    let roomy = TestCgroup::new("from", 512 * MIB);
    let tight = TestCgroup::new("to", 48 * MIB);
    let mut pids = vec![];
    for _ in 0..3 {
        // Grows 1 MiB per 20 ms: moved after about 20 MiB, killed in `tight` at its limit.
        let mut child = procs::alloc_in(&roomy, &["trickle", "50", "100000"], None);
        procs::wait_ready(&mut child);
        std::thread::sleep(Duration::from_millis(400));
        std::fs::write(tight.procs_file(), child.id().to_string()).expect("move");
        let st = child.wait().expect("wait");
        assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
        pids.push(child.id());
    }
    for pid in &pids {
        let ev = w.next_event(WAIT, |v| is_kill(v) && v["process.pid"] == *pid);
        assert_eq!(ev["memtrace.cgroup.path"], tight.rel.as_str(), "{ev}");
        assert_eq!(ev["memtrace.oom_cgroup.path"], tight.rel.as_str(), "{ev}");
        assert_eq!(ev["memtrace.constraint"], "memcg", "{ev}");
        assert!(ev.get("memtrace.victim.exiting").is_none(), "{ev}");
    }
    let s = w.stop();
    drop(tight);
    drop(roomy);
    eprintln!(
        "process_changes_cgroup_mid_allocation: {s:?} in {:?}",
        started.elapsed()
    );
    assert!(s.reconciled.starts_with("ok"), "{s:?}");
}

/// A storm: 4 workers, each creating a cgroup, killing an allocator in it and removing it,
/// 8 times, at once. Every victim reported once in its own (by then removed) cgroup.
#[test]
fn storm_across_cgroups_created_and_removed() {
    if !ebpf_available("storm_across_cgroups_created_and_removed") {
        return;
    }
    let started = Instant::now();
    let mut w = Watcher::start(&[]);
    let parent = TestCgroup::new("storm", 1024 * MIB);
    if parent.version == CgroupVersion::V2 {
        parent.write("cgroup.subtree_control", "+memory");
    }
    let want: HashMap<u32, String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|worker| {
                let parent = &parent;
                s.spawn(move || {
                    let mut mine = vec![];
                    for round in 0..8 {
                        let name = format!("w{worker}-{round}");
                        let dir = parent.dir.join(&name);
                        std::fs::create_dir(&dir).expect("mkdir");
                        let limit = match parent.version {
                            CgroupVersion::V1 => "memory.limit_in_bytes",
                            CgroupVersion::V2 => "memory.max",
                        };
                        std::fs::write(dir.join(limit), (16 * MIB).to_string()).expect("limit");
                        if parent.version == CgroupVersion::V2 {
                            let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                        }
                        let mut child = procs::alloc_in_dir(&dir, &["grow"]);
                        let st = child.wait().expect("wait");
                        assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}");
                        mine.push((child.id(), format!("{}/{name}", parent.rel)));
                        rmdir(&dir);
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker"))
            .collect()
    });
    let mut seen: HashMap<u32, String> = HashMap::new();
    while seen.len() < want.len() {
        let ev = w.next_event(WAIT, |v| {
            is_kill(v)
                && v["process.pid"]
                    .as_u64()
                    .is_some_and(|p| want.contains_key(&(p as u32)))
        });
        assert!(ev.get("memtrace.victim.exiting").is_none(), "{ev}");
        assert_eq!(ev["memtrace.constraint"], "memcg", "{ev}");
        // Kills with the same kernel stack share its id in OOM_STACKS: each must still be read.
        let source = w.certain_constraint_source();
        assert_eq!(ev["memtrace.constraint_source"], source, "{ev}");
        let pid = ev["process.pid"].as_u64().expect("pid") as u32;
        let path = ev["memtrace.cgroup.path"].as_str().map(str::to_owned);
        let path = path.unwrap_or_else(|| {
            panic!(
                "a kill without its cgroup path: {ev}\nmemtrace said: {:#?}",
                w.stderr_lines
            )
        });
        assert!(seen.insert(pid, path).is_none(), "pid {pid} reported twice");
    }
    assert_eq!(seen, want);
    let s = w.stop();
    drop(parent);
    eprintln!("storm: {} kills, {s:?} in {:?}", want.len(), started.elapsed());
    assert!(s.reconciled.starts_with("ok"), "{s:?}");
}

/// A fast allocator, killed within a second of starting, in a cgroup memtrace watches for
/// pre-OOM warnings: a warning for that cgroup may come before the kill, never after it.
#[test]
fn no_warning_after_the_kill() {
    if !ebpf_available("no_warning_after_the_kill") {
        return;
    }
    let started = Instant::now();
    // Exact charges: every charge and reclaim stall is counted, so the warner sees the
    // cgroup at its limit in the second of the kill.
    let mut w = Watcher::start(&["--exact-charges", "--warn-ratio", "0.5"]);
    let mut cgs = vec![];
    let mut order: Vec<(String, &'static str)> = vec![];
    for _ in 0..4 {
        let cg = TestCgroup::new("fast", 64 * MIB);
        let mut child = procs::alloc_in(&cg, &["grow"], None);
        let _ = child.wait();
        cgs.push(cg);
    }
    let rels: HashSet<String> = cgs.iter().map(|c| c.rel.clone()).collect();
    let ours = |v: &Value| {
        v["memtrace.cgroup.path"]
            .as_str()
            .is_some_and(|p| rels.contains(p))
    };
    // Every kill first (a loaded machine may be slow), then long enough for a late warning to
    // show: warnings are computed once a second.
    let mut evs = vec![];
    let deadline = Instant::now() + WAIT;
    while evs.iter().filter(|v| is_kill(v)).count() < rels.len() && Instant::now() < deadline {
        evs.extend(w.events_for(Duration::from_millis(200), ours));
    }
    evs.extend(w.events_for(Duration::from_secs(3), ours));
    for ev in &evs {
        let cg = ev["memtrace.cgroup.path"]
            .as_str()
            .or(ev["memtrace.cgroup"].as_str())
            .unwrap_or_default()
            .to_owned();
        // A kill's stacks may follow it (`memtrace.oom_kill_stacks`): neither kind.
        let kind = match ev["event.name"].as_str() {
            Some("memtrace.oom_kill") => "kill",
            Some("memtrace.pre_oom_warning") => {
                eprintln!("warning: {ev}");
                "warning"
            }
            _ => continue,
        };
        order.push((cg, kind));
    }
    eprintln!("{order:?}");
    for rel in &rels {
        let mine: Vec<&str> = order.iter().filter(|(c, _)| c == rel).map(|(_, k)| *k).collect();
        assert_eq!(
            mine.iter().filter(|k| **k == "kill").count(),
            1,
            "{rel}: {mine:?}"
        );
        assert_eq!(
            mine.last(),
            Some(&"kill"),
            "a warning after the kill in {rel}: {mine:?}"
        );
    }
    let s = w.stop();
    drop(cgs);
    eprintln!("no_warning_after_the_kill: {s:?} in {:?}", started.elapsed());
    assert!(s.reconciled.starts_with("ok"), "{s:?}");
}

fn rmdir(dir: &std::path::Path) {
    for _ in 0..5000 {
        if std::fs::remove_dir(dir).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("could not remove {}", dir.display());
}
