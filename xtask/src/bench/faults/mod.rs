//! Benchmark 1, charge-path overhead: ns per page fault (xtask/bench/faults.c: anonymous mmap,
//! one write per page, munmap, repeated; pinned to one CPU; in a memtrace-bench memory cgroup)
//! with no tracer, memtrace with OOM hooks only, memtrace's default (page faults sampled by a
//! perf event) and its exact mode (a program on the memcg event tracepoint), each with and
//! without stacks, bpftrace on the same hooks, and reference programs of the benchmark's own.

mod items;
mod report;

use std::{collections::BTreeMap, process::Stdio, time::Duration};

use anyhow::{Context as _, bail, ensure};

use super::{
    Ctx, Section,
    daemon::{Bpftrace, CHARGE_TP, Watch},
    probes,
    stats::median,
    sys::{self, BenchCgroup},
};

/// memtrace's default sample period (page faults per sample, per CPU).
pub const PERIOD: u32 = 256;

#[derive(Clone, Copy)]
enum Tracer {
    None,
    /// memtrace with these flags, and which charge hook they must attach.
    Memtrace(&'static [&'static str], Hook),
    Bpftrace(&'static str, Hook),
    /// A reference program of the benchmark's own.
    Lab(probes::Kind),
}

/// The charge hook a tracer must hold while measured.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Hook {
    None,
    /// A program on the memcg event tracepoint.
    Tracepoint,
    /// Software page-fault perf events.
    PerfEvent,
}

#[derive(Clone, Copy)]
pub struct Config {
    pub key: &'static str,
    pub label: &'static str,
    tracer: Tracer,
}

const BPFTRACE_COUNT: &str = "tracepoint:memcg:count_memcg_events { @[args->id] = count(); }";
const BPFTRACE_EMPTY: &str = "tracepoint:memcg:count_memcg_events { }";
const BPFTRACE_SAMPLED: &str = "software:page-faults:256 { @[cgroup] = count(); }";

const NONE: Config = Config {
    key: "none",
    label: "no tracer",
    tracer: Tracer::None,
};
/// No tracer again, at the end of each round: with the first one, the round's baseline.
pub const NONE_END: Config = Config {
    key: "none-end",
    label: "no tracer, again at the end of the round",
    tracer: Tracer::None,
};
const OOM_ONLY: Config = Config {
    key: "oom-only",
    label: "`memtrace watch --no-charges` (OOM hooks only)",
    tracer: Tracer::Memtrace(&["--no-charges"], Hook::None),
};
const CHARGES: Config = Config {
    key: "charges",
    label: "`memtrace watch` (default: 1 in 256 page faults sampled, a stack each)",
    tracer: Tracer::Memtrace(&[], Hook::PerfEvent),
};
const NO_STACKS: Config = Config {
    key: "no-stacks",
    label: "`memtrace watch --stack-sample-every 0` (sampled counts and usage, no stacks)",
    tracer: Tracer::Memtrace(&["--stack-sample-every", "0"], Hook::PerfEvent),
};
const EXACT: Config = Config {
    key: "exact",
    label: "`memtrace watch --exact-charges` (every charge counted, stack every 64)",
    tracer: Tracer::Memtrace(&["--exact-charges"], Hook::Tracepoint),
};
const EXACT_NO_STACKS: Config = Config {
    key: "exact-no-stacks",
    label: "`memtrace watch --exact-charges --stack-sample-every 0` (exact counters only)",
    tracer: Tracer::Memtrace(
        &["--exact-charges", "--stack-sample-every", "0"],
        Hook::Tracepoint,
    ),
};
const BPFTRACE: Config = Config {
    key: "bpftrace",
    label: "bpftrace `tracepoint:memcg:count_memcg_events { @[args->id] = count(); }`",
    tracer: Tracer::Bpftrace(BPFTRACE_COUNT, Hook::Tracepoint),
};
const BPFTRACE_SW: Config = Config {
    key: "bpftrace-sampled",
    label: "bpftrace `software:page-faults:256 { @[cgroup] = count(); }` (the same sampling, bpftrace)",
    tracer: Tracer::Bpftrace(BPFTRACE_SAMPLED, Hook::PerfEvent),
};
const fn lab(key: &'static str, kind: probes::Kind) -> Config {
    Config {
        key,
        label: kind.describe(),
        tracer: Tracer::Lab(kind),
    }
}
const LAB: [Config; 5] = [
    lab("ref-empty", probes::Kind::Empty),
    lab("ref-array", probes::Kind::Array),
    lab("ref-lru1", probes::Kind::Lru1),
    lab("ref-lru2", probes::Kind::Lru2),
    lab("ref-hash2", probes::Kind::Hash2),
];
const BPFTRACE_NOP: Config = Config {
    key: "bpftrace-empty",
    label: "bpftrace `tracepoint:memcg:count_memcg_events { }` (empty program)",
    tracer: Tracer::Bpftrace(BPFTRACE_EMPTY, Hook::Tracepoint),
};

