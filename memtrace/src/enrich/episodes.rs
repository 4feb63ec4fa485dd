//! OOM episodes: the kills that come from one OOM carry one episode id and their place in it.
//! A `memory.oom.group` kill marks every task of the group at once; a cgroup that stays at
//! its limit is killed in again and again. Kills whose OOM cgroup (or, in a global OOM, the
//! machine) saw another kill less than [`GAP`] before belong to the same episode; an episode
//! with no kill for [`GAP`] has ended and is summarised once.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

/// Quiet time that ends an episode.
pub const GAP: Duration = Duration::from_secs(5);

/// A kill's episode.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EpisodeRef {
    /// `<oom cgroup id, 0 for a global OOM>-<boot time of the first kill, ns>`.
    pub id: String,
    /// 1 for the first kill of the episode.
    pub place: u32,
}

/// An episode that has ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpisodeSummary {
    pub id: String,
    /// The OOM cgroup's path (none: a global OOM, or unknown).
    pub cgroup: Option<String>,
    pub victims: u32,
    /// The victims' anon rss and swap at their kills: what the kills freed (their file pages
    /// stay in the page cache, tmpfs pages stay in tmpfs).
    pub freed_bytes: u64,
    /// From the first kill to the last.
    pub at_limit: Duration,
    pub first: SystemTime,
    pub time: SystemTime,
}

#[derive(Debug)]
struct Open {
    id: String,
    cgroup: Option<String>,
    first_ns: u64,
    last_ns: u64,
    first: SystemTime,
    victims: u32,
    freed_bytes: u64,
}

#[derive(Debug, Default)]
pub struct Episodes {
    open: HashMap<u64, Open>,
}

impl Episodes {
    /// Places a kill at boot time `ktime_ns` whose OOM domain is `key` (the OOM cgroup id, 0
    /// for a global OOM or when not known). A kill with no OOM cgroup whose own cgroup
    /// (`victim_cgroup`) lies in the OOM cgroup of an open episode joins it: the later victims
    /// of a `memory.oom.group` kill are marked after the first ones freed memory, when no
    /// cgroup is at its limit any more.
    pub fn note(
        &mut self,
        key: u64,
        cgroup: Option<&str>,
        victim_cgroup: Option<&str>,
        ktime_ns: u64,
        time: SystemTime,
        freed_bytes: u64,
    ) -> (EpisodeRef, Option<EpisodeSummary>) {
        let gap = GAP.as_nanos() as u64;
        let key = match (key, victim_cgroup) {
            (0, Some(v)) => self
                .open
                .iter()
                .find(|(_, o)| {
                    ktime_ns.saturating_sub(o.last_ns) < gap
                        && o.cgroup.as_deref().is_some_and(|c| {
                            v == c || v.strip_prefix(c).is_some_and(|rest| rest.starts_with('/'))
                        })
                })
                .map_or(0, |(k, _)| *k),
            _ => key,
        };
        let mut ended = None;
        if let Some(o) = self.open.get(&key)
            && ktime_ns.saturating_sub(o.last_ns) >= gap
        {
            ended = self.open.remove(&key).map(|o| summary(o, time));
        }
        let o = self.open.entry(key).or_insert_with(|| Open {
            id: format!("{key}-{ktime_ns}"),
            cgroup: cgroup.map(str::to_owned),
            first_ns: ktime_ns,
            last_ns: ktime_ns,
            first: time,
            victims: 0,
            freed_bytes: 0,
        });
        o.victims += 1;
        o.last_ns = o.last_ns.max(ktime_ns);
        o.freed_bytes = o.freed_bytes.saturating_add(freed_bytes);
        (
            EpisodeRef {
                id: o.id.clone(),
                place: o.victims,
            },
            ended,
        )
    }

    /// Episodes quiet for [`GAP`] at boot time `now_ns`: ended, summarised once.
    pub fn ended(&mut self, now_ns: u64) -> Vec<EpisodeSummary> {
        let gap = GAP.as_nanos() as u64;
        let done: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, o)| now_ns.saturating_sub(o.last_ns) >= gap)
            .map(|(k, _)| *k)
            .collect();
        let now = SystemTime::now();
        done.into_iter()
            .filter_map(|k| self.open.remove(&k))
            .map(|o| summary(o, now))
            .collect()
    }
}

fn summary(o: Open, time: SystemTime) -> EpisodeSummary {
    EpisodeSummary {
        id: o.id,
        cgroup: o.cgroup,
        victims: o.victims,
        freed_bytes: o.freed_bytes,
        at_limit: Duration::from_nanos(o.last_ns.saturating_sub(o.first_ns)),
        first: o.first,
        time,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kills_close_together_share_an_episode() {
        let mut e = Episodes::default();
        let t = SystemTime::UNIX_EPOCH;
        let s = 1_000_000_000u64;
        let (a, _) = e.note(7, Some("/a"), Some("/a"), 10 * s, t, 100);
        // A group kill's later victim, with no OOM cgroup: joins the episode of its cgroup.
        let (b, _) = e.note(0, None, Some("/a/x"), 10 * s + 1_000, t, 50);
        let (other, _) = e.note(8, Some("/b"), Some("/b"), 10 * s, t, 1);
        let (global, _) = e.note(0, None, Some("/ab"), 10 * s, t, 1);
        assert!(global.id.starts_with("0-"), "/ab is not under /a");
        assert_eq!((a.id.as_str(), a.place, b.place), ("7-10000000000", 1, 2));
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, other.id);
        assert!(e.ended(12 * s).is_empty(), "still within the gap");
        // A kill after the gap starts a new episode and ends the old one.
        let (c, ended) = e.note(7, Some("/a"), Some("/a"), 20 * s, t, 5);
        assert_eq!(c.place, 1);
        let ended = ended.expect("ended");
        assert_eq!((ended.victims, ended.freed_bytes), (2, 150));
        assert_eq!(ended.at_limit, Duration::from_nanos(1_000));
        let rest = e.ended(30 * s);
        assert_eq!(rest.len(), 3);
    }
}
