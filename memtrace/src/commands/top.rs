//! `memtrace top`: cgroups sorted by charge rate, with usage, working set, limit, headroom,
//! reclaim stalls and kills. `--once` prints one sample (text or JSON) for scripts.

use std::time::Duration;

use anyhow::Context as _;

use crate::{
    cgroup::{CgroupPaths, MemoryHierarchy},
    charges::{ChargeMonitor, Row, rows},
    cli::TopArgs,
    output::{Format, human_bytes},
    tracer::{ChargeOptions, Tracer, TracerOptions},
};

fn print_text(rows: &[Row]) {
    println!(
        "{:<48} {:>10} {:>10} {:>10} {:>6} {:>10} {:>10} {:>8} {:>5}",
        "CGROUP", "USAGE", "WSET", "LIMIT", "HEAD%", "CHARGES/s", "FAULTS/s", "STALLS/s", "KILLS"
    );
    let opt = |v: Option<u64>| v.map_or("-".into(), human_bytes);
    for r in rows {
        println!(
            "{:<48} {:>10} {:>10} {:>10} {:>6} {:>10.0} {:>10.0} {:>8.1} {:>5}",
            r.cgroup,
            opt(r.usage_bytes),
            opt(r.working_set_bytes),
            r.limit_bytes.map_or("none".into(), human_bytes),
            r.headroom_pct.map_or("-".into(), |h| format!("{h:.0}")),
            r.rate.charge_events_per_s,
            r.rate.faults_per_s,
            r.rate.reclaim_stalls_per_s,
            r.oom_kills.map_or("-".into(), |k| k.to_string()),
        );
    }
}

pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    let opts = TracerOptions { charges: Some(ChargeOptions { sample_every: 0 }), ..TracerOptions::default() };
    let (tracer, _rings) = Tracer::start(&opts)?;
    if tracer.selected("charge").is_none() {
        anyhow::bail!("no charge-path hook could attach on this kernel (see `memtrace probes`)");
    }
    let mut paths = CgroupPaths::new(MemoryHierarchy::detect()?);
    let mut monitor = ChargeMonitor::new(Duration::from_secs(10));
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    monitor.poll(tracer.ebpf(), page).context("reading charge maps")?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
        }
        monitor.poll(tracer.ebpf(), page).context("reading charge maps")?;
        let rows = rows(&monitor, &mut paths);
        match args.output {
            Format::Json => println!("{}", serde_json::to_string(&rows)?),
            Format::Text => {
                if !args.once {
                    // Clear the screen and home the cursor: a live view without a TUI library.
                    print!("\x1b[2J\x1b[H");
                }
                print_text(&rows);
            }
        }
        if args.once {
            return Ok(());
        }
    }
}
