//! Hostile conditions from docs/bad-input.md that need a real kernel: no BTF, no usable variant
//! of a required hook, a read-only cgroup mount, a cgroup removed before memtrace reads it.
//! (Bad flags and missing privileges: cli_errors.rs and privileges.rs; a full ring buffer:
//! drops.rs.)

use std::{os::unix::process::ExitStatusExt as _, process::Command, time::Duration};

use memtrace::kernel::btf::BTF_PATH_ENV;
use memtrace_tests::{TestCgroup, Watcher, ebpf_available, memtrace_bin, procs};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(60);
/// A path that exists nowhere: memtrace sees a kernel built without BTF.
const NO_BTF: &str = "/nonexistent/memtrace-test/vmlinux";

fn kill_one(w: &mut Watcher, cg: &TestCgroup) -> Value {
    let mut child = procs::alloc_in(cg, &["grow"], None);
    let pid = child.id();
    let status = child.wait().expect("wait allocator");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "allocator was OOM-killed");
    let ev = w.next_event(WAIT, |v| memtrace_tests::is_kill(v) && v["process.pid"] == pid);
    eprintln!("event: {ev}");
    ev
}

/// Without BTF only the plain tracepoint can attach: memtrace says so, attaches it, and still
/// reports the kill with what the tracepoint record carries (6.8+: comm, rss, oom_score_adj).
/// It never claims a global OOM it cannot know about.
#[test]
fn missing_btf_falls_back_to_the_tracepoint() {
    if !ebpf_available("missing_btf_falls_back_to_the_tracepoint") {
        return;
    }
    let mut cmd = Watcher::command(&[]);
    cmd.env(BTF_PATH_ENV, NO_BTF);
    let mut w = Watcher::spawn(cmd);
    assert!(
        w.stderr_lines
            .iter()
            .any(|l| l.contains("kernel BTF not found") && l.contains("falling back")),
        "says BTF is missing: {:#?}",
        w.stderr_lines
    );
    let attached = w.stderr_lines.last().cloned().unwrap_or_default();
    assert!(attached.contains("oom_victim via tracepoint"), "{attached}");
    let cg = TestCgroup::new("nobtf", 32 * MIB);
    let ev = kill_one(&mut w, &cg);
    assert_eq!(ev["memtrace.hook"], "tracepoint");
    // Before 6.8 the record has the pid only (5.10; `memtrace probes` lists what it lacks):
    // without BTF nothing else can be read, and what is missing is left out, not guessed.
    let lacks = memtrace_tests::mark_victim_record_missing();
    if lacks.iter().any(|f| f == "comm") {
        assert!(ev["process.executable.name"].is_null(), "{ev}");
    } else {
        assert_eq!(ev["process.executable.name"], procs::ALLOC_COMM);
    }
    if lacks.iter().any(|f| f == "anon_rss") {
        assert!(ev["memtrace.victim.anon_rss_bytes"].is_null(), "{ev}");
    } else {
        let anon = ev["memtrace.victim.anon_rss_bytes"]
            .as_u64()
            .expect("anon rss from the record");
        assert!(anon * 10 >= 32 * MIB * 8, "anon rss {anon}");
    }
    // No memcg data from BTF; the kernel's call stack at the kill (kallsyms, no BTF needed)
    // still says memcg, never a made-up "global". Without it the answer is "unknown" (the
    // diagnosis unit tests).
    assert_eq!(ev["memtrace.constraint"], "memcg", "{ev}");
    let source = w.certain_constraint_source();
    assert_eq!(ev["memtrace.constraint_source"], source, "{ev}");
    let verdict = ev["memtrace.verdict"].as_str().unwrap_or_default();
    assert!(verdict.starts_with("memcg OOM"), "{verdict}");
    assert!(!verdict.contains("machine ran out"), "{verdict}");
    let path = &ev["memtrace.cgroup.path"];
    assert!(path.is_null() || path == cg.rel.as_str(), "wrong cgroup: {path}");
    drop(cg);
    let s = w.stop();
    assert_eq!(
        s.kernel_seen,
        s.delivered + s.dropped_ringbuf_full + s.decode_errors,
        "{s:?}"
    );
}

