//! Start-up of the daemon: the memory hierarchy, the kernel's kill counters before and after
//! attaching, the tracer and its rings, the enricher with the charge worker, the metrics
//! endpoint and the sinks. It ends with the "attached" line that tests and scripts wait for.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::{sync::mpsc, task::JoinHandle};

use super::{COUNTER_CHECK, daemon::Daemon, reconcile::Reconciliation, route::Router};
use crate::{
    cgroup::oom_stall::StallWatch,
    cgroup::reconcile::Reconciler,
    cgroup::{CgroupPaths, MemoryHierarchy},
    charges::maps::ChargeMaps,
    charges::warnings::WarnOptions,
    charges::worker::{ChargeWatch, News},
    cli::WatchArgs,
    config::Config,
    enrich::attribution::BundleRoots,
    enrich::docker::DockerRoots,
    enrich::enricher::{EnrichOptions, Enricher},
    enrich::names::NameSources,
    kernel::tracer::{ChargeOptions, Rings, Tracer, TracerOptions},
    output::metrics::{self, Metrics},
    sinks::Sinks,
};

fn tracer_options(cfg: &Config, hierarchy: Option<MemoryHierarchy>) -> TracerOptions {
    TracerOptions {
        hierarchy,
        oom: true,
        forced: cfg.watch.variants.clone(),
        oom_ring_bytes: cfg.watch.oom_ring_bytes,
        try_all: false,
        charges: cfg.charges.enabled.then_some(ChargeOptions {
            sample_every: cfg.charges.stack_sample_every,
            exact: cfg.charges.exact,
            fault_period: cfg.charges.fault_sample_period,
        }),
    }
}

/// Test hook: every kill's file reads take this many milliseconds longer (tests/tests/
/// enrich_budget.rs), so that the budget can be seen at work.
const READ_DELAY_ENV: &str = "MEMTRACE_TEST_ENRICH_DELAY_MS";

fn enrich_options(cfg: &Config) -> EnrichOptions {
    let read_delay = std::env::var(READ_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(std::time::Duration::from_millis);
    let mut opts = EnrichOptions {
        ws_alert_ratio: cfg.watch.ws_alert_ratio,
        flamegraph_dir: cfg.charges.kill_flamegraph_dir.clone(),
        kill_stacks_wait: cfg.charges.kill_stacks_wait,
        read_delay,
        ..EnrichOptions::default()
    };
    if !cfg.watch.oci_bundles.is_empty() {
        opts.names.bundles = BundleRoots(cfg.watch.oci_bundles.clone());
    }
    if !cfg.watch.docker_roots.is_empty() {
        opts.names.docker = DockerRoots(cfg.watch.docker_roots.clone());
    }
    opts
}

type ChargeWorker = (ChargeWatch, mpsc::Receiver<News>);

fn charge_worker(
    cfg: &Config,
    maps: Option<ChargeMaps>,
    paths: Option<&CgroupPaths>,
    metrics: &Arc<Metrics>,
    names: NameSources,
) -> anyhow::Result<Option<ChargeWorker>> {
    let (Some(maps), Some(paths)) = (maps, paths) else {
        return Ok(None);
    };
    let warn = WarnOptions {
        ratio: cfg.charges.warn_ratio,
        every: cfg.charges.warn_every,
    };
    let worker = ChargeWatch::spawn(
        maps,
        paths.clone(),
        cfg.charges.kill_context_window,
        warn,
        COUNTER_CHECK,
        Some(metrics.clone()),
        names,
    )
    .context("starting the charge worker")?;
    Ok(Some(worker))
}

async fn metrics_server(cfg: &Config, metrics: &Arc<Metrics>) -> anyhow::Result<Option<JoinHandle<()>>> {
    let Some(addr) = cfg.metrics_addr()? else {
        return Ok(None);
    };
    let l = metrics::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr} (metrics.listen)"))?;
    let bound = l.local_addr().unwrap_or(addr);
    eprintln!("memtrace: metrics on http://{bound}/metrics");
    Ok(Some(metrics::serve(l, metrics.clone())))
}

/// "hook via kind" for each hook, for the attached line.
fn attached_via(tracer: &Tracer) -> String {
    let via: Vec<String> = tracer
        .hooks
        .iter()
        .map(|h| match h.selected {
            Some(v) => format!("{} via {}", h.hook, v.attach.kind()),
            None => format!("{} unavailable", h.hook),
        })
        .collect();
    via.join(", ")
}

pub async fn start(cfg: &Config, args: &WatchArgs) -> anyhow::Result<Daemon> {
    let hierarchy = MemoryHierarchy::detect();
    let opts = tracer_options(cfg, hierarchy.as_ref().ok().cloned());
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
        oom,
        cgroups,
        user_kills,
        call_paths,
    } = rings;
    let metrics = Arc::new(Metrics::new(cfg.metrics.max_cgroups, cfg.metrics.forget_after));
    let enrich_opts = enrich_options(cfg);
    let worker = charge_worker(
        cfg,
        tracer.take_charge_maps(),
        paths.as_ref(),
        &metrics,
        enrich_opts.names.clone(),
    )?;
    let (charges, news) = worker.unzip();
    let mem_root = paths.as_ref().and_then(|p| p.hierarchy().hierarchy_id());
    let enricher = Enricher::new(paths, enrich_opts).with_charges(charges);
    let metrics_server = metrics_server(cfg, &metrics).await?;
    let host = cfg.watch.host_name.clone().unwrap_or_else(hostname);
    let sinks = Sinks::start(&cfg.sinks, metrics.clone(), &host)
        .await
        .context("starting the sinks")?;
    log::info!("sinks: {}", sinks.names().join(", "));
    let router = Router::new(sinks, metrics, host, reconciler.map(Reconciliation::new));
    // Tests and scripts wait for this line: from here on, no kill is missed.
    eprintln!(
        "memtrace: attached ({}); watching for OOM kills",
        attached_via(&tracer)
    );
    Ok(Daemon {
        tracer,
        oom_ring: oom,
        cgroup_ring: cgroups,
        user_kill_ring: user_kills,
        call_paths,
        mem_root,
        enricher,
        news,
        router,
        stalls: StallWatch::default(),
        reported_lost: 0,
        metrics_server,
        all_userspace_kills: cfg.watch.all_userspace_kills,
        exit_after: args.exit_after,
        enrich_budget: cfg.watch.enrich_budget,
        // Start-up's BTF parses are freed by now.
        heap: super::heap::HeapTrim::start(),
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
