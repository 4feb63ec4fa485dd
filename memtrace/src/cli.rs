//! Command-line interface.

use clap::{Args, Parser, Subcommand};

use crate::{kernel::hooks::ForcedVariant, output::Format};

#[derive(Debug, Parser)]
#[command(
    name = "memtrace",
    version,
    about = "eBPF OOM-kill tracer: every victim, its cgroup and why, in milliseconds"
)]
pub struct Cli {
    /// More logging on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start: the size of the watch arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to the OOM killer and print every kill as it happens (the daemon).
    Watch(WatchArgs),
    /// Show which variant of each kernel hook this kernel supports, and why not.
    Probes(ProbesArgs),
    /// Cgroups sorted by charge rate: a live view on a terminal, `--once` for scripts.
    ///
    /// On a terminal (and without `--once`, `--output json` or `--plain`) this is a live view:
    /// the cgroups by charge rate, refreshed every `--interval`; arrow keys or j/k select,
    /// Enter (or s) shows the selected cgroup's top charging stacks (its descendants
    /// included), Esc or Backspace goes back, q or Ctrl-C quits. When stdout is not a terminal,
    /// or with `--plain`, the text table is printed every interval instead (the screen is
    /// cleared between samples only on a terminal). `--output json` prints one JSON array per
    /// interval, `--once` one sample and exits.
    Top(TopArgs),
    /// Top charging stacks of a cgroup over a time window (table, JSON or folded).
    Hotspots(HotspotsArgs),
    /// Write the man pages (memtrace.1, memtrace-COMMAND.1) into DIR, for packagers.
    #[command(hide = true)]
    Manpages {
        /// Directory to write into (created if missing).
        dir: std::path::PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// TOML configuration file (see memtrace.example.toml); flags override its values.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Output format on stdout [default: text]. Enables stdout if the config disabled it.
    #[arg(short, long, value_enum)]
    pub output: Option<Format>,
    /// Use only this variant of a hook, e.g. `oom_victim=tracepoint`, or `HOOK=none` to leave an
    /// optional hook out (repeatable).
    #[arg(long = "variant", value_name = "HOOK=KIND")]
    pub variants: Vec<ForcedVariant>,
    /// Report every SIGKILL sent from userspace as `memtrace.userspace_kill` (killer `other`),
    /// not only those of known memory killers (earlyoom, systemd-oomd, nohang, oomd).
    #[arg(long)]
    pub all_userspace_kills: bool,
    /// Size of the OOM event ring buffer in bytes (power-of-two multiple of the page size).
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_size)]
    pub oom_ring_bytes: Option<u32>,
    /// Working-set alert threshold (fraction of the limit) the verdict checks against.
    #[arg(long, value_name = "RATIO", value_parser = parse_ratio)]
    pub ws_alert_ratio: Option<f64>,
    /// Where OCI bundles' config.json live, `{id}` standing for the container id and
    /// `{namespace}` for a containerd namespace (repeatable; replaces the containerd / CRI-O /
    /// docker defaults).
    #[arg(long = "oci-bundle", value_name = "PATTERN")]
    pub oci_bundles: Vec<std::path::PathBuf>,
    /// dockerd's data root, where plain Docker keeps containers' names and images (repeatable;
    /// default /var/lib/docker).
    #[arg(long = "docker-root", value_name = "DIR")]
    pub docker_roots: Vec<std::path::PathBuf>,
    /// Serve Prometheus metrics on http://ADDR/metrics (config: metrics.listen;
    /// default when enabled there: 127.0.0.1:9747).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// POST each event as JSON to this URL (config: [sinks.webhook]).
    #[arg(long, value_name = "URL")]
    pub webhook_url: Option<String>,
    /// Send each kill as an alert to this Alertmanager (config: [sinks.alertmanager]).
    #[arg(long, value_name = "URL")]
    pub alertmanager_url: Option<String>,
    /// Also write each event to the systemd journal (config: [sinks.journald]).
    #[arg(long)]
    pub journald: bool,
    /// The node's name in events and alerts (`host.name`, `node`) [default: the hostname].
    #[arg(long, value_name = "NAME", env = "MEMTRACE_HOST_NAME")]
    pub host_name: Option<String>,
    /// No charge accounting: OOM hooks only (no pre-OOM warnings, no stacks with kills).
    #[arg(long)]
    pub no_charges: bool,
    /// Sample one charging stack every N charged pages per CPU (0: no stacks; on the memcg
    /// event hooks, N charge events); in the default sampled mode, 0 turns stacks off and any
    /// other value keeps one per sample.
    #[arg(long, value_name = "N")]
    pub stack_sample_every: Option<u32>,
    /// Count every memcg charge with a program on the charge hook (exact rates, kernel stacks
    /// of the charge path) instead of sampling page faults; costs about 15 % per page fault
    /// here (BENCHMARKS.md §1).
    #[arg(long)]
    pub exact_charges: bool,
    /// Sampled mode: one sample (counts, usage, a stack) every N page faults per CPU.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub fault_sample_period: Option<u32>,
    /// How far back a kill's top charging stacks look, e.g. 10s.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub kill_context_window: Option<std::time::Duration>,
    /// How long a kill may wait (within --enrich-budget) for the stacks sampled since the
    /// charge worker's last poll, e.g. 50ms; 0 (default): it does not wait, and the stacks
    /// of a process killed within a second of its start follow its kill as a
    /// memtrace.oom_kill_stacks event [config: charges.kill_stacks_wait].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub kill_stacks_wait: Option<std::time::Duration>,
    /// The longest a kill waits for its file reads (cgroup files, container names, survivors)
    /// before it is sent without them, marked late, and for the charge stacks sampled since
    /// the last poll, e.g. 50ms [config: watch.enrich_budget].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub enrich_budget: Option<std::time::Duration>,
    /// Warn when a cgroup's working set reaches this fraction of its limit.
    #[arg(long, value_name = "RATIO", value_parser = parse_ratio)]
    pub warn_ratio: Option<f64>,
    /// At most one pre-OOM warning per cgroup this often.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub warn_every: Option<std::time::Duration>,
    /// Keep a flame graph (SVG) of each kill's charging stacks in DIR, its path in the event
    /// (`memtrace.flamegraph`) [config: charges.kill_flamegraph_dir].
    #[arg(long, value_name = "DIR")]
    pub kill_flamegraphs: Option<std::path::PathBuf>,
    /// Exit after this many kills have been reported.
    #[arg(long, value_name = "N")]
    pub exit_after: Option<u64>,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Print one sample and exit (no stack sampling).
    #[arg(long)]
    pub once: bool,
    /// Sampling interval, e.g. 1s; the live view refreshes this often.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: std::time::Duration,
    /// text: the live view on a terminal, else a table every interval; json: one JSON array
    /// per interval.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    /// Print the text table every interval even on a terminal, instead of the live view.
    #[arg(long, conflicts_with = "once")]
    pub plain: bool,
    /// Live view: sample one charging stack every N charged pages per CPU (N charge events
    /// on the memcg event hooks), for the drill-down into a cgroup's stacks.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub sample_every: u32,
    /// Live view: how far back a cgroup's top charging stacks look, e.g. 10s.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub window: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct HotspotsArgs {
    /// Cgroup path relative to the memory hierarchy root (descendants included); default: all.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// How long to sample, e.g. 10s, 1m.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: std::time::Duration,
    /// Sample one stack every N charged pages per CPU (N charge events on the memcg event
    /// hooks, which do not give the pages).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub sample_every: u32,
    /// How many stacks to show.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Folded stacks (`comm;frame;frame count`) for flamegraph.pl / inferno.
    #[arg(long)]
    pub folded: bool,
    /// Also write a flame graph (SVG) of the stacks to FILE.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<std::path::PathBuf>,
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(Debug, Args)]
pub struct ProbesArgs {
    /// Output format on stdout.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|e| format!("{s:?} is not a number: {e}"))?;
    if !(r > 0.0 && r <= 1.0) {
        return Err(format!("{r} must be in (0, 1]"));
    }
    Ok(r)
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{s:?} is not a byte count: {e}"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err(format!("{n} must be a power of two of at least 4096"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_flags_are_clear_errors() {
        let e = Cli::try_parse_from(["memtrace", "watch", "--oom-ring-bytes", "1000"])
            .expect_err("not a power of two");
        assert!(e.to_string().contains("power of two"));
        let e = Cli::try_parse_from(["memtrace", "watch", "--variant", "cgroup_mkdir=kprobe"])
            .expect_err("no such variant");
        assert!(e.to_string().contains("no \"kprobe\" variant"));
        let e = Cli::try_parse_from(["memtrace", "watch", "--output", "xml"]).expect_err("bad format");
        assert!(e.to_string().contains("xml"));
    }
}
