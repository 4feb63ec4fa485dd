//! JSON lines. Flat keys after the OpenTelemetry semantic conventions (`process.pid`,
//! `process.executable.name`, ...); memtrace's own fields under `memtrace.`. Sizes in bytes.

use std::time::SystemTime;

use serde_json::{Map, Value, json};

use crate::{
    cgroup::MemoryStats,
    cgroup::oom_stall::OomStall,
    charges::stacks::HotStack,
    charges::warnings::PreOomWarning,
    enrich::attribution::Attribution,
    enrich::episodes::EpisodeSummary,
    enrich::kill::{OomKill, Snapshot},
    enrich::later_stacks::KillStacks,
    enrich::user_kill::UserKill,
    kernel::clock,
    output::{event::name, text},
};

/// Inserts `key: value` unless the value is `None`.
struct Obj(Map<String, Value>);

impl Obj {
    fn put(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        self.0.insert(key.to_owned(), value.into());
        self
    }

    /// An event line's first fields, the same in every kind of event.
    fn event(time: SystemTime, severity: &str, event: &str, body: String, host: &str) -> Self {
        let mut o = Self(Map::new());
        o.put("timestamp", clock::rfc3339(time))
            .put("severity_text", severity)
            .put("event.name", event)
            .put("body", body)
            .put("host.name", host);
        o
    }

    fn opt<T: Into<Value>>(&mut self, key: &str, value: Option<T>) -> &mut Self {
        if let Some(v) = value {
            self.0.insert(key.to_owned(), v.into());
        }
        self
    }
}

pub fn event(k: &OomKill, host: &str, emit_delay_ns: u64) -> Value {
    let mut o = Obj::event(k.time, "ERROR", name::OOM_KILL, text::kill_body(k), host);
    victim(&mut o, k, emit_delay_ns);
    cgroups(&mut o, k);
    next_in_line(&mut o, k);
    snapshot(&mut o, k.snapshot.as_ref());
    decision(&mut o, k);
    attribution(&mut o, k.attribution.as_ref());
    charges_and_flags(&mut o, k);
    Value::Object(o.0)
}

/// The record: the victim, its cgroup and the task that triggered the OOM.
fn victim(o: &mut Obj, k: &OomKill, emit_delay_ns: u64) {
    let path = k.cgroup.as_ref().and_then(|c| c.path.as_deref());
    o.put("process.pid", k.pid)
        .opt("process.executable.name", k.comm.clone())
        .opt("process.owner.uid", k.uid)
        .put("memtrace.seq", k.seq)
        .put("memtrace.hook", k.hook.name())
        .put("memtrace.ktime_boot_ns", k.ktime_boot_ns)
        .put("memtrace.emit_delay_us", emit_delay_ns / 1000)
        .put("memtrace.victim.tid", k.tid)
        .opt("memtrace.victim.oom_score_adj", k.oom_score_adj)
        .opt("memtrace.victim.total_vm_bytes", k.total_vm_bytes)
        .opt("memtrace.victim.anon_rss_bytes", k.anon_rss_bytes)
        .opt("memtrace.victim.file_rss_bytes", k.file_rss_bytes)
        .opt("memtrace.victim.shmem_rss_bytes", k.shmem_rss_bytes)
        .opt("memtrace.victim.swap_bytes", k.swap_bytes)
        .opt("memtrace.victim.pgtables_bytes", k.pgtables_bytes)
        .opt("memtrace.cgroup.path", path)
        .opt("memtrace.cgroup.id", k.cgroup.as_ref().and_then(|c| c.id))
        .opt(
            "memtrace.cgroup.path_source",
            k.cgroup.as_ref().map(|c| json!(c.source)),
        )
        .opt("memtrace.memcg.usage_bytes", k.memcg_usage_bytes)
        .opt("memtrace.memcg.limit_bytes", k.memcg_limit_bytes)
        .put("memtrace.trigger.pid", k.trigger_pid)
        .put("memtrace.trigger.tid", k.trigger_tid)
        .put("memtrace.trigger.comm", k.trigger_comm.clone())
        .opt(
            "memtrace.trigger.cgroup.path",
            k.trigger_cgroup.as_ref().and_then(|c| c.path.clone()),
        )
        .put("memtrace.trigger.is_victim", k.trigger_pid == k.pid);
}

