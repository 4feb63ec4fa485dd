//! Benchmark 6, scale: the daemon's CPU and RSS with many busy cgroups (50, 500 and 2,000),
//! each charging a little every second, the default (sampled page faults) against the opt-in
//! exact mode, interleaved; and how long `memtrace top --once` takes among them.

use std::{fmt::Write as _, os::unix::process::ExitStatusExt as _, process::Stdio, time::Duration};

use anyhow::Context as _;

use super::{
    Ctx, Section,
    daemon::Watch,
    run_header,
    stats::{f, median, pass},
    sys::{self, BenchCgroup, Reaped},
};

/// The daemons, side by side.
const DAEMONS: [(&str, &[&str]); 2] = [
    ("`memtrace watch` (default)", &[]),
    ("`memtrace watch --exact-charges`", &["--exact-charges"]),
];
/// Each cgroup's process: 256 KiB mapped, touched and unmapped, then a pause of a second.
const CHARGE: [&str; 3] = ["256k", "0", "1000"];
/// The top --once interval.
const TOP_INTERVAL_MS: u64 = 1000;

struct Point {
    cgroups: usize,
    /// Per daemon: CPU % and RSS MiB per round.
    cpu: [Vec<f64>; 2],
    rss: [Vec<f64>; 2],
    /// `top --once`: wall ms beyond the interval, CPU ms (user + system), rows printed.
    top_extra_ms: Vec<f64>,
    top_cpu_ms: Vec<f64>,
    top_rows: Vec<usize>,
    /// µs to read one cgroup's memory.stat (what a poll of every busy cgroup pays per cgroup).
    stat_read_us: f64,
    load: String,
}

/// Reads every cgroup's memory.stat once, three times; the median µs per cgroup.
fn stat_read_us(cgs: &[BenchCgroup]) -> f64 {
    let passes: Vec<f64> = (0..3)
        .map(|_| {
            let t = std::time::Instant::now();
            for cg in cgs {
                let _ = std::fs::read_to_string(cg.dir.join("memory.stat"));
            }
            t.elapsed().as_secs_f64() * 1e6 / cgs.len().max(1) as f64
        })
        .collect();
    median(&passes)
}

