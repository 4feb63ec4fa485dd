//! One file per hook. Each program fills the same record types from `memtrace_common`.
//!
//! | file                  | kernel hook                                                        |
//! |-----------------------|--------------------------------------------------------------------|
//! | `mark_victim.rs`      | `mark_oom_victim` / `oom:mark_victim`: the kill record            |
//! | `oom_kill_process.rs` | `oom_kill_process`: the OOM context (constraint, memcg, order)    |
//! | `charge.rs`           | `try_charge_memcg` and `memcg:count_memcg_events`: charge counters |
//! | `charge_sample.rs`    | software perf event, one page fault in N: sampled charge counters |
//! | `reclaim.rs`          | `vmscan:mm_vmscan_memcg_reclaim_begin/end`: reclaim stalls        |
//! | `cgroup_mkdir.rs`     | `cgroup:cgroup_mkdir`: cgroup id → path for new cgroups           |
//! | `signal_generate.rs`  | `signal:signal_generate`: SIGKILLs sent from userspace             |
//! | `exec.rs`             | `sched:sched_process_exec`: mappings of processes in watched cgroups |
//! | `thp_fault.rs`        | `do_huge_pmd_anonymous_page`: huge-page faults, weighted stacks    |

mod cgroup_mkdir;
mod charge;
mod charge_sample;
mod exec;
mod mark_victim;
mod oom_kill_process;
mod reclaim;
mod signal_generate;
mod thp_fault;