/// One configuration's turn in a round.
pub struct Run {
    pub round: usize,
    /// Median over the repetitions of thread CPU ns per page (mmap + fault + munmap).
    pub cpu_ns: f64,
    pub wall_ns: f64,
    pub minflt_per_page: f64,
    /// Other processes' programs on the memcg event tracepoint during the run.
    pub foreign: usize,
    pub load1: f64,
}

pub struct Workload {
    pub mib: usize,
    pub reps: usize,
    pub cpu: usize,
    pub items: probes::Items,
}

pub fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let configs: Vec<Config> = if ctx.smoke {
        vec![NONE, CHARGES, EXACT, BPFTRACE, LAB[3]]
    } else {
        let mut c = vec![
            NONE,
            OOM_ONLY,
            CHARGES,
            NO_STACKS,
            EXACT,
            EXACT_NO_STACKS,
            BPFTRACE,
            BPFTRACE_SW,
            BPFTRACE_NOP,
        ];
        c.extend(LAB);
        c
    };
    let w = Workload {
        mib: if ctx.smoke { 64 } else { 256 },
        reps: if ctx.smoke { 3 } else { 10 },
        cpu: sys::nproc() - 1,
        items: items::items()?,
    };
    let cg = BenchCgroup::new(&ctx.hierarchy, "faults", 2 << 30)?;
    let load_before = sys::loadavg();
    let mut runs: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    // Rounds with a foreign program on the tracepoint do not count; up to twice as many rounds.
    let (mut clean, mut round) = (0, 0);
    while clean < ctx.rounds && round < ctx.rounds * 2 {
        // One fault loop per round: every configuration of the round measures the same process
        // (and so mostly the same physical pages), which keeps the per-round ratios steady.
        let fault_loop = FaultLoop::start(ctx, &cg, &w)?;
        let mut foreign = 0;
        for c in configs.iter().chain([&NONE_END]) {
            let r = run_one(ctx, c, &fault_loop, &w, round)?;
            eprintln!(
                "bench: faults round {round} {:<15} {:>7.1} ns/fault cpu {:>7.1} wall (foreign hooks {}, load {:.2})",
                c.key, r.cpu_ns, r.wall_ns, r.foreign, r.load1
            );
            foreign += r.foreign;
            runs.entry(c.key).or_default().push(r);
        }
        drop(fault_loop);
        if foreign == 0 {
            clean += 1;
        }
        round += 1;
    }
    let items = items::item_breakdown(ctx, &cg, &w)?;
    let load_after = sys::loadavg();
    Ok(report::report(
        ctx,
        &configs,
        &runs,
        &items,
        &w,
        clean,
        &load_before,
        &load_after,
    ))
}

/// The fault program running until dropped, its repetitions collected as they are printed.
struct FaultLoop {
    child: sys::Reaped,
    reps: std::sync::Arc<std::sync::Mutex<Vec<Rep>>>,
}

