//! `oom_kill_process(struct oom_control *oc, const char *message)` (mm/oom_kill.c): the OOM
//! killer's decision. fentry where the kernel allows it, else kprobe; neither works on kernels
//! without kprobes and with fentry refused, where `mark_victim` alone carries the kill.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_boot_ns},
    macros::{fentry, kprobe},
    programs::{FEntryContext, ProbeContext},
};
use memtrace_common::{
    counters::{OOM_CTX_RINGBUF_FULL, OOM_CTX_SEEN, OOM_READ_ERRORS},
    oom_context::{OomContextRecord, flags},
};

use crate::{
    kernel::{self, off, read},
    maps::{OOM_EVENTS, bump},
};

#[fentry(function = "oom_kill_process")]
pub fn oom_ctx_fentry(ctx: FEntryContext) -> u32 {
    match try_oom_context(ctx.arg(0), flags::SRC_FENTRY) {
        Ok(ret) | Err(ret) => ret,
    }
}

#[kprobe]
pub fn oom_ctx_kprobe(ctx: ProbeContext) -> u32 {
    let Some(oc) = ctx.arg::<*const u8>(0) else {
        return 0;
    };
    match try_oom_context(oc, flags::SRC_KPROBE) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_oom_context(oc: *const u8, src: u32) -> Result<u32, u32> {
    bump(OOM_CTX_SEEN);
    let Some(mut entry) = OOM_EVENTS.reserve::<OomContextRecord>(0) else {
        bump(OOM_CTX_RINGBUF_FULL);
        return Err(0);
    };
    let mut rec = OomContextRecord::zeroed();
    rec.flags = src;
    rec.ktime_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    rec.trigger_pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let mut ok = true;
    match read::<*const u8>(oc, off!(oc_memcg)) {
        Ok(memcg) if !memcg.is_null() => {
            rec.flags |= flags::MEMCG;
            match kernel::css_cgroup_id(memcg) {
                Ok(id) => rec.memcg_id = id,
                Err(_) => ok = false,
            }
        }
        Ok(_) => {}
        Err(_) => ok = false,
    }
    match (
        read::<u64>(oc, off!(oc_totalpages)),
        read::<i64>(oc, off!(oc_chosen_points)),
        read::<u32>(oc, off!(oc_gfp_mask)),
        read::<i32>(oc, off!(oc_order)),
        read::<u32>(oc, off!(oc_constraint)),
    ) {
        (Ok(total), Ok(points), Ok(gfp), Ok(order), Ok(constraint)) => {
            rec.totalpages = total;
            rec.chosen_points = points;
            rec.gfp_mask = gfp;
            rec.order = order;
            rec.constraint = constraint;
        }
        _ => ok = false,
    }
    if let Ok(chosen) = read::<*const u8>(oc, off!(oc_chosen)) {
        rec.chosen_pid = read::<i32>(chosen, off!(task_pid)).unwrap_or(0) as u32;
        rec.chosen_tgid = read::<i32>(chosen, off!(task_tgid)).unwrap_or(0) as u32;
    }
    if !ok {
        rec.flags |= flags::READ_ERROR;
        bump(OOM_READ_ERRORS);
    }
    entry.write(rec);
    entry.submit(0);
    Ok(0)
}
