//! Multi-threaded victims whose allocating thread is not the group leader (a JVM, a Go
//! runtime), under every variant of the victim hook this kernel runs: the kill names the
//! process (tgid), its own cgroup and a memcg constraint, never `global`, and reconciles.

use std::{os::unix::process::ExitStatusExt as _, time::Duration};

use memtrace_tests::{TestCgroup, Watcher, ebpf_available, memtrace_bin, procs};

const MIB: u64 = 1 << 20;

/// The variants of the `oom_victim` hook `memtrace probes` says work here.
fn victim_variants() -> Vec<String> {
    let out = std::process::Command::new(memtrace_bin())
        .arg("probes")
        .output()
        .expect("memtrace probes");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut kinds = vec![];
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("hook") {
            inside = line.split_whitespace().nth(1) == Some("oom_victim");
            if inside && line.contains("(selected)") {
                kinds.extend(line.split_whitespace().nth(2).map(str::to_owned));
            }
        } else if inside && let Some(rest) = line.trim().strip_prefix("also works: ") {
            kinds.extend(rest.split_whitespace().next().map(str::to_owned));
        }
    }
    kinds
}

#[test]
fn non_leader_allocator_under_every_victim_variant() {
    if !ebpf_available("non_leader_allocator_under_every_victim_variant") {
        return;
    }
    let started = std::time::Instant::now();
    let variants = victim_variants();
    assert!(
        variants.iter().any(|v| v == "tracepoint"),
        "the plain tracepoint works everywhere: {variants:?}"
    );
    for variant in &variants {
        let mut w = Watcher::start(&["--variant", &format!("oom_victim={variant}")]);
        let cg = TestCgroup::new("threads", 32 * MIB);
        let mut pids = vec![];
        for _ in 0..3 {
            let mut child = procs::alloc_in(&cg, &["threads", "4"], None);
            pids.push(child.id());
            let st = child.wait().expect("wait");
            assert_eq!(st.signal(), Some(libc::SIGKILL), "{variant}: {st:?}");
        }
        for pid in &pids {
            let ev = w.next_event(Duration::from_secs(30), |v| {
                memtrace_tests::is_kill(v) && v["process.pid"] == *pid
            });
            eprintln!("{variant}: {ev}");
            assert_eq!(ev["memtrace.hook"], variant.as_str(), "{ev}");
            assert_eq!(ev["memtrace.cgroup.path"], cg.rel.as_str(), "{variant}: {ev}");
            assert_eq!(ev["memtrace.constraint"], "memcg", "{variant}: {ev}");
            // The OOM killer's own decision where oom_kill_process is hooked, else the
            // kernel's call stack at the kill (kallsyms is readable here): never a guess.
            let source = w.certain_constraint_source();
            assert_eq!(ev["memtrace.constraint_source"], source, "{variant}: {ev}");
            assert_eq!(ev["memtrace.oom_cgroup.path"], cg.rel.as_str(), "{variant}: {ev}");
            assert!(ev.get("memtrace.victim.exiting").is_none(), "{ev}");
            // The allocating thread triggered it; the OOM killer chose the process.
            assert_eq!(ev["memtrace.trigger.pid"], *pid, "{variant}: {ev}");
            assert_ne!(
                ev["memtrace.trigger.tid"], *pid,
                "a non-leader thread allocated: {ev}"
            );
        }
        let s = w.stop();
        drop(cg);
        eprintln!("{variant}: {s:?}");
        assert!(s.reconciled.starts_with("ok"), "{variant}: {s:?}");
    }
    eprintln!("{} variants in {:?}", variants.len(), started.elapsed());
}
