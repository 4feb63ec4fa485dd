//! Decoding of the `KILL_SIGNALS` ring's records (`memtrace_common::user_kill`): a SIGKILL one
//! userspace process sent to another. Length-checked, read field by field, never transmuted.

use bytes::Buf;
use memtrace_common::{
    oom::COMM_LEN,
    user_kill::{KIND_USER_KILL, USER_KILL_RECORD_LEN, flags},
};

use crate::kernel::records::{DecodeError, comm, record_header};

/// A process, as the kernel named it at the signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub tgid: u32,
    pub comm: String,
    /// Its memory cgroup's id, when the program could read it.
    pub memcg_id: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserKillSignal {
    pub ktime_boot_ns: u64,
    pub sender: Task,
    /// `None` when the target's task could not be read (it is then unknown which was killed).
    pub target: Option<Task>,
    pub si_code: i32,
    /// Sent to the whole thread group (kill(2)), not one thread (tgkill(2)).
    pub group: bool,
    /// The tracepoint's result: 0 delivered, 2 already pending (a second SIGKILL).
    pub result: i32,
}

impl TryFrom<&[u8]> for UserKillSignal {
    type Error = DecodeError;

    fn try_from(raw: &[u8]) -> Result<Self, Self::Error> {
        let (f, mut b) = record_header(raw, USER_KILL_RECORD_LEN, KIND_USER_KILL)?;
        let ktime_boot_ns = b.get_u64_le();
        let sender_memcg = b.get_u64_le();
        let target_memcg = b.get_u64_le();
        let (sender_pid, sender_tgid) = (b.get_u32_le(), b.get_u32_le());
        let (target_pid, target_tgid) = (b.get_u32_le(), b.get_u32_le());
        let _sig = b.get_i32_le();
        let si_code = b.get_i32_le();
        let result = b.get_i32_le();
        let group = b.get_i32_le() != 0;
        let (sender_comm, target_comm) = b.split_at(COMM_LEN);
        Ok(Self {
            ktime_boot_ns,
            sender: Task {
                pid: sender_pid,
                tgid: sender_tgid,
                comm: comm(sender_comm),
                memcg_id: (f & flags::HAS_SENDER_MEMCG != 0).then_some(sender_memcg),
            },
            target: (f & flags::HAS_TARGET_TASK != 0).then(|| Task {
                pid: target_pid,
                tgid: target_tgid,
                comm: comm(&target_comm[..COMM_LEN]),
                memcg_id: (f & flags::HAS_TARGET_MEMCG != 0).then_some(target_memcg),
            }),
            si_code,
            group,
            result,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(f: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&KIND_USER_KILL.to_le_bytes());
        v.extend_from_slice(&f.to_le_bytes());
        for x in [77u64, 11, 22] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        for x in [100u32, 100, 201, 200] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        for x in [9i32, 0, 0, 1] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.extend_from_slice(b"earlyoom\0\0\0\0\0\0\0\0");
        v.extend_from_slice(b"memtrace-alloc\0\0");
        v
    }

    #[test]
    fn decodes_field_by_field() {
        let k = UserKillSignal::try_from(&wire(flags::HAS_TARGET_TASK | flags::HAS_TARGET_MEMCG)[..])
            .expect("decodes");
        assert_eq!(k.sender.comm, "earlyoom");
        assert_eq!(k.sender.memcg_id, None, "flag not set");
        let t = k.target.expect("target");
        assert_eq!(
            (t.pid, t.tgid, t.comm.as_str(), t.memcg_id),
            (201, 200, "memtrace-alloc", Some(22))
        );
        assert!(k.group);
    }

    #[test]
    fn bad_length_and_kind_are_errors() {
        let w = wire(0);
        assert!(matches!(
            UserKillSignal::try_from(&w[..w.len() - 1]),
            Err(DecodeError::Length { .. })
        ));
        let mut bad = w.clone();
        bad[0] = 1;
        assert_eq!(UserKillSignal::try_from(&bad[..]), Err(DecodeError::Kind(1)));
        assert!(UserKillSignal::try_from(&w[..]).expect("ok").target.is_none());
    }
}
