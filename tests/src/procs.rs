//! Processes placed in a test cgroup before they allocate anything.

use std::{
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
};

use crate::TestCgroup;

/// Appends 1 MiB bytearrays until the OOM killer stops it (the brief's verified allocator).
pub const ALLOCATE_FOREVER: &str = "a=[]\nwhile True: a.append(bytearray(1<<20))";

/// Starts `python3 -c script` inside `cg`: the child joins the cgroup between fork and exec.
pub fn python_in(cg: &TestCgroup, script: &str, oom_score_adj: Option<i32>) -> Child {
    let procs = cg.procs_file();
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
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
    cmd.spawn().expect("spawn python3")
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
