//! `cargo xtask fuzz`: builds the cargo-fuzz targets in `fuzz/` and runs each for a while, one
//! at a time, from the committed seeds (`fuzz/seeds/<target>`) plus the corpus grown by earlier
//! runs (`fuzz/corpus/<target>`, not committed). CI runs it briefly as a smoke test; run it
//! longer (`--seconds 600`) to fuzz for real. A crash fails the task and leaves its input in
//! `fuzz/artifacts/<target>/`.
//!
//! Build notes: cargo-fuzz needs nightly (the pinned eBPF nightly is used, so no other
//! toolchain is needed) and `cargo install cargo-fuzz` (scripts/setup.sh). The fuzz crate
//! depends on the memtrace library, whose build.rs builds the eBPF object with aya-build as in
//! a normal build: aya-build gives the nested eBPF cargo its own CARGO_ENCODED_RUSTFLAGS, so
//! the sanitizer and coverage flags cargo-fuzz sets never reach the bpf target, and
//! `include_bytes_aligned!` finds the object in OUT_DIR. No AYA_BUILD_SKIP is needed (and it
//! would break the build: the object must exist).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

/// The nightly memtrace/build.rs uses for the eBPF object (scripts/setup.sh installs it).
const NIGHTLY: &str = "nightly-2026-08-01";

/// Every target in fuzz/Cargo.toml, in the order they run.
pub const TARGETS: &[&str] = &[
    "oom_record",
    "cgroup_record",
    "cgroup_stats",
    "cgroup_path",
    "oci_config",
    "mountinfo",
    "proc_cgroup",
    "tracefs_format",
    "cli",
    "config",
];

#[derive(Debug, clap::Args)]
pub struct FuzzArgs {
    /// How long each target runs.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Run only these targets (repeatable); default: all.
    #[arg(long = "target", value_name = "NAME")]
    targets: Vec<String>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

/// `cargo fuzz <args>` with the pinned nightly, whatever toolchain runs xtask.
fn cargo_fuzz(root: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", NIGHTLY, "cargo", "fuzz"])
        .args(args)
        .current_dir(root);
    // Set by the outer `cargo run` (stable): they must not leak into the nightly build.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "CARGO_TARGET_DIR",
    ] {
        c.env_remove(var);
    }
    c
}

/// What one run did, from libFuzzer's `-print_final_stats=1` output.
#[derive(Debug)]
struct Outcome {
    target: String,
    seconds: f64,
    execs: Option<u64>,
    corpus: Option<u64>,
    crashed: bool,
}

fn stat(log: &str, key: &str) -> Option<u64> {
    log.lines()
        .rev()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim_start_matches(':').trim().parse().ok())
}

pub fn run(args: &FuzzArgs) -> anyhow::Result<()> {
    let root = root();
    let targets: Vec<String> = if args.targets.is_empty() {
        TARGETS.iter().map(|s| (*s).to_owned()).collect()
    } else {
        for t in &args.targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!("no fuzz target {t:?}; targets: {}", TARGETS.join(", "));
            }
        }
        args.targets.clone()
    };
    let target_dir = root.join("target/fuzz");
    let target_dir_arg = format!("--target-dir={}", target_dir.display());
    let logs = target_dir.join("logs");
    std::fs::create_dir_all(&logs).context("creating target/fuzz/logs")?;

    let status = cargo_fuzz(&root, &["build", &target_dir_arg])
        .status()
        .context("running cargo fuzz: install it with scripts/setup.sh")?;
    if !status.success() {
        bail!("cargo fuzz build failed: {status}");
    }

    let mut outcomes = vec![];
    for t in &targets {
        let corpus = root.join("fuzz/corpus").join(t);
        std::fs::create_dir_all(&corpus)?;
        let seeds = root.join("fuzz/seeds").join(t);
        let log_path = logs.join(format!("{t}.log"));
        let log = std::fs::File::create(&log_path)?;
        let max_time = format!("-max_total_time={}", args.seconds);
        let mut c = cargo_fuzz(
            &root,
            &[
                "run",
                &target_dir_arg,
                t,
                &corpus.display().to_string(),
                &seeds.display().to_string(),
            ],
        );
        c.args(["--", &max_time, "-print_final_stats=1", "-timeout=10"]);
        let dict = root.join("fuzz/dicts").join(format!("{t}.dict"));
        if dict.exists() {
            c.arg(format!("-dict={}", dict.display()));
        }
        eprintln!(
            "xtask fuzz: {t} for {} s (log: {})",
            args.seconds,
            log_path.display()
        );
        let start = Instant::now();
        let status = c
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .with_context(|| format!("running fuzz target {t}"))?;
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let o = Outcome {
            target: t.clone(),
            seconds: start.elapsed().as_secs_f64(),
            execs: stat(&text, "stat::number_of_executed_units"),
            corpus: std::fs::read_dir(&corpus).ok().map(|d| d.count() as u64),
            crashed: !status.success(),
        };
        if o.crashed {
            // The crash report: the panic, the failing input and how to reproduce it.
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            for l in tail.into_iter().rev() {
                eprintln!("  | {l}");
            }
        }
        outcomes.push(o);
    }

    eprintln!(
        "\nxtask fuzz: {:<15} {:>8} {:>14} {:>8}  result",
        "target", "seconds", "executions", "corpus"
    );
    for o in &outcomes {
        eprintln!(
            "xtask fuzz: {:<15} {:>8.0} {:>14} {:>8}  {}",
            o.target,
            o.seconds,
            o.execs.map_or("?".into(), |n| n.to_string()),
            o.corpus.map_or("?".into(), |n| n.to_string()),
            if o.crashed {
                "CRASH (see fuzz/artifacts/)"
            } else {
                "ok"
            }
        );
    }
    let crashed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.crashed)
        .map(|o| o.target.as_str())
        .collect();
    if !crashed.is_empty() {
        bail!("fuzz targets crashed: {}", crashed.join(", "));
    }
    Ok(())
}
