//! tracefs `events/<category>/<name>/format` -> field offsets and sizes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memtrace::kernel::tracefs::parse_format;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_format(text) {
        Ok(fields) => {
            for name in fields.keys() {
                assert!(!name.is_empty() && !name.contains('['), "{name:?}");
            }
        }
        // The error is the 1-based number of a line that exists.
        Err(line) => assert!(line >= 1 && line <= text.lines().count(), "{line}"),
    }
});
