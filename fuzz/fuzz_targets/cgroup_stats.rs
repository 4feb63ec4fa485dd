//! The memory cgroup file parsers, on one input each (the kernel's files are text: memtrace
//! reads them with read_to_string, so only UTF-8 reaches the parsers).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memtrace::cgroup::stats::{
    parse_flat_keyed, parse_limit_v1, parse_max_v2, parse_pressure, parse_u64_file,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_flat_keyed(text) {
        Ok(map) => assert!(!map.is_empty()),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    let plain = parse_u64_file(text);
    match parse_limit_v1(text) {
        // Only values under the "unlimited" sentinel are limits.
        Ok(Some(v)) => assert!(v < i64::MAX as u64 && plain == Ok(v)),
        Ok(None) => assert!(plain.is_ok()),
        Err(e) => assert_eq!(plain, Err(e)),
    }
    match parse_max_v2(text) {
        Ok(Some(v)) => assert_eq!(plain, Ok(v)),
        Ok(None) => assert_eq!(text.trim(), "max"),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match parse_pressure(text) {
        Ok(p) => {
            for l in std::iter::once(p.some).chain(p.full) {
                assert!(l.avg10.is_finite() && l.avg60.is_finite() && l.avg300.is_finite());
                assert!(l.avg10 >= 0.0 && l.avg60 >= 0.0 && l.avg300 >= 0.0);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
