//! Who is charging memory: the kernel's per-cgroup counters and sampled stacks ([`maps`]) summed
//! and windowed ([`accounting`]), made readable ([`stacks`], [`symbolize`], with the mappings of
//! sampled processes kept by [`task_maps`] for when they are gone), pre-OOM warnings
//! ([`warnings`]), and the worker thread of `memtrace watch` that runs them ([`worker`]).

pub mod accounting;
pub mod kill_context;
pub mod maps;
pub mod stacks;
pub mod sweep;
pub mod symbolize;
pub mod task_maps;
pub mod warnings;
pub mod worker;
