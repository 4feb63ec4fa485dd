//! `memtrace watch` configuration: a TOML file (`--config FILE`) plus flags, flags winning.
//!
//! Every key is documented in `memtrace.example.toml` at the repository root. Unknown keys are
//! errors, and so is any value that would only fail later: everything is checked at start, and
//! each error names the key (`sinks.webhook.retry.max_attempts: ...`) and the problem.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::{cli::WatchArgs, kernel::hooks::ForcedVariant, output::Format};

/// Default address of the Prometheus endpoint when metrics are enabled without one.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9747";
/// The journald native-protocol socket.
pub const DEFAULT_JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {key}: {message}")]
    Parse {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        problem: problem.into(),
    }
}

/// A secret from the configuration (a bearer token). Never printed: `Debug` shows `***`, and it
/// has no `Display` or `Serialize`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The secret itself: only for the header that carries it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Durations as humantime strings: "500ms", "5s", "15m".
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error as _};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| D::Error::custom(format!("{s:?} is not a duration like \"5s\" or \"500ms\": {e}")))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub watch: WatchConfig,
    pub charges: ChargesConfig,
    pub metrics: MetricsConfig,
    pub sinks: SinksConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchConfig {
    /// `HOOK=KIND` strings, as `--variant`.
    pub variants: Vec<String>,
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
        }
    }
}

/// Charge accounting: per-cgroup charge counters, sampled stacks, pre-OOM warnings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChargesConfig {
    pub enabled: bool,
    /// One stack sample every this many charge events per CPU; 0: no stacks.
    pub stack_sample_every: u32,
    /// How far back a kill's top charging stacks look.
    #[serde(with = "duration")]
    pub kill_context_window: Duration,
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
            kill_context_window: Duration::from_secs(10),
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

/// An HTTP sink (webhook, OTLP): where to POST, how long to wait, how often to retry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
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

/// The HTTP keys again (serde's `flatten` would lose `deny_unknown_fields` and key paths).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Alertmanager's base URL; alerts go to `<url>/api/v2/alerts`.
    pub url: String,
    #[serde(default)]
    pub bearer_token: Option<Secret>,
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default = "default_http_queue")]
    pub queue: usize,
    #[serde(default = "AlertmanagerConfig::default_severity")]
    pub severity: String,
    /// `endsAt` = the kill's time + this: the alert resolves by itself.
    #[serde(default = "AlertmanagerConfig::default_resolve_after", with = "duration")]
    pub resolve_after: Duration,
    /// Extra labels on every alert (e.g. `cluster = "prod-1"`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
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

