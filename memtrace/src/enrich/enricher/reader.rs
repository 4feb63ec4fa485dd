//! Where a kill's file reads run: off the event loop, and without waking another CPU when one
//! kill comes alone.
//!
//! A lone kill's reads go to a thread of memtrace's own, first moved to the CPU the event loop
//! runs on, and the event loop yields that CPU to it (for [`YIELD_FOR`] at most) instead of
//! sleeping: neither hand-off, the job nor its result, then wakes a thread on an idle CPU. On
//! this project's machines (VMs of 2 vCPUs) such a wake-up took 0.5 to 3 ms. With the reads on
//! tokio's blocking pool, the median kill event of an idle host came 3 to 5 times later than
//! with the reads done on the event loop; moving the thread alone halved that; with the yield
//! too, the median is back to within 0.05 ms of it (`cargo xtask bench latency`, BENCHMARKS.md
//! §2). Kills that come together (a storm), and any kill while that thread is still busy (a
//! hung read), read on the blocking pool, side by side on every CPU.

use std::{
    panic::AssertUnwindSafe,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI32, Ordering},
        mpsc,
    },
};

use tokio::sync::oneshot::{self, error::TryRecvError};

type Job = Box<dyn FnOnce() + Send>;

/// How long the event loop yields its CPU to a lone read before it sleeps until the read ends.
const YIELD_FOR: std::time::Duration = std::time::Duration::from_millis(2);

/// A read started by [`Reader::run`].
pub struct Read<T> {
    rx: oneshot::Receiver<T>,
    /// It runs on the thread moved to the event loop's CPU.
    here: bool,
}

impl<T> Read<T> {
    /// Its result, waited for until `deadline` at most: `None` if not done by then,
    /// `Some(None)` if the read panicked.
    pub async fn by(mut self, deadline: tokio::time::Instant) -> Option<Option<T>> {
        if self.here {
            // The read runs on this CPU: yield it the CPU rather than sleep, so that the read's
            // end has no thread to wake (the scheduler would wake this one on another, idle,
            // CPU). The budget still holds: past YIELD_FOR this thread sleeps until the deadline.
            let until = std::time::Instant::now()
                + YIELD_FOR.min(
                    deadline
                        .into_std()
                        .saturating_duration_since(std::time::Instant::now()),
                );
            loop {
                match self.rx.try_recv() {
                    Ok(v) => return Some(Some(v)),
                    Err(TryRecvError::Closed) => return Some(None),
                    Err(TryRecvError::Empty) if std::time::Instant::now() < until => std::thread::yield_now(),
                    Err(TryRecvError::Empty) => break,
                }
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
    /// The thread's id, for `sched_setaffinity`.
    tid: Arc<AtomicI32>,
    /// The thread waits for a job.
    idle: Arc<AtomicBool>,
    /// The CPU the thread was last moved to (-1: none yet).
    cpu: i32,
}

impl Reader {
    pub fn new() -> Self {
        let (jobs, rx) = mpsc::channel::<Job>();
        let tid = Arc::new(AtomicI32::new(0));
        let idle = Arc::new(AtomicBool::new(true));
        let (t, i) = (Arc::clone(&tid), Arc::clone(&idle));
        let started = std::thread::Builder::new()
            .name("memtrace-reads".into())
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                t.store(unsafe { libc::gettid() }, Ordering::Release);
                // Ends when the Reader, and with it the sender, is dropped.
                while let Ok(job) = rx.recv() {
                    // A read that panics loses its kill's reads (the kill goes out without
                    // them), not this thread.
                    let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                    i.store(true, Ordering::Release);
                }
            });
        if let Err(e) = &started {
            log::warn!("cannot start the file-read thread ({e}): reads use tokio's blocking pool");
        }
        Self {
            jobs: started.ok().map(|_| jobs),
            tid,
            idle,
            cpu: -1,
        }
    }

    /// Runs `f` off the event loop.
    pub fn run<T: Send + 'static>(&mut self, f: impl FnOnce() -> T + Send + 'static) -> Read<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        let job = match self.jobs.clone() {
            Some(jobs) if self.idle.swap(false, Ordering::AcqRel) => {
                self.follow_event_loop();
                match jobs.send(job) {
                    Ok(()) => return Read { rx, here: true },
                    Err(mpsc::SendError(job)) => job,
                }
            }
            _ => job,
        };
        drop(tokio::task::spawn_blocking(job));
        Read { rx, here: false }
    }

    /// Moves the thread to the CPU this (the event loop's) thread is on, if it is elsewhere.
    fn follow_event_loop(&mut self) {
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = unsafe { libc::sched_getcpu() };
        let tid = self.tid.load(Ordering::Acquire);
        if cpu < 0 || cpu == self.cpu || tid == 0 {
            return;
        }
        // SAFETY: cpu_set_t is a plain bit array; all zeroes is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: CPU_SET stays within the set for any cpu below CPU_SETSIZE (1024), and
        // sched_getcpu returned a CPU this thread runs on.
        unsafe { libc::CPU_SET(cpu as usize, &mut set) };
        // SAFETY: a valid set of its own size, for a thread of this process.
        let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
        if rc == 0 {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let panicked = r.run(|| -> u32 { panic!("a read that panics") });
        assert_eq!(
            panicked.by(far).await,
            Some(None),
            "no value from a panicked read"
        );
        // The thread is idle again, and still there.
        for _ in 0..100 {
            if r.idle.load(Ordering::Acquire) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let after = r.run(|| std::thread::current().name().map(str::to_owned));
        let after = after.by(far).await.flatten();
        assert_eq!(after.expect("ran").as_deref(), Some("memtrace-reads"));
    }
}
