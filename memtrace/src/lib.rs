//! memtrace: an eBPF OOM-kill tracer. The binary (`main.rs`) is a thin shell over this library.

pub mod attribution;
pub mod cgroup;
pub mod charge_watch;
pub mod charges;
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
pub mod reconcile;
pub mod sinks;
pub mod stacks;
pub mod symbolize;
pub mod tracefs;
pub mod tracer;
pub mod warnings;
