//! Types shared by the eBPF programs and the userspace daemon.
//!
//! Everything here is `#[repr(C)]` plain data. The kernel side writes these records; userspace
//! never transmutes them back: it decodes them field by field, length-checked
//! (`memtrace::event::decode`). The `user` feature adds the `aya::Pod` impls that let userspace
//! hand the layouts to the programs as global variables.
#![no_std]

pub mod cgroup;
pub mod charge;
pub mod counters;
pub mod layout;
pub mod memcg_stat;
pub mod oom;
pub mod oom_context;
pub mod user_kill;
