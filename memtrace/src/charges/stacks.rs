//! Sampled charge stacks made readable: symbolized, as table rows and as folded lines for
//! flame-graph tools (`comm;outer;...;inner count`).

use serde::Serialize;

use crate::{charges::accounting::Sample, charges::symbolize::Symbols};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HotStack {
    pub count: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub comm: String,
    /// Innermost first.
    pub user: Vec<String>,
    /// Innermost first.
    pub kernel: Vec<String>,
}

impl HotStack {
    /// Symbolizes a sample. memtrace's own frames (its BPF program and the tracepoint
    /// trampoline) are cut: they are not the charger's.
    pub fn resolve(syms: &mut Symbols, s: &Sample) -> Self {
        let user = if s.user_ips.is_empty() {
            vec![]
        } else {
            syms.user(s.key.tgid, &s.user_ips)
        };
        let mut kernel = syms.kernel(&s.kernel_ips);
        let own = kernel
            .iter()
            .take_while(|f| {
                f.starts_with("bpf_prog_")
                    || f.starts_with("bpf_trace_run")
                    || f.starts_with("__traceiter_")
                    || f.starts_with("__bpf_trace_")
                    || f.starts_with("0x")
            })
            .count();
        kernel.drain(..own);
        Self {
            count: s.count,
            cgroup_id: s.key.cgroup_id,
            pid: s.key.tgid,
            comm: s.key.comm.clone(),
            user,
            kernel,
        }
    }

    /// As [`Self::resolve`], with user frames left as addresses (no time to symbolize).
    pub fn resolve_kernel_only(syms: &mut Symbols, s: &Sample) -> Self {
        let user = s.user_ips.iter().map(|a| format!("0x{a:x}")).collect();
        Self {
            user,
            ..Self::resolve(
                syms,
                &Sample {
                    user_ips: vec![],
                    ..s.clone()
                },
            )
        }
    }

    /// `comm;user outermost..innermost;kernel outermost..innermost count`.
    pub fn folded(&self) -> String {
        let mut parts = vec![self.comm.replace(';', "_")];
        parts.extend(self.user.iter().rev().cloned());
        parts.extend(self.kernel.iter().rev().map(|k| format!("{k}_[k]")));
        format!("{} {}", parts.join(";"), self.count)
    }

    /// The innermost user frame that is not in the C library's allocator, for tables.
    pub fn top_user_frame(&self) -> &str {
        self.user.first().map_or("?", String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_is_outermost_first() {
        let h = HotStack {
            count: 7,
            cgroup_id: 1,
            pid: 2,
            comm: "a;b".into(),
            user: vec!["inner".into(), "main".into()],
            kernel: vec!["try_charge".into(), "handle_mm_fault".into()],
        };
        assert_eq!(h.folded(), "a_b;main;inner;handle_mm_fault_[k];try_charge_[k] 7");
        assert_eq!(h.top_user_frame(), "inner");
    }
}
