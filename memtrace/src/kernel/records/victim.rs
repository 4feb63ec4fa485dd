//! The `mark_victim` record (`memtrace_common::oom::OomVictimRecord`): who was killed, by whom,
//! and the memory counters the kernel read at the kill.

use bytes::Buf;
use memtrace_common::{
    memcg_stat::MEMCG_STAT_ITEMS,
    oom::{COMM_LEN, KIND_OOM_VICTIM, OOM_VICTIM_RECORD_LEN, STAT_ABSENT, flags},
};

use super::{DecodeError, HookSource, comm, record_header};

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

/// The hook variant that wrote a victim record, from its one `SRC_*` flag.
fn source(f: u32) -> Result<HookSource, DecodeError> {
    let sources =
        flags::SRC_TP_BTF | flags::SRC_RAW_TP | flags::SRC_FENTRY | flags::SRC_KPROBE | flags::SRC_TRACEPOINT;
    Ok(match f & sources {
        flags::SRC_TP_BTF => HookSource::TpBtf,
        flags::SRC_RAW_TP => HookSource::RawTp,
        flags::SRC_FENTRY => HookSource::Fentry,
        flags::SRC_KPROBE => HookSource::Kprobe,
        flags::SRC_TRACEPOINT => HookSource::Tracepoint,
        _ => return Err(DecodeError::Source(f)),
    })
}

impl OomMemcg {
    /// Its id, usage and limit pages, then the walk's depth (`OomVictimRecord::oom_memcg_*`).
    fn decode(b: &mut &[u8], memsw: bool) -> Self {
        Self {
            id: b.get_u64_le(),
            usage_pages: b.get_u64_le(),
            limit_pages: b.get_u64_le(),
            depth: b.get_u32_le(),
            limit: if memsw {
                LimitKind::MemorySwap
            } else {
                LimitKind::Memory
            },
        }
    }
}

impl TryFrom<&[u8]> for VictimRecord {
    type Error = DecodeError;

    fn try_from(raw: &[u8]) -> Result<Self, Self::Error> {
        // The ring buffer rounds records up to 8 bytes; ours is a multiple of 8 already.
        let (f, mut b) = record_header(raw, OOM_VICTIM_RECORD_LEN, KIND_OOM_VICTIM)?;
        let has = |bit: u32| f & bit != 0;
        let source = source(f)?;
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
        let oom_memcg = OomMemcg::decode(&mut b, has(flags::OOM_MEMCG_MEMSW));
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
