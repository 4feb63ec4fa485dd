//! `memtrace watch`: the daemon. Reads the OOM ring buffer as records arrive and hands one
//! event per killed task (and each pre-OOM warning) to the sinks (stdout, file, journald,
//! webhook, Alertmanager), each behind its own bounded queue, and counts it in the metrics.
//! SIGINT/SIGTERM end it; dropping the tracer detaches everything.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Duration, interval},
};

use crate::{
    cgroup::oom_stall::StallWatch,
    cgroup::reconcile::Reconciler,
    cgroup::{CgroupPaths, MemoryHierarchy},
    charges::warnings::{PreOomWarning, WarnOptions},
    charges::worker::ChargeWatch,
    cli::WatchArgs,
    config::Config,
    enrich::attribution::BundleRoots,
    enrich::docker::DockerRoots,
    enrich::episodes::Episodes,
    enrich::kill::{EnrichOptions, Enricher},
    enrich::user_kill::UserKill,
    kernel::clock,
    kernel::records::{CgroupCreated, OomRecord},
    kernel::tracer::{AsyncRing, ChargeOptions, KernelCounters, Rings, Tracer, TracerOptions},
    kernel::user_kill::UserKillSignal,
    output::flamegraph,
    output::metrics::{self, Metrics},
    sinks::{Event, SinkReport, Sinks},
};

