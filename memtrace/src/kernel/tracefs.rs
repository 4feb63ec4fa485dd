//! tracefs: where it is mounted, which events exist, and the field layout of an event's record
//! (`events/<category>/<name>/format`), so that one build reads every kernel's tracepoints.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
};

use memtrace_common::layout::{ABSENT, CgroupMkdirTpLayout, MarkVictimTpLayout};

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and could not be mounted at /sys/kernel/tracing ({source}); mount it: mount -t tracefs tracefs /sys/kernel/tracing"
    )]
    NotMounted { source: io::Error },
    #[error(
        "tracefs (/sys/kernel/tracing) is mounted but not readable: run memtrace as root or give it CAP_DAC_READ_SEARCH"
    )]
    Unreadable,
    #[error("tracepoint {category}:{name} does not exist on this kernel")]
    NoEvent { category: String, name: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: line {line}: malformed field description")]
    Format { path: PathBuf, line: usize },
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

#[derive(Debug, Clone)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Finds tracefs, mounting it at /sys/kernel/tracing when it is not mounted anywhere.
    pub fn locate() -> Result<Self, TracefsError> {
        if let Some(t) = Self::find() {
            return Ok(t);
        }
        if readable() == Some(false) {
            return Err(TracefsError::Unreadable);
        }
        mount_tracefs().map_err(|source| TracefsError::NotMounted { source })?;
        Ok(Self {
            root: CANDIDATES[0].into(),
        })
    }

    /// Finds tracefs without mounting it.
    pub fn find() -> Option<Self> {
        CANDIDATES
            .iter()
            .find(|dir| Path::new(dir).join("events").is_dir())
            .map(|dir| Self { root: (*dir).into() })
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Does tracefs have this top-level file (e.g. `kprobe_events` when kprobes exist)?
    pub fn has_file(&self, name: &str) -> bool {
        self.root.join(name).exists()
    }

    pub fn has_event(&self, category: &str, name: &str) -> bool {
        self.root.join("events").join(category).join(name).is_dir()
    }

    /// Field name -> offset/size, from the event's `format` file.
    pub fn fields(&self, category: &str, name: &str) -> Result<HashMap<String, Field>, TracefsError> {
        let path = self.root.join("events").join(category).join(name).join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                TracefsError::NoEvent {
                    category: category.into(),
                    name: name.into(),
                }
            } else {
                TracefsError::Io {
                    path: path.clone(),
                    source,
                }
            }
        })?;
        parse_format(&text).map_err(|line| TracefsError::Format { path, line })
    }

    /// The `oom:mark_victim` record layout; fields this kernel lacks are `ABSENT`.
    pub fn mark_victim_layout(&self) -> Result<MarkVictimTpLayout, TracefsError> {
        let at = offsets(self.fields("oom", "mark_victim")?);
        Ok(MarkVictimTpLayout {
            pid: at("pid", 4),
            comm: at("comm", 4),
            total_vm: at("total_vm", 8),
            anon_rss: at("anon_rss", 8),
            file_rss: at("file_rss", 8),
            shmem_rss: at("shmem_rss", 8),
            uid: at("uid", 4),
            pgtables: at("pgtables", 8),
            oom_score_adj: at("oom_score_adj", 2),
        })
    }
}

impl Tracefs {
    /// The `cgroup:cgroup_mkdir` record layout (root, level, id, path since 5.7).
    pub fn cgroup_mkdir_layout(&self) -> Result<CgroupMkdirTpLayout, TracefsError> {
        let at = offsets(self.fields("cgroup", "cgroup_mkdir")?);
        Ok(CgroupMkdirTpLayout {
            root: at("root", 4),
            level: at("level", 4),
            id: at("id", 8),
            path: at("path", 4),
        })
    }
}

/// Can this process read tracefs's event files (`Some(false)`: mounted, but permission denied;
/// `None`: not mounted)? tracefs is mode 0700 and its format files 0440, owned by root.
pub fn readable() -> Option<bool> {
    for dir in CANDIDATES {
        match std::fs::File::open(Path::new(dir).join("events/oom/mark_victim/format")) {
            Ok(_) => return Some(true),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Some(false),
            Err(_) => {}
        }
    }
    None
}

fn mount_tracefs() -> io::Result<()> {
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "tracefs", CANDIDATES[0]])
        .stderr(std::process::Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("mount exited with {status}")))
    }
}

