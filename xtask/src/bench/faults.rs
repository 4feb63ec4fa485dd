//! Benchmark 1, charge-path overhead: ns per page fault (xtask/bench/faults.c: anonymous mmap,
//! one write per page, munmap, repeated; pinned to one CPU; in a memtrace-bench memory cgroup)
//! with no tracer, memtrace with OOM hooks only, memtrace with charge accounting (default and
//! without stacks), and bpftrace on the same tracepoint (counting per cgroup, and an empty
//! program).

use std::{collections::BTreeMap, fmt::Write as _, process::Stdio};

use anyhow::{Context as _, bail, ensure};

use super::{
    Ctx, Section,
    daemon::{Bpftrace, CHARGE_TP, Watch},
    probes, run_header,
    stats::{self, f, median, pass, ratio},
    sys::{self, BenchCgroup},
};

#[derive(Clone, Copy)]
enum Tracer {
    None,
    Memtrace(&'static [&'static str]),
    Bpftrace(&'static str),
    /// A reference program of the benchmark's own.
    Lab(probes::Kind),
}

#[derive(Clone, Copy)]
struct Config {
    key: &'static str,
    label: &'static str,
    tracer: Tracer,
}

const BPFTRACE_COUNT: &str = "tracepoint:memcg:count_memcg_events { @[args->id] = count(); }";
const BPFTRACE_EMPTY: &str = "tracepoint:memcg:count_memcg_events { }";

const NONE: Config = Config {
    key: "none",
    label: "no tracer",
    tracer: Tracer::None,
};
/// No tracer again, at the end of each round: with the first one, the round's baseline.
const NONE_END: Config = Config {
    key: "none-end",
    label: "no tracer, again at the end of the round",
    tracer: Tracer::None,
};
const OOM_ONLY: Config = Config {
    key: "oom-only",
    label: "`memtrace watch --no-charges` (OOM hooks only)",
    tracer: Tracer::Memtrace(&["--no-charges"]),
};
const CHARGES: Config = Config {
    key: "charges",
    label: "`memtrace watch` (charge accounting, stack every 64)",
    tracer: Tracer::Memtrace(&[]),
};
const NO_STACKS: Config = Config {
    key: "no-stacks",
    label: "`memtrace watch --stack-sample-every 0` (counters only)",
    tracer: Tracer::Memtrace(&["--stack-sample-every", "0"]),
};
const BPFTRACE: Config = Config {
    key: "bpftrace",
    label: "bpftrace `tracepoint:memcg:count_memcg_events { @[args->id] = count(); }`",
    tracer: Tracer::Bpftrace(BPFTRACE_COUNT),
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
    tracer: Tracer::Bpftrace(BPFTRACE_EMPTY),
};

/// One configuration's turn in a round.
struct Run {
    round: usize,
    /// Median over the repetitions of thread CPU ns per page (mmap + fault + munmap).
    cpu_ns: f64,
    wall_ns: f64,
    minflt_per_page: f64,
    /// Other processes' programs on the memcg event tracepoint during the run.
    foreign: usize,
    load1: f64,
}

struct Workload {
    mib: usize,
    reps: usize,
    cpu: usize,
    items: probes::Items,
}

