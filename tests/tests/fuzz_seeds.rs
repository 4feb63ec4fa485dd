//! The fuzz seeds stay in step with the record layouts.

/// The fuzz seeds (fuzz/seeds/make_seeds.py) are streams of whole records of today's
/// sizes, each one decodable: a record that changes size without new seeds fails here.
#[test]
fn fuzz_seeds_are_whole_records() {
    use memtrace_common::{
        oom::OOM_VICTIM_RECORD_LEN,
        oom_context::{KIND_OOM_CONTEXT, OOM_CONTEXT_RECORD_LEN},
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/oom_record");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("seed dir") {
        let path = entry.expect("entry").path();
        let data = std::fs::read(&path).expect("seed");
        let mut rest = &data[..];
        while !rest.is_empty() {
            let kind = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
            let len = if kind == KIND_OOM_CONTEXT {
                OOM_CONTEXT_RECORD_LEN
            } else {
                OOM_VICTIM_RECORD_LEN
            };
            assert!(
                rest.len() >= len,
                "{}: {} bytes left, a record is {len}: rerun fuzz/seeds/make_seeds.py",
                path.display(),
                rest.len()
            );
            let (record, tail) = rest.split_at(len);
            memtrace::kernel::records::OomRecord::try_from(record)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            rest = tail;
            seen += 1;
        }
    }
    assert!(seen >= 8, "{seen} records in the seeds");
}
