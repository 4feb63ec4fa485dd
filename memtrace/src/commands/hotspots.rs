//! `memtrace hotspots`: which stacks charged memory to a cgroup (and its descendants) over a
//! time window, as a table or in folded format for flame-graph tools, and as a flame graph
//! (`--svg FILE`).

use std::{fmt::Write as _, time::Duration};

use anyhow::Context as _;

use crate::{
    cgroup::{CgroupPaths, MemoryHierarchy, paths::subtree_ids},
    charges::accounting::ChargeMonitor,
    charges::maps::ChargeMaps,
    charges::stacks::{HotStack, merge_pids},
    charges::symbolize::Symbols,
    cli::HotspotsArgs,
    kernel::tracer::{ChargeOptions, Tracer},
    output::{self, Format, flamegraph},
};

pub async fn run(args: HotspotsArgs) -> anyhow::Result<()> {
    let hierarchy = MemoryHierarchy::detect()?;
    // Exact mode for a bounded session: stacks of every kind of charge, kernel path included.
    let (tracer, _rings, mut maps) =
        Tracer::start_charges(&hierarchy, ChargeOptions::exact_with_stacks(args.sample_every))?;
    let mut monitor = ChargeMonitor::new(args.duration + Duration::from_secs(5));
    let mut syms = Symbols::new();
    let mut paths = CgroupPaths::new(hierarchy);
    // The cgroups asked about, before sampling: a wrong name is an error at once, and their
    // processes are recorded when they exec (a process killed within milliseconds of its first
    // sample is still named). Without --cgroup, every cgroup: recorded when sampled only.
    let asked = match &args.cgroup {
        Some(cgroup) => {
            let ids = asked_ids(cgroup, &mut paths)?;
            maps.record_execs_in(ids.iter().copied());
            Some(ids)
        }
        None => None,
    };
    monitor.poll(&mut maps, 4096);
    eprintln!(
        "memtrace: sampling charges for {}",
        humantime::format_duration(args.duration)
    );
    sample(&mut monitor, &mut maps, &mut syms, args.duration).await;
    // Cgroups created under the asked one while sampling count too.
    let ids: Vec<u64> = match (&args.cgroup, asked) {
        (Some(cgroup), Some(mut ids)) => {
            ids.extend(subtree_ids(cgroup, paths.ids_with_paths()));
            ids.sort_unstable();
            ids.dedup();
            ids
        }
        _ => monitor.rates.keys().copied().collect(),
    };
    say_losses(&tracer);
    drop(tracer);
    // Every sample of the window, symbolized, then rows that differ only by pid merged: the
    // top N is taken from the merged rows.
    let all: Vec<HotStack> = monitor
        .top_samples(&ids, args.duration + Duration::from_secs(2), usize::MAX)
        .iter()
        .map(|s| HotStack::resolve(&mut syms, s))
        .collect();
    let mut top = merge_pids(all, None);
    top.truncate(args.top);
    if let Some(path) = &args.svg {
        let folded: Vec<String> = top.iter().map(HotStack::folded).collect();
        let title = match &args.cgroup {
            Some(c) => format!("memory charges in /{}", c.trim_matches('/')),
            None => "memory charges".to_owned(),
        };
        flamegraph::write(path, &folded, &title)?;
        eprintln!(
            "memtrace: flame graph of {} stacks in {}",
            top.len(),
            path.display()
        );
    }
    let out = if args.folded {
        top.iter().map(|h| h.folded() + "\n").collect()
    } else {
        text(&top, args.output, &mut paths)?
    };
    output::to_stdout(&out).context("writing to stdout")?;
    Ok(())
}

/// The ids of `cgroup` and the cgroups below it; an error when there is no such cgroup.
fn asked_ids(cgroup: &str, paths: &mut CgroupPaths) -> anyhow::Result<Vec<u64>> {
    let ids = subtree_ids(cgroup, paths.ids_with_paths());
    if ids.is_empty() {
        anyhow::bail!(
            "no cgroup /{} under {}",
            cgroup.trim_matches('/'),
            paths.hierarchy().root.display()
        );
    }
    Ok(ids)
}

/// Drains the maps once a second until `duration` or Ctrl-C: the kernel maps stay small, and
/// user stacks are symbolized while their processes still run.
async fn sample(monitor: &mut ChargeMonitor, maps: &mut ChargeMaps, syms: &mut Symbols, duration: Duration) {
    let deadline = tokio::time::Instant::now() + duration;
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep((deadline - now).min(Duration::from_secs(1))) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        monitor.poll(maps, 4096);
        for s in monitor.latest() {
            let _ = syms.user(s.key.tgid, &s.user_ips);
        }
    }
}

/// Samples whose frames were lost are said, not hidden.
fn say_losses(tracer: &Tracer) {
    let Ok(c) = tracer.counters() else { return };
    if c.stacks_collided > 0 {
        eprintln!(
            "memtrace: {} stacks lost to STACKS map collisions (those samples have no user or kernel frames)",
            c.stacks_collided
        );
    }
    if c.stack_tasks_ringbuf_full > 0 {
        eprintln!(
            "memtrace: {} new processes not recorded (STACK_TASKS ring full): their frames may stay addresses",
            c.stack_tasks_ringbuf_full
        );
    }
}

/// The rows, as JSON or as a table.
fn text(top: &[HotStack], output: Format, paths: &mut CgroupPaths) -> anyhow::Result<String> {
    let mut out = String::new();
    match output {
        Format::Json => {
            let rows: Vec<serde_json::Value> = top
                .iter()
                .map(|h| {
                    serde_json::json!({
                        "count": h.count,
                        "cgroup": paths.resolve(h.cgroup_id),
                        "pid": h.pid,
                        "pids": h.pids,
                        "comm": h.comm,
                        "user_stack": h.user,
                        "kernel_stack": h.kernel,
                    })
                })
                .collect();
            out = serde_json::to_string_pretty(&rows)? + "\n";
        }
        Format::Text => {
            let total: u64 = top.iter().map(|h| h.count).sum::<u64>().max(1);
            let _ = writeln!(
                out,
                "{:>7} {:>6}  {:<16} {:>7}  {:<40} KERNEL",
                "SAMPLES", "SHARE", "COMM", "PID", "USER (innermost)"
            );
            for h in top {
                let _ = writeln!(
                    out,
                    "{:>7} {:>5.1}%  {:<16} {:>7}  {:<40} {}",
                    h.count,
                    h.count as f64 * 100.0 / total as f64,
                    h.comm,
                    pid_cell(h),
                    h.top_user_frame(),
                    h.kernel.first().map_or("?", |f| f)
                );
            }
            if top.is_empty() {
                let _ = writeln!(out, "(no charge samples in the window)");
            }
        }
    }
    Ok(out)
}

/// The PID column: the pid, or how many processes a merged row sums.
fn pid_cell(h: &HotStack) -> String {
    if h.pids > 1 {
        format!("{}+{}", h.pid, h.pids - 1)
    } else {
        h.pid.to_string()
    }
}
