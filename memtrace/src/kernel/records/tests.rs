//! The decoders against records laid out as the kernel writes them.

use memtrace_common::oom::{OOM_VICTIM_RECORD_LEN, OomVictimRecord, flags};

use super::*;

/// Serialises a record the way the kernel lays it out (repr(C), little-endian).
fn wire(r: &OomVictimRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(OOM_VICTIM_RECORD_LEN);
    for x in [r.kind, r.flags] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    for x in [
        r.ktime_boot_ns,
        r.victim_memcg_id,
        r.trigger_memcg_id,
        r.total_vm_kb,
        r.anon_rss_kb,
        r.file_rss_kb,
        r.shmem_rss_kb,
        r.swap_ents,
        r.pgtables_kb,
        r.memcg_usage_pages,
        r.memcg_limit_pages,
        r.oom_memcg_id,
        r.oom_memcg_usage_pages,
        r.oom_memcg_limit_pages,
    ] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(&r.oom_memcg_depth.to_le_bytes());
    v.extend_from_slice(&r.kernel_stack.to_le_bytes());
    for x in [r.victim_pid, r.victim_tgid, r.victim_uid] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(&r.oom_score_adj.to_le_bytes());
    for x in [r.trigger_pid, r.trigger_tgid] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(&r.victim_comm);
    v.extend_from_slice(&r.trigger_comm);
    for x in r.victim_stats.iter().chain(&r.oom_stats) {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

fn sample() -> OomVictimRecord {
    let mut r = OomVictimRecord::zeroed();
    r.flags = flags::SRC_TP_BTF
        | flags::HAS_VICTIM_TGID
        | flags::HAS_VICTIM_COMM
        | flags::HAS_RSS
        | flags::HAS_OOM_SCORE_ADJ
        | flags::HAS_VICTIM_MEMCG
        | flags::HAS_MEMCG_COUNTERS
        | flags::HAS_OOM_MEMCG;
    r.oom_memcg_id = 77;
    r.oom_memcg_usage_pages = 16_380;
    r.oom_memcg_limit_pages = 16_384;
    r.oom_memcg_depth = 1;
    r.flags |= flags::HAS_OOM_STATS;
    r.oom_stats[0] = 16_000;
    r.oom_stats[3] = 12;
    r.ktime_boot_ns = 123_456_789;
    r.victim_memcg_id = 4242;
    r.anon_rss_kb = 65_000;
    r.memcg_usage_pages = 16_384;
    r.memcg_limit_pages = 16_384;
    r.victim_pid = 1001;
    r.victim_tgid = 1000;
    r.oom_score_adj = -17;
    r.trigger_pid = 1001;
    r.trigger_tgid = 1000;
    r.victim_comm[..7].copy_from_slice(b"python3");
    r.trigger_comm.copy_from_slice(b"exactly16bytes!!");
    r
}

#[test]
fn layout_matches_the_kernel_struct() {
    let r = sample();
    let bytes = wire(&r);
    assert_eq!(bytes.len(), OOM_VICTIM_RECORD_LEN);
    // Same bytes as the in-memory repr(C) struct: the decoder's field order is the layout.
    // SAFETY: OomVictimRecord is repr(C) plain data with no padding (asserted in common).
    let mem = unsafe { std::slice::from_raw_parts((&raw const r).cast::<u8>(), OOM_VICTIM_RECORD_LEN) };
    assert_eq!(bytes, mem);
}

#[test]
fn decodes_every_field() {
    let d = VictimRecord::try_from(wire(&sample()).as_slice()).expect("decode");
    assert_eq!(d.source, HookSource::TpBtf);
    assert_eq!((d.victim_pid, d.victim_tgid), (1001, Some(1000)));
    assert_eq!(d.victim_comm.as_deref(), Some("python3"));
    assert_eq!(
        d.trigger_comm, "exactly16bytes!!",
        "a comm without NUL is kept whole"
    );
    assert_eq!(d.oom_score_adj, Some(-17));
    assert_eq!(d.rss_kb.map(|r| r.anon), Some(65_000));
    assert_eq!(d.memcg_pages, Some((16_384, 16_384)));
    assert_eq!(d.victim_memcg_id, Some(4242));
    assert_eq!(
        d.oom_memcg,
        Some(OomMemcg {
            id: 77,
            usage_pages: 16_380,
            limit_pages: 16_384,
            depth: 1,
            limit: LimitKind::Memory,
        })
    );
    assert!(!d.memsw_walked);
    let mut memsw = sample();
    memsw.flags |= flags::MEMSW_WALKED | flags::OOM_MEMCG_MEMSW;
    let m = VictimRecord::try_from(wire(&memsw).as_slice()).expect("decode");
    assert!(m.memsw_walked);
    assert_eq!(m.oom_memcg.map(|o| o.limit), Some(LimitKind::MemorySwap));
    assert!(!d.victim_exiting);
    let stats = d.stats.oom.expect("oom stats");
    assert_eq!(
        (stats.get(0), stats.get(3), stats.get(1)),
        (Some(16_000), Some(12), None)
    );
    assert_eq!(d.stats.victim, None, "HAS_VICTIM_STATS not set");
    assert_eq!(d.victim_uid, None, "HAS_UID not set");
    assert_eq!(d.swap_pages, None);
    assert!(!d.read_error);
}

#[test]
fn rejects_wrong_length_kind_and_source() {
    let good = wire(&sample());
    for len in [0, 1, OOM_VICTIM_RECORD_LEN - 1, OOM_VICTIM_RECORD_LEN + 8] {
        let mut v = good.clone();
        v.resize(len, 0);
        assert_eq!(
            VictimRecord::try_from(v.as_slice()),
            Err(DecodeError::Length {
                got: len,
                want: OOM_VICTIM_RECORD_LEN
            })
        );
    }
    let mut r = sample();
    r.kind = 9;
    assert_eq!(
        VictimRecord::try_from(wire(&r).as_slice()),
        Err(DecodeError::Kind(9))
    );
    let mut r = sample();
    r.flags |= flags::SRC_TRACEPOINT;
    assert!(matches!(
        VictimRecord::try_from(wire(&r).as_slice()),
        Err(DecodeError::Source(_))
    ));
}

#[test]
fn oom_context_records() {
    use memtrace_common::oom_context::OomContextRecord;
    let mut r = OomContextRecord::zeroed();
    r.flags = ctx_flags::SRC_KPROBE | ctx_flags::MEMCG;
    r.memcg_id = 9;
    r.totalpages = 16_384;
    r.chosen_points = 16_000;
    r.constraint = 3;
    r.chosen_tgid = 42;
    // SAFETY: repr(C) plain data without padding (asserted in memtrace-common).
    let raw = unsafe { std::slice::from_raw_parts((&raw const r).cast::<u8>(), OOM_CONTEXT_RECORD_LEN) };
    match OomRecord::try_from(raw) {
        Ok(OomRecord::Context(c)) => {
            assert_eq!(
                (c.memcg_id, c.totalpages, c.chosen_points),
                (Some(9), 16_384, 16_000)
            );
            assert_eq!((c.constraint, c.chosen_tgid), (KernelConstraint::Memcg, 42));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        OomRecord::try_from(wire(&sample()).as_slice()),
        Ok(OomRecord::Victim(_))
    ));
    assert!(OomRecord::try_from(&raw[..3]).is_err());
    assert!(OomContext::try_from(&raw[..20]).is_err());
}

#[test]
fn cgroup_mkdir_records() {
    let mut v = Vec::new();
    for x in [KIND_CGROUP_MKDIR, 0, 4, 1] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.extend_from_slice(&77u64.to_le_bytes());
    let mut path = [0u8; CGROUP_PATH_LEN];
    path[..6].copy_from_slice(b"/a/b/c");
    v.extend_from_slice(&path);
    let c = CgroupCreated::try_from(v.as_slice()).expect("decode");
    assert_eq!(
        c,
        CgroupCreated {
            root: 4,
            id: 77,
            path: Some("/a/b/c".into())
        }
    );
    v[4] = cgroup_flags::PATH_TRUNCATED as u8;
    assert_eq!(CgroupCreated::try_from(v.as_slice()).map(|c| c.path), Ok(None));
    assert!(CgroupCreated::try_from(&v[..10]).is_err());
    v[0] = 9;
    assert_eq!(CgroupCreated::try_from(v.as_slice()), Err(DecodeError::Kind(9)));
}

#[test]
fn any_bytes_decode_or_fail_cleanly() {
    // A cheap stand-in for the fuzzer: every 1-byte corruption of a good record.
    let good = wire(&sample());
    for i in 0..good.len() {
        for x in [0u8, 0xff, 0x80] {
            let mut v = good.clone();
            v[i] = x;
            let _ = VictimRecord::try_from(v.as_slice());
        }
    }
}
