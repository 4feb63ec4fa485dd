use super::*;
use crate::{
    cgroup::StatsError,
    enrich::kill::Snapshot,
    kernel::clock,
    kernel::records::{HookSource, LimitKind, OomMemcg, RssKb},
};

fn record() -> VictimRecord {
    VictimRecord {
        source: HookSource::TpBtf,
        ktime_boot_ns: clock::boot_ns(),
        victim_pid: 11,
        victim_tgid: Some(10),
        victim_comm: Some("python3".into()),
        victim_uid: Some(0),
        victim_memcg_id: None,
        trigger_pid: 11,
        trigger_tgid: 10,
        trigger_comm: "python3".into(),
        trigger_memcg_id: None,
        rss_kb: Some(RssKb {
            total_vm: 100,
            anon: 64,
            file: 2,
            shmem: 1,
        }),
        swap_pages: Some(3),
        pgtables_kb: Some(8),
        oom_score_adj: Some(0),
        memcg_pages: Some((16_384, u64::MAX / 4096)),
        oom_memcg: Some(OomMemcg {
            id: 5,
            usage_pages: 16_384,
            limit_pages: 16_384,
            depth: 0,
            limit: LimitKind::Memory,
        }),
        memsw_walked: false,
        kernel_stack: None,
        call_path: None,
        victim_exiting: false,
        read_error: false,
        stats: Box::default(),
    }
}

#[test]
fn units_sequence_and_verdict() {
    let mut e = Enricher::new(None, EnrichOptions::default());
    let k = e.enrich(record()).kill;
    assert_eq!((k.seq, k.pid, k.tid), (1, 10, 11));
    assert_eq!(k.anon_rss_bytes, Some(64 * 1024));
    assert_eq!(k.pgtables_bytes, Some(8 * 1024));
    assert_eq!(k.swap_bytes, Some(3 * e.page_size));
    assert_eq!(k.memcg_usage_bytes, Some(16_384 * e.page_size));
    assert_eq!(k.memcg_limit_bytes, None, "PAGE_COUNTER_MAX is no limit");
    assert!(k.verdict.victim_is_trigger);
    assert_eq!(e.enrich(record()).kill.seq, 2);
}

