//! Nothing is lost without saying so: a full OOM ring buffer drops records, the kernel counts
//! them, memtrace logs `LOST n` (at most once a second) and its exit summary balances:
//! produced (kernel_seen) == delivered + dropped.

use std::{os::unix::process::ExitStatusExt as _, time::Duration};

use memtrace_common::{oom::OOM_VICTIM_RECORD_LEN, oom_context::OOM_CONTEXT_RECORD_LEN};
use memtrace_tests::{TestCgroup, Watcher, ebpf_available, procs};

const MIB: u64 = 1 << 20;
/// A 4096-byte ring: 14 victim records (280 bytes + an 8-byte header each), or 11 where
/// oom_kill_process is hooked too (its 64-byte context record precedes each victim's).
const RING_BYTES: &str = "4096";
const CGROUPS: usize = 4;
const KILLS_PER_CGROUP: usize = 12;

/// `LOST <n> OOM events` -> n.
fn lost_count(line: &str) -> Option<u64> {
    line.split_once("LOST ")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn full_ring_buffer_drops_are_counted_and_logged() {
    if !ebpf_available("full_ring_buffer_drops_are_counted_and_logged") {
        return;
    }
    let mut w = Watcher::start(&["--oom-ring-bytes", RING_BYTES]);
    let with_context = w.stderr_lines.iter().any(|l| l.contains("oom_context via"));
    let per_kill = OOM_VICTIM_RECORD_LEN
        + 8
        + if with_context {
            OOM_CONTEXT_RECORD_LEN + 8
        } else {
            0
        };
    let fit = (RING_BYTES.parse::<usize>().expect("ring bytes") / per_kill) as u64;
    // Stopped, memtrace reads nothing: the kernel's records pile up in the ring.
    w.signal(libc::SIGSTOP);
    let cgroups: Vec<TestCgroup> = (0..CGROUPS)
        .map(|i| TestCgroup::new(&format!("drop{i}"), 16 * MIB))
        .collect();
    let killed: usize = std::thread::scope(|s| {
        let handles: Vec<_> = cgroups
            .iter()
            .map(|cg| {
                s.spawn(move || {
                    (0..KILLS_PER_CGROUP)
                        .filter(|_| {
                            let mut child = procs::alloc_in(cg, &["grow"], None);
                            child.wait().is_ok_and(|st| st.signal() == Some(libc::SIGKILL))
                        })
                        .count()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("killer thread"))
            .sum()
    });
    assert_eq!(
        killed,
        CGROUPS * KILLS_PER_CGROUP,
        "every allocator was OOM-killed"
    );
    w.signal(libc::SIGCONT);
    let lost_line = w.wait_stderr("LOST ", Duration::from_secs(10));
    // Let it drain and report whatever came after (a mismatch is logged once it has persisted
    // over two checks, a second apart), then stop it while our cgroups still exist.
    w.wait_stderr("RECONCILE: cgroup", Duration::from_secs(10));
    let rels: Vec<String> = cgroups.iter().map(|c| c.rel.clone()).collect();
    let exit = w.kill_with(libc::SIGTERM, Duration::from_secs(10));
    drop(cgroups);
    assert!(exit.status.success(), "{exit:?}");
    let s = exit.summary.expect("exit summary");
    eprintln!("{killed} kills while stopped; {s:?}; {lost_line}");

    assert!(s.dropped_ringbuf_full > 0, "nothing dropped: {s:?}");
    assert!(s.kernel_seen >= killed as u64, "the kernel saw every kill: {s:?}");
    assert_eq!(
        s.kernel_seen,
        s.delivered + s.dropped_ringbuf_full + s.decode_errors,
        "produced == delivered + dropped: {s:?}"
    );
    // memtrace reported fewer kills than the kernel counted, and says so: in its exit summary,
    // naming our own cgroups, and in a RECONCILE line while it ran.
    assert!(s.reconciled.starts_with("MISMATCH"), "{s:?}");
    let ours: Vec<&str> = rels
        .iter()
        .filter(|r| s.reconciled.contains(&format!("{r}:")))
        .map(String::as_str)
        .collect();
    assert!(!ours.is_empty(), "none of our cgroups in {s:?}");
    let reconcile: Vec<&String> = exit
        .stderr
        .iter()
        .filter(|l| l.contains("RECONCILE: cgroup"))
        .collect();
    assert!(
        ours.iter()
            .any(|r| reconcile.iter().any(|l| l.contains(&format!("cgroup {r}:")))),
        "no RECONCILE line for {ours:?}: {reconcile:#?}"
    );
    // The ring held what it could: every record that fitted was delivered.
    assert!(s.delivered >= fit, "{fit} fit: {s:?}");
    // Rate-limited: one line per check (once a second); all the drops happened during the
    // stop, so one line reports them all, and the lines add up to the summary's count.
    let lost_lines: Vec<&String> = exit.stderr.iter().filter(|l| l.contains("LOST ")).collect();
    let lost_total: u64 = lost_lines.iter().filter_map(|l| lost_count(l)).sum();
    assert_eq!(lost_lines.len(), 1, "{lost_lines:#?}");
    assert_eq!(lost_total, s.dropped_ringbuf_full, "{lost_lines:#?}");
    assert!(
        lost_lines[0].contains("--oom-ring-bytes"),
        "says what to do: {}",
        lost_lines[0]
    );
}
