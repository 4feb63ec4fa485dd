//! Kernel layouts handed to the eBPF programs as global variables at load time.
//!
//! Rust eBPF has no CO-RE relocations, so userspace resolves every struct offset the programs
//! need from the running kernel's BTF (`/sys/kernel/btf/vmlinux`) and every tracepoint field from
//! tracefs `format` files, then patches these globals before loading. A field the kernel does not
//! have is [`ABSENT`], and the program leaves the matching record field unset (and its flag clear).

/// Marks an offset the running kernel does not have.
pub const ABSENT: u32 = u32::MAX;

/// Byte offsets into kernel structs, from BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    /// `task_struct.pid`, `.tgid`, `.comm`, `.mm`, `.signal`, `.cgroups`.
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    pub task_mm: u32,
    pub task_signal: u32,
    pub task_cgroups: u32,
    /// `signal_struct.oom_score_adj` (a `short`).
    pub signal_oom_score_adj: u32,
    /// `mm_struct.total_vm` (pages), `.pgtables_bytes` (bytes), `.rss_stat`.
    pub mm_total_vm: u32,
    pub mm_pgtables_bytes: u32,
    pub mm_rss_stat: u32,
    /// Size of one `rss_stat` element (`struct percpu_counter` since 6.2, `atomic_long_t`
    /// before) and the offset of its approximate count (`percpu_counter.count`).
    pub mm_rss_stride: u32,
    pub mm_rss_count: u32,
    /// `enum { MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES }` values.
    pub mm_filepages: u32,
    pub mm_anonpages: u32,
    pub mm_swapents: u32,
    pub mm_shmempages: u32,
    /// `css_set.subsys` (array of `struct cgroup_subsys_state *`) and `memory_cgrp_id`.
    pub cset_subsys: u32,
    pub memory_cgrp_id: u32,
    /// `cgroup_subsys_state.cgroup`, `cgroup.kn`, `kernfs_node.id` (the cgroup id: the inode
    /// number of the cgroup's directory).
    pub css_cgroup: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    /// `mem_cgroup.memory` (a `struct page_counter`), `page_counter.usage`, `page_counter.max`.
    /// `mem_cgroup.css` is the first member, so a memory css pointer is the memcg pointer.
    pub memcg_memory: u32,
    pub page_counter_usage: u32,
    pub page_counter_max: u32,
    /// `page_counter.parent`: the ancestor memcg's counter (hierarchy walk to the OOM memcg).
    pub page_counter_parent: u32,
    /// `mem_cgroup.memsw` (a `struct page_counter`, in a union with v2's `swap` since 5.x):
    /// memory+swap. Set on cgroup v1 only, where try_charge_memcg charges it before `memory`.
    pub memcg_memsw: u32,
    /// `task_struct.flags` (PF_EXITING): a victim already exiting is marked by the OOM killer
    /// without being killed (mm/oom_kill.c task_will_free_mem).
    pub task_flags: u32,
    /// Byte offset in `struct mem_cgroup` of its local OOM-kill counter:
    /// `memory_events_local[MEMCG_OOM_KILL]` on cgroup v2, `memory_events[MEMCG_OOM_KILL]` on v1
    /// (where it is local). __oom_kill_process() raises it before mark_oom_victim(), so a mark
    /// that finds it unchanged killed nothing.
    pub memcg_oom_kills: u32,
    /// `struct oom_control` (include/linux/oom.h): `memcg` (NULL: global OOM), `gfp_mask`,
    /// `order`, `totalpages`, `chosen`, `chosen_points`, `constraint`.
    pub oc_memcg: u32,
    pub oc_gfp_mask: u32,
    pub oc_order: u32,
    pub oc_totalpages: u32,
    pub oc_chosen: u32,
    pub oc_chosen_points: u32,
    pub oc_constraint: u32,
    /// `task_struct.group_leader`: the plain tracepoint names its victim by pid only; a victim
    /// that is the current thread group's leader is read from here.
    pub task_group_leader: u32,
    /// `task_struct.real_cred` and `cred.uid` (a `kuid_t`, one u32): the victim's uid where
    /// the hook does not pass it (fentry/kprobe on mark_oom_victim).
    pub task_real_cred: u32,
    pub cred_uid: u32,
    /// `task_struct.start_time` (CLOCK_MONOTONIC ns): with the group leader's and the `mm`
    /// pointer, which exec replaces, it tells a process recorded already from a new one that
    /// reused its pid (the charge sampler's `STACK_TASKS` records).
    pub task_start_time: u32,
    /// `vm_fault.flags` (`FAULT_FLAG_WRITE`): a huge-page fault that only reads maps the huge
    /// zero page and charges nothing.
    pub vmf_flags: u32,
}

