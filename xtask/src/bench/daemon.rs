//! The tracers under test, as processes: `memtrace watch --output json` (events read from its
//! stdout as they come, its exit line parsed) and bpftrace.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _},
    path::Path,
    process::{Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::sys::{self, Reaped};

/// The memcg event tracepoint both memtrace (charge accounting) and bpftrace attach to.
pub const CHARGE_TP: &str = "count_memcg_events";

/// An OOM kill event as the benchmark read it.
#[derive(Clone, Debug)]
pub struct Kill {
    pub pid: u64,
    pub cgroup: String,
    pub ktime_boot_ns: u64,
    pub emit_delay_us: u64,
    /// CLOCK_BOOTTIME when this benchmark read the line from memtrace's stdout.
    pub read_boot_ns: u64,
}

impl Kill {
    fn parse(line: &str, read_boot_ns: u64) -> Option<Self> {
        let v: Value = serde_json::from_str(line).ok()?;
        if v["event.name"] != "memtrace.oom_kill" {
            return None;
        }
        Some(Self {
            pid: v["process.pid"].as_u64()?,
            cgroup: v["memtrace.cgroup.path"].as_str().unwrap_or_default().to_owned(),
            ktime_boot_ns: v["memtrace.ktime_boot_ns"].as_u64()?,
            emit_delay_us: v["memtrace.emit_delay_us"].as_u64()?,
            read_boot_ns,
        })
    }

    /// When memtrace handed the event to its sinks (hook time + emit delay), CLOCK_BOOTTIME.
    pub fn emitted_boot_ns(&self) -> u64 {
        self.ktime_boot_ns + self.emit_delay_us * 1000
    }
}

/// A running `memtrace watch --output json …`.
pub struct Watch {
    child: Reaped,
    kills: Arc<Mutex<Vec<Kill>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
    pub stopped: bool,
}

/// What `memtrace watch` reported at exit.
pub struct WatchExit {
    pub kills: Vec<Kill>,
    /// The `memtrace: exiting: key=value …` line.
    pub summary: BTreeMap<String, String>,
}

impl WatchExit {
    pub fn get(&self, key: &str) -> u64 {
        self.summary.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
    }
}

impl Watch {
    /// Starts the daemon and waits until it says it is attached.
    pub fn start(bin: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_via(&[], bin, extra)
    }

    /// Starts the daemon through a wrapper that execs it (e.g. `chrt -f 50`).
    pub fn start_via(wrapper: &[&str], bin: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let mut c = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        c.args(["watch", "--output", "json"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = Reaped(c.spawn().with_context(|| format!("starting {}", bin.display()))?);
        let kills = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (attached_tx, attached_rx) = mpsc::channel();
        let out = child.0.stdout.take().context("stdout")?;
        let err = child.0.stderr.take().context("stderr")?;
        let k = kills.clone();
        let out_reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(kill) = Kill::parse(&line, sys::boot_ns()) {
                    k.lock().unwrap().push(kill);
                }
            }
        });
        let e = stderr.clone();
        let err_reader = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.starts_with("memtrace: attached") {
                    let _ = attached_tx.send(());
                }
                e.lock().unwrap().push(line);
            }
        });
        let w = Self {
            child,
            kills,
            stderr,
            readers: vec![out_reader, err_reader],
            stopped: false,
        };
        if attached_rx.recv_timeout(Duration::from_secs(120)).is_err() {
            let log = w.stderr.lock().unwrap().join("\n");
            bail!("memtrace watch {extra:?} did not attach:\n{log}");
        }
        Ok(w)
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn kill_count(&self) -> usize {
        self.kills.lock().unwrap().len()
    }

    /// Waits until no event came for `quiet` (at most `max`).
    pub fn wait_quiet(&self, quiet: Duration, max: Duration) {
        let start = Instant::now();
        let mut last = (self.kill_count(), Instant::now());
        while start.elapsed() < max {
            std::thread::sleep(Duration::from_millis(50));
            let n = self.kill_count();
            if n != last.0 {
                last = (n, Instant::now());
            } else if last.1.elapsed() >= quiet {
                return;
            }
        }
    }

    /// SIGSTOP / SIGCONT.
    pub fn pause(&mut self, stop: bool) {
        sys::signal(self.pid(), if stop { libc::SIGSTOP } else { libc::SIGCONT });
        self.stopped = stop;
    }

    /// SIGTERM, then the exit line.
    pub fn stop(mut self) -> anyhow::Result<WatchExit> {
        if self.stopped {
            self.pause(false);
        }
        sys::signal(self.pid(), libc::SIGTERM);
        if !sys::wait_exit(self.pid(), Duration::from_secs(30)) {
            bail!("memtrace {} did not exit within 30 s of SIGTERM", self.pid());
        }
        let status = self.child.0.wait()?;
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let stderr = self.stderr.lock().unwrap().clone();
        let line = stderr
            .iter()
            .find_map(|l| l.strip_prefix("memtrace: exiting: "))
            .with_context(|| {
                format!(
                    "memtrace exited ({status}) without its exit line:\n{}",
                    stderr.join("\n")
                )
            })?;
        // `reconciled=` comes last and its value has spaces.
        let (counts, reconciled) = line.split_once(" reconciled=").unwrap_or((line, ""));
        let mut summary: BTreeMap<String, String> = counts
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        summary.insert("reconciled".into(), reconciled.to_owned());
        Ok(WatchExit {
            kills: self.kills.lock().unwrap().clone(),
            summary,
        })
    }
}

/// A running `bpftrace -e PROGRAM` on the memcg event tracepoint.
pub struct Bpftrace {
    child: Reaped,
}

impl Bpftrace {
    pub fn start(program: &str) -> anyhow::Result<Self> {
        let mut c = Command::new("bpftrace");
        c.args(["-e", program])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let child = Reaped(c.spawn().context("starting bpftrace")?);
        if !sys::wait_hook(child.pid(), CHARGE_TP, Duration::from_secs(60)) {
            bail!("bpftrace did not attach to {CHARGE_TP} within 60 s");
        }
        Ok(Self { child })
    }

    /// Starts bpftrace on any probe; the caller checks that it attached.
    pub fn start_any(program: &str) -> anyhow::Result<Self> {
        let mut c = Command::new("bpftrace");
        c.args(["-e", program])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        Ok(Self {
            child: Reaped(c.spawn().context("starting bpftrace")?),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// SIGINT; returns the printed map as key -> count (`@[KEY]: N`).
    pub fn stop(mut self) -> anyhow::Result<BTreeMap<String, u64>> {
        sys::signal(self.pid(), libc::SIGINT);
        let mut out = String::new();
        if let Some(mut o) = self.child.0.stdout.take() {
            o.read_to_string(&mut out)?;
        }
        self.child.0.wait()?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let (k, v) = l.strip_prefix("@[")?.split_once("]: ")?;
                Some((k.to_owned(), v.trim().parse().ok()?))
            })
            .collect())
    }
}
