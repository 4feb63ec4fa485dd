//! `memtrace watch`: the daemon. Reads the OOM ring buffer as records arrive and hands one
//! event per killed task to the sinks (stdout, file, journald, webhook, Alertmanager), each
//! behind its own bounded queue, and counts it in the metrics. SIGINT/SIGTERM end it; dropping
//! the tracer detaches everything.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Duration, interval},
};

use crate::{
    attribution::BundleRoots,
    cgroup::{CgroupPaths, MemoryHierarchy},
    cli::WatchArgs,
    clock,
    config::Config,
    event::VictimRecord,
    kill::{EnrichOptions, Enricher},
    metrics::{self, Metrics},
    sinks::{Event, SinkReport, Sinks},
    tracer::{KernelCounters, Tracer, TracerOptions},
};

/// How often the kernel counters are checked for lost events.
const COUNTER_CHECK: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Delivery {
    delivered: u64,
    decode_errors: u64,
}

/// The config file (if any) with the flags over it, checked.
fn config(args: &WatchArgs) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    cfg.apply_flags(args);
    cfg.validate().context("invalid configuration")?;
    Ok(cfg)
}

pub async fn run(args: WatchArgs) -> anyhow::Result<()> {
    let cfg = config(&args)?;
    let opts = TracerOptions {
        forced: cfg.variants()?,
        oom_ring_bytes: cfg.watch.oom_ring_bytes,
        try_all: false,
    };
    let (tracer, mut ring) = Tracer::start(&opts)?;
    let paths = match MemoryHierarchy::detect() {
        Ok(h) => Some(CgroupPaths::new(h)),
        Err(e) => {
            log::warn!("{e}: cgroup paths will be missing from events");
            None
        }
    };
    let mut opts = EnrichOptions {
        ws_alert_ratio: cfg.watch.ws_alert_ratio,
        ..EnrichOptions::default()
    };
    if !cfg.watch.oci_bundles.is_empty() {
        opts.bundles = BundleRoots(cfg.watch.oci_bundles.clone());
    }
    let mut enricher = Enricher::new(paths, opts);
    let host = cfg.watch.host_name.clone().unwrap_or_else(hostname);
    let via: Vec<String> = tracer
        .hooks
        .iter()
        .map(|h| match h.selected {
            Some(v) => format!("{} via {}", h.hook, v.attach.kind()),
            None => format!("{} unavailable", h.hook),
        })
        .collect();
    let metrics = Arc::new(Metrics::new(cfg.metrics.max_cgroups));
    let server = match cfg.metrics_addr()? {
        Some(addr) => {
            let l = metrics::bind(addr)
                .await
                .with_context(|| format!("binding the metrics address {addr} (metrics.listen)"))?;
            let bound = l.local_addr().unwrap_or(addr);
            eprintln!("memtrace: metrics on http://{bound}/metrics");
            Some(metrics::serve(l, metrics.clone()))
        }
        None => None,
    };
    let mut sinks = Sinks::start(&cfg.sinks, metrics.clone(), &host)
        .await
        .context("starting the sinks")?;
    log::info!("sinks: {}", sinks.names().join(", "));
    // Tests and scripts wait for this line: from here on, no kill is missed.
    eprintln!("memtrace: attached ({}); watching for OOM kills", via.join(", "));

    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut tick = interval(COUNTER_CHECK);
    let mut delivery = Delivery::default();
    let mut reported_lost = 0;

    let mut emit = |r: VictimRecord, delivery: &mut Delivery| -> anyhow::Result<()> {
        let kill = enricher.enrich(r);
        let delay = clock::boot_ns().saturating_sub(kill.ktime_boot_ns);
        metrics.record_kill(&kill);
        sinks.dispatch(Event::new(kill, host.clone(), delay));
        delivery.delivered += 1;
        Ok(())
    };

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("polling the OOM ring buffer")?;
                for r in drain(guard.get_inner_mut(), &mut delivery, &metrics) {
                    emit(r, &mut delivery)?;
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                reported_lost = report_losses(&tracer, reported_lost, &metrics);
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        if args.exit_after.is_some_and(|n| delivery.delivered >= n) {
            break;
        }
    }
    // Records that arrived with the signal are still reported.
    for r in drain(ring.get_mut(), &mut delivery, &metrics) {
        emit(r, &mut delivery)?;
    }
    let counters = tracer.counters().unwrap_or_default();
    report_losses(&tracer, reported_lost, &metrics);
    drop(tracer);
    let reports = sinks.shutdown(cfg.watch.shutdown_timeout).await;
    if let Some(s) = server {
        s.abort();
    }
    sink_summary(&reports);
    summary(&counters, &delivery);
    Ok(())
}

/// Decodes every record waiting in the ring buffer; the ring slot is released before any I/O.
fn drain(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    delivery: &mut Delivery,
    metrics: &Metrics,
) -> Vec<VictimRecord> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        match VictimRecord::try_from(&*item) {
            Ok(r) => out.push(r),
            Err(e) => {
                delivery.decode_errors += 1;
                metrics.lost("decode_error", "", 1);
                log::error!("undecodable OOM record ({e}); counted as lost");
            }
        }
    }
    out
}

/// Loudly reports records the kernel could not queue; returns the total reported so far.
fn report_losses(tracer: &Tracer, reported: u64, metrics: &Metrics) -> u64 {
    let counters = tracer.counters();
    if let Ok(c) = &counters {
        metrics.ringbuf_full_total(c.oom_ringbuf_full);
    }
    match counters {
        Ok(c) if c.oom_ringbuf_full > reported => {
            log::error!(
                "LOST {} OOM events: the OOM ring buffer was full ({} lost in total); raise --oom-ring-bytes",
                c.oom_ringbuf_full - reported,
                c.oom_ringbuf_full
            );
            c.oom_ringbuf_full
        }
        Ok(_) => reported,
        Err(e) => {
            log::warn!("reading kernel counters: {e}");
            reported
        }
    }
}

/// One line per sink on stderr at exit.
fn sink_summary(reports: &[SinkReport]) {
    for r in reports {
        eprintln!(
            "memtrace: sink {}: delivered={} failed={} dropped={} unfinished={}",
            r.name, r.delivered, r.failed, r.dropped, r.unfinished
        );
    }
}

/// One line on stderr at exit: produced == delivered + dropped, checkable by tests.
fn summary(c: &KernelCounters, d: &Delivery) {
    eprintln!(
        "memtrace: exiting: kernel_seen={} delivered={} dropped_ringbuf_full={} decode_errors={} read_errors={}",
        c.oom_seen, d.delivered, c.oom_ringbuf_full, d.decode_errors, c.oom_read_errors
    );
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
