//! memtrace's eBPF programs. One file per hook under `probes/`; the userspace hook table
//! (`memtrace::hooks`) decides which of them is loaded on the running kernel.
#![no_std]
#![no_main]

mod kernel;
mod maps;
mod memcg_stat;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible: bpf_probe_read_kernel and tp_btf programs are GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
