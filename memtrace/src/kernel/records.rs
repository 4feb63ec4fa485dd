//! Decoding of the records the eBPF programs write to the ring buffer.
//!
//! Never a transmute: each record is length-checked, then read field by field in the order of
//! `memtrace_common::oom::OomVictimRecord` (little-endian, as the bpfel target writes it), and
//! the `flags` bits decide which fields are meaningful.

use bytes::Buf;
use memtrace_common::{
    cgroup::{CGROUP_MKDIR_RECORD_LEN, CGROUP_PATH_LEN, KIND_CGROUP_MKDIR, flags as cgroup_flags},
    memcg_stat::MEMCG_STAT_ITEMS,
    oom::{COMM_LEN, KIND_OOM_VICTIM, OOM_VICTIM_RECORD_LEN, STAT_ABSENT, flags},
    oom_context::{KIND_OOM_CONTEXT, OOM_CONTEXT_RECORD_LEN, flags as ctx_flags},
};
use serde::Serialize;

use crate::kernel::hooks::AttachKind;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {got} bytes, expected {want}")]
    Length { got: usize, want: usize },
    #[error("unknown record kind {0}")]
    Kind(u32),
    #[error("record names no hook variant (flags {0:#x})")]
    Source(u32),
}

/// Which program produced a record: the attach kind of the OOM hook that wrote it (never
/// perf_event). One enum with the hooks' own, so that a record and `memtrace probes` name a
/// kind the same way.
pub type HookSource = AttachKind;

/// Sizes of the victim's address space at the kill, in kB (as the kernel log prints them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RssKb {
    pub total_vm: u64,
    pub anon: u64,
    pub file: u64,
    pub shmem: u64,
}

/// The page counter whose limit a memcg OOM hit (`memtrace.oom_cgroup.limit_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// `mem_cgroup.memory`: `memory.max` / v1 `memory.limit_in_bytes`.
    Memory,
    /// `mem_cgroup.memsw`: v1 `memory.memsw.limit_in_bytes`, memory and swap together.
    MemorySwap,
}

/// The memcg at its limit, from the in-kernel walk up the hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OomMemcg {
    pub id: u64,
    pub usage_pages: u64,
    pub limit_pages: u64,
    /// Levels above the victim's memcg.
    pub depth: u32,
    /// The counter the walk found at its limit.
    pub limit: LimitKind,
}

/// A memcg's statistics read in the kernel at the kill, in pages, in
/// `memtrace_common::memcg_stat::item` order (`None`: the kernel does not count that item).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatPages([u32; MEMCG_STAT_ITEMS]);

impl Default for StatPages {
    fn default() -> Self {
        Self([STAT_ABSENT; MEMCG_STAT_ITEMS])
    }
}

impl StatPages {
    fn decode(b: &mut &[u8]) -> Self {
        let mut out = [STAT_ABSENT; MEMCG_STAT_ITEMS];
        for slot in &mut out {
            *slot = b.get_u32_le();
        }
        Self(out)
    }

    pub fn get(&self, item: usize) -> Option<u64> {
        self.0
            .get(item)
            .copied()
            .filter(|&v| v != STAT_ABSENT)
            .map(u64::from)
    }

    pub fn set(&mut self, item: usize, pages: Option<u32>) {
        if let Some(slot) = self.0.get_mut(item) {
            *slot = pages.unwrap_or(STAT_ABSENT);
        }
    }
}

/// The statistics a record carries: of the victim's memcg and of the OOM memcg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RecordStats {
    pub victim: Option<StatPages>,
    pub oom: Option<StatPages>,
}

/// Which OOM the kernel was in when it marked the victim, from its call stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OomCallPath {
    /// Through mm/memcontrol.c (`mem_cgroup_out_of_memory` or its callers).
    Memcg,
    /// Through the page allocator's OOM (or sysrq-f), and no memcg code.
    Global,
}

/// One decoded `mark_victim` record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VictimRecord {
    pub source: HookSource,
    pub ktime_boot_ns: u64,
    pub victim_pid: u32,
    pub victim_tgid: Option<u32>,
    pub victim_comm: Option<String>,
    pub victim_uid: Option<u32>,
    pub victim_memcg_id: Option<u64>,
    pub trigger_pid: u32,
    pub trigger_tgid: u32,
    pub trigger_comm: String,
    pub trigger_memcg_id: Option<u64>,
    pub rss_kb: Option<RssKb>,
    pub swap_pages: Option<u64>,
    pub pgtables_kb: Option<u64>,
    pub oom_score_adj: Option<i32>,
    /// The victim memcg's page counter (usage, limit) in pages, read in the kernel at the hook.
    pub memcg_pages: Option<(u64, u64)>,
    /// The memcg that was at its limit at the kill (none: a global OOM, or not known).
    pub oom_memcg: Option<OomMemcg>,
    /// cgroup v1: that walk checked the memory+swap counters too, so its answer (a memsw limit
    /// hit, or none) is the kernel's own reading, not to be guessed again from the files.
    pub memsw_walked: bool,
    /// The kernel stack at the kill, an id in the `OOM_STACKS` map.
    pub kernel_stack: Option<u32>,
    /// Where the OOM came from by that stack (memcg or the page allocator), where it was
    /// read against this kernel's text (see `kernel::oom_path`).
    pub call_path: Option<OomCallPath>,
    /// The victim was already exiting: marked, not killed.
    pub victim_exiting: bool,
    /// A kernel read failed while the record was filled: some fields may be missing.
    pub read_error: bool,
    /// The victim memcg's and the OOM memcg's statistics at the kill.
    /// Boxed: they would double the record's size.
    pub stats: Box<RecordStats>,
}

