//! Which cgroups have series, so that none is kept forever. A crash-looping pod gets a new
//! cgroup (and `container_id`) on every restart: a cgroup's series all go once its directory
//! has been gone for `forget_after`. The per-cgroup gauges and charge counters are also capped
//! at `max_cgroups` cgroups, the least recently updated going first.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

#[derive(Debug)]
struct Entry {
    touched: Instant,
    /// When the cgroup's directory was first seen missing; cleared if it comes back.
    gone_since: Option<Instant>,
    /// Has gauges or charge counters (counted against the cap).
    capped: bool,
}

#[derive(Debug)]
pub(super) struct Tracker {
    entries: HashMap<String, Entry>,
    forget_after: Duration,
    max_capped: usize,
    last_sweep: Option<Instant>,
}

impl Tracker {
    pub fn new(forget_after: Duration, max_capped: usize) -> Self {
        Self {
            entries: HashMap::new(),
            forget_after,
            max_capped: max_capped.max(1),
            last_sweep: None,
        }
    }

    pub fn is_capped(&self, cgroup: &str) -> bool {
        self.entries.get(cgroup).is_some_and(|e| e.capped)
    }

    /// A cgroup's series were just updated (`capped`: gauges or charge counters among them).
    /// Returns the cgroups whose capped series must go to stay within the cap.
    pub fn touch(&mut self, cgroup: &str, capped: bool, now: Instant) -> Vec<String> {
        let e = self.entries.entry(cgroup.to_owned()).or_insert(Entry {
            touched: now,
            gone_since: None,
            capped: false,
        });
        // Not `gone_since`: only a sweep that finds the directory again clears it (the charge
        // worker still reports a removed cgroup's last counters for a while).
        e.touched = now;
        e.capped |= capped;
        let n = self.entries.values().filter(|e| e.capped).count();
        if n <= self.max_capped {
            return vec![];
        }
        let mut oldest: Vec<(&String, Instant)> = self
            .entries
            .iter()
            .filter(|(k, e)| e.capped && k.as_str() != cgroup)
            .map(|(k, e)| (k, e.touched))
            .collect();
        oldest.sort_by_key(|(_, t)| *t);
        let evict: Vec<String> = oldest
            .into_iter()
            .take(n - self.max_capped)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &evict {
            if let Some(e) = self.entries.get_mut(k) {
                e.capped = false;
            }
        }
        evict
    }

    /// Whether a sweep is due: a quarter of `forget_after`, between 1 s and 30 s.
    pub fn sweep_due(&self, now: Instant) -> bool {
        let every = (self.forget_after / 4).clamp(Duration::from_secs(1), Duration::from_secs(30));
        self.last_sweep.is_none_or(|t| now.duration_since(t) >= every)
    }

    /// Notes which cgroups are gone (`alive` says whether a cgroup's directory exists) and
    /// forgets those gone for `forget_after`: their series are to be removed.
    pub fn sweep(&mut self, now: Instant, alive: impl Fn(&str) -> bool) -> Vec<String> {
        self.last_sweep = Some(now);
        for (k, e) in &mut self.entries {
            if alive(k) {
                e.gone_since = None;
            } else {
                e.gone_since.get_or_insert(now);
            }
        }
        let gone: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                e.gone_since
                    .is_some_and(|t| now.duration_since(t) >= self.forget_after)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            self.entries.remove(k);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gone_cgroups_are_forgotten_after_the_delay_only() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = Tracker::new(s(60), 10);
        t.touch("/a", false, t0);
        t.touch("/b", true, t0);
        // /a goes at t0+10; still there at +69, forgotten at +70. /b stays.
        assert!(t.sweep(t0 + s(10), |c| c == "/b").is_empty());
        assert!(t.sweep(t0 + s(69), |c| c == "/b").is_empty());
        assert_eq!(t.sweep(t0 + s(70), |c| c == "/b"), vec!["/a".to_owned()]);
        assert!(t.sweep(t0 + s(1000), |_| true).is_empty());
        // A cgroup that comes back (same path re-created) starts its delay again.
        assert!(t.sweep(t0 + s(1001), |_| false).is_empty());
        assert!(t.sweep(t0 + s(1002), |_| true).is_empty());
        assert!(t.sweep(t0 + s(1050), |_| false).is_empty());
        assert_eq!(t.sweep(t0 + s(1110), |_| false), vec!["/b".to_owned()]);
    }

    #[test]
    fn the_cap_evicts_the_least_recently_updated() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = Tracker::new(s(60), 2);
        assert!(t.touch("/a", true, t0).is_empty());
        assert!(t.touch("/b", true, t0 + s(1)).is_empty());
        assert!(
            t.touch("/k", false, t0 + s(2)).is_empty(),
            "kills only: not capped"
        );
        assert!(t.touch("/a", true, t0 + s(3)).is_empty());
        assert_eq!(t.touch("/c", true, t0 + s(4)), vec!["/b".to_owned()]);
        assert!(t.is_capped("/a") && t.is_capped("/c") && !t.is_capped("/b"));
    }
}