impl Config {
    /// Reads and parses a config file. Unknown keys, wrong types and bad durations are errors
    /// that name the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|(key, message)| ConfigError::Parse {
            path: path.to_owned(),
            key,
            message,
        })
    }

    /// Parses TOML text: `Err((key, message))`.
    pub fn parse(text: &str) -> Result<Self, (String, String)> {
        let de = toml::Deserializer::parse(text).map_err(|e| ("(syntax)".to_owned(), one_line(&e)))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            (
                if key == "." { "(top level)".into() } else { key },
                one_line(e.inner()),
            )
        })
    }

    /// Applies the flags given on the command line over the file's values.
    pub fn apply_flags(&mut self, args: &WatchArgs) {
        let c = &mut self.charges;
        if args.no_charges {
            c.enabled = false;
        }
        if let Some(n) = args.stack_sample_every {
            c.stack_sample_every = n;
        }
        if let Some(d) = args.kill_context_window {
            c.kill_context_window = d;
        }
        if let Some(r) = args.warn_ratio {
            c.warn_ratio = r;
        }
        if let Some(d) = args.warn_every {
            c.warn_every = d;
        }
        if let Some(d) = &args.kill_flamegraphs {
            c.kill_flamegraph_dir = Some(d.clone());
        }
        if !args.variants.is_empty() {
            self.watch.variants = args
                .variants
                .iter()
                .map(|v| format!("{}={}", v.hook, v.kind))
                .collect();
        }
        if args.oom_ring_bytes.is_some() {
            self.watch.oom_ring_bytes = args.oom_ring_bytes;
        }
        if let Some(r) = args.ws_alert_ratio {
            self.watch.ws_alert_ratio = r;
        }
        if !args.oci_bundles.is_empty() {
            self.watch.oci_bundles = args.oci_bundles.clone();
        }
        if !args.docker_roots.is_empty() {
            self.watch.docker_roots = args.docker_roots.clone();
        }
        if args.host_name.is_some() {
            self.watch.host_name = args.host_name.clone();
        }
        if let Some(f) = args.output {
            let s = self.sinks.stdout.get_or_insert_with(StdoutConfig::default);
            s.enabled = true;
            s.format = f;
        }
        if let Some(a) = args.metrics_addr {
            self.metrics.enabled = true;
            self.metrics.listen = a.to_string();
        }
        if let Some(url) = &args.webhook_url {
            match &mut self.sinks.webhook {
                Some(w) => {
                    w.enabled = true;
                    w.url = url.clone();
                }
                None => self.sinks.webhook = Some(HttpConfig::new(url.clone())),
            }
        }
        if let Some(url) = &args.alertmanager_url {
            match &mut self.sinks.alertmanager {
                Some(a) => {
                    a.enabled = true;
                    a.url = url.clone();
                }
                None => self.sinks.alertmanager = Some(AlertmanagerConfig::new(url.clone())),
            }
        }
        if args.journald {
            self.sinks
                .journald
                .get_or_insert_with(JournaldConfig::default)
                .enabled = true;
        }
    }

    /// The hook variants, parsed.
    pub fn variants(&self) -> Result<Vec<ForcedVariant>, ConfigError> {
        self.watch
            .variants
            .iter()
            .map(|v| v.parse().map_err(|e| invalid("watch.variants", format!("{e}"))))
            .collect()
    }

    /// The metrics address, when metrics are enabled.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        if !self.metrics.enabled {
            return Ok(None);
        }
        self.metrics.listen.parse().map(Some).map_err(|e| {
            invalid(
                "metrics.listen",
                format!("{:?} is not IP:PORT: {e}", self.metrics.listen),
            )
        })
    }

    /// Checks every value; the first problem is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.charges;
        if !(c.warn_ratio > 0.0 && c.warn_ratio <= 1.0) {
            return Err(invalid(
                "charges.warn_ratio",
                format!("{} must be in (0, 1]", c.warn_ratio),
            ));
        }
        if c.kill_context_window.is_zero() {
            return Err(invalid("charges.kill_context_window", "must be longer than 0s"));
        }
        let w = &self.watch;
        self.variants()?;
        if let Some(n) = w.oom_ring_bytes
            && (n < 4096 || !n.is_power_of_two())
        {
            return Err(invalid(
                "watch.oom_ring_bytes",
                format!("{n} must be a power of two of at least 4096"),
            ));
        }
        if !(w.ws_alert_ratio > 0.0 && w.ws_alert_ratio <= 1.0) {
            return Err(invalid(
                "watch.ws_alert_ratio",
                format!("{} must be in (0, 1]", w.ws_alert_ratio),
            ));
        }
        if w.host_name.as_ref().is_some_and(|h| h.trim().is_empty()) {
            return Err(invalid("watch.host_name", "must not be empty"));
        }
        if w.shutdown_timeout > Duration::from_secs(300) {
            return Err(invalid("watch.shutdown_timeout", "must be at most 5m"));
        }
        self.metrics_addr()?;
        if self.metrics.max_cgroups == 0 {
            return Err(invalid("metrics.max_cgroups", "must be at least 1"));
        }
        if let Some(d) = &self.charges.kill_flamegraph_dir
            && !d.is_dir()
        {
            return Err(invalid(
                "charges.kill_flamegraph_dir",
                format!("{} is not a directory", d.display()),
            ));
        }
        if self.metrics.forget_after < Duration::from_secs(1) {
            return Err(invalid("metrics.forget_after", "must be at least 1s"));
        }
        let s = &self.sinks;
        if let Some(c) = s.stdout.as_ref().filter(|c| c.enabled) {
            check_queue("sinks.stdout.queue", c.queue)?;
        }
        if let Some(c) = s.file.as_ref().filter(|c| c.enabled) {
            check_queue("sinks.file.queue", c.queue)?;
            if c.path.as_os_str().is_empty() {
                return Err(invalid("sinks.file.path", "must not be empty"));
            }
            if c.max_bytes < 4096 {
                return Err(invalid("sinks.file.max_bytes", "must be at least 4096"));
            }
            if !(1..=1000).contains(&c.keep) {
                return Err(invalid("sinks.file.keep", "must be in 1..=1000"));
            }
        }
        if let Some(c) = s.journald.as_ref().filter(|c| c.enabled) {
            check_queue("sinks.journald.queue", c.queue)?;
            if !c.socket.is_absolute() {
                return Err(invalid("sinks.journald.socket", "must be an absolute path"));
            }
        }
        if let Some(c) = s.webhook.as_ref().filter(|c| c.enabled) {
            check_http("sinks.webhook", c)?;
        }
        if let Some(c) = s.alertmanager.as_ref().filter(|c| c.enabled) {
            check_http("sinks.alertmanager", &c.http())?;
            if c.severity.is_empty() {
                return Err(invalid("sinks.alertmanager.severity", "must not be empty"));
            }
            if c.resolve_after < Duration::from_secs(1) {
                return Err(invalid("sinks.alertmanager.resolve_after", "must be at least 1s"));
            }
            for name in c.labels.keys() {
                if !is_label_name(name) {
                    return Err(invalid(
                        &format!("sinks.alertmanager.labels.{name}"),
                        "not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)",
                    ));
                }
            }
        }
        if let Some(c) = s.otlp.as_ref().filter(|c| c.enabled) {
            if !cfg!(feature = "otlp") {
                return Err(invalid(
                    "sinks.otlp",
                    "this memtrace was built without the `otlp` cargo feature",
                ));
            }
            check_http("sinks.otlp", c)?;
        }
        Ok(())
    }
}

