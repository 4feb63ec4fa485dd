//! Where a kill's file reads run: off the event loop and, when a kill comes alone to a quiet
//! machine, without waking another CPU.
//!
//! Why: on this project's machines (VMs of 2 vCPUs), waking a thread on an idle vCPU took 0.5
//! to 3 ms. Reads handed to tokio's blocking pool cost two such wake-ups (the job, then its
//! result). The idle host's median kill event then came 3 to 5 times later than with the reads
//! done on the event loop, as before the pipeline (`cargo xtask bench latency`, BENCHMARKS.md).
//!
//! How: a lone kill's reads go to a thread of memtrace's own. It is first moved to the CPU the
//! event loop runs on, and the event loop yields that CPU to it, for [`YIELD_FOR`] at most,
//! instead of sleeping; neither hand-off then wakes anything. This happens only while some CPU
//! idles (no more runnable tasks than CPUs), and not for [`BACK_OFF`] after a read that took
//! longer than the yield. On busy CPUs a yield waits behind every other task of this CPU, and a
//! read kept here queues behind them: a storm benchmark without these two rules had an emit
//! delay p50 of 20 to 23 ms against 4 to 5 ms, and 263 to 1,153 of about 8,500 kills not
//! reported under their cgroup. Kills that come together, and any kill while the thread is
//! still busy (a hung read), read on the blocking pool, side by side on every CPU.

use std::{
    fs::File,
    os::unix::fs::FileExt,
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI32, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use tokio::sync::oneshot::{self, error::TryRecvError};

type Job = Box<dyn FnOnce() + Send>;

/// How long the event loop yields its CPU to a lone read before it sleeps until the read ends
/// (reads take about 0.25 ms on an idle host of this project's).
const YIELD_FOR: Duration = Duration::from_millis(2);
/// After a lone read overran [`YIELD_FOR`], how long reads keep off the event loop's CPU.
const BACK_OFF: Duration = Duration::from_millis(100);

/// What the event loop and the read thread share.
struct Thread {
    /// Its id, for `sched_setaffinity` (0 until it has started).
    tid: AtomicI32,
    /// It waits for a job.
    idle: AtomicBool,
    /// The CPUs the event loop's thread may use: where the thread is let go to.
    all: libc::cpu_set_t,
    /// A lone read overran [`YIELD_FOR`]; the thread was let go.
    overran: AtomicBool,
}

impl Thread {
    /// Moves the thread to these CPUs.
    fn set_cpus(&self, set: &libc::cpu_set_t) -> bool {
        let tid = self.tid.load(Ordering::Acquire);
        // SAFETY: a valid set of its own size, for a thread of this process.
        tid != 0 && unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), set) } == 0
    }
}

/// A read started by [`Reader::run`].
pub struct Read<T> {
    rx: oneshot::Receiver<T>,
    /// It runs on the thread moved to the event loop's CPU.
    here: Option<Arc<Thread>>,
}

impl<T> Read<T> {
    /// Its result, waited for until `deadline` at most: `None` if not done by then,
    /// `Some(None)` if the read panicked.
    pub async fn by(mut self, deadline: tokio::time::Instant) -> Option<Option<T>> {
        if let Some(thread) = self.here.take() {
            // The read runs on this CPU: yield it the CPU rather than sleep, so that the read's
            // end has no thread to wake (the scheduler would wake this one on another, idle,
            // CPU). The budget still holds: past YIELD_FOR this thread sleeps until the deadline.
            let left = deadline.into_std().saturating_duration_since(Instant::now());
            let until = Instant::now() + YIELD_FOR.min(left);
            let got = loop {
                match self.rx.try_recv() {
                    Ok(v) => break Some(Some(v)),
                    Err(TryRecvError::Closed) => break Some(None),
                    Err(TryRecvError::Empty) if Instant::now() < until => std::thread::yield_now(),
                    Err(TryRecvError::Empty) => break None,
                }
            };
            // Past the yield, done or not: other tasks ran on this CPU (one yield can wait for
            // each of them), so the next reads keep off it, and this one may finish anywhere.
            if Instant::now() >= until {
                thread.set_cpus(&thread.all);
                thread.overran.store(true, Ordering::Release);
            }
            if got.is_some() {
                return got;
            }
        }
        tokio::time::timeout_at(deadline, self.rx)
            .await
            .ok()
            .map(Result::ok)
    }
}

