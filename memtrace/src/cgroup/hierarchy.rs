//! Finds the hierarchy that holds the memory controller: a cgroup v1 mount with the `memory`
//! option, or the cgroup2 mount whose `cgroup.controllers` lists `memory`.

use std::{
    io,
    path::{Path, PathBuf},
};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupVersion {
    V1,
    #[default]
    V2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryHierarchy {
    pub version: CgroupVersion,
    pub root: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum HierarchyError {
    #[error("/proc/self/mountinfo: {0}")]
    Io(#[from] io::Error),
    #[error(
        "no memory cgroup controller is mounted (neither cgroup v1 `memory` nor cgroup2 with memory enabled)"
    )]
    NotMounted,
}

impl MemoryHierarchy {
    pub fn detect() -> Result<Self, HierarchyError> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")?;
        Self::from_mountinfo(&text, |p| {
            std::fs::read_to_string(p.join("cgroup.controllers")).unwrap_or_default()
        })
        .ok_or(HierarchyError::NotMounted)
    }

    /// `controllers` reads a cgroup2 mount's `cgroup.controllers` (a parameter for tests).
    pub fn from_mountinfo(text: &str, controllers: impl Fn(&Path) -> String) -> Option<Self> {
        let mut v2 = None;
        for line in text.lines() {
            // id parent major:minor root mountpoint options [optional...] - fstype source super
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            // A line that does not parse is skipped, not the end of the search.
            let Some(mount_point) = left.split(' ').nth(4) else {
                continue;
            };
            let mut r = right.split(' ');
            let Some(fstype) = r.next() else { continue };
            let super_opts = r.nth(1).unwrap_or("");
            let root = PathBuf::from(unescape(mount_point));
            match fstype {
                "cgroup" if super_opts.split(',').any(|o| o == "memory") => {
                    return Some(Self {
                        version: CgroupVersion::V1,
                        root,
                    });
                }
                "cgroup2" if v2.is_none() && controllers(&root).split_whitespace().any(|c| c == "memory") => {
                    v2 = Some(Self {
                        version: CgroupVersion::V2,
                        root,
                    });
                }
                _ => {}
            }
        }
        v2
    }

    /// The hierarchy id the kernel's cgroup tracepoints report (`root=`): the memory line of
    /// /proc/cgroups for v1, 0 for the cgroup2 default hierarchy.
    pub fn hierarchy_id(&self) -> Option<u32> {
        match self.version {
            CgroupVersion::V2 => Some(0),
            CgroupVersion::V1 => {
                let text = std::fs::read_to_string("/proc/cgroups").ok()?;
                text.lines().find_map(|l| {
                    let mut f = l.split_whitespace();
                    (f.next() == Some("memory"))
                        .then(|| f.next()?.parse().ok())
                        .flatten()
                })
            }
        }
    }

    /// Absolute directory of a cgroup given its path relative to the hierarchy root ("/a/b").
    pub fn dir(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\\' {
            let oct: String = it.clone().take(3).collect();
            let is_octal = oct.len() == 3 && oct.bytes().all(|b| (b'0'..=b'7').contains(&b));
            if let Some(v) = is_octal.then(|| u8::from_str_radix(&oct, 8).ok()).flatten() {
                out.push(char::from(v));
                it.nth(2);
                continue;
            }
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = "\
30 23 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
35 23 0:31 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
36 23 0:32 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec - cgroup cgroup rw,memory\n";

    const V2: &str = "\
1 0 0:1 / / rw - ext4 /dev/vda rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n";

    #[test]
    fn v1_memory_wins_over_an_empty_cgroup2() {
        let h = MemoryHierarchy::from_mountinfo(V1, |_| String::new()).expect("found");
        assert_eq!(h.version, CgroupVersion::V1);
        assert_eq!(h.root, PathBuf::from("/sys/fs/cgroup/memory"));
        assert_eq!(h.dir("/a/b"), PathBuf::from("/sys/fs/cgroup/memory/a/b"));
    }

    #[test]
    fn v2_needs_the_memory_controller() {
        let h = MemoryHierarchy::from_mountinfo(V2, |_| "cpu io memory pids".into());
        assert_eq!(h.map(|h| h.version), Some(CgroupVersion::V2));
        assert_eq!(MemoryHierarchy::from_mountinfo(V2, |_| "cpu io".into()), None);
    }

    #[test]
    fn garbage_is_not_a_panic() {
        for s in ["", " - ", "a b c d", "1 2 3 4 5 - cgroup", "\\\\\\ - cgroup2"] {
            let _ = MemoryHierarchy::from_mountinfo(s, |_| "memory".into());
        }
        // A malformed line before the memory mount does not hide it.
        let text = format!("1 2 3 - cgroup\n{V1}");
        assert_eq!(
            MemoryHierarchy::from_mountinfo(&text, |_| String::new()).map(|h| h.version),
            Some(CgroupVersion::V1)
        );
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/a\\04"), "/a\\04");
    }

    #[test]
    fn this_machine_has_one() {
        match MemoryHierarchy::detect() {
            Ok(h) => assert!(h.root.is_dir()),
            Err(e) => eprintln!("SKIPPED: {e}"),
        }
    }
}
