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
//! A process that exec'd in a watched cgroup ([`ExecCgroups`]) is sent at exec too, before
//! ld.so maps its libraries: read then, and once more at its first sample; a read that finds
//! it gone already keeps what the exec read recorded. A read that does not map the process's
//! own binary (a stack sampled while exec built the new mm) is read again at the next record.

use std::{
    collections::{HashMap, HashSet, VecDeque},
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
use memtrace_common::charge::{EXEC_CGROUPS_MAX, STACK_TASK_EXEC, StackTask};

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
/// field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRecord {
    pub tgid: u32,
    pub who: Option<Identity>,
    /// Sent at exec: its shared libraries are not mapped yet.
    pub at_exec: bool,
}

pub fn decode(b: &[u8]) -> Option<TaskRecord> {
    if b.len() != StackTask::SIZE {
        return None;
    }
    let u32_at = |at: usize| b.get(at..at + 4)?.try_into().ok().map(u32::from_ne_bytes);
    let u64_at = |at: usize| b.get(at..at + 8)?.try_into().ok().map(u64::from_ne_bytes);
    Some(TaskRecord {
        tgid: u32_at(0)?,
        who: Identity::new(u64_at(8)?, u64_at(16)?),
        at_exec: u32_at(4)? == STACK_TASK_EXEC,
    })
}

#[derive(Debug)]
struct Recorded {
    who: Option<Identity>,
    maps: Arc<[Mapping]>,
    /// Read again at the next record: read at exec (before ld.so mapped the libraries), or
    /// while exec was building the new mm (the binary not mapped yet).
    partial: bool,
    /// Read at or after this process's exec record: another exec record is the same exec.
    exec_read: bool,
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
    /// Whether `pid`'s mappings are recorded for this same process, and need no new read; if
    /// so, it is kept as if recorded now. A record sent at exec is read unless that exec was
    /// read already (a stack sampled during exec may have read maps without the binary); a
    /// sampled one, unless the last read was partial.
    pub fn keep(&mut self, rec: &TaskRecord) -> bool {
        let (pid, who) = (rec.tgid, rec.who);
        let seen = self.next;
        match self.by_pid.get_mut(&pid) {
            Some(r)
                if who.is_some() && r.who == who && (if rec.at_exec { r.exec_read } else { !r.partial }) =>
            {
                r.seen = seen
            }
            _ => return false,
        }
        self.next += 1;
        self.order.push_back((pid, seen));
        self.forget_oldest();
        true
    }

