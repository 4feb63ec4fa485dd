//! Prometheus metrics (the `prometheus-client` crate) and the small HTTP server for them.
//!
//! Served at `/metrics`: OpenMetrics to scrapers that ask for it (Prometheus does), else the
//! classic text format 0.0.4 (what `promtool check metrics` and curl read). Names follow the
//! conventions: prefix `memtrace_`, base units, `_total` counters, no pid or comm labels.
//!
//! - `memtrace_oom_kills_total{namespace,pod,container,container_id,cgroup,constraint}`: kills
//!   (victims that were already exiting are not kills: the kernel sent no signal).
//! - `memtrace_events_lost_total{cause,sink}`: `ringbuf_full` and `decode_error` (sink `""`),
//!   `sink_queue_full` and `sink_closed` per sink.
//! - `memtrace_sink_deliveries_total{sink}`, `memtrace_sink_deliveries_failed_total{sink}`.
//! - `memtrace_build_info{version}`.
//! - `memtrace_cgroup_memory_{usage,working_set,limit}_bytes{cgroup}`: the post-kill snapshot of
//!   the cgroup that hit its limit, last seen; at most `metrics.max_cgroups` cgroups (oldest
//!   forgotten first).

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::{Registry, Unit},
};
use tokio::{net::TcpListener, task::JoinHandle};

use crate::enrich::kill::OomKill;

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
struct VersionLabels {
    version: String,
}

pub struct Metrics {
    registry: Registry,
    oom_kills: Family<KillLabels, Counter>,
    lost: Family<LostLabels, Counter>,
    delivered: Family<SinkLabels, Counter>,
    failed: Family<SinkLabels, Counter>,
    usage: Family<CgroupLabels, Gauge>,
    working_set: Family<CgroupLabels, Gauge>,
    limit: Family<CgroupLabels, Gauge>,
    /// Cgroups with gauges, oldest first.
    cgroups: Mutex<VecDeque<String>>,
    max_cgroups: usize,
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

impl Metrics {
    pub fn new(max_cgroups: usize) -> Self {
        let mut r = Registry::with_prefix("memtrace");
        let oom_kills = Family::<KillLabels, Counter>::default();
        r.register(
            "oom_kills",
            "Tasks killed by the OOM killer, by victim cgroup and container",
            oom_kills.clone(),
        );
        let lost = Family::<LostLabels, Counter>::default();
        r.register(
            "events_lost",
            "OOM events lost: ring buffer full or undecodable (kernel side), or dropped by a sink whose queue was full",
            lost.clone(),
        );
        let delivered = Family::<SinkLabels, Counter>::default();
        r.register("sink_deliveries", "Events a sink delivered", delivered.clone());
        let failed = Family::<SinkLabels, Counter>::default();
        r.register(
            "sink_deliveries_failed",
            "Events a sink could not deliver, retries exhausted",
            failed.clone(),
        );
        r.register(
            "build",
            "memtrace build information",
            Info::new(VersionLabels {
                version: env!("CARGO_PKG_VERSION").into(),
            }),
        );
        let usage = Family::<CgroupLabels, Gauge>::default();
        r.register_with_unit(
            "cgroup_memory_usage",
            "Memory usage of the cgroup that hit its limit, read just after its last OOM kill",
            Unit::Bytes,
            usage.clone(),
        );
        let working_set = Family::<CgroupLabels, Gauge>::default();
        r.register_with_unit(
            "cgroup_memory_working_set",
            "Working set (usage - inactive_file) of the cgroup that hit its limit, read just after its last OOM kill",
            Unit::Bytes,
            working_set.clone(),
        );
        let limit = Family::<CgroupLabels, Gauge>::default();
        r.register_with_unit(
            "cgroup_memory_limit",
            "Memory limit of the cgroup that hit it, read just after its last OOM kill",
            Unit::Bytes,
            limit.clone(),
        );
        let m = Self {
            registry: r,
            oom_kills,
            lost,
            delivered,
            failed,
            usage,
            working_set,
            limit,
            cgroups: Mutex::new(VecDeque::new()),
            max_cgroups: max_cgroups.max(1),
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
                constraint: serde_json::to_value(k.verdict.constraint)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            };
            self.oom_kills.get_or_create(&labels).inc();
        }
        // The snapshot is of the OOM cgroup, or the victim's in a global OOM (enrich/kill.rs).
        let path = k
            .oom_cgroup
            .as_ref()
            .and_then(|o| o.cgroup.path.as_deref())
            .or_else(|| k.cgroup.as_ref().and_then(|c| c.path.as_deref()));
        if let (Some(path), Some(stats)) = (path, k.snapshot.as_ref().and_then(|s| s.stats())) {
            let l = CgroupLabels { cgroup: path.into() };
            self.usage.get_or_create(&l).set(gauge_bytes(stats.usage));
            self.working_set
                .get_or_create(&l)
                .set(gauge_bytes(stats.working_set()));
            match stats.limit {
                Some(lim) => {
                    self.limit.get_or_create(&l).set(gauge_bytes(lim));
                }
                None => {
                    self.limit.remove(&l);
                }
            }
            self.remember(path);
        }
    }

