//! The `[watch]`, `[charges]` and `[metrics]` sections.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{DEFAULT_METRICS_ADDR, duration};
use crate::kernel::hooks::ForcedVariant;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// `HOOK=KIND`, as `--variant`; parsed when the file is read.
    pub variants: Vec<ForcedVariant>,
    pub oom_ring_bytes: Option<u32>,
    pub ws_alert_ratio: f64,
    pub oci_bundles: Vec<PathBuf>,
    /// dockerd data roots, for plain Docker containers' names and images.
    pub docker_roots: Vec<PathBuf>,
    /// How long sinks get at exit to deliver what they hold.
    #[serde(with = "duration")]
    pub shutdown_timeout: Duration,
    /// The node's name in events (`host.name`) and alerts (`node`); default: the hostname.
    pub host_name: Option<String>,
    /// Report every SIGKILL sent from userspace, not only those of known memory killers.
    pub all_userspace_kills: bool,
    /// How long a kill event waits for its file reads (post-kill snapshot, container names,
    /// cgroup paths not yet known, next in line); past it the event goes without them.
    #[serde(with = "duration")]
    pub enrich_budget: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            variants: vec![],
            oom_ring_bytes: None,
            ws_alert_ratio: 0.9,
            oci_bundles: vec![],
            docker_roots: vec![],
            shutdown_timeout: Duration::from_secs(5),
            host_name: None,
            all_userspace_kills: false,
            enrich_budget: crate::enrich::enricher::DEFAULT_BUDGET,
        }
    }
}

/// Charge accounting: per-cgroup charge counters, sampled stacks, pre-OOM warnings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChargesConfig {
    pub enabled: bool,
    /// One stack sample every this many charged pages per CPU (charge events on the memcg
    /// event hooks); 0: no stacks.
    pub stack_sample_every: u32,
    /// Count every charge (a program on the memcg charge hook) instead of sampling faults.
    pub exact: bool,
    /// Sampled mode: page faults per sample, per CPU.
    pub fault_sample_period: u32,
    /// How far back a kill's top charging stacks look.
    #[serde(with = "duration")]
    pub kill_context_window: Duration,
    /// How long a kill may wait for the charge worker to publish the samples since its last
    /// poll (0: it does not wait, and a process killed within a second of its start has no
    /// stack in its kill). At most the kill's `watch.enrich_budget`.
    #[serde(with = "duration")]
    pub kill_stacks_wait: Duration,
    /// Warn when a cgroup's working set reaches this fraction of its limit.
    pub warn_ratio: f64,
    /// At most one pre-OOM warning per cgroup this often.
    #[serde(with = "duration")]
    pub warn_every: Duration,
    /// Keep a flame graph of each kill's charging stacks here (`memtrace.flamegraph` in the
    /// event); none when unset.
    pub kill_flamegraph_dir: Option<PathBuf>,
}

impl Default for ChargesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            stack_sample_every: 64,
            exact: false,
            fault_sample_period: crate::kernel::tracer::DEFAULT_FAULT_PERIOD,
            kill_context_window: Duration::from_secs(10),
            kill_stacks_wait: Duration::ZERO,
            warn_ratio: 0.9,
            warn_every: Duration::from_secs(60),
            kill_flamegraph_dir: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// `IP:PORT` to serve `/metrics` on.
    pub listen: String,
    /// Cgroups with per-cgroup gauges and charge counters at most (the least recently
    /// updated is forgotten first).
    pub max_cgroups: usize,
    /// How long the series of a removed cgroup stay (kill counters included), so that scrapes
    /// and alerts see their last values; then they go (a crash-looping pod would otherwise
    /// add series forever).
    #[serde(with = "duration")]
    pub forget_after: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: DEFAULT_METRICS_ADDR.into(),
            max_cgroups: 1000,
            forget_after: Duration::from_secs(3600),
        }
    }
}