/// A NUL-terminated kernel `comm`, as text.
pub(crate) fn comm(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Checks a record's length and kind; returns its flags and the fields after them.
pub(crate) fn record_header(raw: &[u8], len: usize, kind: u32) -> Result<(u32, &[u8]), DecodeError> {
    if raw.len() != len {
        return Err(DecodeError::Length {
            got: raw.len(),
            want: len,
        });
    }
    let mut b = raw;
    let got = b.get_u32_le();
    if got != kind {
        return Err(DecodeError::Kind(got));
    }
    let f = b.get_u32_le();
    Ok((f, b))
}

impl TryFrom<&[u8]> for VictimRecord {
    type Error = DecodeError;

    fn try_from(raw: &[u8]) -> Result<Self, Self::Error> {
        // The ring buffer rounds records up to 8 bytes; ours is a multiple of 8 already.
        let (f, mut b) = record_header(raw, OOM_VICTIM_RECORD_LEN, KIND_OOM_VICTIM)?;
        let has = |bit: u32| f & bit != 0;
        let sources = flags::SRC_TP_BTF
            | flags::SRC_RAW_TP
            | flags::SRC_FENTRY
            | flags::SRC_KPROBE
            | flags::SRC_TRACEPOINT;
        let source = match f & sources {
            flags::SRC_TP_BTF => HookSource::TpBtf,
            flags::SRC_RAW_TP => HookSource::RawTp,
            flags::SRC_FENTRY => HookSource::Fentry,
            flags::SRC_KPROBE => HookSource::Kprobe,
            flags::SRC_TRACEPOINT => HookSource::Tracepoint,
            _ => return Err(DecodeError::Source(f)),
        };
        let ktime_boot_ns = b.get_u64_le();
        let victim_memcg_id = b.get_u64_le();
        let trigger_memcg_id = b.get_u64_le();
        let rss = RssKb {
            total_vm: b.get_u64_le(),
            anon: b.get_u64_le(),
            file: b.get_u64_le(),
            shmem: b.get_u64_le(),
        };
        let swap_pages = b.get_u64_le();
        let pgtables_kb = b.get_u64_le();
        let memcg_usage = b.get_u64_le();
        let memcg_limit = b.get_u64_le();
        let oom_memcg = OomMemcg {
            id: b.get_u64_le(),
            usage_pages: b.get_u64_le(),
            limit_pages: b.get_u64_le(),
            depth: b.get_u32_le(),
            limit: if has(flags::OOM_MEMCG_MEMSW) {
                LimitKind::MemorySwap
            } else {
                LimitKind::Memory
            },
        };
        let kernel_stack = b.get_i32_le();
        let victim_pid = b.get_u32_le();
        let victim_tgid = b.get_u32_le();
        let victim_uid = b.get_u32_le();
        let oom_score_adj = b.get_i32_le();
        let trigger_pid = b.get_u32_le();
        let trigger_tgid = b.get_u32_le();
        let (victim_comm, rest) = b.split_at(COMM_LEN);
        let (trigger_comm, mut rest) = rest.split_at(COMM_LEN);
        let victim_stats = StatPages::decode(&mut rest);
        let oom_stats = StatPages::decode(&mut rest);
        Ok(Self {
            source,
            ktime_boot_ns,
            victim_pid,
            victim_tgid: has(flags::HAS_VICTIM_TGID).then_some(victim_tgid),
            victim_comm: has(flags::HAS_VICTIM_COMM).then(|| comm(victim_comm)),
            victim_uid: has(flags::HAS_UID).then_some(victim_uid),
            victim_memcg_id: has(flags::HAS_VICTIM_MEMCG).then_some(victim_memcg_id),
            trigger_pid,
            trigger_tgid,
            trigger_comm: comm(trigger_comm),
            trigger_memcg_id: has(flags::HAS_TRIGGER_MEMCG).then_some(trigger_memcg_id),
            rss_kb: has(flags::HAS_RSS).then_some(rss),
            swap_pages: has(flags::HAS_SWAP).then_some(swap_pages),
            pgtables_kb: has(flags::HAS_PGTABLES).then_some(pgtables_kb),
            oom_score_adj: has(flags::HAS_OOM_SCORE_ADJ).then_some(oom_score_adj),
            memcg_pages: has(flags::HAS_MEMCG_COUNTERS).then_some((memcg_usage, memcg_limit)),
            oom_memcg: has(flags::HAS_OOM_MEMCG).then_some(oom_memcg),
            memsw_walked: has(flags::MEMSW_WALKED),
            kernel_stack: u32::try_from(kernel_stack).ok(),
            call_path: None,
            victim_exiting: has(flags::VICTIM_EXITING),
            read_error: has(flags::READ_ERROR),
            stats: Box::new(RecordStats {
                victim: has(flags::HAS_VICTIM_STATS).then_some(victim_stats),
                oom: has(flags::HAS_OOM_STATS).then_some(oom_stats),
            }),
        })
    }
}

/// `enum oom_constraint` (include/linux/oom.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelConstraint {
    None,
    Cpuset,
    MemoryPolicy,
    Memcg,
    Unknown(u32),
}

