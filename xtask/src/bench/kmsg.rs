//! The kernel log as a kmsg-parsing OOM watcher (cAdvisor, kubernetes-oomkill-exporter) sees
//! it: `/dev/kmsg` records read from the end as they come, and a calibration of their clock.
//!
//! A record's timestamp is the printk clock (`local_clock()`, µs since boot, not counting
//! suspend): the sched_clock family, which is close to CLOCK_MONOTONIC but not the same
//! clock. memtrace stamps its records with CLOCK_BOOTTIME (`bpf_ktime_get_boot_ns`), which is
//! CLOCK_MONOTONIC plus the time spent suspended. To put both on one axis, the offset
//! `printk clock − CLOCK_MONOTONIC` is measured by writing marker lines to /dev/kmsg between two
//! CLOCK_MONOTONIC readings (the record is stamped inside the write), and
//! `CLOCK_BOOTTIME − CLOCK_MONOTONIC` is read directly.

use std::{
    io::{Read as _, Write as _},
    os::{fd::AsRawFd as _, unix::fs::OpenOptionsExt as _},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;

use super::sys;

#[derive(Clone, Debug)]
pub struct Record {
    pub ts_us: u64,
    pub text: String,
    /// CLOCK_BOOTTIME when this reader got the record.
    pub read_boot_ns: u64,
}

pub struct Reader {
    records: Arc<Mutex<Vec<Record>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Reader {
    /// Reads every record logged from now on.
    pub fn start() -> anyhow::Result<Self> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .context("opening /dev/kmsg")?;
        // SAFETY: lseek on the fd we own: SEEK_END skips the records already logged.
        unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_END) };
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (records.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            while !s.load(Ordering::Relaxed) {
                let mut p = libc::pollfd {
                    fd: f.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                if unsafe { libc::poll(&mut p, 1, 100) } <= 0 {
                    continue;
                }
                loop {
                    // One record per read; EPIPE when records were overwritten (read on),
                    // EAGAIN when there is no more.
                    match f.read(&mut buf) {
                        Ok(n) if n > 0 => {
                            let now = sys::boot_ns();
                            if let Some(rec) = parse(&buf[..n], now) {
                                r.lock().unwrap().push(rec);
                            }
                        }
                        Ok(_) => break,
                        Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                        Err(_) => break,
                    }
                }
            }
        });
        Ok(Self {
            records,
            stop,
            thread: Some(thread),
        })
    }

    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    /// `printk clock − CLOCK_MONOTONIC` in ns, and its uncertainty (±ns): from marker lines.
    pub fn calibrate(&self, tag: &str) -> anyhow::Result<(i64, i64)> {
        let mut w = std::fs::OpenOptions::new().write(true).open("/dev/kmsg")?;
        let mut marks = Vec::new();
        // /dev/kmsg writers are rate-limited to 10 lines per 5 s per open file.
        for i in 0..5 {
            let text = format!(
                "memtrace-bench: clock calibration {tag} {} {i}",
                std::process::id()
            );
            let m0 = sys::mono_ns();
            w.write_all(format!("{text}\n").as_bytes())?;
            let m1 = sys::mono_ns();
            marks.push((text, m0, m1));
            std::thread::sleep(Duration::from_millis(2));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            let recs = self.records();
            let found: Vec<(i64, i64)> = marks
                .iter()
                .filter_map(|(text, m0, m1)| {
                    let r = recs.iter().find(|r| r.text == *text)?;
                    // The µs timestamp is truncated: the middle of its µs.
                    let k = (r.ts_us * 1000 + 500) as i64;
                    Some((k - ((m0 + m1) / 2) as i64, ((m1 - m0) / 2 + 500) as i64))
                })
                .collect();
            if found.len() == marks.len() {
                return Ok(*found.iter().min_by_key(|(_, err)| *err).expect("five marks"));
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "calibration lines did not come back from /dev/kmsg"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `prio,seq,ts_us,flags[,…];text\n[ continuation]`.
fn parse(raw: &[u8], read_boot_ns: u64) -> Option<Record> {
    let s = String::from_utf8_lossy(raw);
    let (head, rest) = s.split_once(';')?;
    let ts_us = head.split(',').nth(2)?.parse().ok()?;
    let text = rest.lines().next().unwrap_or_default().to_owned();
    Some(Record {
        ts_us,
        text,
        read_boot_ns,
    })
}

/// The pid of a `… Killed process <pid> (comm) …` line.
pub fn killed_pid(text: &str) -> Option<u64> {
    let rest = &text[text.find("Killed process ")? + "Killed process ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records() {
        let r = parse(
            b"3,1234,5678901,-;Memory cgroup out of memory: Killed process 42 (memtrace-alloc) total-vm:1kB\n",
            7,
        )
        .unwrap();
        assert_eq!(r.ts_us, 5678901);
        assert_eq!(killed_pid(&r.text), Some(42));
        assert_eq!(killed_pid("oom-kill:constraint=CONSTRAINT_MEMCG"), None);
    }
}