pub fn run(ctx: &Ctx) -> anyhow::Result<Section> {
    let counts: &[usize] = if ctx.smoke { &[20] } else { &[50, 500, 2000] };
    let rounds = if ctx.smoke { 1 } else { ctx.rounds.min(3) };
    let window = Duration::from_secs(if ctx.smoke { 4 } else { 15 });
    let load_before = sys::loadavg();
    let mut points = Vec::new();
    for &n in counts {
        let cgs = (0..n)
            .map(|_| BenchCgroup::new(&ctx.hierarchy, "scale", 64 << 20))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let _procs = cgs
            .iter()
            .map(|cg| {
                cg.command(&ctx.faults, &CHARGE)
                    .spawn()
                    .map(Reaped)
                    .context("starting a charging process")
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        std::thread::sleep(Duration::from_secs(2));
        let mut p = Point {
            cgroups: n,
            cpu: [vec![], vec![]],
            rss: [vec![], vec![]],
            top_extra_ms: vec![],
            top_cpu_ms: vec![],
            top_rows: vec![],
            stat_read_us: stat_read_us(&cgs),
            load: sys::loadavg(),
        };
        for round in 0..rounds {
            for (i, (_, args)) in DAEMONS.iter().enumerate() {
                let w = Watch::start(&ctx.memtrace, args)?;
                // Start-up (BTF, load, the first polls) is not the steady state.
                std::thread::sleep(Duration::from_secs(5));
                let c0 = sys::cpu_ticks(w.pid()).unwrap_or(0);
                let t0 = std::time::Instant::now();
                std::thread::sleep(window);
                let c1 = sys::cpu_ticks(w.pid()).unwrap_or(0);
                let secs = t0.elapsed().as_secs_f64();
                let rss = sys::status_kb(w.pid(), "VmRSS").unwrap_or(0) as f64 / 1024.0;
                w.stop()?;
                let cpu = 100.0 * (c1.saturating_sub(c0)) as f64 / sys::clock_ticks_per_s() / secs;
                eprintln!("bench: scale {n} cgroups round {round} daemon {i}: {cpu:.3} % CPU, {rss:.1} MiB");
                p.cpu[i].push(cpu);
                p.rss[i].push(rss);
            }
            let (extra, cpu, rows) = top_once(ctx)?;
            eprintln!(
                "bench: scale {n} cgroups round {round} top --once: +{extra:.0} ms, {cpu:.0} ms CPU, {rows} rows"
            );
            p.top_extra_ms.push(extra);
            p.top_cpu_ms.push(cpu);
            p.top_rows.push(rows);
        }
        points.push(p);
        // Dropping the processes and the cgroups kills and removes them.
    }
    Ok(report(
        ctx,
        &points,
        rounds,
        window,
        &load_before,
        &sys::loadavg(),
    ))
}

/// `memtrace top --once --output json`: wall ms beyond the interval, its CPU ms, rows.
fn top_once(ctx: &Ctx) -> anyhow::Result<(f64, f64, usize)> {
    let t0 = std::time::Instant::now();
    let child = std::process::Command::new(&ctx.memtrace)
        .args(["top", "--once", "--output", "json", "--interval"])
        .arg(format!("{TOP_INTERVAL_MS}ms"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting memtrace top --once")?;
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.context("stdout")?;
    let mut out = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut out)?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for the child spawned above (not reaped elsewhere: `child` was consumed).
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    anyhow::ensure!(r == pid, "wait4: {}", std::io::Error::last_os_error());
    let wall = t0.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(
        std::process::ExitStatus::from_raw(status).success(),
        "memtrace top --once failed"
    );
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1000.0 + t.tv_usec as f64 / 1000.0;
    let rows = serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0);
    Ok((
        wall - TOP_INTERVAL_MS as f64,
        ms(ru.ru_utime) + ms(ru.ru_stime),
        rows,
    ))
}

fn report(
    ctx: &Ctx,
    points: &[Point],
    rounds: usize,
    window: Duration,
    load_before: &str,
    load_after: &str,
) -> Section {
    let mut s = String::new();
    let _ = writeln!(s, "## 6. Scale: cost per busy cgroup\n");
    s.push_str(&run_header(ctx, "scale"));
    let _ = writeln!(
        s,
        "For each count, that many memtrace-bench cgroups (64 MiB limit), each with one process that maps 256 KiB, \
         touches every page and unmaps it once a second (`target/bench/faults {} {} {}`): every cgroup charges every \
         second. Then, {rounds} rounds, interleaved: each daemon started on its own, 5 s of start-up, then CPU \
         (utime + stime from /proc/<pid>/stat over {} s; one CPU = 100 %) and VmRSS at the end; and `memtrace top \
         --once --interval {TOP_INTERVAL_MS}ms --output json`: wall time beyond the interval, and its CPU time (wait4 \
         rusage). Load before {load_before}, after {load_after}.\n",
        CHARGE[0],
        CHARGE[1],
        CHARGE[2],
        window.as_secs()
    );
    let _ = writeln!(
        s,
        "| busy cgroups | load at start | memory.stat read, µs per cgroup | daemon | CPU % (median) | runs | RSS MiB (median) |"
    );
    let _ = writeln!(s, "|---:|---|---:|---|---:|---|---:|");
    for p in points {
        for (i, (label, _)) in DAEMONS.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {label} | {} | {} | {} |",
                p.cgroups,
                p.load,
                f(p.stat_read_us, 1),
                f(median(&p.cpu[i]), 3),
                p.cpu[i]
                    .iter()
                    .map(|c| format!("{c:.3}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                f(median(&p.rss[i]), 1),
            );
        }
    }
    let _ = writeln!(
        s,
        "\n| busy cgroups | `top --once`: ms beyond the interval (median) | CPU ms (median) | runs (ms beyond) | rows |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---|---|");
    for p in points {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            p.cgroups,
            f(median(&p.top_extra_ms), 0),
            f(median(&p.top_cpu_ms), 0),
            p.top_extra_ms
                .iter()
                .map(|c| format!("{c:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            p.top_rows
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        );
    }
    let at500 = points.iter().find(|p| p.cgroups == 500);
    let cpu500 = at500.map_or(f64::NAN, |p| median(&p.cpu[0]));
    let rss500 = at500.map_or(f64::NAN, |p| median(&p.rss[0]));
    let top500 = at500.map_or(f64::NAN, |p| median(&p.top_extra_ms));
    let mut summary = format!(
        "**Scale** (busy cgroups → default daemon CPU %): {}.",
        points
            .iter()
            .map(|p| format!("{} → {} %", p.cgroups, f(median(&p.cpu[0]), 3)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !ctx.smoke {
        let _ = writeln!(
            s,
            "\nTargets with 500 busy cgroups: default daemon CPU ≤ 0.5 % → {} ({} %); RSS ≤ 30 MB → {} ({} MiB); \
             `top --once` ≤ 200 ms beyond the interval → {} ({} ms).\n",
            pass(cpu500 <= 0.5),
            f(cpu500, 3),
            pass(rss500 * 1.048_576 <= 30.0),
            f(rss500, 1),
            pass(top500 <= 200.0),
            f(top500, 0),
        );
        let _ = write!(
            summary,
            " With 500: CPU {} % (target ≤ 0.5 %: {}), `top --once` +{} ms (target ≤ 200 ms: {}).",
            f(cpu500, 3),
            pass(cpu500 <= 0.5),
            f(top500, 0),
            pass(top500 <= 200.0)
        );
    }
    let errors = points
        .iter()
        .filter(|p| p.top_rows.contains(&0))
        .map(|p| format!("scale: top --once showed no rows with {} busy cgroups", p.cgroups))
        .collect();
    Section {
        key: "scale",
        body: s,
        summary,
        errors,
    }
}
