//! `memtrace watch`: the daemon. Reads the OOM ring buffer as records arrive and writes one
//! event per killed task. SIGINT/SIGTERM end it; dropping the tracer detaches everything.

use std::io::Write as _;

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
    event::{CgroupCreated, OomRecord},
    kill::{EnrichOptions, Enricher},
    output::{Format, json, text},
    reconcile::Reconciler,
    tracer::{AsyncRing, KernelCounters, Rings, Tracer, TracerOptions},
};

/// How often the kernel counters are checked for lost events.
const COUNTER_CHECK: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Delivery {
    delivered: u64,
    decode_errors: u64,
}

pub async fn run(args: WatchArgs) -> anyhow::Result<()> {
    // Before anything is attached: a SIGTERM that arrives as soon as "attached" is printed
    // (or during start-up) must still end in a clean exit with the summary, not in the
    // default action (tests/tests/lifecycle.rs).
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let opts = TracerOptions {
        forced: args.variants.clone(),
        oom_ring_bytes: args.oom_ring_bytes,
        try_all: false,
    };
    let paths = match MemoryHierarchy::detect() {
        Ok(h) => Some(CgroupPaths::new(h)),
        Err(e) => {
            log::warn!("{e}: cgroup paths will be missing from events");
            None
        }
    };
    // The kernel's kill counters just before attaching, and again just after.
    let mut reconciler = paths.as_ref().map(Reconciler::new);
    let (tracer, rings) = Tracer::start(&opts)?;
    if let Some(r) = reconciler.as_mut() {
        r.attached();
    }
    let Rings {
        oom: mut ring,
        cgroups: mut cgroup_ring,
    } = rings;
    let mut opts = EnrichOptions {
        ws_alert_ratio: args.ws_alert_ratio,
        ..EnrichOptions::default()
    };
    if !args.oci_bundles.is_empty() {
        opts.bundles = BundleRoots(args.oci_bundles.clone());
    }
    let mut enricher = Enricher::new(paths, opts);
    let host = hostname();
    let via: Vec<String> = tracer
        .hooks
        .iter()
        .map(|h| match h.selected {
            Some(v) => format!("{} via {}", h.hook, v.attach.kind()),
            None => format!("{} unavailable", h.hook),
        })
        .collect();
    // Tests and scripts wait for this line: from here on, no kill is missed.
    eprintln!("memtrace: attached ({}); watching for OOM kills", via.join(", "));

    let mut tick = interval(COUNTER_CHECK);
    let mut stdout = std::io::stdout().lock();
    let mut delivery = Delivery::default();
    let mut reported_lost = 0;

    let mem_root = enricher.paths().and_then(|p| p.hierarchy().hierarchy_id());
    let mut reconciled_at = 0;

    let mut emit = |r: OomRecord, enricher: &mut Enricher, delivery: &mut Delivery| -> anyhow::Result<()> {
        let r = match r {
            OomRecord::Victim(r) => r,
            OomRecord::Context(c) => {
                enricher.note_context(c);
                return Ok(());
            }
        };
        let kill = enricher.enrich(r);
        let delay = clock::boot_ns().saturating_sub(kill.ktime_boot_ns);
        let line = match args.output {
            Format::Text => text::event(&kill, delay),
            Format::Json => json::event(&kill, &host, delay).to_string(),
        };
        writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .context("writing to stdout")?;
        delivery.delivered += 1;
        Ok(())
    };

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("polling the OOM ring buffer")?;
                // Cgroups created just before the kill are learnt first.
                learn_cgroups(cgroup_ring.as_mut(), &mut enricher, mem_root);
                for r in drain(guard.get_inner_mut(), &mut delivery) {
                    emit(r, &mut enricher, &mut delivery)?;
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                learn_cgroups(cgroup_ring.as_mut(), &mut enricher, mem_root);
                reported_lost = report_losses(&tracer, reported_lost);
                // Compare with the kernel's counters while kills keep coming, and once more after.
                if let Some(rec) = reconciler.as_mut() && (delivery.delivered != reconciled_at || rec.has_pending()) {
                    reconciled_at = delivery.delivered;
                    for m in rec.check_persistent(&enricher.kills_by_cgroup) {
                        log::error!(
                            "RECONCILE: cgroup {}: the kernel counted {} OOM kills since memtrace started, memtrace reported {}",
                            m.cgroup, m.kernel, m.reported
                        );
                    }
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        if args.exit_after.is_some_and(|n| delivery.delivered >= n) {
            break;
        }
    }
    // Records that arrived with the signal are still reported.
    learn_cgroups(cgroup_ring.as_mut(), &mut enricher, mem_root);
    for r in drain(ring.get_mut(), &mut delivery) {
        emit(r, &mut enricher, &mut delivery)?;
    }
    let counters = tracer.counters().unwrap_or_default();
    report_losses(&tracer, reported_lost);
    let reconciled = reconciler.as_ref().map_or_else(
        || "unavailable".to_owned(),
        |r| r.check(&enricher.kills_by_cgroup).describe(),
    );
    summary(&counters, &delivery, &reconciled);
    drop(tracer);
    Ok(())
}

/// Records the paths of cgroups created in the memory hierarchy. Read without waiting: the
/// records only matter when a kill needs them, and every kill drains them first.
fn learn_cgroups(ring: Option<&mut AsyncRing>, enricher: &mut Enricher, mem_root: Option<u32>) {
    let (Some(ring), Some(paths)) = (ring, enricher.paths_mut()) else {
        return;
    };
    while let Some(item) = ring.get_mut().next() {
        match CgroupCreated::try_from(&*item) {
            Ok(c) if Some(c.root) == mem_root => {
                if let Some(path) = c.path {
                    paths.remember(c.id, path);
                }
            }
            Ok(_) => {}
            Err(e) => log::warn!("undecodable cgroup record: {e}"),
        }
    }
}

/// Decodes every record waiting in the ring buffer; the ring slot is released before any I/O.
fn drain(ring: &mut aya::maps::RingBuf<aya::maps::MapData>, delivery: &mut Delivery) -> Vec<OomRecord> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        match OomRecord::try_from(&*item) {
            Ok(r) => out.push(r),
            Err(e) => {
                delivery.decode_errors += 1;
                log::error!("undecodable OOM record ({e}); counted as lost");
            }
        }
    }
    out
}

/// Loudly reports records the kernel could not queue; returns the total reported so far.
fn report_losses(tracer: &Tracer, reported: u64) -> u64 {
    match tracer.counters() {
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

/// One line on stderr at exit: produced == delivered + dropped, checkable by tests.
fn summary(c: &KernelCounters, d: &Delivery, reconciled: &str) {
    eprintln!(
        "memtrace: exiting: kernel_seen={} delivered={} dropped_ringbuf_full={} decode_errors={} read_errors={} \
         context_seen={} context_dropped={} cgroup_records_dropped={} reconciled={reconciled}",
        c.oom_seen,
        d.delivered,
        c.oom_ringbuf_full,
        d.decode_errors,
        c.oom_read_errors,
        c.oom_ctx_seen,
        c.oom_ctx_ringbuf_full,
        c.cgroup_ringbuf_full,
    );
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
