//! Flame graphs of real charging stacks: `memtrace hotspots --svg` and the one a kill keeps
//! beside its event (`--kill-flamegraphs DIR`). Each test opens the SVG and finds the test
//! allocator's allocating function in it (tests/src/bin/memtrace-alloc.rs). And the stacks of
//! processes that are gone before they are symbolized keep their names.

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

/// Reads `hotspots`' stderr until it says it is sampling (attached): the lines still to come,
/// and what it printed so far.
fn until_sampling(
    hotspots: &mut std::process::Child,
) -> (
    std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
    String,
) {
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        hotspots.stderr.take().expect("piped stderr"),
    ));
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.expect("stderr");
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("sampling charges") {
            break;
        }
    }
    (lines, seen)
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
            // mm/memcontrol.c: charge_memcg (5.15+), __mem_cgroup_charge, mem_cgroup_charge (5.10).
            .any(|n| ["__mem_cgroup_charge", "charge_memcg", "mem_cgroup_charge"]
                .iter()
                .any(|f| n.starts_with(f))),
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

/// Processes killed within a second of starting (`grow` into 48 MiB), one after another while
/// `hotspots` samples: each is gone before the once-a-second symbolization of live processes
/// can see it (before the mappings recorder, most of their rows were raw addresses, one per
/// pid: ASLR gives each run other addresses). Every one of them is named, and being the same
/// stack they are one row.
#[test]
fn stacks_of_processes_already_gone_are_named() {
    if !ebpf_available("stacks_of_processes_already_gone_are_named") {
        return;
    }
    const RUNS: usize = 6;
    let cg = TestCgroup::new("gone", 48 * MIB);
    // 10 s: room for six kills in a TCG guest too.
    let mut hotspots = Command::new(memtrace_bin())
        .args([
            "hotspots",
            "--cgroup",
            &cg.rel,
            "--duration",
            "10s",
            "--output",
            "json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run memtrace hotspots");
    let (err_lines, mut err) = until_sampling(&mut hotspots);
    let started = std::time::Instant::now();
    let mut pids = Vec::new();
    for _ in 0..RUNS {
        let mut p = procs::alloc_in(&cg, &["grow"], None);
        pids.push(p.id());
        let status = p.wait().expect("wait");
        assert!(!status.success(), "grow ends only by its OOM kill: {status:?}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "the {RUNS} runs took {:?}, longer than the sampling window",
        started.elapsed()
    );
    let out = hotspots.wait_with_output().expect("hotspots output");
    err.extend(err_lines.map_while(Result::ok).map(|l| l + "\n"));
    assert!(out.status.success(), "{err}");
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON rows");
    let ours: Vec<&serde_json::Value> = rows.iter().filter(|r| r["comm"] == "memtrace-alloc").collect();
    let total: u64 = ours.iter().filter_map(|r| r["count"].as_u64()).sum();
    let named = ours
        .iter()
        .find(|r| {
            r["user_stack"].as_array().is_some_and(|f| {
                f.iter()
                    .any(|f| f.as_str() == Some("memtrace_test_allocate_chunk"))
            })
        })
        .unwrap_or_else(|| panic!("no row names memtrace_test_allocate_chunk: {rows:#?}"));
    let named_count = named["count"].as_u64().unwrap_or(0);
    // Nearly every sample: a sample taken during exec (before the new mappings) may stay an
    // address. Every run in the named row: in the emulated guests the first sample of a run
    // used to come too close to its kill for its maps to be read, and a whole run kept
    // addresses (one run in six, in some guest runs); each run is now recorded at its exec.
    let (num, den) = (9, 10);
    assert!(
        named_count * den >= total * num,
        "{named_count} of {total} samples named: {rows:#?}"
    );
    let runs_named = RUNS;
    assert!(
        named["pids"].as_u64().is_some_and(|n| n >= runs_named as u64),
        "at least {runs_named} of the {RUNS} runs ({pids:?}) in one row: {rows:#?}"
    );
    drop(cg);
}

/// A process that execs in the asked cgroup has its mappings read at once (the `exec` hook),
/// not only when one of its stacks is first sampled: a fast grower killed within milliseconds
/// of its first sample (too soon for the read in an emulated guest) is still named. One stack
/// in a million charges: this process, which charges a few hundred pages, is never sampled,
/// so only the record at its exec can read it.
#[test]
fn a_process_is_recorded_when_it_execs_in_the_asked_cgroup() {
    if !ebpf_available("a_process_is_recorded_when_it_execs_in_the_asked_cgroup") {
        return;
    }
    let cg = TestCgroup::new("exec", 64 * MIB);
    let mut hotspots = Command::new(memtrace_bin())
        .args(["hotspots", "--cgroup", &cg.rel, "--duration", "3s"])
        .args(["--sample-every", "1000000"])
        .env(
            "RUST_LOG",
            "memtrace::charges::task_maps=debug,memtrace::kernel=info",
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run memtrace hotspots");
    let (err_lines, mut err) = until_sampling(&mut hotspots);
    let mut waiter = procs::alloc_in(&cg, &["hold", "1"], None);
    procs::wait_ready(&mut waiter);
    // Alive for a moment: the read follows the exec record on the daemon's own thread, which
    // a loaded machine (the other tests of this file run beside it) may not run at once.
    std::thread::sleep(Duration::from_secs(1));
    let pid = waiter.id();
    let _ = waiter.kill();
    let _ = waiter.wait();
    let status = hotspots.wait().expect("hotspots");
    err.extend(err_lines.map_while(Result::ok).map(|l| l + "\n"));
    assert!(status.success(), "{err}");
    let want = format!("pid {pid} recorded at exec: ");
    let line = err
        .lines()
        .find(|l| l.contains(&want))
        .unwrap_or_else(|| panic!("no {want:?} in hotspots' log:\n{err}"));
    let mappings: usize = line
        .rsplit(": ")
        .next()
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(mappings > 0, "the binary is mapped at exec: {line}");
}