impl FaultLoop {
    fn start(ctx: &Ctx, cg: &BenchCgroup, w: &Workload) -> anyhow::Result<Self> {
        let mut child = sys::Reaped(
            cg.command(std::path::Path::new("taskset"), &[])
                .args(["-c", &w.cpu.to_string()])
                .arg(&ctx.faults)
                .args([w.mib.to_string(), "0".into()])
                .stdout(Stdio::piped())
                .spawn()
                .context("starting the fault program")?,
        );
        let out = child.0.stdout.take().context("stdout")?;
        let reps = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let r = reps.clone();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(rep) = Rep::parse(&line) {
                    r.lock().unwrap().push(rep);
                }
            }
        });
        Ok(Self { child, reps })
    }

    /// The first `n` repetitions that started at or after `since` (CLOCK_MONOTONIC ns).
    fn collect(&self, since: u64, n: usize) -> anyhow::Result<Vec<Rep>> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        loop {
            let got: Vec<Rep> = self
                .reps
                .lock()
                .unwrap()
                .iter()
                .filter(|r| r.start_ns >= since)
                .take(n)
                .cloned()
                .collect();
            if got.len() == n {
                return Ok(got);
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "the fault program (pid {}) printed {} of {n} repetitions",
                self.child.pid(),
                got.len()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

fn run_one(ctx: &Ctx, c: &Config, fault_loop: &FaultLoop, w: &Workload, round: usize) -> anyhow::Result<Run> {
    enum Running {
        None,
        Memtrace(Watch),
        Bpftrace(Bpftrace),
        Lab(probes::Attached),
    }
    let running = match c.tracer {
        Tracer::None => Running::None,
        Tracer::Memtrace(args, hook) => {
            let watch = Watch::start(&ctx.memtrace, args)?;
            // The charge hook must be attached (or not) as the configuration says.
            let held = wait_for(watch.pid(), hook);
            ensure!(
                held == hook,
                "memtrace {args:?}: charge hook {held:?}, expected {hook:?}"
            );
            Running::Memtrace(watch)
        }
        Tracer::Bpftrace(prog, hook) => {
            let b = Bpftrace::start_any(prog)?;
            ensure!(
                wait_for(b.pid(), hook) == hook,
                "bpftrace did not attach {hook:?} within 60 s"
            );
            Running::Bpftrace(b)
        }
        Tracer::Lab(kind) => Running::Lab(probes::attach(kind, w.items)?),
    };
    let since = sys::mono_ns();
    let own = match &running {
        Running::None => 0,
        Running::Lab(_) => std::process::id(),
        Running::Memtrace(m) => m.pid(),
        Running::Bpftrace(b) => b.pid(),
    };
    let foreign = |_: ()| {
        sys::hook_holders(CHARGE_TP)
            .into_iter()
            .filter(|p| *p != own)
            .count()
    };
    let foreign_before = foreign(());
    let load1 = sys::load1();
    let reps = fault_loop.collect(since, w.reps)?;
    let foreign = foreign_before.max(foreign(()));
    match running {
        Running::None => {}
        Running::Memtrace(m) => {
            m.stop()?;
        }
        Running::Bpftrace(b) => {
            b.stop()?;
        }
        Running::Lab(l) => drop(l),
    }
    let per_page =
        |get: fn(&Rep) -> f64| median(&reps.iter().map(|r| get(r) / r.pages as f64).collect::<Vec<_>>());
    Ok(Run {
        round,
        cpu_ns: per_page(|r| r.cpu_ns as f64),
        wall_ns: per_page(|r| r.wall_ns as f64),
        minflt_per_page: per_page(|r| r.minflt as f64),
        foreign,
        load1,
    })
}

/// Which charge hook `pid` holds once it settles: waits up to 60 s for `want`, then looks once.
fn wait_for(pid: u32, want: Hook) -> Hook {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let held = || {
        if sys::hook_holders(CHARGE_TP).contains(&pid) {
            Hook::Tracepoint
        } else if sys::perf_event_fds(pid) > 0 {
            Hook::PerfEvent
        } else {
            Hook::None
        }
    };
    if want == Hook::None {
        // Give a daemon that would wrongly attach a moment to do so.
        std::thread::sleep(Duration::from_millis(1500));
        return held();
    }
    while std::time::Instant::now() < deadline {
        if held() == want {
            return want;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    held()
}

#[derive(Clone)]
pub struct Rep {
    start_ns: u64,
    pub pages: u64,
    minflt: u64,
    cpu_ns: u64,
    wall_ns: u64,
}

impl Rep {
    /// `rep N start_ns S pages P minflt F cpu_ns C wall_ns W`.
    pub fn parse(l: &str) -> anyhow::Result<Self> {
        let f: Vec<&str> = l.split_whitespace().collect();
        let num = |key: &str| -> anyhow::Result<u64> {
            let i = f
                .iter()
                .position(|x| *x == key)
                .with_context(|| format!("no {key} in {l:?}"))?;
            Ok(f.get(i + 1).context("value")?.parse()?)
        };
        let rep = Rep {
            start_ns: num("start_ns")?,
            pages: num("pages")?,
            minflt: num("minflt")?,
            cpu_ns: num("cpu_ns")?,
            wall_ns: num("wall_ns")?,
        };
        if rep.pages == 0 {
            bail!("no pages in {l:?}");
        }
        Ok(rep)
    }
}
