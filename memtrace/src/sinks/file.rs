//! Events appended to a file, rotated by size: `path` -> `path.1` -> ... -> `path.<keep>`
//! (the oldest is removed). A failed write closes the file; the next event reopens it.

use std::path::{Path, PathBuf};

use tokio::{fs, io::AsyncWriteExt as _};

use super::{Event, Sink, SinkError};
use crate::{config::FileConfig, output::Format};

pub struct FileSink {
    path: PathBuf,
    format: Format,
    max_bytes: u64,
    keep: u32,
    file: Option<fs::File>,
    size: u64,
}

impl FileSink {
    /// Opens (creates) the file at once, so that a bad path is an error at start.
    pub async fn open(c: &FileConfig) -> Result<Self, SinkError> {
        let mut s = Self {
            path: c.path.clone(),
            format: c.format,
            max_bytes: c.max_bytes,
            keep: c.keep,
            file: None,
            size: 0,
        };
        // The error names the config key as well as the path.
        s.reopen().await.map_err(|e| match e {
            SinkError::Io { what, source } => SinkError::Io {
                what: format!("sinks.file.path: {what}"),
                source,
            },
            other => other,
        })?;
        Ok(s)
    }

    async fn reopen(&mut self) -> Result<(), SinkError> {
        let f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await
            .map_err(|e| SinkError::io(format!("opening {}", self.path.display()), e))?;
        self.size = f
            .metadata()
            .await
            .map_err(|e| SinkError::io(format!("stat {}", self.path.display()), e))?
            .len();
        self.file = Some(f);
        Ok(())
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        p.into()
    }

    async fn rotate(&mut self) -> Result<(), SinkError> {
        if let Some(mut f) = self.file.take() {
            let _ = f.flush().await;
        }
        for n in (1..self.keep).rev() {
            rename_if_there(&self.rotated(n), &self.rotated(n + 1)).await?;
        }
        rename_if_there(&self.path, &self.rotated(1)).await?;
        self.reopen().await
    }

    async fn write(&mut self, line: &[u8]) -> Result<(), SinkError> {
        let len = line.len() as u64;
        if self.file.is_none() {
            self.reopen().await?;
        }
        if self.size > 0 && self.size + len > self.max_bytes {
            self.rotate().await?;
        }
        let Some(f) = self.file.as_mut() else {
            return Err(SinkError::NotOpen {
                path: self.path.clone(),
            });
        };
        let what = || format!("writing {}", self.path.display());
        f.write_all(line).await.map_err(|e| SinkError::io(what(), e))?;
        f.flush().await.map_err(|e| SinkError::io(what(), e))?;
        self.size += len;
        Ok(())
    }
}

async fn rename_if_there(from: &Path, to: &Path) -> Result<(), SinkError> {
    match fs::rename(from, to).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(SinkError::io(
            format!("rotating {} to {}", from.display(), to.display()),
            e,
        )),
        _ => Ok(()),
    }
}

impl Sink for FileSink {
    async fn deliver(&mut self, ev: &Event) -> Result<(), SinkError> {
        let mut line = ev.line(self.format);
        line.push('\n');
        let r = self.write(line.as_bytes()).await;
        if r.is_err() {
            self.file = None;
        }
        r
    }

    async fn close(&mut self) {
        if let Some(f) = self.file.as_mut() {
            let _ = f.flush().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::tests::event;

    #[tokio::test]
    async fn rotates_by_size_and_keeps_n() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        let line_len = event().line(Format::Json).len() as u64 + 1;
        let c = FileConfig {
            enabled: true,
            path: path.clone(),
            format: Format::Json,
            max_bytes: line_len * 2,
            keep: 2,
            queue: 8,
        };
        let mut s = FileSink::open(&c).await.expect("open");
        for _ in 0..7 {
            s.deliver(&event()).await.expect("deliver");
        }
        s.close().await;
        let lines = |p: &Path| std::fs::read_to_string(p).map(|t| t.lines().count()).unwrap_or(0);
        // 7 lines, 2 per file: current has 1, .1 and .2 have 2 each, the oldest 2 are gone.
        assert_eq!(lines(&path), 1);
        assert_eq!(lines(&s.rotated(1)), 2);
        assert_eq!(lines(&s.rotated(2)), 2);
        assert!(!s.rotated(3).exists());
        let first = std::fs::read_to_string(&path).expect("read");
        let v: serde_json::Value = serde_json::from_str(first.trim()).expect("json line");
        assert_eq!(v["event.name"], "memtrace.oom_kill");
    }

    #[tokio::test]
    async fn a_bad_path_fails_at_start() {
        let c = FileConfig {
            enabled: true,
            path: "/nonexistent-dir/x/events".into(),
            format: Format::Json,
            max_bytes: 1 << 20,
            keep: 1,
            queue: 8,
        };
        let e = FileSink::open(&c).await.err().expect("error");
        assert!(e.to_string().contains("sinks.file.path"), "{e}");
    }
}
