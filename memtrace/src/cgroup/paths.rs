//! Cgroup id -> path. A cgroup's id (what the kernel's `kernfs_node.id` holds, and what the
//! eBPF programs report) is the inode number of its directory, so a walk of the hierarchy maps
//! ids to paths. Paths stay cached after the cgroup is removed, so a container that is gone by
//! the time its kill is reported is still named.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::Path,
    time::{Duration, Instant},
};

use super::MemoryHierarchy;

/// An id still unknown after a walk is not walked for again for this long, so a flood of
/// unknown ids stays cheap; a new id always gets one walk.
const NEGATIVE_TTL: Duration = Duration::from_secs(2);
const NEGATIVE_MAX: usize = 4096;

#[derive(Debug, Clone)]
pub struct CgroupPaths {
    hierarchy: MemoryHierarchy,
    by_id: HashMap<u64, String>,
    /// Ids not found by the last walk, and when.
    unknown: HashMap<u64, Instant>,
}

impl CgroupPaths {
    pub fn new(hierarchy: MemoryHierarchy) -> Self {
        let mut s = Self {
            hierarchy,
            by_id: HashMap::new(),
            unknown: HashMap::new(),
        };
        s.rescan();
        s
    }

    pub fn hierarchy(&self) -> &MemoryHierarchy {
        &self.hierarchy
    }

    /// The path of cgroup `id` relative to the hierarchy root ("/" for the root itself).
    pub fn resolve(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.by_id.get(&id) {
            return Some(p.clone());
        }
        if !self.would_walk(id) {
            return None;
        }
        self.rescan();
        let found = self.by_id.get(&id).cloned();
        if found.is_none() {
            self.not_found(id);
        }
        found
    }

    /// The path of `id` if it is known, without walking.
    pub fn cached(&self, id: u64) -> Option<&str> {
        self.by_id.get(&id).map(String::as_str)
    }

    /// Whether [`Self::resolve`] would walk the hierarchy for `id`: unknown, and not looked
    /// for in vain lately.
    pub fn would_walk(&self, id: u64) -> bool {
        !self.by_id.contains_key(&id) && self.unknown.get(&id).is_none_or(|t| t.elapsed() >= NEGATIVE_TTL)
    }

    fn not_found(&mut self, id: u64) {
        if self.unknown.len() >= NEGATIVE_MAX {
            self.unknown.retain(|_, t| t.elapsed() < NEGATIVE_TTL);
        }
        self.unknown.insert(id, Instant::now());
    }

    /// Learns a walk made elsewhere ([`walk`], off the event loop); the `asked` ids it did
    /// not find are not walked for again for a while, as after [`Self::resolve`].
    pub fn learn(&mut self, walked: HashMap<u64, String>, asked: &[u64]) {
        self.by_id.extend(walked);
        for &id in asked {
            if !self.by_id.contains_key(&id) {
                self.not_found(id);
            }
        }
    }

    /// Records a path learnt elsewhere: the cgroup_mkdir hook names each new cgroup with its id.
    pub fn remember(&mut self, id: u64, path: String) {
        self.by_id.insert(id, path);
    }

    /// Walks the hierarchy; cached entries for removed cgroups are kept.
    pub fn rescan(&mut self) {
        let walked = walk(&self.hierarchy);
        self.by_id.extend(walked);
    }

    /// Every known (id, path).
    pub fn ids_with_paths(&self) -> impl Iterator<Item = (u64, &str)> {
        self.by_id.iter().map(|(id, p)| (*id, p.as_str()))
    }

