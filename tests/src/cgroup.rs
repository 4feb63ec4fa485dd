//! A memory cgroup made for one test and removed when it is dropped. Always a child of the
//! hierarchy root named `memtrace-test-*`: never anything under `process_api`.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use memtrace::cgroup::{CgroupVersion, MemoryHierarchy};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct TestCgroup {
    pub version: CgroupVersion,
    pub dir: PathBuf,
    /// Path relative to the hierarchy root, as memtrace reports it.
    pub rel: String,
    /// Directories above `dir` that this test created, outermost first.
    parents: Vec<PathBuf>,
}

impl TestCgroup {
    /// A fresh cgroup with a memory limit, named after the test.
    pub fn new(tag: &str, limit_bytes: u64) -> Self {
        Self::nested(tag, &[], limit_bytes)
    }

    /// `memtrace-test-<tag>-…/<sub[0]>/<sub[1]>/…`, the limit on the innermost one.
    pub fn nested(tag: &str, sub: &[&str], limit_bytes: u64) -> Self {
        let h = MemoryHierarchy::detect().expect("memory cgroup hierarchy");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("memtrace-test-{tag}-{}-{n}", std::process::id());
        let mut rel = format!("/{name}");
        let mut dir = h.root.join(&name);
        let mut parents = vec![];
        for part in sub {
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            if h.version == CgroupVersion::V2 {
                // Children get the memory controller only if the parent hands it down.
                let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+memory");
            }
            parents.push(dir.clone());
            dir = dir.join(part);
            rel = format!("{rel}/{part}");
        }
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let cg = Self {
            version: h.version,
            dir,
            rel,
            parents,
        };
        match cg.version {
            CgroupVersion::V1 => cg.write("memory.limit_in_bytes", &limit_bytes.to_string()),
            CgroupVersion::V2 => {
                cg.write("memory.max", &limit_bytes.to_string());
                // Keep kills about memory, not swap: the VMs may have none, hosts may.
                let _ = std::fs::write(cg.dir.join("memory.swap.max"), "0");
            }
        }
        cg
    }

    pub fn write(&self, file: &str, value: &str) {
        std::fs::write(self.dir.join(file), value).unwrap_or_else(|e| panic!("write {value} to {file}: {e}"));
    }

    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    fn pids(dir: &Path) -> Vec<i32> {
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    /// Kills what is left inside (only processes in our own cgroup), then removes it.
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = Self::pids(&self.dir);
            for pid in &pids {
                // SAFETY: plain kill(2) of a pid that is in the cgroup this test created.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            if pids.is_empty() && std::fs::remove_dir(&self.dir).is_ok() {
                for p in self.parents.iter().rev() {
                    if let Err(e) = std::fs::remove_dir(p) {
                        eprintln!("warning: could not remove {}: {e}", p.display());
                    }
                }
                return;
            }
            if !self.dir.exists() || Instant::now() > deadline {
                if self.dir.exists() {
                    eprintln!("warning: could not remove {}", self.dir.display());
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
