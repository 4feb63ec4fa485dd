//! `cargo xtask bench <what>`: memtrace's costs and limits, measured on this machine with real
//! page faults and real OOM kills, written to BENCHMARKS.md (one marked section per benchmark,
//! replaced in place; text outside the markers is kept).
//!
//! Every comparison runs its configurations interleaved in one run (A B C, A B C, ...) and
//! reports medians over the rounds, with the load average before and after: the machines are
//! shared. `--smoke` is a short version of everything (about a minute) that CI runs: it checks
//! that the benchmarks work and that no kill is missed, writes target/bench/smoke.md, and does
//! not judge the performance targets.

mod daemon;
mod faults;
mod footprint;
mod kmsg;
mod latency;
mod probes;
mod ring;
mod scale;
mod stats;
mod storm;
mod sys;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail, ensure};

const DEFAULT_ROUNDS: usize = 7;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    All,
    Faults,
    Latency,
    Storm,
    Footprint,
    Ring,
    Scale,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Which benchmark: faults (charge-path overhead), latency (kill to event), storm (missed
    /// kills), footprint (daemon RSS and CPU), ring (OOM ring buffer capacity), scale (cost per
    /// busy cgroup), or all.
    #[arg(value_enum)]
    what: What,
    /// A short run of each benchmark (CI): results to target/bench/smoke.md, targets not judged.
    #[arg(long)]
    smoke: bool,
    /// Runs per configuration, interleaved (at least 5 unless --smoke).
    #[arg(long, default_value_t = DEFAULT_ROUNDS)]
    rounds: usize,
    /// Results file [default: BENCHMARKS.md at the repository root; with --smoke,
    /// target/bench/smoke.md].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measure this memtrace binary instead of this tree's release build: before/after
    /// comparisons, with the other commit built in a worktree of its own.
    #[arg(long, value_name = "PATH")]
    memtrace: Option<PathBuf>,
}

/// What every benchmark needs.
pub struct Ctx {
    pub memtrace: PathBuf,
    pub alloc: PathBuf,
    pub faults: PathBuf,
    pub hierarchy: sys::Hierarchy,
    pub smoke: bool,
    pub rounds: usize,
    /// Rounds other than the default: part of the reproduce command.
    explicit_rounds: bool,
    /// `--memtrace`, when given: part of the reproduce command.
    explicit_binary: Option<PathBuf>,
}

impl Ctx {
    pub fn command(&self, what: &str) -> String {
        let mut c = format!("cargo xtask bench {what}");
        if self.smoke {
            c.push_str(" --smoke");
        }
        if self.explicit_rounds {
            c.push_str(&format!(" --rounds {}", self.rounds));
        }
        if let Some(p) = &self.explicit_binary {
            c.push_str(&format!(" --memtrace {}", p.display()));
        }
        c
    }
}

/// One benchmark's part of the results file.
pub struct Section {
    pub key: &'static str,
    pub body: String,
    /// One line for the summary at the top of the file.
    pub summary: String,
    /// Lines that make the run fail (missed kills, broken benchmark), whatever the mode.
    pub errors: Vec<String>,
}

/// The benchmarks in the order of the results file.
const KEYS: [&str; 6] = ["faults", "latency", "storm", "footprint", "ring", "scale"];

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    ensure!(
        args.smoke || args.rounds >= 5,
        "--rounds {} is too few for a median: at least 5",
        args.rounds
    );
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the benchmarks load eBPF programs and make cgroups: run as root"
    );
    let root = workspace_root()?;
    let (built, alloc) = build(&root)?;
    let memtrace = match &args.memtrace {
        Some(p) => std::fs::canonicalize(p).with_context(|| format!("--memtrace {}", p.display()))?,
        None => built,
    };
    let bench_dir = memtrace
        .parent()
        .and_then(Path::parent)
        .context("target directory")?
        .join("bench");
    std::fs::create_dir_all(&bench_dir)?;
    let faults = compile_faults(&root, &bench_dir)?;
    let ctx = Ctx {
        memtrace,
        alloc,
        faults,
        hierarchy: sys::Hierarchy::detect()?,
        smoke: args.smoke,
        rounds: if args.smoke { 1 } else { args.rounds },
        explicit_rounds: !args.smoke && args.rounds != DEFAULT_ROUNDS,
        explicit_binary: args.memtrace.clone(),
    };
    let out = match (&args.out, args.smoke) {
        (Some(p), _) => p.clone(),
        (None, false) => root.join("BENCHMARKS.md"),
        (None, true) => bench_dir.join("smoke.md"),
    };
    let all = args.what == What::All;
    let mut errors = Vec::new();
    let mut run_one = |what: What, f: fn(&Ctx) -> anyhow::Result<Section>| -> anyhow::Result<()> {
        if !(all || args.what == what) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        eprintln!("bench: {what:?} (load {})", sys::loadavg());
        let section = f(&ctx).with_context(|| format!("benchmark {what:?}"))?;
        eprintln!("bench: {what:?} done in {:.0} s", started.elapsed().as_secs_f64());
        print!("{}", section.body);
        write_section(&out, &section)?;
        errors.extend(section.errors);
        Ok(())
    };
    run_one(What::Faults, faults::run)?;
    run_one(What::Latency, latency::run)?;
    run_one(What::Storm, storm::run)?;
    run_one(What::Footprint, footprint::run)?;
    run_one(What::Ring, ring::run)?;
    run_one(What::Scale, scale::run)?;
    eprintln!("bench: results in {}", out.display());
    if !errors.is_empty() {
        bail!("benchmark errors:\n{}", errors.join("\n"));
    }
    Ok(())
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").context("run as `cargo xtask bench`")?;
    Ok(Path::new(&dir)
        .parent()
        .context("xtask has a parent directory")?
        .to_path_buf())
}

