//! cgroup v1 memory+swap limits (`memory.memsw.limit_in_bytes`): an OOM because memory and swap
//! together reached that limit is a memcg OOM at the memsw limit, not at the memory limit (and
//! never global). The test adds a small swap file of its own for its run (this binary runs
//! alone: cargo runs test binaries one at a time) and always removes it, even on a panic.
//! cgroup v2 has no memsw counter (`memory.swap.max` is swap alone): there the test says so and
//! returns; the VM guests are v2.

use std::{path::PathBuf, process::Command, time::Duration};

use memtrace::cgroup::CgroupVersion;
use memtrace_tests::{TestCgroup, Watcher, ebpf_available, procs};

const MIB: u64 = 1 << 20;

/// A swap file on for the guard's lifetime.
struct SwapFile(PathBuf);

impl SwapFile {
    fn on(mib: u64) -> Self {
        let path = PathBuf::from(format!("/var/tmp/memtrace-test-swap-{}", std::process::id()));
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
    let mut w = Watcher::start(&[]);
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
