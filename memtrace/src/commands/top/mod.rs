//! `memtrace top`: cgroups sorted by charge rate, with usage, working set, limit, headroom,
//! reclaim stalls and kills. On a terminal, a live view ([`live`], drawn by [`view`]) with a
//! drill-down into a cgroup's top charging stacks; `--once` prints one sample (text or JSON)
//! for scripts, and without a terminal (or with `--plain`) the text table is printed every
//! interval.

pub mod live;
pub mod view;

use std::{io::IsTerminal as _, time::Duration};

use anyhow::Context as _;

use crate::{
    cgroup::{CgroupPaths, MemoryHierarchy},
    charges::accounting::{ChargeMonitor, Reads, Row, rows},
    cli::TopArgs,
    kernel::tracer::{ChargeOptions, Tracer},
    output::{self, Format},
};

/// How `top` shows its samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The interactive terminal view.
    Live,
    /// Text or JSON printed every interval (or once).
    Print,
}

impl Mode {
    /// The live view only on a terminal, and only when nothing asked for printed output.
    pub fn choose(args: &TopArgs, stdout_is_terminal: bool) -> Self {
        if stdout_is_terminal && !args.once && !args.plain && args.output == Format::Text {
            Self::Live
        } else {
            Self::Print
        }
    }
}

/// The table, a line per cgroup under a header.
fn text(rows: &[Row]) -> String {
    let line = |c: &[String]| {
        format!(
            "{:<48} {:>10} {:>10} {:>10} {:>6} {:>10} {:>10} {:>8} {:>5}\n",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]
        )
    };
    let mut out = line(&view::COLUMNS.map(String::from));
    for r in rows {
        out += &line(&view::row_cells(r));
    }
    out
}

pub(crate) fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    let terminal = std::io::stdout().is_terminal();
    match Mode::choose(&args, terminal) {
        Mode::Live => live::run(&args).await,
        Mode::Print => print(&args, terminal).await,
    }
}

/// Text or JSON every interval, or once; no stack sampling.
async fn print(args: &TopArgs, terminal: bool) -> anyhow::Result<()> {
    let hierarchy = MemoryHierarchy::detect()?;
    // Sampled page faults, no stacks: a one-off look costs the host next to nothing.
    let charges = ChargeOptions {
        sample_every: 0,
        ..ChargeOptions::default()
    };
    let (_tracer, _rings, mut maps) = Tracer::start_charges(&hierarchy, charges)?;
    let mut paths = CgroupPaths::new(hierarchy);
    let mut monitor = ChargeMonitor::new(Duration::from_secs(10));
    let page = page_size();
    monitor.poll(&mut maps, page);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut first = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
        }
        monitor.poll(&mut maps, page);
        // The working set (memory.stat) only of cgroups at 80 % of their limit or more: the
        // others show the kernel's usage and limit, read in the same pass as the rates.
        let rows = rows(&mut monitor, &mut paths, Reads::NearLimit(0.8), page);
        let out = match args.output {
            Format::Json => serde_json::to_string(&rows)? + "\n",
            Format::Text => {
                let before = match (args.once, terminal, first) {
                    (true, ..) => "",
                    // Clear the screen and home the cursor (`--plain` on a terminal).
                    (false, true, _) => "\x1b[2J\x1b[H",
                    // A log or a pipe: samples one after the other, a blank line between.
                    (false, false, false) => "\n",
                    (false, false, true) => "",
                };
                before.to_owned() + &text(&rows)
            }
        };
        // The reader went away (`| head`): done.
        if !output::to_stdout(&out).context("writing to stdout")? {
            return Ok(());
        }
        if args.once {
            return Ok(());
        }
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn top(args: &[&str]) -> TopArgs {
        let argv = ["memtrace", "top"].iter().chain(args);
        match Cli::try_parse_from(argv).expect("parses").command {
            Command::Top(a) => a,
            c => panic!("{c:?}"),
        }
    }

    #[test]
    fn live_view_only_on_a_terminal_without_script_flags() {
        assert_eq!(Mode::choose(&top(&[]), true), Mode::Live);
        assert_eq!(Mode::choose(&top(&[]), false), Mode::Print);
        assert_eq!(Mode::choose(&top(&["--once"]), true), Mode::Print);
        assert_eq!(Mode::choose(&top(&["--output", "json"]), true), Mode::Print);
        assert_eq!(Mode::choose(&top(&["--plain"]), true), Mode::Print);
        let a = top(&[]);
        assert_eq!((a.sample_every, a.window), (64, Duration::from_secs(10)));
        assert!(Cli::try_parse_from(["memtrace", "top", "--sample-every", "0"]).is_err());
    }
}
