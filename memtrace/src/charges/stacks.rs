//! Sampled charge stacks made readable: symbolized, as table rows and as folded lines for
//! flame-graph tools (`comm;outer;...;inner count`).

use serde::Serialize;

use crate::charges::{
    accounting::Sample,
    symbolize::{Frame, Symbols},
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HotStack {
    pub count: u64,
    pub cgroup_id: u64,
    pub pid: u32,
    pub comm: String,
    /// Innermost first.
    pub user: Vec<Frame>,
    /// Innermost first.
    pub kernel: Vec<Frame>,
    /// Processes whose samples this row sums ([`merge_pids`]); `pid` is one of them.
    pub pids: u32,
}

/// Rows that differ only by pid (the same comm and frames in one cgroup: twenty short-lived
/// workers of one binary) become one row with their samples summed and their processes
/// counted. Its `pid` is `prefer` if that is one of them (a kill's victim), else the one with
/// the most samples. Most samples first.
pub fn merge_pids(stacks: Vec<HotStack>, prefer: Option<u32>) -> Vec<HotStack> {
    let mut out: Vec<HotStack> = Vec::with_capacity(stacks.len());
    let mut index: std::collections::HashMap<(u64, String, Vec<Frame>, Vec<Frame>), usize> =
        std::collections::HashMap::new();
    for h in stacks {
        let key = (h.cgroup_id, h.comm.clone(), h.user.clone(), h.kernel.clone());
        match index.get(&key) {
            Some(&i) => {
                let row = &mut out[i];
                let keep_row_pid = prefer == Some(row.pid) || (prefer != Some(h.pid) && row.count >= h.count);
                if !keep_row_pid {
                    row.pid = h.pid;
                }
                row.count += h.count;
                row.pids += h.pids;
            }
            None => {
                index.insert(key, out.len());
                out.push(h);
            }
        }
    }
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.pid.cmp(&b.pid)));
    out
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
            pids: 1,
        }
    }

    /// As [`Self::resolve`], with user frames left as addresses (no time to symbolize).
    pub fn resolve_kernel_only(syms: &mut Symbols, s: &Sample) -> Self {
        let user = s
            .user_ips
            .iter()
            .map(|a| Frame::from(format!("0x{a:x}")))
            .collect();
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

    /// The addresses of its user frames if none is named (`resolve_kernel_only`, or a
    /// lookup that named nothing): what a later lookup may name.
    pub fn unnamed_user(&self) -> Option<Vec<u64>> {
        let addrs: Option<Vec<u64>> = self
            .user
            .iter()
            .map(|f| f.strip_prefix("0x").and_then(|h| u64::from_str_radix(h, 16).ok()))
            .collect();
        addrs.filter(|a| !a.is_empty())
    }

    /// `comm;user outermost..innermost;kernel outermost..innermost count`.
    pub fn folded(&self) -> String {
        let mut parts = vec![self.comm.replace(';', "_")];
        parts.extend(self.user.iter().rev().map(|f| f.to_string()));
        parts.extend(self.kernel.iter().rev().map(|k| format!("{k}_[k]")));
        format!("{} {}", parts.join(";"), self.count)
    }

    /// The innermost user frame as sampled (allocator frames included: the allocation site
    /// is often one frame out), for tables.
    pub fn top_user_frame(&self) -> &str {
        self.user.first().map_or("?", |f| f)
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
            pids: 1,
        };
        assert_eq!(h.folded(), "a_b;main;inner;handle_mm_fault_[k];try_charge_[k] 7");
        assert_eq!(h.top_user_frame(), "inner");
    }

    #[test]
    fn only_a_stack_with_no_user_frame_named_is_unnamed() {
        let h = |user: &[&str]| HotStack {
            count: 1,
            cgroup_id: 1,
            pid: 2,
            comm: "a".into(),
            user: user.iter().map(|f| (*f).into()).collect(),
            kernel: vec![],
            pids: 1,
        };
        assert_eq!(
            h(&["0x5649285de491", "0x7f76"]).unnamed_user(),
            Some(vec![0x5649285de491, 0x7f76])
        );
        assert_eq!(
            h(&["0x5649285de491", "main"]).unnamed_user(),
            None,
            "partly named"
        );
        assert_eq!(h(&[]).unnamed_user(), None, "no user stack");
    }

    #[test]
    fn rows_that_differ_only_by_pid_are_one() {
        let h = |pid, count, user: &str| HotStack {
            count,
            cgroup_id: 1,
            pid,
            comm: "faults".into(),
            user: vec![user.into()],
            kernel: vec![],
            pids: 1,
        };
        let rows = vec![
            h(10, 5, "touch"),
            h(11, 7, "touch"),
            h(12, 1, "other"),
            h(13, 2, "touch"),
        ];
        let merged = merge_pids(rows.clone(), None);
        assert_eq!(merged.len(), 2);
        assert_eq!((merged[0].count, merged[0].pids, merged[0].pid), (14, 3, 11));
        assert_eq!((merged[1].count, merged[1].pids, merged[1].pid), (1, 1, 12));
        // A kill's victim keeps its own pid on the merged row.
        assert_eq!(merge_pids(rows, Some(13))[0].pid, 13);
    }
}
