//! A SIGKILL that one userspace process sent to another (`signal:signal_generate`): how a
//! userspace memory killer (earlyoom, systemd-oomd, nohang, a kubelet eviction) ends a process.
//! Kernel-sent SIGKILLs, the OOM killer's own among them, never make a record.

use crate::oom::COMM_LEN;

pub const KIND_USER_KILL: u32 = 4;

pub mod flags {
    /// `sender_memcg_id` / `target_memcg_id` were read.
    pub const HAS_SENDER_MEMCG: u32 = 1 << 0;
    pub const HAS_TARGET_MEMCG: u32 = 1 << 1;
    /// The target's pid, tgid and comm were read from its task.
    pub const HAS_TARGET_TASK: u32 = 1 << 2;
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UserKillRecord {
    pub kind: u32,
    pub flags: u32,
    pub ktime_boot_ns: u64,
    pub sender_memcg_id: u64,
    pub target_memcg_id: u64,
    pub sender_pid: u32,
    pub sender_tgid: u32,
    pub target_pid: u32,
    pub target_tgid: u32,
    pub sig: i32,
    /// `si_code`: SI_USER (0) from kill(2)/pidfd_send_signal(2), SI_TKILL (-6) from tgkill(2)...
    pub code: i32,
    /// The tracepoint's `result` (TRACE_SIGNAL_DELIVERED 0, ..._ALREADY_PENDING 2, ...).
    pub result: i32,
    /// Sent to the whole thread group.
    pub group: i32,
    pub sender_comm: [u8; COMM_LEN],
    pub target_comm: [u8; COMM_LEN],
}

pub const USER_KILL_RECORD_LEN: usize = core::mem::size_of::<UserKillRecord>();
const _: () = assert!(USER_KILL_RECORD_LEN == 8 + 8 * 3 + 4 * 8 + 2 * COMM_LEN);

impl UserKillRecord {
    pub const fn zeroed() -> Self {
        Self {
            kind: KIND_USER_KILL,
            flags: 0,
            ktime_boot_ns: 0,
            sender_memcg_id: 0,
            target_memcg_id: 0,
            sender_pid: 0,
            sender_tgid: 0,
            target_pid: 0,
            target_tgid: 0,
            sig: 0,
            code: 0,
            result: 0,
            group: 0,
            sender_comm: [0; COMM_LEN],
            target_comm: [0; COMM_LEN],
        }
    }
}
