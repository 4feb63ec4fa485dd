//! Decoding of the records the eBPF programs write to the ring buffer.
//!
//! Never a transmute: each record is length-checked, then read field by field in the order of
//! `memtrace_common::oom::OomVictimRecord` (little-endian, as the bpfel target writes it), and
//! the `flags` bits decide which fields are meaningful.

use bytes::Buf;
use memtrace_common::{
    cgroup::{CGROUP_MKDIR_RECORD_LEN, CGROUP_PATH_LEN, KIND_CGROUP_MKDIR, flags as cgroup_flags},
    oom_context::{KIND_OOM_CONTEXT, OOM_CONTEXT_RECORD_LEN, flags as ctx_flags},
};
use serde::Serialize;

use crate::kernel::hooks::AttachKind;

mod victim;

pub use victim::{LimitKind, OomCallPath, OomMemcg, RecordStats, RssKb, StatPages, VictimRecord};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {got} bytes, expected {want}")]
    Length { got: usize, want: usize },
    #[error("unknown record kind {0}")]
    Kind(u32),
    #[error("record names no hook variant (flags {0:#x})")]
    Source(u32),
}

/// Which program produced a record: the attach kind of the OOM hook that wrote it (never
/// perf_event). One enum with the hooks' own, so that a record and `memtrace probes` name a
/// kind the same way.
pub type HookSource = AttachKind;

/// A NUL-terminated kernel `comm`, as text.
pub(crate) fn comm(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Checks a record's length and kind; returns its flags and the fields after them.
pub(crate) fn record_header(raw: &[u8], len: usize, kind: u32) -> Result<(u32, &[u8]), DecodeError> {
    if raw.len() != len {
        return Err(DecodeError::Length {
            got: raw.len(),
            want: len,
        });
    }
    let mut b = raw;
    let got = b.get_u32_le();
    if got != kind {
        return Err(DecodeError::Kind(got));
    }
    let f = b.get_u32_le();
    Ok((f, b))
}

/// `enum oom_constraint` (include/linux/oom.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelConstraint {
    None,
    Cpuset,
    MemoryPolicy,
    Memcg,
    Unknown(u32),
}

impl From<u32> for KernelConstraint {
    fn from(v: u32) -> Self {
        match v {
            0 => Self::None,
            1 => Self::Cpuset,
            2 => Self::MemoryPolicy,
            3 => Self::Memcg,
            other => Self::Unknown(other),
        }
    }
}

/// One decoded `oom_kill_process` record: the OOM killer's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomContext {
    pub ktime_boot_ns: u64,
    /// `oc->memcg`'s cgroup id; `None` for a global OOM.
    pub memcg_id: Option<u64>,
    pub totalpages: u64,
    pub chosen_points: i64,
    pub gfp_mask: u32,
    pub order: i32,
    pub constraint: KernelConstraint,
    pub chosen_pid: u32,
    pub chosen_tgid: u32,
    pub trigger_tgid: u32,
    pub read_error: bool,
}

impl TryFrom<&[u8]> for OomContext {
    type Error = DecodeError;

    fn try_from(raw: &[u8]) -> Result<Self, Self::Error> {
        let (f, mut b) = record_header(raw, OOM_CONTEXT_RECORD_LEN, KIND_OOM_CONTEXT)?;
        if f & (ctx_flags::SRC_FENTRY | ctx_flags::SRC_KPROBE) == 0 {
            return Err(DecodeError::Source(f));
        }
        let ktime_boot_ns = b.get_u64_le();
        let memcg_id = b.get_u64_le();
        Ok(Self {
            ktime_boot_ns,
            memcg_id: (f & ctx_flags::MEMCG != 0).then_some(memcg_id),
            totalpages: b.get_u64_le(),
            chosen_points: b.get_i64_le(),
            gfp_mask: b.get_u32_le(),
            order: b.get_i32_le(),
            constraint: KernelConstraint::from(b.get_u32_le()),
            chosen_pid: b.get_u32_le(),
            chosen_tgid: b.get_u32_le(),
            trigger_tgid: b.get_u32_le(),
            read_error: f & ctx_flags::READ_ERROR != 0,
        })
    }
}

/// Anything the OOM ring buffer carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OomRecord {
    /// Boxed: several times the size of a context record.
    Victim(Box<VictimRecord>),
    Context(OomContext),
}

impl TryFrom<&[u8]> for OomRecord {
    type Error = DecodeError;

    fn try_from(raw: &[u8]) -> Result<Self, Self::Error> {
        let kind = raw.get(..4).map(|mut k| k.get_u32_le());
        match kind {
            Some(KIND_OOM_CONTEXT) => OomContext::try_from(raw).map(Self::Context),
            _ => VictimRecord::try_from(raw).map(|v| Self::Victim(Box::new(v))),
        }
    }
}

/// A cgroup was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupCreated {
    /// Hierarchy id (0: the cgroup2 default hierarchy).
    pub root: u32,
    pub id: u64,
    /// Relative to the hierarchy root; `None` when the kernel's path did not fit.
    pub path: Option<String>,
}

impl TryFrom<&[u8]> for CgroupCreated {
    type Error = DecodeError;

    fn try_from(raw: &[u8]) -> Result<Self, Self::Error> {
        let (f, mut b) = record_header(raw, CGROUP_MKDIR_RECORD_LEN, KIND_CGROUP_MKDIR)?;
        let root = b.get_u32_le();
        let _level = b.get_u32_le();
        let id = b.get_u64_le();
        let path = comm(&b[..CGROUP_PATH_LEN]);
        let truncated = f & cgroup_flags::PATH_TRUNCATED != 0;
        Ok(Self {
            root,
            id,
            path: (!truncated && path.starts_with('/')).then_some(path),
        })
    }
}

#[cfg(test)]
mod tests;
