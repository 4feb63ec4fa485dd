//! Benchmark 2, kill-to-event latency: real OOM kills, one at a time, in several small cgroups in
//! rotation, idle and under `stress-ng --vm 1 --vm-bytes 256M` in another cgroup (blocks of
//! each, interleaved), with the kernel log's `Killed process` line for the same kills.

use std::{collections::BTreeMap, fmt::Write as _, path::Path, time::Duration};

use anyhow::Context as _;

use super::{
    Ctx, Section,
    daemon::{Kill, Watch},
    kmsg, run_header,
    stats::{Dist, f, median, pass},
    sys::{self, BenchCgroup, Reaped},
};

const LIMIT: u64 = 16 << 20;
const CGROUPS: usize = 4;
pub const STRESS: &[&str] = &["--vm", "1", "--vm-bytes", "256M", "--timeout", "1h", "--quiet"];

/// The daemon's scheduling class and the machine's extra load during a run of kills.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Phase {
    Idle,
    Loaded,
    /// The same with the daemon under `chrt -f 50`: what is left without scheduling delay.
    RtIdle,
    RtLoaded,
}

impl Phase {
    const ALL: [Phase; 4] = [Phase::Idle, Phase::Loaded, Phase::RtIdle, Phase::RtLoaded];

    fn loaded(self) -> bool {
        matches!(self, Phase::Loaded | Phase::RtLoaded)
    }

    fn rt(self) -> bool {
        matches!(self, Phase::RtIdle | Phase::RtLoaded)
    }

    fn name(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Loaded => "stress-ng",
            Phase::RtIdle => "idle, daemon SCHED_FIFO",
            Phase::RtLoaded => "stress-ng, daemon SCHED_FIFO",
        }
    }
}

/// One kill the benchmark caused, and what was seen of it.
struct Sample {
    block: usize,
    phase: Phase,
    load1: f64,
    event: Option<Kill>,
    kmsg: Option<kmsg::Record>,
}

/// A stress-ng load in a cgroup of its own, stopped on drop.
pub struct Stress {
    cg: BenchCgroup,
    child: Reaped,
}

impl Stress {
    pub fn start(ctx: &Ctx, args: &[&str]) -> anyhow::Result<Self> {
        let cg = BenchCgroup::new(&ctx.hierarchy, "load", 1 << 30)?;
        let child = Reaped(
            cg.command(Path::new("stress-ng"), args)
                .spawn()
                .context("starting stress-ng")?,
        );
        Ok(Self { cg, child })
    }
}

impl Drop for Stress {
    fn drop(&mut self) {
        sys::signal(self.child.pid(), libc::SIGTERM);
        sys::wait_exit(self.child.pid(), Duration::from_secs(5));
        self.cg.kill_all();
    }
}

