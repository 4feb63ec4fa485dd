//! Reference eBPF programs for the charge-path benchmark: what each part of a per-cgroup
//! counter costs on the memcg event tracepoint. Each is a few hand-assembled instructions,
//! loaded with bpf(2) as a raw tracepoint program on `count_memcg_events` (the same dispatch as
//! memtrace's tp_btf program: both run from the tracepoint's BPF stub), attached while the
//! value lives and detached on drop. No object file, compiler or loader library needed.
//!
//! TP_PROTO(struct mem_cgroup *memcg, int item, unsigned long val): a raw tracepoint program
//! gets the arguments as u64s at ctx+0, ctx+8, ctx+16.

use std::{ffi::CString, os::fd::RawFd};

use anyhow::{Context as _, bail};

/// What a reference program does per hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `return 0`: the cost of having a program on the tracepoint at all.
    Empty,
    /// Count charges (PGPGIN) in slot 0 of a per-CPU array (no key: the lookup is inlined).
    Array,
    /// Count charges in an LRU per-CPU hash keyed by the `mem_cgroup *`: one lookup per fault.
    Lru1,
    /// Count charges and faults (PGPGIN, PGFAULT) in an LRU per-CPU hash keyed by the
    /// `mem_cgroup *`, 72-byte values: memtrace's scheme, two lookups per fault.
    Lru2,
    /// The same in a plain (preallocated, not LRU) per-CPU hash.
    Hash2,
}

impl Kind {
    pub const fn describe(self) -> &'static str {
        match self {
            Kind::Empty => "reference raw_tp, empty program (`return 0`)",
            Kind::Array => "reference raw_tp, PGPGIN → per-CPU array slot (no key)",
            Kind::Lru1 => "reference raw_tp, PGPGIN → LRU per-CPU hash by memcg",
            Kind::Lru2 => {
                "reference raw_tp, PGPGIN + PGFAULT → LRU per-CPU hash by memcg (memtrace's scheme)"
            }
            Kind::Hash2 => "reference raw_tp, PGPGIN + PGFAULT → per-CPU hash (not LRU) by memcg",
        }
    }
}

/// The memcg event items the programs count (`enum vm_event_item`, from BTF).
#[derive(Clone, Copy, Debug)]
pub struct Items {
    pub pgpgin: i32,
    pub pgfault: i32,
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
const PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
const MAP_PERCPU_HASH: u32 = 5;
const MAP_PERCPU_ARRAY: u32 = 6;
const MAP_LRU_PERCPU_HASH: u32 = 10;
const HELPER_MAP_LOOKUP: i32 = 1;
const HELPER_MAP_UPDATE: i32 = 2;
/// memtrace's `ChargeCounters`: nine u64.
const VALUE_SIZE: u32 = 72;

fn sys_bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<RawFd> {
    // SAFETY: bpf(2) with a zero-padded attribute buffer larger than any command's union member.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as RawFd)
    }
}

fn put<T: Copy>(attr: &mut [u8; 128], off: usize, v: T) {
    let n = size_of::<T>();
    // SAFETY: a plain value copied into the buffer at an in-bounds offset.
    let bytes = unsafe { std::slice::from_raw_parts((&raw const v).cast::<u8>(), n) };
    attr[off..off + n].copy_from_slice(bytes);
}

fn map_create(kind: u32, key: u32, value: u32, max: u32) -> anyhow::Result<RawFd> {
    let mut a = [0u8; 128];
    put(&mut a, 0, kind);
    put(&mut a, 4, key);
    put(&mut a, 8, value);
    put(&mut a, 12, max);
    sys_bpf(BPF_MAP_CREATE, &mut a).with_context(|| format!("creating a type {kind} map"))
}

