//! Real OOM kills in real memory cgroups, observed through `memtrace watch --output json`.

use std::time::Duration;

use memtrace_tests::{TestCgroup, Watcher, ebpf_available, procs};
use serde_json::Value;

const LIMIT: u64 = 64 << 20;
const WAIT: Duration = Duration::from_secs(60);

fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    &v[key]
}

/// One allocator in a 64 MiB cgroup; the event must name it, its cgroup and its size.
fn allocator_is_reported(variant: Option<&str>, tag: &str) {
    allocator_is_reported_with(variant, &[], tag);
}

/// As [`allocator_is_reported`], with more `--variant`s forced (other hooks).
fn allocator_is_reported_with(variant: Option<&str>, more: &[&str], tag: &str) {
    if variant.is_some_and(|v| memtrace_tests::variant_unavailable(v).is_some()) {
        return;
    }
    let mut args = vec![];
    if let Some(v) = variant {
        args.extend(["--variant", v]);
    }
    for m in more {
        args.extend(["--variant", m]);
    }
    let mut w = Watcher::start(&args);
    let cg = TestCgroup::new(tag, LIMIT);
    let mut child = procs::alloc_in(&cg, &["grow"], None);
    let pid = child.id();
    let status = child.wait().expect("wait allocator");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "allocator was SIGKILLed"
    );

    let ev = w.next_event(WAIT, |v| memtrace_tests::is_kill(v) && v["process.pid"] == pid);
    eprintln!("event: {ev}");
    assert_eq!(field(&ev, "event.name"), "memtrace.oom_kill");
    assert_eq!(field(&ev, "process.executable.name"), procs::ALLOC_COMM);
    assert_eq!(field(&ev, "memtrace.cgroup.path"), cg.rel.as_str());
    assert_eq!(
        field(&ev, "memtrace.trigger.pid"),
        pid,
        "the allocator triggered its own kill"
    );
    let anon = field(&ev, "memtrace.victim.anon_rss_bytes")
        .as_u64()
        .expect("anon rss");
    assert!(
        anon * 10 >= LIMIT * 8,
        "anon rss {anon} is under 80% of the {LIMIT} limit"
    );
    assert!(anon <= LIMIT + (1 << 20), "anon rss {anon} over the limit");
    assert_eq!(field(&ev, "memtrace.memcg.limit_bytes"), LIMIT);
    // Where oom_kill_process is hooked (the VMs set this), the kill carries the kernel's own
    // view: a memcg constraint, totalpages = the 64 MiB limit in pages, the chosen points.
    if std::env::var("MEMTRACE_EXPECT_OOM_CONTEXT").is_ok_and(|v| v == "1") {
        assert_eq!(field(&ev, "memtrace.oom.constraint"), "memcg", "{ev}");
        assert_eq!(field(&ev, "memtrace.oom.totalpages"), LIMIT / 4096);
        assert!(
            field(&ev, "memtrace.oom.chosen_points")
                .as_i64()
                .is_some_and(|p| p > 0)
        );
        assert_eq!(field(&ev, "memtrace.badness.totalpages"), LIMIT / 4096);
    }
    let delay = field(&ev, "memtrace.emit_delay_us").as_u64().expect("delay");
    let budget = 100_000 * memtrace_tests::time_scale();
    assert!(
        delay < budget,
        "event emitted {delay} us after the kill (budget {budget} us)"
    );
    if let Some(v) = variant {
        assert_eq!(
            field(&ev, "memtrace.hook"),
            v.split('=').nth(1).unwrap_or_default()
        );
    }
    assert!(ev["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));

    drop(cg);
    let ours = w.bpf_ids();
    assert!(
        !ours.progs.is_empty() && !ours.links.is_empty(),
        "memtrace holds its programs: {ours:?}"
    );
    let s = w.stop();
    assert_eq!(
        s.kernel_seen,
        s.delivered + s.dropped_ringbuf_full + s.decode_errors,
        "{s:?}"
    );
    assert!(s.delivered >= 1);
    // The kernel frees programs and maps asynchronously once their last fd is closed.
    let left = memtrace_tests::wait_until_freed(&ours, Duration::from_secs(10));
    assert!(
        left.is_empty(),
        "BPF objects left in the kernel after exit: {left:?}"
    );
}

#[test]
fn oom_kill_reported_default_hook() {
    if ebpf_available("oom_kill_reported_default_hook") {
        allocator_is_reported(None, "default");
    }
}

#[test]
fn oom_kill_reported_tp_btf() {
    if ebpf_available("oom_kill_reported_tp_btf") {
        allocator_is_reported(Some("oom_victim=tp_btf"), "tpbtf");
    }
}

#[test]
fn oom_kill_reported_raw_tp() {
    if ebpf_available("oom_kill_reported_raw_tp") {
        allocator_is_reported(Some("oom_victim=raw_tp"), "raw");
    }
}

#[test]
fn oom_kill_reported_tracepoint() {
    if ebpf_available("oom_kill_reported_tracepoint") {
        allocator_is_reported(Some("oom_victim=tracepoint"), "tp");
    }
}

/// A big idle process (oom_score_adj 1000) and a small allocator share a cgroup: the idle one
/// is killed, in the allocator's context. Victim and trigger must not be confused.
/// `exact_path`: the variant knows the victim's task (all but the tracepoint); the plain tracepoint
/// only has its pid and may not name the cgroup of a victim that is already exiting, but must
/// never name a wrong one.
fn bystander_is_named(variant: &str, tag: &str, exact_path: bool) {
    if memtrace_tests::variant_unavailable(variant).is_some() {
        return;
    }
    // A record without the field (5.10: pid only) leaves it out for a bystander: never guessed.
    let record_missing = if exact_path {
        vec![]
    } else {
        memtrace_tests::mark_victim_record_missing()
    };
    let mut w = Watcher::start(&["--variant", variant]);
    let cg = TestCgroup::new(tag, LIMIT);
    let mut idle = procs::alloc_in(&cg, &["hold", "40"], Some(1000));
    procs::wait_ready(&mut idle);
    let mut alloc = procs::alloc_in(&cg, &["grow"], None);
    let (idle_pid, alloc_pid) = (idle.id(), alloc.id());

    let ev = w.next_event(WAIT, |v| {
        memtrace_tests::is_kill(v) && v["process.pid"] == idle_pid
    });
    eprintln!("event: {ev}");
    if exact_path {
        assert_eq!(field(&ev, "memtrace.cgroup.path"), cg.rel.as_str());
        assert_eq!(field(&ev, "memtrace.cgroup.path_source"), "kernel");
    } else {
        let path = &ev["memtrace.cgroup.path"];
        assert!(
            path.is_null() || path == cg.rel.as_str(),
            "wrong victim cgroup: {path}"
        );
    }
    assert_eq!(field(&ev, "memtrace.trigger.pid"), alloc_pid);
    assert_eq!(field(&ev, "memtrace.trigger.cgroup.path"), cg.rel.as_str());
    assert_eq!(field(&ev, "memtrace.trigger.is_victim"), false);
    if record_missing.iter().any(|f| f == "oom_score_adj") {
        assert!(ev["memtrace.victim.oom_score_adj"].is_null(), "{ev}");
    } else {
        assert_eq!(field(&ev, "memtrace.victim.oom_score_adj"), 1000);
    }
    if record_missing.iter().any(|f| f == "anon_rss") {
        assert!(ev["memtrace.victim.anon_rss_bytes"].is_null(), "{ev}");
    } else {
        let anon = field(&ev, "memtrace.victim.anon_rss_bytes")
            .as_u64()
            .expect("anon");
        // The kernel's rss counters are approximate: before 6.2 each task caches up to 64 page
        // events (SPLIT_RSS_COUNTING), since then they are per-CPU counters. 6.1 reported
        // 40884 kB for these 40 MiB, as its own "Killed process" line did.
        assert!(anon >= 39 << 20, "the idle victim holds its 40 MiB: {anon}");
    }
    let _ = idle.wait();
    let _ = alloc.kill();
    let _ = alloc.wait();
    drop(cg);
    w.stop();
}

#[test]
fn bystander_victim_tp_btf() {
    if ebpf_available("bystander_victim_tp_btf") {
        bystander_is_named("oom_victim=tp_btf", "bys-btf", true);
    }
}

#[test]
fn bystander_victim_raw_tp() {
    if ebpf_available("bystander_victim_raw_tp") {
        bystander_is_named("oom_victim=raw_tp", "bys-raw", true);
    }
}

/// fentry / kprobe on mark_oom_victim() (feeding the tracepoint program): what carries the
/// victim's task on kernels whose tracepoint passes a pid only (5.10), where a bystander victim
/// is exactly what the plain tracepoint cannot read. (A self-kill under every variant:
/// scenarios_threads.rs.) This host refuses fentry and has no kprobes: the tests print
/// `memtrace probes`' reason.
#[test]
fn bystander_victim_fentry() {
    if ebpf_available("bystander_victim_fentry") {
        bystander_is_named("oom_victim=fentry", "bys-fentry", true);
    }
}

#[test]
fn bystander_victim_kprobe() {
    if ebpf_available("bystander_victim_kprobe") {
        bystander_is_named("oom_victim=kprobe", "bys-kprobe", true);
    }
}

#[test]
fn bystander_victim_tracepoint() {
    if ebpf_available("bystander_victim_tracepoint") {
        bystander_is_named("oom_victim=tracepoint", "bys-tp", false);
    }
}

/// The kprobe variants of `oom_kill_process` and the charge path, forced: where the kernel has
/// kprobes (the VMs) the kill must carry the OOM killer's context through them too.
#[test]
fn oom_kill_reported_with_kprobe_context() {
    if !ebpf_available("oom_kill_reported_with_kprobe_context") {
        return;
    }
    let has_kprobes = [
        "/sys/kernel/tracing/kprobe_events",
        "/sys/kernel/debug/tracing/kprobe_events",
    ]
    .iter()
    .any(|p| std::path::Path::new(p).exists());
    if !has_kprobes {
        eprintln!(
            "\n!!! SKIPPED oom_kill_reported_with_kprobe_context: this kernel has no kprobes (the VM matrix covers it)\n"
        );
        return;
    }
    allocator_is_reported_with(None, &["oom_context=kprobe", "charge=kprobe"], "kprobe");
}