pub fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let blocks = if ctx.smoke { 1 } else { ctx.rounds };
    let per_block = if ctx.smoke { 6 } else { 200usize.div_ceil(blocks) };
    let cgs = (0..CGROUPS)
        .map(|i| BenchCgroup::new(&ctx.hierarchy, &format!("lat{i}"), LIMIT))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let load_before = sys::loadavg();
    let log = kmsg::Reader::start()?;
    let cal_start = log.calibrate("start")?;
    let boot_minus_mono = sys::boot_minus_mono_ns();
    let mut ours: Vec<(u32, usize, Phase, f64)> = Vec::new();
    let mut kills: Vec<Kill> = Vec::new();
    // kernel_seen, delivered, dropped_ringbuf_full over all the daemons.
    let mut totals = [0u64; 3];
    let mut not_oom = 0;
    let mut n = 0;
    for block in 0..blocks {
        for rt in [false, true] {
            let wrapper: &[&str] = if rt { &["chrt", "-f", "50"] } else { &[] };
            let watch = Watch::start_via(wrapper, &ctx.memtrace, &[])?;
            for phase in Phase::ALL.into_iter().filter(|p| p.rt() == rt) {
                let stress = if phase.loaded() {
                    let s = Stress::start(ctx, STRESS)?;
                    std::thread::sleep(Duration::from_secs(1));
                    Some(s)
                } else {
                    None
                };
                let load1 = sys::load1();
                for _ in 0..per_block {
                    let run =
                        sys::alloc_until_killed(&ctx.alloc, &cgs[n % CGROUPS], Duration::from_secs(60))?;
                    n += 1;
                    if run.oom_killed {
                        ours.push((run.pid, block, phase, load1));
                    } else {
                        not_oom += 1;
                        eprintln!(
                            "bench: latency: allocator {} ended without a kill: {}",
                            run.pid, run.status
                        );
                    }
                }
                drop(stress);
                eprintln!(
                    "bench: latency block {block} {phase:?}: {n} kills so far (load {})",
                    sys::loadavg()
                );
            }
            watch.wait_quiet(Duration::from_secs(1), Duration::from_secs(10));
            let exit = watch.stop()?;
            kills.extend(exit.kills.iter().cloned());
            for (i, key) in ["kernel_seen", "delivered", "dropped_ringbuf_full"]
                .iter()
                .enumerate()
            {
                totals[i] += exit.get(key);
            }
        }
    }
    let cal_end = log.calibrate("end")?;
    let records = log.records();
    drop(log);
    let load_after = sys::loadavg();

    let events: BTreeMap<u64, &Kill> = kills.iter().map(|k| (k.pid, k)).collect();
    let lines: BTreeMap<u64, &kmsg::Record> = records
        .iter()
        .filter_map(|r| Some((kmsg::killed_pid(&r.text)?, r)))
        .collect();
    let samples: Vec<Sample> = ours
        .iter()
        .map(|&(pid, block, phase, load1)| Sample {
            block,
            phase,
            load1,
            event: events.get(&u64::from(pid)).map(|k| (*k).clone()),
            kmsg: lines.get(&u64::from(pid)).map(|r| (*r).clone()),
        })
        .collect();
    let clock = Clock {
        boot_minus_mono,
        printk_minus_mono: (cal_start.0 + cal_end.0) / 2,
        err: cal_start.1.max(cal_end.1),
        drift: cal_end.0 - cal_start.0,
    };
    let foreign = kills.len() - samples.iter().filter(|s| s.event.is_some()).count();
    Ok(report(
        ctx,
        &samples,
        &clock,
        not_oom,
        foreign,
        totals,
        &load_before,
        &load_after,
    ))
}

struct Clock {
    boot_minus_mono: i64,
    printk_minus_mono: i64,
    err: i64,
    drift: i64,
}

