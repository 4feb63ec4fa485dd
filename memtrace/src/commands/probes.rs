//! `memtrace probes`: what this kernel offers memtrace, and why a variant is not used.
//! It really loads and attaches each variant (then detaches), so what it says is what `watch`
//! will get.

use std::fmt::Write as _;

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    cgroup::MemoryHierarchy,
    cli::ProbesArgs,
    kernel::btf::{KernelBtf, vmlinux_path},
    kernel::hooks::HookStatus,
    kernel::privileges::Privileges,
    kernel::tracer::{Tracer, TracerOptions},
    output::{self, Format},
};

#[derive(Debug, Serialize)]
struct Report {
    kernel: String,
    btf: Option<String>,
    btf_missing_fields: Vec<&'static str>,
    /// Fields the `oom:mark_victim` record lacks on this kernel (pid only before 6.8 unless
    /// backported): with the tracepoint variant they are left out of events for a victim that
    /// is not the triggering task.
    mark_victim_record_missing: Vec<&'static str>,
    /// Items of the at-kill memory breakdown this kernel's memcgs do not count (left out of
    /// events), or why the breakdown cannot be read at all (the post-kill files stand in).
    at_kill_stats_missing: Vec<&'static str>,
    at_kill_stats_error: Option<String>,
    cgroup: Option<String>,
    privileges: Privileges,
    hooks: Vec<HookStatus>,
    error: Option<String>,
}

pub async fn run(args: ProbesArgs) -> anyhow::Result<()> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let hierarchy = MemoryHierarchy::detect().ok();
    let v1 = hierarchy
        .as_ref()
        .is_some_and(|h| h.version == crate::cgroup::CgroupVersion::V1);
    let (btf, missing, stats) = match KernelBtf::from_sys() {
        Ok(b) => (
            Some(vmlinux_path().display().to_string()),
            b.kernel_layout(v1).missing,
            // Which items exist does not depend on the page size.
            b.memcg_stat_layout(12)
                .map(|r| r.missing)
                .map_err(|e| e.to_string()),
        ),
        Err(e) => {
            eprintln!("memtrace: {e}");
            (None, vec![], Err("no kernel BTF".to_owned()))
        }
    };
    let (at_kill_stats_missing, at_kill_stats_error) = match stats {
        Ok(m) => (m, None),
        Err(e) => (vec![], Some(e)),
    };
    let mark_victim_record_missing = crate::kernel::tracefs::Tracefs::locate()
        .and_then(|t| t.mark_victim_layout())
        .map(|l| {
            [
                ("pid", l.pid),
                ("comm", l.comm),
                ("total_vm", l.total_vm),
                ("anon_rss", l.anon_rss),
                ("file_rss", l.file_rss),
                ("shmem_rss", l.shmem_rss),
                ("uid", l.uid),
                ("pgtables", l.pgtables),
                ("oom_score_adj", l.oom_score_adj),
            ]
            .into_iter()
            .filter(|(_, off)| *off == memtrace_common::layout::ABSENT)
            .map(|(name, _)| name)
            .collect()
        })
        .unwrap_or_default();
    let cgroup = hierarchy
        .as_ref()
        .map(|h| format!("{:?} at {}", h.version, h.root.display()).to_lowercase());
    let (hooks, error) = match Tracer::start(&TracerOptions {
        hierarchy,
        try_all: true,
        charges: Some(Default::default()),
        ..TracerOptions::default()
    }) {
        Ok((tracer, _rings)) => (tracer.hooks.clone(), None),
        Err(e) => (vec![], Some(e.to_string())),
    };
    let report = Report {
        kernel,
        btf,
        btf_missing_fields: missing,
        mark_victim_record_missing,
        at_kill_stats_missing,
        at_kill_stats_error,
        cgroup,
        privileges: Privileges::current(),
        hooks,
        error,
    };
    let out = match args.output {
        Format::Json => serde_json::to_string_pretty(&report).context("serialising")? + "\n",
        Format::Text => text(&report),
    };
    output::to_stdout(&out).context("writing to stdout")?;
    if let Some(e) = report.error {
        anyhow::bail!("no OOM hook can attach: {e}");
    }
    Ok(())
}

/// The report as a table for people.
fn text(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "kernel      {}", r.kernel);
    let _ = writeln!(out, "btf         {}", r.btf.as_deref().unwrap_or("MISSING"));
    if !r.btf_missing_fields.is_empty() {
        let _ = writeln!(
            out,
            "            fields not in BTF: {}",
            r.btf_missing_fields.join(", ")
        );
    }
    if !r.mark_victim_record_missing.is_empty() {
        let _ = writeln!(
            out,
            "tracepoint  oom:mark_victim record lacks {}: with the tracepoint variant only the pid is known for a victim other than the triggering task",
            r.mark_victim_record_missing.join(", ")
        );
    }
    match (&r.at_kill_stats_error, r.at_kill_stats_missing.as_slice()) {
        (Some(e), _) => {
            _ = writeln!(
                out,
                "at kill     no memory breakdown ({e}): the post-kill files stand in"
            )
        }
        (None, []) => _ = writeln!(out, "at kill     memory breakdown: every item"),
        (None, m) => {
            _ = writeln!(
                out,
                "at kill     memory breakdown without {} (not counted here)",
                m.join(", ")
            )
        }
    }
    let _ = writeln!(
        out,
        "cgroup      {}",
        r.cgroup.as_deref().unwrap_or("no memory controller mounted")
    );
    let p = &r.privileges;
    let _ = writeln!(
        out,
        "privileges  euid={} CAP_BPF={} CAP_PERFMON={} CAP_SYS_ADMIN={} CAP_DAC_READ_SEARCH={} tracefs_readable={} lockdown={}",
        p.euid,
        p.cap_bpf,
        p.cap_perfmon,
        p.cap_sys_admin,
        p.cap_dac_read_search,
        p.tracefs_readable.map_or("n/a".into(), |r| r.to_string()),
        p.lockdown.as_deref().unwrap_or("n/a")
    );
    if let Some(limit) = p.memlock_limit {
        let _ = writeln!(
            out,
            "            RLIMIT_MEMLOCK {} KiB: this kernel (before 5.11) charges BPF maps to it; CAP_SYS_RESOURCE={} lifts it",
            limit >> 10,
            p.cap_sys_resource
        );
    }
    // A variant that feeds another program says so: "fentry mark_oom_victim + tracepoint ...".
    let name = |v: &crate::kernel::hooks::Variant| {
        let mut s = format!("{} {}", v.attach.kind(), v.attach.target());
        if let Some(fed) = v.with {
            s += &format!(" + {} {}", fed.attach.kind(), fed.attach.target());
        }
        s
    };
    for h in &r.hooks {
        match h.selected {
            Some(v) => _ = writeln!(out, "hook        {:<12} {} (selected)", h.hook, name(&v)),
            None => _ = writeln!(out, "hook        {:<12} NONE", h.hook),
        }
        for v in &h.also_works {
            let _ = writeln!(out, "              also works: {}", name(v));
        }
        for rej in &h.rejected {
            let _ = writeln!(
                out,
                "              not {} {}: {}",
                rej.variant.attach.kind(),
                rej.variant.attach.target(),
                rej.reason
            );
        }
    }
    out
}
