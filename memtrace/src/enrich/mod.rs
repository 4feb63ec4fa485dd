//! From a kernel record to the kill memtrace reports: cgroup paths, container attribution
//! ([`attribution`], named by [`names`] from the engines' records), the badness score and the verdict ([`diagnosis`]), assembled in [`kill`].

pub mod at_kill;
pub mod attribution;
pub mod diagnosis;
pub mod docker;
pub mod episodes;
pub mod kill;
pub mod memsw;
pub mod names;
pub mod next_in_line;
pub mod user_kill;
