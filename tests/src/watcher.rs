//! `memtrace watch --output json` as a child process: started, waited on until it says it is
//! attached, read line by line, and stopped with SIGTERM (by its own pid).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use serde_json::Value;

pub struct Watcher {
    child: Child,
    events: mpsc::Receiver<Value>,
    stderr: mpsc::Receiver<String>,
    /// Every stderr line seen so far.
    pub stderr_lines: Vec<String>,
}

impl Watcher {
    /// Starts memtrace with `extra` arguments after `watch --output json`.
    pub fn start(extra: &[&str]) -> Self {
        let mut child = Command::new(crate::memtrace_bin())
            .args(["watch", "--output", "json"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn memtrace");
        let (etx, events) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: Value =
                    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                if etx.send(v).is_err() {
                    break;
                }
            }
        });
        let (stx, stderr) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[memtrace] {line}");
                if stx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut w = Self {
            child,
            events,
            stderr,
            stderr_lines: vec![],
        };
        w.wait_stderr("memtrace: attached", Duration::from_secs(30));
        w
    }

    /// Waits for a stderr line containing `needle`; panics with what was seen on timeout.
    pub fn wait_stderr(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_lines.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => {
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "no {needle:?} from memtrace within {timeout:?} (exit: {status:?}); stderr: {:#?}",
                        self.stderr_lines
                    )
                }
            }
        }
    }

    /// The next event for which `pred` holds (other tests' kills are skipped).
    pub fn next_event(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) if pred(&v) => return v,
                Ok(_) => continue,
                Err(_) => panic!(
                    "no matching OOM event within {timeout:?}; stderr: {:#?}",
                    self.stderr_lines
                ),
            }
        }
    }

    /// All matching events that arrive within `window`.
    pub fn events_for(&mut self, window: Duration, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + window;
        let mut out = vec![];
        while let Ok(v) = self
            .events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if pred(&v) {
                out.push(v);
            }
        }
        out
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The BPF programs, maps and links this memtrace holds.
    pub fn bpf_ids(&self) -> crate::BpfIds {
        crate::bpf_ids_of(self.child.id())
    }

    /// SIGTERM, then the exit summary line (`kernel_seen=.. delivered=.. dropped_ringbuf_full=..`).
    pub fn stop(mut self) -> Summary {
        // SAFETY: kill(2) of our own child, by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let line = self.wait_stderr("memtrace: exiting:", Duration::from_secs(10));
        let status = self.child.wait().expect("wait memtrace");
        assert!(
            status.success(),
            "memtrace exited with {status}; stderr: {:#?}",
            self.stderr_lines
        );
        Summary::parse(&line)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub kernel_seen: u64,
    pub delivered: u64,
    pub dropped_ringbuf_full: u64,
    pub decode_errors: u64,
    /// `ok(...)` or `MISMATCH[...]`: memtrace's counts against the kernel's.
    pub reconciled: String,
}

impl Summary {
    fn parse(line: &str) -> Self {
        let get = |key: &str| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{key} missing from {line:?}"))
        };
        Self {
            kernel_seen: get("kernel_seen"),
            delivered: get("delivered"),
            dropped_ringbuf_full: get("dropped_ringbuf_full"),
            decode_errors: get("decode_errors"),
            reconciled: line
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("reconciled="))
                .unwrap_or_default()
                .to_owned(),
        }
    }
}
