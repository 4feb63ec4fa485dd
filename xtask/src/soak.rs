//! `cargo xtask soak --minutes N`: builds memtrace and the test binaries, then runs
//! `memtrace-soak` (tests/src/bin/memtrace-soak.rs): repeated real OOM kills in
//! `memtrace-test-soak-*` cgroups beside a hot charge path (stress-ng --vm), sampling the
//! daemon's RSS and fds every 10 s and checking at the end that every kill was reported.
//! Needs root (or CAP_BPF + CAP_PERFMON) and a memory cgroup controller.

use std::process::Command;

use anyhow::{Context as _, bail};

#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// How long to run.
    #[arg(long, default_value_t = 1.0)]
    minutes: f64,
    /// Soak the release build (what ships) instead of the debug build the tests use.
    #[arg(long)]
    release: bool,
    /// Cgroups killed in each round (one kill each).
    #[arg(long, default_value_t = 3)]
    kill_cgroups: usize,
    /// Time between the starts of two rounds of kills, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    round_ms: u64,
}

pub fn run(args: &SoakArgs) -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let profile = if args.release { "release" } else { "debug" };
    for (pkg, what) in [("memtrace", "--bin=memtrace"), ("memtrace-tests", "--bins")] {
        let mut c = Command::new(&cargo);
        c.current_dir(&root).args(["build", "--package", pkg, what]);
        if args.release {
            c.arg("--release");
        }
        let status = c.status().with_context(|| format!("building {pkg}"))?;
        if !status.success() {
            bail!("building {pkg} failed: {status}");
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join(profile);
    let status = Command::new(target.join("memtrace-soak"))
        .args(["--minutes", &args.minutes.to_string()])
        .args(["--kill-cgroups", &args.kill_cgroups.to_string()])
        .args(["--round-ms", &args.round_ms.to_string()])
        .env("MEMTRACE_BIN", target.join("memtrace"))
        .env("MEMTRACE_ALLOC", target.join("memtrace-alloc"))
        .env("MEMTRACE_REQUIRE_EBPF", "1")
        .status()
        .context("running memtrace-soak")?;
    if !status.success() {
        bail!("soak failed: {status}");
    }
    Ok(())
}
