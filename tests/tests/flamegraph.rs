//! Flame graphs of real charging stacks: `memtrace hotspots --svg` and the one a kill keeps
//! beside its event (`--kill-flamegraphs DIR`). Each test opens the SVG and finds the test
//! allocator's allocating function in it (tests/src/bin/memtrace-alloc.rs).

use std::{process::Command, time::Duration};

use memtrace_tests::{TestCgroup, Watcher, ebpf_available, memtrace_bin, procs};

const MIB: u64 = 1 << 20;
const ALLOC_FN: &str = "memtrace_test_trickle_chunk";

/// The SVG's frame names (`<title>NAME (N samples, P%)</title>`).
fn frames(svg: &str) -> Vec<&str> {
    svg.split("<title>")
        .skip(1)
        .filter_map(|t| t.split("</title>").next())
        .collect()
}

#[test]
fn hotspots_svg_names_the_allocating_function() {
    if !ebpf_available("hotspots_svg_names_the_allocating_function") {
        return;
    }
    let cg = TestCgroup::new("svg", 1024 * MIB);
    let mut alloc = procs::alloc_in(&cg, &["trickle", "40", "512"], None);
    procs::wait_ready(&mut alloc);
    let dir = tempfile::tempdir().expect("tempdir");
    let svg_path = dir.path().join("charges.svg");
    let out = Command::new(memtrace_bin())
        .args(["hotspots", "--cgroup", &cg.rel, "--duration", "3s", "--svg"])
        .arg(&svg_path)
        .output()
        .expect("run memtrace hotspots");
    let _ = alloc.kill();
    let _ = alloc.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("memtrace: flame graph of"), "{err}");
    let svg = std::fs::read_to_string(&svg_path).expect("the SVG");
    assert!(
        svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    let names = frames(&svg);
    assert!(
        names.iter().any(|n| n.contains(ALLOC_FN)),
        "{ALLOC_FN} among the frames: {names:#?}"
    );
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("__mem_cgroup_charge") || n.starts_with("charge_memcg")),
        "the kernel's charge path too: {names:#?}"
    );
    assert!(
        svg.contains(&format!("memory charges in {}", cg.rel)),
        "titled by cgroup"
    );
    drop(cg);
}

#[test]
fn a_kill_keeps_its_flame_graph() {
    if !ebpf_available("a_kill_keeps_its_flame_graph") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = Watcher::start(&["--kill-flamegraphs", dir.path().to_str().expect("utf-8")]);
    let cg = TestCgroup::new("killsvg", 64 * MIB);
    // 8 MiB/s into 64 MiB: killed after about 8 s, alive for several charge polls, so its
    // stack is symbolized while it runs.
    let mut alloc = procs::alloc_in(&cg, &["trickle", "8", "1000"], Some(1000));
    let pid = alloc.id();
    let _ = alloc.wait();
    let kill = w.next_event(Duration::from_secs(60), |v| {
        v["event.name"] == "memtrace.oom_kill" && v["process.pid"] == pid
    });
    let path = kill["memtrace.flamegraph"]
        .as_str()
        .unwrap_or_else(|| panic!("no memtrace.flamegraph in {kill}"));
    assert!(path.starts_with(dir.path().to_str().expect("utf-8")), "{path}");
    assert!(path.ends_with(&format!("-{pid}.svg")), "{path}");
    // Written right after the event went out.
    let mut svg = String::new();
    for _ in 0..50 {
        if let Ok(s) = std::fs::read_to_string(path) {
            svg = s;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let names = frames(&svg);
    assert!(
        names.iter().any(|n| n.contains(ALLOC_FN)),
        "{ALLOC_FN} in the kill's flame graph: {names:#?}"
    );
    assert!(
        svg.contains(&format!("the OOM kill of pid {pid}")),
        "titled by the kill"
    );
    drop(cg);
    w.stop();
}