impl From<u32> for KernelConstraint {
    fn from(v: u32) -> Self {
        match v {
            0 => Self::None,
            1 => Self::Cpuset,
            2 => Self::MemoryPolicy,
            3 => Self::Memcg,
            other => Self::Unknown(other),
        }
    }
}

/// One decoded `oom_kill_process` record: the OOM killer's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomContext {
    pub ktime_boot_ns: u64,
    /// `oc->memcg`'s cgroup id; `None` for a global OOM.
    pub memcg_id: Option<u64>,
    pub totalpages: u64,
    pub chosen_points: i64,
    pub gfp_mask: u32,
    pub order: i32,
    pub constraint: KernelConstraint,
    pub chosen_pid: u32,
    pub chosen_tgid: u32,
    pub trigger_tgid: u32,
    pub read_error: bool,
}

impl TryFrom<&[u8]> for OomContext {
    type Error = DecodeError;

    fn try_from(raw: &[u8]) -> Result<Self, Self::Error> {
        let (f, mut b) = record_header(raw, OOM_CONTEXT_RECORD_LEN, KIND_OOM_CONTEXT)?;
        if f & (ctx_flags::SRC_FENTRY | ctx_flags::SRC_KPROBE) == 0 {
            return Err(DecodeError::Source(f));
        }
        let ktime_boot_ns = b.get_u64_le();
        let memcg_id = b.get_u64_le();
        Ok(Self {
            ktime_boot_ns,
            memcg_id: (f & ctx_flags::MEMCG != 0).then_some(memcg_id),
            totalpages: b.get_u64_le(),
            chosen_points: b.get_i64_le(),
            gfp_mask: b.get_u32_le(),
            order: b.get_i32_le(),
            constraint: KernelConstraint::from(b.get_u32_le()),
            chosen_pid: b.get_u32_le(),
            chosen_tgid: b.get_u32_le(),
            trigger_tgid: b.get_u32_le(),
            read_error: f & ctx_flags::READ_ERROR != 0,
        })
    }
}

/// Anything the OOM ring buffer carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OomRecord {
    /// Boxed: several times the size of a context record.
    Victim(Box<VictimRecord>),
    Context(OomContext),
}

impl TryFrom<&[u8]> for OomRecord {
    type Error = DecodeError;

    fn try_from(raw: &[u8]) -> Result<Self, Self::Error> {
        let kind = raw.get(..4).map(|mut k| k.get_u32_le());
        match kind {
            Some(KIND_OOM_CONTEXT) => OomContext::try_from(raw).map(Self::Context),
            _ => VictimRecord::try_from(raw).map(|v| Self::Victim(Box::new(v))),
        }
    }
}

/// A cgroup was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupCreated {
    /// Hierarchy id (0: the cgroup2 default hierarchy).
    pub root: u32,
    pub id: u64,
    /// Relative to the hierarchy root; `None` when the kernel's path did not fit.
    pub path: Option<String>,
}

impl TryFrom<&[u8]> for CgroupCreated {
    type Error = DecodeError;

    fn try_from(raw: &[u8]) -> Result<Self, Self::Error> {
        let (f, mut b) = record_header(raw, CGROUP_MKDIR_RECORD_LEN, KIND_CGROUP_MKDIR)?;
        let root = b.get_u32_le();
        let _level = b.get_u32_le();
        let id = b.get_u64_le();
        let path = comm(&b[..CGROUP_PATH_LEN]);
        let truncated = f & cgroup_flags::PATH_TRUNCATED != 0;
        Ok(Self {
            root,
            id,
            path: (!truncated && path.starts_with('/')).then_some(path),
        })
    }
}

#[cfg(test)]
mod tests {
    use memtrace_common::oom::OomVictimRecord;

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
}