/// A kernel without a usable variant of the required hook (here: no BTF, and only tp_btf
/// allowed): exit 1 with one error line that lists each variant and why it was not used.
#[test]
fn no_usable_variant_of_a_required_hook_is_one_clear_error() {
    if !ebpf_available("no_usable_variant_of_a_required_hook_is_one_clear_error") {
        return;
    }
    let out = Command::new(memtrace_bin())
        .args(["watch", "--variant", "oom_victim=tp_btf"])
        .env(BTF_PATH_ENV, NO_BTF)
        .output()
        .expect("run memtrace");
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("memtrace: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains("no variant of required hook oom_victim could attach")
            && errors[0].contains("tp_btf mark_victim: no kernel BTF")
            && errors[0].contains("tracepoint oom:mark_victim: not the --variant asked for"),
        "{}",
        errors[0]
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// The DaemonSet mounts /sys/fs/cgroup read-only: memtrace only reads cgroup files, so the kill
/// is reported with its snapshot. memtrace runs in a private mount namespace where the memory
/// hierarchy is bind-remounted read-only (the host's mount stays read-write).
#[test]
fn read_only_cgroup_mount_is_enough() {
    if !ebpf_available("read_only_cgroup_mount_is_enough") {
        return;
    }
    let h = memtrace::cgroup::MemoryHierarchy::detect().expect("memory hierarchy");
    let root = h.root.display().to_string();
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        // `bind`: only this namespace's mount becomes read-only, never the superblock.
        .arg("mount -o remount,bind,ro \"$1\" && shift && exec \"$0\" watch --output json \"$@\"")
        .arg(memtrace_bin())
        .arg(&root)
        .args(memtrace_tests::watcher::budget_args());
    let mut w = Watcher::spawn(cmd);
    let mountinfo = std::fs::read_to_string(format!("/proc/{}/mountinfo", w.pid())).expect("mountinfo");
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(root.as_str()))
        .expect("memory hierarchy in memtrace's namespace");
    assert!(
        line.split(' ')
            .nth(5)
            .is_some_and(|o| o.split(',').any(|f| f == "ro")),
        "{line}"
    );
    let cg = TestCgroup::new("rocg", 32 * MIB);
    let ev = kill_one(&mut w, &cg);
    assert_eq!(ev["memtrace.cgroup.path"], cg.rel.as_str());
    assert!(
        ev["memtrace.snapshot.usage_bytes"].is_u64(),
        "snapshot read: {ev}"
    );
    assert_eq!(ev["memtrace.snapshot.limit_bytes"], 32 * MIB);
    drop(cg);
    let s = w.stop();
    assert!(s.reconciled.starts_with("ok"), "{s:?}");
}

/// The cgroup is removed between the kill and memtrace's read of it (memtrace stopped with
/// SIGSTOP meanwhile, as a slow daemon would be): the kill is still reported, named by the
/// path memtrace learnt when the cgroup was created, and the snapshot says it vanished.
#[test]
fn cgroup_removed_before_it_is_read() {
    if !ebpf_available("cgroup_removed_before_it_is_read") {
        return;
    }
    let mut w = Watcher::start(&[]);
    w.signal(libc::SIGSTOP);
    // Created and removed while memtrace is stopped: only its cgroup_mkdir record names it.
    let cg = TestCgroup::new("gone", 32 * MIB);
    let (rel, dir) = (cg.rel.clone(), cg.dir.clone());
    let mut child = procs::alloc_in(&cg, &["grow"], None);
    let pid = child.id();
    let status = child.wait().expect("wait allocator");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    drop(cg);
    assert!(!dir.exists(), "{} removed", dir.display());
    w.signal(libc::SIGCONT);
    let ev = w.next_event(WAIT, |v| memtrace_tests::is_kill(v) && v["process.pid"] == pid);
    eprintln!("event: {ev}");
    assert_eq!(ev["memtrace.cgroup.path"], rel.as_str());
    assert_eq!(
        ev["memtrace.memcg.limit_bytes"],
        32 * MIB,
        "read in the kernel at the kill"
    );
    let err = ev["memtrace.snapshot.error"].as_str().expect("snapshot error");
    assert!(err.contains("vanished"), "{err}");
    let s = w.stop();
    assert_eq!(
        s.kernel_seen,
        s.delivered + s.dropped_ringbuf_full + s.decode_errors,
        "{s:?}"
    );
}
