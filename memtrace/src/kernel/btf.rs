//! Struct offsets from the running kernel's BTF, for the eBPF programs (which have no CO-RE).
//!
//! Each offset the programs need is looked up by name, descending through anonymous structs and
//! unions (e.g. most of `mm_struct` sits in an anonymous struct since 6.x). What the kernel lacks
//! is left `ABSENT` and listed in [`Resolved::missing`], so `memtrace probes` can say so.

use std::path::{Path, PathBuf};

use btf_rs::{Btf, Type};
use memtrace_common::layout::{ABSENT, KernelLayout};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Hidden, for tests: read the kernel BTF from this file instead (a path that does not exist
/// simulates a kernel built without BTF). See docs/bad-input.md.
pub const BTF_PATH_ENV: &str = "MEMTRACE_BTF_PATH";

/// Where the kernel's BTF is read from: [`VMLINUX_BTF`], unless [`BTF_PATH_ENV`] says otherwise.
pub fn vmlinux_path() -> PathBuf {
    std::env::var_os(BTF_PATH_ENV).map_or_else(|| VMLINUX_BTF.into(), PathBuf::from)
}

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("{path}: kernel BTF not found; memtrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")]
    Missing { path: PathBuf },
    #[error("{path}: could not read kernel BTF: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: could not parse kernel BTF: {source}")]
    Parse { path: PathBuf, source: btf_rs::Error },
}

/// The kernel's BTF, read once: the bytes stay until aya's loader takes them (tp_btf and
/// fentry targets), so the file is not read twice.
pub struct KernelBtf {
    pub(super) btf: Btf,
    bytes: Option<Vec<u8>>,
}

/// A resolved layout and the fields that could not be resolved.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub layout: KernelLayout,
    pub missing: Vec<&'static str>,
}

