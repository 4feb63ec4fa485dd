//! Each kill as an alert, POSTed to Alertmanager's `/api/v2/alerts`.
//!
//! Labels: `alertname="MemtraceOOMKill"`, `severity` (config, default `critical`), `node` (the
//! host name), `cgroup` (the victim's), `namespace`, `pod`, `container` when known, and the
//! config's extra labels. Annotations: `summary` = the verdict, `description` = the event's
//! body. `startsAt` is the kill's time and `endsAt` that plus `resolve_after`, so the alert
//! resolves by itself: an OOM kill is an event, not a state.
//!
//! Pre-OOM warnings become `alertname="MemtracePreOOMWarning"`, `severity="warning"`, with
//! `node` and `cgroup`.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::json;

use super::{Event, Payload, Sink, SinkError, http::Poster};
use crate::{config::AlertmanagerConfig, kernel::clock};

pub const ALERTNAME: &str = "MemtraceOOMKill";
/// Pre-OOM warnings (severity `warning`, label `cgroup`, summary = the warning).
pub const WARNING_ALERTNAME: &str = "MemtracePreOOMWarning";
/// An OOM without a victim; its end event resolves the alert (same labels, `endsAt` = the end).
pub const STALL_ALERTNAME: &str = "MemtraceOOMNoVictim";
/// A process killed by a userspace memory killer (earlyoom, systemd-oomd, ...).
pub const USER_KILL_ALERTNAME: &str = "MemtraceUserspaceOOMKill";

#[derive(Debug)]
pub struct AlertmanagerSink {
    poster: Poster,
    severity: String,
    resolve_after: std::time::Duration,
    extra: BTreeMap<String, String>,
    host: String,
}

impl AlertmanagerSink {
    pub fn new(c: &AlertmanagerConfig, host: &str) -> Result<Self, SinkError> {
        Ok(Self {
            poster: Poster::new(&c.http(), Some("/api/v2/alerts"))?,
            severity: c.severity.clone(),
            resolve_after: c.resolve_after,
            extra: c.labels.clone(),
            host: host.to_owned(),
        })
    }

    pub fn alert(&self, ev: &Event) -> serde_json::Value {
        let mut labels = self.extra.clone();
        let mut put = |key: &str, v: Option<&str>| {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                labels.insert(key.into(), v.into());
            }
        };
        put("node", Some(&self.host));
        let (summary, time) = match &ev.payload {
            Payload::Kill(k) => {
                put("alertname", Some(ALERTNAME));
                put("severity", Some(&self.severity));
                put("cgroup", k.cgroup.as_ref().and_then(|c| c.path.as_deref()));
                let names = k.attribution.as_ref().and_then(|a| a.names.as_ref());
                put("namespace", names.and_then(|n| n.namespace.as_deref()));
                put("pod", names.and_then(|n| n.pod.as_deref()));
                put("container", names.and_then(|n| n.container.as_deref()));
                put("episode", k.episode.as_ref().map(|e| e.id.as_str()));
                (k.verdict.summary.clone(), k.time)
            }
            Payload::Episode(e) => {
                put("alertname", Some(ALERTNAME));
                put("cgroup", e.cgroup.as_deref());
                (ev.body(), e.time)
            }
            Payload::Stall(s) => {
                put("alertname", Some(STALL_ALERTNAME));
                put("severity", Some(&self.severity));
                put("cgroup", Some(&s.cgroup));
                (ev.body(), s.since)
            }
            Payload::UserKill(k) => {
                put("alertname", Some(USER_KILL_ALERTNAME));
                put("severity", Some(&self.severity));
                put("killer", Some(k.kind.as_str()));
                put("cgroup", k.victim.as_ref().and_then(|v| v.cgroup.as_deref()));
                (ev.body(), k.time)
            }
            // Not sent (see `deliver`); its kill's alert stands.
            Payload::KillStacks(k) => {
                put("alertname", Some(ALERTNAME));
                put("cgroup", k.cgroup.as_deref());
                (ev.body(), k.kill_time)
            }
            Payload::Warning(w) => {
                put("alertname", Some(WARNING_ALERTNAME));
                put("severity", Some("warning"));
                put("cgroup", Some(&w.cgroup));
                (ev.body(), w.time)
            }
        };
        json!([{
            "labels": labels,
            "annotations": {
                "summary": summary,
                "description": ev.body(),
            },
            "startsAt": clock::rfc3339(time),
            "endsAt": clock::rfc3339(match &ev.payload {
                Payload::Stall(s) if s.duration.is_some() => s.time,
                _ => time + self.resolve_after,
            }),
        }])
    }
}

impl Sink for AlertmanagerSink {
    async fn deliver(&mut self, ev: &Event) -> Result<(), SinkError> {
        // One alert per OOM episode: its first kill (with the `episode` label); the further
        // kills, the summary and a kill's later stacks are in the other sinks.
        let later_kill = ev
            .kill()
            .and_then(|k| k.episode.as_ref())
            .is_some_and(|e| e.place > 1);
        if later_kill || matches!(ev.payload, Payload::Episode(_) | Payload::KillStacks(_)) {
            return Ok(());
        }
        let body = serde_json::to_vec(&self.alert(ev)).map_err(|source| SinkError::Encode {
            what: "the alert",
            source,
        })?;
        self.poster.post_json(Bytes::from(body)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        enrich::attribution::{Attribution, K8sNames},
        sinks::tests::kill,
    };

    #[test]
    fn alert_has_the_labels_and_the_verdict() {
        let mut c = AlertmanagerConfig::new("http://127.0.0.1:9093");
        c.labels.insert("cluster".into(), "prod".into());
        let s = AlertmanagerSink::new(&c, "node-1").expect("sink");
        let mut k = kill();
        k.attribution = Some(Attribution {
            names: Some(K8sNames {
                namespace: Some("shop".into()),
                pod: Some("cart-1".into()),
                container: None,
            }),
            ..Attribution::default()
        });
        let a = &s.alert(&Event::from_kill(k, "node-1".into(), 0))[0];
        let l = &a["labels"];
        assert_eq!(l["alertname"], ALERTNAME);
        assert_eq!(l["severity"], "critical");
        assert_eq!(l["cgroup"], "/kubepods.slice/x");
        assert_eq!(
            (l["namespace"].as_str(), l["pod"].as_str()),
            (Some("shop"), Some("cart-1"))
        );
        assert!(l.get("container").is_none(), "unknown labels are left out");
        assert_eq!(l["cluster"], "prod");
        assert_eq!(l["node"], "node-1");
        assert!(
            a["annotations"]["summary"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        );
        assert_eq!(a["startsAt"], "2023-11-14T22:13:20.000000000Z");
        assert_eq!(a["endsAt"], "2023-11-14T22:28:20.000000000Z");
    }
}
