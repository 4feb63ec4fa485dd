//! One file per hook. Each program fills the same record types from `memtrace_common`.

mod cgroup_mkdir;
mod charge;
mod mark_victim;
mod oom_kill_process;
