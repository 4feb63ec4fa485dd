//! The OOM cgroup's memory breakdown read in the kernel at the kill: anon-, tmpfs- and
//! page-cache-filled cgroups each get the right `filled_by` from the numbers at the kill, and
//! the anon figure agrees with the kernel's own log of that kill.

use std::time::Duration;

use memtrace::cgroup::CgroupVersion;
use memtrace_tests::{RemoveFile, TestCgroup, Watcher, ebpf_available, kmsg, procs};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(60);

fn kill_grower(w: &mut Watcher, cg: &TestCgroup, adj: Option<i32>) -> (u32, Value) {
    let mut child = procs::alloc_in(cg, &["grow"], adj);
    let pid = child.id();
    let _ = child.wait();
    (
        pid,
        w.next_event(WAIT, |v| memtrace_tests::is_kill(v) && v["process.pid"] == pid),
    )
}

fn at(ev: &Value, key: &str) -> u64 {
    ev[format!("memtrace.oom_cgroup.at_kill.{key}")]
        .as_u64()
        .unwrap_or_else(|| panic!("no at_kill {key}: {ev}"))
}

fn within(a: u64, b: u64, pct: f64) -> bool {
    (a as f64 - b as f64).abs() <= b as f64 * pct / 100.0
}

/// Anon-filled: `filled_by` anon from the counters at the kill; the cgroup's anon at the kill
/// within 3% of the memory.stat dump the kernel logged for that kill, and within 5% of the
/// victim's anon-rss in its `Killed process` line (the victim holds all of it). The dump is
/// rate-limited across the host: kill again (at most 4 times) until the kernel logs one.
#[test]
fn anon_filled_matches_the_kernel_log() {
    if !ebpf_available("anon_filled_matches_the_kernel_log") {
        return;
    }
    let mut w = Watcher::start(&[]);
    let mut log = kmsg::Kmsg::open_at_end().expect("open /dev/kmsg");
    let cg = TestCgroup::new("atkill-anon", 64 * MIB);
    let anon_key = match cg.version {
        CgroupVersion::V1 => "total_rss",
        CgroupVersion::V2 => "anon",
    };
    let mut compared = false;
    for attempt in 0..4 {
        let (pid, ev) = kill_grower(&mut w, &cg, None);
        eprintln!("event: {ev}");
        assert_eq!(ev["memtrace.verdict.basis"], "at_kill");
        assert_eq!(ev["memtrace.filled_by"], "anon");
        let anon = at(&ev, "anon_bytes");
        assert!(anon >= 48 * MIB, "anon at the kill {anon}");
        assert!(at(&ev, "file_bytes") < 8 * MIB);
        std::thread::sleep(Duration::from_millis(300));
        let lines = log.drain();
        let dump = kmsg::oom_stat_dump(&lines, &cg.rel);
        let killed = kmsg::killed_anon_rss(&lines, pid);
        let (Some(dump), Some(killed)) = (dump, killed) else {
            eprintln!("attempt {attempt}: the kernel logged no dump for this kill (rate-limited)");
            continue;
        };
        let logged = *dump
            .get(anon_key)
            .unwrap_or_else(|| panic!("no {anon_key} in the kernel's dump: {dump:?}"));
        eprintln!("at kill {anon}, memory.stat dump {anon_key} {logged}, Killed process anon-rss {killed}");
        assert!(within(anon, logged, 3.0), "at kill {anon} vs dump {logged}");
        assert!(within(anon, killed, 5.0), "at kill {anon} vs anon-rss {killed}");
        compared = true;
        break;
    }
    assert!(
        compared,
        "the kernel logged no memory.stat dump for 4 kills in a row"
    );
    drop(cg);
    w.stop();
}