    /// Records what `/proc/<pid>/maps` showed; `complete` when it maps the process's own
    /// executable (`/proc/<pid>/exe`). A process that is gone by the read (a zombie's maps are
    /// empty) keeps what an earlier read of the same process recorded.
    pub fn insert(&mut self, rec: &TaskRecord, maps: Vec<Mapping>, complete: bool) {
        let (pid, who) = (rec.tgid, rec.who);
        let seen = self.next;
        self.next += 1;
        let earlier = self.by_pid.get(&pid).filter(|r| who.is_some() && r.who == who);
        let exec_read = rec.at_exec || earlier.is_some_and(|r| r.exec_read);
        let (maps, partial) = match earlier {
            Some(r) if maps.is_empty() && !r.maps.is_empty() => (r.maps.clone(), r.partial),
            _ => (maps.into(), rec.at_exec || !complete),
        };
        self.by_pid.insert(
            pid,
            Recorded {
                who,
                maps,
                partial,
                exec_read,
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

/// The `EXEC_CGROUPS` map: the cgroups whose processes the eBPF side sends at exec.
pub struct ExecCgroups {
    map: aya::maps::HashMap<MapData, u64, u8>,
    /// What the map holds.
    held: HashSet<u64>,
}

impl ExecCgroups {
    pub fn new(map: aya::maps::HashMap<MapData, u64, u8>) -> Self {
        Self {
            map,
            held: HashSet::new(),
        }
    }

    /// Makes the map hold `ids` (the first [`EXEC_CGROUPS_MAX`]): two syscalls per cgroup
    /// that comes or goes, none for one that stays.
    pub fn set(&mut self, ids: impl IntoIterator<Item = u64>) {
        let want: HashSet<u64> = ids.into_iter().take(EXEC_CGROUPS_MAX as usize).collect();
        for gone in self.held.difference(&want) {
            let _ = self.map.remove(gone);
        }
        let mut held = HashSet::with_capacity(want.len());
        for id in want {
            if self.held.contains(&id) {
                held.insert(id);
                continue;
            }
            match self.map.insert(&id, &1, 0) {
                Ok(()) => {
                    held.insert(id);
                }
                Err(e) => log::debug!("EXEC_CGROUPS: cgroup {id}: {e}"),
            }
        }
        self.held = held;
    }
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
        for rec in tasks {
            if recorded().lock().is_ok_and(|mut m| m.keep(&rec)) {
                continue;
            }
            // A process that exited already has no maps: its frames stay addresses, unless
            // its exec was recorded.
            let text = match crate::pseudo_fs::read(format!("/proc/{}/maps", rec.tgid)) {
                Ok(text) => text,
                Err(e) => {
                    log::debug!("pid {} gone before its maps were read: {e}", rec.tgid);
                    continue;
                }
            };
            let maps = parse_maps(&text);
            // Read while exec built the new mm, the binary is not mapped yet.
            let exe = std::fs::read_link(format!("/proc/{}/exe", rec.tgid)).ok();
            let complete = exe.is_some_and(|e| maps.iter().any(|m| m.path == e));
            let when = if rec.at_exec { "at exec" } else { "when sampled" };
            log::debug!(
                "pid {} recorded {when}: {} executable mappings{}",
                rec.tgid,
                maps.len(),
                if complete { "" } else { ", not its binary" }
            );
            if let Ok(mut m) = recorded().lock() {
                m.insert(&rec, maps, complete);
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
        let r = decode(&b).expect("24 bytes");
        assert_eq!(r, sampled(42, Identity::new(7, 0xffff_8880_0000_1000)));
        assert!(decode(&b[..4]).is_none(), "the old 4-byte record is refused");
        let mut t = TaskMaps::default();
        assert!(!t.keep(&r));
        t.insert(&r, vec![], true);
        assert!(t.keep(&r), "same process: not read again");
        assert!(
            !t.keep(&sampled(42, Identity::new(8, 0xffff_8880_0000_1000))),
            "pid reused"
        );
        assert!(
            !t.keep(&sampled(42, Identity::new(7, 0xffff_8880_0000_2000))),
            "exec'd"
        );
        t.insert(&sampled(9, None), vec![], true);
        assert!(!t.keep(&sampled(9, None)), "no identity: always read again");
    }

    fn sampled(tgid: u32, who: Option<Identity>) -> TaskRecord {
        TaskRecord {
            tgid,
            who,
            at_exec: false,
        }
    }

    fn mapping(path: &str) -> Mapping {
        Mapping {
            start: 0x1000,
            end: 0x2000,
            offset: 0,
            path: path.into(),
        }
    }

    #[test]
    fn a_process_recorded_at_exec_is_read_again_when_sampled_and_keeps_its_exec_maps_if_gone() {
        let who = Identity::new(7, 0xffff_8880_0000_1000);
        let exec = TaskRecord {
            at_exec: true,
            ..sampled(42, who)
        };
        let mut b = [0u8; StackTask::SIZE];
        b[0..4].copy_from_slice(&42u32.to_ne_bytes());
        b[4..8].copy_from_slice(&STACK_TASK_EXEC.to_ne_bytes());
        b[8..16].copy_from_slice(&7u64.to_ne_bytes());
        b[16..24].copy_from_slice(&0xffff_8880_0000_1000u64.to_ne_bytes());
        assert_eq!(decode(&b), Some(exec));
        let mut t = TaskMaps::default();
        // Sampled while exec built the new mm: the binary is not mapped yet.
        t.insert(&sampled(42, who), vec![], false);
        assert!(!t.keep(&exec), "exec'd since that read: read again");
        t.insert(&exec, vec![mapping("/bin/app")], true);
        assert!(t.keep(&exec), "the same exec sent twice: read once");
        assert!(
            !t.keep(&sampled(42, who)),
            "sampled after exec: its libraries are mapped now"
        );
        // Killed before that read: a zombie's maps are empty; the exec read stays.
        t.insert(&sampled(42, who), vec![], false);
        assert_eq!(t.get(42).as_deref(), Some(&[mapping("/bin/app")][..]));
        // Read in time: the full maps replace it, and later samples are not read again.
        t.insert(
            &sampled(42, who),
            vec![mapping("/bin/app"), mapping("/lib/libc.so.6")],
            true,
        );
        assert_eq!(t.get(42).map(|m| m.len()), Some(2));
        assert!(t.keep(&sampled(42, who)) && t.keep(&exec));
        // Another process under that pid: nothing of the old one is kept.
        t.insert(&sampled(42, Identity::new(9, 1)), vec![], false);
        assert_eq!(t.get(42).map(|m| m.len()), Some(0));
        assert!(
            !t.keep(&sampled(42, Identity::new(9, 1))),
            "read without its binary: again"
        );
    }

    #[test]
    fn a_process_seen_again_is_kept_while_older_ones_go() {
        let mut t = TaskMaps::default();
        let who = Identity::new(1, 1);
        t.insert(&sampled(0, who), vec![], true);
        for pid in 1..=(3 * MAX_TASKS) as u32 {
            t.insert(&sampled(pid, None), vec![], true);
            assert!(t.keep(&sampled(0, who)), "pid 0 still charging: kept at {pid}");
        }
        assert!(t.get(0).is_some());
        assert!(t.get(1).is_none() && t.get(3 * MAX_TASKS as u32).is_some());
        assert!(t.order.len() <= 4 * MAX_TASKS + 1, "stale entries are dropped");
    }

    #[test]
    fn the_oldest_process_is_forgotten_first() {
        let mut t = TaskMaps::default();
        for pid in 0..=MAX_TASKS as u32 {
            t.insert(&sampled(pid, None), vec![], true);
        }
        assert!(t.get(0).is_none());
        assert!(t.get(1).is_some() && t.get(MAX_TASKS as u32).is_some());
    }
}
