//! Each command loads only the hooks it reads: `top` and `hotspots` hold no OOM program (their
//! OOM ring would have no reader), `watch` holds the OOM victim hook. The programs a process
//! holds are read from its own fds (fdinfo), so other tracers on the host do not count.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
};

use memtrace::kernel::hooks::{Group, HOOKS};
use memtrace_tests::{Watcher, bpf_ids_of, ebpf_available, memtrace_bin};

/// Names of the programs `pid` holds, from bpftool (kernel names: 15 characters at most).
fn program_names(pid: u32) -> Vec<String> {
    bpf_ids_of(pid)
        .progs
        .iter()
        .map(|id| {
            let out = Command::new("bpftool")
                .args(["prog", "show", "id", &id.to_string(), "--json"])
                .output()
                .expect("bpftool (scripts/setup.sh installs it)");
            assert!(out.status.success(), "bpftool prog show id {id}: {out:?}");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
            v["name"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

fn programs_of(group: Group) -> Vec<&'static str> {
    HOOKS
        .iter()
        .filter(|h| h.group == group)
        .flat_map(|h| h.variants.iter().map(|v| v.program))
        .collect()
}

/// Runs `args` until its first line on `stream` (printed once its tracer is attached), returns
/// the programs it holds then, and ends it.
fn held_by(args: &[&str], on_stderr: bool) -> Vec<String> {
    let mut cmd = Command::new(memtrace_bin());
    cmd.args(args).stdin(Stdio::null());
    if on_stderr {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    }
    let mut child: Child = cmd.spawn().expect("run memtrace");
    let mut line = String::new();
    if on_stderr {
        let err = child.stderr.take().expect("stderr");
        BufReader::new(err).read_line(&mut line).expect("read stderr");
    } else {
        let out = child.stdout.take().expect("stdout");
        BufReader::new(out).read_line(&mut line).expect("read stdout");
    }
    assert!(!line.is_empty(), "{args:?} ended before printing anything");
    let names = program_names(child.id());
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("{args:?}: {names:?}");
    names
}

fn assert_no_oom_program(names: &[String], what: &str) {
    let oom = programs_of(Group::Oom);
    assert!(
        names.iter().all(|n| !oom.contains(&n.as_str())),
        "{what} holds an OOM program: {names:?}"
    );
}

#[test]
fn top_and_hotspots_leave_the_oom_hooks_out() {
    if !ebpf_available("top_and_hotspots_leave_the_oom_hooks_out") {
        return;
    }
    // `top` printing (not a terminal): the sampled charge hook and the reclaim hooks.
    let top = held_by(&["top", "--interval", "1s"], false);
    assert_no_oom_program(&top, "top");
    assert!(
        top.iter()
            .any(|n| programs_of(Group::ChargeSampled).contains(&n.as_str())),
        "top holds its charge hook: {top:?}"
    );
    // `hotspots` says on stderr that it samples once attached: the exact charge hook.
    let hot = held_by(&["hotspots", "--duration", "30s"], true);
    assert_no_oom_program(&hot, "hotspots");
    assert!(
        hot.iter()
            .any(|n| programs_of(Group::Charge).contains(&n.as_str())),
        "hotspots holds its charge hook: {hot:?}"
    );
}

#[test]
fn watch_holds_the_oom_victim_hook() {
    if !ebpf_available("watch_holds_the_oom_victim_hook") {
        return;
    }
    let w = Watcher::start(&[]);
    let names = program_names(w.pid());
    let victim: Vec<&str> = HOOKS
        .iter()
        .filter(|h| h.id == memtrace::kernel::hooks::HookId::OomVictim)
        .flat_map(|h| h.variants.iter().map(|v| v.program))
        .collect();
    assert!(
        names.iter().any(|n| victim.contains(&n.as_str())),
        "watch holds an oom_victim program: {names:?}"
    );
}
