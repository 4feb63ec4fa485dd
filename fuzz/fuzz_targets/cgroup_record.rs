//! `cgroup:cgroup_mkdir` records from the CGROUP_EVENTS ring buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memtrace::kernel::records::CgroupCreated;
use memtrace_common::cgroup::{CGROUP_MKDIR_RECORD_LEN, CGROUP_PATH_LEN};

fuzz_target!(|data: &[u8]| {
    match CgroupCreated::try_from(data) {
        Ok(c) => {
            assert_eq!(data.len(), CGROUP_MKDIR_RECORD_LEN);
            if let Some(p) = &c.path {
                // A path is only ever taken whole and absolute: it names a cgroup directory.
                assert!(p.starts_with('/'), "{p:?}");
                assert!(!p.contains('\0'), "{p:?}");
                // from_utf8_lossy may grow invalid bytes into U+FFFD (3 bytes each).
                assert!(p.len() <= 3 * CGROUP_PATH_LEN);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
