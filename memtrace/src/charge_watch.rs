//! The charge side of `memtrace watch`: polls the charge maps, raises pre-OOM warnings, and
//! names the top charging stacks of a cgroup in the seconds before one of its kills.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::{
    cgroup::CgroupPaths,
    charges::{ChargeMonitor, SampleKey, rows},
    kill::OomKill,
    stacks::HotStack,
    symbolize::Symbols,
    tracer::Tracer,
    warnings::{PreOomWarning, WarnOptions, Warner},
};

/// Stacks shown with a kill.
const KILL_STACKS: usize = 5;

pub struct ChargeWatch {
    monitor: ChargeMonitor,
    warner: Warner,
    symbols: Symbols,
    /// Stacks symbolized at poll time, while their processes still exist: a killed process's
    /// /proc/<pid>/maps is gone by the time its kill is reported.
    resolved: HashMap<SampleKey, HotStack>,
    window: Duration,
    page_size: u64,
}

/// Symbolizing is bounded per tick; what is left waits for the next one.
const RESOLVE_PER_TICK: usize = 256;
const RESOLVED_MAX: usize = 50_000;

impl ChargeWatch {
    pub fn new(window: Duration, warn: WarnOptions) -> Self {
        // SAFETY: sysconf has no preconditions.
        let page_size = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let mut symbols = Symbols::new();
        // Parse /proc/kallsyms now, not when the first kill is waiting to be reported.
        let _ = symbols.kernel(&[0xffff_ffff_8100_0000]);
        Self {
            monitor: ChargeMonitor::new(window + Duration::from_secs(2)),
            warner: Warner::new(warn),
            symbols,
            resolved: HashMap::new(),
            window,
            page_size,
        }
    }

    /// Once a second: new rates, and the warnings they call for.
    pub fn tick(&mut self, tracer: &Tracer, paths: &mut CgroupPaths) -> Vec<PreOomWarning> {
        if let Err(e) = self.monitor.poll(tracer.ebpf(), self.page_size) {
            log::warn!("reading charge maps: {e}");
            return vec![];
        }
        self.resolve_new(tracer);
        let rows = rows(&self.monitor, paths);
        self.warner.check(&rows, Instant::now())
    }

    fn resolve_new(&mut self, tracer: &Tracer) {
        if self.resolved.len() > RESOLVED_MAX {
            self.resolved.clear();
        }
        let fresh: Vec<SampleKey> = self
            .monitor
            .latest_keys()
            .filter(|k| !self.resolved.contains_key(*k))
            .take(RESOLVE_PER_TICK)
            .cloned()
            .collect();
        for k in fresh {
            let h = HotStack::resolve(tracer.ebpf(), &mut self.symbols, &k, 0);
            self.resolved.insert(k, h);
        }
    }

    /// The top charging stacks of the kill's OOM cgroup (and everything under it) over the
    /// window; the victim's own cgroup in a global OOM.
    pub fn kill_context(&mut self, tracer: &Tracer, paths: &CgroupPaths, kill: &OomKill) -> Vec<HotStack> {
        if let Err(e) = self.monitor.poll_samples(tracer.ebpf()) {
            log::warn!("reading charge maps: {e}");
        }
        let scope = kill.oom_cgroup.as_ref().map(|o| &o.cgroup).or(kill.cgroup.as_ref());
        let Some(scope) = scope else { return vec![] };
        let mut ids: Vec<u64> = scope.id.into_iter().collect();
        if let Some(prefix) = scope.path.as_deref() {
            let under = format!("{}/", prefix.trim_end_matches('/'));
            ids.extend(paths.ids_with_paths().filter(|(_, p)| p.starts_with(&under)).map(|(id, _)| id));
        }
        self.monitor
            .top_samples(&ids, self.window, KILL_STACKS)
            .iter()
            .map(|(k, n)| match self.resolved.get(k) {
                Some(h) => HotStack { count: *n, ..h.clone() },
                None => HotStack::resolve(tracer.ebpf(), &mut self.symbols, k, *n),
            })
            .collect()
    }
}
