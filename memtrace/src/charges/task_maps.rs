//! The executable mappings of sampled processes, read while they run, so their stack frames
//! can still be named after they exit: a build step, a batch job or a victim killed within a
//! second is gone before `hotspots`, `top` or a kill event symbolizes its stacks, but its
//! binary is usually still on disk. A frame is then named from the file at its file offset.
//!
//! The eBPF side writes a task's tgid, start time and `mm` to the `STACK_TASKS` ring when it
//! first samples one of its stacks, and again every 30 s while it charges; a thread here reads
//! `/proc/<tgid>/maps` at once (the task was faulting a moment ago) and keeps the file-backed
//! executable ranges of the [`MAX_TASKS`] processes seen last. A process recorded already
//! (same tgid, start time and mm) is not read again, only kept: with 500 busy processes,
//! re-reading their maps at every drain of the counts was most of the daemon's CPU at rest.

use std::{
    collections::{HashMap, VecDeque},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use memtrace_common::charge::StackTask;

/// Processes remembered; the oldest is forgotten first.
const MAX_TASKS: usize = 4096;

/// One executable, file-backed range of a process (a line of /proc/<pid>/maps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    pub path: PathBuf,
}

impl Mapping {
    /// `addr` as an offset in the mapped file, if it falls in this range.
    pub fn file_offset(&self, addr: u64) -> Option<u64> {
        (self.start..self.end)
            .contains(&addr)
            .then(|| addr - self.start + self.offset)
    }
}

/// The executable file mappings in the text of /proc/<pid>/maps: lines like
/// `55d0c6a00000-55d0c6b00000 r-xp 00021000 fd:01 1234 /usr/bin/x` (fs/proc/task_mmu.c
/// show_map_vma). Anonymous, deleted and pseudo (`[vdso]`) mappings name no file to read.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (start, end) = f.next()?.split_once('-')?;
            let perms = f.next()?;
            let offset = f.next()?;
            let (_dev, _inode) = (f.next()?, f.next()?);
            let path: String = f.collect::<Vec<_>>().join(" ");
            if !perms.contains('x') || !path.starts_with('/') || path.ends_with(" (deleted)") {
                return None;
            }
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                path: path.into(),
            })
        })
        .collect()
}

/// Which process a tgid is: the group leader's start time and its `mm` (exec replaces it).
/// `None` when the kernel layout gave neither, and then the process is always read again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub start_ns: u64,
    pub mm: u64,
}

impl Identity {
    pub fn new(start_ns: u64, mm: u64) -> Option<Self> {
        (start_ns != 0 || mm != 0).then_some(Self { start_ns, mm })
    }
}

/// One `STACK_TASKS` record (memtrace_common::charge::StackTask, native endian), decoded
/// field by field: the tgid and who it is.
pub fn decode(b: &[u8]) -> Option<(u32, Option<Identity>)> {
    if b.len() != StackTask::SIZE {
        return None;
    }
    let u64_at = |at: usize| b.get(at..at + 8)?.try_into().ok().map(u64::from_ne_bytes);
    let tgid = u32::from_ne_bytes(b.get(0..4)?.try_into().ok()?);
    Some((tgid, Identity::new(u64_at(8)?, u64_at(16)?)))
}

#[derive(Debug)]
struct Recorded {
    who: Option<Identity>,
    maps: Arc<[Mapping]>,
    /// When it was last seen (a counter): `order` entries with an older one are stale.
    seen: u64,
}

/// The mappings of the [`MAX_TASKS`] processes seen last, by tgid.
#[derive(Debug, Default)]
pub struct TaskMaps {
    by_pid: HashMap<u32, Recorded>,
    /// (pid, seen), oldest first; an entry is stale when the pid was seen again since.
    order: VecDeque<(u32, u64)>,
    next: u64,
}

