//! Flame graphs of charging stacks: the folded lines of `charges::stacks` (`comm;outer;...;inner
//! count`) drawn as an SVG by the `inferno` crate. Used by `memtrace hotspots --svg FILE` and by
//! `watch` to keep one beside a kill's event (`charges.kill_flamegraph_dir`).

use std::path::{Path, PathBuf};

use inferno::flamegraph::{self, Options};

#[derive(Debug, thiserror::Error)]
pub enum FlameGraphError {
    #[error("no charge stacks to draw")]
    NoStacks,
    #[error("drawing the flame graph: {0}")]
    Render(std::io::Error),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The SVG of `folded` lines, titled `title`.
pub fn svg(folded: &[String], title: &str) -> Result<Vec<u8>, FlameGraphError> {
    if folded.is_empty() {
        return Err(FlameGraphError::NoStacks);
    }
    let mut opts = Options::default();
    opts.title = title.to_owned();
    opts.count_name = "samples".to_owned();
    opts.subtitle = Some("memory charges per stack (kernel frames end in _[k])".to_owned());
    let mut out = Vec::with_capacity(16 << 10);
    flamegraph::from_lines(&mut opts, folded.iter().map(String::as_str), &mut out)
        .map_err(FlameGraphError::Render)?;
    Ok(out)
}

/// Writes the SVG to `path` (through a temporary file beside it, so a reader never sees half).
pub fn write(path: &Path, folded: &[String], title: &str) -> Result<(), FlameGraphError> {
    let data = svg(folded, title)?;
    let write_err = |source| FlameGraphError::Write {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("svg.tmp");
    std::fs::write(&tmp, data).map_err(write_err)?;
    std::fs::rename(&tmp, path).map_err(write_err)
}

/// Where a kill's flame graph goes: `DIR/memtrace-kill-<seq>-<pid>.svg`.
pub fn kill_path(dir: &Path, seq: u64, pid: u32) -> PathBuf {
    dir.join(format!("memtrace-kill-{seq}-{pid}.svg"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_names_the_frames() {
        let lines = vec![
            "alloc;main;grow;handle_mm_fault_[k];try_charge_[k] 9".to_owned(),
            "alloc;main;other 1".to_owned(),
        ];
        let svg = String::from_utf8(svg(&lines, "charges of /x").expect("svg")).expect("utf-8");
        assert!(svg.starts_with("<?xml"), "{svg}");
        for name in ["grow", "try_charge", "charges of /x"] {
            assert!(svg.contains(name), "{name} missing");
        }
        assert!(matches!(super::svg(&[], "t"), Err(FlameGraphError::NoStacks)));
    }

    #[test]
    fn write_replaces_atomically() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = kill_path(dir.path(), 3, 42);
        assert!(p.ends_with("memtrace-kill-3-42.svg"));
        write(&p, &["a;b 1".to_owned()], "t").expect("write");
        assert!(std::fs::read_to_string(&p).expect("read").contains("<svg"));
        assert!(!p.with_extension("svg.tmp").exists());
        let bad = dir.path().join("missing/x.svg");
        assert!(matches!(
            write(&bad, &["a 1".to_owned()], "t"),
            Err(FlameGraphError::Write { .. })
        ));
    }
}
