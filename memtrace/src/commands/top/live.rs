//! The live terminal view of `memtrace top`: every interval it polls the charge maps, names
//! the freshly sampled user stacks while their processes still run (within a time budget),
//! and redraws; keys are read on their own thread. The terminal is restored on every way out:
//! q, Ctrl-C, SIGINT, SIGTERM, an error, or a panic (ratatui's panic hook).

use std::{
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crossterm::event::Event;
use ratatui::DefaultTerminal;
use tokio::sync::mpsc;

use super::view::{Action, App, Header};
use crate::{
    cgroup::{CgroupPaths, MemoryHierarchy, paths::subtree_ids},
    charges::accounting::{ChargeMonitor, Reads, Sample, rows},
    charges::maps::ChargeMaps,
    charges::stacks::{HotStack, merge_pids},
    charges::symbolize::Symbols,
    cli::TopArgs,
    kernel::tracer::{ChargeOptions, Tracer},
};

/// Time given to user-stack symbolization per refresh.
pub const SYMBOLIZE_BUDGET: Duration = Duration::from_millis(100);
/// Stacks listed for a cgroup.
pub const STACKS_SHOWN: usize = 20;

/// Names the user frames of `samples` (the latest poll's) while their processes are alive;
/// [`Symbols`] keeps the names per (pid, address), so a later drill-down finds them even after
/// the process exits. The samples of `first` cgroups go first, then the most sampled; stops
/// starting new ones once `budget` is spent. Returns how many samples were looked at.
pub fn symbolize_latest(syms: &mut Symbols, samples: &[Sample], first: &[u64], budget: Duration) -> usize {
    let deadline = Instant::now() + budget;
    let mut order: Vec<&Sample> = samples.iter().filter(|s| !s.user_ips.is_empty()).collect();
    order.sort_by_key(|s| (!first.contains(&s.key.cgroup_id), std::cmp::Reverse(s.count)));
    let mut done = 0;
    for s in order {
        if Instant::now() >= deadline {
            break;
        }
        let _ = syms.user(s.key.tgid, &s.user_ips);
        done += 1;
    }
    done
}

/// The ids whose samples count for a cgroup: its own and its descendants'.
pub fn stack_ids<'a>(
    cgroup_id: u64,
    cgroup: &str,
    known: impl IntoIterator<Item = (u64, &'a str)>,
) -> Vec<u64> {
    let mut ids = subtree_ids(cgroup, known);
    if !ids.contains(&cgroup_id) {
        // Not (yet) named by a walk of the hierarchy: its own samples still count.
        ids.push(cgroup_id);
    }
    ids
}

/// The drill-down: the top `n` stacks of `ids` over the last `window`, symbolized.
pub fn drill_down(
    monitor: &ChargeMonitor,
    syms: &mut Symbols,
    ids: &[u64],
    window: Duration,
    n: usize,
) -> Vec<HotStack> {
    // More than n before merging the rows that differ only by pid.
    let all: Vec<HotStack> = monitor
        .top_samples(ids, window, n.saturating_mul(8))
        .iter()
        .map(|s| HotStack::resolve(syms, s))
        .collect();
    let mut top = merge_pids(all, None);
    top.truncate(n);
    top
}

/// The terminal in raw mode on the alternate screen; dropping it restores the terminal.
struct Term(DefaultTerminal);

impl Term {
    fn enter() -> io::Result<Self> {
        match ratatui::try_init() {
            Ok(t) => Ok(Self(t)),
            Err(e) => {
                ratatui::restore();
                Err(e)
            }
        }
    }
}

impl Drop for Term {
    fn drop(&mut self) {
        let _ = self.0.show_cursor();
        ratatui::restore();
    }
}

/// Reads terminal events on a thread of its own (crossterm's reads block) until `stop`.
fn spawn_input(tx: mpsc::UnboundedSender<io::Result<Event>>, stop: Arc<AtomicBool>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("top-input".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match crossterm::event::poll(Duration::from_millis(100)) {
                    Ok(false) => {}
                    Ok(true) => {
                        let ev = crossterm::event::read();
                        let failed = ev.is_err();
                        if tx.send(ev).is_err() || failed {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                }
            }
        })
        .map(drop)
}

/// What one refresh works with.
struct Source {
    maps: ChargeMaps,
    monitor: ChargeMonitor,
    paths: CgroupPaths,
    syms: Symbols,
    page: u64,
    window: Duration,
}

impl Source {
    /// A new sample: rates, rows, and names for the fresh stacks.
    fn poll(&mut self, app: &mut App) {
        self.monitor.poll(&mut self.maps, self.page);
        app.set_rows(rows(&mut self.monitor, &mut self.paths, Reads::All, self.page));
        let first = match app.drilled() {
            Some((id, cgroup)) => stack_ids(id, cgroup, self.paths.ids_with_paths()),
            None => app
                .selected_row()
                .map(|r| stack_ids(r.cgroup_id, &r.cgroup, self.paths.ids_with_paths()))
                .unwrap_or_default(),
        };
        symbolize_latest(&mut self.syms, self.monitor.latest(), &first, SYMBOLIZE_BUDGET);
        self.load_stacks(app);
    }

    /// The drilled-into cgroup's stacks, if one is.
    fn load_stacks(&mut self, app: &mut App) {
        let Some((id, cgroup)) = app.drilled() else {
            return;
        };
        let ids = stack_ids(id, cgroup, self.paths.ids_with_paths());
        let stacks = drill_down(&self.monitor, &mut self.syms, &ids, self.window, STACKS_SHOWN);
        app.set_stacks(stacks);
    }
}

pub async fn run(args: &TopArgs) -> anyhow::Result<()> {
    let hierarchy = MemoryHierarchy::detect()?;
    // Exact mode: the drill-down shows the kernel's charge path too.
    let (tracer, _rings, maps) =
        Tracer::start_charges(&hierarchy, ChargeOptions::exact_with_stacks(args.sample_every))?;
    let hook = tracer.selected(crate::kernel::hooks::HookId::Charge).map_or_else(
        || "none".to_owned(),
        |v| format!("{} {}", v.attach.kind(), v.attach.target()),
    );
    let mut src = Source {
        maps,
        monitor: ChargeMonitor::new(args.window.max(args.interval)),
        paths: CgroupPaths::new(hierarchy),
        syms: Symbols::new(),
        page: super::page_size(),
        window: args.window,
    };
    src.monitor.poll(&mut src.maps, src.page);
    let mut app = App::new(Header {
        hook,
        interval: args.interval,
        sample_every: args.sample_every,
        window: args.window,
    });
    // Before the terminal changes: a SIGTERM from now on ends the loop, and the terminal is
    // restored on the way out.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut term = Term::enter()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut events) = mpsc::unbounded_channel();
    let result = async {
        spawn_input(tx, stop.clone())?;
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + args.interval,
            args.interval.max(Duration::from_millis(10)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        term.0.draw(|f| app.draw(f))?;
        loop {
            tokio::select! {
                _ = tick.tick() => src.poll(&mut app),
                ev = events.recv() => match ev {
                    Some(Ok(Event::Key(k))) => match app.on_key(k) {
                        Action::Quit => return Ok(()),
                        Action::LoadStacks => src.load_stacks(&mut app),
                        Action::Redraw => {}
                        Action::Nothing => continue,
                    },
                    Some(Ok(Event::Resize(..))) => {}
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(anyhow::Error::from(e).context("reading the terminal")),
                    None => return Ok(()),
                },
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = sigterm.recv() => return Ok(()),
            }
            term.0.draw(|f| app.draw(f))?;
        }
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    drop(term);
    drop(tracer);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::charges::accounting::SampleKey;

    fn sample(cgroup_id: u64, tgid: u32, user: Vec<u64>, count: u64) -> Sample {
        Sample {
            key: SampleKey {
                cgroup_id,
                tgid,
                comm: format!("c{cgroup_id}"),
            },
            kernel_ips: vec![0x1234],
            user_ips: user,
            count,
        }
    }

    #[test]
    fn drill_down_takes_the_cgroup_and_its_descendants_symbolized() {
        // A frame of this process, named by the symbolizer: a function of the test's own.
        #[inline(never)]
        fn memtrace_top_marker_frame() -> u64 {
            memtrace_top_marker_frame as *const () as usize as u64
        }
        let me = std::process::id();
        let marker = memtrace_top_marker_frame();
        let mut monitor = ChargeMonitor::new(Duration::from_secs(60));
        let now = Instant::now();
        monitor.record(
            now,
            vec![
                sample(10, me, vec![marker], 3),
                sample(11, me, vec![marker, marker + 1], 5),
                sample(12, me, vec![marker], 100),
            ],
        );
        monitor.record(now, vec![sample(10, me, vec![marker], 4)]);
        let known = [(10, "/app"), (11, "/app/worker"), (12, "/apparent")];
        let ids = stack_ids(10, "/app", known);
        assert_eq!(ids, vec![10, 11]);
        assert_eq!(stack_ids(99, "<id 99>", known), vec![99], "an unnamed cgroup");

        let mut syms = Symbols::new();
        // The refresh names the latest samples first...
        assert_eq!(
            symbolize_latest(&mut syms, monitor.latest(), &ids, Duration::from_secs(5)),
            1
        );
        assert_eq!(symbolize_latest(&mut syms, &[], &ids, Duration::ZERO), 0);
        // ...and the drill-down sums the window, most sampled first, /apparent left out.
        let stacks = drill_down(&monitor, &mut syms, &ids, Duration::from_secs(10), 20);
        let got: Vec<(u64, u64)> = stacks.iter().map(|h| (h.cgroup_id, h.count)).collect();
        assert_eq!(got, vec![(10, 7), (11, 5)]);
        for h in &stacks {
            assert_eq!(
                (h.pid, h.comm.as_str()),
                (me, format!("c{}", h.cgroup_id).as_str())
            );
            assert!(
                h.user[0].contains("memtrace_top_marker_frame"),
                "user frames named: {:?}",
                h.user
            );
        }
        assert_eq!(
            drill_down(&monitor, &mut syms, &ids, Duration::from_secs(10), 1).len(),
            1
        );
        assert!(drill_down(&monitor, &mut syms, &[13], Duration::from_secs(10), 20).is_empty());
    }

    #[test]
    fn symbolization_stops_at_the_budget() {
        let mut syms = Symbols::new();
        let samples = vec![sample(1, 0x7fff_fff0, vec![1], 1)];
        assert_eq!(symbolize_latest(&mut syms, &samples, &[], Duration::ZERO), 0);
        assert_eq!(
            symbolize_latest(&mut syms, &samples, &[], Duration::from_secs(5)),
            1
        );
    }
}
