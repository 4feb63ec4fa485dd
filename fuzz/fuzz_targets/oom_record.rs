//! The OOM ring buffer's records, decoded and then handled exactly as `memtrace watch` handles
//! them: enriched (no cgroup hierarchy: no file reads beyond /proc) and written as text and
//! JSON. The input is a stream of records, as `drain` sees them: each record's length follows
//! from its kind (a context record is `OOM_CONTEXT_RECORD_LEN` bytes, anything else is tried as a
//! victim record of `OOM_VICTIM_RECORD_LEN`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use memtrace::{
    kernel::records::OomRecord,
    enrich::enricher::{EnrichOptions, Enricher},
    output::{json, text},
};
use memtrace_common::{
    oom::OOM_VICTIM_RECORD_LEN,
    oom_context::{KIND_OOM_CONTEXT, OOM_CONTEXT_RECORD_LEN},
};

fuzz_target!(|data: &[u8]| {
    let mut enricher = Enricher::new(None, EnrichOptions::default());
    let mut rest = data;
    while !rest.is_empty() {
        let kind = rest
            .get(..4)
            .map(|k| u32::from_le_bytes([k[0], k[1], k[2], k[3]]));
        let len = if kind == Some(KIND_OOM_CONTEXT) {
            OOM_CONTEXT_RECORD_LEN
        } else {
            OOM_VICTIM_RECORD_LEN
        };
        let (record, tail) = rest.split_at(len.min(rest.len()));
        rest = tail;
        match OomRecord::try_from(record) {
            Ok(OomRecord::Victim(r)) => {
                assert_eq!(record.len(), OOM_VICTIM_RECORD_LEN);
                let kill = enricher.enrich(*r).kill;
                let line = text::event(&kill, 1_000);
                assert!(!line.contains('\n') || line.contains("\n    why: "), "{line:?}");
                let v = json::event(&kill, "fuzz", 1_000);
                assert!(v.is_object());
                let _ = v.to_string();
            }
            Ok(OomRecord::Context(c)) => {
                assert_eq!(record.len(), OOM_CONTEXT_RECORD_LEN);
                enricher.note_context(c);
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
});
