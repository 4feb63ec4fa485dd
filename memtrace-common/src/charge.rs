//! Charge accounting: per-cgroup counters kept in the kernel (per-CPU, no ring-buffer record
//! per charge) and sampled stacks. Userspace reads the maps once a second.

use crate::oom::COMM_LEN;

/// Per cgroup, per CPU. Userspace sums over CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChargeCounters {
    /// Cgroup id of the memcg this entry counts (the map is keyed by `mem_cgroup *`).
    pub cgroup_id: u64,
    /// Charge calls (fentry/kprobe try_charge_memcg; v1 `PGPGIN` memcg events).
    pub charge_events: u64,
    /// Pages charged, where the hook sees them (try_charge_memcg's `nr_pages`).
    pub charged_pages: u64,
    /// Uncharge events (v1 `PGPGOUT`).
    pub uncharge_events: u64,
    /// Page faults of tasks in the cgroup (`PGFAULT` / `PGMAJFAULT` memcg events).
    pub faults: u64,
    pub major_faults: u64,
    /// memcg direct reclaim (vmscan:mm_vmscan_memcg_reclaim_begin/end): a charge that hit the
    /// limit and had to reclaim before it could go on.
    pub reclaim_stalls: u64,
    pub reclaim_ns: u64,
    /// Stacks sampled for this cgroup.
    pub stack_samples: u64,
    /// `memcg->memory` usage and max in pages at this CPU's last sample of the cgroup (sampled
    /// mode and reclaim ends), and when (CLOCK_BOOTTIME ns; 0: never).
    pub usage_pages: u64,
    pub limit_pages: u64,
    pub seen_ns: u64,
}

/// Which memcg event items to count and when to sample a stack, patched by userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChargeConfig {
    /// `enum vm_event_item` values, from BTF (they move with kernel config).
    pub ev_pgpgin: u32,
    pub ev_pgpgout: u32,
    pub ev_pgfault: u32,
    pub ev_pgmajfault: u32,
    /// The item whose events are sampled for stacks (PGPGIN on cgroup v1, PGFAULT on v2).
    pub sample_item: u32,
    /// Sample one stack every this many charge events per CPU; 0: no stacks. In sampled mode
    /// (the page-fault perf event), non-zero means "take a stack with each sample".
    pub sample_every: u32,
    /// Sampled mode: page faults per perf-event sample, added to `faults` per sample.
    pub fault_period: u32,
    /// Pages in a PMD-sized transparent huge page (512 with 4 KiB pages on x86-64); 0: the
    /// kernel has none. A huge-page fault weighs this many small ones when sampling stacks.
    pub pmd_pages: u32,
}

impl ChargeConfig {
    pub const fn default_config() -> Self {
        Self {
            ev_pgpgin: 0,
            ev_pgpgout: 1,
            ev_pgfault: 23,
            ev_pgmajfault: 24,
            sample_item: 0,
            sample_every: 0,
            fault_period: 0,
            pmd_pages: 0,
        }
    }
}

/// Set in a `StackKey` stack id that lives in `STACKS_SPILL`, not `STACKS` (ids there are
/// below 16,384).
pub const STACK_SPILLED: i32 = 1 << 30;

/// Key of the sampled-stack counts: who charged, from where.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StackKey {
    pub cgroup_id: u64,
    pub tgid: u32,
    /// Stack ids in the `STACKS` map; negative: not captured.
    pub kernel_stack: i32,
    pub user_stack: i32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

/// A process the sampler saw for the first time since the last drain (`STACK_TASKS` ring):
/// userspace records its executable mappings unless it has them for this same process already.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StackTask {
    pub tgid: u32,
    /// Why it was sent: [`STACK_TASK_SAMPLED`] or [`STACK_TASK_EXEC`].
    pub kind: u32,
    /// The group leader's `start_time`; 0 when the kernel layout lacks it.
    pub start_ns: u64,
    /// The `mm_struct` address, an identity only (exec gives a process a new one); 0 when
    /// unknown.
    pub mm: u64,
}

/// Sent because one of its stacks was sampled: its mappings are complete.
pub const STACK_TASK_SAMPLED: u32 = 0;
/// Sent at exec (a cgroup in `EXEC_CGROUPS`): the binary and ld.so are mapped, the shared
/// libraries not yet, so a later sample is read again.
pub const STACK_TASK_EXEC: u32 = 1;
/// Entries of the `EXEC_CGROUPS` map; userspace keeps at most this many cgroups there.
pub const EXEC_CGROUPS_MAX: u32 = 1024;

impl StackTask {
    pub const SIZE: usize = core::mem::size_of::<Self>();
}

/// A process still charging is sent to `STACK_TASKS` again this often, so that userspace,
/// which forgets the oldest processes first, keeps its mappings.
pub const STACK_TASK_RESEND_NS: u64 = 30_000_000_000;

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(C)] plain integers and byte arrays, no padding left implicit.
    unsafe impl aya::Pod for super::ChargeCounters {}
    unsafe impl aya::Pod for super::ChargeConfig {}
    unsafe impl aya::Pod for super::StackKey {}
}

const _: () = assert!(core::mem::size_of::<StackKey>() == 8 + 4 * 4 + COMM_LEN);
const _: () = assert!(core::mem::size_of::<ChargeCounters>() == 12 * 8);
const _: () = assert!(core::mem::size_of::<StackTask>() == 24);
