//! The executable mappings of sampled processes, read while they run, so their stack frames
//! can still be named after they exit: a build step, a batch job or a victim killed within a
//! second is gone before `hotspots`, `top` or a kill event symbolizes its stacks, but its
//! binary is usually still on disk. A frame is then named from the file at its file offset.
//!
//! The eBPF side writes a task's tgid to the `STACK_TASKS` ring when it first samples one of
//! its stacks; a thread here reads `/proc/<tgid>/maps` at once (the task was faulting a moment
//! ago) and keeps the file-backed executable ranges of the last [`MAX_TASKS`] processes.

use std::{
    collections::{HashMap, VecDeque},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};

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

/// The mappings of the last [`MAX_TASKS`] processes recorded, by tgid.
#[derive(Debug, Default)]
pub struct TaskMaps {
    by_pid: HashMap<u32, Arc<[Mapping]>>,
    order: VecDeque<u32>,
}

impl TaskMaps {
    pub fn insert(&mut self, pid: u32, maps: Vec<Mapping>) {
        if self.by_pid.insert(pid, maps.into()).is_none() {
            self.order.push_back(pid);
        }
        while self.order.len() > MAX_TASKS {
            if let Some(old) = self.order.pop_front() {
                self.by_pid.remove(&old);
            }
        }
    }

    pub fn get(&self, pid: u32) -> Option<Arc<[Mapping]>> {
        self.by_pid.get(&pid).cloned()
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
    thread: Option<JoinHandle<()>>,
}

impl Recorder {
    pub fn spawn(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("memtrace-maps".into())
            .spawn(move || record(ring, &flag))?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Poll period: also how long dropping a [`Recorder`] may wait for its thread.
const POLL: Duration = Duration::from_millis(100);

fn record(mut ring: RingBuf<MapData>, stop: &AtomicBool) {
    let fd = ring.as_raw_fd();
    while !stop.load(Ordering::Relaxed) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, POLL.as_millis() as i32) };
        if ready < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            log::warn!("polling the stack task ring: {}", std::io::Error::last_os_error());
            return;
        }
        let mut pids = Vec::new();
        while let Some(item) = ring.next() {
            match <[u8; 4]>::try_from(&*item) {
                Ok(b) => pids.push(u32::from_ne_bytes(b)),
                Err(_) => log::debug!("stack task record of {} bytes, not 4", item.len()),
            }
        }
        for pid in pids {
            // A process that exited already has no maps: its frames stay addresses.
            if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/maps"))
                && let Ok(mut m) = recorded().lock()
            {
                m.insert(pid, parse_maps(&text));
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
    fn the_oldest_process_is_forgotten_first() {
        let mut t = TaskMaps::default();
        for pid in 0..=MAX_TASKS as u32 {
            t.insert(pid, vec![]);
        }
        assert!(t.get(0).is_none());
        assert!(t.get(1).is_some() && t.get(MAX_TASKS as u32).is_some());
    }
}