impl KernelBtf {
    pub fn load(path: &Path) -> Result<Self, BtfError> {
        if !path.exists() {
            return Err(BtfError::Missing {
                path: path.to_owned(),
            });
        }
        let bytes = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.to_owned(),
            source,
        })?;
        let btf = Btf::from_bytes(&bytes).map_err(|source| BtfError::Parse {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            btf,
            bytes: Some(bytes),
        })
    }

    /// The raw BTF as read, once, so aya parses the same bytes instead of reading the file
    /// again; taken, so they are freed as soon as aya has parsed them (peak RSS).
    pub fn take_bytes(&mut self) -> Option<Vec<u8>> {
        self.bytes.take()
    }

    /// The running kernel's BTF: [`vmlinux_path`].
    pub fn from_sys() -> Result<Self, BtfError> {
        Self::load(&vmlinux_path())
    }

    /// Is `name` a function the kernel has BTF for (attachable by fentry / tp_btf targets)?
    pub fn has_function(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(name)
            .is_ok_and(|types| types.iter().any(|t| matches!(t, Type::Func(_))))
    }

    /// Does tracepoint `event` pass a `struct <strukt> *` as its first argument? Its
    /// prototype is the BTF typedef `btf_trace_<event>`: `void (*)(void *, args...)`.
    pub fn tracepoint_first_arg_is(&self, event: &str, strukt: &str) -> bool {
        let proto = (|| {
            let ty = self
                .btf
                .resolve_types_by_name(&format!("btf_trace_{event}"))
                .ok()?
                .into_iter()
                .next()?;
            match self.strip(ty)? {
                Type::Ptr(p) => match self.btf.resolve_chained_type(&p).ok()? {
                    Type::FuncProto(f) => Some(f),
                    _ => None,
                },
                _ => None,
            }
        })();
        let Some(proto) = proto else { return false };
        let Some(param) = proto.parameters.get(1) else {
            return false;
        };
        match self
            .btf
            .resolve_chained_type(param)
            .ok()
            .and_then(|t| self.strip(t))
        {
            Some(Type::Ptr(p)) => match self.btf.resolve_chained_type(&p).ok().and_then(|t| self.strip(t)) {
                Some(Type::Struct(s)) => self.btf.resolve_name(&s).is_ok_and(|n| n == strukt),
                _ => false,
            },
            _ => false,
        }
    }

    fn named_struct(&self, name: &str) -> Option<btf_rs::Struct> {
        self.btf
            .resolve_types_by_name(name)
            .ok()?
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) => Some(s),
                _ => None,
            })
    }

    /// Follows typedefs and qualifiers to the underlying type.
    pub(super) fn strip(&self, mut ty: Type) -> Option<Type> {
        for _ in 0..16 {
            ty = match ty {
                Type::Typedef(t) => self.btf.resolve_chained_type(&t).ok()?,
                Type::Const(t) | Type::Volatile(t) | Type::Restrict(t) => {
                    self.btf.resolve_chained_type(&t).ok()?
                }
                Type::TypeTag(t) => self.btf.resolve_chained_type(&t).ok()?,
                other => return Some(other),
            };
        }
        None
    }

    /// Finds `member` in `s`, looking inside anonymous members; returns its byte offset and type.
    pub(super) fn find_member(&self, s: &btf_rs::Struct, member: &str, depth: u32) -> Option<(u32, Type)> {
        if depth > 8 {
            return None;
        }
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            if name == member {
                if m.bitfield_size().is_some_and(|b| b != 0) {
                    return None;
                }
                return Some((m.bit_offset() / 8, self.btf.resolve_chained_type(m).ok()?));
            }
            if name.is_empty()
                && let Some(Type::Struct(inner) | Type::Union(inner)) =
                    self.btf.resolve_chained_type(m).ok().and_then(|t| self.strip(t))
                && let Some((off, ty)) = self.find_member(&inner, member, depth + 1)
            {
                return Some((m.bit_offset() / 8 + off, ty));
            }
        }
        None
    }

    /// Offset of `strukt.member` and the member's (stripped) type.
    pub fn member(&self, strukt: &str, member: &str) -> Option<(u32, Type)> {
        let s = self.named_struct(strukt)?;
        let (off, ty) = self.find_member(&s, member, 0)?;
        Some((off, self.strip(ty)?))
    }

    pub fn offset(&self, strukt: &str, member: &str) -> Option<u32> {
        self.member(strukt, member).map(|(off, _)| off)
    }

    /// The value of enumerator `name` in the enum named `in_enum` ("" for anonymous enums).
    pub fn enum_value(&self, in_enum: &str, name: &str) -> Option<u32> {
        let types = self.btf.resolve_types_by_name(in_enum).ok()?;
        types.into_iter().find_map(|t| match t {
            Type::Enum(e) => e
                .members
                .iter()
                .find(|m| self.btf.resolve_name(*m).is_ok_and(|n| n == name))
                .map(|m| m.val()),
            _ => None,
        })
    }

    /// Enumerators of the enum named `in_enum`, in declaration order.
    pub fn enum_members(&self, in_enum: &str) -> Vec<(String, u32)> {
        let Ok(types) = self.btf.resolve_types_by_name(in_enum) else {
            return Vec::new();
        };
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Enum(e) => Some(
                    e.members
                        .iter()
                        .filter_map(|m| Some((self.btf.resolve_name(m).ok()?, m.val())))
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_default()
    }

    fn type_size(&self, ty: &Type) -> Option<u32> {
        match self.strip(ty.clone())? {
            Type::Struct(s) | Type::Union(s) => u32::try_from(s.size()).ok(),
            Type::Int(i) => u32::try_from(i.size()).ok(),
            Type::Ptr(_) => Some(8),
            _ => None,
        }
    }

    /// `mm_struct.rss_stat`: `struct percpu_counter rss_stat[NR_MM_COUNTERS]` since 6.2
    /// (read `.count`), `struct mm_rss_stat { atomic_long_t count[]; }` before.
    fn rss_stat(&self) -> Option<(u32, u32, u32)> {
        let (base, ty) = self.member("mm_struct", "rss_stat")?;
        let (base, array) = match ty {
            Type::Array(a) => (base, a),
            Type::Struct(s) => {
                let (off, inner) = self.find_member(&s, "count", 0)?;
                match self.strip(inner)? {
                    Type::Array(a) => (base + off, a),
                    _ => return None,
                }
            }
            _ => return None,
        };
        let elem = self.strip(self.btf.resolve_chained_type(&array).ok()?)?;
        let stride = self.type_size(&elem)?;
        let count = match &elem {
            // percpu_counter.count (s64); atomic_long_t is struct { s64 counter; }.
            Type::Struct(s) => self
                .find_member(s, "count", 0)
                .or_else(|| self.find_member(s, "counter", 0))
                .map(|(off, _)| off)?,
            Type::Int(_) => 0,
            _ => return None,
        };
        Some((base, stride, count))
    }

    /// The local OOM-kill counter of a memcg: `memory_events_local[MEMCG_OOM_KILL]` on cgroup
    /// v2 (`memory_events` there also counts descendants' kills), `memory_events[...]` on v1,
    /// where memcg_memory_event() does not propagate.
    fn memcg_oom_kills(&self, v1: bool) -> Option<u32> {
        let array = if v1 {
            "memory_events"
        } else {
            "memory_events_local"
        };
        let (off, ty) = self.member("mem_cgroup", array)?;
        let Type::Array(a) = ty else { return None };
        let elem = self.type_size(&self.btf.resolve_chained_type(&a).ok()?)?;
        let index = self.enum_value("memcg_memory_event", "MEMCG_OOM_KILL")?;
        Some(off + index * elem)
    }

    /// Resolves every offset in [`KernelLayout`]; `v1`: the memory controller is on cgroup v1.
    pub fn kernel_layout(&self, v1: bool) -> Resolved {
        let mut missing = Vec::new();
        let mut get = |name: &'static str, v: Option<u32>| {
            v.unwrap_or_else(|| {
                missing.push(name);
                ABSENT
            })
        };
        // `field!(task_struct.pid)`: that member's offset, or ABSENT with its name in `missing`.
        macro_rules! field {
            ($s:ident . $m:ident) => {
                get(
                    concat!(stringify!($s), ".", stringify!($m)),
                    self.offset(stringify!($s), stringify!($m)),
                )
            };
        }
        let (rss, stride, count) = match self.rss_stat() {
            Some(t) => t,
            None => (ABSENT, ABSENT, ABSENT),
        };
        let rss = get("mm_struct.rss_stat", (rss != ABSENT).then_some(rss));
        // The memcg pointer is taken to be the css pointer: check that css is at offset 0.
        let css_first = self.offset("mem_cgroup", "css") == Some(0);
        let layout = KernelLayout {
            task_pid: field!(task_struct.pid),
            task_tgid: field!(task_struct.tgid),
            task_comm: field!(task_struct.comm),
            task_mm: field!(task_struct.mm),
            task_signal: field!(task_struct.signal),
            task_cgroups: field!(task_struct.cgroups),
            signal_oom_score_adj: field!(signal_struct.oom_score_adj),
            mm_total_vm: field!(mm_struct.total_vm),
            mm_pgtables_bytes: field!(mm_struct.pgtables_bytes),
            mm_rss_stat: rss,
            mm_rss_stride: stride,
            mm_rss_count: count,
            // Values stable since 2.6.34 (include/linux/mm_types_task.h); BTF first.
            mm_filepages: self.enum_value("", "MM_FILEPAGES").unwrap_or(0),
            mm_anonpages: self.enum_value("", "MM_ANONPAGES").unwrap_or(1),
            mm_swapents: self.enum_value("", "MM_SWAPENTS").unwrap_or(2),
            mm_shmempages: self.enum_value("", "MM_SHMEMPAGES").unwrap_or(3),
            cset_subsys: field!(css_set.subsys),
            memory_cgrp_id: get(
                "memory_cgrp_id",
                self.enum_value("cgroup_subsys_id", "memory_cgrp_id"),
            ),
            css_cgroup: field!(cgroup_subsys_state.cgroup),
            cgroup_kn: field!(cgroup.kn),
            kn_id: field!(kernfs_node.id),
            memcg_memory: get(
                "mem_cgroup.memory",
                self.offset("mem_cgroup", "memory").filter(|_| css_first),
            ),
            page_counter_usage: field!(page_counter.usage),
            page_counter_max: field!(page_counter.max),
            page_counter_parent: field!(page_counter.parent),
            // v2 keeps its swap-only counter in the same union: not a limit an OOM hits.
            memcg_memsw: if v1 {
                get(
                    "mem_cgroup.memsw",
                    self.offset("mem_cgroup", "memsw").filter(|_| css_first),
                )
            } else {
                ABSENT
            },
            task_flags: field!(task_struct.flags),
            memcg_oom_kills: get(
                "mem_cgroup.memory_events[MEMCG_OOM_KILL]",
                self.memcg_oom_kills(v1),
            ),
            oc_memcg: field!(oom_control.memcg),
            oc_gfp_mask: field!(oom_control.gfp_mask),
            oc_order: field!(oom_control.order),
            oc_totalpages: field!(oom_control.totalpages),
            oc_chosen: field!(oom_control.chosen),
            oc_chosen_points: field!(oom_control.chosen_points),
            oc_constraint: field!(oom_control.constraint),
            task_group_leader: field!(task_struct.group_leader),
            task_real_cred: field!(task_struct.real_cred),
            cred_uid: field!(cred.uid),
            task_start_time: field!(task_struct.start_time),
            vmf_flags: field!(vm_fault.flags),
        };
        Resolved { layout, missing }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs against this machine's own BTF: every field memtrace needs resolves, with values
    /// that match well-known facts (comm is 16 bytes after a pointer-aligned field, etc.).
    #[test]
    fn resolves_running_kernel() {
        let Ok(btf) = KernelBtf::from_sys() else {
            eprintln!("SKIPPED: no {VMLINUX_BTF} on this machine");
            return;
        };
        let r = btf.kernel_layout(true);
        assert!(r.missing.is_empty(), "missing: {:?}", r.missing);
        let l = r.layout;
        assert_eq!(l.mm_anonpages, 1);
        assert_eq!(l.mm_filepages, 0);
        assert!(
            l.task_tgid == l.task_pid + 4,
            "pid and tgid are adjacent pid_t: {l:?}"
        );
        assert!(l.mm_rss_stride >= 8);
        assert!(l.memory_cgrp_id < 16);
        assert!(btf.has_function("oom_kill_process") || btf.has_function("out_of_memory"));
        assert!(!btf.has_function("no_such_function_memtrace"));
        assert!(
            btf.tracepoint_first_arg_is("mark_victim", "task_struct"),
            "6.8+ passes the task"
        );
        assert!(btf.tracepoint_first_arg_is("count_memcg_events", "mem_cgroup"));
        assert!(!btf.tracepoint_first_arg_is("cgroup_mkdir", "task_struct"));
    }

    #[test]
    fn missing_btf_is_a_clear_error() {
        let err = KernelBtf::load(Path::new("/nonexistent/vmlinux"))
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("CONFIG_DEBUG_INFO_BTF")));
    }
}