impl KernelLayout {
    pub const fn absent() -> Self {
        Self {
            task_pid: ABSENT,
            task_tgid: ABSENT,
            task_comm: ABSENT,
            task_mm: ABSENT,
            task_signal: ABSENT,
            task_cgroups: ABSENT,
            signal_oom_score_adj: ABSENT,
            mm_total_vm: ABSENT,
            mm_pgtables_bytes: ABSENT,
            mm_rss_stat: ABSENT,
            mm_rss_stride: ABSENT,
            mm_rss_count: ABSENT,
            mm_filepages: ABSENT,
            mm_anonpages: ABSENT,
            mm_swapents: ABSENT,
            mm_shmempages: ABSENT,
            cset_subsys: ABSENT,
            memory_cgrp_id: ABSENT,
            css_cgroup: ABSENT,
            cgroup_kn: ABSENT,
            kn_id: ABSENT,
            memcg_memory: ABSENT,
            page_counter_usage: ABSENT,
            page_counter_max: ABSENT,
            page_counter_parent: ABSENT,
            memcg_memsw: ABSENT,
            task_flags: ABSENT,
            memcg_oom_kills: ABSENT,
            oc_memcg: ABSENT,
            oc_gfp_mask: ABSENT,
            oc_order: ABSENT,
            oc_totalpages: ABSENT,
            oc_chosen: ABSENT,
            oc_chosen_points: ABSENT,
            oc_constraint: ABSENT,
            task_group_leader: ABSENT,
            task_real_cred: ABSENT,
            cred_uid: ABSENT,
            task_start_time: ABSENT,
            vmf_flags: ABSENT,
        }
    }
}

/// Field offsets of the `oom:mark_victim` tracepoint record, from
/// `/sys/kernel/tracing/events/oom/mark_victim/format`. Kernels before 6.8 have `pid` only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MarkVictimTpLayout {
    pub pid: u32,
    /// `__data_loc char[] comm`: a u32 whose low 16 bits are the string's offset in the record.
    pub comm: u32,
    pub total_vm: u32,
    pub anon_rss: u32,
    pub file_rss: u32,
    pub shmem_rss: u32,
    pub uid: u32,
    pub pgtables: u32,
    pub oom_score_adj: u32,
}

impl MarkVictimTpLayout {
    pub const fn absent() -> Self {
        Self {
            pid: ABSENT,
            comm: ABSENT,
            total_vm: ABSENT,
            anon_rss: ABSENT,
            file_rss: ABSENT,
            shmem_rss: ABSENT,
            uid: ABSENT,
            pgtables: ABSENT,
            oom_score_adj: ABSENT,
        }
    }
}

/// Field offsets of the `cgroup:cgroup_mkdir` tracepoint record, from tracefs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupMkdirTpLayout {
    pub root: u32,
    pub level: u32,
    pub id: u32,
    /// `__data_loc char[] path`.
    pub path: u32,
}

impl CgroupMkdirTpLayout {
    pub const fn absent() -> Self {
        Self {
            root: ABSENT,
            level: ABSENT,
            id: ABSENT,
            path: ABSENT,
        }
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: both are #[repr(C)] structs of u32 only: no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::KernelLayout {}
    unsafe impl aya::Pod for super::MarkVictimTpLayout {}
    unsafe impl aya::Pod for super::CgroupMkdirTpLayout {}
}
