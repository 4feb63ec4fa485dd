//! `cargo xtask test`: builds the memtrace binary the integration tests run, then the tests.
//! In CI (`CI=true`) or with `--require-ebpf`, an eBPF test that cannot run fails instead of
//! skipping.

use std::process::Command;

use anyhow::{Context as _, bail};

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Fail, rather than skip, eBPF tests that cannot run here (default in CI).
    #[arg(long)]
    require_ebpf: bool,
    /// Also run clippy (-D warnings) and rustfmt --check.
    #[arg(long)]
    lint: bool,
    /// Extra arguments for `cargo test` (e.g. a test name filter).
    #[arg(last = true)]
    cargo_args: Vec<String>,
}

fn cargo(args: &[&str]) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.args(args);
    c
}

fn run_ok(mut c: Command) -> anyhow::Result<()> {
    let status = c.status().with_context(|| format!("running {c:?}"))?;
    if !status.success() {
        bail!("{c:?} failed: {status}");
    }
    Ok(())
}

pub fn run(args: &TestArgs) -> anyhow::Result<()> {
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    if args.lint {
        run_ok(cargo(&["fmt", "--all", "--check"]))?;
        run_ok(cargo(&["clippy", "--all-targets", "--", "-D", "warnings"]))?;
        // The OTLP sink is a default cargo feature: lint the build without it too.
        run_ok(cargo(&[
            "clippy",
            "--package",
            "memtrace",
            "--all-targets",
            "--no-default-features",
            "--",
            "-D",
            "warnings",
        ]))?;
        run_ok(ebpf_clippy())?;
    }
    run_ok(cargo(&["build", "--package", "memtrace", "--bin", "memtrace"]))?;
    let mut test = cargo(&["test"]);
    test.args(&args.cargo_args);
    if args.require_ebpf || in_ci {
        test.env("MEMTRACE_REQUIRE_EBPF", "1");
    }
    run_ok(test)
}

/// Clippy on the eBPF crate, for its own target with the pinned nightly (memtrace/build.rs
/// builds it the same way); its own target dir, so the host build's cache is left alone.
fn ebpf_clippy() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir("memtrace-ebpf").args([
        &format!("+{EBPF_TOOLCHAIN}"),
        "clippy",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--target-dir",
        "../target/ebpf-clippy",
        "--",
        "-D",
        "warnings",
    ]);
    // rustup picks the toolchain from `+nightly`; the workspace's pin must not override it.
    c.env_remove("RUSTUP_TOOLCHAIN");
    c
}

/// memtrace/build.rs's toolchain for the eBPF object.
const EBPF_TOOLCHAIN: &str = "nightly-2026-08-01";
