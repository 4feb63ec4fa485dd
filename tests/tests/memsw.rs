//! cgroup v1 memory+swap limits (`memory.memsw.limit_in_bytes`): an OOM because memory and swap
//! together reached that limit is a memcg OOM at the memsw limit, not at the memory limit (and
//! never global). The test adds a small swap file of its own for its run (this binary runs
//! alone: cargo runs test binaries one at a time) and always removes it, even on a panic.
//! cgroup v2 has no memsw counter (`memory.swap.max` is swap alone): there the test says so and
//! returns; the VM guests are v2. Also when the memsw limit is an ancestor's: the OOM cgroup is
//! that ancestor, found from `hierarchical_memsw_limit`.

use std::{path::PathBuf, process::Command, time::Duration};

use memtrace::cgroup::CgroupVersion;
use memtrace_tests::{TestCgroup, Watcher, ebpf_available, procs};

const MIB: u64 = 1 << 20;

/// The tests of this binary one at a time: each turns swap on for its own run.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A swap file on for the guard's lifetime.
struct SwapFile(PathBuf);

impl SwapFile {
    fn on(mib: u64) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = PathBuf::from(format!("/var/tmp/memtrace-test-swap-{}-{n}", std::process::id()));
        let run = |cmd: &mut Command| {
            let out = cmd.output().expect("run");
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(Command::new("fallocate")
            .args(["-l", &format!("{mib}M")])
            .arg(&path));
        let guard = Self(path);
        std::fs::set_permissions(&guard.0, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod");
        run(Command::new("mkswap").arg(&guard.0));
        run(Command::new("swapon").arg(&guard.0));
        guard
    }
}

impl Drop for SwapFile {
    fn drop(&mut self) {
        let _ = Command::new("swapoff").arg(&self.0).status();
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn a_memsw_limit_oom_names_the_memsw_limit() {
    if !ebpf_available("a_memsw_limit_oom_names_the_memsw_limit") {
        return;
    }
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Which limit was hit is judged on the cgroup files read right after the kill: room for
    // them under load (a kill sent without them, `enrich.late`, is enrich_budget.rs's test).
    let mut w = Watcher::start(&["--enrich-budget", "2s"]);
    let cg = TestCgroup::new("memsw", 64 * MIB);
    if cg.version != CgroupVersion::V1 {
        eprintln!(
            "NOTE: a_memsw_limit_oom_names_the_memsw_limit: cgroup v2 has no memory+swap limit; nothing to test here"
        );
        return;
    }
    let swap = SwapFile::on(96);
    cg.write("memory.memsw.limit_in_bytes", &(96 * MIB).to_string());
    // Swap out eagerly, so that memory+swap, not memory alone, runs out.
    cg.write("memory.swappiness", "100");
    let mut alloc = procs::alloc_in(&cg, &["grow"], None);
    let pid = alloc.id();
    let status = alloc.wait().expect("wait");
    assert!(!status.success(), "grow ends only by its OOM kill");
    let ev = w.next_event(Duration::from_secs(30), |v| {
        v["event.name"] == "memtrace.oom_kill" && v["process.pid"] == pid
    });
    drop(swap);
    assert_eq!(ev["memtrace.constraint"], "memcg", "{ev:#}");
    // Certain, not the page counters' guess: the OOM killer's own decision where
    // oom_kill_process is hooked, else the kernel's call stack at the kill.
    let source = w.certain_constraint_source();
    assert_eq!(ev["memtrace.constraint_source"], source, "{ev:#}");
    assert_eq!(ev["memtrace.oom_cgroup.path"], cg.rel.as_str(), "{ev:#}");
    assert_eq!(ev["memtrace.oom_cgroup.limit_kind"], "memory_swap", "{ev:#}");
    assert_eq!(ev["memtrace.oom_cgroup.limit_bytes"], 96 * MIB, "{ev:#}");
    let swapped = ev["memtrace.oom_cgroup.at_kill.swap_bytes"].as_u64().unwrap_or(0);
    assert!(
        swapped > 16 * MIB,
        "the cgroup had swapped: {swapped} bytes: {ev:#}"
    );
    let verdict = ev["memtrace.verdict"].as_str().unwrap_or("");
    assert!(verdict.contains("96.0 MiB memory+swap limit"), "{verdict}");
    drop(cg);
}

/// The limits on the parent, the allocator in an unlimited child: the child's own files miss
/// the parent's memory+swap limit (the kill once read as a global OOM), and the parent is at its
/// memory limit too, so only the memsw counter tells which limit was hit (once read as memory:
/// the swap statistic read after the kill had lost the victim's swap).
#[test]
fn an_ancestors_memsw_limit_is_the_oom_cgroup() {
    if !ebpf_available("an_ancestors_memsw_limit_is_the_oom_cgroup") {
        return;
    }
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Which limit was hit is judged on the cgroup files read right after the kill: room for
    // them under load (a kill sent without them, `enrich.late`, is enrich_budget.rs's test).
    let mut w = Watcher::start(&["--enrich-budget", "2s"]);
    // The child's own limit is far above the parent's.
    let child = TestCgroup::nested("memsw-anc", &["child"], 1024 * MIB);
    if child.version != CgroupVersion::V1 {
        eprintln!(
            "NOTE: an_ancestors_memsw_limit_is_the_oom_cgroup: cgroup v2 has no memory+swap limit; nothing to test here"
        );
        return;
    }
    let parent_dir = child.dir.parent().expect("the child has a parent").to_path_buf();
    let parent_rel = child
        .rel
        .rsplit_once('/')
        .map(|(p, _)| p.to_owned())
        .expect("nested");
    let swap = SwapFile::on(96);
    let write = |file: &str, value: u64| {
        std::fs::write(parent_dir.join(file), value.to_string())
            .unwrap_or_else(|e| panic!("write {value} to the parent's {file}: {e}"));
    };
    write("memory.limit_in_bytes", 64 * MIB);
    write("memory.memsw.limit_in_bytes", 96 * MIB);
    write("memory.swappiness", 100);
    child.write("memory.swappiness", "100");
    let mut alloc = procs::alloc_in(&child, &["grow"], None);
    let pid = alloc.id();
    let status = alloc.wait().expect("wait");
    assert!(!status.success(), "grow ends only by its OOM kill");
    let ev = w.next_event(Duration::from_secs(30), |v| {
        v["event.name"] == "memtrace.oom_kill" && v["process.pid"] == pid
    });
    drop(swap);
    assert_eq!(ev["memtrace.cgroup.path"], child.rel.as_str(), "{ev:#}");
    assert_eq!(ev["memtrace.constraint"], "memcg", "{ev:#}");
    assert_eq!(ev["memtrace.oom_cgroup.path"], parent_rel.as_str(), "{ev:#}");
    assert_eq!(ev["memtrace.oom_cgroup.limit_kind"], "memory_swap", "{ev:#}");
    assert_eq!(ev["memtrace.oom_cgroup.limit_bytes"], 96 * MIB, "{ev:#}");
    assert_eq!(ev["memtrace.oom_cgroup.depth"], 1, "{ev:#}");
    drop(child);
}
