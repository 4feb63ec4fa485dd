//! Processes placed in a test cgroup before they allocate anything.

use std::{
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
};

use crate::TestCgroup;

/// The test allocator binary (src/bin/memtrace-alloc.rs): `$MEMTRACE_ALLOC`, else next to the
/// test executables.
pub fn alloc_bin() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("MEMTRACE_ALLOC") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    // A test: target/<profile>/deps/<test> -> target/<profile>/memtrace-alloc. A binary of
    // this crate (memtrace-soak): its sibling.
    let dir = exe.parent().expect("target dir");
    let candidates = [
        dir.join("memtrace-alloc"),
        dir.parent().unwrap_or(dir).join("memtrace-alloc"),
    ];
    let bin = candidates.iter().find(|b| b.exists()).unwrap_or(&candidates[1]);
    assert!(
        bin.exists(),
        "{} not built: cargo build -p memtrace-tests --bins",
        bin.display()
    );
    bin.clone()
}

/// The allocator's comm, as the kernel reports it.
pub const ALLOC_COMM: &str = "memtrace-alloc";

/// Starts `memtrace-alloc args...` inside `cg`: the child joins the cgroup between fork and
/// exec, so everything it allocates is charged there.
pub fn alloc_in(cg: &TestCgroup, args: &[&str], oom_score_adj: Option<i32>) -> Child {
    spawn_in(cg, Command::new(alloc_bin()).args(args), oom_score_adj)
}

/// Starts `cmd` inside `cg` (joined between fork and exec), stdout piped.
pub fn spawn_in(cg: &TestCgroup, cmd: &mut Command, oom_score_adj: Option<i32>) -> Child {
    let procs = cg.procs_file();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: only async-signal-safe work between fork and exec: open/write/close via std::fs
    // allocate, so write the pid with raw syscalls.
    unsafe {
        cmd.pre_exec(move || {
            join_cgroup(&procs)?;
            if let Some(adj) = oom_score_adj {
                write_raw(std::path::Path::new("/proc/self/oom_score_adj"), adj as i64)?;
            }
            Ok(())
        });
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()))
}

/// `memtrace-alloc args...` in the cgroup directory `dir` (one the test made itself).
pub fn alloc_in_dir(dir: &std::path::Path, args: &[&str]) -> Child {
    let procs = dir.join("cgroup.procs");
    let mut cmd = Command::new(alloc_bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: as in alloc_in: raw syscalls only between fork and exec.
    unsafe { cmd.pre_exec(move || join_cgroup(&procs)) };
    cmd.spawn().expect("spawn memtrace-alloc")
}

/// Waits for the child's "ready" line.
pub fn wait_ready(child: &mut Child) {
    let mut line = String::new();
    let out = child.stdout.as_mut().expect("piped stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).expect("read ready");
    assert_eq!(line.trim(), "ready", "allocator did not get ready");
}

fn join_cgroup(procs: &std::path::Path) -> std::io::Result<()> {
    write_raw(procs, 0) // "0" means the writing process itself
}

/// open + write + close with no allocation after fork.
fn write_raw(path: &std::path::Path, value: i64) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let mut cpath = [0u8; 512];
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= cpath.len() {
        return Err(std::io::Error::other("path too long"));
    }
    cpath[..bytes.len()].copy_from_slice(bytes);
    let mut buf = [0u8; 24];
    let mut n = value.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if value < 0 {
        i -= 1;
        buf[i] = b'-';
    }
    // SAFETY: NUL-terminated path; buffer slice within bounds.
    unsafe {
        let fd = libc::open(cpath.as_ptr().cast(), libc::O_WRONLY);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let r = libc::write(fd, buf[i..].as_ptr().cast(), buf.len() - i);
        libc::close(fd);
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
