//! Benchmark 3, storm: many concurrent OOM kills across several cgroups while the charge path is hot,
//! and memtrace's count against the kernel's (`/proc/vmstat` oom_kill, per-cgroup oom_kill).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    Ctx, Section,
    daemon::{Kill, Watch},
    run_header,
    stats::{Dist, f, median, pass},
    sys::{self, BenchCgroup, Reaped},
};

/// How big a storm.
#[derive(Clone, Copy)]
pub struct Spec {
    pub cgroups: usize,
    /// Allocators growing at once in each cgroup (a new one starts when one is killed).
    pub workers: usize,
    pub duration: Duration,
}

impl Spec {
    pub fn for_ctx(ctx: &Ctx, duration: Duration) -> Self {
        if ctx.smoke {
            Self {
                cgroups: 3,
                workers: 2,
                duration: Duration::from_secs(3),
            }
        } else {
            Self {
                cgroups: 6,
                workers: 3,
                duration,
            }
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} memtrace-bench cgroups of 16 MiB, {} `memtrace-alloc grow` at once in each (restarted as they are \
             killed) for {} s, while `faults 64` (mmap/touch/munmap in a loop) keeps the charge path hot in another \
             cgroup",
            self.cgroups,
            self.workers,
            self.duration.as_secs()
        )
    }
}

/// What a storm did, by the kernel's and the benchmark's count.
pub struct Outcome {
    /// (cgroup, the kernel's oom_kill count, allocators the benchmark saw SIGKILLed).
    pub cgroups: Vec<(String, u64, u64)>,
    pub not_oom: u64,
    pub elapsed: Duration,
    /// Removed when the caller drops them (after memtrace has read what it needs).
    pub _keep: Vec<BenchCgroup>,
}

impl Outcome {
    pub fn kernel_kills(&self) -> u64 {
        self.cgroups.iter().map(|c| c.1).sum()
    }

    pub fn rate(&self) -> f64 {
        self.kernel_kills() as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs a storm; `tick` runs every 100 ms on the calling thread meanwhile.
pub fn storm(ctx: &Ctx, spec: Spec, mut tick: impl FnMut()) -> anyhow::Result<Outcome> {
    let cgs = (0..spec.cgroups)
        .map(|i| BenchCgroup::new(&ctx.hierarchy, &format!("storm{i}"), 16 << 20))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let hot = BenchCgroup::new(&ctx.hierarchy, "hot", 1 << 30)?;
    let hot_child = Reaped(
        hot.command(&ctx.faults, &["64", "1000000000"])
            .spawn()
            .context("starting the fault loop")?,
    );
    let seen: Vec<AtomicU64> = cgs.iter().map(|_| AtomicU64::new(0)).collect();
    let not_oom = AtomicU64::new(0);
    let start = Instant::now();
    let deadline = start + spec.duration;
    let result: anyhow::Result<()> = std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for (i, cg) in cgs.iter().enumerate() {
            for _ in 0..spec.workers {
                let (seen, not_oom) = (&seen[i], &not_oom);
                handles.push(scope.spawn(move || -> anyhow::Result<()> {
                    while Instant::now() < deadline {
                        let run = sys::alloc_until_killed(&ctx.alloc, cg, Duration::from_secs(60))?;
                        if run.oom_killed { seen } else { not_oom }.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                }));
            }
        }
        while handles.iter().any(|h| !h.is_finished()) {
            tick();
            std::thread::sleep(Duration::from_millis(100));
        }
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("storm worker panicked"))
    });
    let elapsed = start.elapsed();
    drop(hot_child);
    result?;
    Ok(Outcome {
        cgroups: cgs
            .iter()
            .zip(&seen)
            .map(|(cg, n)| (cg.rel.clone(), cg.oom_kills(), n.load(Ordering::Relaxed)))
            .collect(),
        not_oom: not_oom.load(Ordering::Relaxed),
        elapsed,
        _keep: cgs,
    })
}

