//! Prometheus metrics (the `prometheus-client` crate), served at `/metrics` (`server`).
//!
//! OpenMetrics to scrapers that ask for it (Prometheus does), else the classic text format
//! 0.0.4 (`text`). Names follow the conventions: prefix `memtrace_`, base units, `_total`
//! counters, no pid or comm labels.
//!
//! - `memtrace_oom_kills_total{namespace,pod,container,container_id,cgroup,constraint}`: kills
//!   (victims that were already exiting are not kills: the kernel sent no signal).
//! - `memtrace_events_lost_total{cause,sink}`: `ringbuf_full` and `decode_error` (sink `""`),
//!   `sink_queue_full` and `sink_closed` per sink.
//! - `memtrace_sink_deliveries_total{sink}`, `memtrace_sink_deliveries_failed_total{sink}`.
//! - `memtrace_build_info{version}`.
//! - `memtrace_enrich_late_kills_total`: kills sent before their file reads were done (the
//!   per-kill budget, `watch.enrich_budget`, ran out): without snapshot, names, next in line.
//! - `memtrace_cgroup_memory_{usage,working_set,limit}_bytes{cgroup}`: the post-kill snapshot of
//!   the cgroup that hit its limit, last seen.
//! - The charge side, for cgroups that are busy (the [`BUSY`] busiest of the last second) or
//!   near their limit (working set at least [`NEAR_LIMIT`] of it):
//!   `memtrace_cgroup_charges_total`, `memtrace_cgroup_charged_bytes_total` (where the charge
//!   hook knows the pages),
//!   `memtrace_cgroup_page_faults_total`, `memtrace_cgroup_major_page_faults_total`,
//!   `memtrace_cgroup_reclaim_stalls_total`, `memtrace_cgroup_reclaim_stall_seconds_total`.
//! - `memtrace_pre_oom_warnings_total{cgroup,reason}`.
//! - `memtrace_reconcile_mismatched_cgroups`, and `memtrace_reconcile_unreported_kills{cgroup}`
//!   (the kernel's count minus memtrace's) for each cgroup whose counts disagree.
//!
//! Bounded: a cgroup's series go once it has been gone for `metrics.forget_after`; the gauges
//! and charge counters are kept for at most `metrics.max_cgroups` cgroups (`series`).

mod series;
mod server;
mod text;

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::{Metric, Registry, Unit},
};

pub use server::{bind, serve};
pub use text::to_prometheus_text;

use crate::{
    cgroup::MemoryStats, cgroup::reconcile::Mismatch, charges::accounting::Row,
    charges::warnings::PreOomWarning, enrich::kill::OomKill,
};
use series::Tracker;

