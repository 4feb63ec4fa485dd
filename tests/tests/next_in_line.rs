//! What would have avoided the kill: the surviving tasks of the OOM cgroup ranked as the
//! kernel's oom_badness() would rank them, against a cgroup whose tasks the test made.

use std::time::Duration;

use memtrace_tests::{TestCgroup, Watcher, ebpf_available, procs};

const MIB: u64 = 1 << 20;

/// Three holders (8 MiB adj 0, 16 MiB adj 0, 4 MiB adj 500) and a grower (adj 1000, the
/// victim) in a 64 MiB cgroup: next in line is the 4 MiB holder (its adj adds 500 × 16384/1000
/// pages), then 16 MiB, then 8 MiB; each badness is its rss pages + adj × 16 within the pages
/// of the binary itself.
#[test]
fn survivors_ranked_as_the_kernel_would() {
    if !ebpf_available("survivors_ranked_as_the_kernel_would") {
        return;
    }
    let mut w = Watcher::start(&[]);
    let cg = TestCgroup::new("nextinline", 64 * MIB);
    let mut holders = vec![];
    for (mib, adj) in [(8u64, 0i32), (16, 0), (4, 500)] {
        let mut h = procs::alloc_in(&cg, &["hold", &mib.to_string()], Some(adj));
        procs::wait_ready(&mut h);
        holders.push((h, mib, adj));
    }
    let mut grower = procs::alloc_in(&cg, &["grow"], Some(1000));
    let pid = grower.id();
    let _ = grower.wait();
    let ev = w.next_event(Duration::from_secs(60), |v| {
        memtrace_tests::is_kill(v) && v["process.pid"] == pid
    });
    eprintln!("event: {ev}");
    let next = ev["memtrace.next_in_line"].as_array().expect("next_in_line");
    let pids: Vec<u64> = next.iter().map(|c| c["pid"].as_u64().expect("pid")).collect();
    let want: Vec<u64> = [2, 1, 0].iter().map(|&i| u64::from(holders[i].0.id())).collect();
    assert_eq!(pids, want, "ranked 4 MiB+adj 500, then 16 MiB, then 8 MiB");
    assert_eq!(ev["memtrace.next_in_line.tasks"], 3);
    assert_eq!(ev["memtrace.next_in_line.exempt"], 0);
    let totalpages = ev["memtrace.badness.totalpages"].as_u64().expect("totalpages");
    for (c, i) in next.iter().zip([2usize, 1, 0]) {
        let (_, mib, adj) = &holders[i];
        let held = mib * MIB / 4096;
        let adj_points = i64::from(*adj) * (totalpages / 1000) as i64;
        let points = c["badness"].as_i64().expect("badness");
        let rss = c["rss_pages"].as_u64().expect("rss");
        assert!(
            rss >= held && rss < held + 1024,
            "rss {rss} pages for {mib} MiB held"
        );
        // What is left is page-table pages (no swap here): a few dozen at most.
        let rest = points - rss as i64 - adj_points;
        assert!(
            (0..=64).contains(&rest),
            "badness {points} = rss {rss} + adj {adj_points} + page tables {rest}"
        );
    }
    let verdict = ev["memtrace.verdict"].as_str().expect("verdict");
    assert!(
        verdict.contains(&format!("next in line: pid {}", want[0])),
        "{verdict}"
    );
    assert!(ev["memtrace.avoid.extra_limit_bytes"].as_u64().is_some(), "{ev}");
    for (mut h, _, _) in holders {
        let _ = h.kill();
        let _ = h.wait();
    }
    drop(cg);
    w.stop();
}
