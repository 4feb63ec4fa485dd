//! The machine side of the benchmarks: memory cgroups of our own (`memtrace-bench-*`, removed
//! on drop), processes placed in them before they run, clocks, and /proc readings.

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec and a clock every Linux has.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_BOOTTIME, the clock of `memtrace.ktime_boot_ns`.
pub fn boot_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME)
}

/// CLOCK_MONOTONIC (BOOTTIME minus the time spent suspended).
pub fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// BOOTTIME - MONOTONIC (the time this machine spent suspended), read between two BOOTTIME
/// readings so that the error is at most their distance.
pub fn boot_minus_mono_ns() -> i64 {
    let b0 = boot_ns();
    let m = mono_ns();
    let b1 = boot_ns();
    ((b0 + b1) / 2) as i64 - m as i64
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg has them.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The 1-minute load average.
pub fn load1() -> f64 {
    loadavg()
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN)
}

pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// One line: nproc, kernel, CPU model, memory.
pub fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim())
        })
        .unwrap_or("?");
    let mem_kb = meminfo_kb("MemTotal").unwrap_or(0);
    format!(
        "nproc {}, kernel {}, CPU {model}, RAM {:.1} GiB",
        nproc(),
        kernel.trim(),
        mem_kb as f64 / (1 << 20) as f64
    )
}

fn meminfo_kb(key: &str) -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .strip_prefix(':')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

/// The kernel's count of OOM kills since boot (all of them, also other users').
pub fn vmstat_oom_kill() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm may hold spaces: fields count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub fn clock_ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// A `/proc/<pid>/status` size field in kB (VmRSS, VmHWM).
pub fn status_kb(pid: u32, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .strip_prefix(':')?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

/// Sends a signal to a process this benchmark started.
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on a pid we spawned and still own.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
}

/// Pids of the processes holding an eBPF program on the tracepoint `name` (raw_tp, tp_btf and
/// perf-event tracepoint attachments alike), from `bpftool perf list`.
pub fn hook_holders(name: &str) -> Vec<u32> {
    let Ok(out) = Command::new("bpftool")
        .args(["-j", "perf", "list"])
        .stderr(Stdio::null())
        .output()
    else {
        return vec![];
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return vec![];
    };
    let mut pids: Vec<u32> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["tracepoint"] == name)
        .filter_map(|e| e["pid"].as_u64().map(|p| p as u32))
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// How many perf-event programs `pid` has attached (bpf links of type perf whose program is a
/// BPF_PROG_TYPE_PERF_EVENT program it holds, or perf event fds beside such a program): memtrace's
/// sampled charge hook is one per CPU.
pub fn perf_event_fds(pid: u32) -> usize {
    const PROG_TYPE_PERF_EVENT: &str = "7";
    let fdinfo = |kind: &str| -> Vec<std::collections::HashMap<String, String>> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == kind))
            .filter_map(|e| {
                std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy()))
                    .ok()
            })
            .map(|t| {
                t.lines()
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    .collect()
            })
            .collect()
    };
    let perf_progs: Vec<String> = fdinfo("anon_inode:bpf-prog")
        .into_iter()
        .filter(|m| m.get("prog_type").is_some_and(|t| t == PROG_TYPE_PERF_EVENT))
        .filter_map(|m| m.get("prog_id").cloned())
        .collect();
    let links = fdinfo("anon_inode:bpf_link")
        .into_iter()
        .filter(|m| m.get("link_type").is_some_and(|t| t == "perf"))
        .filter(|m| m.get("prog_id").is_some_and(|id| perf_progs.contains(id)))
        .count();
    // bpftrace attaches with an ioctl on the perf event fd, without a link.
    let events = if perf_progs.is_empty() {
        0
    } else {
        fdinfo("anon_inode:[perf_event]").len()
    };
    links + events
}

