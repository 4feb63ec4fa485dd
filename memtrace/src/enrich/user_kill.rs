//! A kill by a userspace memory killer, as memtrace reports it: who sent the SIGKILL (and what
//! kind of killer that is), whom it killed, in which cgroup, and that cgroup's memory at once.
//! Only kills by known memory killers are reported by default; any userspace SIGKILL with
//! `--all-userspace-kills` (a `kill -9` by a person is then reported too, as killer `other`).

use std::time::SystemTime;

use serde::Serialize;

use crate::{
    cgroup::{CgroupPaths, MemoryStats, read_memory_stats},
    kernel::{
        clock,
        user_kill::{Task, UserKillSignal},
    },
};

/// What sent the kill, by the sender's command name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KillerKind {
    Earlyoom,
    SystemdOomd,
    Nohang,
    /// Facebook's oomd (`oomd`, `fb-oomd`).
    Oomd,
    /// A kubelet that signals itself (hard eviction of a static pod's process); evictions of
    /// containers are signalled by the runtime (runc, containerd-shim) and are `Other`.
    Kubelet,
    Other,
}

impl KillerKind {
    pub fn of(comm: &str) -> Self {
        match comm {
            "earlyoom" => Self::Earlyoom,
            "systemd-oomd" => Self::SystemdOomd,
            "nohang" => Self::Nohang,
            "oomd" | "fb-oomd" | "oomd_bin" => Self::Oomd,
            "kubelet" => Self::Kubelet,
            _ => Self::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Earlyoom => "earlyoom",
            Self::SystemdOomd => "systemd-oomd",
            Self::Nohang => "nohang",
            Self::Oomd => "oomd",
            Self::Kubelet => "kubelet",
            Self::Other => "other",
        }
    }
}

/// A task and the memory cgroup path it was in, when known.
#[derive(Debug, Clone, PartialEq)]
pub struct Party {
    pub task: Task,
    pub cgroup: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserKill {
    pub time: SystemTime,
    pub ktime_boot_ns: u64,
    pub kind: KillerKind,
    pub killer: Party,
    pub victim: Option<Party>,
    /// The victim cgroup's memory right after the kill (None: no path, or it vanished).
    pub stats: Option<MemoryStats>,
    pub si_code: i32,
}

impl UserKill {
    /// The event for `s`, or `None` when it is not a memory killer's and `all` is off.
    pub fn from_signal(s: UserKillSignal, paths: Option<&mut CgroupPaths>, all: bool) -> Option<Self> {
        let kind = KillerKind::of(&s.sender.comm);
        if kind == KillerKind::Other && !all {
            return None;
        }
        let path = |id: Option<u64>, paths: &mut Option<&mut CgroupPaths>| {
            let (id, p) = (id?, paths.as_deref_mut()?);
            p.resolve(id)
        };
        let mut paths = paths;
        let killer_cgroup = path(s.sender.memcg_id, &mut paths);
        let victim = s.target.map(|t| Party {
            cgroup: path(t.memcg_id, &mut paths),
            task: t,
        });
        let stats = match (&victim, paths.as_deref()) {
            (Some(Party { cgroup: Some(c), .. }), Some(p)) => {
                let h = p.hierarchy();
                read_memory_stats(&h.dir(c), h.version).ok()
            }
            _ => None,
        };
        Some(Self {
            time: clock::wall_time(s.ktime_boot_ns),
            ktime_boot_ns: s.ktime_boot_ns,
            kind,
            killer: Party {
                task: s.sender,
                cgroup: killer_cgroup,
            },
            victim,
            stats,
            si_code: s.si_code,
        })
    }

    /// `earlyoom (pid 12) killed memtrace-alloc (pid 34) in /cg`.
    pub fn summary(&self) -> String {
        let victim = match &self.victim {
            Some(v) => format!(
                "{} (pid {}) in {}",
                v.task.comm,
                v.task.tgid,
                v.cgroup.as_deref().unwrap_or("an unknown cgroup")
            ),
            None => "a process memtrace could not read".to_owned(),
        };
        let comm = &self.killer.task.comm;
        let kind = match self.kind {
            KillerKind::Other => String::new(),
            k if k.as_str() == comm => String::new(),
            k => format!(", {}", k.as_str()),
        };
        format!(
            "userspace kill: {comm} (pid {}{kind}) killed {victim}",
            self.killer.task.tgid
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn killers_by_name() {
        assert_eq!(KillerKind::of("earlyoom"), KillerKind::Earlyoom);
        assert_eq!(KillerKind::of("systemd-oomd"), KillerKind::SystemdOomd);
        assert_eq!(KillerKind::of("bash"), KillerKind::Other);
    }

    #[test]
    fn a_plain_kill_is_left_out_unless_asked() {
        let s = UserKillSignal {
            ktime_boot_ns: 1,
            sender: Task {
                pid: 5,
                tgid: 5,
                comm: "bash".into(),
                memcg_id: None,
            },
            target: None,
            si_code: 0,
            group: true,
            result: 0,
        };
        assert!(UserKill::from_signal(s.clone(), None, false).is_none());
        let k = UserKill::from_signal(s, None, true).expect("all");
        assert_eq!(k.kind, KillerKind::Other);
        assert!(k.summary().contains("could not read"), "{}", k.summary());
    }
}
