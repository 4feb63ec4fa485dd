//! From a kernel record to the kill memtrace reports: cgroup paths, container attribution
//! ([`attribution`]), the badness score and the verdict ([`diagnosis`]), assembled in [`kill`].

pub mod attribution;
pub mod diagnosis;
pub mod kill;
