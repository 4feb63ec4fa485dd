//! Benchmark 4, footprint: the daemon's RSS (VmRSS) and CPU (utime + stime) idle, without charge
//! accounting, with the default (sampled page faults) and with exact charge accounting (three
//! daemons side by side, over the same minute), then during a storm.

use std::{fmt::Write as _, time::Duration, time::Instant};

use super::{
    Ctx, Section,
    daemon::Watch,
    run_header,
    stats::{f, max, median, pass},
    storm::{self, Spec},
    sys,
};

/// The daemons, side by side.
const DAEMONS: [(&str, &[&str]); 3] = [
    ("`memtrace watch --no-charges`", &["--no-charges"]),
    ("`memtrace watch` (default: sampled page faults, stacks)", &[]),
    (
        "`memtrace watch --exact-charges` (every charge, stacks)",
        &["--exact-charges"],
    ),
];
const N: usize = DAEMONS.len();

/// One daemon over one window.
#[derive(Clone, Copy, Default)]
struct Window {
    cpu_pct: f64,
    rss_start_kb: f64,
    rss_end_kb: f64,
    /// RssAnon and RssFile at the end (file: mapped files, e.g. ELF files read for symbols).
    anon_end_kb: f64,
    file_end_kb: f64,
    rss_max_kb: f64,
}

struct Round {
    idle: [Window; N],
    storm: [Window; N],
    storm_kills: u64,
    hwm_kb: [f64; N],
    load_idle: String,
    load_storm: String,
}

/// Measures `pids` over a window during which `during` runs (with a `tick` every 100 ms).
fn measure(pids: [u32; N], during: impl FnOnce(&mut dyn FnMut())) -> [Window; N] {
    let t0 = Instant::now();
    let c0 = pids.map(|p| sys::cpu_ticks(p).unwrap_or(0));
    let rss0 = pids.map(|p| sys::status_kb(p, "VmRSS").unwrap_or(0));
    let mut rss_max = [0u64; N];
    let mut sample = || {
        for (i, p) in pids.iter().enumerate() {
            rss_max[i] = rss_max[i].max(sys::status_kb(*p, "VmRSS").unwrap_or(0));
        }
    };
    sample();
    during(&mut sample);
    sample();
    let c1 = pids.map(|p| sys::cpu_ticks(p).unwrap_or(0));
    let secs = t0.elapsed().as_secs_f64();
    let hz = sys::clock_ticks_per_s();
    let mut out = [Window::default(); N];
    for i in 0..N {
        out[i] = Window {
            cpu_pct: (c1[i] - c0[i]) as f64 / hz / secs * 100.0,
            rss_start_kb: rss0[i] as f64,
            rss_end_kb: sys::status_kb(pids[i], "VmRSS").unwrap_or(0) as f64,
            anon_end_kb: sys::status_kb(pids[i], "RssAnon").unwrap_or(0) as f64,
            file_end_kb: sys::status_kb(pids[i], "RssFile").unwrap_or(0) as f64,
            rss_max_kb: rss_max[i] as f64,
        };
    }
    out
}

pub fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let idle = Duration::from_secs(if ctx.smoke { 5 } else { 60 });
    let spec = Spec::for_ctx(ctx, Duration::from_secs(15));
    let load_before = sys::loadavg();
    let mut rounds = Vec::new();
    for r in 0..ctx.rounds {
        let daemons = DAEMONS
            .iter()
            .map(|(_, args)| Watch::start(&ctx.memtrace, args))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let pids: [u32; N] = std::array::from_fn(|i| daemons[i].pid());
        // Start-up work (BTF parsing, first map reads) is not idle.
        std::thread::sleep(Duration::from_secs(if ctx.smoke { 1 } else { 5 }));
        let idle_w = measure(pids, |tick| {
            let end = Instant::now() + idle;
            while Instant::now() < end {
                std::thread::sleep(Duration::from_secs(1));
                tick();
            }
        });
        let load_idle = sys::loadavg();
        let mut outcome = None;
        let mut err = None;
        let storm_w = measure(pids, |tick| match storm::storm(ctx, spec, tick) {
            Ok(o) => outcome = Some(o),
            Err(e) => err = Some(e),
        });
        if let Some(e) = err {
            return Err(e);
        }
        let outcome = outcome.expect("storm outcome");
        let load_storm = sys::loadavg();
        let hwm_kb = pids.map(|p| sys::status_kb(p, "VmHWM").unwrap_or(0) as f64);
        for d in &daemons {
            d.wait_quiet(Duration::from_secs(1), Duration::from_secs(30));
        }
        for d in daemons {
            d.stop()?;
        }
        let storm_kills = outcome.kernel_kills();
        drop(outcome);
        let show = |w: &[Window; N], rss: fn(&Window) -> f64| {
            w.iter()
                .map(|x| format!("{:.2}% {:.1} MiB", x.cpu_pct, rss(x) / 1024.0))
                .collect::<Vec<_>>()
                .join(" | ")
        };
        eprintln!(
            "bench: footprint round {r}: idle {}; storm ({} kills) {}",
            show(&idle_w, |x| x.rss_end_kb),
            storm_kills,
            show(&storm_w, |x| x.rss_max_kb),
        );
        rounds.push(Round {
            idle: idle_w,
            storm: storm_w,
            storm_kills,
            hwm_kb,
            load_idle,
            load_storm,
        });
    }
    let load_after = sys::loadavg();
    Ok(report(ctx, &rounds, idle, &spec, &load_before, &load_after))
}