/// `n` kills as fast as one allocator per cgroup at a time goes, spread over `cgs`.
pub fn burst(alloc: &Path, cgs: &[BenchCgroup], n: usize) -> anyhow::Result<Vec<u32>> {
    let next = AtomicU64::new(0);
    std::thread::scope(|scope| {
        let handles: Vec<_> = cgs
            .iter()
            .map(|cg| {
                let next = &next;
                scope.spawn(move || -> anyhow::Result<Vec<u32>> {
                    let mut pids = Vec::new();
                    while (next.fetch_add(1, Ordering::Relaxed) as usize) < n {
                        let run = sys::alloc_until_killed(alloc, cg, Duration::from_secs(60))?;
                        anyhow::ensure!(
                            run.oom_killed,
                            "allocator {} ended without a kill: {}",
                            run.pid,
                            run.status
                        );
                        pids.push(run.pid);
                    }
                    Ok(pids)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().expect("burst worker panicked")?);
        }
        Ok(all)
    })
}

/// One storm under a running memtrace, compared with the kernel's counters.
struct Round {
    outcome: Outcome,
    /// memtrace's events per cgroup of ours.
    reported: BTreeMap<String, u64>,
    vmstat_delta: u64,
    delivered: u64,
    kernel_seen: u64,
    dropped: u64,
    reconciled: String,
    emit: Vec<f64>,
    load: String,
}

impl Round {
    fn missed(&self) -> u64 {
        self.outcome
            .cgroups
            .iter()
            .map(|(cg, kernel, _)| kernel.saturating_sub(self.reported.get(cg).copied().unwrap_or(0)))
            .sum()
    }

    fn reported_ours(&self) -> u64 {
        self.reported.values().sum()
    }
}

pub fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let spec = Spec::for_ctx(ctx, Duration::from_secs(15));
    let load_before = sys::loadavg();
    let mut rounds = Vec::new();
    for r in 0..ctx.rounds {
        let watch = Watch::start(&ctx.memtrace, &[])?;
        let vm0 = sys::vmstat_oom_kill();
        let outcome = storm(ctx, spec, || {})?;
        watch.wait_quiet(Duration::from_millis(1500), Duration::from_secs(30));
        let vm1 = sys::vmstat_oom_kill();
        let exit = watch.stop()?;
        let ours: Vec<&Kill> = exit
            .kills
            .iter()
            .filter(|k| outcome.cgroups.iter().any(|c| c.0 == k.cgroup))
            .collect();
        let mut reported = BTreeMap::new();
        for k in &ours {
            *reported.entry(k.cgroup.clone()).or_insert(0) += 1;
        }
        let round = Round {
            reported,
            vmstat_delta: vm1 - vm0,
            delivered: exit.get("delivered"),
            kernel_seen: exit.get("kernel_seen"),
            dropped: exit.get("dropped_ringbuf_full"),
            reconciled: exit.summary.get("reconciled").cloned().unwrap_or_default(),
            emit: ours.iter().map(|k| k.emit_delay_us as f64).collect(),
            load: sys::loadavg(),
            outcome,
        };
        eprintln!(
            "bench: storm round {r}: kernel {} kills in our cgroups ({:.1}/s), memtrace {}, missed {}, vmstat +{}, delivered {} (load {})",
            round.outcome.kernel_kills(),
            round.outcome.rate(),
            round.reported_ours(),
            round.missed(),
            round.vmstat_delta,
            round.delivered,
            round.load
        );
        rounds.push(round);
    }
    let load_after = sys::loadavg();
    Ok(report(ctx, &spec, &rounds, &load_before, &load_after))
}

fn report(ctx: &Ctx, spec: &Spec, rounds: &[Round], load_before: &str, load_after: &str) -> Section {
    let mut s = String::new();
    let mut errors = Vec::new();
    let _ = writeln!(s, "## 3. Storm: concurrent kills, nothing missed\n");
    s.push_str(&run_header(ctx, "storm"));
    let _ = writeln!(
        s,
        "Per round: a fresh `memtrace watch --output json` (defaults), then {}. memtrace's events for our cgroups \
         against each cgroup's `oom_kill` counter (memory.oom_control), and its `delivered` count against the \
         `/proc/vmstat` oom_kill delta over the same window (that one includes other users' kills on this \
         machine, which memtrace sees too). {} rounds. Load before {load_before}, after {load_after}.\n",
        spec.describe(),
        rounds.len()
    );
    let _ = writeln!(
        s,
        "| round | load (1/5/15) | kills (kernel, our cgroups) | kills/s | memtrace events (our cgroups) | missed | \
         allocators SIGKILLed | vmstat oom_kill Δ | memtrace delivered | kernel_seen | dropped | emit p50 / p99 / max µs | reconciled |"
    );
    let _ = writeln!(
        s,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
    );
    for (i, r) in rounds.iter().enumerate() {
        let d = Dist::of(&r.emit);
        let sigkilled: u64 = r.outcome.cgroups.iter().map(|c| c.2).sum();
        let _ = writeln!(
            s,
            "| {i} | {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} / {} / {} | {} |",
            r.load,
            r.outcome.kernel_kills(),
            r.outcome.rate(),
            r.reported_ours(),
            r.missed(),
            sigkilled,
            r.vmstat_delta,
            r.delivered,
            r.kernel_seen,
            r.dropped,
            f(d.p50, 0),
            f(d.p99, 0),
            f(d.max, 0),
            r.reconciled
        );
        if r.missed() > 0 {
            errors.push(format!("storm round {i}: memtrace missed {} kills", r.missed()));
        }
        if r.outcome.not_oom > 0 {
            errors.push(format!(
                "storm round {i}: {} allocators ended without a kill",
                r.outcome.not_oom
            ));
        }
    }
    let m = |g: fn(&Round) -> f64| median(&rounds.iter().map(g).collect::<Vec<_>>());
    let missed: u64 = rounds.iter().map(Round::missed).sum();
    let all_emit: Vec<f64> = rounds.iter().flat_map(|r| r.emit.iter().copied()).collect();
    let d = Dist::of(&all_emit);
    let _ = writeln!(
        s,
        "\nMedians over rounds: {} kills per round ({} kills/s), {} reported; vmstat Δ − delivered: {} (other users' \
         kills at the window's edges can make this non-zero). Emit delay over all storm kills: p50 {} µs, p99 {} µs, \
         max {} µs.\n",
        f(m(|r| r.outcome.kernel_kills() as f64), 0),
        f(m(|r| r.outcome.rate()), 1),
        f(m(|r| r.reported_ours() as f64), 0),
        f(m(|r| r.vmstat_delta as f64 - r.delivered as f64), 0),
        f(d.p50, 0),
        f(d.p99, 0),
        f(d.max, 0),
    );
    let _ = writeln!(
        s,
        "Target: none missed → {} ({missed} missed of {} kills in {} rounds).\n",
        pass(missed == 0),
        rounds.iter().map(|r| r.outcome.kernel_kills()).sum::<u64>(),
        rounds.len()
    );
    let summary = format!(
        "**Storm**: {missed} missed of {} kills in {} rounds of {} s ({} kills/s median, charge path hot){}; emit delay \
         in the storm p50 / p99 / max {} / {} / {} ms.",
        rounds.iter().map(|r| r.outcome.kernel_kills()).sum::<u64>(),
        rounds.len(),
        spec.duration.as_secs(),
        f(m(|r| r.outcome.rate()), 1),
        if ctx.smoke {
            String::new()
        } else {
            format!(" (target none missed: {})", pass(missed == 0))
        },
        f(d.p50 / 1000.0, 1),
        f(d.p99 / 1000.0, 1),
        f(d.max / 1000.0, 1),
    );
    Section {
        key: "storm",
        body: s,
        summary,
        errors,
    }
}