pub fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let configs: Vec<Config> = if ctx.smoke {
        vec![NONE, CHARGES, BPFTRACE, LAB[3]]
    } else {
        let mut c = vec![NONE, OOM_ONLY, CHARGES, NO_STACKS, BPFTRACE, BPFTRACE_NOP];
        c.extend(LAB);
        c
    };
    let w = Workload {
        mib: if ctx.smoke { 64 } else { 256 },
        reps: if ctx.smoke { 3 } else { 10 },
        cpu: sys::nproc() - 1,
        items: items()?,
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
    let items = item_breakdown(ctx, &cg, &w)?;
    let load_after = sys::loadavg();
    Ok(report(
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
        Tracer::Memtrace(args) => {
            let watch = Watch::start(&ctx.memtrace, args)?;
            let charges = !args.contains(&"--no-charges");
            // The charge hook must be attached (or not) as the configuration says.
            let holds = sys::wait_hook(
                watch.pid(),
                CHARGE_TP,
                std::time::Duration::from_secs(if charges { 10 } else { 0 }),
            );
            ensure!(
                holds == charges,
                "memtrace {args:?}: charge hook attached = {holds}"
            );
            Running::Memtrace(watch)
        }
        Tracer::Bpftrace(prog) => Running::Bpftrace(Bpftrace::start(prog)?),
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

#[derive(Clone)]
struct Rep {
    start_ns: u64,
    pages: u64,
    minflt: u64,
    cpu_ns: u64,
    wall_ns: u64,
}

impl Rep {
    /// `rep N start_ns S pages P minflt F cpu_ns C wall_ns W`.
    fn parse(l: &str) -> anyhow::Result<Self> {
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

/// Which memcg events one fault cycle raises, per page (not timed): what the hooks see.
fn item_breakdown(ctx: &Ctx, cg: &BenchCgroup, w: &Workload) -> anyhow::Result<Vec<(String, f64)>> {
    let prog = format!(
        "tracepoint:memcg:count_memcg_events /args->id == {}/ {{ @[args->item] = count(); }}",
        cg.id()
    );
    let bt = Bpftrace::start(&prog)?;
    let reps = 2;
    let out = cg
        .command(&ctx.faults, &[&w.mib.to_string(), &reps.to_string()])
        .stdout(Stdio::piped())
        .output()?;
    ensure!(out.status.success(), "fault program failed: {}", out.status);
    let counts = bt.stop()?;
    let pages: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(Rep::parse)
        .collect::<anyhow::Result<Vec<_>>>()?
        .iter()
        .map(|r| r.pages)
        .sum();
    let names = vm_event_names();
    let mut items: Vec<(String, f64)> = counts
        .into_iter()
        .map(|(item, n)| {
            let name = item
                .parse::<u64>()
                .ok()
                .and_then(|i| names.get(&i).cloned())
                .unwrap_or_default();
            (format!("{item} {name}"), n as f64 / pages as f64)
        })
        .collect();
    items.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(items)
}

/// PGPGIN and PGFAULT on this kernel.
fn items() -> anyhow::Result<probes::Items> {
    let names = vm_event_names();
    let find = |n: &str| -> anyhow::Result<i32> {
        let v = names
            .iter()
            .find(|(_, v)| *v == n)
            .with_context(|| format!("{n} not in the kernel's BTF"))?;
        Ok(*v.0 as i32)
    };
    Ok(probes::Items {
        pgpgin: find("PGPGIN")?,
        pgfault: find("PGFAULT")?,
    })
}

/// `enum vm_event_item` value -> name, from the kernel's BTF (via bpftool).
fn vm_event_names() -> BTreeMap<u64, String> {
    let Ok(out) = std::process::Command::new("bpftool")
        .args(["btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "raw"])
        .stderr(Stdio::null())
        .output()
    else {
        return BTreeMap::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut names = BTreeMap::new();
    let mut inside = false;
    for l in text.lines() {
        if l.starts_with('[') {
            inside = l.contains("ENUM 'vm_event_item'");
            continue;
        }
        if inside
            && let Some((name, val)) = l.trim().strip_prefix('\'').and_then(|r| r.split_once("' val="))
            && let Ok(v) = val.trim().parse()
        {
            names.insert(v, name.to_owned());
        }
    }
    names
}

#[allow(clippy::too_many_arguments)]
fn report(
    ctx: &Ctx,
    configs: &[Config],
    runs: &BTreeMap<&str, Vec<Run>>,
    items: &[(String, f64)],
    w: &Workload,
    clean: usize,
    load_before: &str,
    load_after: &str,
) -> Section {
    let rounds = runs.values().next().map_or(0, Vec::len);
    let dirty: Vec<usize> = (0..rounds)
        .filter(|r| runs.values().any(|v| v.get(*r).is_some_and(|x| x.foreign > 0)))
        .collect();
    // Medians over the clean rounds when there are enough of them, else over all.
    let use_round = |r: usize| clean < ctx.rounds.max(1) || !dirty.contains(&r);
    let counted = (0..rounds).filter(|r| use_round(*r)).count();
    let vals = |key: &str, get: fn(&Run) -> f64| -> Vec<f64> {
        runs.get(key)
            .map(|v| v.iter().filter(|r| use_round(r.round)).map(get).collect())
            .unwrap_or_default()
    };
    // A round's baseline: the mean of its no-tracer runs at the start and at the end (which
    // cancels a linear drift within the round).
    let base = |round: usize| -> f64 {
        let at = |key: &str| {
            runs.get(key)
                .and_then(|v| v.iter().find(|r| r.round == round))
                .map(|r| r.cpu_ns)
        };
        match (at("none"), at("none-end")) {
            (Some(a), Some(b)) => (a + b) / 2.0,
            (Some(a), None) => a,
            _ => f64::NAN,
        }
    };
    let cpu = |key: &str| {
        if key == "none" {
            median(
                &(0..rounds)
                    .filter(|r| use_round(*r))
                    .map(base)
                    .collect::<Vec<_>>(),
            )
        } else {
            median(&vals(key, |r| r.cpu_ns))
        }
    };
    // Per-round ratio to the round's baseline, then the median.
    let ratio_of = |key: &str| -> f64 {
        let Some(a) = runs.get(key) else {
            return f64::NAN;
        };
        median(
            &a.iter()
                .filter(|x| use_round(x.round))
                .map(|x| x.cpu_ns / base(x.round))
                .collect::<Vec<_>>(),
        )
    };
    // Per-round difference (b = "none": the baseline), then the median.
    let diff_of = |a: &str, b: &str| -> f64 {
        let (Some(x), Some(y)) = (runs.get(a), runs.get(b)) else {
            return f64::NAN;
        };
        median(
            &x.iter()
                .zip(y)
                .filter(|(p, _)| use_round(p.round))
                .map(|(p, q)| p.cpu_ns - if b == "none" { base(p.round) } else { q.cpu_ns })
                .collect::<Vec<_>>(),
        )
    };
    let drift = |_: ()| -> Vec<f64> {
        let (Some(a), Some(b)) = (runs.get("none"), runs.get("none-end")) else {
            return vec![];
        };
        a.iter()
            .zip(b)
            .filter(|(x, _)| use_round(x.round))
            .map(|(x, y)| y.cpu_ns / x.cpu_ns)
            .collect()
    };

    let mut s = String::new();
    let _ = writeln!(s, "## 1. Charge-path overhead (page faults)\n");
    s.push_str(&run_header(ctx, "faults"));
    let _ = writeln!(
        s,
        "Workload: `taskset -c {cpu} target/bench/faults {mib} 0` (xtask/bench/faults.c) in a memtrace-bench memory \
         cgroup (limit 2 GiB), looping until stopped: mmap {mib} MiB anonymous (MADV_NOHUGEPAGE), write one byte per \
         4 KiB page, munmap. One such process per round; each configuration in turn attaches its tracer, then takes \
         the next {reps} repetitions that start after the attach, then detaches (so all configurations of a round \
         measure the same process, and mostly the same physical pages: run-to-run differences of the machine cancel \
         in the per-round ratio). A run's value is the median over its repetitions of **thread CPU time per page** \
         (the whole mmap + fault + munmap cycle, eBPF programs in the faulting thread included; time other tasks \
         ran on that CPU excluded). {counted} rounds counted{dirty}. Load before {load_before}, after {load_after}.\n",
        cpu = w.cpu,
        mib = w.mib,
        reps = w.reps,
        dirty = if dirty.is_empty() {
            String::new()
        } else if counted < rounds {
            format!(" (rounds {dirty:?} had another process's program on {CHARGE_TP} and are left out)")
        } else {
            format!(" (rounds {dirty:?} had another process's program on {CHARGE_TP}: counted anyway)")
        },
    );
    let _ = writeln!(
        s,
        "| configuration | ns/fault (CPU, median) | ratio to no tracer (median of per-round ratios) | ns/fault (wall, median) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|");
    for c in configs {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} |",
            c.label,
            f(cpu(c.key), 1),
            if c.key == "none" {
                "1".into()
            } else {
                ratio(ratio_of(c.key))
            },
            f(median(&vals(c.key, |r| r.wall_ns)), 1),
        );
    }
    let minflt = median(&vals("none", |r| r.minflt_per_page));
    let drifts = drift(());
    let _ = writeln!(
        s,
        "\n\"No tracer\" is each round's baseline: the mean of its no-tracer runs at the start and at the end of the \
         round. End / start: median {} (runs: {}), a measure of how steady the machine was within a round.",
        f(median(&drifts), 3),
        drifts
            .iter()
            .map(|d| format!("{d:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "\nMinor faults per page touched (no tracer): {}. Wall time is shown for completeness: on this shared \
         machine it mostly measures the other tasks on the CPU.\n",
        f(minflt, 3)
    );

    // Targets.
    let r_charges = ratio_of("charges");
    let r_bpftrace = ratio_of("bpftrace");
    let mut errors = Vec::new();
    if !ctx.smoke {
        let _ = writeln!(
            s,
            "Target: charge accounting adds at most 2 % → {} ({}); and less than bpftrace → {} ({} vs {}).\n",
            pass(r_charges <= 1.02),
            ratio(r_charges),
            pass(r_charges < r_bpftrace),
            ratio(r_charges),
            ratio(r_bpftrace),
        );
    } else if r_charges.is_nan() {
        errors.push("faults: no result for memtrace with charge accounting".into());
    }

    if !ctx.smoke {
        // What costs what, from the per-round differences.
        // Every hit runs the program, counted or not.
        let hits: f64 = items.iter().map(|x| x.1).sum();
        let pgpgin = items
            .iter()
            .find(|(k, _)| k.ends_with(" PGPGIN"))
            .map_or(f64::NAN, |x| x.1);
        let stacks = diff_of("charges", "no-stacks");
        let _ = writeln!(
            s,
            "What costs what (median of per-round differences, CPU ns per fault):\n"
        );
        let _ = writeln!(s, "| part | ns/fault | derived |");
        let _ = writeln!(s, "|---|---:|---|");
        let _ = writeln!(
            s,
            "| OOM hooks only (`--no-charges` − none) | {} | |",
            f(diff_of("oom-only", "none"), 1)
        );
        let _ = writeln!(
            s,
            "| memtrace counters, no stacks (`--stack-sample-every 0` − none) | {} | {} ns per tracepoint hit ({} hits/fault) |",
            f(diff_of("no-stacks", "none"), 1),
            f(diff_of("no-stacks", "none") / hits, 1),
            f(hits, 2)
        );
        let _ = writeln!(
            s,
            "| memtrace stack sampling (default − `--stack-sample-every 0`) | {} | {} ns per sample (1 in 64 of {} PGPGIN/fault) |",
            f(stacks, 1),
            f(stacks * 64.0 / pgpgin, 0),
            f(pgpgin, 2)
        );
        let _ = writeln!(
            s,
            "| bpftrace empty program on the tracepoint (− none) | {} | {} ns per hit |",
            f(diff_of("bpftrace-empty", "none"), 1),
            f(diff_of("bpftrace-empty", "none") / hits, 1)
        );
        let _ = writeln!(
            s,
            "| bpftrace per-cgroup count (− none) | {} | {} ns per hit |",
            f(diff_of("bpftrace", "none"), 1),
            f(diff_of("bpftrace", "none") / hits, 1)
        );
        let empty = diff_of("ref-empty", "none");
        let _ = writeln!(
            s,
            "| reference: empty raw_tp program (− none) | {} | {} ns per hit: the cost of any program on this \
             tracepoint |",
            f(empty, 1),
            f(empty / hits, 1)
        );
        for (key, what, lookups) in [
            ("ref-array", "PGPGIN → per-CPU array slot", 1.0),
            ("ref-lru1", "PGPGIN → LRU per-CPU hash by memcg", 1.0),
            ("ref-lru2", "PGPGIN + PGFAULT → LRU per-CPU hash by memcg", 2.0),
            ("ref-hash2", "PGPGIN + PGFAULT → per-CPU hash by memcg", 2.0),
        ] {
            let d = diff_of(key, "none");
            let _ = writeln!(
                s,
                "| reference: {what} (− none) | {} | {} ns per counted event above the empty program |",
                f(d, 1),
                f((d - empty) / (lookups * pgpgin), 1)
            );
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(
        s,
        "memcg events per page in the benchmark's cgroup (one untimed run under bpftrace, `item name`: count/page): {}\n",
        items
            .iter()
            .map(|(k, v)| format!("`{k}` {v:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Every run.
    let _ = writeln!(
        s,
        "<details><summary>All runs (CPU ns/fault; foreign = other programs on the tracepoint; load = 1-min load average)</summary>\n"
    );
    let mut configs = configs.to_vec();
    configs.push(NONE_END);
    let configs = &configs;
    let _ = write!(s, "| round | load | foreign |");
    for c in configs {
        let _ = write!(s, " {} |", c.key);
    }
    let _ = write!(s, "\n|---:|---:|---:|");
    for _ in configs {
        let _ = write!(s, "---:|");
    }
    let _ = writeln!(s);
    for r in 0..rounds {
        let row: Vec<&Run> = configs
            .iter()
            .filter_map(|c| runs.get(c.key).and_then(|v| v.get(r)))
            .collect();
        let load = stats::median(&row.iter().map(|x| x.load1).collect::<Vec<_>>());
        let foreign = row.iter().map(|x| x.foreign).max().unwrap_or(0);
        let _ = write!(s, "| {r} | {load:.2} | {foreign} |");
        for x in &row {
            let _ = write!(s, " {:.1} |", x.cpu_ns);
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "\n</details>\n");
    let verdict = |ok: bool| {
        if ctx.smoke {
            String::new()
        } else {
            format!(" {}", pass(ok))
        }
    };
    let summary = format!(
        "**Charge-path overhead** (CPU ns per page fault vs no tracer, median of per-round ratios): memtrace \
         charge accounting {} (target ≤ +2 %:{}), counters without stacks {}, OOM hooks only {}; bpftrace per-cgroup \
         count {} (memtrace below bpftrace:{}).",
        ratio(r_charges),
        verdict(r_charges <= 1.02),
        ratio(ratio_of("no-stacks")),
        ratio(ratio_of("oom-only")),
        ratio(r_bpftrace),
        verdict(r_charges < r_bpftrace),
    );
    Section {
        key: "faults",
        body: s,
        summary,
        errors,
    }
}
