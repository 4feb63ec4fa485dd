//! One event as every sink receives it: the typed payload, from which each form is made where
//! it is needed. The JSON-lines form is made once, by the first sink that asks for it (on the
//! sink's task, not on the event loop), and shared; names, bodies and times come from the
//! typed payload, never read back out of the JSON.

use std::{sync::OnceLock, time::SystemTime};

use serde_json::Value;

use super::{Format, json, text};
use crate::{
    cgroup::oom_stall::OomStall, charges::warnings::PreOomWarning, enrich::episodes::EpisodeSummary,
    enrich::kill::OomKill, enrich::later_stacks::KillStacks, enrich::user_kill::UserKill, kernel::clock,
};

/// `event.name` of each kind of event.
pub mod name {
    pub const OOM_KILL: &str = "memtrace.oom_kill";
    pub const OOM_KILL_STACKS: &str = "memtrace.oom_kill_stacks";
    pub const PRE_OOM_WARNING: &str = "memtrace.pre_oom_warning";
    pub const OOM_NO_VICTIM: &str = "memtrace.oom_no_victim";
    pub const OOM_NO_VICTIM_END: &str = "memtrace.oom_no_victim_end";
    pub const OOM_EPISODE: &str = "memtrace.oom_episode";
    pub const USERSPACE_KILL: &str = "memtrace.userspace_kill";
}

/// What happened.
#[derive(Debug)]
pub enum Payload {
    /// A task killed by the OOM killer.
    Kill(Box<OomKill>),
    /// A cgroup close to its limit (charges/warnings.rs).
    Warning(Box<PreOomWarning>),
    /// An OOM without a victim began or ended (cgroup/oom_stall.rs).
    Stall(Box<OomStall>),
    /// An OOM episode ended (enrich/episodes.rs).
    Episode(Box<EpisodeSummary>),
    /// A userspace memory killer killed a process (enrich/user_kill.rs).
    UserKill(Box<UserKill>),
    /// The stacks of a kill sent before they were published (enrich/later_stacks.rs).
    KillStacks(Box<KillStacks>),
}

impl Payload {
    /// `event.name`: `memtrace.oom_kill`, `memtrace.pre_oom_warning`, ...
    pub fn name(&self) -> &'static str {
        match self {
            Self::Kill(_) => name::OOM_KILL,
            Self::Warning(_) => name::PRE_OOM_WARNING,
            Self::Stall(s) if s.duration.is_some() => name::OOM_NO_VICTIM_END,
            Self::Stall(_) => name::OOM_NO_VICTIM,
            Self::Episode(_) => name::OOM_EPISODE,
            Self::UserKill(_) => name::USERSPACE_KILL,
            Self::KillStacks(_) => name::OOM_KILL_STACKS,
        }
    }

    /// `OOM kill: pid N (comm) in cgroup X`, or the warning's summary.
    pub fn body(&self) -> String {
        match self {
            Self::Kill(k) => text::kill_body(k),
            Self::Warning(w) => text::warning_summary(w),
            Self::Stall(s) => text::stall_body(s),
            Self::Episode(e) => text::episode_body(e),
            Self::UserKill(k) => k.summary(),
            Self::KillStacks(k) => text::kill_stacks_body(k),
        }
    }

    /// When it happened (a stall: when it was seen, begun or ended).
    pub fn time(&self) -> SystemTime {
        match self {
            Self::Kill(k) => k.time,
            Self::Warning(w) => w.time,
            Self::Stall(s) => s.time,
            Self::Episode(e) => e.time,
            Self::UserKill(k) => k.time,
            Self::KillStacks(k) => k.time,
        }
    }
}

/// One event, as every sink receives it (shared, never copied).
#[derive(Debug)]
pub struct Event {
    pub payload: Payload,
    pub host: String,
    /// Nanoseconds from the kill to the event's construction (0 for other events).
    pub emit_delay_ns: u64,
    /// The JSON-lines form (output/json.rs), made by the first sink that needs it.
    json: OnceLock<Value>,
}

impl Event {
    pub fn new(payload: Payload, host: String, emit_delay_ns: u64) -> Self {
        Self {
            payload,
            host,
            emit_delay_ns,
            json: OnceLock::new(),
        }
    }

    pub fn from_kill(kill: OomKill, host: String, emit_delay_ns: u64) -> Self {
        Self::new(Payload::Kill(Box::new(kill)), host, emit_delay_ns)
    }

    pub fn from_warning(w: PreOomWarning, host: String) -> Self {
        Self::new(Payload::Warning(Box::new(w)), host, 0)
    }

    pub fn from_stall(s: OomStall, host: String) -> Self {
        Self::new(Payload::Stall(Box::new(s)), host, 0)
    }

    pub fn from_episode(e: EpisodeSummary, host: String) -> Self {
        Self::new(Payload::Episode(Box::new(e)), host, 0)
    }

    pub fn from_user_kill(k: UserKill, host: String) -> Self {
        Self::new(Payload::UserKill(Box::new(k)), host, 0)
    }

    pub fn from_kill_stacks(k: KillStacks, host: String) -> Self {
        Self::new(Payload::KillStacks(Box::new(k)), host, 0)
    }

