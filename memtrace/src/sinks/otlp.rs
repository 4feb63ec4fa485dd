//! Each event as an OpenTelemetry log record, POSTed to an OTLP/HTTP logs endpoint
//! (`http://collector:4318/v1/logs`) in OTLP's JSON encoding. The event's flat keys become the
//! record's attributes; `host.name` and `service.name=memtrace` are resource attributes.
//!
//! Current semantic conventions: the event name is the LogRecord's own EventName field, not the
//! deprecated `event.name` attribute, and the runtime is `container.runtime.name`. The JSON lines
//! keep the old keys beside the new ones (pipelines parse them); here they are left out.

use std::time::UNIX_EPOCH;

use bytes::Bytes;
use serde_json::{Value, json};

use super::{Event, Sink, SinkError, http::Poster};
use crate::config::HttpConfig;

/// OpenTelemetry SeverityNumber ERROR (WARN for a victim that was already exiting).
const SEVERITY_ERROR: u32 = 17;
const SEVERITY_WARN: u32 = 13;

/// JSON-line keys whose current names the record carries instead: `event.name` (the record's
/// EventName) and `container.runtime` (`container.runtime.name`).
const DEPRECATED: [&str; 2] = ["event.name", "container.runtime"];

#[derive(Debug)]
pub struct OtlpSink {
    poster: Poster,
    host: String,
}

impl OtlpSink {
    pub fn new(c: &HttpConfig, host: &str) -> Result<Self, SinkError> {
        Ok(Self {
            poster: Poster::new(c, None)?,
            host: host.to_owned(),
        })
    }
}

fn any_value(v: &Value) -> Option<Value> {
    Some(match v {
        Value::String(s) => json!({ "stringValue": s }),
        Value::Bool(b) => json!({ "boolValue": b }),
        // 64-bit integers are strings in OTLP/JSON.
        Value::Number(n) if n.is_i64() || n.is_u64() => json!({ "intValue": n.to_string() }),
        Value::Number(n) => json!({ "doubleValue": n.as_f64()? }),
        _ => return None,
    })
}

fn attr(key: &str, v: Value) -> Value {
    json!({ "key": key, "value": v })
}

pub fn payload(ev: &Event, host: &str) -> Value {
    let nanos = ev
        .payload
        .time()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .to_string();
    let observed = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .to_string();
    let attributes: Vec<Value> = ev
        .json()
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !matches!(k.as_str(), "timestamp" | "severity_text" | "body" | "host.name"))
        .filter(|(k, _)| !DEPRECATED.contains(&k.as_str()))
        .filter_map(|(k, v)| Some(attr(k, any_value(v)?)))
        .collect();
    let (sev, sev_text) = if ev.is_warning() {
        (SEVERITY_WARN, "WARN")
    } else {
        (SEVERITY_ERROR, "ERROR")
    };
    json!({
        "resourceLogs": [{
            "resource": { "attributes": [
                attr("service.name", json!({ "stringValue": "memtrace" })),
                attr("host.name", json!({ "stringValue": host })),
            ]},
            "scopeLogs": [{
                "scope": { "name": "memtrace", "version": env!("CARGO_PKG_VERSION") },
                "logRecords": [{
                    "timeUnixNano": nanos,
                    "observedTimeUnixNano": observed,
                    "severityNumber": sev,
                    "severityText": sev_text,
                    "eventName": ev.name(),
                    "body": { "stringValue": ev.message() },
                    "attributes": attributes,
                }],
            }],
        }],
    })
}

impl Sink for OtlpSink {
    async fn deliver(&mut self, ev: &Event) -> Result<(), SinkError> {
        let body = serde_json::to_vec(&payload(ev, &self.host)).map_err(|source| SinkError::Encode {
            what: "the log record",
            source,
        })?;
        self.poster.post_json(Bytes::from(body)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::tests::event;

    #[test]
    fn log_record_shape() {
        let p = payload(&event(), "node-1");
        let rl = &p["resourceLogs"][0];
        assert_eq!(rl["resource"]["attributes"][1]["value"]["stringValue"], "node-1");
        let r = &rl["scopeLogs"][0]["logRecords"][0];
        assert_eq!(r["timeUnixNano"], "1700000000000000000");
        assert_eq!(r["severityNumber"], 17);
        let attrs = r["attributes"].as_array().expect("attributes");
        let get = |k: &str| attrs.iter().find(|a| a["key"] == k).map(|a| a["value"].clone());
        assert_eq!(get("process.pid"), Some(json!({ "intValue": "10" })));
        assert_eq!(r["eventName"], "memtrace.oom_kill");
        assert_eq!(
            get("event.name"),
            None,
            "deprecated: the EventName field carries it"
        );
        assert_eq!(get("body"), None);
    }
}