/// A cgroup file that cannot be read (here memory.stat is a directory: EISDIR, as EACCES
/// would be for an unprivileged reader) or a cgroup that is gone: the kill is still
/// reported in full, and the snapshot says what failed.
#[test]
fn unreadable_or_missing_cgroup_files_still_give_the_kill() {
    use std::os::unix::fs::MetadataExt as _;

    use crate::cgroup::{CgroupVersion, MemoryHierarchy};

    let root = tempfile::tempdir().expect("tempdir");
    let cg = root.path().join("cg");
    std::fs::create_dir_all(cg.join("memory.stat")).expect("mkdir");
    std::fs::write(cg.join("memory.usage_in_bytes"), "4096\n").expect("write");
    let id = std::fs::metadata(&cg).expect("stat").ino();
    let paths = CgroupPaths::new(MemoryHierarchy {
        version: CgroupVersion::V1,
        root: root.path().to_owned(),
    });
    let mut e = Enricher::new(Some(paths), EnrichOptions::default());
    let mut r = record();
    r.victim_memcg_id = Some(id);
    r.oom_memcg = None;
    let k = e.enrich(r.clone()).kill;
    assert_eq!(k.cgroup.as_ref().and_then(|c| c.path.as_deref()), Some("/cg"));
    match &k.snapshot {
        Some(Snapshot::Failed(err)) => assert!(err.to_string().contains("memory.stat"), "{err}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(k.anon_rss_bytes, Some(64 * 1024));
    let json = crate::output::json::event(&k, "h", 0);
    assert!(json["memtrace.snapshot.error"].is_string(), "{json}");

    std::fs::remove_dir_all(&cg).expect("rm");
    let k = e.enrich(r).kill;
    assert_eq!(k.cgroup.and_then(|c| c.path).as_deref(), Some("/cg"), "path kept");
    match &k.snapshot {
        Some(Snapshot::Failed(err)) => {
            assert!(matches!(**err, StatsError::Vanished { .. }), "{err}")
        }
        other => panic!("{other:?}"),
    }
}

/// Found by fuzz/oom_record: rss counters near u64::MAX overflowed the badness sum (a
/// panic in debug builds, a wrapped score in release).
#[test]
fn huge_rss_counters_saturate() {
    let mut e = Enricher::new(None, EnrichOptions::default());
    let mut r = record();
    r.rss_kb = Some(RssKb {
        total_vm: u64::MAX,
        anon: u64::MAX - 10,
        file: 1 << 40,
        shmem: u64::MAX,
    });
    let k = e.enrich(r).kill;
    let b = k.badness.expect("badness");
    assert_eq!(b.rss_pages, u64::MAX / e.page_size);
    assert_eq!(b.points, (b.rss_pages + b.swap_pages + b.pgtables_pages) as i64);
    assert_eq!(k.anon_rss_bytes, Some(u64::MAX));
}

/// File reads slower than the budget do not hold the kill: it goes out late, from the
/// record and the caches, and what the reads still find serves the kills after it.
#[tokio::test(flavor = "current_thread")]
async fn reads_past_the_budget_leave_the_kill_late_and_are_kept() {
    use std::os::unix::fs::MetadataExt as _;

    use crate::cgroup::{CgroupVersion, MemoryHierarchy};

    let root = tempfile::tempdir().expect("tempdir");
    let paths = CgroupPaths::new(MemoryHierarchy {
        version: CgroupVersion::V1,
        root: root.path().to_owned(),
    });
    let delay = Duration::from_secs(1);
    let opts = EnrichOptions {
        read_delay: Some(delay),
        ..EnrichOptions::default()
    };
    let mut e = Enricher::new(Some(paths), opts);
    // Made after the first walk: only a walk in the reads can find it.
    let cg = root.path().join("late");
    std::fs::create_dir_all(&cg).expect("mkdir");
    std::fs::write(cg.join("memory.usage_in_bytes"), "4096\n").expect("write");
    let id = std::fs::metadata(&cg).expect("stat").ino();
    let mut r = record();
    r.victim_memcg_id = Some(id);
    r.oom_memcg = None;

    let started = std::time::Instant::now();
    let k = e.enrich_within(r.clone(), Duration::from_millis(50)).await.kill;
    assert!(
        started.elapsed() < delay,
        "waited {:?} for the reads",
        started.elapsed()
    );
    assert!(k.late);
    assert_eq!((k.seq, k.pid), (1, 10));
    assert_eq!(k.cgroup.as_ref().and_then(|c| c.path.as_deref()), None);
    assert!(k.snapshot.is_none() && k.next_in_line.is_none());
    assert_eq!(
        k.anon_rss_bytes,
        Some(64 * 1024),
        "the record's own fields are all there"
    );
    let json = crate::output::json::event(&k, "h", 0);
    assert_eq!(json["memtrace.enrich.late"], true);

    // The late reads end, and their walk is kept.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while e.reading.load(Ordering::Relaxed) > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    e.keep_learned();
    assert_eq!(e.paths().and_then(|p| p.cached(id)), Some("/late"));
    let k = e.enrich_within(r, Duration::from_secs(30)).await.kill;
    assert!(!k.late);
    assert_eq!(k.seq, 2);
    assert_eq!(k.cgroup.and_then(|c| c.path).as_deref(), Some("/late"));
    assert!(k.snapshot.is_some());
}

/// A `memory.oom.group` kill: one oom_kill_process context (chosen pid 10, trigger 10),
/// then a victim record per task. The chosen task and the others of the group all get the
/// OOM's context; a victim of a later OOM by another trigger does not.
#[test]
fn a_group_kill_gives_every_victim_its_oom_context() {
    use crate::kernel::records::KernelConstraint;

    let mut e = Enricher::new(None, EnrichOptions::default());
    let base = record();
    e.note_context(OomContext {
        ktime_boot_ns: base.ktime_boot_ns,
        memcg_id: Some(5),
        totalpages: 16_384,
        chosen_points: 900,
        gfp_mask: 0xcc0,
        order: 0,
        constraint: KernelConstraint::Memcg,
        chosen_pid: 10,
        chosen_tgid: 10,
        trigger_tgid: 10,
        read_error: false,
    });
    let victim = |pid: u32, trigger: u32, after_ns: u64| {
        let mut r = base.clone();
        (r.victim_pid, r.victim_tgid, r.trigger_tgid, r.trigger_pid) = (pid, Some(pid), trigger, trigger);
        r.ktime_boot_ns += after_ns;
        r
    };
    for (pid, after) in [(10, 1_000), (20, 2_000), (30, 3_000)] {
        let k = e.enrich(victim(pid, 10, after)).kill;
        let c = k
            .context
            .unwrap_or_else(|| panic!("pid {pid} has the OOM's context"));
        assert_eq!((c.memcg_id, c.chosen_tgid), (Some(5), 10));
    }
    assert!(
        e.enrich(victim(40, 99, 4_000)).kill.context.is_none(),
        "another trigger's OOM"
    );
    assert!(
        e.enrich(victim(50, 10, 2 * GROUP_KILL_WINDOW_NS))
            .kill
            .context
            .is_none(),
        "a later OOM by the same trigger whose context was lost"
    );
}

/// Without oom_kill_process: a group kill's later victim whose walk found no cgroup at its
/// limit (the first victims already freed memory) gets its trigger's OOM memcg, with its
/// own depth; another trigger's victim, or one outside that cgroup, does not.
#[test]
fn a_group_kill_without_context_keeps_its_oom_cgroup() {
    use std::os::unix::fs::MetadataExt as _;

    use crate::cgroup::{CgroupVersion, MemoryHierarchy};

    let root = tempfile::tempdir().expect("tempdir");
    for d in ["grp/child", "other"] {
        std::fs::create_dir_all(root.path().join(d)).expect("mkdir");
    }
    let id = |d: &str| std::fs::metadata(root.path().join(d)).expect("stat").ino();
    let paths = CgroupPaths::new(MemoryHierarchy {
        version: CgroupVersion::V2,
        root: root.path().to_owned(),
    });
    let mut e = Enricher::new(Some(paths), EnrichOptions::default());
    let victim = |memcg: &str, trigger: u32, after_ns: u64, oom: Option<OomMemcg>| {
        let mut r = record();
        r.victim_memcg_id = Some(id(memcg));
        (r.trigger_tgid, r.trigger_pid) = (trigger, trigger);
        r.ktime_boot_ns += after_ns;
        r.oom_memcg = oom;
        r
    };
    let walked = OomMemcg {
        id: id("grp"),
        usage_pages: 16_384,
        limit_pages: 16_384,
        depth: 0,
        limit: LimitKind::Memory,
    };
    let oom_of = |k: &OomKill| k.oom_cgroup.as_ref().map(|o| (o.cgroup.path.clone(), o.depth));
    let first = e.enrich(victim("grp", 10, 0, Some(walked))).kill;
    assert_eq!(oom_of(&first), Some((Some("/grp".into()), 0)));
    let member = e.enrich(victim("grp/child", 10, 1_000, None)).kill;
    assert_eq!(oom_of(&member), Some((Some("/grp".into()), 1)), "{member:?}");
    assert_eq!(
        oom_of(&e.enrich(victim("other", 10, 2_000, None)).kill),
        None,
        "outside"
    );
    assert_eq!(
        oom_of(&e.enrich(victim("grp", 99, 3_000, None)).kill),
        None,
        "another trigger"
    );
    let late = victim("grp", 10, 2 * GROUP_KILL_WINDOW_NS, None);
    assert_eq!(oom_of(&e.enrich(late).kill), None, "a later OOM");
}

#[test]
fn depth_below_counts_levels_inside_only() {
    assert_eq!(depth_below("/", "/a/b"), Some(2));
    assert_eq!(depth_below("/a", "/a"), Some(0));
    assert_eq!(depth_below("/a", "/a/b/c"), Some(2));
    assert_eq!(depth_below("/a", "/ab"), None);
    assert_eq!(depth_below("/a/b", "/a"), None);
}

/// Kills that arrive together have their reads run side by side: two kills whose reads take
/// 300 ms each are both complete, not late, in well under the 600 ms that one after the other
/// would take; they keep the kernel's order.
#[tokio::test(flavor = "current_thread")]
async fn kills_started_together_read_side_by_side() {
    let delay = Duration::from_millis(300);
    let opts = EnrichOptions {
        read_delay: Some(delay),
        ..EnrichOptions::default()
    };
    let mut e = Enricher::new(None, opts);
    let started = std::time::Instant::now();
    let first = e.start(record(), Duration::from_secs(30));
    let second = e.start(record(), Duration::from_secs(30));
    let (a, b) = (e.complete(first).await.kill, e.complete(second).await.kill);
    let took = started.elapsed();
    assert!(!a.late && !b.late);
    assert_eq!((a.seq, b.seq), (1, 2));
    assert!(took >= delay, "{took:?}");
    assert!(
        took < delay * 2 - Duration::from_millis(100),
        "one after the other: {took:?}"
    );
    assert_eq!(e.pending, 0);
}