pub struct Reader {
    /// `None` where the thread could not be started: every read goes to the blocking pool.
    jobs: Option<mpsc::Sender<Job>>,
    thread: Arc<Thread>,
    /// The CPU the thread was last moved to (-1: none, or let go since).
    cpu: i32,
    /// No read goes to the thread before this (after an overrun).
    back_off_until: Instant,
    /// Whether some CPU idles now, of these many ([`cpus_idle`]; tests replace it).
    cpus_idle: fn(&Loadavg, usize) -> bool,
    /// Where [`cpus_idle`] reads the runnable tasks.
    loadavg: Loadavg,
    /// CPUs this process may use, counted once: `available_parallelism` reads cgroup files.
    cpus: usize,
}

impl Reader {
    pub fn new() -> Self {
        // SAFETY: all zeroes is the empty set; sched_getaffinity fills it for this thread (on
        // failure it stays empty and the thread is never let go: it is then never moved either).
        let mut all: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: a set of its own size.
        let known =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut all) } == 0;
        let thread = Arc::new(Thread {
            tid: AtomicI32::new(0),
            idle: AtomicBool::new(true),
            all,
            overran: AtomicBool::new(false),
        });
        let (jobs, rx) = mpsc::channel::<Job>();
        let t = Arc::clone(&thread);
        let started = std::thread::Builder::new()
            .name("memtrace-reads".into())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                t.tid.store(unsafe { libc::gettid() }, Ordering::Release);
                // Ends when the Reader, and with it the sender, is dropped.
                while let Ok(job) = rx.recv() {
                    // A read that panics loses its kill's reads (the kill goes out without
                    // them), not this thread.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                    t.idle.store(true, Ordering::Release);
                }
            });
        if let Err(e) = &started {
            log::warn!("cannot start the file-read thread ({e}): reads use tokio's blocking pool");
        }
        Self {
            jobs: started.ok().filter(|_| known).map(|_| jobs),
            thread,
            cpu: -1,
            back_off_until: Instant::now(),
            cpus_idle,
            loadavg: Loadavg::open(),
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }

    /// Runs `f` off the event loop.
    pub fn run<T: Send + 'static>(&mut self, f: impl FnOnce() -> T + Send + 'static) -> Read<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        let now = Instant::now();
        if self.thread.overran.swap(false, Ordering::AcqRel) {
            self.cpu = -1;
            self.back_off_until = now + BACK_OFF;
        }
        let job = match self.jobs.clone() {
            Some(jobs)
                if now >= self.back_off_until
                    && (self.cpus_idle)(&self.loadavg, self.cpus)
                    && self.thread.idle.swap(false, Ordering::AcqRel) =>
            {
                self.follow_event_loop();
                match jobs.send(job) {
                    Ok(()) => {
                        return Read {
                            rx,
                            here: Some(Arc::clone(&self.thread)),
                        };
                    }
                    Err(mpsc::SendError(job)) => job,
                }
            }
            _ => job,
        };
        drop(tokio::task::spawn_blocking(job));
        Read { rx, here: None }
    }

    /// Moves the thread to the CPU this (the event loop's) thread is on, if it is elsewhere.
    fn follow_event_loop(&mut self) {
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = unsafe { libc::sched_getcpu() };
        if cpu < 0 || cpu == self.cpu {
            return;
        }
        // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: CPU_SET stays within the set for any cpu below CPU_SETSIZE (1024), and
        // sched_getcpu returned a CPU this thread runs on.
        unsafe { libc::CPU_SET(cpu as usize, &mut set) };
        if self.thread.set_cpus(&set) {
            self.cpu = cpu;
        } else {
            // Not fatal: the read runs wherever the scheduler puts it.
            log::debug!(
                "moving the file-read thread to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Some CPU idles now: no more tasks runnable on the machine than it has CPUs (the event loop
/// included). Then waking a thread costs the wake-up of an idle CPU, and this CPU has little
/// else to run; with more, a read kept on this CPU would queue behind them.
fn cpus_idle(loadavg: &Loadavg, cpus: usize) -> bool {
    loadavg.runnable().is_some_and(|n| n <= cpus)
}

/// /proc/loadavg, opened once: read again at offset 0, where its seq_file writes it afresh,
/// so that a kill costs the event loop one `pread`, not an open, reads and a close.
struct Loadavg(Option<File>);

impl Loadavg {
    fn open() -> Self {
        let file = File::open("/proc/loadavg");
        if let Err(e) = &file {
            log::warn!("/proc/loadavg: {e}: every kill's reads use tokio's blocking pool");
        }
        Self(file.ok())
    }

    /// Runnable tasks now.
    fn runnable(&self) -> Option<usize> {
        // "0.52 0.58 0.59 3/467 12345\n": under 64 bytes for any load, task count and pid.
        let mut buf = [0u8; 128];
        let n = self.0.as_ref()?.read_at(&mut buf, 0).ok()?;
        running(std::str::from_utf8(buf.get(..n)?).ok()?)
    }
}

/// Runnable tasks, from /proc/loadavg's fourth field (`running/total`).
fn running(loadavg: &str) -> Option<usize> {
    loadavg.split_whitespace().nth(3)?.split('/').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits until the thread is idle, and forgets overruns: timing is not what these tests
    /// are about (a loaded test machine, or a panic's backtrace, can overrun the yield).
    async fn settle(r: &mut Reader) {
        for _ in 0..100 {
            if r.thread.idle.load(Ordering::Acquire) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        r.thread.overran.store(false, Ordering::Release);
        r.back_off_until = Instant::now();
    }

    /// A lone read runs on the event loop's CPU; one that comes while it is busy runs on the
    /// blocking pool; a panic loses its result, not the thread.
    #[tokio::test(flavor = "current_thread")]
    async fn a_lone_read_follows_the_event_loop_and_a_second_one_runs_beside_it() {
        // SAFETY: sched_getcpu has no preconditions.
        let here = unsafe { libc::sched_getcpu() };
        // This test's thread stays on that CPU, so that "the event loop's CPU" is one CPU.
        // SAFETY: all zeroes is the empty set; CPU_SET within it; a valid set for this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(here as usize, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                0
            );
        }
        let mut r = Reader::new();
        r.cpus_idle = |_, _| true;
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let first = r.run(move || {
            // SAFETY: as above.
            let cpu = unsafe { libc::sched_getcpu() };
            let _ = wait.recv();
            (std::thread::current().name().map(str::to_owned), cpu)
        });
        let second = r.run(|| std::thread::current().name().map(str::to_owned));
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let second = second.by(far).await.flatten().expect("the second read ran");
        assert_ne!(
            second.as_deref(),
            Some("memtrace-reads"),
            "a busy thread is not queued on"
        );
        go.send(()).expect("the first read waits");
        let (name, cpu) = first.by(far).await.flatten().expect("the first read ran");
        assert_eq!(name.as_deref(), Some("memtrace-reads"));
        assert_eq!(cpu, here, "moved to the event loop's CPU");
        settle(&mut r).await;
        let panicked = r.run(|| -> u32 { panic!("a read that panics") });
        assert_eq!(
            panicked.by(far).await,
            Some(None),
            "no value from a panicked read"
        );
        // The thread is idle again, and still there.
        settle(&mut r).await;
        let after = r.run(|| std::thread::current().name().map(str::to_owned));
        let after = after.by(far).await.flatten();
        assert_eq!(after.expect("ran").as_deref(), Some("memtrace-reads"));
    }

    /// A lone read that overruns the yield lets the thread go, and the reads after it keep to
    /// the blocking pool for a while: the CPUs are busy.
    #[tokio::test(flavor = "current_thread")]
    async fn an_overrun_backs_off_to_the_blocking_pool() {
        let mut r = Reader::new();
        r.cpus_idle = |_, _| true;
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let slow = r.run(|| std::thread::sleep(YIELD_FOR * 20));
        assert_eq!(slow.by(far).await, Some(Some(())), "waited for past the yield");
        while !r.thread.idle.load(Ordering::Acquire) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let next = r.run(|| std::thread::current().name().map(str::to_owned));
        let next = next.by(far).await.flatten().expect("ran");
        assert_ne!(next.as_deref(), Some("memtrace-reads"), "backed off");
    }

    #[test]
    fn runnable_tasks_from_loadavg() {
        assert_eq!(running("0.52 0.58 0.59 3/467 12345\n"), Some(3));
        assert_eq!(running("0.52 0.58"), None);
        // Read again through the one open file: the last pid field follows a new process.
        let l = Loadavg::open();
        let last_pid = |l: &Loadavg| {
            let mut buf = [0u8; 128];
            let n = l.0.as_ref().expect("open").read_at(&mut buf, 0).expect("pread");
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            text.split_whitespace()
                .nth(4)
                .map(str::to_owned)
                .expect("five fields")
        };
        assert!(l.runnable().is_some_and(|n| n >= 1), "this test runs");
        let before = last_pid(&l);
        std::process::Command::new("true").status().expect("spawn true");
        assert_ne!(last_pid(&l), before, "read afresh at offset 0");
    }

    /// Busy CPUs: no read is kept on the event loop's CPU.
    #[tokio::test(flavor = "current_thread")]
    async fn busy_cpus_read_on_the_blocking_pool() {
        let mut r = Reader::new();
        r.cpus_idle = |_, _| false;
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let read = r.run(|| std::thread::current().name().map(str::to_owned));
        let name = read.by(far).await.flatten().expect("ran");
        assert_ne!(name.as_deref(), Some("memtrace-reads"));
    }
}
