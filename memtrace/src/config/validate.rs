//! `Config::validate`: every value checked at start, the error naming the key.

use std::time::Duration;

use super::{Config, ConfigError, HttpConfig, invalid, read_token};

impl Config {
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
        if c.kill_stacks_wait > Duration::from_secs(10) {
            return Err(invalid("charges.kill_stacks_wait", "must be at most 10s"));
        }
        let w = &self.watch;
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
        if w.enrich_budget.is_zero() || w.enrich_budget > Duration::from_secs(10) {
            return Err(invalid(
                "watch.enrich_budget",
                "must be more than 0 and at most 10s",
            ));
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
