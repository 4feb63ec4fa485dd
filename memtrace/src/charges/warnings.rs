//! Pre-OOM warnings: a cgroup whose working set crosses a fraction of its limit, or whose
//! charges keep stalling in reclaim at the limit, gets one warning, with the time to the limit
//! estimated from how fast its usage grows. One per cgroup per interval, re-armed only once the
//! working set has dropped back below the threshold.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;

use crate::{charges::accounting::Row, enrich::attribution::Attribution, kernel::clock};

#[derive(Debug, Clone, Copy)]
pub struct WarnOptions {
    /// Working set / limit at which to warn (e.g. 0.9).
    pub ratio: f64,
    /// At most one warning per cgroup this often.
    pub every: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Working set over the threshold.
    WorkingSet,
    /// Charges stalled in memcg reclaim: the cgroup is at its limit.
    Reclaim,
}

impl Reason {
    /// As in the JSON `memtrace.warning.reason` and the `reason` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WorkingSet => "working_set",
            Self::Reclaim => "reclaim",
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PreOomWarning {
    #[serde(skip)]
    pub time: SystemTime,
    /// CLOCK_BOOTTIME of the oldest sample the warning rests on: a kill in its cgroup from then
    /// on makes it late (see [`RecentKills`]).
    #[serde(skip)]
    pub evidence_since_boot_ns: u64,
    pub cgroup: String,
    pub reason: Reason,
    pub usage_bytes: u64,
    pub working_set_bytes: u64,
    pub limit_bytes: u64,
    pub working_set_ratio: f64,
    /// Usage growth over the last interval, bytes per second.
    pub usage_growth_bytes_per_s: Option<f64>,
    /// (limit - usage) / growth, when usage grows.
    pub seconds_to_limit: Option<f64>,
    pub reclaim_stalls_per_s: f64,
    /// Whose cgroup it is (container, pod, unit), as a kill in it would say: set by the
    /// charge worker, which looks names up off the event loop.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attribution: Option<Attribution>,
}

/// How far back a warning's evidence is taken to go when there is no previous sample.
const EVIDENCE_UNKNOWN: Duration = Duration::from_secs(10);
/// Kills older than this are forgotten by [`RecentKills`].
const KILL_MEMORY_NS: u64 = 60_000_000_000;

/// The last kill in each cgroup, so that a pre-OOM warning comes before the kill it warns of or
/// not at all: a warning computed from samples taken around or after a kill in its cgroup (the
/// reclaim stalls that led to it, the emptied cgroup after it) describes that kill, too late.
#[derive(Debug, Default)]
pub struct RecentKills {
    last: HashMap<String, u64>,
}

impl RecentKills {
    /// A kill at `boot_ns` in these cgroups (the victim's and the one that hit its limit).
    pub fn note<'a>(&mut self, cgroups: impl IntoIterator<Item = &'a str>, boot_ns: u64) {
        self.last
            .retain(|_, t| boot_ns.saturating_sub(*t) < KILL_MEMORY_NS);
        for c in cgroups {
            let t = self.last.entry(c.to_owned()).or_default();
            *t = (*t).max(boot_ns);
        }
    }

    /// Was there a kill in `w`'s cgroup, or below it, since its evidence began?
    pub fn suppresses(&self, w: &PreOomWarning) -> bool {
        let prefix = format!("{}/", w.cgroup.trim_end_matches('/'));
        self.last.iter().any(|(c, &t)| {
            t >= w.evidence_since_boot_ns && (*c == w.cgroup || w.cgroup == "/" || c.starts_with(&prefix))
        })
    }
}

#[derive(Debug, Default)]
struct State {
    last_usage: Option<(Instant, u64)>,
    warned_at: Option<Instant>,
    /// Cleared when the working set falls back under the threshold.
    armed: bool,
}

pub struct Warner {
    opts: WarnOptions,
    state: HashMap<String, State>,
}

impl Warner {
    pub fn new(opts: WarnOptions) -> Self {
        Self {
            opts,
            state: HashMap::new(),
        }
    }

