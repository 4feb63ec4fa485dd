//! memtrace-soak: real OOM kills, round after round, while `memtrace watch` runs, with a hot
//! charge path beside them (stress-ng --vm mapping and unmapping in another cgroup). Every
//! 10 s it samples the daemon's RSS and fd count. At the end it checks that every kill was
//! reported (the allocators it saw SIGKILLed, and the kernel's own per-cgroup oom_kill
//! counters), that nothing was dropped, and that the fd count did not grow; it prints the
//! series. Run it with `cargo xtask soak --minutes N`.
//!
//! memtrace-soak --minutes N [--kill-cgroups K] [--round-ms MS]
//!
//! Cgroups are `memtrace-test-soak-*`, removed at the end; only processes it started are
//! killed. Exit status 0: all checks passed; 1: a check failed; 2: usage or cannot run.

use std::{
    collections::{BTreeMap, HashSet},
    os::unix::process::ExitStatusExt as _,
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use memtrace::cgroup::{CgroupVersion, stats::parse_flat_keyed};
use memtrace_tests::{FdCensus, TestCgroup, Watcher, ebpf_available, procs};

const MIB: u64 = 1 << 20;
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

struct Args {
    minutes: f64,
    kill_cgroups: usize,
    round: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        minutes: 1.0,
        kill_cgroups: 3,
        round: Duration::from_millis(1000),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--minutes" => a.minutes = value()?.parse().map_err(|e| format!("--minutes: {e}"))?,
            "--kill-cgroups" => {
                a.kill_cgroups = value()?.parse().map_err(|e| format!("--kill-cgroups: {e}"))?
            }
            "--round-ms" => {
                a.round = Duration::from_millis(value()?.parse().map_err(|e| format!("--round-ms: {e}"))?)
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.minutes <= 0.0 || a.kill_cgroups == 0 {
        return Err("--minutes and --kill-cgroups must be positive".into());
    }
    Ok(a)
}

#[derive(Debug, Clone)]
struct Sample {
    t: Duration,
    rss_kib: u64,
    fds: FdCensus,
    kills: usize,
    reported: usize,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The kernel's count of OOM kills in this cgroup (v1 memory.oom_control, v2 memory.events).
fn kernel_oom_kills(cg: &TestCgroup) -> Option<u64> {
    let file = match cg.version {
        CgroupVersion::V1 => "memory.oom_control",
        CgroupVersion::V2 => "memory.events",
    };
    let text = std::fs::read_to_string(cg.dir.join(file)).ok()?;
    parse_flat_keyed(&text).ok()?.get("oom_kill").copied()
}

/// The kills memtrace reported in the soak's own cgroups (other kills on the host are skipped).
#[derive(Default)]
struct Reported {
    paths: HashSet<String>,
    pids: HashSet<u32>,
    by_cgroup: BTreeMap<String, u64>,
}

impl Reported {
    fn collect(&mut self, w: &mut Watcher) {
        for ev in w.drain_events() {
            let Some(path) = ev["memtrace.cgroup.path"].as_str() else {
                continue;
            };
            // Kills only (pre-OOM warnings name the cgroup too), and not a victim marked without
            // a kill (already exiting), which the kernel does not count either.
            if ev["event.name"] != "memtrace.oom_kill" || ev["memtrace.victim.exiting"] == true {
                continue;
            }
            if self.paths.contains(path) {
                *self.by_cgroup.entry(path.to_owned()).or_default() += 1;
                if let Some(p) = ev["process.pid"].as_u64() {
                    self.pids.insert(p as u32);
                }
            }
        }
    }
}

/// How hot the hot cgroup's charge path was: pages charged (v1 pgpgin) or faults (v2 pgfault).
fn hot_charge_count(cg: &TestCgroup) -> String {
    let stat = std::fs::read_to_string(cg.dir.join("memory.stat")).unwrap_or_default();
    let stat = parse_flat_keyed(&stat).unwrap_or_default();
    match (stat.get("total_pgpgin"), stat.get("pgfault")) {
        (Some(n), _) => format!("{n} pages charged (pgpgin)"),
        (None, Some(n)) => format!("{n} page faults"),
        _ => "charge count unknown".to_owned(),
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "memtrace-soak: {e}\nusage: memtrace-soak --minutes N [--kill-cgroups K] [--round-ms MS]"
            );
            return ExitCode::from(2);
        }
    };
    if !ebpf_available("memtrace-soak") {
        return ExitCode::from(2);
    }
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let mut w = Watcher::start(&[]);
    let pid = w.pid();
    let kill_cgs: Vec<TestCgroup> = (0..args.kill_cgroups)
        .map(|i| TestCgroup::new(&format!("soak-kill{i}"), 32 * MIB))
        .collect();
    let hot = TestCgroup::new("soak-hot", 512 * MIB);
    let timeout = format!("{}s", duration.as_secs() + 120);
    let mut stress = procs::spawn_in(
        &hot,
        Command::new("stress-ng").args([
            "--vm",
            "1",
            "--vm-bytes",
            "128M",
            "--timeout",
            &timeout,
            "--quiet",
        ]),
        None,
    );
    eprintln!(
        "memtrace-soak: {:.1} min, memtrace pid {pid}, {} kill cgroups (32 MiB) + stress-ng --vm in {} (stress-ng pid {})",
        args.minutes,
        kill_cgs.len(),
        hot.rel,
        stress.id()
    );

    let mut reported = Reported {
        paths: kill_cgs.iter().map(|c| c.rel.clone()).collect(),
        ..Reported::default()
    };
    let start = Instant::now();
    let mut killed_pids = vec![];
    let mut not_killed = 0usize;
    let mut samples = vec![];
    let mut next_sample = Duration::ZERO;
    while start.elapsed() < duration {
        let round_start = Instant::now();
        let children: Vec<_> = kill_cgs
            .iter()
            .map(|cg| procs::alloc_in(cg, &["grow"], None))
            .collect();
        for mut child in children {
            let p = child.id();
            match child.wait() {
                Ok(st) if st.signal() == Some(libc::SIGKILL) => killed_pids.push(p),
                _ => not_killed += 1,
            }
        }
        reported.collect(&mut w);
        if start.elapsed() >= next_sample {
            let s = Sample {
                t: start.elapsed(),
                rss_kib: rss_kib(pid),
                fds: w.fd_census(),
                kills: killed_pids.len(),
                reported: reported.pids.len(),
            };
            eprintln!(
                "memtrace-soak: t={:>5.0}s rss={} KiB fds={} ({} objects, {} reads, {} files) kills={} reported={}",
                s.t.as_secs_f64(),
                s.rss_kib,
                s.fds.total(),
                s.fds.objects,
                s.fds.reads,
                s.fds.files.len(),
                s.kills,
                s.reported
            );
            samples.push(s);
            next_sample += SAMPLE_EVERY;
        }
        if let Some(rest) = args.round.checked_sub(round_start.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    // The last events, then the kernel's counters while the cgroups still exist.
    std::thread::sleep(Duration::from_secs(3));
    reported.collect(&mut w);
    samples.push(Sample {
        t: start.elapsed(),
        rss_kib: rss_kib(pid),
        fds: w.fd_census(),
        kills: killed_pids.len(),
        reported: reported.pids.len(),
    });
    let kernel: BTreeMap<String, Option<u64>> = kill_cgs
        .iter()
        .map(|c| (c.rel.clone(), kernel_oom_kills(c)))
        .collect();
    let hot_kills = kernel_oom_kills(&hot);
    let hot_charged = hot_charge_count(&hot);
    // SAFETY: kill(2) of the stress-ng we started, by its pid; its workers die with the cgroup.
    unsafe { libc::kill(stress.id() as i32, libc::SIGTERM) };
    let _ = stress.wait();
    drop(hot);
    drop(kill_cgs);
    let exit = w.kill_with(libc::SIGTERM, Duration::from_secs(30));

    println!("\nmemtrace-soak series (every {} s):", SAMPLE_EVERY.as_secs());
    println!(
        "{:>7} {:>10} {:>5} {:>8} {:>6} {:>6} {:>7} {:>9}",
        "t_s", "rss_kib", "fds", "objects", "reads", "files", "kills", "reported"
    );
    for s in &samples {
        println!(
            "{:>7.0} {:>10} {:>5} {:>8} {:>6} {:>6} {:>7} {:>9}",
            s.t.as_secs_f64(),
            s.rss_kib,
            s.fds.total(),
            s.fds.objects,
            s.fds.reads,
            s.fds.files.len(),
            s.kills,
            s.reported
        );
    }

    let mut failures = vec![];
    let missing: Vec<u32> = killed_pids
        .iter()
        .copied()
        .filter(|p| !reported.pids.contains(p))
        .collect();
    if !missing.is_empty() {
        failures.push(format!(
            "{} of {} kills not reported: {missing:?}",
            missing.len(),
            killed_pids.len()
        ));
    }
    for (path, k) in &kernel {
        let r = reported.by_cgroup.get(path).copied().unwrap_or(0);
        println!("cgroup {path}: kernel oom_kill={k:?} reported={r}");
        if *k != Some(r) {
            failures.push(format!(
                "{path}: the kernel counted {k:?} kills, memtrace reported {r}"
            ));
        }
    }
    println!("hot cgroup (stress-ng): kernel oom_kill={hot_kills:?}, {hot_charged}");
    match &exit.summary {
        Some(s) => {
            println!("memtrace summary: {s:?}");
            if s.kernel_seen != s.delivered + s.dropped_ringbuf_full + s.decode_errors {
                failures.push(format!("produced != delivered + dropped: {s:?}"));
            }
            if s.dropped_ringbuf_full > 0 || s.decode_errors > 0 {
                failures.push(format!("records lost: {s:?}"));
            }
            if !s.reconciled.starts_with("ok") {
                failures.push(format!("reconciliation: {}", s.reconciled));
            }
        }
        None => failures.push(format!("no exit summary ({})", exit.status)),
    }
    if !exit.status.success() {
        failures.push(format!("memtrace exited with {}", exit.status));
    }
    let complaints: Vec<&String> = exit
        .stderr
        .iter()
        .filter(|l| l.contains("LOST") || l.contains("RECONCILE") || l.contains("panicked"))
        .collect();
    if !complaints.is_empty() {
        failures.push(format!("memtrace complained: {complaints:#?}"));
    }
    // fds: kernel objects (BPF, sockets, pipes) and reads of /proc and /sys never grow; the
    // files the charge worker's symbolizer keeps open (one per distinct binary it has met,
    // dropped when it is replaced: memtrace/src/charges/symbolize.rs) come and go with the processes it
    // samples, so their number is not judged, but a path open twice is a leak.
    // The last sample is the one taken at the end (pushed above), so the list is never empty.
    let (first, end) = (&samples[0], &samples[samples.len() - 1]);
    for s in &samples {
        let t = s.t.as_secs_f64();
        if s.fds.objects > first.fds.objects || s.fds.reads > first.fds.reads {
            failures.push(format!(
                "fds grew: {} objects and {} reads at the start, {} and {} at t={t:.0}s",
                first.fds.objects, first.fds.reads, s.fds.objects, s.fds.reads
            ));
            break;
        }
        let repeated = s.fds.repeated();
        if !repeated.is_empty() {
            failures.push(format!("files open more than once at t={t:.0}s: {repeated:?}"));
            break;
        }
    }
    let files_max = samples.iter().map(|s| s.fds.files.len()).max().unwrap_or(0);
    let binaries: std::collections::BTreeSet<&str> = samples
        .iter()
        .flat_map(|s| s.fds.files.keys().map(String::as_str))
        .collect();
    println!(
        "files open by path (mostly the symbolizer's cache): at most {files_max} at once, {} distinct: {binaries:?}",
        binaries.len()
    );
    // Warm: the first sample after a minute (the path cache and allocator pools fill up first),
    // or half-way through a shorter soak, so that a one-minute run still judges its second half.
    let warm_after = Duration::from_secs(60).min(duration / 2);
    let warm = samples.iter().find(|s| s.t >= warm_after).unwrap_or(first);
    let allowed = warm.rss_kib + (warm.rss_kib / 5).max(8 * 1024);
    println!(
        "rss: {} KiB at start, {} KiB warm (t={:.0}s), {} KiB at the end (allowed {allowed})",
        first.rss_kib,
        warm.rss_kib,
        warm.t.as_secs_f64(),
        end.rss_kib
    );
    if end.rss_kib > allowed {
        failures.push(format!(
            "rss grew from {} KiB to {} KiB",
            warm.rss_kib, end.rss_kib
        ));
    }
    println!(
        "{} kills in {:.1} min ({} allocators not OOM-killed), {} reported",
        killed_pids.len(),
        end.t.as_secs_f64() / 60.0,
        not_killed,
        reported.pids.len()
    );
    if failures.is_empty() {
        println!("memtrace-soak: OK");
        ExitCode::SUCCESS
    } else {
        for f in &failures {
            println!("memtrace-soak: FAIL: {f}");
        }
        ExitCode::from(1)
    }
}
