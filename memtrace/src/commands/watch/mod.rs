//! `memtrace watch`: the daemon. A kill goes through three stages, each in its own module:
//! [`decode`] (records out of the kernel's ring buffers), the enrich stage
//! ([`crate::enrich::enricher::Enricher`], the one owner of everything a kill event carries),
//! and [`route`] (to the sinks, each behind its own bounded queue, and to the metrics; the
//! counts reconciled with the kernel's are kept there, [`reconcile`]). [`daemon`] is the event
//! loop that moves records through them; [`start`] builds it. SIGINT/SIGTERM end it; what the
//! kernel still holds is reported, then the exit summary ([`summary`]) is printed.

mod daemon;
mod decode;
mod heap;
mod reconcile;
mod route;
mod start;
mod summary;

use anyhow::Context as _;
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    time::Duration,
};

use crate::{cli::WatchArgs, config::Config};

/// How often the kernel counters are checked for lost events.
const COUNTER_CHECK: Duration = Duration::from_secs(1);

/// The config file (if any) with the flags over it, checked.
fn config(args: &WatchArgs) -> anyhow::Result<Config> {
    let mut cfg = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    cfg.apply_flags(args);
    cfg.validate().context("invalid configuration")?;
    Ok(cfg)
}

/// SIGTERM and SIGINT, which end the daemon cleanly.
pub(super) struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Before anything is attached: a SIGTERM that arrives as soon as "attached" is printed
    /// (or during start-up) must still end in a clean exit with the summary, not in the
    /// default action (tests/tests/lifecycle.rs).
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

pub async fn run(args: WatchArgs) -> anyhow::Result<()> {
    let mut signals = Signals::install()?;
    let cfg = config(&args)?;
    let mut daemon = start::start(&cfg, &args).await?;
    daemon.run(&mut signals).await?;
    daemon.finish(cfg.watch.shutdown_timeout).await;
    Ok(())
}