    /// Warnings due for these rows (cgroups with charge activity).
    pub fn check(&mut self, rows: &[Row], now: Instant) -> Vec<PreOomWarning> {
        let mut out = vec![];
        for r in rows {
            let (Some(usage), Some(ws), Some(limit)) = (r.usage_bytes, r.working_set_bytes, r.limit_bytes)
            else {
                continue;
            };
            let st = self.state.entry(r.cgroup.clone()).or_insert(State {
                armed: true,
                ..State::default()
            });
            // The rates compare this sample with the previous one: the evidence starts there.
            let back = st
                .last_usage
                .map_or(EVIDENCE_UNKNOWN, |(t, _)| now.saturating_duration_since(t));
            let evidence_since_boot_ns =
                clock::boot_ns().saturating_sub(u64::try_from(back.as_nanos()).unwrap_or(u64::MAX));
            let growth = st.last_usage.and_then(|(t, u)| {
                let secs = now.duration_since(t).as_secs_f64();
                (secs > 0.0).then(|| (usage as f64 - u as f64) / secs)
            });
            st.last_usage = Some((now, usage));
            let ratio = ws as f64 / limit.max(1) as f64;
            if ratio < self.opts.ratio - 0.05 {
                st.armed = true;
            }
            // Stalls in reclaim are evidence while the cgroup is still near its limit: those of
            // an interval that ended with a kill or an exit (12 KiB left of 64 MiB, in a guest)
            // warned of an OOM already over.
            let near = usage as f64 >= (self.opts.ratio - 0.1).max(0.0) * limit as f64;
            let reason = if ratio >= self.opts.ratio {
                Reason::WorkingSet
            } else if r.rate.reclaim_stalls_per_s > 0.0 && near {
                Reason::Reclaim
            } else {
                continue;
            };
            let recently = st
                .warned_at
                .is_some_and(|t| now.duration_since(t) < self.opts.every);
            if !st.armed || recently {
                continue;
            }
            st.armed = false;
            st.warned_at = Some(now);
            out.push(PreOomWarning {
                time: SystemTime::now(),
                evidence_since_boot_ns,
                cgroup: r.cgroup.clone(),
                reason,
                usage_bytes: usage,
                working_set_bytes: ws,
                limit_bytes: limit,
                working_set_ratio: ratio,
                usage_growth_bytes_per_s: growth,
                seconds_to_limit: growth
                    .filter(|g| *g > 0.0)
                    .map(|g| limit.saturating_sub(usage) as f64 / g),
                reclaim_stalls_per_s: r.rate.reclaim_stalls_per_s,
                attribution: None,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::charges::accounting::Rate;

    fn row(ws_mib: u64, stalls: f64) -> Row {
        Row {
            cgroup: "/a".into(),
            cgroup_id: 1,
            usage_bytes: Some(ws_mib << 20),
            working_set_bytes: Some(ws_mib << 20),
            limit_bytes: Some(100 << 20),
            headroom_pct: None,
            oom_kills: None,
            rate: Rate {
                reclaim_stalls_per_s: stalls,
                ..Rate::default()
            },
        }
    }

    /// Warns at 90 % of the limit, at most once a minute per cgroup.
    fn warner() -> Warner {
        Warner::new(WarnOptions {
            ratio: 0.9,
            every: Duration::from_secs(60),
        })
    }

    #[test]
    fn one_warning_per_crossing() {
        let mut w = warner();
        let t0 = Instant::now();
        assert!(w.check(&[row(50, 0.0)], t0).is_empty());
        let first = w.check(&[row(92, 0.0)], t0 + Duration::from_secs(1));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].reason, Reason::WorkingSet);
        let growth = first[0].usage_growth_bytes_per_s.expect("growth");
        assert!((growth - (42u64 << 20) as f64).abs() < 1.0);
        assert!(first[0].seconds_to_limit.is_some_and(|s| s > 0.0 && s < 1.0));
        // Still high, or higher: no second warning.
        assert!(w.check(&[row(95, 0.0)], t0 + Duration::from_secs(2)).is_empty());
        assert!(w.check(&[row(99, 3.0)], t0 + Duration::from_secs(3)).is_empty());
        // Back under, then over again after the interval: warned again.
        assert!(w.check(&[row(40, 0.0)], t0 + Duration::from_secs(70)).is_empty());
        assert_eq!(w.check(&[row(93, 0.0)], t0 + Duration::from_secs(71)).len(), 1);
    }

    /// A warning whose evidence began before a kill in its cgroup (or below it) is late.
    #[test]
    fn a_kill_since_the_evidence_began_drops_the_warning() {
        let mut w = warner();
        let t0 = Instant::now();
        assert!(w.check(&[row(50, 0.0)], t0).is_empty());
        std::thread::sleep(Duration::from_millis(10));
        let kill_at = clock::boot_ns();
        std::thread::sleep(Duration::from_millis(20));
        let warning = w.check(&[row(95, 0.0)], Instant::now()).pop().expect("a warning");
        assert!(warning.evidence_since_boot_ns <= kill_at);
        let mut kills = RecentKills::default();
        assert!(!kills.suppresses(&warning));
        kills.note(["/other"], kill_at);
        assert!(!kills.suppresses(&warning), "another cgroup's kill");
        kills.note(["/a/leaf"], kill_at);
        assert!(kills.suppresses(&warning), "a kill below it");
        let mut kills = RecentKills::default();
        kills.note(["/a"], warning.evidence_since_boot_ns.saturating_sub(1));
        assert!(!kills.suppresses(&warning), "a kill before the evidence began");
    }

    /// A working set under the ratio, the rest page cache at the limit.
    #[test]
    fn reclaim_stalls_warn_below_the_ratio() {
        let mut w = warner();
        let r = Row {
            usage_bytes: Some(95 << 20),
            ..row(70, 2.0)
        };
        let got = w.check(&[r], Instant::now());
        assert_eq!(
            got.iter().map(|w| w.reason).collect::<Vec<_>>(),
            vec![Reason::Reclaim]
        );
    }

    /// Stalls counted over an interval that ended with the cgroup emptied (its victim killed):
    /// no warning of an OOM that is over.
    #[test]
    fn reclaim_stalls_of_an_emptied_cgroup_do_not_warn() {
        let mut w = warner();
        let r = Row {
            usage_bytes: Some(12 << 10),
            working_set_bytes: Some(12 << 10),
            ..row(0, 27.0)
        };
        assert!(w.check(&[r], Instant::now()).is_empty());
    }
}
