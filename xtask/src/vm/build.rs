//! Building what the guest runs: memtrace, memtrace-alloc and the integration test binaries.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};

use super::{cargo, output_ok};

pub(super) struct Built {
    pub(super) memtrace: PathBuf,
    pub(super) alloc: PathBuf,
    /// (name, executable) of each integration test binary (tests/tests/*.rs).
    pub(super) tests: Vec<(String, PathBuf)>,
}

/// Integration tests that cannot run in the guest, and why: each needs programs or state the
/// initramfs (busybox, memtrace, bpftool, setpriv, unshare) does not carry. Everything else
/// runs on every VM kernel.
const HOST_ONLY_TESTS: &[&str] = &[
    // containerd, runc and dockerd with their state directories.
    "runtimes",
    "daemonset",
    // Prometheus, Alertmanager, the webhook receiver and systemd-journald (Debian packages).
    "export",
    // tmux draws the live `top` view.
    "top_live",
    // rotel, a Python OpenTelemetry collector in a venv under .tools/.
    "otlp",
    // promtool and a real Prometheus evaluating the alerting rules.
    "rules",
    // runs scripts/setup.sh (apt, rustup, cargo install): about the build host, not the kernel.
    "setup_quiet",
    // earlyoom (a Debian package) in a PID namespace of its own.
    "userspace_killers",
    // reads fuzz/seeds/ from the source tree: about the repository, not the kernel.
    "fuzz_seeds",
];

/// Executables cargo reports building: (target name, target kinds, built as a test, path).
fn artifacts(json: &str) -> Vec<(String, Vec<String>, bool, PathBuf)> {
    let mut out = Vec::new();
    for line in json.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(exe) = v["executable"].as_str() else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        let kinds = v["target"]["kind"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect();
        out.push((
            v["target"]["name"].as_str().unwrap_or_default().to_owned(),
            kinds,
            v["profile"]["test"] == true,
            PathBuf::from(exe),
        ));
    }
    out
}

/// Builds (if needed) what the guest runs; paths from cargo, so CARGO_TARGET_DIR is honoured.
/// `only`: the test binaries `--test` names (empty: all but [`HOST_ONLY_TESTS`]).
pub(super) fn build(root: &Path, only: &[String]) -> anyhow::Result<Built> {
    let mut b = cargo();
    b.args([
        "build",
        "--package",
        "memtrace",
        "--bin",
        "memtrace",
        "--message-format=json",
    ])
    .current_dir(root);
    let memtrace = artifacts(&output_ok(b)?)
        .into_iter()
        .find(|(name, kinds, _, _)| name == "memtrace" && kinds.iter().any(|k| k == "bin"))
        .map(|(.., exe)| exe)
        .context("cargo build did not report the memtrace binary")?;
    let mut t = cargo();
    t.args([
        "test",
        "--package",
        "memtrace-tests",
        "--no-run",
        "--message-format=json",
    ])
    .current_dir(root);
    let mut tests = Vec::new();
    let mut alloc = None;
    for (name, kinds, test, exe) in artifacts(&output_ok(t)?) {
        if kinds.iter().any(|k| k == "test") {
            if HOST_ONLY_TESTS.contains(&name.as_str()) || !only.is_empty() && !only.contains(&name) {
                continue;
            }
            tests.push((name, exe));
        } else if kinds.iter().any(|k| k == "bin") && name == "memtrace-alloc" && !test {
            alloc = Some(exe);
        }
    }
    tests.sort();
    if let Some(unknown) = only.iter().find(|o| !tests.iter().any(|(n, _)| n == *o)) {
        anyhow::bail!("--test {unknown}: no such integration test binary, or host-only (HOST_ONLY_TESTS)");
    }
    ensure!(
        !tests.is_empty(),
        "cargo test --no-run listed no integration test binary"
    );
    Ok(Built {
        memtrace,
        alloc: alloc.context("cargo test --no-run did not report memtrace-alloc")?,
        tests,
    })
}
