//! `memtrace hotspots`: which stacks charged memory to a cgroup (and its descendants) over a
//! time window, as a table or in folded format for flame-graph tools.

use std::{collections::HashSet, time::Duration};

use anyhow::Context as _;

use crate::{
    cgroup::{CgroupPaths, MemoryHierarchy},
    charges::ChargeMonitor,
    cli::HotspotsArgs,
    output::Format,
    stacks::HotStack,
    symbolize::Symbols,
    tracer::{ChargeOptions, Tracer, TracerOptions},
};

pub async fn run(args: HotspotsArgs) -> anyhow::Result<()> {
    let opts = TracerOptions {
        charges: Some(ChargeOptions { sample_every: args.sample_every }),
        ..TracerOptions::default()
    };
    let (tracer, _rings) = Tracer::start(&opts)?;
    if tracer.selected("charge").is_none() {
        anyhow::bail!("no charge-path hook could attach on this kernel (see `memtrace probes`)");
    }
    let hierarchy = MemoryHierarchy::detect()?;
    let mut monitor = ChargeMonitor::new(args.duration + Duration::from_secs(5));
    monitor.poll(tracer.ebpf(), 4096).context("reading charge maps")?;
    eprintln!("memtrace: sampling charges for {}", humantime::format_duration(args.duration));
    tokio::select! {
        _ = tokio::time::sleep(args.duration) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    monitor.poll(tracer.ebpf(), 4096).context("reading charge maps")?;

    let mut paths = CgroupPaths::new(hierarchy);
    let ids: Vec<u64> = match &args.cgroup {
        Some(prefix) => {
            let prefix = format!("/{}", prefix.trim_matches('/'));
            let ids: HashSet<u64> = paths
                .ids_with_paths()
                .filter(|(_, p)| *p == prefix || p.starts_with(&format!("{prefix}/")))
                .map(|(id, _)| id)
                .collect();
            if ids.is_empty() {
                anyhow::bail!("no cgroup {prefix} under {}", paths.hierarchy().root.display());
            }
            ids.into_iter().collect()
        }
        None => monitor.rates.keys().copied().collect(),
    };
    let mut syms = Symbols::new();
    let top: Vec<HotStack> = monitor
        .top_samples(&ids, args.duration + Duration::from_secs(1), args.top)
        .iter()
        .map(|(k, n)| HotStack::resolve(tracer.ebpf(), &mut syms, k, *n))
        .collect();
    if args.folded {
        for h in &top {
            println!("{}", h.folded());
        }
        return Ok(());
    }
    match args.output {
        Format::Json => {
            let rows: Vec<serde_json::Value> = top
                .iter()
                .map(|h| {
                    serde_json::json!({
                        "count": h.count,
                        "cgroup": paths.resolve(h.cgroup_id),
                        "pid": h.pid,
                        "comm": h.comm,
                        "user_stack": h.user,
                        "kernel_stack": h.kernel,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
        }
        Format::Text => {
            let total: u64 = top.iter().map(|h| h.count).sum::<u64>().max(1);
            println!("{:>7} {:>6}  {:<16} {:>7}  {:<40} KERNEL", "SAMPLES", "SHARE", "COMM", "PID", "USER (innermost)");
            for h in &top {
                println!(
                    "{:>7} {:>5.1}%  {:<16} {:>7}  {:<40} {}",
                    h.count,
                    h.count as f64 * 100.0 / total as f64,
                    h.comm,
                    h.pid,
                    h.top_user_frame(),
                    h.kernel.first().map_or("?", String::as_str)
                );
            }
            if top.is_empty() {
                println!("(no charge samples in the window)");
            }
        }
    }
    Ok(())
}
