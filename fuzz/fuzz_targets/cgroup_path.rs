//! Cgroup path -> Kubernetes pod / container attribution. The path comes from the kernel (a
//! cgroup's name is chosen by whoever created it: any container, any user with a delegated
//! subtree), so it is hostile input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memtrace::enrich::attribution::parse_cgroup_path;

fn lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fuzz_target!(|data: &[u8]| {
    let path = String::from_utf8_lossy(data);
    let a = parse_cgroup_path(&path);
    // Only a well-formed id may leave the parser: it becomes part of a file path later.
    if let Some(id) = &a.container_id {
        assert!(id.len() == 64 && lower_hex(id), "{id:?}");
        assert!(a.runtime.is_some());
    }
    if let Some(uid) = &a.pod_uid {
        assert!(uid.len() == 32 || uid.len() == 36, "{uid:?}");
        assert!(lower_hex(&uid.replace('-', "")), "{uid:?}");
        assert!(a.qos.is_some());
    }
    if let Some(unit) = &a.systemd_unit {
        assert!(!unit.contains('/'));
    }
    assert!(a.names.is_none());
});
