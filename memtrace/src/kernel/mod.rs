//! The kernel side: which hooks exist and which variant attaches ([`hooks`]), the layouts the
//! programs need from BTF and tracefs, the privileges to load them, the loaded object
//! ([`tracer`]) and the records it writes to the ring buffers ([`records`]).

pub mod attach;
pub mod btf;
pub mod clock;
pub mod hooks;
pub mod memcg_stat;
pub mod oom_path;
pub mod privileges;
pub mod records;
mod select;
pub mod tracefs;
pub mod tracer;
pub mod user_kill;