/// `cargo build --release` of memtrace and the test allocator; their paths from cargo.
fn build(root: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--package",
            "memtrace",
            "--bin",
            "memtrace",
            "--package",
            "memtrace-tests",
            "--bin",
            "memtrace-alloc",
            "--message-format=json",
        ])
        .current_dir(root)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    ensure!(out.status.success(), "cargo build --release failed");
    let mut found = (None, None);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(exe), Some(name)) = (v["executable"].as_str(), v["target"]["name"].as_str()) else {
            continue;
        };
        match name {
            "memtrace" => found.0 = Some(PathBuf::from(exe)),
            "memtrace-alloc" => found.1 = Some(PathBuf::from(exe)),
            _ => {}
        }
    }
    Ok((
        found.0.context("cargo did not report the memtrace binary")?,
        found.1.context("cargo did not report memtrace-alloc")?,
    ))
}

/// The page-fault program (xtask/bench/faults.c), compiled with the system C compiler.
fn compile_faults(root: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let src = root.join("xtask/bench/faults.c");
    let exe = dir.join("faults");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-O2", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src)
        .status()
        .with_context(|| format!("running {cc}"))?;
    ensure!(status.success(), "{cc} {} failed", src.display());
    Ok(exe)
}

/// The run's header lines: when, which commit, the machine.
pub fn run_header(ctx: &Ctx, what: &str) -> String {
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let commit = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!(
        "Reproduce: `{}` (release build). Run {date}, commit `{commit}`.\n\
         Machine: {}.\n\n",
        ctx.command(what),
        sys::machine()
    )
}

const INTRO: &str = "# memtrace benchmarks\n\n\
Measured with `cargo xtask bench all` (each section: `cargo xtask bench <name>`), release build, as \
root, on a shared 2-core machine where other builds, tests and a fuzzer run at the same time. \
That is why every comparison runs its configurations interleaved in one run (A B C, A B C, …) and \
reports medians over the rounds, with the load average (`/proc/loadavg`, 1/5/15 min) before and \
after. The sections between the `bench:` markers are rewritten by the benchmark; \
`cargo xtask bench all --smoke` (CI) is a one-minute version that checks the benchmarks work and \
that no kill is missed, and writes `target/bench/smoke.md` instead.\n\n";

/// Replaces (or appends) the section's marked block in the results file, and its line in the
/// summary block.
fn write_section(path: &Path, s: &Section) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| INTRO.to_owned());
    let text = replace_block(&old, s.key, &s.body);
    let text = update_summary(&text, s.key, &s.summary);
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn markers(key: &str) -> (String, String) {
    (format!("<!-- bench:{key} -->"), format!("<!-- /bench:{key} -->"))
}

/// `text` with the block between `key`'s markers replaced by `body` (appended if absent).
fn replace_block(text: &str, key: &str, body: &str) -> String {
    let (begin, end) = markers(key);
    let block = format!("{begin}\n{body}{end}");
    match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if b < e => format!("{}{block}{}", &text[..b], &text[e + end.len()..]),
        _ => format!("{}\n{block}\n", text.trim_end()),
    }
}

/// The summary block (before the first benchmark section) with `key`'s line replaced. Each line
/// ends in `<!-- key -->`; lines are kept in [`KEYS`] order.
fn update_summary(text: &str, key: &str, line: &str) -> String {
    let (begin, end) = markers("summary");
    let mut lines: Vec<(usize, String)> = Vec::new();
    if let (Some(b), Some(e)) = (text.find(&begin), text.find(&end)) {
        for l in text[b + begin.len()..e].lines() {
            if let Some(k) = KEYS.iter().position(|k| l.ends_with(&format!("<!-- {k} -->"))) {
                lines.push((k, l.to_owned()));
            }
        }
    }
    let k = KEYS.iter().position(|x| *x == key).unwrap_or(KEYS.len());
    lines.retain(|(i, _)| *i != k);
    lines.push((k, format!("- {line} <!-- {key} -->")));
    lines.sort_by_key(|(i, _)| *i);
    let body = format!(
        "## Summary\n\n{}\n\n",
        lines.into_iter().map(|(_, l)| l).collect::<Vec<_>>().join("\n")
    );
    if text.contains(&begin) {
        return replace_block(text, "summary", &body);
    }
    let block = format!("{begin}\n{body}{end}\n");
    match text.find("<!-- bench:") {
        Some(at) => format!("{}{block}{}", &text[..at], &text[at..]),
        None => format!("{}\n{block}", text.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_and_summary_are_replaced_in_place() {
        let t = replace_block(INTRO, "storm", "storm v1\n");
        let t = update_summary(&t, "storm", "storm: ok");
        let t = replace_block(&t, "faults", "faults v1\n");
        let t = update_summary(&t, "faults", "faults: slow");
        let t = format!("{t}\nHand-written notes.\n");
        let t = replace_block(&t, "storm", "storm v2\n");
        let t = update_summary(&t, "storm", "storm: still ok");
        assert!(t.starts_with(INTRO.trim_end()));
        assert!(t.contains("storm v2") && !t.contains("storm v1"));
        assert!(t.contains("Hand-written notes."));
        let faults = t.find("- faults: slow").unwrap();
        let storm = t.find("- storm: still ok").unwrap();
        assert!(faults < storm && !t.contains("storm: ok <!--"));
        assert!(t.find("<!-- bench:summary -->").unwrap() < t.find("<!-- bench:storm -->").unwrap());
    }
}
