//! `memtrace watch` configuration: a TOML file (`--config FILE`) plus flags, flags winning.
//!
//! Every key is documented in `memtrace.example.toml` at the repository root. Unknown keys are
//! errors, and so is any value that would only fail later: everything is checked at start, and
//! each error names the key (`sinks.webhook.retry.max_attempts: ...`) and the problem.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::cli::WatchArgs;

mod sinks;
#[cfg(test)]
mod tests;
mod validate;
mod watch;

pub use sinks::*;
pub use watch::*;

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
        if args.exact_charges {
            c.exact = true;
        }
        if let Some(n) = args.fault_sample_period {
            c.fault_sample_period = n;
        }
        if let Some(d) = args.kill_context_window {
            c.kill_context_window = d;
        }
        if let Some(d) = args.kill_stacks_wait {
            c.kill_stacks_wait = d;
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
            self.watch.variants = args.variants.clone();
        }
        if args.oom_ring_bytes.is_some() {
            self.watch.oom_ring_bytes = args.oom_ring_bytes;
        }
        if args.all_userspace_kills {
            self.watch.all_userspace_kills = true;
        }
        if let Some(d) = args.enrich_budget {
            self.watch.enrich_budget = d;
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
            let w = self.sinks.webhook.get_or_insert_with(|| HttpConfig::new(url));
            w.enable_at(url);
        }
        if let Some(url) = &args.alertmanager_url {
            let a = self
                .sinks
                .alertmanager
                .get_or_insert_with(|| AlertmanagerConfig::new(url));
            a.enable_at(url);
        }
        if args.journald {
            self.sinks
                .journald
                .get_or_insert_with(JournaldConfig::default)
                .enabled = true;
        }
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
