//! The OOM victim record: one per task the OOM killer marks as a victim (`mark_victim`), so
//! every task of a `memory.oom.group` kill gets its own.

use crate::memcg_stat::MEMCG_STAT_ITEMS;

/// Record kind written in [`OomVictimRecord::kind`].
pub const KIND_OOM_VICTIM: u32 = 1;

/// `flags` bits: which hook variant produced the record and which fields are valid.
pub mod flags {
    /// Produced by the `tp_btf/mark_victim` program (typed `task_struct *`).
    pub const SRC_TP_BTF: u32 = 1 << 0;
    /// Produced by the `tracepoint/oom/mark_victim` program (the tracepoint's own fields).
    pub const SRC_TRACEPOINT: u32 = 1 << 1;
    /// Produced by the `raw_tp/mark_victim` program (raw `task_struct *` argument).
    pub const SRC_RAW_TP: u32 = 1 << 12;
    pub const HAS_VICTIM_TGID: u32 = 1 << 2;
    pub const HAS_VICTIM_MEMCG: u32 = 1 << 3;
    pub const HAS_TRIGGER_MEMCG: u32 = 1 << 4;
    /// `memcg_usage_pages` / `memcg_limit_pages` of the victim's memcg were read.
    pub const HAS_MEMCG_COUNTERS: u32 = 1 << 5;
    /// total_vm and the anon/file/shmem rss fields are valid.
    pub const HAS_RSS: u32 = 1 << 6;
    pub const HAS_SWAP: u32 = 1 << 7;
    pub const HAS_PGTABLES: u32 = 1 << 8;
    pub const HAS_OOM_SCORE_ADJ: u32 = 1 << 9;
    pub const HAS_UID: u32 = 1 << 10;
    pub const HAS_VICTIM_COMM: u32 = 1 << 11;
    /// `oom_memcg_*` are valid: an ancestor-or-self memcg was at its limit at the kill.
    pub const HAS_OOM_MEMCG: u32 = 1 << 13;
    /// Marked without a kill: the victim memcg's OOM-kill counter did not move since its
    /// previous mark (or, without that counter, the victim had PF_EXITING): the OOM killer marked
    /// it to reap its memory faster but sent no kill (mm/oom_kill.c task_will_free_mem).
    pub const VICTIM_EXITING: u32 = 1 << 14;
    /// At least one kernel read failed while filling the record.
    pub const READ_ERROR: u32 = 1 << 15;
    /// `victim_stats` / `oom_stats` were read from the memcg's own statistics.
    pub const HAS_VICTIM_STATS: u32 = 1 << 16;
    pub const HAS_OOM_STATS: u32 = 1 << 17;
    /// Produced by fentry / kprobe on `mark_oom_victim(struct task_struct *)`: kernels whose
    /// tracepoint passes no task (before 6.8).
    pub const SRC_FENTRY: u32 = 1 << 18;
    pub const SRC_KPROBE: u32 = 1 << 19;
    /// cgroup v1: the walk for `oom_memcg_*` also checked every level's memory+swap counter
    /// (`mem_cgroup.memsw`), so which limit was hit is the kernel's own reading.
    pub const MEMSW_WALKED: u32 = 1 << 20;
    /// `oom_memcg_*` are its memory+swap counter (`memory.memsw.limit_in_bytes` hit), not its
    /// memory counter.
    pub const OOM_MEMCG_MEMSW: u32 = 1 << 21;
}

pub const COMM_LEN: usize = 16;

/// A statistic the kernel does not count (or could not be read) in `victim_stats`/`oom_stats`.
pub const STAT_ABSENT: u32 = u32::MAX;

/// Wire layout of an OOM victim record in the `OOM_EVENTS` ring buffer. Sizes are in kB where
/// the kernel's own `mark_victim` tracepoint uses kB, in pages where the kernel counts pages.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OomVictimRecord {
    pub kind: u32,
    pub flags: u32,
    /// `bpf_ktime_get_boot_ns()` at the hook (CLOCK_BOOTTIME).
    pub ktime_boot_ns: u64,
    /// Cgroup id (kernfs node id = directory inode) of the victim's memory cgroup.
    pub victim_memcg_id: u64,
    /// Cgroup id of the memory cgroup of the task in whose context the kill ran.
    pub trigger_memcg_id: u64,
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    pub swap_ents: u64,
    pub pgtables_kb: u64,
    /// The victim memcg's `page_counter` usage and max, in pages, read at the hook.
    pub memcg_usage_pages: u64,
    pub memcg_limit_pages: u64,
    /// The nearest ancestor-or-self of the victim's memcg whose usage was within a charge
    /// batch of its limit: the memcg that hit its limit (none in a global OOM).
    pub oom_memcg_id: u64,
    pub oom_memcg_usage_pages: u64,
    pub oom_memcg_limit_pages: u64,
    /// Levels above the victim's memcg (0 = the victim's own).
    pub oom_memcg_depth: u32,
    /// The kernel stack at the kill, an id in the `OOM_STACKS` map; negative: none.
    pub kernel_stack: i32,
    /// Victim thread id (`task->pid`) and process id (`task->tgid`).
    pub victim_pid: u32,
    pub victim_tgid: u32,
    pub victim_uid: u32,
    pub oom_score_adj: i32,
    pub trigger_pid: u32,
    pub trigger_tgid: u32,
    pub victim_comm: [u8; COMM_LEN],
    pub trigger_comm: [u8; COMM_LEN],
    /// The memory breakdown (`crate::memcg_stat::item` order, in pages, saturated below
    /// [`STAT_ABSENT`]) of the victim's memcg and of the OOM memcg, read at the hook.
    pub victim_stats: [u32; MEMCG_STAT_ITEMS],
    pub oom_stats: [u32; MEMCG_STAT_ITEMS],
}

/// Size of one record on the wire; the decoder refuses any other length.
pub const OOM_VICTIM_RECORD_LEN: usize = core::mem::size_of::<OomVictimRecord>();

impl OomVictimRecord {
    pub const fn zeroed() -> Self {
        Self {
            kind: KIND_OOM_VICTIM,
            flags: 0,
            ktime_boot_ns: 0,
            victim_memcg_id: 0,
            trigger_memcg_id: 0,
            total_vm_kb: 0,
            anon_rss_kb: 0,
            file_rss_kb: 0,
            shmem_rss_kb: 0,
            swap_ents: 0,
            pgtables_kb: 0,
            memcg_usage_pages: 0,
            memcg_limit_pages: 0,
            oom_memcg_id: 0,
            oom_memcg_usage_pages: 0,
            oom_memcg_limit_pages: 0,
            oom_memcg_depth: 0,
            kernel_stack: -1,
            victim_pid: 0,
            victim_tgid: 0,
            victim_uid: 0,
            oom_score_adj: 0,
            trigger_pid: 0,
            trigger_tgid: 0,
            victim_comm: [0; COMM_LEN],
            trigger_comm: [0; COMM_LEN],
            victim_stats: [STAT_ABSENT; MEMCG_STAT_ITEMS],
            oom_stats: [STAT_ABSENT; MEMCG_STAT_ITEMS],
        }
    }
}

// The decoder reads the fields in this order; keep the layout free of padding.
const _: () =
    assert!(OOM_VICTIM_RECORD_LEN == 8 + 8 * 14 + 4 * 2 + 4 * 6 + 2 * COMM_LEN + 2 * 4 * MEMCG_STAT_ITEMS);
