//! /proc/self/mountinfo -> the memory cgroup hierarchy (mount points are escaped octal, and a
//! mount point's name is chosen by whoever mounts it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memtrace::cgroup::{CgroupVersion, MemoryHierarchy};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let with_memory = MemoryHierarchy::from_mountinfo(text, |_| "cpu io memory pids".into());
    let without = MemoryHierarchy::from_mountinfo(text, |_| String::new());
    // Without a memory controller on cgroup2 only a v1 memory mount can be found.
    if let Some(h) = &without {
        assert_eq!(h.version, CgroupVersion::V1);
        assert_eq!(with_memory.as_ref(), Some(h));
    }
    if let Some(h) = with_memory {
        let _ = h.dir("/a/b");
    }
});