    /// Keeps at most `max_cgroups` cgroups' gauges: cgroups come and go with containers.
    fn remember(&self, path: &str) {
        let Ok(mut q) = self.cgroups.lock() else { return };
        if let Some(i) = q.iter().position(|p| p == path) {
            q.remove(i);
        }
        q.push_back(path.to_owned());
        while q.len() > self.max_cgroups {
            if let Some(old) = q.pop_front() {
                let l = CgroupLabels { cgroup: old };
                self.usage.remove(&l);
                self.working_set.remove(&l);
                self.limit.remove(&l);
            }
        }
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

/// OpenMetrics text (as prometheus-client writes it, for counters, gauges and info metrics)
/// to the Prometheus text format 0.0.4: counter families are named with their `_total`, info
/// families become gauges named `_info`, and `# UNIT` and `# EOF` go.
pub fn to_prometheus_text(om: &str) -> String {
    use std::collections::HashMap;
    let mut types: HashMap<&str, &str> = HashMap::new();
    for l in om.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ")
            && let Some((name, ty)) = rest.split_once(' ')
        {
            types.insert(name, ty);
        }
    }
    let rename = |name: &str| -> (String, Option<&'static str>) {
        match types.get(name).copied() {
            Some("counter") => (format!("{name}_total"), None),
            Some("info") => (format!("{name}_info"), Some("gauge")),
            _ => (name.to_owned(), None),
        }
    };
    let mut out = String::with_capacity(om.len());
    for l in om.lines() {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = l.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {help}\n", rename(name).0));
        } else if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (n, t) = rename(name);
            out.push_str(&format!("# TYPE {n} {}\n", t.unwrap_or(ty)));
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Binds the metrics address (so that a busy port is an error at start).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/metrics` until the task is aborted.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("metrics: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let m = metrics.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let m = m.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &m)) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = tokio::time::timeout(Duration::from_secs(60), conn)
                    .await
                    .unwrap_or(Ok(()))
                {
                    log::debug!("metrics: connection: {e}");
                }
            });
        }
    })
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";

fn respond(req: &Request<Incoming>, m: &Metrics) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = ctype.parse() {
            r.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            let wants_om = req
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/openmetrics-text"));
            if wants_om {
                reply(StatusCode::OK, OPENMETRICS, m.encode_openmetrics())
            } else {
                reply(StatusCode::OK, TEXT_004, m.encode_prometheus_text())
            }
        }
        "/" => reply(
            StatusCode::OK,
            "text/plain",
            "memtrace: metrics at /metrics\n".into(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cgroup::MemoryStats,
        enrich::kill::{OomCgroup, Snapshot},
        sinks::tests::kill,
    };

    #[test]
    fn kill_counter_and_gauges() {
        let m = Metrics::new(1);
        let mut k = kill();
        let stats = MemoryStats {
            usage: 60 << 20,
            inactive_file: 10 << 20,
            limit: Some(64 << 20),
            ..MemoryStats::default()
        };
        k.snapshot = Some(Snapshot::Read(Box::new(stats)));
        m.record_kill(&k);
        m.record_kill(&k);
        let t = m.encode_prometheus_text();
        assert!(
            t.contains(r#"memtrace_oom_kills_total{namespace="",pod="",container="",container_id="",cgroup="/kubepods.slice/x",constraint="global"} 2"#),
            "{t}"
        );
        assert!(
            t.contains(r#"memtrace_cgroup_memory_working_set_bytes{cgroup="/kubepods.slice/x"} 52428800"#),
            "{t}"
        );
        assert!(
            t.contains(r#"memtrace_cgroup_memory_limit_bytes{cgroup="/kubepods.slice/x"} 67108864"#),
            "{t}"
        );
        assert!(t.contains(r#"memtrace_build_info{version=""#), "{t}");
        assert!(t.contains("# TYPE memtrace_oom_kills_total counter"), "{t}");
        assert!(t.contains("# TYPE memtrace_build_info gauge"), "{t}");
        assert!(!t.contains("# EOF") && !t.contains("# UNIT"), "{t}");

        // Exiting victims are not kills; a second cgroup pushes out the first (max 1).
        k.victim_exiting = true;
        k.oom_cgroup = Some(OomCgroup {
            cgroup: crate::enrich::kill::CgroupRef {
                id: None,
                path: Some("/other".into()),
                source: crate::enrich::kill::PathSource::Kernel,
            },
            usage_bytes: 0,
            limit_bytes: 0,
            depth: 1,
        });
        m.record_kill(&k);
        let t = m.encode_prometheus_text();
        assert!(t.contains(r#"constraint="global"} 2"#), "{t}");
        assert!(
            t.contains(r#"memtrace_cgroup_memory_usage_bytes{cgroup="/other"}"#),
            "{t}"
        );
        assert!(
            !t.contains(r#"memtrace_cgroup_memory_usage_bytes{cgroup="/kubepods.slice/x"}"#),
            "{t}"
        );
    }

    #[test]
    fn ringbuf_totals_become_increments() {
        let m = Metrics::new(10);
        m.ringbuf_full_total(3);
        m.ringbuf_full_total(3);
        m.ringbuf_full_total(5);
        let t = m.encode_prometheus_text();
        assert!(
            t.contains(r#"memtrace_events_lost_total{cause="ringbuf_full",sink=""} 5"#),
            "{t}"
        );
        assert!(
            t.contains(r#"memtrace_events_lost_total{cause="decode_error",sink=""} 0"#),
            "{t}"
        );
    }
}
