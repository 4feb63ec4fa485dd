//! The test allocator: a small static-free program with a known allocating function, so tests
//! need no interpreter (the VM images have none) and stack tests can look for its name.
//!
//! memtrace-alloc grow [CHUNK_MIB]      allocate and touch CHUNK_MIB (default 1) forever
//! memtrace-alloc threads N [CHUNK_MIB]  N threads besides the leader; only the last one
//!                                      allocates (as `grow`), the leader and the rest sleep
//! memtrace-alloc hold MIB              allocate and touch MIB, print "ready", sleep
//! memtrace-alloc shm PATH MIB          write MIB to a tmpfs file, print "ready", sleep
//! memtrace-alloc cache PATH MIB        write MIB to a disk file, map and mlock it (page cache
//!                                      the kernel cannot reclaim), print "ready", sleep
//! memtrace-alloc trickle MIB_PER_S MAX_MIB   charge at a steady rate, forever: allocate 1 MiB
//!                                      chunks, free them all on reaching MAX_MIB, repeat
//! memtrace-alloc huge                  allocate and touch transparent huge pages forever: 2 MiB
//!                                      aligned, madvise(MADV_HUGEPAGE), one fault per 2 MiB

use std::{hint::black_box, io::Write as _, time::Duration};

/// Allocates `bytes` and touches every page, so the memory is charged now.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn memtrace_test_allocate_chunk(bytes: usize) -> *mut u8 {
    let mut v = vec![0u8; bytes];
    for i in (0..bytes).step_by(4096) {
        v[i] = 1;
    }
    black_box(Box::leak(v.into_boxed_slice()).as_mut_ptr())
}

/// Like [`memtrace_test_allocate_chunk`], but the memory can be freed: for steady charging.
#[inline(never)]
pub fn memtrace_test_trickle_chunk(bytes: usize) -> Vec<u8> {
    let mut v = vec![0u8; bytes];
    for i in (0..bytes).step_by(4096) {
        v[i] = 1;
    }
    black_box(v)
}

/// Maps 32 MiB aligned to 2 MiB, asks for huge pages and touches one byte per 2 MiB: where
/// transparent huge pages are on (`always`, or `madvise` as here), each touch is one fault that
/// charges 2 MiB. Returns false if the mapping failed.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn memtrace_test_allocate_huge() -> bool {
    const HUGE: usize = 2 << 20;
    const LEN: usize = 32 << 20;
    // SAFETY: a fresh private anonymous mapping, never unmapped (the memory is kept).
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN + HUGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return false;
    }
    let start = (addr as usize).next_multiple_of(HUGE);
    // SAFETY: [start, start + LEN) lies inside the mapping just made.
    unsafe { libc::madvise(start as *mut libc::c_void, LEN, libc::MADV_HUGEPAGE) };
    // SAFETY: [start, start + LEN) lies inside the mapping just made, and nothing else uses it.
    let mem = unsafe { std::slice::from_raw_parts_mut(start as *mut u8, LEN) };
    // The store is in this function (no call in between), so its frame is the one sampled.
    for off in (0..LEN).step_by(HUGE) {
        mem[off] = 1;
    }
    black_box(mem);
    true
}

fn ready_then_sleep() -> ! {
    println!("ready");
    let _ = std::io::stdout().flush();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Writes `bytes` to a file on disk, then maps and mlocks it: its page cache stays charged to
/// our cgroup and cannot be reclaimed (mlocked pages are unevictable).
fn lock_cache(path: &str, bytes: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..bytes >> 20 {
        f.write_all(&chunk)?;
    }
    f.sync_all()?;
    // SAFETY: a fresh shared read-only mapping of a file we own; never unmapped (we sleep).
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the range was just mapped.
    if unsafe { libc::mlock(addr, bytes) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn mib(arg: Option<String>, default: usize) -> usize {
    arg.and_then(|a| a.parse().ok()).unwrap_or(default) << 20
}

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("grow") => {
            let chunk = mib(args.next(), 1);
            loop {
                memtrace_test_allocate_chunk(chunk);
            }
        }
        Some("threads") => {
            let n = args
                .next()
                .and_then(|a| a.parse::<usize>().ok())
                .unwrap_or(4)
                .max(1);
            let chunk = mib(args.next(), 1);
            for i in 0..n {
                std::thread::spawn(move || {
                    if i + 1 == n {
                        loop {
                            memtrace_test_allocate_chunk(chunk);
                        }
                    }
                    loop {
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                });
            }
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        Some("hold") => {
            memtrace_test_allocate_chunk(mib(args.next(), 16));
            ready_then_sleep()
        }
        Some("trickle") => {
            let per_s = args
                .next()
                .and_then(|a| a.parse::<u64>().ok())
                .unwrap_or(16)
                .max(1);
            let max = args
                .next()
                .and_then(|a| a.parse::<usize>().ok())
                .unwrap_or(64)
                .max(1);
            let pause = Duration::from_micros(1_000_000 / per_s);
            println!("ready");
            let _ = std::io::stdout().flush();
            loop {
                let mut held = Vec::with_capacity(max);
                for _ in 0..max {
                    held.push(memtrace_test_trickle_chunk(1 << 20));
                    std::thread::sleep(pause);
                }
                drop(held);
            }
        }
        Some("shm") => {
            let path = args.next().unwrap_or_else(|| "/dev/shm/memtrace-test".into());
            // 1 MiB at a time: the file's pages are charged, our own anon memory stays small.
            let chunk = vec![7u8; 1 << 20];
            let written = std::fs::File::create(&path).and_then(|mut f| {
                for _ in 0..mib(args.next(), 16) >> 20 {
                    f.write_all(&chunk)?;
                }
                Ok(())
            });
            if let Err(e) = written {
                eprintln!("memtrace-alloc: {path}: {e}");
                std::process::exit(1);
            }
            ready_then_sleep()
        }
        Some("huge") => loop {
            if !memtrace_test_allocate_huge() {
                eprintln!("memtrace-alloc: mmap: {}", std::io::Error::last_os_error());
                std::process::exit(1);
            }
        },
        Some("cache") => {
            let path = args.next().unwrap_or_else(|| "/tmp/memtrace-test-cache".into());
            if let Err(e) = lock_cache(&path, mib(args.next(), 16)) {
                eprintln!("memtrace-alloc: {path}: {e}");
                std::process::exit(1);
            }
            ready_then_sleep()
        }
        _ => {
            eprintln!(
                "usage: memtrace-alloc grow [CHUNK_MIB] | threads N [CHUNK_MIB] | hold MIB | shm PATH MIB | cache PATH MIB | trickle MIB_PER_S MAX_MIB | huge"
            );
            std::process::exit(2);
        }
    }
}
