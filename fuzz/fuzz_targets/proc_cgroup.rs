//! /proc/<pid>/cgroup -> the memory cgroup of a process.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memtrace::cgroup::{CgroupVersion, paths::parse_proc_cgroup};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for v in [CgroupVersion::V1, CgroupVersion::V2] {
        if let Some(p) = parse_proc_cgroup(text, v) {
            assert!(!p.contains('\n'));
        }
    }
});