/// Parses lines like `\tfield:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;`.
/// Returns the 1-based number of the first malformed `field:` line.
pub fn parse_format(text: &str) -> Result<HashMap<String, Field>, usize> {
    let mut fields = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';').map(str::trim);
        let decl = parts.next().ok_or(i + 1)?;
        let mut value = |key: &str| {
            parts
                .next()
                .and_then(|p| p.strip_prefix(key))
                .and_then(|v| v.parse::<u32>().ok())
                .ok_or(i + 1)
        };
        let offset = value("offset:")?;
        let size = value("size:")?;
        // The name is the declaration's last word, without an array suffix: `char comm[16]`.
        let name = decl.rsplit(' ').next().unwrap_or(decl);
        let name = name.split('[').next().unwrap_or(name);
        if name.is_empty() {
            return Err(i + 1);
        }
        fields.insert(name.to_owned(), Field { offset, size });
    }
    Ok(fields)
}

/// A field's offset in an event's record if it has the size the eBPF side reads, else `ABSENT`
/// (a field that changed size must not be read with the old one).
fn offsets(fields: HashMap<String, Field>) -> impl Fn(&str, u32) -> u32 {
    move |name, size| {
        fields
            .get(name)
            .filter(|f| f.size == size)
            .map_or(ABSENT, |f| f.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // From a 6.18 kernel: /sys/kernel/tracing/events/oom/mark_victim/format.
    const MARK_VICTIM_6_18: &str = "name: mark_victim\nID: 609\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;\n\
\tfield:__data_loc char[] comm;\toffset:12;\tsize:4;\tsigned:0;\n\
\tfield:unsigned long total_vm;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:unsigned long anon_rss;\toffset:24;\tsize:8;\tsigned:0;\n\
\tfield:unsigned long file_rss;\toffset:32;\tsize:8;\tsigned:0;\n\
\tfield:unsigned long shmem_rss;\toffset:40;\tsize:8;\tsigned:0;\n\
\tfield:uid_t uid;\toffset:48;\tsize:4;\tsigned:0;\n\
\tfield:unsigned long pgtables;\toffset:56;\tsize:8;\tsigned:0;\n\
\tfield:short oom_score_adj;\toffset:64;\tsize:2;\tsigned:1;\n\n\
print fmt: \"pid=%d\", REC->pid\n";

    // Kernels before 6.8 record the pid only.
    const MARK_VICTIM_6_1: &str = "name: mark_victim\nID: 500\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int pid;\toffset:8;\tsize:4;\tsigned:1;\n\nprint fmt: \"pid=%d\", REC->pid\n";

    fn tracefs_with(format: &str) -> (tempfile::TempDir, Tracefs) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ev = dir.path().join("events/oom/mark_victim");
        std::fs::create_dir_all(&ev).expect("mkdir");
        std::fs::write(ev.join("format"), format).expect("write");
        let t = Tracefs::at(dir.path());
        (dir, t)
    }

    #[test]
    fn full_layout_6_18() {
        let (_d, t) = tracefs_with(MARK_VICTIM_6_18);
        let l = t.mark_victim_layout().expect("layout");
        assert_eq!((l.pid, l.comm, l.total_vm, l.anon_rss), (8, 12, 16, 24));
        assert_eq!((l.uid, l.pgtables, l.oom_score_adj), (48, 56, 64));
    }

    #[test]
    fn pid_only_layout_6_1() {
        let (_d, t) = tracefs_with(MARK_VICTIM_6_1);
        let l = t.mark_victim_layout().expect("layout");
        assert_eq!(l.pid, 8);
        assert_eq!(l.anon_rss, ABSENT);
        assert_eq!(l.comm, ABSENT);
    }

    #[test]
    fn malformed_lines_are_errors_not_panics() {
        assert_eq!(parse_format("\tfield:int pid;\toffset:x;\tsize:4;"), Err(1));
        assert_eq!(parse_format("a\n\tfield:int pid"), Err(2));
        assert_eq!(parse_format("\tfield:;\toffset:1;\tsize:4;"), Err(1));
        assert!(parse_format("").is_ok_and(|f| f.is_empty()));
    }

    #[test]
    fn missing_event_is_named() {
        let (_d, t) = tracefs_with(MARK_VICTIM_6_1);
        let err = t.fields("oom", "nope").expect_err("no such event");
        assert!(err.to_string().contains("oom:nope"));
    }

    #[test]
    fn running_kernel_has_mark_victim() {
        let Ok(t) = Tracefs::locate() else {
            eprintln!("SKIPPED: tracefs not available (not root?)");
            return;
        };
        assert!(t.has_event("oom", "mark_victim"));
        assert_ne!(t.mark_victim_layout().expect("layout").pid, ABSENT);
    }
}