    /// The JSON-lines form: flat OpenTelemetry-style keys (output/json.rs).
    pub fn json(&self) -> &Value {
        self.json.get_or_init(|| match &self.payload {
            Payload::Kill(k) => json::event(k, &self.host, self.emit_delay_ns),
            Payload::Warning(w) => json::warning(w, &self.host),
            Payload::Stall(s) => json::stall(s, &self.host),
            Payload::Episode(e) => json::episode(e, &self.host),
            Payload::UserKill(k) => json::user_kill(k, &self.host),
            Payload::KillStacks(k) => json::kill_stacks(k, &self.host),
        })
    }

    pub fn kill(&self) -> Option<&OomKill> {
        match &self.payload {
            Payload::Kill(k) => Some(k),
            Payload::Warning(_)
            | Payload::Stall(_)
            | Payload::Episode(_)
            | Payload::UserKill(_)
            | Payload::KillStacks(_) => None,
        }
    }

    /// One line (a kill in text: two, the verdict indented) without the final newline.
    pub fn line(&self, format: Format) -> String {
        match (format, &self.payload) {
            (Format::Text, Payload::Kill(k)) => text::event(k, self.emit_delay_ns),
            (Format::Text, Payload::Warning(w)) => text::warning(w),
            (
                Format::Text,
                Payload::Stall(_) | Payload::Episode(_) | Payload::UserKill(_) | Payload::KillStacks(_),
            ) => {
                format!("{} {}", clock::rfc3339(self.payload.time()), self.body())
            }
            (Format::Json, _) => self.json().to_string(),
        }
    }

    /// `OOM kill: pid N (comm) in cgroup X`, or the warning's summary.
    pub fn body(&self) -> String {
        self.payload.body()
    }

    /// One sentence for people: the body, and for a kill its verdict.
    pub fn message(&self) -> String {
        match &self.payload {
            Payload::Kill(k) => format!("{}: {}", self.body(), k.verdict.summary),
            Payload::Warning(_)
            | Payload::Stall(_)
            | Payload::Episode(_)
            | Payload::UserKill(_)
            | Payload::KillStacks(_) => self.body(),
        }
    }

    /// Less than an error: a warning, or a victim that was already exiting (not killed).
    pub fn is_warning(&self) -> bool {
        match &self.payload {
            Payload::Kill(k) => k.victim_exiting,
            Payload::Warning(_) => true,
            // A stall's start is an error; its end is news.
            Payload::Stall(s) => s.duration.is_some(),
            Payload::Episode(_) => true,
            Payload::UserKill(_) => false,
            // News about a kill already reported.
            Payload::KillStacks(_) => true,
        }
    }

    /// `event.name`: `memtrace.oom_kill` or `memtrace.pre_oom_warning`, ...
    pub fn name(&self) -> &'static str {
        self.payload.name()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::{cgroup::oom_stall::StallReason, charges::warnings::Reason};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn payloads() -> Vec<Payload> {
        let stall = |duration| OomStall {
            cgroup: "/s".into(),
            since: at(5),
            reason: StallReason::AllTasksExempt,
            tasks: 2,
            duration,
            time: at(6),
        };
        vec![
            Payload::Kill(Box::new(crate::sinks::tests::kill())),
            Payload::Warning(Box::new(PreOomWarning {
                time: at(3),
                evidence_since_boot_ns: 1,
                cgroup: "/w".into(),
                reason: Reason::Reclaim,
                usage_bytes: 90,
                working_set_bytes: 80,
                limit_bytes: 100,
                working_set_ratio: 0.8,
                usage_growth_bytes_per_s: Some(1.0),
                seconds_to_limit: Some(10.0),
                reclaim_stalls_per_s: 4.0,
                attribution: None,
            })),
            Payload::Stall(Box::new(stall(None))),
            Payload::Stall(Box::new(stall(Some(Duration::from_secs(2))))),
            Payload::KillStacks(Box::new(crate::enrich::later_stacks::KillStacks {
                time: at(9),
                kill_seq: 4,
                kill_time: at(8),
                pid: 42,
                comm: Some("a".into()),
                cgroup: Some("/k".into()),
                hotspots: vec![],
                flamegraph: None,
            })),
            Payload::Episode(Box::new(EpisodeSummary {
                id: "9-1".into(),
                cgroup: Some("/e".into()),
                victims: 3,
                freed_bytes: 1 << 20,
                at_limit: Duration::from_millis(1500),
                first: at(1),
                time: at(8),
            })),
        ]
    }

    /// The typed name, body and time are the ones the JSON line carries, and the JSON is
    /// only made when a sink asks for it.
    #[test]
    fn typed_forms_agree_with_the_json_made_on_demand() {
        for p in payloads() {
            let (name, body, time) = (p.name(), p.body(), p.time());
            let ev = Event::new(p, "h".into(), 0);
            assert!(ev.json.get().is_none(), "{name}: JSON made before a sink asked");
            let v = ev.json();
            assert_eq!(v["event.name"], name);
            assert_eq!(v["body"], body.as_str());
            assert_eq!(v["timestamp"], clock::rfc3339(time).as_str(), "{name}");
            assert!(std::ptr::eq(v, ev.json()), "made once");
        }
    }

    #[test]
    fn labels_are_the_json_spellings() {
        use crate::enrich::diagnosis::Constraint;
        let all = [Constraint::Memcg, Constraint::Global, Constraint::Unknown];
        assert_eq!(all.map(Constraint::as_str), ["memcg", "global", "unknown"]);
        for c in all {
            assert_eq!(serde_json::json!(c), c.as_str());
        }
        assert_eq!(Reason::WorkingSet.as_str(), "working_set");
        assert_eq!(serde_json::json!(Reason::Reclaim), "reclaim");
    }
}
