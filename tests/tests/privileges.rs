//! Least privilege: memtrace as a non-root user (uid 65534) with only the capabilities it
//! needs attaches and reports a real kill; with any one of them missing it says, in one line,
//! which. The minimum on this kernel (6.18, tracefs mode 0700 with 0440 files):
//! CAP_BPF + CAP_PERFMON + CAP_DAC_READ_SEARCH (the last only to read tracefs); before 5.11,
//! with a finite RLIMIT_MEMLOCK (the 5.10 guest's 64 KiB), CAP_SYS_RESOURCE too.

use std::{
    os::unix::{fs::PermissionsExt as _, process::ExitStatusExt as _},
    process::Command,
    time::Duration,
};

use memtrace_tests::{TestCgroup, Watcher, ebpf_available, memtrace_bin, procs};

const NOBODY: &str = "65534";
/// The capabilities memtrace needs here, as setpriv spells them. Kernel-dependent, and each
/// addition is what memtrace itself reports: before 5.11 with a finite RLIMIT_MEMLOCK,
/// CAP_SYS_RESOURCE; where perf_event_open is refused to CAP_PERFMON (Debian's 5.10 at
/// kernel.perf_event_paranoid=3, as `memtrace probes` run as nobody says), CAP_SYS_ADMIN, which
/// then stands in for CAP_BPF and CAP_PERFMON.
fn minimum() -> Vec<&'static str> {
    let mut m = vec!["bpf", "perfmon", "dac_read_search"];
    // setpriv keeps this process's limits: memtrace as nobody has the same hard limit.
    if memtrace::kernel::privileges::Privileges::current()
        .memlock_limit
        .is_some()
    {
        m.push("sys_resource");
    }
    let out = as_nobody_with(&m, &["probes", "--output", "json"])
        .output()
        .expect("setpriv (util-linux)");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    if report["privileges"]["perf_event_open_refused"] == true {
        m.retain(|c| *c != "bpf" && *c != "perfmon");
        m.push("sys_admin");
    }
    m
}

/// setpriv's capability names -> bits.
fn cap_bit(name: &str) -> u64 {
    use memtrace::kernel::privileges as p;
    1 << match name {
        "bpf" => p::CAP_BPF,
        "perfmon" => p::CAP_PERFMON,
        "dac_read_search" => p::CAP_DAC_READ_SEARCH,
        "sys_resource" => p::CAP_SYS_RESOURCE,
        "sys_admin" => p::CAP_SYS_ADMIN,
        other => panic!("unknown capability {other}"),
    }
}

/// `setpriv` as uid/gid 65534 with exactly `caps` (names as setpriv spells them), running
/// `memtrace args...`. The caps are ambient, so they survive the exec into memtrace.
fn as_nobody_with(caps: &[&str], args: &[&str]) -> Command {
    let set = std::iter::once("-all".to_owned())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={NOBODY}"),
        &format!("--regid={NOBODY}"),
        "--clear-groups",
        &format!("--inh-caps={set}"),
        &format!("--ambient-caps={set}"),
        &format!("--bounding-set={set}"),
    ])
    .arg(memtrace_bin())
    .args(args);
    c
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The effective capability mask and uid of a running process.
fn cap_eff_and_uid(pid: u32) -> (u64, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let eff = u64::from_str_radix(&field("CapEff:"), 16).expect("CapEff");
    let uid = field("Uid:")
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    (eff, uid)
}

#[test]
fn least_privilege_reports_a_real_kill() {
    if !ebpf_available("least_privilege_reports_a_real_kill") {
        return;
    }
    if !is_root() {
        eprintln!("!!! SKIPPED least_privilege_reports_a_real_kill: needs root to drop privileges");
        return;
    }
    let minimum = minimum();
    let budget = memtrace_tests::watcher::budget_args();
    let mut args = vec!["watch", "--output", "json"];
    args.extend(budget.iter().map(String::as_str));
    let mut w = Watcher::spawn(as_nobody_with(&minimum, &args));
    let (eff, uid) = cap_eff_and_uid(w.pid());
    assert_eq!(uid, NOBODY, "memtrace runs as nobody");
    assert_eq!(
        eff,
        minimum.iter().map(|c| cap_bit(c)).fold(0, |a, b| a | b),
        "exactly the minimum: {eff:#x}"
    );
    let cg = TestCgroup::new("leastpriv", 32 << 20);
    let mut child = procs::alloc_in(&cg, &["grow"], None);
    let pid = child.id();
    let status = child.wait().expect("wait allocator");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    let ev = w.next_event(Duration::from_secs(60), |v| {
        memtrace_tests::is_kill(v) && v["process.pid"] == pid
    });
    eprintln!("event: {ev}");
    // The variant root gets on this kernel (the VMs say which: fentry on 5.10), not a lesser one.
    let expected = std::env::var("MEMTRACE_EXPECT_HOOKS")
        .ok()
        .and_then(|e| {
            e.split(',')
                .find_map(|p| p.strip_prefix("oom_victim=").map(str::to_owned))
        })
        .unwrap_or_else(|| "tp_btf".to_owned());
    assert_eq!(ev["memtrace.hook"], expected.as_str(), "{ev}");
    assert_eq!(ev["memtrace.cgroup.path"], cg.rel.as_str());
    assert_eq!(ev["memtrace.memcg.limit_bytes"], 32u64 << 20);
    // The cgroup files were readable: the snapshot is there, not an error.
    assert!(ev["memtrace.snapshot.usage_bytes"].is_u64(), "{ev}");
    assert!(ev["memtrace.snapshot.error"].is_null(), "{ev}");
    drop(cg);
    let s = w.stop();
    assert!(s.delivered >= 1, "{s:?}");
    assert_eq!(
        s.kernel_seen,
        s.delivered + s.dropped_ringbuf_full + s.decode_errors,
        "{s:?}"
    );
}

/// Is tracefs readable by others here (then CAP_DAC_READ_SEARCH is not needed)?
fn tracefs_world_readable() -> bool {
    let mode = |p: &str| std::fs::metadata(p).map(|m| m.permissions().mode()).unwrap_or(0);
    mode("/sys/kernel/tracing") & 0o005 == 0o005
        && mode("/sys/kernel/tracing/events/oom/mark_victim/format") & 0o004 != 0
}

#[test]
fn each_missing_capability_is_named() {
    if !is_root() {
        eprintln!("!!! SKIPPED each_missing_capability_is_named: needs root to drop privileges");
        return;
    }
    let minimum = minimum();
    for missing in &minimum {
        if *missing == "dac_read_search" && tracefs_world_readable() {
            eprintln!("note: tracefs is world-readable here: CAP_DAC_READ_SEARCH is not needed");
            continue;
        }
        let caps: Vec<&str> = minimum.iter().copied().filter(|c| c != missing).collect();
        let out = as_nobody_with(&caps, &["watch"])
            .output()
            .expect("setpriv (util-linux)");
        let err = String::from_utf8_lossy(&out.stderr);
        let name = format!("CAP_{}", missing.to_uppercase());
        eprintln!("without {name}: {}", err.trim());
        assert_eq!(out.status.code(), Some(1), "without {name}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        // Without CAP_SYS_ADMIN where it stands in for CAP_BPF and CAP_PERFMON, all three are
        // named; otherwise exactly the one.
        let exact = format!("missing: {name}.");
        assert!(
            err.contains(&exact)
                || *missing == "sys_admin" && err.contains("missing: ") && err.contains(&name),
            "names {name}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}