fn report(
    ctx: &Ctx,
    rounds: &[Round],
    idle: Duration,
    spec: &Spec,
    load_before: &str,
    load_after: &str,
) -> Section {
    let mut s = String::new();
    let _ = writeln!(s, "## 4. Footprint: daemon RSS and CPU\n");
    s.push_str(&run_header(ctx, "footprint"));
    let _ = writeln!(
        s,
        "Per round, three daemons side by side (`--output json`, stdout read by the benchmark): `--no-charges`, \
         the default (one page fault in 256 per CPU sampled: counts, usage, a stack; symbolized each second) and \
         `--exact-charges` (every charge counted, one stack per 64 charges). After 5 s of start-up, an idle window of {} s, then a storm window: {}. \
         CPU = Δ(utime + stime) from /proc/<pid>/stat over the window's wall time (one CPU = 100 %); RSS = VmRSS \
         from /proc/<pid>/status (end of window, and the maximum of samples every 1 s idle / 100 ms in the storm); \
         VmHWM after the storm. \"Idle\" means no OOM kills: the machine itself is busy (load below), and the \
         charge-accounting daemons read the kernel's per-cgroup counters each second (and the memory files of \
         cgroups near their limit). {} rounds; load \
         before {load_before}, after {load_after}.\n",
        idle.as_secs(),
        spec.describe(),
        rounds.len()
    );
    let _ = writeln!(
        s,
        "| daemon | window | CPU % (median) | RSS MiB at end (median) | of which anon / file | RSS growth over the \
         window MiB (median) | RSS MiB (max of samples, all rounds) | VmHWM MiB after the storm (median) | runs: CPU % |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---|");
    let mb = |kb: f64| kb / 1024.0;
    for (i, (name, _)) in DAEMONS.iter().enumerate() {
        for window in ["idle", "storm"] {
            let ws: Vec<Window> = rounds
                .iter()
                .map(|r| if window == "idle" { r.idle[i] } else { r.storm[i] })
                .collect();
            let col = |g: fn(&Window) -> f64| ws.iter().map(g).collect::<Vec<_>>();
            let _ = writeln!(
                s,
                "| {name} | {window} | {} | {} | {} / {} | {} | {} | {} | {} |",
                f(median(&col(|w| w.cpu_pct)), 3),
                f(mb(median(&col(|w| w.rss_end_kb))), 1),
                f(mb(median(&col(|w| w.anon_end_kb))), 1),
                f(mb(median(&col(|w| w.file_end_kb))), 1),
                f(mb(median(&col(|w| w.rss_end_kb - w.rss_start_kb))), 1),
                f(mb(max(&col(|w| w.rss_max_kb))), 1),
                if window == "storm" {
                    f(
                        mb(median(&rounds.iter().map(|r| r.hwm_kb[i]).collect::<Vec<_>>())),
                        1,
                    )
                } else {
                    String::new()
                },
                ws.iter()
                    .map(|w| format!("{:.3}", w.cpu_pct))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    let loads = |g: fn(&Round) -> &str| {
        rounds
            .iter()
            .map(|r| g(r).split(' ').next().unwrap_or("?").to_owned())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        s,
        "\nKills per storm window (median): {}. 1-min load at the end of each idle window: {}; of each storm: {}.\n",
        f(
            median(&rounds.iter().map(|r| r.storm_kills as f64).collect::<Vec<_>>()),
            0
        ),
        loads(|r| &r.load_idle),
        loads(|r| &r.load_storm),
    );
    if !ctx.smoke {
        // Targets, for each daemon: idle RSS <= 30 MB (30 * 10^6 bytes), idle CPU <= 0.5 %.
        for (i, (name, _)) in DAEMONS.iter().enumerate() {
            let rss = max(&rounds.iter().map(|r| r.idle[i].rss_max_kb).collect::<Vec<_>>()) * 1024.0;
            let cpu = median(&rounds.iter().map(|r| r.idle[i].cpu_pct).collect::<Vec<_>>());
            let _ = writeln!(
                s,
                "Target, {name}: idle RSS ≤ 30 MB → {} (max {:.1} MB = {:.1} MiB); idle CPU ≤ 0.5 % → {} (median {:.3} %).\n",
                pass(rss <= 30e6),
                rss / 1e6,
                rss / (1 << 20) as f64,
                pass(cpu <= 0.5),
                cpu
            );
        }
    }
    let mut parts = Vec::new();
    for (i, (name, _)) in DAEMONS.iter().enumerate() {
        let rss = max(&rounds.iter().map(|r| r.idle[i].rss_max_kb).collect::<Vec<_>>()) * 1024.0;
        let cpu = median(&rounds.iter().map(|r| r.idle[i].cpu_pct).collect::<Vec<_>>());
        let storm_cpu = median(&rounds.iter().map(|r| r.storm[i].cpu_pct).collect::<Vec<_>>());
        let verdict = if ctx.smoke {
            String::new()
        } else {
            format!(" ({} / {})", pass(rss <= 30e6), pass(cpu <= 0.5))
        };
        parts.push(format!(
            "{name}: {:.1} MB, {} % CPU{verdict}, storm {} % CPU",
            rss / 1e6,
            f(cpu, 2),
            f(storm_cpu, 2)
        ));
    }
    let summary = format!(
        "**Footprint** idle, max RSS and median CPU (targets ≤ 30 MB, ≤ 0.5 %): {}.",
        parts.join("; ")
    );
    Section {
        key: "footprint",
        body: s,
        summary,
        errors: vec![],
    }
}