/// Charge counters are kept for the this many busiest cgroups of each poll...
pub const BUSY: usize = 10;
/// ...and for cgroups whose working set is at least this fraction of their limit.
pub const NEAR_LIMIT: f64 = 0.75;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KillLabels {
    namespace: String,
    pod: String,
    container: String,
    container_id: String,
    cgroup: String,
    constraint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LostLabels {
    cause: String,
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    sink: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CgroupLabels {
    cgroup: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WarningLabels {
    cgroup: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

type SecondsCounter = Counter<f64, AtomicU64>;

/// The charge side's counter families, all `{cgroup}`.
#[derive(Default)]
struct ChargeFamilies {
    charges: Family<CgroupLabels, Counter>,
    charged_bytes: Family<CgroupLabels, Counter>,
    faults: Family<CgroupLabels, Counter>,
    major_faults: Family<CgroupLabels, Counter>,
    reclaim_stalls: Family<CgroupLabels, Counter>,
    reclaim_seconds: Family<CgroupLabels, SecondsCounter>,
}

impl ChargeFamilies {
    fn register(&self, r: &mut Registry) {
        // Registration order is the order of the exposition.
        let counters = [
            (
                "cgroup_charges",
                "Memory charge events of a busy or nearly full cgroup",
                None,
                &self.charges,
            ),
            (
                "cgroup_charged",
                "Memory charged to a busy or nearly full cgroup",
                Some(Unit::Bytes),
                &self.charged_bytes,
            ),
            (
                "cgroup_page_faults",
                "Page faults in a busy or nearly full cgroup",
                None,
                &self.faults,
            ),
            (
                "cgroup_major_page_faults",
                "Major page faults in a busy or nearly full cgroup",
                None,
                &self.major_faults,
            ),
            (
                "cgroup_reclaim_stalls",
                "Charges of a busy or nearly full cgroup that stalled in memcg direct reclaim",
                None,
                &self.reclaim_stalls,
            ),
        ];
        for (name, help, unit, family) in counters {
            register(r, name, help, unit, family.clone());
        }
        // Seconds are an f64 counter: not of the table's type.
        r.register_with_unit(
            "cgroup_reclaim_stall",
            "Time tasks of a busy or nearly full cgroup spent in memcg direct reclaim",
            Unit::Seconds,
            self.reclaim_seconds.clone(),
        );
    }
}

fn register(r: &mut Registry, name: &str, help: &str, unit: Option<Unit>, metric: impl Metric) {
    match unit {
        Some(unit) => r.register_with_unit(name, help, unit, metric),
        None => r.register(name, help, metric),
    }
}

/// A new metric, registered: `Metrics` keeps a handle (metrics are shared on clone).
fn registered<M: Metric + Clone + Default>(
    r: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
) -> M {
    let m = M::default();
    register(r, name, help, unit, m.clone());
    m
}

/// The post-kill snapshot of the cgroup that hit its limit, `{cgroup}`.
struct SnapshotGauges {
    usage: Family<CgroupLabels, Gauge>,
    working_set: Family<CgroupLabels, Gauge>,
    limit: Family<CgroupLabels, Gauge>,
}

impl SnapshotGauges {
    fn new(r: &mut Registry) -> Self {
        let [usage, working_set, limit] = [
            (
                "cgroup_memory_usage",
                "Memory usage of the cgroup that hit its limit, read just after its last OOM kill",
            ),
            (
                "cgroup_memory_working_set",
                "Working set (usage - inactive_file) of the cgroup that hit its limit, read just after its last OOM kill",
            ),
            (
                "cgroup_memory_limit",
                "Memory limit of the cgroup that hit it, read just after its last OOM kill",
            ),
        ]
        .map(|(name, help)| registered(r, name, help, Some(Unit::Bytes)));
        Self {
            usage,
            working_set,
            limit,
        }
    }

    fn set(&self, l: &CgroupLabels, stats: &MemoryStats) {
        self.usage.get_or_create(l).set(gauge_bytes(stats.usage));
        self.working_set
            .get_or_create(l)
            .set(gauge_bytes(stats.working_set()));
        match stats.limit {
            Some(lim) => {
                self.limit.get_or_create(l).set(gauge_bytes(lim));
            }
            None => {
                self.limit.remove(l);
            }
        }
    }

    fn remove(&self, l: &CgroupLabels) {
        self.usage.remove(l);
        self.working_set.remove(l);
        self.limit.remove(l);
    }
}

/// Which label sets exist per cgroup, so that all of a cgroup's series can go.
#[derive(Debug)]
struct State {
    tracker: Tracker,
    kills: HashMap<String, HashSet<KillLabels>>,
    warnings: HashMap<String, HashSet<String>>,
    mismatched: HashSet<String>,
}

pub struct Metrics {
    registry: Registry,
    oom_kills: Family<KillLabels, Counter>,
    lost: Family<LostLabels, Counter>,
    delivered: Family<SinkLabels, Counter>,
    failed: Family<SinkLabels, Counter>,
    snapshot: SnapshotGauges,
    charge: ChargeFamilies,
    warnings: Family<WarningLabels, Counter>,
    mismatched_cgroups: Gauge,
    unreported: Family<CgroupLabels, Gauge>,
    late_kills: Counter,
    state: Mutex<State>,
    /// Kernel-side totals already added to the counters.
    ringbuf_full_seen: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn gauge_bytes(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Moves a counter up to a running total read elsewhere (the kernel's).
fn advance(c: &Counter, total: u64) {
    let now = c.get();
    if total > now {
        c.inc_by(total - now);
    }
}

impl Metrics {
    /// `max_cgroups`: cgroups with gauges and charge counters at most; `forget_after`: how
    /// long a removed cgroup's series stay (so that scrapes and alerts see its last values).
    pub fn new(max_cgroups: usize, forget_after: Duration) -> Self {
        let mut r = Registry::with_prefix("memtrace");
        let oom_kills = registered(
            &mut r,
            "oom_kills",
            "Tasks killed by the OOM killer, by victim cgroup and container",
            None,
        );
        let lost = registered(
            &mut r,
            "events_lost",
            "OOM events lost: ring buffer full or undecodable (kernel side), or dropped by a sink whose queue was full",
            None,
        );
        let delivered = registered(&mut r, "sink_deliveries", "Events a sink delivered", None);
        let failed = registered(
            &mut r,
            "sink_deliveries_failed",
            "Events a sink could not deliver, retries exhausted",
            None,
        );
        r.register(
            "build",
            "memtrace build information",
            Info::new(VersionLabels {
                version: env!("CARGO_PKG_VERSION").into(),
            }),
        );
        let snapshot = SnapshotGauges::new(&mut r);
        let charge = ChargeFamilies::default();
        charge.register(&mut r);
        let warnings = registered(
            &mut r,
            "pre_oom_warnings",
            "Pre-OOM warnings: a cgroup's working set near its limit, or its charges stalling in reclaim",
            None,
        );
        let mismatched_cgroups = registered(
            &mut r,
            "reconcile_mismatched_cgroups",
            "Cgroups whose OOM-kill count from the kernel (memory.oom_control / memory.events) differs from memtrace's, persistently",
            None,
        );
        let unreported = registered(
            &mut r,
            "reconcile_unreported_kills",
            "The kernel's OOM-kill count minus memtrace's, for each cgroup where they differ",
            None,
        );
        let late_kills = registered(
            &mut r,
            "enrich_late_kills",
            "OOM kills sent before their file reads were done (the per-kill budget ran out)",
            None,
        );
        let m = Self {
            registry: r,
            oom_kills,
            lost,
            delivered,
            failed,
            snapshot,
            charge,
            warnings,
            mismatched_cgroups,
            unreported,
            late_kills,
            state: Mutex::new(State {
                tracker: Tracker::new(forget_after, max_cgroups),
                kills: HashMap::new(),
                warnings: HashMap::new(),
                mismatched: HashSet::new(),
            }),
            ringbuf_full_seen: AtomicU64::new(0),
        };
        // Present from the start, at 0, so that rate() and absent() work.
        for cause in ["ringbuf_full", "decode_error"] {
            m.lost(cause, "", 0);
        }
        m
    }

    fn lost_counter(&self, cause: &str, sink: &str) -> Counter {
        self.lost.get_or_create_owned(&LostLabels {
            cause: cause.into(),
            sink: sink.into(),
        })
    }

    pub fn lost(&self, cause: &str, sink: &str, n: u64) {
        self.lost_counter(cause, sink).inc_by(n);
    }

    /// The kernel's running total of records lost to a full ring buffer.
    pub fn ringbuf_full_total(&self, total: u64) {
        let before = self.ringbuf_full_seen.fetch_max(total, Ordering::Relaxed);
        if total > before {
            self.lost("ringbuf_full", "", total - before);
        }
    }

    /// Creates a sink's series at 0.
    pub fn sink_started(&self, sink: &str) {
        let l = SinkLabels { sink: sink.into() };
        let _ = self.delivered.get_or_create(&l);
        let _ = self.failed.get_or_create(&l);
        self.lost("sink_queue_full", sink, 0);
    }

    pub fn delivered(&self, sink: &str) {
        self.delivered
            .get_or_create(&SinkLabels { sink: sink.into() })
            .inc();
    }

    pub fn failed(&self, sink: &str) {
        self.failed.get_or_create(&SinkLabels { sink: sink.into() }).inc();
    }

    pub fn record_kill(&self, k: &OomKill) {
        if k.late {
            self.late_kills.inc();
        }
        let Ok(mut st) = self.state.lock() else { return };
        let now = Instant::now();
        if !k.victim_exiting {
            let a = k.attribution.as_ref();
            let names = a.and_then(|a| a.names.as_ref());
            let s = |v: Option<&String>| v.cloned().unwrap_or_default();
            let labels = KillLabels {
                namespace: s(names.and_then(|n| n.namespace.as_ref())),
                pod: s(names.and_then(|n| n.pod.as_ref())),
                container: s(names.and_then(|n| n.container.as_ref())),
                container_id: s(a.and_then(|a| a.container_id.as_ref())),
                cgroup: s(k.cgroup.as_ref().and_then(|c| c.path.as_ref())),
                constraint: k.verdict.constraint.as_str().to_owned(),
            };
            self.oom_kills.get_or_create(&labels).inc();
            if !labels.cgroup.is_empty() {
                let cgroup = labels.cgroup.clone();
                self.touch(&mut st, &cgroup, false, now);
                st.kills.entry(cgroup).or_default().insert(labels);
            }
        }
        // The snapshot is of the OOM cgroup, or the victim's in a global OOM (enrich/enricher.rs).
        let path = k
            .oom_cgroup
            .as_ref()
            .and_then(|o| o.cgroup.path.as_deref())
            .or_else(|| k.cgroup.as_ref().and_then(|c| c.path.as_deref()));
        if let (Some(path), Some(stats)) = (path, k.snapshot.as_ref().and_then(|s| s.stats())) {
            let l = CgroupLabels { cgroup: path.into() };
            self.snapshot.set(&l, stats);
            self.touch(&mut st, path, true, now);
        }
    }

    /// The charge side, from one poll of the charge worker (`rows`: the cgroups that charged
    /// lately, busiest first): counters for the busy and the nearly full cgroups, and for those
    /// that already have them.
    pub fn record_charges(&self, rows: &[Row], page_size: u64) {
        let Ok(mut st) = self.state.lock() else { return };
        let now = Instant::now();
        for (i, r) in rows.iter().enumerate() {
            // No path (an id only): nothing a user could query by. No usage: the cgroup is gone.
            if r.cgroup.starts_with('<') || r.usage_bytes.is_none() {
                continue;
            }
            // Busy: charging (exact mode) or faulting (the sampled default, which has no charge
            // count).
            let busy = i < BUSY && (r.rate.charge_events_per_s > 0.0 || r.rate.faults_per_s > 0.0);
            let near = r
                .working_set_bytes
                .zip(r.limit_bytes)
                .is_some_and(|(ws, l)| l > 0 && ws as f64 >= NEAR_LIMIT * l as f64);
            if !(busy || near || st.tracker.is_capped(&r.cgroup)) {
                continue;
            }
            let l = CgroupLabels {
                cgroup: r.cgroup.clone(),
            };
            let t = &r.rate.totals;
            let c = &self.charge;
            // Only where charges are counted (exact mode): the sampled default counts faults.
            if t.charge_events > 0 {
                advance(&c.charges.get_or_create(&l), t.charge_events);
            }
            // Only where the charge hook knows the pages (not every variant does): a counter
            // stuck at 0 beside thousands of charges would mislead.
            if t.charged_pages > 0 {
                advance(
                    &c.charged_bytes.get_or_create(&l),
                    t.charged_pages.saturating_mul(page_size),
                );
            }
            advance(&c.faults.get_or_create(&l), t.faults);
            advance(&c.major_faults.get_or_create(&l), t.major_faults);
            advance(&c.reclaim_stalls.get_or_create(&l), t.reclaim_stalls);
            let secs = c.reclaim_seconds.get_or_create(&l);
            let total = t.reclaim_ns as f64 / 1e9;
            if total > secs.get() {
                secs.inc_by(total - secs.get());
            }
            self.touch(&mut st, &r.cgroup, true, now);
        }
    }

    pub fn record_warning(&self, w: &PreOomWarning) {
        let Ok(mut st) = self.state.lock() else { return };
        let reason = w.reason.as_str().to_owned();
        self.warnings
            .get_or_create(&WarningLabels {
                cgroup: w.cgroup.clone(),
                reason: reason.clone(),
            })
            .inc();
        self.touch(&mut st, &w.cgroup, false, Instant::now());
        st.warnings.entry(w.cgroup.clone()).or_default().insert(reason);
    }

    /// The reconciliation's persistent mismatches, from its latest check (empty: all agree).
    pub fn reconciled(&self, mismatches: &[Mismatch]) {
        let Ok(mut st) = self.state.lock() else { return };
        let now: HashSet<String> = mismatches.iter().map(|m| m.cgroup.clone()).collect();
        for gone in st.mismatched.difference(&now) {
            self.unreported.remove(&CgroupLabels { cgroup: gone.clone() });
        }
        for m in mismatches {
            let diff =
                i64::try_from(m.kernel).unwrap_or(i64::MAX) - i64::try_from(m.reported).unwrap_or(i64::MAX);
            self.unreported
                .get_or_create(&CgroupLabels {
                    cgroup: m.cgroup.clone(),
                })
                .set(diff);
        }
        self.mismatched_cgroups
            .set(i64::try_from(now.len()).unwrap_or(i64::MAX));
        st.mismatched = now;
    }

    /// Drops the series of cgroups gone for `forget_after`; `alive` says whether a cgroup (by
    /// its path) still exists. Cheap to call often: it looks at most every few seconds.
    pub fn sweep(&self, alive: impl Fn(&str) -> bool) {
        self.sweep_at(Instant::now(), alive);
    }

    fn sweep_at(&self, now: Instant, alive: impl Fn(&str) -> bool) {
        let Ok(mut st) = self.state.lock() else { return };
        if !st.tracker.sweep_due(now) {
            return;
        }
        for cgroup in st.tracker.sweep(now, alive) {
            for l in st.kills.remove(&cgroup).unwrap_or_default() {
                self.oom_kills.remove(&l);
            }
            for reason in st.warnings.remove(&cgroup).unwrap_or_default() {
                self.warnings.remove(&WarningLabels {
                    cgroup: cgroup.clone(),
                    reason,
                });
            }
            self.remove_capped(&cgroup);
            log::debug!("metrics: cgroup {cgroup} gone, its series dropped");
        }
    }

    fn touch(&self, st: &mut State, cgroup: &str, capped: bool, now: Instant) {
        for old in st.tracker.touch(cgroup, capped, now) {
            self.remove_capped(&old);
        }
    }

    /// Removes a cgroup's gauges and charge counters.
    fn remove_capped(&self, cgroup: &str) {
        let l = CgroupLabels {
            cgroup: cgroup.to_owned(),
        };
        self.snapshot.remove(&l);
        let c = &self.charge;
        c.charges.remove(&l);
        c.charged_bytes.remove(&l);
        c.faults.remove(&l);
        c.major_faults.remove(&l);
        c.reclaim_stalls.remove(&l);
        c.reclaim_seconds.remove(&l);
    }

    pub fn encode_openmetrics(&self) -> String {
        let mut s = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = encode(&mut s, &self.registry);
        s
    }

    pub fn encode_prometheus_text(&self) -> String {
        to_prometheus_text(&self.encode_openmetrics())
    }
}

#[cfg(test)]
mod tests;
