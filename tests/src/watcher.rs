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

/// How a watcher ended.
#[derive(Debug)]
pub struct Exit {
    pub status: std::process::ExitStatus,
    /// Every stderr line, from the start.
    pub stderr: Vec<String>,
    /// The exit summary, when memtrace printed one (not after SIGKILL).
    pub summary: Option<Summary>,
}

impl Watcher {
    /// The `memtrace.constraint_source` every kill must carry: the OOM killer's own decision
    /// where oom_kill_process is hooked (its attach line says so), else the kernel's call
    /// stack at the kill; never the page counters' guess.
    pub fn certain_constraint_source(&self) -> &'static str {
        if self.stderr_lines.iter().any(|l| l.contains("oom_context via")) {
            "kernel"
        } else {
            "call_path"
        }
    }

    /// Starts memtrace with `extra` arguments after `watch --output json`.
    pub fn start(extra: &[&str]) -> Self {
        Self::spawn(Self::command(extra))
    }

    /// `memtrace watch --output json extra...`, for callers that add environment or a wrapper.
    pub fn command(extra: &[&str]) -> Command {
        let mut c = Command::new(crate::memtrace_bin());
        c.args(["watch", "--output", "json"]).args(extra);
        if !extra.contains(&"--enrich-budget") {
            c.args(budget_args());
        }
        c
    }

    /// Starts `cmd` (memtrace, or a wrapper that execs it) and waits until it is attached.
    pub fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
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
        // Generous: a TCG guest on a loaded host took over 30 s to attach (7.2).
        w.wait_stderr("memtrace: attached", Duration::from_secs(60));
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
    pub fn next_event(&mut self, timeout: Duration, mut pred: impl FnMut(&Value) -> bool) -> Value {
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

    /// Every event that has arrived, without waiting.
    pub fn drain_events(&mut self) -> Vec<Value> {
        std::iter::from_fn(|| self.events.try_recv().ok()).collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `sig` to this memtrace (by its own pid).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) of our own child, by its pid.
        let r = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(
            r,
            0,
            "kill({}, {sig}): {}",
            self.child.id(),
            std::io::Error::last_os_error()
        );
    }

    /// Open file descriptors of this memtrace, from /proc/<pid>/fd.
    pub fn fd_count(&self) -> usize {
        crate::fd_count(self.child.id())
    }

    /// memtrace's fds by kind, reads in flight filtered out (see [`crate::settled_fd_census`]).
    pub fn fd_census(&self) -> crate::FdCensus {
        crate::settled_fd_census(self.child.id())
    }

    /// Sends `sig` and waits (at most `timeout`) for memtrace to exit; collects all of stderr.
    pub fn kill_with(mut self, sig: i32, timeout: Duration) -> Exit {
        self.signal(sig);
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait().expect("wait memtrace") {
                Some(status) => break status,
                None if Instant::now() > deadline => {
                    panic!(
                        "memtrace did not exit within {timeout:?} of signal {sig}; stderr: {:#?}",
                        self.stderr_lines
                    )
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        // The reader thread ends at EOF, once every line is sent.
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.stderr_lines.push(line);
        }
        let summary = self
            .stderr_lines
            .iter()
            .find(|l| l.contains("memtrace: exiting:"))
            .map(|l| Summary::parse(l));
        Exit {
            status,
            stderr: std::mem::take(&mut self.stderr_lines),
            summary,
        }
    }

    /// The BPF programs, maps and links this memtrace holds.
    pub fn bpf_ids(&self) -> crate::BpfIds {
        crate::bpf_ids_of(self.child.id())
    }

    /// SIGTERM, then the exit summary line (`kernel_seen=.. delivered=.. dropped_ringbuf_full=..`).
    pub fn stop(mut self) -> Summary {
        // SAFETY: kill(2) of our own child, by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        // Detaching every tracing program waits for RCU-tasks grace periods: seconds in a
        // loaded TCG guest.
        let line = self.wait_stderr("memtrace: exiting:", Duration::from_secs(30));
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
    /// Kills sent before their file reads were done (`watch.enrich_budget`).
    pub enrich_late: u64,
    /// `ok(...)` or `MISMATCH[...]`: memtrace's counts against the kernel's.
    pub reconciled: String,
}

impl Summary {
    /// Parses the `memtrace: exiting: key=value ...` line.
    pub fn parse(line: &str) -> Self {
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
            enrich_late: get("enrich_late"),
            // The last field, and the only one with spaces: `ok(2 cgroups, 0 gone)`.
            reconciled: line
                .split_once(" reconciled=")
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default(),
        }
    }
}

/// `--enrich-budget` for an emulated VM guest, where cgroup files read many times slower: the
/// default 50 ms would send most kills late, without what the tests look for. Nothing on the
/// host. For tests that build their own `memtrace watch` command line.
pub fn budget_args() -> Vec<String> {
    match crate::time_scale() {
        1 => vec![],
        scale => vec!["--enrich-budget".into(), format!("{}ms", 50 * scale.min(20))],
    }
}
