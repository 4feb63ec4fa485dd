//! "Why was it killed": the OOM cgroup, the post-kill snapshot, the verdict, container
//! attribution and reconciliation with the kernel's counters, on real kills.

use std::{collections::HashMap, time::Duration};

use memtrace_tests::{RemoveFile, TestCgroup, Watcher, ebpf_available, procs};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(60);

fn kill_one(w: &mut Watcher, cg: &TestCgroup, extra_before: impl FnOnce()) -> Value {
    extra_before();
    let mut child = procs::alloc_in(cg, &["grow"], None);
    let pid = child.id();
    let _ = child.wait();
    w.next_event(WAIT, |v| memtrace_tests::is_kill(v) && v["process.pid"] == pid)
}

/// The limit sits on a parent; the victim lives in a child: the event names both, and the
/// verdict blames the parent's limit.
#[test]
fn limit_hit_by_an_ancestor() {
    if !ebpf_available("limit_hit_by_an_ancestor") {
        return;
    }
    let mut w = Watcher::start(&[]);
    let parent = TestCgroup::new("anc", 64 * MIB);
    let child_dir = parent.dir.join("leaf");
    std::fs::create_dir(&child_dir).expect("mkdir leaf");
    if parent.version == memtrace::cgroup::CgroupVersion::V2 {
        parent.write("cgroup.subtree_control", "+memory");
    }
    let leaf = LeafGuard(child_dir.clone());
    let mut child = procs::alloc_in_dir(&child_dir, &["grow"]);
    let pid = child.id();
    let _ = child.wait();
    let ev = w.next_event(WAIT, |v| memtrace_tests::is_kill(v) && v["process.pid"] == pid);
    eprintln!("event: {ev}");
    assert_eq!(ev["memtrace.cgroup.path"], format!("{}/leaf", parent.rel));
    assert_eq!(ev["memtrace.oom_cgroup.path"], parent.rel.as_str());
    assert_eq!(ev["memtrace.oom_cgroup.depth"], 1);
    assert_eq!(ev["memtrace.oom_cgroup.limit_bytes"], 64 * MIB);
    assert_eq!(ev["memtrace.constraint"], "memcg");
    let verdict = ev["memtrace.verdict"].as_str().expect("verdict");
    assert!(
        verdict.contains(&format!("{} hit its 64.0 MiB limit", parent.rel)),
        "{verdict}"
    );
    drop(leaf);
    drop(parent);
    w.stop();
}

struct LeafGuard(std::path::PathBuf);

