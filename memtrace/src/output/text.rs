//! One line per kill, for people, and the one-sentence bodies of every event.

use std::fmt::Write as _;

use super::human_bytes;
use crate::{
    cgroup::oom_stall::OomStall,
    charges::stacks::HotStack,
    charges::warnings::{PreOomWarning, Reason},
    enrich::attribution::Attribution,
    enrich::episodes::EpisodeSummary,
    enrich::kill::OomKill,
    enrich::later_stacks::KillStacks,
    kernel::clock,
};

/// One sentence about a warning (also the JSON `body`).
pub fn warning_summary(w: &PreOomWarning) -> String {
    let mut s = match w.reason {
        Reason::WorkingSet => format!(
            "{}: working set {} is {:.0}% of its {} limit",
            w.cgroup,
            human_bytes(w.working_set_bytes),
            w.working_set_ratio * 100.0,
            human_bytes(w.limit_bytes)
        ),
        Reason::Reclaim => format!(
            "{}: charges stall in reclaim at the limit ({:.1}/s), usage {} of {}",
            w.cgroup,
            w.reclaim_stalls_per_s,
            human_bytes(w.usage_bytes),
            human_bytes(w.limit_bytes)
        ),
    };
    if let (Some(g), Some(t)) = (w.usage_growth_bytes_per_s, w.seconds_to_limit) {
        let _ = write!(
            s,
            "; growing {}/s: limit in about {t:.1} s",
            human_bytes(g as u64)
        );
    }
    s
}

pub fn warning(w: &PreOomWarning) -> String {
    let mut s = format!(
        "{} PRE-OOM WARNING: {}",
        clock::rfc3339(w.time),
        warning_summary(w)
    );
    if let Some(a) = &w.attribution {
        owner(&mut s, a);
    }
    s
}

/// Whose cgroup it is: the pod and container, or the engine's container name, and the id.
fn owner(s: &mut String, a: &Attribution) {
    let names = a.names.as_ref();
    if let Some(pod) = names.and_then(|n| n.pod.as_deref()) {
        let ns = names.and_then(|n| n.namespace.as_deref()).unwrap_or("?");
        let ctr = names.and_then(|n| n.container.as_deref()).unwrap_or("?");
        let _ = write!(s, " | pod {ns}/{pod} container {ctr}");
    } else if let Some(uid) = &a.pod_uid {
        let _ = write!(s, " | pod uid {uid}");
    } else if let Some(name) = &a.container_name {
        let _ = write!(s, " | container {name}");
    }
    if let Some(id) = &a.container_id {
        let _ = write!(s, " id {}", &id[..id.len().min(12)]);
    }
}

pub fn event(k: &OomKill, emit_delay_ns: u64) -> String {
    let mut s = String::with_capacity(256);
    let comm = k.comm.as_deref().unwrap_or("?");
    let path = k.cgroup.as_ref().and_then(|c| c.path.as_deref()).unwrap_or("?");
    let _ = write!(
        s,
        "{} OOM kill #{}: pid {} ({comm}) in {path}",
        clock::rfc3339(k.time),
        k.seq,
        k.pid
    );
    memory(&mut s, k);
    if k.trigger_pid == k.pid {
        let _ = write!(s, " | triggered by itself");
    } else {
        let tpath = k
            .trigger_cgroup
            .as_ref()
            .and_then(|c| c.path.as_deref())
            .unwrap_or("?");
        let _ = write!(
            s,
            " | triggered by pid {} ({}) in {tpath}",
            k.trigger_pid, k.trigger_comm
        );
    }
    if let Some(a) = &k.attribution {
        owner(&mut s, a);
    }
    if let Some(c) = &k.context {
        let _ = write!(
            s,
            " | kernel: {:?} chosen_points {} totalpages {}",
            c.constraint, c.chosen_points, c.totalpages
        );
    }
    if let Some(b) = &k.badness {
        let _ = write!(s, " | badness {} (totalpages {})", b.points, b.totalpages);
    }
    let _ = write!(s, " | {} +{:.1}ms", k.hook.name(), emit_delay_ns as f64 / 1e6);
    let _ = write!(s, "\n    why: {}", k.verdict.summary);
    if let Some(h) = k.hotspots.first() {
        let _ = write!(s, "\n    top charger before the kill: {}", charger(h));
    }
    if k.victim_exiting {
        let _ = write!(s, " (victim was already exiting: marked, not killed)");
    }
    s
}