/// The cgroup at its limit, both breakdowns at the kill, the extra limit, the episode.
fn cgroups(o: &mut Obj, k: &OomKill) {
    if let Some(oc) = &k.oom_cgroup {
        o.opt("memtrace.oom_cgroup.path", oc.cgroup.path.clone())
            .opt("memtrace.oom_cgroup.id", oc.cgroup.id)
            .put("memtrace.oom_cgroup.depth", oc.depth)
            .put("memtrace.oom_cgroup.usage_bytes", oc.usage_bytes)
            .put("memtrace.oom_cgroup.limit_bytes", oc.limit_bytes)
            .put("memtrace.oom_cgroup.limit_kind", json!(oc.limit));
    }
    for (prefix, at) in [
        ("memtrace.cgroup.at_kill.", &k.cgroup_at_kill),
        ("memtrace.oom_cgroup.at_kill.", &k.oom_cgroup_at_kill),
    ] {
        for (key, value) in at.iter().flat_map(|b| b.fields()) {
            o.opt(&format!("{prefix}{key}"), value);
        }
    }
    o.opt("memtrace.avoid.extra_limit_bytes", k.extra_limit_bytes);
    if let Some(e) = &k.episode {
        o.put("memtrace.episode.id", e.id.clone())
            .put("memtrace.episode.place", e.place);
    }
}

fn next_in_line(o: &mut Obj, k: &OomKill) {
    if let Some(n) = &k.next_in_line {
        let next: Vec<Value> = n
            .candidates
            .iter()
            .map(|c| {
                json!({
                    "pid": c.pid,
                    "comm": c.comm,
                    "oom_score_adj": c.oom_score_adj,
                    "badness": c.badness.points,
                    "rss_pages": c.badness.rss_pages,
                })
            })
            .collect();
        o.put("memtrace.next_in_line", next)
            .put("memtrace.next_in_line.tasks", n.tasks)
            .put("memtrace.next_in_line.exempt", n.exempt);
    }
}

/// The post-kill snapshot, or what kept it from being read.
fn snapshot(o: &mut Obj, snapshot: Option<&Snapshot>) {
    match snapshot {
        Some(Snapshot::Read(s)) => {
            memory_files(o, s)
                .put("memtrace.snapshot.when", "post_kill")
                .put("memtrace.snapshot.inactive_file_bytes", s.inactive_file)
                .put("memtrace.snapshot.shmem_bytes", s.shmem)
                .opt("memtrace.snapshot.kernel_bytes", s.kernel)
                .opt("memtrace.snapshot.oom_kills", s.oom_kills);
        }
        Some(Snapshot::Failed(e)) => {
            o.put("memtrace.snapshot.error", e.to_string());
        }
        None => {}
    }
}

/// The kernel's decision, the badness score and the verdict.
fn decision(o: &mut Obj, k: &OomKill) {
    if let Some(c) = &k.context {
        o.put("memtrace.oom.constraint", json!(c.constraint))
            .put("memtrace.oom.totalpages", c.totalpages)
            .put("memtrace.oom.chosen_points", c.chosen_points)
            .put("memtrace.oom.chosen_pid", c.chosen_tgid)
            .put("memtrace.oom.gfp_mask", format!("{:#x}", c.gfp_mask))
            .put("memtrace.oom.order", c.order)
            .opt("memtrace.oom.memcg_id", c.memcg_id);
    }
    if let Some(b) = &k.badness {
        o.put("memtrace.badness.points", b.points)
            .put("memtrace.badness.rss_pages", b.rss_pages)
            .put("memtrace.badness.swap_pages", b.swap_pages)
            .put("memtrace.badness.pgtables_pages", b.pgtables_pages)
            .put("memtrace.badness.adj_points", b.adj_points)
            .put("memtrace.badness.totalpages", b.totalpages);
    }
    let v = &k.verdict;
    o.put("memtrace.verdict", v.summary.clone())
        .put("memtrace.constraint", v.constraint.as_str())
        .put("memtrace.constraint_source", json!(v.constraint_source))
        .put("memtrace.filled_by", json!(v.filled_by))
        .put("memtrace.verdict.basis", json!(v.basis))
        .opt("memtrace.working_set_ratio", v.working_set_ratio)
        .opt("memtrace.ws_alert_would_fire", v.ws_alert_would_fire);
}

/// The container, pod and unit keys, for kills and warnings alike.
fn attribution(o: &mut Obj, a: Option<&Attribution>) {
    if let Some(a) = a {
        let names = a.names.as_ref();
        o.opt("container.id", a.container_id.clone())
            .opt("container.name", a.container_name.clone())
            .opt("container.image.name", a.image_name.clone())
            .opt("container.runtime", a.runtime.map(|r| json!(r)))
            // The current OpenTelemetry name; `container.runtime` stays for existing pipelines.
            .opt("container.runtime.name", a.runtime.map(|r| json!(r)))
            .opt("k8s.pod.uid", a.pod_uid.clone())
            .opt("k8s.pod.qos_class", a.qos.map(|q| json!(q)))
            .opt("k8s.namespace.name", names.and_then(|n| n.namespace.clone()))
            .opt("k8s.pod.name", names.and_then(|n| n.pod.clone()))
            .opt("k8s.container.name", names.and_then(|n| n.container.clone()))
            .opt("memtrace.systemd_unit", a.systemd_unit.clone());
    }
}