impl TaskMaps {
    /// Whether `pid`'s mappings are recorded for this same process; if so, it is kept as
    /// if recorded now.
    pub fn keep(&mut self, pid: u32, who: Option<Identity>) -> bool {
        let seen = self.next;
        match self.by_pid.get_mut(&pid) {
            Some(r) if who.is_some() && r.who == who => r.seen = seen,
            _ => return false,
        }
        self.next += 1;
        self.order.push_back((pid, seen));
        self.forget_oldest();
        true
    }

    pub fn insert(&mut self, pid: u32, who: Option<Identity>, maps: Vec<Mapping>) {
        let seen = self.next;
        self.next += 1;
        self.by_pid.insert(
            pid,
            Recorded {
                who,
                maps: maps.into(),
                seen,
            },
        );
        self.order.push_back((pid, seen));
        self.forget_oldest();
    }

    fn forget_oldest(&mut self) {
        while self.by_pid.len() > MAX_TASKS {
            let Some((pid, seen)) = self.order.pop_front() else {
                break;
            };
            if self.by_pid.get(&pid).is_some_and(|r| r.seen == seen) {
                self.by_pid.remove(&pid);
            }
        }
        if self.order.len() > 4 * MAX_TASKS {
            let by_pid = &self.by_pid;
            self.order
                .retain(|(pid, seen)| by_pid.get(pid).is_some_and(|r| r.seen == *seen));
        }
    }

    pub fn get(&self, pid: u32) -> Option<Arc<[Mapping]>> {
        self.by_pid.get(&pid).map(|r| r.maps.clone())
    }
}

/// The mappings recorded in this process (one recorder at a time feeds it).
pub fn recorded() -> &'static Mutex<TaskMaps> {
    static MAPS: OnceLock<Mutex<TaskMaps>> = OnceLock::new();
    MAPS.get_or_init(Mutex::default)
}

/// The recorded mappings of `pid`, if any.
pub fn lookup(pid: u32) -> Option<Arc<[Mapping]>> {
    recorded().lock().ok()?.get(pid)
}

