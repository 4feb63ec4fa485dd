//! Unit tests of the metrics: names, values, and the bounds on series.

use super::*;
use crate::{
    cgroup::MemoryStats,
    enrich::kill::{OomCgroup, Snapshot},
    sinks::tests::kill,
};

/// Asserts that the exposition `t` has `needle`, showing `t` when it has not.
#[track_caller]
fn assert_has(t: &str, needle: &str) {
    assert!(t.contains(needle), "{t}");
}

/// The opposite of [`assert_has`].
#[track_caller]
fn assert_lacks(t: &str, needle: &str) {
    assert!(!t.contains(needle), "{t}");
}

#[test]
fn kill_counter_and_gauges() {
    let m = Metrics::new(1, Duration::from_secs(3600));
    let mut k = kill();
    let stats = MemoryStats {
        usage: 60 << 20,
        inactive_file: 10 << 20,
        limit: Some(64 << 20),
        ..MemoryStats::default()
    };
    k.snapshot = Some(Snapshot::Read(Box::new(stats)));
    m.record_kill(&k);
    m.record_kill(&k);
    let t = m.encode_prometheus_text();
    assert_has(
        &t,
        r#"memtrace_oom_kills_total{namespace="",pod="",container="",container_id="",cgroup="/kubepods.slice/x",constraint="global"} 2"#,
    );
    assert_has(
        &t,
        r#"memtrace_cgroup_memory_working_set_bytes{cgroup="/kubepods.slice/x"} 52428800"#,
    );
    assert_has(
        &t,
        r#"memtrace_cgroup_memory_limit_bytes{cgroup="/kubepods.slice/x"} 67108864"#,
    );
    assert_has(&t, r#"memtrace_build_info{version=""#);
    assert_has(&t, "# TYPE memtrace_oom_kills_total counter");
    assert_has(&t, "# TYPE memtrace_build_info gauge");
    assert!(!t.contains("# EOF") && !t.contains("# UNIT"), "{t}");

    // Exiting victims are not kills; a second cgroup pushes out the first (max 1).
    k.victim_exiting = true;
    k.oom_cgroup = Some(OomCgroup {
        cgroup: crate::enrich::kill::CgroupRef {
            id: None,
            path: Some("/other".into()),
            source: crate::enrich::kill::PathSource::Kernel,
        },
        usage_bytes: 0,
        limit_bytes: 0,
        limit: crate::enrich::memsw::LimitKind::Memory,
        depth: 1,
    });
    m.record_kill(&k);
    let t = m.encode_prometheus_text();
    assert_has(&t, r#"constraint="global"} 2"#);
    assert_has(&t, r#"memtrace_cgroup_memory_usage_bytes{cgroup="/other"}"#);
    assert_lacks(
        &t,
        r#"memtrace_cgroup_memory_usage_bytes{cgroup="/kubepods.slice/x"}"#,
    );
}

#[test]
fn ringbuf_totals_become_increments() {
    let m = Metrics::new(10, Duration::from_secs(3600));
    m.ringbuf_full_total(3);
    m.ringbuf_full_total(3);
    m.ringbuf_full_total(5);
    let t = m.encode_prometheus_text();
    assert_has(
        &t,
        r#"memtrace_events_lost_total{cause="ringbuf_full",sink=""} 5"#,
    );
    assert_has(
        &t,
        r#"memtrace_events_lost_total{cause="decode_error",sink=""} 0"#,
    );
}

/// A charge row as the worker makes it: `ws`/`limit` in MiB, `per_s` charge events per second.
fn row(cgroup: &str, ws: u64, limit: u64, per_s: f64, charges: u64) -> Row {
    use crate::charges::accounting::{ChargeTotals, Rate};
    Row {
        cgroup: cgroup.into(),
        cgroup_id: 1,
        usage_bytes: Some(ws << 20),
        working_set_bytes: Some(ws << 20),
        limit_bytes: Some(limit << 20),
        headroom_pct: None,
        oom_kills: None,
        rate: Rate {
            charge_events_per_s: per_s,
            totals: ChargeTotals {
                charge_events: charges,
                charged_pages: charges,
                faults: 2 * charges,
                reclaim_stalls: 3,
                reclaim_ns: 1_500_000_000,
                ..ChargeTotals::default()
            },
            ..Rate::default()
        },
    }
}

#[test]
fn charge_counters_only_for_busy_or_nearly_full_cgroups() {
    let m = Metrics::new(100, Duration::from_secs(3600));
    // Eleven busy cgroups (only the BUSY busiest count), one quiet but nearly full, one quiet.
    let mut rows: Vec<Row> = (0..=BUSY)
        .map(|i| row(&format!("/busy{i:02}"), 1, 1024, 100.0 - i as f64, 10))
        .collect();
    rows.push(row("/full", 60, 64, 0.0, 7));
    rows.push(row("/idle", 1, 64, 0.0, 5));
    m.record_charges(&rows, 4096);
    let t = m.encode_prometheus_text();
    assert_has(&t, r#"memtrace_cgroup_charges_total{cgroup="/busy00"} 10"#);
    assert_has(&t, r#"memtrace_cgroup_charges_total{cgroup="/busy09"} 10"#);
    assert_lacks(&t, r#"cgroup="/busy10""#);
    assert_lacks(&t, r#"cgroup="/idle""#);
    assert_has(&t, r#"memtrace_cgroup_charged_bytes_total{cgroup="/full"} 28672"#);
    assert_has(&t, r#"memtrace_cgroup_page_faults_total{cgroup="/full"} 14"#);
    assert_has(&t, r#"memtrace_cgroup_reclaim_stalls_total{cgroup="/full"} 3"#);
    assert_has(
        &t,
        r#"memtrace_cgroup_reclaim_stall_seconds_total{cgroup="/full"} 1.5"#,
    );
    // Once counted, a cgroup keeps being counted when it goes quiet; totals only go up.
    m.record_charges(
        &[row("/busy00", 1, 1024, 0.0, 12), row("/full", 1, 64, 0.0, 6)],
        4096,
    );
    let t = m.encode_prometheus_text();
    assert_has(&t, r#"memtrace_cgroup_charges_total{cgroup="/busy00"} 12"#);
    assert_has(&t, r#"memtrace_cgroup_charges_total{cgroup="/full"} 7"#);
}

#[test]
fn series_of_removed_cgroups_go_after_forget_after() {
    let m = Metrics::new(100, Duration::from_secs(60));
    let mut k = kill();
    k.snapshot = Some(Snapshot::Read(Box::new(MemoryStats {
        usage: 1 << 20,
        limit: Some(64 << 20),
        ..MemoryStats::default()
    })));
    m.record_kill(&k);
    m.record_charges(&[row("/kubepods.slice/x", 60, 64, 5.0, 9)], 4096);
    m.record_warning(&PreOomWarning {
        time: std::time::SystemTime::now(),
        evidence_since_boot_ns: 0,
        cgroup: "/kubepods.slice/x".into(),
        reason: crate::charges::warnings::Reason::WorkingSet,
        usage_bytes: 0,
        working_set_bytes: 0,
        limit_bytes: 0,
        working_set_ratio: 0.95,
        usage_growth_bytes_per_s: None,
        seconds_to_limit: None,
        reclaim_stalls_per_s: 0.0,
        attribution: None,
    });
    m.record_charges(&[row("/alive", 60, 64, 5.0, 9)], 4096);
    let count = |t: &str| {
        t.lines()
            .filter(|l| l.contains(r#"cgroup="/kubepods.slice/x""#))
            .count()
    };
    let t = m.encode_prometheus_text();
    assert_has(
        &t,
        r#"memtrace_pre_oom_warnings_total{cgroup="/kubepods.slice/x",reason="working_set"} 1"#,
    );
    assert_eq!(
        count(&t),
        1 + 3 + 6 + 1,
        "kill, gauges, charge counters, warning: {t}"
    );
    let t0 = Instant::now();
    let alive = |c: &str| c == "/alive";
    m.sweep_at(t0, alive);
    m.sweep_at(t0 + Duration::from_secs(59), alive);
    assert_eq!(
        count(&m.encode_prometheus_text()),
        11,
        "still within forget_after"
    );
    // Sweeps run every forget_after / 4 (15 s here): the series go by the first one after 60 s.
    m.sweep_at(t0 + Duration::from_secs(60), alive);
    assert_eq!(count(&m.encode_prometheus_text()), 11, "no sweep due yet");
    m.sweep_at(t0 + Duration::from_secs(74), alive);
    let t = m.encode_prometheus_text();
    assert_eq!(count(&t), 0, "{t}");
    assert_has(&t, r#"memtrace_cgroup_charges_total{cgroup="/alive"} 9"#);
    // A new kill in a cgroup of the same path starts from scratch.
    m.record_kill(&k);
    assert!(
        m.encode_prometheus_text()
            .contains(r#"cgroup="/kubepods.slice/x",constraint="global"} 1"#)
    );
}

#[test]
fn reconcile_state() {
    let m = Metrics::new(10, Duration::from_secs(3600));
    let t = m.encode_prometheus_text();
    assert_has(&t, "memtrace_reconcile_mismatched_cgroups 0\n");
    let mm = |c: &str, kernel, reported| Mismatch {
        cgroup: c.into(),
        kernel,
        reported,
    };
    m.reconciled(&[mm("/a", 3, 1), mm("/b", 1, 2)]);
    let t = m.encode_prometheus_text();
    assert_has(&t, "memtrace_reconcile_mismatched_cgroups 2\n");
    assert_has(&t, r#"memtrace_reconcile_unreported_kills{cgroup="/a"} 2"#);
    assert_has(&t, r#"memtrace_reconcile_unreported_kills{cgroup="/b"} -1"#);
    m.reconciled(&[]);
    let t = m.encode_prometheus_text();
    assert_has(&t, "memtrace_reconcile_mismatched_cgroups 0\n");
    assert_lacks(&t, "memtrace_reconcile_unreported_kills{");
}