/// The victim's memory and its cgroup's page counter, at the kill.
fn memory(s: &mut String, k: &OomKill) {
    if let (Some(anon), Some(file), Some(shmem)) = (k.anon_rss_bytes, k.file_rss_bytes, k.shmem_rss_bytes) {
        let _ = write!(
            s,
            " | anon-rss {} file-rss {} shmem-rss {}",
            human_bytes(anon),
            human_bytes(file),
            human_bytes(shmem)
        );
    }
    if let Some(swap) = k.swap_bytes {
        let _ = write!(s, " swap {}", human_bytes(swap));
    }
    if let Some(pt) = k.pgtables_bytes {
        let _ = write!(s, " pgtables {}", human_bytes(pt));
    }
    if let Some(adj) = k.oom_score_adj {
        let _ = write!(s, " oom_score_adj {adj}");
    }
    match (k.memcg_usage_bytes, k.memcg_limit_bytes) {
        (Some(u), Some(l)) => {
            let _ = write!(s, " | memcg {} / limit {}", human_bytes(u), human_bytes(l));
        }
        (Some(u), None) => {
            let _ = write!(s, " | memcg {} / no limit", human_bytes(u));
        }
        _ => {}
    }
}

/// The first sentence of a kill event: `OOM kill: pid N (comm) in cgroup X`.
pub fn kill_body(k: &OomKill) -> String {
    let path = k.cgroup.as_ref().and_then(|c| c.path.as_deref());
    format!("OOM kill: {}", victim(k.pid, k.comm.as_deref(), path))
}

/// The stacks sent after a kill, in one sentence: the kill and its top charger.
pub fn kill_stacks_body(k: &KillStacks) -> String {
    let who = victim(k.pid, k.comm.as_deref(), k.cgroup.as_deref());
    let mut s = format!("charging stacks of the OOM kill of {who}");
    if let Some(h) = k.hotspots.first() {
        let _ = write!(s, ": top charger {}", charger(h));
    }
    s
}

/// `pid N (comm) in cgroup X`, `?` for what is not known.
fn victim(pid: u32, comm: Option<&str>, cgroup: Option<&str>) -> String {
    let (comm, cgroup) = (comm.unwrap_or("?"), cgroup.unwrap_or("?"));
    format!("pid {pid} ({comm}) in cgroup {cgroup}")
}

/// A charging stack in a few words: `comm (pid) in frame (N samples)`.
fn charger(h: &HotStack) -> String {
    format!(
        "{} ({}) in {} ({} samples)",
        h.comm,
        h.pid,
        h.top_user_frame(),
        h.count
    )
}

/// An ended OOM episode in one sentence.
pub fn episode_body(e: &EpisodeSummary) -> String {
    format!(
        "OOM episode ended: {} victim(s) in {}, {} freed, {:.1}s from the first kill to the last",
        e.victims,
        e.cgroup.as_deref().unwrap_or("(global or unknown)"),
        human_bytes(e.freed_bytes),
        e.at_limit.as_secs_f64()
    )
}

/// An OOM without a victim, begun or ended, in one sentence.
pub fn stall_body(s: &OomStall) -> String {
    match s.duration {
        None => format!(
            "OOM without a victim: cgroup {} is at its limit and nothing is killed: {}",
            s.cgroup,
            s.reason.describe()
        ),
        Some(d) => format!(
            "OOM without a victim ended: cgroup {} after {:.1}s",
            s.cgroup,
            d.as_secs_f64()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_bodies_name_the_victim_and_its_top_charger() {
        let kill = crate::sinks::tests::kill();
        let comm = kill.comm.clone().unwrap_or_default();
        assert!(
            kill_body(&kill).starts_with(&format!("OOM kill: pid {} ({comm}) in cgroup ", kill.pid)),
            "{}",
            kill_body(&kill)
        );
        let mut k = KillStacks {
            time: kill.time,
            kill_seq: 1,
            kill_time: kill.time,
            pid: 42,
            comm: None,
            cgroup: Some("/a".into()),
            hotspots: vec![],
            flamegraph: None,
        };
        assert_eq!(
            kill_stacks_body(&k),
            "charging stacks of the OOM kill of pid 42 (?) in cgroup /a"
        );
        k.hotspots = vec![HotStack {
            count: 3,
            cgroup_id: 7,
            pid: 42,
            comm: "grow".into(),
            user: vec![],
            kernel: vec![],
            pids: 1,
        }];
        assert_eq!(
            kill_stacks_body(&k),
            "charging stacks of the OOM kill of pid 42 (?) in cgroup /a: top charger grow (42) in ? (3 samples)"
        );
    }
}
