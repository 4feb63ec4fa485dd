//! Where events go: stdout, a rotated file, journald, a webhook, Alertmanager (and OTLP logs
//! with the `otlp` feature). Each sink is enabled on its own and runs in its own task behind a
//! bounded queue. The event path only ever `try_send`s: a slow or dead sink fills its own
//! queue, and then its events are dropped and counted (`memtrace_events_lost_total{cause=
//! "sink_queue_full",sink=...}`) with a rate-limited warning; it never delays the others.

pub mod alertmanager;
pub mod file;
pub mod http;
pub mod journald;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod stdout;
pub mod webhook;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{sync::mpsc, task::JoinHandle};

pub use crate::output::event::{Event, Payload};
use crate::{config::SinksConfig, output::metrics::Metrics};

/// At most one warning per sink in this interval; the others are counted in the next one.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Why a delivery failed. The variant decides what happens next ([`SinkError::retryable`]):
/// a broken connection or a 5xx is tried again, a bad URL or an unencodable event is not.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// No connection, or it broke; the message never holds a secret.
    #[error("{endpoint}: {}", chain(source))]
    Connect {
        endpoint: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("{endpoint} answered HTTP {status}")]
    Status { endpoint: String, status: u16 },
    #[error("{endpoint}: no answer within {after:?}")]
    Timeout { endpoint: String, after: Duration },
    /// The event could not be encoded: the same event would fail again.
    #[error("encoding {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{endpoint}: building the request: {source}")]
    Request {
        endpoint: String,
        #[source]
        source: ::http::Error,
    },
    /// `url` (or the path appended to it) is not a URI.
    #[error("bad URL {url:?}: {detail}")]
    BadUrl { url: String, detail: String },
    /// The bearer token could not be read, or cannot go in a header.
    #[error("bearer token: {0}")]
    Token(String),
    /// A sink used after a failed reopen (file sink): nothing to write to.
    #[error("{}: not open", path.display())]
    NotOpen { path: std::path::PathBuf },
    /// The blocking task that delivers (journald) panicked or was cancelled.
    #[error("delivery task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl SinkError {
    /// Whether trying the same delivery again can succeed: connection failures, timeouts, I/O,
    /// 408, 429 and 5xx. Everything else would fail the same way.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            Self::Connect { .. } | Self::Timeout { .. } | Self::Io { .. } => true,
            Self::Encode { .. }
            | Self::Request { .. }
            | Self::BadUrl { .. }
            | Self::Token(_)
            | Self::NotOpen { .. }
            | Self::Task(_) => false,
        }
    }
}

