//! The kernel's own account of an OOM kill, from `/dev/kmsg`: the memory.stat dump of the OOM
//! cgroup (mm/memcontrol.c mem_cgroup_print_oom_meminfo) and the `Killed process` line. The
//! dump is rate-limited (mm/oom_kill.c oom_rs): on a busy host a kill may have none.

use std::{collections::HashMap, io::Read, os::unix::fs::OpenOptionsExt};

/// A reader of `/dev/kmsg` that sees only what was logged after it was opened.
pub struct Kmsg {
    file: std::fs::File,
}

impl Kmsg {
    pub fn open_at_end() -> std::io::Result<Self> {
        use std::io::{Seek, SeekFrom};
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")?;
        file.seek(SeekFrom::End(0))?;
        Ok(Self { file })
    }

    /// Every message logged since the last call (one record per read; EPIPE: some were
    /// overwritten before we read them, go on).
    pub fn drain(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    // One record per printk; a record with several lines (6.1 prints the whole
                    // memory.stat dump in one) has them escaped as \x0a.
                    if let Some((_, msg)) = rec.split_once(';') {
                        let msg = msg.lines().next().unwrap_or("");
                        out.extend(msg.split("\\x0a").map(str::to_owned));
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        out
    }
}

/// The memory.stat dump printed for cgroup `rel` (path from the hierarchy root), key -> value.
pub fn oom_stat_dump(lines: &[String], rel: &str) -> Option<HashMap<String, u64>> {
    let head = format!("Memory cgroup stats for {rel}:");
    let start = lines.iter().rposition(|l| l.trim_end() == head)?;
    let mut out = HashMap::new();
    for l in &lines[start + 1..] {
        let mut it = l.split_whitespace();
        match (
            it.next(),
            it.next().and_then(|v| v.parse::<u64>().ok()),
            it.next(),
        ) {
            (Some(k), Some(v), None) => {
                out.insert(k.to_owned(), v);
            }
            _ => break,
        }
    }
    Some(out)
}

/// `Killed process PID (comm) total-vm:..kB, anon-rss:NkB, ...`: anon-rss in bytes.
pub fn killed_anon_rss(lines: &[String], pid: u32) -> Option<u64> {
    let needle = format!("Killed process {pid} (");
    let line = lines.iter().find(|l| l.contains(&needle))?;
    let rest = line.split("anon-rss:").nth(1)?;
    let kb: u64 = rest.split("kB").next()?.trim().parse().ok()?;
    Some(kb * 1024)
}