/// One instruction, or a jump to a label, or a label.
#[derive(Clone, Copy)]
enum Op {
    I {
        code: u8,
        dst: u8,
        src: u8,
        off: i16,
        imm: i32,
    },
    /// Conditional (or `ja`) jump to a label.
    J {
        code: u8,
        dst: u8,
        imm: i32,
        to: &'static str,
    },
    /// Load a map fd (two instruction slots).
    Map {
        dst: u8,
        fd: RawFd,
    },
    L(&'static str),
}

fn i(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Op {
    Op::I {
        code,
        dst,
        src,
        off,
        imm,
    }
}

// Opcodes used below.
const MOV_K: u8 = 0xb7; // dst = imm
const MOV_X: u8 = 0xbf; // dst = src
const ADD_K: u8 = 0x07; // dst += imm
const LDX_DW: u8 = 0x79; // dst = *(u64 *)(src + off)
const STX_DW: u8 = 0x7b; // *(u64 *)(dst + off) = src
const ST_DW: u8 = 0x7a; // *(u64 *)(dst + off) = imm
const ST_W: u8 = 0x62; // *(u32 *)(dst + off) = imm
const JEQ_K: u8 = 0x15;
const JNE_K: u8 = 0x55;
const JA: u8 = 0x05;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

/// Resolves labels into offsets and encodes `struct bpf_insn`s.
fn assemble(ops: &[Op]) -> anyhow::Result<Vec<u64>> {
    let slots = |op: &Op| match op {
        Op::L(_) => 0,
        Op::Map { .. } => 2,
        _ => 1,
    };
    let mut at = std::collections::HashMap::new();
    let mut pc = 0i64;
    for op in ops {
        if let Op::L(name) = op {
            at.insert(*name, pc);
        }
        pc += slots(op);
    }
    let enc = |code: u8, dst: u8, src: u8, off: i16, imm: i32| -> u64 {
        u64::from(code)
            | (u64::from(dst | (src << 4)) << 8)
            | (u64::from(off as u16) << 16)
            | (u64::from(imm as u32) << 32)
    };
    let mut out = Vec::new();
    for op in ops {
        match *op {
            Op::I {
                code,
                dst,
                src,
                off,
                imm,
            } => out.push(enc(code, dst, src, off, imm)),
            Op::J { code, dst, imm, to } => {
                let target = *at.get(to).with_context(|| format!("no label {to}"))?;
                let off = target - out.len() as i64 - 1;
                out.push(enc(code, dst, 0, off as i16, imm));
            }
            // BPF_LD | BPF_IMM | BPF_DW with src = BPF_PSEUDO_MAP_FD.
            Op::Map { dst, fd } => {
                out.push(enc(0x18, dst, 1, 0, fd));
                out.push(0);
            }
            Op::L(_) => {}
        }
    }
    Ok(out)
}

fn program(kind: Kind, items: Items, map: RawFd) -> Vec<Op> {
    let ret = [Op::L("out"), i(MOV_K, 0, 0, 0, 0), i(EXIT, 0, 0, 0, 0)];
    let mut p = Vec::new();
    match kind {
        Kind::Empty => {}
        Kind::Array => {
            p.extend([
                i(LDX_DW, 6, 1, 8, 0),
                Op::J {
                    code: JNE_K,
                    dst: 6,
                    imm: items.pgpgin,
                    to: "out",
                },
                i(ST_W, 10, 0, -4, 0),
                i(MOV_X, 2, 10, 0, 0),
                i(ADD_K, 2, 0, 0, -4),
                Op::Map { dst: 1, fd: map },
                i(CALL, 0, 0, 0, HELPER_MAP_LOOKUP),
                Op::J {
                    code: JEQ_K,
                    dst: 0,
                    imm: 0,
                    to: "out",
                },
                i(LDX_DW, 1, 0, 0, 0),
                i(ADD_K, 1, 0, 0, 1),
                i(STX_DW, 0, 1, 0, 0),
            ]);
        }
        Kind::Lru1 | Kind::Lru2 | Kind::Hash2 => {
            p.extend([
                i(LDX_DW, 6, 1, 0, 0),
                i(LDX_DW, 7, 1, 8, 0),
                Op::J {
                    code: JEQ_K,
                    dst: 7,
                    imm: items.pgpgin,
                    to: "count",
                },
            ]);
            if kind != Kind::Lru1 {
                p.push(Op::J {
                    code: JEQ_K,
                    dst: 7,
                    imm: items.pgfault,
                    to: "count",
                });
            }
            p.extend([
                Op::J {
                    code: JA,
                    dst: 0,
                    imm: 0,
                    to: "out",
                },
                Op::L("count"),
                i(STX_DW, 10, 6, -8, 0),
                i(MOV_X, 2, 10, 0, 0),
                i(ADD_K, 2, 0, 0, -8),
                Op::Map { dst: 1, fd: map },
                i(CALL, 0, 0, 0, HELPER_MAP_LOOKUP),
                Op::J {
                    code: JNE_K,
                    dst: 0,
                    imm: 0,
                    to: "inc",
                },
            ]);
            // First sight of this memcg: insert zeroed counters.
            for k in 0..(VALUE_SIZE as i16 / 8) {
                p.push(i(ST_DW, 10, 0, -80 + 8 * k, 0));
            }
            p.extend([
                Op::Map { dst: 1, fd: map },
                i(MOV_X, 2, 10, 0, 0),
                i(ADD_K, 2, 0, 0, -8),
                i(MOV_X, 3, 10, 0, 0),
                i(ADD_K, 3, 0, 0, -80),
                i(MOV_K, 4, 0, 0, 0),
                i(CALL, 0, 0, 0, HELPER_MAP_UPDATE),
                Op::J {
                    code: JA,
                    dst: 0,
                    imm: 0,
                    to: "out",
                },
                Op::L("inc"),
                i(LDX_DW, 1, 0, 0, 0),
                i(ADD_K, 1, 0, 0, 1),
                i(STX_DW, 0, 1, 0, 0),
            ]);
        }
    }
    p.extend(ret);
    p
}

/// A reference program attached to `count_memcg_events`; detached and freed on drop.
pub struct Attached {
    fds: Vec<RawFd>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        // The link first, then the program and the map.
        for fd in self.fds.iter().rev() {
            // SAFETY: fds this value opened and owns.
            unsafe { libc::close(*fd) };
        }
    }
}

pub fn attach(kind: Kind, items: Items) -> anyhow::Result<Attached> {
    let mut fds = Vec::new();
    let map = match kind {
        Kind::Empty => -1,
        Kind::Array => map_create(MAP_PERCPU_ARRAY, 4, 8, 1)?,
        Kind::Lru1 | Kind::Lru2 => map_create(MAP_LRU_PERCPU_HASH, 8, VALUE_SIZE, 8192)?,
        Kind::Hash2 => map_create(MAP_PERCPU_HASH, 8, VALUE_SIZE, 8192)?,
    };
    if map >= 0 {
        fds.push(map);
    }
    let mut guard = Attached { fds };
    let insns = assemble(&program(kind, items, map))?;
    let license = c"GPL";
    let mut log = vec![0u8; 1 << 16];
    let mut a = [0u8; 128];
    put(&mut a, 0, PROG_TYPE_RAW_TRACEPOINT);
    put(&mut a, 4, insns.len() as u32);
    put(&mut a, 8, insns.as_ptr() as u64);
    put(&mut a, 16, license.as_ptr() as u64);
    put(&mut a, 24, 1u32); // log_level
    put(&mut a, 28, log.len() as u32);
    put(&mut a, 32, log.as_mut_ptr() as u64);
    let name = b"memtrace_bench";
    a[48..48 + name.len()].copy_from_slice(name);
    let prog = match sys_bpf(BPF_PROG_LOAD, &mut a) {
        Ok(fd) => fd,
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            bail!(
                "loading the {kind:?} reference program: {e}\n{}",
                String::from_utf8_lossy(&log[..end])
            );
        }
    };
    guard.fds.push(prog);
    let tp = CString::new(super::daemon::CHARGE_TP)?;
    let mut a = [0u8; 128];
    put(&mut a, 0, tp.as_ptr() as u64);
    put(&mut a, 8, prog as u32);
    let link = sys_bpf(BPF_RAW_TRACEPOINT_OPEN, &mut a).with_context(|| {
        format!(
            "attaching the {kind:?} reference program to {}",
            super::daemon::CHARGE_TP
        )
    })?;
    guard.fds.push(link);
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_resolve_past_wide_instructions() {
        let items = Items {
            pgpgin: 0,
            pgfault: 23,
        };
        let code = assemble(&program(Kind::Array, items, 7)).unwrap();
        // 0 ldx; 1 jne -> out; 2 st; 3 mov; 4 add; 5-6 ld_imm64; 7 call; 8 jeq -> out; 9 ldx;
        // 10 add; 11 stx; 12 out: mov; 13 exit
        assert_eq!(code.len(), 14);
        let off = |insn: u64| ((insn >> 16) & 0xffff) as u16 as i16;
        assert_eq!(off(code[1]), 12 - 1 - 1);
        assert_eq!(off(code[8]), 12 - 8 - 1);
        assert_eq!(code[5] & 0xff, 0x18);
        assert_eq!((code[5] >> 8) & 0xff, 1 << 4 | 1);
        assert_eq!((code[5] >> 32) as i32, 7);
        assert_eq!(code[13] & 0xff, u64::from(EXIT));
        let empty = assemble(&program(Kind::Empty, items, -1)).unwrap();
        assert_eq!(empty.len(), 2);
    }
}
