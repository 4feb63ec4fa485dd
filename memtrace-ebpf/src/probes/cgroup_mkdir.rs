//! `cgroup:cgroup_mkdir` (kernel/cgroup/cgroup.c cgroup_mkdir -> TRACE_CGROUP_PATH): the id and
//! path of every new cgroup, so userspace can name a cgroup that is gone by the time one of
//! its kills is reported.

use aya_ebpf::{
    EbpfContext, helpers::bpf_probe_read_kernel_str_bytes, macros::tracepoint, programs::TracePointContext,
};
use memtrace_common::{
    cgroup::{CGROUP_PATH_LEN, CgroupMkdirRecord, KIND_CGROUP_MKDIR, flags},
    counters::CGROUP_RINGBUF_FULL,
    layout::{ABSENT, CgroupMkdirTpLayout},
};

use crate::{
    kernel::read,
    maps::{CGROUP_EVENTS, bump},
};

#[unsafe(no_mangle)]
static CGROUP_MKDIR_TP: CgroupMkdirTpLayout = CgroupMkdirTpLayout::absent();

macro_rules! tp_off {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const CGROUP_MKDIR_TP.$field) }
    };
}

#[tracepoint(category = "cgroup", name = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: TracePointContext) -> u32 {
    match try_cgroup_mkdir(&ctx) {
        Ok(ret) | Err(ret) => ret,
    }
}

fn try_cgroup_mkdir(ctx: &TracePointContext) -> Result<u32, u32> {
    let base = ctx.as_ptr() as *const u8;
    let path_off = tp_off!(path);
    let (Ok(root), Ok(id), Ok(loc)) = (
        read::<i32>(base, tp_off!(root)),
        read::<u64>(base, tp_off!(id)),
        read::<u32>(base, path_off),
    ) else {
        return Err(0);
    };
    if path_off == ABSENT {
        return Err(0);
    }
    let Some(mut entry) = CGROUP_EVENTS.reserve::<CgroupMkdirRecord>(0) else {
        bump(CGROUP_RINGBUF_FULL);
        return Err(0);
    };
    // SAFETY: a reservation of the record's size; every field is written before submit.
    let rec = unsafe { &mut *entry.as_mut_ptr() };
    rec.kind = KIND_CGROUP_MKDIR;
    rec.flags = 0;
    rec.root = root as u32;
    rec.level = read::<i32>(base, tp_off!(level)).unwrap_or(-1) as u32;
    rec.id = id;
    // The record is reserved, not zeroed: bpf_probe_read_kernel_str NUL-terminates what it
    // copies, and the decoder stops at the first NUL.
    let src = base.wrapping_add((loc & 0xffff) as usize);
    match unsafe { bpf_probe_read_kernel_str_bytes(src, &mut rec.path) } {
        // A string that filled the buffer may have been cut short.
        Ok(s) if s.len() + 1 >= CGROUP_PATH_LEN => rec.flags |= flags::PATH_TRUNCATED,
        Ok(_) => {}
        Err(_) => rec.path[0] = 0,
    }
    entry.submit(0);
    Ok(0)
}