/// Reads the `STACK_TASKS` ring on a thread of its own until dropped.
pub struct Recorder {
    stop: Arc<AtomicBool>,
    /// Written on drop, so the thread wakes at once: a `top --once` that waited out the poll
    /// period on exit took up to 100 ms longer.
    wake: Option<Arc<OwnedFd>>,
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    pub fn spawn(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        // SAFETY: eventfd has no memory preconditions; a valid fd is owned from here on.
        let wake = match unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) } {
            fd if fd >= 0 => Some(Arc::new(unsafe { OwnedFd::from_raw_fd(fd) })),
            _ => None,
        };
        let woken = wake.clone();
        let thread = std::thread::Builder::new()
            .name("memtrace-maps".into())
            .spawn(move || record(ring, &flag, woken.as_deref()))?;
        Ok(Self {
            stop,
            wake,
            thread: Some(thread),
        })
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = &self.wake {
            let one = 1u64.to_ne_bytes();
            // SAFETY: 8 bytes from a valid buffer to our own eventfd.
            let _ = unsafe { libc::write(w.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Poll period: how long dropping a [`Recorder`] may wait for its thread without an eventfd.
const POLL: Duration = Duration::from_millis(100);

fn record(mut ring: RingBuf<MapData>, stop: &AtomicBool, wake: Option<&OwnedFd>) {
    let fd = ring.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        let mut pfds = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: wake.map_or(-1, |w| w.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // With the eventfd, only records or the drop wake the thread (a 100 ms timeout cost
        // ten wake-ups a second at rest); without it, the poll period bounds the drop.
        let timeout = if wake.is_some() {
            -1
        } else {
            POLL.as_millis() as i32
        };
        // SAFETY: two valid pollfds (a negative fd is ignored), for the duration of the call.
        let ready = unsafe { libc::poll(pfds.as_mut_ptr(), 2, timeout) };
        if ready < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            log::warn!("polling the stack task ring: {}", std::io::Error::last_os_error());
            return;
        }
        let mut tasks = Vec::new();
        while let Some(item) = ring.next() {
            match decode(&item) {
                Some(t) => tasks.push(t),
                None => log::debug!(
                    "stack task record of {} bytes, not {}",
                    item.len(),
                    StackTask::SIZE
                ),
            }
        }
        for (pid, who) in tasks {
            if recorded().lock().is_ok_and(|mut m| m.keep(pid, who)) {
                continue;
            }
            // A process that exited already has no maps: its frames stay addresses.
            if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps"))
                && let Ok(mut m) = recorded().lock()
            {
                m.insert(pid, who, parse_maps(&text));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_file_mappings_only() {
        let text = "\
55d0c6a00000-55d0c6a21000 r--p 00000000 fd:01 1234 /usr/bin/my prog
55d0c6a21000-55d0c6b00000 r-xp 00021000 fd:01 1234 /usr/bin/my prog
7f0000000000-7f0000001000 r-xp 00000000 00:00 0 
7f0000002000-7f0000003000 r-xp 00000000 fd:01 99 /tmp/gone (deleted)
7ffc00000000-7ffc00002000 r-xp 00000000 00:00 0 [vdso]
";
        let m = parse_maps(text);
        assert_eq!(
            m,
            vec![Mapping {
                start: 0x55d0c6a21000,
                end: 0x55d0c6b00000,
                offset: 0x21000,
                path: "/usr/bin/my prog".into(),
            }]
        );
        assert_eq!(m[0].file_offset(0x55d0c6a21010), Some(0x21010));
        assert_eq!(m[0].file_offset(0x55d0c6b00000), None);
    }

    #[test]
    fn a_process_recorded_already_is_known_by_pid_start_and_mm() {
        let mut b = [0u8; StackTask::SIZE];
        b[0..4].copy_from_slice(&42u32.to_ne_bytes());
        b[8..16].copy_from_slice(&7u64.to_ne_bytes());
        b[16..24].copy_from_slice(&0xffff_8880_0000_1000u64.to_ne_bytes());
        let (pid, who) = decode(&b).expect("24 bytes");
        assert_eq!((pid, who), (42, Identity::new(7, 0xffff_8880_0000_1000)));
        assert!(decode(&b[..4]).is_none(), "the old 4-byte record is refused");
        let mut t = TaskMaps::default();
        assert!(!t.keep(pid, who));
        t.insert(pid, who, vec![]);
        assert!(t.keep(pid, who), "same process: not read again");
        assert!(
            !t.keep(pid, Identity::new(8, 0xffff_8880_0000_1000)),
            "pid reused"
        );
        assert!(!t.keep(pid, Identity::new(7, 0xffff_8880_0000_2000)), "exec'd");
        t.insert(9, None, vec![]);
        assert!(!t.keep(9, None), "no identity: always read again");
    }

    #[test]
    fn a_process_seen_again_is_kept_while_older_ones_go() {
        let mut t = TaskMaps::default();
        let who = Identity::new(1, 1);
        t.insert(0, who, vec![]);
        for pid in 1..=(3 * MAX_TASKS) as u32 {
            t.insert(pid, None, vec![]);
            assert!(t.keep(0, who), "pid 0 still charging: kept at {pid}");
        }
        assert!(t.get(0).is_some());
        assert!(t.get(1).is_none() && t.get(3 * MAX_TASKS as u32).is_some());
        assert!(t.order.len() <= 4 * MAX_TASKS + 1, "stale entries are dropped");
    }

    #[test]
    fn the_oldest_process_is_forgotten_first() {
        let mut t = TaskMaps::default();
        for pid in 0..=MAX_TASKS as u32 {
            t.insert(pid, None, vec![]);
        }
        assert!(t.get(0).is_none());
        assert!(t.get(1).is_some() && t.get(MAX_TASKS as u32).is_some());
    }
}