impl Clock {
    /// The printk-clock timestamp of a kmsg record minus the hook time, in µs.
    fn kmsg_after_hook_us(&self, rec: &kmsg::Record, hook_boot_ns: u64) -> f64 {
        let hook_mono = hook_boot_ns as i64 - self.boot_minus_mono;
        let hook_printk = hook_mono + self.printk_minus_mono;
        (rec.ts_us as i64 * 1000 + 500 - hook_printk) as f64 / 1000.0
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    ctx: &Ctx,
    samples: &[Sample],
    clock: &Clock,
    not_oom: usize,
    foreign: usize,
    totals: [u64; 3],
    load_before: &str,
    load_after: &str,
) -> Section {
    let mut s = String::new();
    let mut errors = Vec::new();
    let _ = writeln!(s, "## 2. Kill-to-event latency\n");
    s.push_str(&run_header(ctx, "latency"));
    let blocks = samples.iter().map(|x| x.block).max().map_or(0, |b| b + 1);
    let _ = writeln!(
        s,
        "`memtrace watch --output json` (defaults: charge accounting on) while `memtrace-alloc grow` is OOM-killed \
         {} times, one kill at a time, in {CGROUPS} memtrace-bench cgroups of 16 MiB in rotation. Each of {blocks} \
         blocks runs four conditions in turn: idle; under `stress-ng {}` (another memtrace-bench cgroup, 1 GiB); \
         and both again with the daemon started under `chrt -f 50` (SCHED_FIFO), which shows how much of the delay \
         is waiting for a CPU rather than memtrace's own work. A fresh daemon for each scheduling class in each \
         block. Load before {load_before}, after {load_after}. Foreign kills seen (other users' tests) and not \
         counted: {foreign}. Over all daemons: kernel_seen={} delivered={} dropped_ringbuf_full={}.\n",
        samples.len(),
        STRESS[..4].join(" "),
        totals[0],
        totals[1],
        totals[2],
    );
    let _ = writeln!(
        s,
        "- **emit delay**: `memtrace.emit_delay_us`, kernel hook → the daemon hands the event to its sinks.\n\
         - **stdout read**: the benchmark reading the JSON line from memtrace's stdout (CLOCK_BOOTTIME) − hook.\n\
         - **kmsg stamp**: the `Killed process <pid>` record's own timestamp − hook. The record carries µs of the \
         printk clock (`local_clock()`), the hook CLOCK_BOOTTIME: hook − (BOOTTIME − MONOTONIC = {} µs) gives \
         CLOCK_MONOTONIC, + (printk − MONOTONIC = {} µs, measured with marker lines written to /dev/kmsg between two \
         clock readings, ± {} µs; it moved {} µs between the start and the end of the run) gives the printk clock.\n\
         - **kmsg read**: a /dev/kmsg reader (as cAdvisor and the kmsg exporters are) getting that line − hook, both \
         CLOCK_BOOTTIME: no conversion.\n",
        clock.boot_minus_mono / 1000,
        clock.printk_minus_mono / 1000,
        clock.err / 1000,
        clock.drift / 1000,
    );
    let _ = writeln!(
        s,
        "| condition | measure | kills | found | p50 µs | p99 µs | max µs |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
    let mut idle_p99 = f64::NAN;
    // (emit delay, kmsg stamp, kmsg read) per condition, for the summary.
    let mut dists: BTreeMap<Phase, [Dist; 3]> = BTreeMap::new();
    for phase in Phase::ALL {
        let of: Vec<&Sample> = samples.iter().filter(|x| x.phase == phase).collect();
        let ev = |get: &dyn Fn(&Kill) -> f64| -> Vec<f64> {
            of.iter().filter_map(|x| x.event.as_ref()).map(get).collect()
        };
        let emit = ev(&|k| k.emit_delay_us as f64);
        let read = ev(&|k| (k.read_boot_ns as f64 - k.ktime_boot_ns as f64) / 1000.0);
        let both: Vec<(&Kill, &kmsg::Record)> = of
            .iter()
            .filter_map(|x| Some((x.event.as_ref()?, x.kmsg.as_ref()?)))
            .collect();
        let stamp: Vec<f64> = both
            .iter()
            .map(|(k, r)| clock.kmsg_after_hook_us(r, k.ktime_boot_ns))
            .collect();
        let kread: Vec<f64> = both
            .iter()
            .map(|(k, r)| (r.read_boot_ns as f64 - k.ktime_boot_ns as f64) / 1000.0)
            .collect();
        let kmsg_found = of.iter().filter(|x| x.kmsg.is_some()).count();
        for (name, xs, found) in [
            ("emit delay", &emit, emit.len()),
            ("stdout read", &read, read.len()),
            ("kmsg stamp", &stamp, kmsg_found),
            ("kmsg read", &kread, kmsg_found),
        ] {
            let d = Dist::of(xs);
            let _ = writeln!(
                s,
                "| {} | {name} | {} | {found} | {} | {} | {} |",
                phase.name(),
                of.len(),
                f(d.p50, 0),
                f(d.p99, 0),
                f(d.max, 0)
            );
        }
        if phase == Phase::Idle {
            idle_p99 = Dist::of(&emit).p99;
        }
        dists.insert(phase, [Dist::of(&emit), Dist::of(&stamp), Dist::of(&kread)]);
        let missing = of.len() - emit.len();
        if missing > 0 {
            errors.push(format!(
                "latency: {missing} of {} kills ({}) had no memtrace event",
                of.len(),
                phase.name()
            ));
        }
    }
    if not_oom > 0 {
        errors.push(format!("latency: {not_oom} allocators ended without an OOM kill"));
    }
    if !ctx.smoke {
        let _ = writeln!(
            s,
            "\nTarget: emit delay p99 ≤ 5 ms idle → {} (p99 {} µs).\n",
            pass(idle_p99 <= 5000.0),
            f(idle_p99, 0)
        );
    }
    // Per block.
    let _ = writeln!(s, "\nEmit delay per block (µs; the median over blocks last):\n");
    let _ = writeln!(s, "| block | condition | load | kills | p50 | p99 | max |");
    let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|");
    let mut per: BTreeMap<Phase, Vec<Dist>> = BTreeMap::new();
    for b in 0..blocks {
        for phase in Phase::ALL {
            let of: Vec<&Sample> = samples
                .iter()
                .filter(|x| x.block == b && x.phase == phase)
                .collect();
            let emit: Vec<f64> = of
                .iter()
                .filter_map(|x| x.event.as_ref())
                .map(|k| k.emit_delay_us as f64)
                .collect();
            let d = Dist::of(&emit);
            per.entry(phase).or_default().push(d);
            let load = of.first().map_or(f64::NAN, |x| x.load1);
            let _ = writeln!(
                s,
                "| {b} | {} | {load:.2} | {} | {} | {} | {} |",
                phase.name(),
                of.len(),
                f(d.p50, 0),
                f(d.p99, 0),
                f(d.max, 0)
            );
        }
    }
    for (phase, ds) in &per {
        let m = |g: fn(&Dist) -> f64| median(&ds.iter().map(g).collect::<Vec<_>>());
        let _ = writeln!(
            s,
            "| median | {} | | | {} | {} | {} |",
            phase.name(),
            f(m(|d| d.p50), 0),
            f(m(|d| d.p99), 0),
            f(m(|d| d.max), 0)
        );
    }
    let _ = writeln!(s);
    let ms = |x: f64| f(x / 1000.0, 1);
    let d = |p: Phase, i: usize| dists.get(&p).map_or(Dist::of(&[]), |d| d[i]);
    let summary = format!(
        "**Kill-to-event latency** ({} kills): emit delay idle p50 / p99 / max {} / {} / {} ms (target p99 ≤ 5 ms:{}); \
         under stress-ng {} / {} / {} ms; daemon under SCHED_FIFO, idle {} / {} / {} ms. The kernel's `Killed \
         process` line is stamped {} µs (p50) after the hook; a /dev/kmsg reader gets it after {} ms (p50, idle).",
        samples.len(),
        ms(d(Phase::Idle, 0).p50),
        ms(d(Phase::Idle, 0).p99),
        ms(d(Phase::Idle, 0).max),
        if ctx.smoke {
            String::new()
        } else {
            format!(" {}", pass(idle_p99 <= 5000.0))
        },
        ms(d(Phase::Loaded, 0).p50),
        ms(d(Phase::Loaded, 0).p99),
        ms(d(Phase::Loaded, 0).max),
        ms(d(Phase::RtIdle, 0).p50),
        ms(d(Phase::RtIdle, 0).p99),
        ms(d(Phase::RtIdle, 0).max),
        f(d(Phase::Idle, 1).p50, 0),
        ms(d(Phase::Idle, 2).p50),
    );
    Section {
        key: "latency",
        body: s,
        summary,
        errors,
    }
}
