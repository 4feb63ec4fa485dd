//! `signal:signal_generate(int sig, struct kernel_siginfo *info, struct task_struct *task,
//! int group, int result)` (include/trace/events/signal.h): SIGKILLs sent from userspace to
//! another process, the way a userspace memory killer ends one. The filter runs first and
//! costs two compares for every other signal: only SIGKILL, only a userspace `si_code`
//! (the OOM killer's own kill is SEND_SIG_PRIV, SI_KERNEL), never a process killing itself.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_boot_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use memtrace_common::{
    counters::{USER_KILL_RINGBUF_FULL, USER_KILL_SEEN},
    user_kill::{UserKillRecord, flags},
};

use crate::{
    kernel::{self, off, read},
    maps::{KILL_SIGNALS, bump},
};

const SIGKILL: i32 = 9;
/// include/uapi/asm-generic/siginfo.h: codes above 0 are the kernel's.
const SI_KERNEL: i32 = 0x80;
/// include/linux/sched/signal.h: special `info` pointers.
const SEND_SIG_NOINFO: usize = 0;
const SEND_SIG_PRIV: usize = 1;
/// `kernel_siginfo.si_code`: after si_signo and si_errno (include/uapi/asm-generic/siginfo.h
/// __SIGINFO; MIPS swaps errno and code, and memtrace is x86_64/arm64 only).
const SI_CODE_OFFSET: u32 = 8;

#[btf_tracepoint(function = "signal_generate")]
pub fn user_kill_btf(ctx: BtfTracePointContext) -> u32 {
    match try_user_kill(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

#[inline(always)]
fn try_user_kill(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    let sig: i32 = ctx.arg(0);
    if sig != SIGKILL {
        return Ok(0);
    }
    // As TP_STORE_SIGINFO decides the tracepoint's `code`.
    let info: usize = ctx.arg(1);
    let code = match info {
        SEND_SIG_NOINFO => 0,
        SEND_SIG_PRIV => SI_KERNEL,
        p => read::<i32>(p as *const u8, SI_CODE_OFFSET).unwrap_or(SI_KERNEL),
    };
    if code > 0 {
        return Ok(0);
    }
    let task: *const u8 = ctx.arg(2);
    let sender = bpf_get_current_pid_tgid();
    let sender_tgid = (sender >> 32) as u32;
    // Plain integers, not a Result kept across the reserve below: LLVM spilled the Result's
    // payload unwritten on its error path, and 5.10's verifier refuses reading uninitialised
    // stack ("invalid read from stack"), newer ones allow it for privileged programs.
    let mut target_tgid: u32 = 0;
    let has_tgid = match read::<i32>(task, off!(task_tgid)) {
        Ok(t) => {
            target_tgid = t as u32;
            true
        }
        Err(_) => false,
    };
    if has_tgid && target_tgid == sender_tgid {
        return Ok(0);
    }
    bump(USER_KILL_SEEN);
    let Some(mut entry) = KILL_SIGNALS.reserve::<UserKillRecord>(0) else {
        bump(USER_KILL_RINGBUF_FULL);
        return Err(0);
    };
    let mut rec = UserKillRecord::zeroed();
    rec.ktime_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    rec.sig = sig;
    rec.code = code;
    rec.group = ctx.arg(3);
    rec.result = ctx.arg(4);
    rec.sender_pid = sender as u32;
    rec.sender_tgid = sender_tgid;
    rec.sender_comm = bpf_get_current_comm().unwrap_or([0; 16]);
    if has_tgid
        && let Ok(pid) = read::<i32>(task, off!(task_pid))
        && kernel::read_comm(task, &mut rec.target_comm).is_ok()
    {
        rec.target_pid = pid as u32;
        rec.target_tgid = target_tgid;
        rec.flags |= flags::HAS_TARGET_TASK;
    }
    let current = unsafe { bpf_get_current_task() } as *const u8;
    if let Ok(id) = kernel::task_memcg(current).and_then(kernel::css_cgroup_id) {
        rec.sender_memcg_id = id;
        rec.flags |= flags::HAS_SENDER_MEMCG;
    }
    if let Ok(id) = kernel::task_memcg(task).and_then(kernel::css_cgroup_id) {
        rec.target_memcg_id = id;
        rec.flags |= flags::HAS_TARGET_MEMCG;
    }
    entry.write(rec);
    entry.submit(0);
    Ok(0)
}
