//! A userspace memory killer's kill, reported as its own event: a real `earlyoom` (Debian's,
//! installed by scripts/setup.sh) kills a process of the test's own, and memtrace reports
//! `memtrace.userspace_kill` with `memtrace.killer = earlyoom`, the right victim and cgroup.
//!
//! earlyoom is told to act at once (`-m 99,99 -s 99,99`: this host always has less than 99 %
//! of its memory free), so it must not see anything it could kill but the test's process: it
//! runs in a PID namespace of its own with its own /proc (`unshare --pid --fork --mount-proc`),
//! where the only other process is the victim. A plain `kill -9` (the test ending earlyoom) is
//! not a memory killer's and is not reported.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use memtrace_tests::{TestCgroup, Watcher, ebpf_available, procs};

const MIB: u64 = 1 << 20;

#[test]
fn an_earlyoom_kill_is_reported_with_its_killer() {
    if !ebpf_available("an_earlyoom_kill_is_reported_with_its_killer") {
        return;
    }
    let earlyoom = which("earlyoom");
    let mut w = Watcher::start(&[]);
    let cg = TestCgroup::new("earlyoom", 1024 * MIB);
    let alloc = procs::alloc_bin();
    let script = format!(
        "sh -c 'echo 1000 > /proc/self/oom_score_adj; exec {} hold 32' & sleep 0.5; \
         exec {} -m 99,99 -s 99,99 -r 0 --prefer '^memtrace-alloc$'",
        alloc.display(),
        earlyoom
    );
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "sh",
        "-c",
        &script,
    ])
    .stdout(Stdio::null());
    let mut ns = procs::spawn_in(&cg, &mut cmd, None);
    let ev = w.next_event(Duration::from_secs(30), |v| {
        v["event.name"] == "memtrace.userspace_kill" && v["memtrace.cgroup.path"] == cg.rel.as_str()
    });
    // SIGKILL cannot be held off; --kill-child then ends earlyoom with the namespace.
    let _ = ns.kill();
    let _ = ns.wait();
    assert_eq!(ev["memtrace.killer"], "earlyoom", "{ev:#}");
    assert_eq!(ev["memtrace.killer.name"], "earlyoom", "{ev:#}");
    assert_eq!(ev["process.name"], "memtrace-alloc", "{ev:#}");
    assert!(
        ev["process.pid"].as_u64().is_some_and(|p| p > 1),
        "a host pid: {ev:#}"
    );
    assert!(ev["memtrace.snapshot.usage_bytes"].is_u64(), "{ev:#}");
    let s = w.stop();
    assert_eq!(
        s.kernel_seen,
        s.delivered + s.dropped_ringbuf_full + s.decode_errors,
        "the OOM ring still balances: {s:?}"
    );
    drop(cg);
}

fn which(bin: &str) -> String {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin"] {
        let p = format!("{dir}/{bin}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    panic!("{bin} is not installed: run scripts/setup.sh");
}
