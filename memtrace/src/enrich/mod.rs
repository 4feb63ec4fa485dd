//! The enrich stage: from a kernel record to the kill memtrace reports ([`kill`], the model),
//! built in one place ([`enricher`]): cgroup paths, container attribution ([`attribution`],
//! named by [`names`] from the engines' records), the badness score and the verdict
//! ([`diagnosis`]), what would have avoided it ([`next_in_line`]), its OOM episode
//! ([`episodes`]) and the charging stacks before it (those published after it: [`later_stacks`]).

pub mod at_kill;
pub mod attribution;
pub mod build;
pub mod diagnosis;
pub mod docker;
pub mod enricher;
pub mod episodes;
pub mod kill;
pub mod later_stacks;
pub mod memsw;
pub mod names;
pub mod next_in_line;
pub mod user_kill;
