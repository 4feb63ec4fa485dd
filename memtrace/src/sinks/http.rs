//! JSON POSTs with a per-attempt timeout and bounded exponential back-off, shared by the HTTP
//! sinks. Errors and logs name the endpoint as `scheme://host:port` only: webhook paths often
//! carry secrets, and the bearer token is never printed (its header is marked sensitive).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, Uri, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use super::SinkError;
use crate::config::{HttpConfig, RetryConfig, Secret};

/// Response bodies are read (so the connection can be reused) up to this size.
const MAX_RESPONSE: usize = 64 << 10;

pub struct Poster {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    /// `scheme://host:port`, for messages.
    endpoint: String,
    auth: Option<HeaderValue>,
    timeout: Duration,
    retry: RetryConfig,
}

impl std::fmt::Debug for Poster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poster")
            .field("endpoint", &self.endpoint)
            .field("auth", &self.auth.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// `scheme://authority` of a URI: what may be logged.
pub fn endpoint(uri: &Uri) -> String {
    format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map_or("?", |a| a.as_str())
    )
}

impl Poster {
    /// `path` replaces the URL's path when given (Alertmanager's `/api/v2/alerts`).
    pub fn new(c: &HttpConfig, path: Option<&str>) -> Result<Self, SinkError> {
        let mut uri: Uri = c
            .url
            .parse()
            .map_err(|e: http::uri::InvalidUri| SinkError::BadUrl {
                url: c.url.clone(),
                detail: e.to_string(),
            })?;
        if let Some(p) = path {
            let base = uri.path().trim_end_matches('/').to_owned();
            let mut parts = uri.into_parts();
            parts.path_and_query = Some(format!("{base}{p}").parse().map_err(
                |e: http::uri::InvalidUri| SinkError::BadUrl {
                    url: format!("{}{p}", c.url),
                    detail: e.to_string(),
                },
            )?);
            uri = Uri::from_parts(parts).map_err(|e| SinkError::BadUrl {
                url: c.url.clone(),
                detail: e.to_string(),
            })?;
        }
        let auth = match c.token().map_err(SinkError::Token)? {
            Some(t) => Some(bearer(&t)?),
            None => None,
        };
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(c.timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(connector);
        Ok(Self {
            client,
            endpoint: endpoint(&uri),
            uri,
            auth,
            timeout: c.timeout,
            retry: c.retry.clone(),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// POSTs `body`, retrying connection failures, timeouts, 408, 429 and 5xx with exponential
    /// back-off until `retry.max_attempts` attempts have been made.
    pub async fn post_json(&self, body: Bytes) -> Result<(), SinkError> {
        let mut backoff = self.retry.initial_backoff;
        let mut attempt = 1;
        loop {
            let err = match tokio::time::timeout(self.timeout, self.once(body.clone())).await {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => SinkError::Timeout {
                    endpoint: self.endpoint.clone(),
                    after: self.timeout,
                },
            };
            if !err.retryable() || attempt >= self.retry.max_attempts {
                return Err(err);
            }
            log::debug!(
                "{}: attempt {attempt} failed ({err}); retrying in {backoff:?}",
                self.endpoint
            );
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(self.retry.max_backoff);
            attempt += 1;
        }
    }

    async fn once(&self, body: Bytes) -> Result<(), SinkError> {
        let mut req = Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("memtrace/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|source| SinkError::Request {
                endpoint: self.endpoint.clone(),
                source,
            })?;
        if let Some(a) = &self.auth {
            req.headers_mut().insert(header::AUTHORIZATION, a.clone());
        }
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|source| SinkError::Connect {
                endpoint: self.endpoint.clone(),
                source,
            })?;
        let status = resp.status();
        // Read (a bounded part of) the answer so the connection can be reused.
        let _ = http_body_util::Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await;
        if status.is_success() {
            Ok(())
        } else {
            Err(SinkError::Status {
                endpoint: self.endpoint.clone(),
                status: status.as_u16(),
            })
        }
    }
}

fn bearer(t: &Secret) -> Result<HeaderValue, SinkError> {
    let mut v = HeaderValue::from_str(&format!("Bearer {}", t.expose()))
        .map_err(|_| SinkError::Token("it holds characters a header cannot".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

/// `d` scaled by a factor in [0.75, 1.25): retries from several nodes do not line up.
fn jitter(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    // A cheap mix of the clock's low bits; no need for a real random source here.
    let x = u64::from(nanos).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54; // 0..1024
    d.mul_f64(0.75 + x as f64 / 2048.0)
}

/// An error with its causes, on one line.
#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    use super::*;

    /// A server that answers `statuses` in turn (then 200), recording each request.
    async fn server(statuses: Vec<u16>) -> (String, Arc<AtomicU32>, tokio::sync::mpsc::Receiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let hits = Arc::new(AtomicU32::new(0));
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let h = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else { return };
                let n = h.fetch_add(1, Ordering::SeqCst) as usize;
                let status = statuses.get(n).copied().unwrap_or(200);
                let mut buf = vec![0u8; 65536];
                let mut got = 0;
                // Read headers and the body (Content-Length).
                while let Ok(k) = s.read(&mut buf[got..]).await {
                    if k == 0 {
                        break;
                    }
                    got += k;
                    let text = String::from_utf8_lossy(&buf[..got]).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if got >= end + 4 + len {
                            let _ = tx.send(text).await;
                            break;
                        }
                    }
                }
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                            .as_bytes(),
                    )
                    .await;
            }
        });
        (format!("http://{addr}"), hits, rx)
    }

    fn cfg(url: &str) -> HttpConfig {
        let mut c = HttpConfig::new(url);
        c.retry.initial_backoff = Duration::from_millis(10);
        c.retry.max_attempts = 3;
        c.timeout = Duration::from_secs(2);
        c
    }

    #[tokio::test]
    async fn retries_5xx_then_succeeds_and_sends_the_token() {
        let (url, hits, mut rx) = server(vec![503, 500]).await;
        let mut c = cfg(&format!("{url}/hook/s3cr3t-path"));
        c.bearer_token = Some(Secret::new("tok-123"));
        let p = Poster::new(&c, None).expect("poster");
        assert!(!format!("{p:?}").contains("tok-123"));
        assert!(!p.endpoint().contains("s3cr3t"), "the path is not logged");
        p.post_json(Bytes::from_static(b"{\"a\":1}"))
            .await
            .expect("third attempt");
        assert_eq!(hits.load(Ordering::SeqCst), 3);
        let req = rx.recv().await.expect("request");
        assert!(req.starts_with("POST /hook/s3cr3t-path HTTP/1.1"), "{req}");
        assert!(
            req.to_ascii_lowercase().contains("authorization: bearer tok-123"),
            "{req}"
        );
        assert!(req.ends_with("{\"a\":1}"), "{req}");
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_and_not_on_4xx() {
        let (url, hits, _rx) = server(vec![500, 500, 500, 500]).await;
        let p = Poster::new(&cfg(&url), None).expect("poster");
        let e = p.post_json(Bytes::new()).await.expect_err("fails");
        assert!(matches!(e, SinkError::Status { status: 500, .. }), "{e}");
        assert_eq!(hits.load(Ordering::SeqCst), 3);

        let (url, hits, _rx) = server(vec![400]).await;
        let p = Poster::new(&cfg(&url), None).expect("poster");
        p.post_json(Bytes::new()).await.expect_err("400 is final");
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        // Accepts (the kernel does) but never answers.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut c = cfg(&format!("http://{}", l.local_addr().expect("addr")));
        c.timeout = Duration::from_millis(100);
        c.retry.max_attempts = 2;
        let p = Poster::new(&c, None).expect("poster");
        let t = std::time::Instant::now();
        let e = p.post_json(Bytes::new()).await.expect_err("timeout");
        assert!(matches!(e, SinkError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
        drop(l);
    }

    #[test]
    fn path_is_appended_to_the_base() {
        let c = HttpConfig::new("http://am:9093/prefix/");
        let p = Poster::new(&c, Some("/api/v2/alerts")).expect("poster");
        assert_eq!(p.uri.to_string(), "http://am:9093/prefix/api/v2/alerts");
        assert_eq!(p.endpoint(), "http://am:9093");
    }
}
