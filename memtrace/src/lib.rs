//! memtrace: an eBPF OOM-kill tracer. The binary (`main.rs`) is a thin shell over this library.
//!
//! The modules follow the data: `kernel` (the eBPF side: hooks, loading, records from the ring
//! buffers) → `cgroup` (which cgroup, its memory files, the kernel's own kill counts) →
//! `enrich` (the kill as reported: attribution, badness, verdict) and `charges` (who is
//! charging memory, stacks, pre-OOM warnings) → `output` (text, JSON, Prometheus) and `sinks`
//! (where events go). `commands` holds one module per subcommand; `cli` and `config` their
//! inputs.

pub mod cgroup;
pub mod charges;
pub mod cli;
pub mod commands;
pub mod config;
pub mod enrich;
pub mod kernel;
pub mod output;
pub mod pseudo_fs;
pub mod sinks;