/// The whole error on one line (toml's errors span several, with a source excerpt).
fn one_line(e: &impl fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| {
            // Drop toml's source excerpt: "3 | key = ...", "|", "^^^".
            let excerpt = l
                .split_once('|')
                .is_some_and(|(n, _)| n.trim().chars().all(|c| c.is_ascii_digit()));
            !l.is_empty() && !excerpt && !l.starts_with('^')
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn check_queue(key: &str, n: usize) -> Result<(), ConfigError> {
    if !(1..=1_000_000).contains(&n) {
        return Err(invalid(key, format!("{n} must be in 1..=1000000")));
    }
    Ok(())
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks an HTTP sink's URL (plain http, a host, no credentials in it) and the rest.
fn check_http(section: &str, c: &HttpConfig) -> Result<(), ConfigError> {
    let key = format!("{section}.url");
    let uri: http::Uri = c
        .url
        .parse()
        .map_err(|e| invalid(&key, format!("not a URL: {e}")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(invalid(
                &key,
                "https is not supported by this build (no TLS): use http, e.g. to a local relay or sidecar",
            ));
        }
        _ => return Err(invalid(&key, "must start with http://")),
    }
    let Some(auth) = uri.authority() else {
        return Err(invalid(&key, "has no host"));
    };
    if auth.as_str().contains('@') {
        return Err(invalid(
            &key,
            "must not carry credentials: use bearer_token or bearer_token_file",
        ));
    }
    if c.bearer_token.is_some() && c.bearer_token_file.is_some() {
        return Err(invalid(
            &format!("{section}.bearer_token_file"),
            "set bearer_token or bearer_token_file, not both",
        ));
    }
    if let Some(p) = &c.bearer_token_file {
        read_token(p).map_err(|e| invalid(&format!("{section}.bearer_token_file"), e))?;
    }
    if c.timeout.is_zero() || c.timeout > Duration::from_secs(300) {
        return Err(invalid(&format!("{section}.timeout"), "must be in (0s, 5m]"));
    }
    let r = &c.retry;
    if !(1..=20).contains(&r.max_attempts) {
        return Err(invalid(
            &format!("{section}.retry.max_attempts"),
            format!("{} must be in 1..=20", r.max_attempts),
        ));
    }
    if r.initial_backoff.is_zero() || r.initial_backoff > r.max_backoff {
        return Err(invalid(
            &format!("{section}.retry.initial_backoff"),
            "must be above 0 and at most retry.max_backoff",
        ));
    }
    if r.max_backoff > Duration::from_secs(600) {
        return Err(invalid(
            &format!("{section}.retry.max_backoff"),
            "must be at most 10m",
        ));
    }
    check_queue(&format!("{section}.queue"), c.queue)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> (String, String) {
        Config::parse(text).expect_err(text)
    }

    #[test]
    fn example_file_parses_and_validates() {
        let text = include_str!("../../../memtrace.example.toml");
        let c = Config::parse(text).unwrap_or_else(|e| panic!("{e:?}"));
        c.validate().unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::parse("").expect("empty");
        assert!(c.sinks.stdout.as_ref().is_some_and(|s| s.enabled));
        assert!(c.sinks.webhook.is_none() && !c.metrics.enabled);
        c.validate().expect("defaults are valid");
    }

    #[test]
    fn unknown_keys_are_named() {
        let (k, m) = err("[sinks.stdout]\nformatt = \"json\"\n");
        assert_eq!(k, "sinks.stdout.formatt", "{m}");
        assert!(m.contains("unknown field `formatt`"), "{m}");
        let (k, m) = err("[sinks.webhook]\nurl = \"http://x\"\ntokn = \"a\"\n");
        assert_eq!(k, "sinks.webhook.tokn");
        assert!(m.contains("unknown field"), "{m}");
        let (k, m) = err("[metric]\nenabled = true\n");
        assert_eq!(k, "metric", "{m}");
    }

    #[test]
    fn type_errors_name_the_key() {
        let (k, m) =
            err("[sinks.webhook]\nurl = \"http://x\"\n[sinks.webhook.retry]\nmax_attempts = \"three\"\n");
        assert_eq!(k, "sinks.webhook.retry.max_attempts", "{m}");
        let (k, m) = err("[sinks.webhook]\nurl = \"http://x\"\ntimeout = \"soon\"\n");
        assert_eq!(k, "sinks.webhook.timeout");
        assert!(m.contains("not a duration"), "{m}");
        let (k, m) = err("[sinks.stdout]\nformat = \"xml\"\n");
        assert_eq!(k, "sinks.stdout.format");
        assert!(m.contains("xml"), "{m}");
    }

    fn invalid_key(text: &str) -> String {
        match Config::parse(text).expect(text).validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        assert_eq!(
            invalid_key("[sinks.webhook]\nurl = \"ftp://x\"\n"),
            "sinks.webhook.url"
        );
        assert_eq!(
            invalid_key("[sinks.webhook]\nurl = \"http://u:p@x/\"\n"),
            "sinks.webhook.url"
        );
        assert_eq!(
            invalid_key("[sinks.alertmanager]\nurl = \"http://x\"\nretry = { max_attempts = 0 }\n"),
            "sinks.alertmanager.retry.max_attempts"
        );
        assert_eq!(
            invalid_key("[sinks.alertmanager]\nurl = \"http://x\"\nlabels = { \"bad-name\" = \"1\" }\n"),
            "sinks.alertmanager.labels.bad-name"
        );
        assert_eq!(
            invalid_key("[metrics]\nenabled = true\nlisten = \"localhost\"\n"),
            "metrics.listen"
        );
        assert_eq!(
            invalid_key("[watch]\nws_alert_ratio = 1.5\n"),
            "watch.ws_alert_ratio"
        );
        assert_eq!(
            invalid_key("[watch]\noom_ring_bytes = 1000\n"),
            "watch.oom_ring_bytes"
        );
        assert_eq!(
            invalid_key("[watch]\nvariants = [\"oom_victim=kprobe\"]\n"),
            "watch.variants"
        );
        assert_eq!(
            invalid_key("[sinks.file]\npath = \"/tmp/x\"\nmax_bytes = 10\n"),
            "sinks.file.max_bytes"
        );
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let c =
            Config::parse("[sinks.webhook]\nurl = \"http://x\"\nbearer_token = \"hunter2-very-secret\"\n")
                .expect("parse");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("Secret(***)"));
    }

    #[test]
    fn flags_win() {
        use clap::Parser as _;
        let mut c = Config::parse(
            "[sinks.stdout]\nformat = \"text\"\n[sinks.webhook]\nurl = \"http://a\"\ntimeout = \"2s\"\n",
        )
        .expect("parse");
        let cli = crate::cli::Cli::try_parse_from([
            "memtrace",
            "watch",
            "--output",
            "json",
            "--webhook-url",
            "http://b",
            "--metrics-addr",
            "127.0.0.1:1234",
        ])
        .expect("flags");
        let crate::cli::Command::Watch(args) = cli.command else {
            panic!("watch")
        };
        c.apply_flags(&args);
        c.validate().expect("valid");
        assert_eq!(c.sinks.stdout.as_ref().map(|s| s.format), Some(Format::Json));
        let w = c.sinks.webhook.as_ref().expect("webhook");
        assert_eq!(w.url, "http://b");
        assert_eq!(w.timeout, Duration::from_secs(2), "the file's other keys stay");
        assert_eq!(
            c.metrics_addr().expect("addr"),
            Some("127.0.0.1:1234".parse().expect("addr"))
        );
    }

    #[test]
    fn charge_keys_and_their_flags() {
        use clap::Parser as _;
        let mut c = Config::parse(
            "[charges]\nwarn_ratio = 0.8\nkill_context_window = \"30s\"\nstack_sample_every = 16\n",
        )
        .expect("parse");
        assert_eq!((c.charges.warn_ratio, c.charges.stack_sample_every), (0.8, 16));
        assert_eq!(c.charges.kill_context_window, Duration::from_secs(30));
        let cli =
            crate::cli::Cli::try_parse_from(["memtrace", "watch", "--warn-ratio", "0.95", "--no-charges"])
                .expect("flags");
        let crate::cli::Command::Watch(args) = cli.command else {
            panic!("watch")
        };
        c.apply_flags(&args);
        assert_eq!(c.charges.warn_ratio, 0.95, "the flag wins");
        assert_eq!(c.charges.stack_sample_every, 16, "the file's other keys stay");
        assert!(!c.charges.enabled);
        let bad = Config::parse("[charges]\nwarn_ratio = 1.5\n").expect("parses; validation is separate");
        let e = bad.validate().expect_err("out of range").to_string();
        assert!(e.contains("charges.warn_ratio"), "{e}");
    }
}