/// How often the kernel counters are checked for lost events.
const COUNTER_CHECK: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Delivery {
    delivered: u64,
    warnings: u64,
    /// Warnings dropped because a kill in their cgroup came first.
    late_warnings: u64,
    decode_errors: u64,
    /// Userspace SIGKILL records read, and those reported (known memory killers, or all).
    user_kills_seen: u64,
    user_kills: u64,
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
    // Before anything is attached: a SIGTERM that arrives as soon as "attached" is printed
    // (or during start-up) must still end in a clean exit with the summary, not in the
    // default action (tests/tests/lifecycle.rs).
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let cfg = config(&args)?;
    let hierarchy = MemoryHierarchy::detect();
    let opts = TracerOptions {
        hierarchy: hierarchy.as_ref().ok().cloned(),
        oom: true,
        forced: cfg.watch.variants.clone(),
        oom_ring_bytes: cfg.watch.oom_ring_bytes,
        try_all: false,
        charges: cfg.charges.enabled.then_some(ChargeOptions {
            sample_every: cfg.charges.stack_sample_every,
            exact: cfg.charges.exact,
            fault_period: cfg.charges.fault_sample_period,
        }),
    };
    let paths = match hierarchy {
        Ok(h) => Some(CgroupPaths::new(h)),
        Err(e) => {
            log::warn!("{e}: cgroup paths will be missing from events");
            None
        }
    };
    // The kernel's kill counters just before attaching, and again just after.
    let mut reconciler = paths.as_ref().map(Reconciler::new);
    let (mut tracer, rings) = Tracer::start(&opts)?;
    if let Some(r) = reconciler.as_mut() {
        r.attached();
    }
    let Rings {
        oom: mut ring,
        cgroups: mut cgroup_ring,
        user_kills: mut user_kill_ring,
    } = rings;
    let mut opts = EnrichOptions {
        ws_alert_ratio: cfg.watch.ws_alert_ratio,
        ..EnrichOptions::default()
    };
    if !cfg.watch.oci_bundles.is_empty() {
        opts.names.bundles = BundleRoots(cfg.watch.oci_bundles.clone());
    }
    if !cfg.watch.docker_roots.is_empty() {
        opts.names.docker = DockerRoots(cfg.watch.docker_roots.clone());
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
    let metrics = Arc::new(Metrics::new(cfg.metrics.max_cgroups, cfg.metrics.forget_after));
    let mut charge_watch = match (tracer.take_charge_maps(), enricher.paths()) {
        (Some(maps), Some(paths)) => {
            let warn = WarnOptions {
                ratio: cfg.charges.warn_ratio,
                every: cfg.charges.warn_every,
            };
            Some(
                ChargeWatch::spawn(
                    maps,
                    paths.clone(),
                    cfg.charges.kill_context_window,
                    warn,
                    COUNTER_CHECK,
                    Some(metrics.clone()),
                )
                .context("starting the charge worker")?,
            )
        }
        _ => None,
    };
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

    let mut tick = interval(COUNTER_CHECK);
    let mut delivery = Delivery::default();
    let mut reported_lost = 0;
    let mut stalls = StallWatch::default();
    let mut episodes = Episodes::default();

    let mem_root = enricher.paths().and_then(|p| p.hierarchy().hierarchy_id());
    let mut reconciled_at = 0;

    let flamegraph_dir = cfg.charges.kill_flamegraph_dir.as_deref();
    let emit = |r: OomRecord,
                enricher: &mut Enricher,
                charge_watch: &mut Option<ChargeWatch>,
                sinks: &mut Sinks,
                delivery: &mut Delivery,
                episodes: &mut Episodes|
     -> anyhow::Result<()> {
        let r = match r {
            OomRecord::Victim(r) => r,
            OomRecord::Context(c) => {
                enricher.note_context(c);
                return Ok(());
            }
        };
        let mut kill = enricher.enrich(r);
        if let (Some(cw), Some(paths)) = (charge_watch.as_mut(), enricher.paths()) {
            kill.hotspots = cw.kill_context(paths, &kill);
        }
        if !kill.victim_exiting {
            let oom = kill.oom_cgroup.as_ref();
            let freed = [
                kill.anon_rss_bytes,
                kill.file_rss_bytes,
                kill.shmem_rss_bytes,
                kill.swap_bytes,
            ]
            .into_iter()
            .flatten()
            .fold(0u64, u64::saturating_add);
            let (ep, ended) = episodes.note(
                oom.and_then(|o| o.cgroup.id).unwrap_or(0),
                oom.and_then(|o| o.cgroup.path.as_deref()),
                kill.cgroup.as_ref().and_then(|c| c.path.as_deref()),
                kill.ktime_boot_ns,
                kill.time,
                freed,
            );
            if let Some(e) = ended {
                sinks.dispatch(Event::from_episode(e, host.clone()));
            }
            kill.episode = Some(ep);
        }
        let delay = clock::boot_ns().saturating_sub(kill.ktime_boot_ns);
        metrics.record_kill(&kill);
        // The flame graph is drawn after the event is out: its path is known before.
        let graph = flamegraph_dir.filter(|_| !kill.hotspots.is_empty()).map(|dir| {
            let folded: Vec<String> = kill.hotspots.iter().map(|h| h.folded()).collect();
            let path = flamegraph::kill_path(dir, kill.seq, kill.pid);
            let title = format!("charges before the OOM kill of pid {}", kill.pid);
            (path, folded, title)
        });
        let mut ev = Event::from_kill(kill, host.clone(), delay);
        if let Some((path, ..)) = &graph {
            ev.json["memtrace.flamegraph"] = path.to_string_lossy().into();
        }
        sinks.dispatch(ev);
        if let Some((path, folded, title)) = graph
            && let Err(e) = flamegraph::write(&path, &folded, &title)
        {
            log::warn!("kill flame graph: {e}");
        }
        delivery.delivered += 1;
        Ok(())
    };

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("polling the OOM ring buffer")?;
                // Cgroups created just before the kill are learnt first.
                learn_cgroups(cgroup_ring.as_mut(), &mut enricher, mem_root);
                for r in drain(guard.get_inner_mut(), &mut delivery, &metrics) {
                    emit(r, &mut enricher, &mut charge_watch, &mut sinks, &mut delivery, &mut episodes)?;
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                learn_cgroups(cgroup_ring.as_mut(), &mut enricher, mem_root);
                reported_lost = report_losses(&tracer, reported_lost, &metrics);
                for e in episodes.ended(clock::boot_ns()) {
                    sinks.dispatch(Event::from_episode(e, host.clone()));
                }
                if let Some(p) = enricher.paths() {
                    for s in stalls.poll(p.hierarchy()) {
                        sinks.dispatch(Event::from_stall(s, host.clone()));
                    }
                }
                if let Some(p) = enricher.paths() {
                    let h = p.hierarchy();
                    metrics.sweep(|cgroup| h.dir(cgroup).is_dir());
                }
                // Compare with the kernel's counters while kills keep coming, and once more after.
                if let Some(rec) = reconciler.as_mut() && (delivery.delivered != reconciled_at || rec.has_pending()) {
                    reconciled_at = delivery.delivered;
                    let mismatches = rec.check_persistent(&enricher.kills);
                    metrics.reconciled(&mismatches);
                    for m in mismatches {
                        log::error!(
                            "RECONCILE: cgroup {}: the kernel counted {} OOM kills since memtrace started, memtrace reported {}",
                            m.cgroup, m.kernel, m.reported
                        );
                    }
                }
            }
            Some(w) = next_warning(&mut charge_watch) => {
                // Kills already in the ring go first: a warning whose cgroup was killed since
                // its evidence began would come after its kill, and is dropped.
                for r in drain(ring.get_mut(), &mut delivery, &metrics) {
                    emit(r, &mut enricher, &mut charge_watch, &mut sinks, &mut delivery, &mut episodes)?;
                }
                if enricher.recent.suppresses(&w) {
                    log::info!("pre-OOM warning for {} dropped: a kill there already", w.cgroup);
                    delivery.late_warnings += 1;
                } else {
                    sinks.dispatch(Event::from_warning(w, host.clone()));
                    delivery.warnings += 1;
                }
            }
            guard = readable(user_kill_ring.as_mut()) => {
                let mut guard = guard.context("polling the userspace kill ring buffer")?;
                user_kills(guard.get_inner_mut(), &mut enricher, &mut sinks, &mut delivery, &host, cfg.watch.all_userspace_kills);
                guard.clear_ready();
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
        if args.exit_after.is_some_and(|n| delivery.delivered >= n) {
            break;
        }
    }
    // Records that arrived with the signal are still reported; nothing new is produced from
    // here on, so the counters read below count exactly what this drain can see.
    tracer.stop_producing();
    if let Some(r) = user_kill_ring.as_mut() {
        user_kills(
            r.get_mut(),
            &mut enricher,
            &mut sinks,
            &mut delivery,
            &host,
            cfg.watch.all_userspace_kills,
        );
    }
    learn_cgroups(cgroup_ring.as_mut(), &mut enricher, mem_root);
    for r in drain(ring.get_mut(), &mut delivery, &metrics) {
        emit(
            r,
            &mut enricher,
            &mut charge_watch,
            &mut sinks,
            &mut delivery,
            &mut episodes,
        )?;
    }
    // Episodes still open at exit are summarised with what was seen.
    for e in episodes.ended(u64::MAX) {
        sinks.dispatch(Event::from_episode(e, host.clone()));
    }
    // The kernel counts a kill a moment before its record is written: a count that is short
    // at exit is read again after the ring, a few times, before it is called a mismatch.
    let reconciled = match reconciler.as_ref() {
        None => "unavailable".to_owned(),
        Some(r) => {
            let mut report = r.check(&enricher.kills);
            for _ in 0..5 {
                if report.ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
                learn_cgroups(cgroup_ring.as_mut(), &mut enricher, mem_root);
                for rec in drain(ring.get_mut(), &mut delivery, &metrics) {
                    emit(
                        rec,
                        &mut enricher,
                        &mut charge_watch,
                        &mut sinks,
                        &mut delivery,
                        &mut episodes,
                    )?;
                }
                report = r.check(&enricher.kills);
            }
            report.describe()
        }
    };
    let counters = tracer.counters().unwrap_or_default();
    report_losses(&tracer, reported_lost, &metrics);
    drop(charge_watch);
    drop(tracer);
    let reports = sinks.shutdown(cfg.watch.shutdown_timeout).await;
    if let Some(s) = server {
        s.abort();
    }
    sink_summary(&reports);
    summary(&counters, &delivery, &reconciled);
    Ok(())
}

/// The next pre-OOM warning from the charge worker; never, without one.
async fn next_warning(cw: &mut Option<ChargeWatch>) -> Option<PreOomWarning> {
    match cw {
        Some(cw) => cw.warnings.recv().await,
        None => std::future::pending().await,
    }
}

/// Readiness of an optional ring; never, without one.
async fn readable(
    ring: Option<&mut AsyncRing>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, aya::maps::RingBuf<aya::maps::MapData>>> {
    match ring {
        Some(r) => r.readable_mut().await,
        None => std::future::pending().await,
    }
}

/// Reports the SIGKILLs userspace memory killers sent (every userspace SIGKILL with `all`).
fn user_kills(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    enricher: &mut Enricher,
    sinks: &mut Sinks,
    delivery: &mut Delivery,
    host: &str,
    all: bool,
) {
    while let Some(item) = ring.next() {
        match UserKillSignal::try_from(&*item) {
            Ok(s) => {
                delivery.user_kills_seen += 1;
                if let Some(k) = UserKill::from_signal(s, enricher.paths_mut(), all) {
                    delivery.user_kills += 1;
                    sinks.dispatch(Event::from_user_kill(k, host.to_owned()));
                }
            }
            // Not in decode_errors: that one balances the OOM ring's produced == delivered.
            Err(e) => log::error!("undecodable userspace kill record ({e}); lost"),
        }
    }
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
fn drain(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    delivery: &mut Delivery,
    metrics: &Metrics,
) -> Vec<OomRecord> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        match OomRecord::try_from(&*item) {
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
fn summary(c: &KernelCounters, d: &Delivery, reconciled: &str) {
    eprintln!(
        "memtrace: exiting: kernel_seen={} delivered={} dropped_ringbuf_full={} decode_errors={} read_errors={} \
         context_seen={} context_dropped={} cgroup_records_dropped={} stack_tasks_dropped={} \
         user_kills_seen={} user_kills_reported={} user_kills_dropped={} warnings={} warnings_late={} reconciled={reconciled}",
        c.oom_seen,
        d.delivered,
        c.oom_ringbuf_full,
        d.decode_errors,
        c.oom_read_errors,
        c.oom_ctx_seen,
        c.oom_ctx_ringbuf_full,
        c.cgroup_ringbuf_full,
        c.stack_tasks_ringbuf_full,
        d.user_kills_seen,
        d.user_kills,
        c.user_kill_ringbuf_full,
        d.warnings,
        d.late_warnings,
    );
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
