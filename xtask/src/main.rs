//! Developer tasks, run as `cargo xtask <task>`.

mod bench;
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
    /// Build memtrace and run every test, the real-OOM eBPF tests included.
    Test(test::TestArgs),
    /// Run the integration tests in Debian kernels (6.1, 6.12, ...) under qemu.
    Vm(vm::VmArgs),
    /// Measure memtrace (charge-path overhead, kill latency, storms, footprint, ring buffer)
    /// into BENCHMARKS.md.
    Bench(bench::BenchArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Test(args) => test::run(&args),
        Task::Vm(args) => vm::run(&args),
        Task::Bench(args) => bench::run(&args),
    }
}
