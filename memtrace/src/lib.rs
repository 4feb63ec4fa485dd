//! memtrace: an eBPF OOM-kill tracer. The binary (`main.rs`) is a thin shell over this library.

pub mod attribution;
pub mod cgroup;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod diagnosis;
pub mod event;
pub mod hooks;
pub mod kernel_btf;
pub mod kill;
pub mod metrics;
pub mod output;
pub mod privileges;
pub mod sinks;
pub mod tracefs;
pub mod tracer;