/// Tmpfs-filled: 48 MiB of a tmpfs file in a 64 MiB cgroup is shmem at the kill.
#[test]
fn tmpfs_filled_is_shmem_at_the_kill() {
    if !ebpf_available("tmpfs_filled_is_shmem_at_the_kill") {
        return;
    }
    let mut w = Watcher::start(&[]);
    let cg = TestCgroup::new("atkill-shm", 64 * MIB);
    let file = format!("/dev/shm/memtrace-test-atkill-{}", std::process::id());
    let _rm = RemoveFile(file.clone());
    let mut holder = procs::alloc_in(&cg, &["shm", &file, "48"], None);
    procs::wait_ready(&mut holder);
    let (_, ev) = kill_grower(&mut w, &cg, Some(1000));
    eprintln!("event: {ev}");
    assert_eq!(ev["memtrace.verdict.basis"], "at_kill");
    assert_eq!(ev["memtrace.filled_by"], "shmem");
    let slack = memtrace_tests::memcg_stat_slack_bytes();
    assert!(at(&ev, "shmem_bytes") >= 48 * MIB - slack, "{ev}");
    assert!(
        at(&ev, "file_bytes") >= at(&ev, "shmem_bytes"),
        "file includes shmem"
    );
    let _ = holder.kill();
    let _ = holder.wait();
    drop(cg);
    w.stop();
}

/// Page-cache-filled: 48 MiB of a disk file, mapped and mlocked (page cache the kernel cannot
/// reclaim), is page cache at the kill, not anon.
#[test]
fn page_cache_filled_is_page_cache_at_the_kill() {
    if !ebpf_available("page_cache_filled_is_page_cache_at_the_kill") {
        return;
    }
    let mut w = Watcher::start(&[]);
    let cg = TestCgroup::new("atkill-cache", 64 * MIB);
    let dir = CacheDir::new();
    let file = dir.0.join("cache").to_string_lossy().into_owned();
    let _rm = RemoveFile(file.clone());
    let mut holder = procs::alloc_in(&cg, &["cache", &file, "48"], None);
    procs::wait_ready(&mut holder);
    // The holder's 48 MiB of mapped file count in its badness: the grower must be the victim.
    let (_, ev) = kill_grower(&mut w, &cg, Some(1000));
    eprintln!("event: {ev}");
    assert_eq!(ev["memtrace.verdict.basis"], "at_kill");
    assert_eq!(ev["memtrace.filled_by"], "page_cache");
    let file_bytes = at(&ev, "file_bytes");
    let slack = memtrace_tests::memcg_stat_slack_bytes();
    assert!(
        file_bytes - at(&ev, "shmem_bytes") >= 48 * MIB - 2 * slack,
        "{file_bytes}"
    );
    assert!(
        at(&ev, "unevictable_bytes") >= 48 * MIB - slack,
        "mlocked pages are unevictable"
    );
    let _ = holder.kill();
    let _ = holder.wait();
    drop(cg);
    w.stop();
}

/// A directory whose files are page cache, not shmem: the temp dir when it is on a disk
/// (the host), else a ramfs mounted for the test (the VM guests run from tmpfs, whose pages are
/// shmem; ramfs pages are plain, unevictable page cache).
struct CacheDir(std::path::PathBuf, bool);

impl CacheDir {
    fn new() -> Self {
        const TMPFS_MAGIC: i64 = 0x0102_1994;
        let dir = std::env::temp_dir().join(format!("memtrace-test-atkill-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir cache dir");
        let cpath = std::ffi::CString::new(dir.to_string_lossy().as_bytes()).expect("path");
        // SAFETY: statfs into a zeroed struct we own.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        let on_tmpfs =
            unsafe { libc::statfs(cpath.as_ptr(), &mut st) } == 0 && st.f_type as i64 == TMPFS_MAGIC;
        if on_tmpfs {
            let fstype = c"ramfs";
            // SAFETY: mounting a fresh ramfs on a directory this test made.
            let rc = unsafe {
                libc::mount(
                    fstype.as_ptr(),
                    cpath.as_ptr(),
                    fstype.as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            assert_eq!(rc, 0, "mount ramfs: {}", std::io::Error::last_os_error());
        }
        Self(dir, on_tmpfs)
    }
}

impl Drop for CacheDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0.join("cache"));
        if self.1 {
            let cpath = std::ffi::CString::new(self.0.to_string_lossy().as_bytes()).expect("path");
            // SAFETY: unmounting the ramfs this test mounted.
            unsafe { libc::umount2(cpath.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}