    /// Every known path (removed cgroups included).
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.by_id.values().map(String::as_str)
    }

    /// (id, path) of every cgroup known.
    pub fn iter_ids(&self) -> impl Iterator<Item = (u64, &str)> {
        self.by_id.iter().map(|(id, p)| (*id, p.as_str()))
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// Every cgroup of the hierarchy, id -> path. Directories that vanish during the walk are
/// skipped.
pub fn walk(hierarchy: &MemoryHierarchy) -> HashMap<u64, String> {
    let mut out = HashMap::new();
    let mut stack = vec![(hierarchy.root.clone(), String::from("/"))];
    while let Some((dir, rel)) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        out.insert(meta.ino(), rel.clone());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                let name = entry.file_name().to_string_lossy().into_owned();
                let child = if rel == "/" {
                    format!("/{name}")
                } else {
                    format!("{rel}/{name}")
                };
                stack.push((entry.path(), child));
            }
        }
    }
    out
}

/// The ids of `cgroup` (a path relative to the hierarchy root) and of every cgroup below it,
/// among `known` (id, path) pairs; "/" is the whole hierarchy.
pub fn subtree_ids<'a>(cgroup: &str, known: impl IntoIterator<Item = (u64, &'a str)>) -> Vec<u64> {
    let prefix = format!("/{}", cgroup.trim_matches('/'));
    let below = if prefix == "/" {
        prefix.clone()
    } else {
        format!("{prefix}/")
    };
    let mut ids: Vec<u64> = known
        .into_iter()
        .filter(|(_, p)| *p == prefix || p.starts_with(&below))
        .map(|(id, _)| id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The memory cgroup of a live process, from `/proc/<pid>/cgroup`: the v1 line whose
/// controllers include `memory`, or the v2 `0::` line.
pub fn proc_memory_cgroup(pid: u32, version: super::CgroupVersion) -> Option<String> {
    let text = crate::pseudo_fs::read(Path::new("/proc").join(pid.to_string()).join("cgroup")).ok()?;
    parse_proc_cgroup(&text, version)
}

pub fn parse_proc_cgroup(text: &str, version: super::CgroupVersion) -> Option<String> {
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = match version {
            super::CgroupVersion::V1 => controllers.split(',').any(|c| c == "memory"),
            super::CgroupVersion::V2 => controllers.is_empty(),
        };
        hit.then(|| path.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::CgroupVersion;

    #[test]
    fn proc_cgroup_lines() {
        let text = "9:name=systemd:/\n4:memory:/a/b\n0::/unified\n";
        assert_eq!(
            parse_proc_cgroup(text, CgroupVersion::V1).as_deref(),
            Some("/a/b")
        );
        assert_eq!(
            parse_proc_cgroup(text, CgroupVersion::V2).as_deref(),
            Some("/unified")
        );
        assert_eq!(parse_proc_cgroup("garbage", CgroupVersion::V1), None);
    }

    #[test]
    fn subtrees_are_the_cgroup_and_its_descendants() {
        let known = [(1, "/"), (2, "/a"), (3, "/a/b"), (4, "/ab"), (5, "/a/b/c")];
        assert_eq!(subtree_ids("/a", known), vec![2, 3, 5]);
        assert_eq!(subtree_ids("a/b/", known), vec![3, 5]);
        assert_eq!(subtree_ids("/", known), vec![1, 2, 3, 4, 5]);
        assert!(subtree_ids("/nope", known).is_empty());
    }

    #[test]
    fn ids_are_directory_inodes_and_survive_removal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let child = dir.path().join("pod").join("ctr");
        std::fs::create_dir_all(&child).expect("mkdir");
        let ino = std::fs::metadata(&child).expect("stat").ino();
        let mut paths = CgroupPaths::new(MemoryHierarchy {
            version: CgroupVersion::V2,
            root: dir.path().to_owned(),
        });
        assert_eq!(paths.resolve(ino).as_deref(), Some("/pod/ctr"));
        std::fs::remove_dir(&child).expect("rmdir");
        paths.rescan();
        assert_eq!(
            paths.resolve(ino).as_deref(),
            Some("/pod/ctr"),
            "kept after removal"
        );
        assert_eq!(paths.resolve(u64::MAX), None);
    }
}