/// Waits until `pid` holds a program on `tracepoint`; false after `timeout`.
pub fn wait_hook(pid: u32, tracepoint: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if hook_holders(tracepoint).contains(&pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Where the memory controller is.
#[derive(Clone, Debug)]
pub struct Hierarchy {
    pub root: PathBuf,
    pub v2: bool,
}

impl Hierarchy {
    pub fn detect() -> anyhow::Result<Self> {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        if v1.join("memory.limit_in_bytes").exists() {
            return Ok(Self {
                root: v1.into(),
                v2: false,
            });
        }
        let v2 = Path::new("/sys/fs/cgroup");
        let controllers = std::fs::read_to_string(v2.join("cgroup.subtree_control")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "memory") {
            return Ok(Self {
                root: v2.into(),
                v2: true,
            });
        }
        bail!("no memory cgroup controller (v1 /sys/fs/cgroup/memory or v2 with +memory)")
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A memory cgroup this benchmark made, `memtrace-bench-<tag>-<pid>-<n>` under the hierarchy
/// root. Dropping it kills what is left inside (our own processes) and removes it.
pub struct BenchCgroup {
    pub dir: PathBuf,
    /// Relative to the hierarchy root, as memtrace reports it (`/memtrace-bench-…`).
    pub rel: String,
    v2: bool,
    procs: CString,
}

impl BenchCgroup {
    pub fn new(h: &Hierarchy, tag: &str, limit_bytes: u64) -> anyhow::Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("memtrace-bench-{tag}-{}-{n}", std::process::id());
        let dir = h.root.join(&name);
        std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())?;
        let cg = Self {
            rel: format!("/{name}"),
            dir,
            v2: h.v2,
            procs,
        };
        let (file, value) = if h.v2 {
            let _ = std::fs::write(cg.dir.join("memory.swap.max"), "0");
            ("memory.max", limit_bytes.to_string())
        } else {
            ("memory.limit_in_bytes", limit_bytes.to_string())
        };
        std::fs::write(cg.dir.join(file), &value)
            .with_context(|| format!("writing {value} to {}/{file}", cg.dir.display()))?;
        Ok(cg)
    }

    /// The cgroup id (the directory's inode), as memcg tracepoints report it.
    pub fn id(&self) -> u64 {
        std::fs::metadata(&self.dir).map_or(0, |m| m.ino())
    }

    /// The kernel's count of OOM kills of tasks in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events.local"
        } else {
            "memory.oom_control"
        };
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// SIGKILLs every process in this cgroup (all ours) and waits until it is empty.
    pub fn kill_all(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                return;
            }
            for pid in &pids {
                // SAFETY: kill(2) of a process in a cgroup this benchmark made.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// `program args…`, joining this cgroup between fork and exec: everything it allocates is
    /// charged here. Output discarded unless the caller pipes it.
    pub fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let procs = self.procs.clone();
        // SAFETY: only raw syscalls between fork and exec (open, write, close), no allocation.
        unsafe {
            c.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0": the writing process itself.
                let n = libc::write(fd, c"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
                Ok(())
            });
        }
        c
    }
}

impl Drop for BenchCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = self.pids();
            for pid in &pids {
                // SAFETY: kill(2) of a process in a cgroup this benchmark made.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            if pids.is_empty() && std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            if !self.dir.exists() || Instant::now() > deadline {
                if self.dir.exists() {
                    eprintln!("bench: warning: could not remove {}", self.dir.display());
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A child that is SIGKILLed (by pid) and reaped if it is still running when dropped.
pub struct Reaped(pub Child);

impl Reaped {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            signal(self.0.id(), libc::SIGKILL);
            let _ = self.0.wait();
        }
    }
}

/// How one allocator run ended.
pub struct AllocRun {
    pub pid: u32,
    pub oom_killed: bool,
    pub status: ExitStatus,
}

/// Runs `memtrace-alloc grow` in `cg` until it dies: a real OOM kill when the cgroup has a
/// small limit. Gives up (kills it) after `timeout`.
pub fn alloc_until_killed(alloc: &Path, cg: &BenchCgroup, timeout: Duration) -> anyhow::Result<AllocRun> {
    use std::os::unix::process::ExitStatusExt as _;
    let child = cg
        .command(alloc, &["grow"])
        .spawn()
        .context("spawning memtrace-alloc")?;
    let mut child = Reaped(child);
    let pid = child.pid();
    if !wait_exit(pid, timeout) {
        bail!(
            "memtrace-alloc {pid} in {} was not OOM-killed within {timeout:?}",
            cg.rel
        );
    }
    let status = child.0.wait()?;
    Ok(AllocRun {
        pid,
        oom_killed: status.signal() == Some(libc::SIGKILL),
        status,
    })
}

/// Waits (without reaping) until the child `pid` has exited; false after `timeout`.
pub fn wait_exit(pid: u32, timeout: Duration) -> bool {
    // SAFETY: pidfd_open(2) of our own unreaped child; the fd is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as libc::c_int;
    if fd < 0 {
        return false;
    }
    let deadline = Instant::now() + timeout;
    let mut exited = false;
    while !exited {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, left.as_millis().min(1000) as libc::c_int + 1) };
        exited = n > 0;
    }
    // SAFETY: the fd opened above.
    unsafe { libc::close(fd) };
    exited
}
