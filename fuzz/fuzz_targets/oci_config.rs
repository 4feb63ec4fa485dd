//! OCI bundle `config.json` -> Kubernetes names. The file is written by the container runtime
//! from the pod spec, so its annotations are under the pod author's control.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memtrace::enrich::attribution::names_from_oci_config;

fuzz_target!(|data: &[u8]| {
    match names_from_oci_config(data) {
        Ok(n) => {
            for v in [&n.namespace, &n.pod, &n.container].into_iter().flatten() {
                assert!(!v.is_empty());
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
