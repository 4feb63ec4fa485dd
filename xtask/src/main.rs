//! Developer tasks, run as `cargo xtask <task>`.

mod bench;
mod deb;
mod fuzz;
mod image;
mod soak;
mod test;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "memtrace developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build the Debian package (target/debian); `--check` installs, runs and purges it.
    Deb(deb::DebArgs),
    /// Build memtrace and run every test, the real-OOM eBPF tests included.
    Test(test::TestArgs),
    /// Run the integration tests in Debian kernels (6.1, 6.12, ...) under qemu.
    Vm(vm::VmArgs),
    /// Run every cargo-fuzz target for a while, one at a time (CI: ~20 s each).
    Fuzz(fuzz::FuzzArgs),
    /// Real OOM kills for N minutes with memtrace running: every kill reported, RSS/fds sampled.
    Soak(soak::SoakArgs),
    /// Build the container image deploy/daemonset.yaml runs, offline (Containerfile on scratch).
    Image(image::ImageArgs),
    /// Measure memtrace (charge-path overhead, kill latency, storms, footprint, ring buffer)
    /// into BENCHMARKS.md.
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Test(args) => test::run(&args),
        Task::Deb(args) => deb::run(&args),
        Task::Vm(args) => vm::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Soak(args) => soak::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::Image(args) => image::run_image(&args),
    }
}