/// An error and its sources on one line (hyper's own message is just "client error").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl SinkError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// A destination for events. Implementations run in their own task; `deliver` may take as long
/// as it needs (retries included) since only this sink's queue waits for it.
pub trait Sink: Send + 'static {
    fn deliver(&mut self, ev: &Event) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Called once the queue is closed and drained.
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Allows one message per interval and counts the ones it held back.
#[derive(Debug)]
pub struct RateLimit {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)`: log now, `n` messages were held back since the last one.
    pub fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// What a sink did, for the exit summary.
#[derive(Debug, Default)]
pub struct SinkStats {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub dropped: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkReport {
    pub name: &'static str,
    pub delivered: u64,
    pub failed: u64,
    pub dropped: u64,
    /// Still queued or in flight when the shutdown timeout ran out.
    pub unfinished: u64,
}

struct Out {
    name: &'static str,
    tx: mpsc::Sender<Arc<Event>>,
    task: JoinHandle<()>,
    stats: Arc<SinkStats>,
    sent: u64,
    warn: RateLimit,
}

/// The fan-out: one bounded queue and one task per enabled sink.
pub struct Sinks {
    outs: Vec<Out>,
    metrics: Arc<Metrics>,
}

impl Sinks {
    /// Starts every enabled sink. Must run inside the tokio runtime.
    pub async fn start(cfg: &SinksConfig, metrics: Arc<Metrics>, host: &str) -> Result<Self, SinkError> {
        let mut s = Self {
            outs: vec![],
            metrics,
        };
        if let Some(c) = cfg.stdout.as_ref().filter(|c| c.enabled) {
            s.add("stdout", stdout::StdoutSink::new(c.format), c.queue);
        }
        if let Some(c) = cfg.file.as_ref().filter(|c| c.enabled) {
            s.add("file", file::FileSink::open(c).await?, c.queue);
        }
        if let Some(c) = cfg.journald.as_ref().filter(|c| c.enabled) {
            s.add("journald", journald::JournaldSink::new(&c.socket)?, c.queue);
        }
        if let Some(c) = cfg.webhook.as_ref().filter(|c| c.enabled) {
            s.add("webhook", webhook::WebhookSink::new(c)?, c.queue);
        }
        if let Some(c) = cfg.alertmanager.as_ref().filter(|c| c.enabled) {
            s.add(
                "alertmanager",
                alertmanager::AlertmanagerSink::new(c, host)?,
                c.queue,
            );
        }
        #[cfg(feature = "otlp")]
        if let Some(c) = cfg.otlp.as_ref().filter(|c| c.enabled) {
            s.add("otlp", otlp::OtlpSink::new(c, host)?, c.queue);
        }
        Ok(s)
    }

    fn add<S: Sink>(&mut self, name: &'static str, sink: S, queue: usize) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let stats = Arc::new(SinkStats::default());
        self.metrics.sink_started(name);
        let task = tokio::spawn(run(name, sink, rx, stats.clone(), self.metrics.clone()));
        self.outs.push(Out {
            name,
            tx,
            task,
            stats,
            sent: 0,
            warn: RateLimit::new(WARN_EVERY),
        });
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.outs.iter().map(|o| o.name).collect()
    }

    /// Hands the event to every sink without waiting for any of them.
    pub fn dispatch(&mut self, ev: Event) {
        let ev = Arc::new(ev);
        for o in &mut self.outs {
            match o.tx.try_send(ev.clone()) {
                Ok(()) => o.sent += 1,
                Err(e) => {
                    let cause = match e {
                        mpsc::error::TrySendError::Full(_) => "sink_queue_full",
                        mpsc::error::TrySendError::Closed(_) => "sink_closed",
                    };
                    o.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    self.metrics.lost(cause, o.name, 1);
                    if let Some(held) = o.warn.check(Instant::now()) {
                        log::warn!(
                            "sink {}: event dropped ({cause}){}; total dropped by this sink: {}",
                            o.name,
                            if held > 0 {
                                format!(", and {held} more since the last warning")
                            } else {
                                String::new()
                            },
                            o.stats.dropped.load(Ordering::Relaxed)
                        );
                    }
                }
            }
        }
    }

    /// Closes the queues and gives the sinks until `timeout` to finish what they hold.
    pub async fn shutdown(self, timeout: Duration) -> Vec<SinkReport> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Close every queue first: the sinks finish side by side, not one after the other.
        let outs: Vec<_> = self
            .outs
            .into_iter()
            .map(|o| {
                drop(o.tx);
                (o.name, o.task, o.stats, o.sent)
            })
            .collect();
        let mut reports = vec![];
        for (name, mut task, stats, sent) in outs {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                log::warn!("sink {name}: still busy at exit after {timeout:?}; abandoned");
                task.abort();
            }
            let delivered = stats.delivered.load(Ordering::Relaxed);
            let failed = stats.failed.load(Ordering::Relaxed);
            reports.push(SinkReport {
                name,
                delivered,
                failed,
                dropped: stats.dropped.load(Ordering::Relaxed),
                unfinished: sent.saturating_sub(delivered + failed),
            });
        }
        reports
    }
}

async fn run<S: Sink>(
    name: &'static str,
    mut sink: S,
    mut rx: mpsc::Receiver<Arc<Event>>,
    stats: Arc<SinkStats>,
    metrics: Arc<Metrics>,
) {
    let mut warn = RateLimit::new(WARN_EVERY);
    while let Some(ev) = rx.recv().await {
        match sink.deliver(&ev).await {
            Ok(()) => {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                metrics.delivered(name);
            }
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                metrics.failed(name);
                if let Some(held) = warn.check(Instant::now()) {
                    let more = if held > 0 {
                        format!(" ({held} more failures since the last warning)")
                    } else {
                        String::new()
                    };
                    log::warn!("sink {name}: delivery of a {} event failed: {e}{more}", ev.name());
                }
            }
        }
    }
    sink.close().await;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{enrich::diagnosis, enrich::kill::*, kernel::records::HookSource};

    /// Regression: an Alertmanager encoding error was an `Http(String)` and so retried.
    #[test]
    fn only_what_can_succeed_later_is_retried() {
        let encode = SinkError::Encode {
            what: "the alert",
            source: serde_json::from_str::<u8>("x").expect_err("not JSON"),
        };
        assert!(!encode.retryable());
        assert!(!SinkError::Token("empty".into()).retryable());
        let status = |status| SinkError::Status {
            endpoint: "http://127.0.0.1:1".into(),
            status,
        };
        assert!(status(503).retryable() && status(429).retryable());
        assert!(!status(400).retryable() && !status(401).retryable());
        let timeout = SinkError::Timeout {
            endpoint: "http://127.0.0.1:1".into(),
            after: Duration::from_secs(1),
        };
        assert!(timeout.retryable());
    }

    pub fn kill() -> OomKill {
        OomKill {
            seq: 1,
            time: std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            ktime_boot_ns: 5,
            hook: HookSource::TpBtf,
            pid: 10,
            tid: 10,
            comm: Some("python3".into()),
            uid: Some(0),
            oom_score_adj: Some(0),
            total_vm_bytes: None,
            anon_rss_bytes: Some(1 << 26),
            file_rss_bytes: None,
            shmem_rss_bytes: None,
            swap_bytes: None,
            pgtables_bytes: None,
            cgroup: Some(CgroupRef {
                id: Some(9),
                path: Some("/kubepods.slice/x".into()),
                source: PathSource::Kernel,
            }),
            memcg_usage_bytes: Some(1 << 26),
            memcg_limit_bytes: Some(1 << 26),
            oom_cgroup: None,
            cgroup_at_kill: None,
            oom_cgroup_at_kill: None,
            extra_limit_bytes: None,
            next_in_line: None,
            episode: None,
            snapshot: None,
            attribution: None,
            badness: None,
            verdict: diagnosis::verdict(&diagnosis::Facts::default()),
            victim_exiting: false,
            trigger_pid: 10,
            trigger_tid: 10,
            trigger_comm: "python3".into(),
            trigger_cgroup: None,
            read_error: false,
            context: None,
            hotspots: vec![],
            flamegraph: None,
            late: false,
        }
    }

    pub fn event() -> Event {
        Event::from_kill(kill(), "node-1".into(), 1000)
    }

    #[test]
    fn rate_limit_counts_what_it_holds_back() {
        let mut r = RateLimit::new(Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(r.check(t), Some(0));
        assert_eq!(r.check(t + Duration::from_secs(1)), None);
        assert_eq!(r.check(t + Duration::from_secs(2)), None);
        assert_eq!(r.check(t + Duration::from_secs(11)), Some(2));
    }

    /// Never finishes a delivery.
    struct Stuck;
    impl Sink for Stuck {
        async fn deliver(&mut self, _: &Event) -> Result<(), SinkError> {
            std::future::pending().await
        }
    }

    struct Count(Arc<AtomicU64>);
    impl Sink for Count {
        async fn deliver(&mut self, _: &Event) -> Result<(), SinkError> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_stuck_sink_drops_and_counts_without_delaying_the_others() {
        let metrics = Arc::new(Metrics::new(10, std::time::Duration::from_secs(3600)));
        let mut s = Sinks {
            outs: vec![],
            metrics: metrics.clone(),
        };
        let n = Arc::new(AtomicU64::new(0));
        s.add("stuck", Stuck, 2);
        s.add("count", Count(n.clone()), 100);
        let t = Instant::now();
        for _ in 0..10 {
            s.dispatch(event());
        }
        assert!(t.elapsed() < Duration::from_millis(500), "dispatch never waits");
        let reports = s.shutdown(Duration::from_millis(200)).await;
        assert_eq!(n.load(Ordering::Relaxed), 10);
        let stuck = &reports[0];
        // The test runtime has one thread: the sinks' tasks only start once dispatch is done,
        // so two events are queued (then one in flight) and eight dropped.
        assert_eq!((stuck.dropped, stuck.unfinished), (8, 2), "{stuck:?}");
        assert_eq!(reports[1].delivered, 10);
        let text = metrics.encode_prometheus_text();
        assert!(
            text.contains(r#"memtrace_events_lost_total{cause="sink_queue_full",sink="stuck"} 8"#),
            "{text}"
        );
    }
}
