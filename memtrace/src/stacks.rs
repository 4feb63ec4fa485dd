//! Sampled charge stacks made readable: symbolized, as table rows and as folded lines for
//! flame-graph tools (`comm;outer;...;inner count`).

use aya::Ebpf;
use serde::Serialize;

use crate::{charges::SampleKey, charges::stack_ips, symbolize::Symbols};

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
    pub fn resolve(ebpf: &Ebpf, syms: &mut Symbols, key: &SampleKey, count: u64) -> Self {
        let user = key
            .user_stack
            .and_then(|id| stack_ips(ebpf, id))
            .map(|ips| syms.user(key.tgid, &ips))
            .unwrap_or_default();
        let mut kernel =
            key.kernel_stack.and_then(|id| stack_ips(ebpf, id)).map(|ips| syms.kernel(&ips)).unwrap_or_default();
        // memtrace's own frames (the BPF program and its trampoline) are not the charger's.
        let own = kernel.iter().take_while(|f| f.starts_with("bpf_prog_") || f.starts_with("bpf_trace_run")).count();
        kernel.drain(..own);
        Self { count, cgroup_id: key.cgroup_id, pid: key.tgid, comm: key.comm.clone(), user, kernel }
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
