//! Bounded Prometheus series, for real: a cgroup with a real OOM kill keeps its series while it
//! exists, and loses them `metrics.forget_after` after it is removed (a crash-looping pod would
//! otherwise add a `memtrace_oom_kills_total` series per dead container forever).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use memtrace_tests::{
    TestCgroup, Watcher, ebpf_available, procs,
    servers::{http_get, wait_for},
};

const WAIT: Duration = Duration::from_secs(60);

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body
}

fn kill_in(cg: &TestCgroup) -> u32 {
    let mut child = procs::alloc_in(cg, &["grow"], None);
    let pid = child.id();
    let status = child.wait().expect("wait allocator");
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
    pid
}

/// Lines of the exposition that belong to `cgroup`.
fn series_of(text: &str, cgroup: &str) -> Vec<String> {
    let needle = format!("cgroup=\"{cgroup}\"");
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains(&needle))
        .map(str::to_owned)
        .collect()
}

#[test]
fn series_of_a_removed_cgroup_go_after_forget_after() {
    if !ebpf_available("series_of_a_removed_cgroup_go_after_forget_after") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("memtrace.toml");
    std::fs::write(
        &cfg,
        "[metrics]\nenabled = true\nlisten = \"127.0.0.1:0\"\nforget_after = \"3s\"\n",
    )
    .expect("config");
    let mut w = Watcher::start(&["--config", cfg.to_str().expect("utf-8 path")]);
    let addr: SocketAddr = w
        .stderr_lines
        .iter()
        .find_map(|l| l.strip_prefix("memtrace: metrics on http://"))
        .and_then(|l| l.strip_suffix("/metrics"))
        .and_then(|a| a.parse().ok())
        .expect("metrics address");

    let gone = TestCgroup::new("series-gone", 64 << 20);
    let kept = TestCgroup::new("series-kept", 64 << 20);
    for cg in [&gone, &kept] {
        let pid = kill_in(cg);
        w.next_event(WAIT, |v| memtrace_tests::is_kill(v) && v["process.pid"] == pid);
    }
    let kill = |cg: &TestCgroup| {
        format!(
            "memtrace_oom_kills_total{{namespace=\"\",pod=\"\",container=\"\",container_id=\"\",cgroup=\"{}\",constraint=\"memcg\"}} 1",
            cg.rel
        )
    };
    let text = wait_for("both kills in /metrics", WAIT, || {
        let t = scrape(addr);
        (t.contains(&kill(&gone)) && t.contains(&kill(&kept))).then_some(t)
    });
    let before = series_of(&text, &gone.rel);
    assert!(before.len() >= 4, "kill counter and snapshot gauges: {before:#?}");

    // Still there well into forget_after while the cgroup exists...
    // (The charge worker may add the cgroup's charge counters meanwhile.)
    std::thread::sleep(Duration::from_secs(4));
    let still = series_of(&scrape(addr), &gone.rel);
    assert!(
        still.contains(&kill(&gone)) && still.len() >= before.len(),
        "{still:#?}"
    );
    // ...and gone within forget_after (3 s) plus a sweep (1 s) of its removal.
    let rel = gone.rel.clone();
    drop(gone);
    let removed = Instant::now();
    wait_for(
        "the removed cgroup's series to go",
        Duration::from_secs(20),
        || series_of(&scrape(addr), &rel).is_empty().then_some(()),
    );
    let took = removed.elapsed();
    eprintln!("series of {rel} dropped {took:?} after rmdir");
    assert!(
        took >= Duration::from_secs(2),
        "not before forget_after: {took:?}"
    );
    let text = scrape(addr);
    assert!(
        text.contains(&kill(&kept)),
        "the live cgroup keeps its series: {text}"
    );
    drop(kept);
    w.stop();
}
