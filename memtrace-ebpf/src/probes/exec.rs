//! `sched:sched_process_exec` (fs/exec.c exec_binprm): a process that exec'd in a cgroup
//! userspace watches (`EXEC_CGROUPS`: near its limit, or the one `hotspots` samples) is
//! written to `STACK_TASKS` at once, so its mappings are read while it surely runs. The
//! charge sampler sees a process only at its first sampled fault, which for a fast grower
//! can be a few milliseconds before its kill: too late to read `/proc/<pid>/maps` in an
//! emulated guest, and its frames then stayed addresses. Every exec clears the process from
//! `TASKS_SENT`: at exec the shared libraries are not mapped yet (ld.so maps them later), and
//! a sample taken during exec read maps without the binary, so the first sample after it
//! sends the process again, and userspace reads it once more.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::tracepoint,
    programs::TracePointContext,
};
use memtrace_common::charge::STACK_TASK_EXEC;

use super::charge::send_task;
use crate::{
    kernel,
    maps::{EXEC_CGROUPS, TASKS_SENT},
};

#[tracepoint(category = "sched", name = "sched_process_exec")]
pub fn stack_exec(_ctx: TracePointContext) -> u32 {
    match try_stack_exec() {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_stack_exec() -> Result<u32, u32> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // Any exec: a stack sampled while exec built the new mm (its page tables are charged
    // before the binary is mapped) sent this process with maps that lack its binary; the next
    // sample sends it again, now that exec is done.
    // Looked up first: a delete takes the LRU map's locks, and most processes that exec were
    // never sampled.
    // SAFETY: presence only; the value is not read.
    if unsafe { TASKS_SENT.get(&tgid) }.is_some() {
        let _ = TASKS_SENT.remove(&tgid);
    }
    // SAFETY: the current task, valid for the duration of the program.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let memcg = kernel::task_memcg(task).map_err(|_| 0u32)?;
    let id = kernel::css_cgroup_id(memcg).map_err(|_| 0u32)?;
    // SAFETY: presence only; the value is not read.
    if unsafe { EXEC_CGROUPS.get(&id) }.is_none() {
        return Ok(0);
    }
    let (start_ns, mm) = kernel::process_identity(task);
    send_task(tgid, STACK_TASK_EXEC, start_ns, mm);
    Ok(0)
}
