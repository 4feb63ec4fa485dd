//! The faults section of BENCHMARKS.md: the table, the targets, what costs what, every run.

use std::{collections::BTreeMap, fmt::Write as _};

use super::{CHARGE_TP, Config, NONE_END, PERIOD, Run, Workload};
use crate::bench::{
    Ctx, Section, run_header,
    stats::{self, f, median, pass, ratio},
};

#[allow(clippy::too_many_arguments)]
pub fn report(
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
    let r_exact = ratio_of("exact");
    let r_bpftrace = ratio_of("bpftrace");
    let mut errors = Vec::new();
    if !ctx.smoke {
        let _ = writeln!(
            s,
            "Target: the default `memtrace watch` adds at most 2 % → {} ({}); and less than bpftrace's per-cgroup \
             count on the memcg event tracepoint → {} ({} vs {}). The opt-in exact mode: {}.\n",
            pass(r_charges <= 1.02),
            ratio(r_charges),
            pass(r_charges < r_bpftrace),
            ratio(r_charges),
            ratio(r_bpftrace),
            ratio(r_exact),
        );
    } else if r_charges.is_nan() || r_exact.is_nan() {
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
        let stacks = diff_of("exact", "exact-no-stacks");
        let period = f64::from(PERIOD);
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
        let sampled = diff_of("no-stacks", "none");
        let _ = writeln!(
            s,
            "| default, sampled counts and usage, no stacks (`--stack-sample-every 0` − none) | {} | {} ns per sample \
             (1 in {PERIOD} faults; includes the perf event's count on every fault) |",
            f(sampled, 1),
            f(sampled * period, 0),
        );
        let sampled_stacks = diff_of("charges", "no-stacks");
        let _ = writeln!(
            s,
            "| default's stacks (default − `--stack-sample-every 0`) | {} | {} ns per sample |",
            f(sampled_stacks, 1),
            f(sampled_stacks * period, 0),
        );
        let _ = writeln!(
            s,
            "| bpftrace, the same sampling (`software:page-faults:{PERIOD}` per-cgroup count − none) | {} | {} ns per sample |",
            f(diff_of("bpftrace-sampled", "none"), 1),
            f(diff_of("bpftrace-sampled", "none") * period, 0),
        );
        let _ = writeln!(
            s,
            "| exact counters, no stacks (`--exact-charges --stack-sample-every 0` − none) | {} | {} ns per tracepoint hit ({} hits/fault) |",
            f(diff_of("exact-no-stacks", "none"), 1),
            f(diff_of("exact-no-stacks", "none") / hits, 1),
            f(hits, 2)
        );
        let _ = writeln!(
            s,
            "| exact mode's stack sampling (`--exact-charges` − its counters) | {} | {} ns per sample (1 in 64 of {} PGPGIN/fault) |",
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
        "**Charge-path overhead** (CPU ns per page fault vs no tracer, median of per-round ratios): default \
         `memtrace watch` (1 in {PERIOD} faults sampled, stacks) {} (target ≤ +2 %:{}), without stacks {}, OOM hooks \
         only {}; opt-in exact mode {} (counters only {}); bpftrace per-cgroup count on the memcg tracepoint {} \
         (memtrace below bpftrace:{}), bpftrace sampling 1 in {PERIOD} faults {}.",
        ratio(r_charges),
        verdict(r_charges <= 1.02),
        ratio(ratio_of("no-stacks")),
        ratio(ratio_of("oom-only")),
        ratio(r_exact),
        ratio(ratio_of("exact-no-stacks")),
        ratio(r_bpftrace),
        verdict(r_charges < r_bpftrace),
        ratio(ratio_of("bpftrace-sampled")),
    );
    Section {
        key: "faults",
        body: s,
        summary,
        errors,
    }
}