/// The charging stacks before the kill, its flame graph, and what is special about it.
fn charges_and_flags(o: &mut Obj, k: &OomKill) {
    hotspots(o, &k.hotspots, k.flamegraph.as_deref());
    if k.victim_exiting {
        o.put("memtrace.victim.exiting", true);
    }
    if k.read_error {
        o.put("memtrace.read_error", true);
    }
    if k.late {
        o.put("memtrace.enrich.late", true);
    }
}

/// `memtrace.hotspots` and `memtrace.flamegraph`, in a kill and in its later stacks.
fn hotspots(o: &mut Obj, hotspots: &[HotStack], flamegraph: Option<&std::path::Path>) {
    if !hotspots.is_empty() {
        let stacks: Vec<Value> = hotspots
            .iter()
            .map(|h| {
                json!({
                    "samples": h.count,
                    "pid": h.pid,
                    "pids": h.pids,
                    "comm": h.comm,
                    "user_top": h.top_user_frame(),
                    "folded": h.folded(),
                })
            })
            .collect();
        o.put("memtrace.hotspots", stacks);
    }
    o.opt(
        "memtrace.flamegraph",
        flamegraph.map(|p| p.to_string_lossy().into_owned()),
    );
}

/// The stacks of a kill sent before they were published: the kill's identity (the same keys
/// as its event, `memtrace.seq` first) and its hotspots.
pub fn kill_stacks(k: &KillStacks, host: &str) -> Value {
    let body = text::kill_stacks_body(k);
    let mut o = Obj::event(k.time, "INFO", name::OOM_KILL_STACKS, body, host);
    o.put("memtrace.seq", k.kill_seq)
        .put("memtrace.kill.timestamp", clock::rfc3339(k.kill_time))
        .put("process.pid", k.pid)
        .opt("process.executable.name", k.comm.clone())
        .opt("memtrace.cgroup.path", k.cgroup.clone());
    hotspots(&mut o, &k.hotspots, k.flamegraph.as_deref());
    Value::Object(o.0)
}

/// What a cgroup's memory files say, as every event with a snapshot carries it.
fn memory_files<'o>(o: &'o mut Obj, s: &MemoryStats) -> &'o mut Obj {
    o.put("memtrace.snapshot.usage_bytes", s.usage)
        .put("memtrace.snapshot.working_set_bytes", s.working_set())
        .opt("memtrace.snapshot.limit_bytes", s.limit)
        .put("memtrace.snapshot.anon_bytes", s.anon)
        .put("memtrace.snapshot.file_bytes", s.file)
        .opt("memtrace.snapshot.swap_bytes", s.swap_usage)
}

/// The summary of an ended OOM episode, as a JSON line.
pub fn episode(e: &EpisodeSummary, host: &str) -> Value {
    let mut o = Obj::event(e.time, "INFO", name::OOM_EPISODE, text::episode_body(e), host);
    o.put("memtrace.episode.id", e.id.clone())
        .opt("memtrace.oom_cgroup.path", e.cgroup.clone())
        .put("memtrace.episode.victims", e.victims)
        .put("memtrace.episode.freed_bytes", e.freed_bytes)
        .put("memtrace.episode.at_limit_s", e.at_limit.as_secs_f64())
        .put("memtrace.episode.first", clock::rfc3339(e.first));
    Value::Object(o.0)
}

/// A userspace memory killer's kill (enrich/user_kill.rs).
pub fn user_kill(k: &UserKill, host: &str) -> Value {
    let mut o = Obj::event(k.time, "ERROR", name::USERSPACE_KILL, k.summary(), host);
    o.put("memtrace.killer", k.kind.as_str())
        .put("memtrace.killer.pid", k.killer.task.tgid)
        .put("memtrace.killer.name", k.killer.task.comm.clone())
        .opt("memtrace.killer.cgroup.path", k.killer.cgroup.clone())
        .put("memtrace.signal.code", k.si_code);
    if let Some(v) = &k.victim {
        o.put("process.pid", v.task.tgid)
            .put("process.thread.id", v.task.pid)
            .put("process.name", v.task.comm.clone())
            .opt("memtrace.cgroup.id", v.task.memcg_id)
            .opt("memtrace.cgroup.path", v.cgroup.clone());
    }
    if let Some(s) = &k.stats {
        memory_files(&mut o, s);
    }
    o.0.into()
}

