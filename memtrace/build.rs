//! Builds the eBPF object (memtrace-ebpf) with the pinned nightly and bpf-linker, for
//! `include_bytes_aligned!` in `src/kernel/tracer.rs` (aya-template's arrangement).
use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// Must use the same LLVM major as bpf-linker (22); scripts/setup.sh installs both.
const EBPF_TOOLCHAIN: &str = "nightly-2026-08-01";

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf_package = packages
        .into_iter()
        .find(|cargo_metadata::Package { name, .. }| name.as_str() == "memtrace-ebpf")
        .ok_or_else(|| anyhow!("memtrace-ebpf package not found"))?;
    let cargo_metadata::Package {
        name, manifest_path, ..
    } = ebpf_package;
    let ebpf_package = aya_build::Package {
        name: name.as_str(),
        root_dir: manifest_path
            .parent()
            .ok_or_else(|| anyhow!("no parent for {manifest_path}"))?
            .as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([ebpf_package], Toolchain::Custom(EBPF_TOOLCHAIN))
        .context("building the eBPF object failed: run scripts/setup.sh (nightly + bpf-linker)")
}
