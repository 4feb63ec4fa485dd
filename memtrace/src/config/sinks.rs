//! The `[sinks.*]` sections, and the bearer tokens HTTP sinks send.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use super::{DEFAULT_JOURNAL_SOCKET, Secret, duration};
use crate::output::Format;

/// Each sink is enabled by its section being present (unless `enabled = false`); stdout is on
/// unless disabled.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    pub stdout: Option<StdoutConfig>,
    pub file: Option<FileConfig>,
    pub journald: Option<JournaldConfig>,
    pub webhook: Option<WebhookConfig>,
    pub alertmanager: Option<AlertmanagerConfig>,
    pub otlp: Option<OtlpConfig>,
}

impl Default for SinksConfig {
    fn default() -> Self {
        Self {
            stdout: Some(StdoutConfig::default()),
            file: None,
            journald: None,
            webhook: None,
            alertmanager: None,
            otlp: None,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StdoutConfig {
    pub enabled: bool,
    pub format: Format,
    pub queue: usize,
}

impl Default for StdoutConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            format: Format::Text,
            queue: 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub path: PathBuf,
    #[serde(default = "FileConfig::default_format")]
    pub format: Format,
    /// Rotate once the file would grow past this many bytes.
    #[serde(default = "FileConfig::default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept: `path.1` (newest) .. `path.N`.
    #[serde(default = "FileConfig::default_keep")]
    pub keep: u32,
    #[serde(default = "default_queue")]
    pub queue: usize,
}

impl FileConfig {
    fn default_format() -> Format {
        Format::Json
    }
    fn default_max_bytes() -> u64 {
        10 << 20
    }
    fn default_keep() -> u32 {
        5
    }
}

fn default_queue() -> usize {
    1024
}

fn default_http_queue() -> usize {
    256
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournaldConfig {
    pub enabled: bool,
    pub socket: PathBuf,
    pub queue: usize,
}

impl Default for JournaldConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            socket: DEFAULT_JOURNAL_SOCKET.into(),
            queue: default_queue(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts per event, the first included.
    pub max_attempts: u32,
    #[serde(with = "duration")]
    pub initial_backoff: Duration,
    #[serde(with = "duration")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Declares an HTTP sink's config: the keys every HTTP sink takes, then its own. serde's
/// `flatten` would lose `deny_unknown_fields` and the key paths in errors, so the shared keys
/// are written once here instead of once per struct.
macro_rules! http_sink_config {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* pub $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            #[serde(default = "yes")]
            pub enabled: bool,
            pub url: String,
            /// Sent as `Authorization: Bearer ...`. Prefer `bearer_token_file`.
            #[serde(default)]
            pub bearer_token: Option<Secret>,
            #[serde(default)]
            pub bearer_token_file: Option<PathBuf>,
            /// Per attempt: connect, send and response.
            #[serde(default = "default_timeout", with = "duration")]
            pub timeout: Duration,
            #[serde(default)]
            pub retry: RetryConfig,
            #[serde(default = "default_http_queue")]
            pub queue: usize,
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl $name {
            /// `--webhook-url` and the like: on, at `url`, the rest of the section kept.
            pub fn enable_at(&mut self, url: &str) {
                self.enabled = true;
                self.url = url.to_owned();
            }
        }
    };
}

http_sink_config! {
    /// An HTTP sink (webhook, OTLP): where to POST, how long to wait, how often to retry.
    pub struct HttpConfig {}
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl HttpConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            enabled: true,
            url: url.into(),
            bearer_token: None,
            bearer_token_file: None,
            timeout: default_timeout(),
            retry: RetryConfig::default(),
            queue: default_http_queue(),
        }
    }
}

pub type WebhookConfig = HttpConfig;
/// OTLP/HTTP logs endpoint, e.g. `http://127.0.0.1:4318/v1/logs` (JSON encoding).
pub type OtlpConfig = HttpConfig;

http_sink_config! {
    /// Alertmanager's base URL; alerts go to `<url>/api/v2/alerts`.
    pub struct AlertmanagerConfig {
        #[serde(default = "AlertmanagerConfig::default_severity")]
        pub severity: String,
        /// `endsAt` = the kill's time + this: the alert resolves by itself.
        #[serde(default = "AlertmanagerConfig::default_resolve_after", with = "duration")]
        pub resolve_after: Duration,
        /// Extra labels on every alert (e.g. `cluster = "prod-1"`).
        #[serde(default)]
        pub labels: BTreeMap<String, String>,
    }
}

impl AlertmanagerConfig {
    fn default_severity() -> String {
        "critical".into()
    }
    fn default_resolve_after() -> Duration {
        Duration::from_secs(15 * 60)
    }

    pub fn new(url: impl Into<String>) -> Self {
        Self::from_http(HttpConfig::new(url))
    }

    fn from_http(h: HttpConfig) -> Self {
        Self {
            enabled: h.enabled,
            url: h.url,
            bearer_token: h.bearer_token,
            bearer_token_file: h.bearer_token_file,
            timeout: h.timeout,
            retry: h.retry,
            queue: h.queue,
            severity: Self::default_severity(),
            resolve_after: Self::default_resolve_after(),
            labels: BTreeMap::new(),
        }
    }

    /// The HTTP part, as the other HTTP sinks have it.
    pub fn http(&self) -> HttpConfig {
        HttpConfig {
            enabled: self.enabled,
            url: self.url.clone(),
            bearer_token: self.bearer_token.clone(),
            bearer_token_file: self.bearer_token_file.clone(),
            timeout: self.timeout,
            retry: self.retry.clone(),
            queue: self.queue,
        }
    }
}

/// Reads a token file (trailing newline dropped). The error never contains the token.
pub fn read_token(path: &Path) -> Result<Secret, String> {
    let s = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let t = s.trim_end_matches(['\n', '\r']);
    if t.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret::new(t))
}

impl HttpConfig {
    /// The token to send, from the config or its file.
    pub fn token(&self) -> Result<Option<Secret>, String> {
        match (&self.bearer_token, &self.bearer_token_file) {
            (Some(t), _) => Ok(Some(t.clone())),
            (None, Some(p)) => read_token(p).map(Some),
            (None, None) => Ok(None),
        }
    }
}