/// An OOM without a victim, begun or ended, as a JSON line.
pub fn stall(s: &OomStall, host: &str) -> Value {
    let (severity, event) = match s.duration {
        Some(_) => ("INFO", name::OOM_NO_VICTIM_END),
        None => ("ERROR", name::OOM_NO_VICTIM),
    };
    let mut o = Obj::event(s.time, severity, event, text::stall_body(s), host);
    o.put("memtrace.cgroup.path", s.cgroup.clone())
        .put("memtrace.stall.since", clock::rfc3339(s.since))
        .put("memtrace.stall.reason", json!(s.reason))
        .put("memtrace.stall.tasks", s.tasks)
        .opt("memtrace.stall.duration_s", s.duration.map(|d| d.as_secs_f64()));
    Value::Object(o.0)
}

/// A pre-OOM warning as a JSON line.
pub fn warning(w: &PreOomWarning, host: &str) -> Value {
    let body = text::warning_summary(w);
    let mut o = Obj::event(w.time, "WARN", name::PRE_OOM_WARNING, body, host);
    o.put("memtrace.cgroup.path", w.cgroup.clone())
        .put("memtrace.warning.reason", w.reason.as_str())
        .put("memtrace.warning.usage_bytes", w.usage_bytes)
        .put("memtrace.warning.working_set_bytes", w.working_set_bytes)
        .put("memtrace.warning.limit_bytes", w.limit_bytes)
        .put("memtrace.warning.working_set_ratio", w.working_set_ratio)
        .opt(
            "memtrace.warning.usage_growth_bytes_per_s",
            w.usage_growth_bytes_per_s,
        )
        .opt("memtrace.warning.seconds_to_limit", w.seconds_to_limit)
        .put("memtrace.warning.reclaim_stalls_per_s", w.reclaim_stalls_per_s);
    attribution(&mut o, w.attribution.as_ref());
    Value::Object(o.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::kill::{CgroupRef, PathSource};

    #[test]
    fn flat_otel_keys() {
        let k = OomKill {
            seq: 7,
            time: std::time::UNIX_EPOCH,
            tid: 11,
            cgroup: Some(CgroupRef {
                id: Some(9),
                path: Some("/a/b".into()),
                source: PathSource::Kernel,
            }),
            trigger_tid: 11,
            ..crate::sinks::tests::kill()
        };
        let v = event(&k, "host1", 1500);
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000000000Z");
        assert_eq!(v["event.name"], "memtrace.oom_kill");
        assert_eq!(v["process.pid"], 10);
        assert_eq!(v["process.executable.name"], "python3");
        assert_eq!(v["memtrace.cgroup.path"], "/a/b");
        assert_eq!(v["memtrace.cgroup.path_source"], "kernel");
        assert_eq!(v["memtrace.emit_delay_us"], 1);
        assert_eq!(v["memtrace.trigger.is_victim"], true);
        assert!(
            v.get("memtrace.victim.swap_bytes").is_none(),
            "unknown fields are left out"
        );
    }

    /// A warning names the container as a kill in the same cgroup would, in JSON and text.
    #[test]
    fn a_warning_carries_its_container() {
        let w = PreOomWarning {
            time: std::time::UNIX_EPOCH,
            evidence_since_boot_ns: 0,
            cgroup: "/docker/abc".into(),
            reason: crate::charges::warnings::Reason::WorkingSet,
            usage_bytes: 95,
            working_set_bytes: 95,
            limit_bytes: 100,
            working_set_ratio: 0.95,
            usage_growth_bytes_per_s: None,
            seconds_to_limit: None,
            reclaim_stalls_per_s: 0.0,
            attribution: Some(Attribution {
                container_id: Some("abc".into()),
                container_name: Some("web".into()),
                image_name: Some("nginx:1".into()),
                runtime: Some(crate::enrich::attribution::Runtime::Docker),
                ..Attribution::default()
            }),
        };
        let v = warning(&w, "h");
        assert_eq!(v["container.name"], "web");
        assert_eq!(v["container.image.name"], "nginx:1");
        assert_eq!(v["container.runtime.name"], "docker");
        assert!(
            text::warning(&w).contains("| container web id abc"),
            "{}",
            text::warning(&w)
        );
        let bare = PreOomWarning {
            attribution: None,
            ..w
        };
        assert!(warning(&bare, "h").get("container.id").is_none());
    }
}
