//! What the hooks see per page fault: the memcg event items one fault cycle raises (counted
//! with bpftrace), and the item numbers of this kernel (from BTF).

use std::{collections::BTreeMap, process::Stdio};

use anyhow::{Context as _, ensure};

use super::{Rep, Workload};
use crate::bench::{Ctx, daemon::Bpftrace, probes, sys::BenchCgroup};

/// Which memcg events one fault cycle raises, per page (not timed): what the hooks see.
pub fn item_breakdown(ctx: &Ctx, cg: &BenchCgroup, w: &Workload) -> anyhow::Result<Vec<(String, f64)>> {
    let prog = format!(
        "tracepoint:memcg:count_memcg_events /args->id == {}/ {{ @[args->item] = count(); }}",
        cg.id()
    );
    let bt = Bpftrace::start(&prog)?;
    let reps = 2;
    let out = cg
        .command(&ctx.faults, &[&w.mib.to_string(), &reps.to_string()])
        .stdout(Stdio::piped())
        .output()?;
    ensure!(out.status.success(), "fault program failed: {}", out.status);
    let counts = bt.stop()?;
    let pages: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(Rep::parse)
        .collect::<anyhow::Result<Vec<_>>>()?
        .iter()
        .map(|r| r.pages)
        .sum();
    let names = vm_event_names();
    let mut items: Vec<(String, f64)> = counts
        .into_iter()
        .map(|(item, n)| {
            let name = item
                .parse::<u64>()
                .ok()
                .and_then(|i| names.get(&i).cloned())
                .unwrap_or_default();
            (format!("{item} {name}"), n as f64 / pages as f64)
        })
        .collect();
    items.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(items)
}

/// PGPGIN and PGFAULT on this kernel.
pub fn items() -> anyhow::Result<probes::Items> {
    let names = vm_event_names();
    let find = |n: &str| -> anyhow::Result<i32> {
        let v = names
            .iter()
            .find(|(_, v)| *v == n)
            .with_context(|| format!("{n} not in the kernel's BTF"))?;
        Ok(*v.0 as i32)
    };
    Ok(probes::Items {
        pgpgin: find("PGPGIN")?,
        pgfault: find("PGFAULT")?,
    })
}

/// `enum vm_event_item` value -> name, from the kernel's BTF (via bpftool).
fn vm_event_names() -> BTreeMap<u64, String> {
    let Ok(out) = std::process::Command::new("bpftool")
        .args(["btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "raw"])
        .stderr(Stdio::null())
        .output()
    else {
        return BTreeMap::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut names = BTreeMap::new();
    let mut inside = false;
    for l in text.lines() {
        if l.starts_with('[') {
            inside = l.contains("ENUM 'vm_event_item'");
            continue;
        }
        if inside
            && let Some((name, val)) = l.trim().strip_prefix('\'').and_then(|r| r.split_once("' val="))
            && let Ok(v) = val.trim().parse()
        {
            names.insert(v, name.to_owned());
        }
    }
    names
}