impl Drop for LeafGuard {
    fn drop(&mut self) {
        for _ in 0..200 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A cgroup filled by a tmpfs file and one filled by anonymous memory get different verdicts.
#[test]
fn tmpfs_and_anon_verdicts_differ() {
    if !ebpf_available("tmpfs_and_anon_verdicts_differ") {
        return;
    }
    let mut w = Watcher::start(&[]);
    let anon = TestCgroup::new("anon", 64 * MIB);
    let ev = kill_one(&mut w, &anon, || {});
    eprintln!("anon event: {ev}");
    assert_eq!(ev["memtrace.filled_by"], "anon");
    assert_eq!(ev["memtrace.ws_alert_would_fire"], true);
    let badness = ev["memtrace.badness.points"].as_i64().expect("badness");
    let rss_pages = ev["memtrace.badness.rss_pages"].as_i64().expect("rss pages");
    assert!(badness >= rss_pages, "badness {badness} covers rss {rss_pages}");
    assert_eq!(
        ev["memtrace.badness.totalpages"],
        64 * MIB / 4096,
        "totalpages is the memcg's limit"
    );

    let shm = TestCgroup::new("shm", 64 * MIB);
    let file = format!("/dev/shm/memtrace-test-{}", std::process::id());
    let _cleanup = RemoveFile(file.clone());
    let mut holder = procs::alloc_in(&shm, &["shm", &file, "48"], None);
    procs::wait_ready(&mut holder);
    let ev = kill_one(&mut w, &shm, || {});
    eprintln!("shm event: {ev}");
    assert_eq!(
        ev["memtrace.filled_by"], "shmem",
        "48 MiB of tmpfs in a 64 MiB cgroup"
    );
    let shmem = ev["memtrace.snapshot.shmem_bytes"].as_u64().expect("shmem");
    assert!(
        shmem >= 48 * MIB - memtrace_tests::memcg_stat_slack_bytes(),
        "{shmem}"
    );
    assert!(
        ev["memtrace.verdict"]
            .as_str()
            .is_some_and(|v| v.contains("shmem/tmpfs"))
    );
    let _ = holder.kill();
    let _ = holder.wait();
    drop(shm);
    drop(anon);
    w.stop();
}

/// A Kubernetes-shaped cgroup (systemd driver) with an OCI bundle: the event names the
/// namespace, pod, container and container id.
#[test]
fn kubernetes_pod_is_named() {
    if !ebpf_available("kubernetes_pod_is_named") {
        return;
    }
    let uid = "1a2b3c4d-5e6f-4a8b-9c0d-112233445566";
    let id = "4f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";
    let bundles = tempdir();
    let bundle = bundles.join(id);
    std::fs::create_dir_all(&bundle).expect("mkdir bundle");
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": "worker",
            "io.kubernetes.cri.sandbox-name": "payments-7d9f8-xk2p1",
            "io.kubernetes.cri.sandbox-namespace": "shop"
        }
    });
    std::fs::write(bundle.join("config.json"), config.to_string()).expect("write config.json");
    let pattern = format!("{}/{{id}}/config.json", bundles.display());
    let mut w = Watcher::start(&["--oci-bundle", &pattern]);

    let pod = format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_"));
    let ctr = format!("cri-containerd-{id}.scope");
    let cg = TestCgroup::nested(
        "k8s",
        &["kubepods.slice", "kubepods-burstable.slice", &pod, &ctr],
        64 * MIB,
    );
    let ev = kill_one(&mut w, &cg, || {});
    eprintln!("event: {ev}");
    assert_eq!(ev["k8s.namespace.name"], "shop");
    assert_eq!(ev["k8s.pod.name"], "payments-7d9f8-xk2p1");
    assert_eq!(ev["k8s.container.name"], "worker");
    assert_eq!(ev["container.id"], id);
    assert_eq!(ev["k8s.pod.uid"], uid);
    assert_eq!(ev["k8s.pod.qos_class"], "Burstable");
    assert_eq!(ev["memtrace.cgroup.path"], cg.rel.as_str());
    drop(cg);
    w.stop();
    let _ = std::fs::remove_dir_all(&bundles);
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("memtrace-test-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&d).expect("tempdir");
    d
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The cgroup is created and removed while memtrace is stopped (SIGSTOP), so no directory
/// walk can ever see it: only the cgroup_mkdir hook can name it when the kill is reported.
#[test]
fn removed_cgroup_is_still_named() {
    if !ebpf_available("removed_cgroup_is_still_named") {
        return;
    }
    let mut w = Watcher::start(&[]);
    // SAFETY: kill(2) of our own child memtrace, by pid.
    unsafe { libc::kill(w.pid() as i32, libc::SIGSTOP) };
    let cg = TestCgroup::new("gone", 64 * MIB);
    let rel = cg.rel.clone();
    let mut child = procs::alloc_in(&cg, &["grow"], None);
    let pid = child.id();
    let _ = child.wait();
    drop(cg);
    // SAFETY: as above.
    unsafe { libc::kill(w.pid() as i32, libc::SIGCONT) };
    let ev = w.next_event(WAIT, |v| memtrace_tests::is_kill(v) && v["process.pid"] == pid);
    eprintln!("event: {ev}");
    assert_eq!(ev["memtrace.cgroup.path"], rel.as_str(), "named after removal");
    assert!(
        ev.get("memtrace.snapshot.error").is_some(),
        "the snapshot says the cgroup is gone"
    );
    w.stop();
}

/// 20 kills across 4 cgroups at once: every one reported, and the counts reconcile with the
/// kernel's own (memory.oom_control / memory.events.local and /proc/vmstat).
#[test]
fn twenty_kills_in_four_cgroups_reconcile() {
    if !ebpf_available("twenty_kills_in_four_cgroups_reconcile") {
        return;
    }
    let mut w = Watcher::start(&[]);
    let cgs: Vec<TestCgroup> = (0..4)
        .map(|i| TestCgroup::new(&format!("storm{i}"), 32 * MIB))
        .collect();
    let mut children = vec![];
    for cg in &cgs {
        for _ in 0..5 {
            children.push((procs::alloc_in(cg, &["grow"], None), cg.rel.clone()));
        }
    }
    let want: HashMap<u32, String> = children.iter().map(|(c, rel)| (c.id(), rel.clone())).collect();
    for (c, _) in &mut children {
        let _ = c.wait();
    }
    let mut seen: HashMap<u32, String> = HashMap::new();
    while seen.len() < want.len() {
        let ev = w.next_event(WAIT, |v| {
            memtrace_tests::is_kill(v)
                && v["process.pid"]
                    .as_u64()
                    .is_some_and(|p| want.contains_key(&(p as u32)))
        });
        let pid = ev["process.pid"].as_u64().expect("pid") as u32;
        let path = ev["memtrace.cgroup.path"].as_str().expect("path").to_owned();
        assert!(seen.insert(pid, path).is_none(), "pid {pid} reported twice");
    }
    assert_eq!(seen, want, "every victim reported once, in its own cgroup");
    for cg in &cgs {
        let kernel = memtrace::cgroup::reconcile::cgroup_oom_kills(
            &memtrace::cgroup::MemoryHierarchy::detect().expect("hierarchy"),
            &cg.rel,
        );
        assert_eq!(kernel, Some(5), "kernel counted 5 kills in {}", cg.rel);
    }
    let rels: Vec<String> = cgs.iter().map(|c| c.rel.clone()).collect();
    drop(cgs);
    let summary = w.stop();
    assert_eq!(
        summary.kernel_seen,
        summary.delivered + summary.dropped_ringbuf_full + summary.decode_errors
    );
    // The summary covers every cgroup on the host, other workloads' kills too: memtrace saw
    // every kill on the machine (nothing dropped), so all of it must reconcile.
    assert_eq!(summary.dropped_ringbuf_full, 0, "{summary:?}");
    assert!(summary.reconciled.starts_with("ok"), "{summary:?}");
    for rel in &rels {
        assert!(
            !summary.reconciled.contains(&format!("{rel}:")),
            "{rel}: {}",
            summary.reconciled
        );
    }
}
