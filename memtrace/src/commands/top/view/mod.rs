//! What the live view of `memtrace top` shows, built from data only: the strings of the cgroup
//! table and of a cgroup's stacks, the key bindings, and the drawing onto a ratatui frame.
//! Nothing here touches the terminal or the kernel, so all of it is tested with ratatui's
//! test backend.

use std::time::Duration;

use crate::{charges::accounting::Row, charges::stacks::HotStack, output::human_bytes};

mod app;
mod draw;
#[cfg(test)]
mod tests;

pub use app::{Action, App, Screen, StacksScreen};

/// The cgroup table's columns, as in `memtrace top --once`.
pub const COLUMNS: [&str; 9] = [
    "CGROUP",
    "USAGE",
    "WSET",
    "LIMIT",
    "HEAD%",
    "CHARGES/s",
    "FAULTS/s",
    "STALLS/s",
    "KILLS",
];

/// Widths of the columns after the first (which takes what is left), as in the text output.
const WIDTHS: [u16; 8] = [10, 10, 10, 6, 10, 10, 8, 5];

/// One cgroup's cells, formatted as the text output formats them.
pub fn row_cells(r: &Row) -> [String; 9] {
    let opt = |v: Option<u64>| v.map_or("-".into(), human_bytes);
    [
        r.cgroup.clone(),
        opt(r.usage_bytes),
        opt(r.working_set_bytes),
        r.limit_bytes.map_or("none".into(), human_bytes),
        r.headroom_pct.map_or("-".into(), |h| format!("{h:.0}")),
        format!("{:.0}", r.rate.charge_events_per_s),
        format!("{:.0}", r.rate.faults_per_s),
        format!("{:.1}", r.rate.reclaim_stalls_per_s),
        r.oom_kills.map_or("-".into(), |k| k.to_string()),
    ]
}

/// The stack table's columns.
pub const STACK_COLUMNS: [&str; 6] = [
    "SAMPLES",
    "SHARE",
    "COMM",
    "PID",
    "USER (innermost)",
    "KERNEL (innermost)",
];

/// How many kernel frames the stack detail shows.
pub const KERNEL_FRAMES: usize = 8;

/// One stack's cells; `total` is the samples of all the stacks shown.
pub fn stack_cells(h: &HotStack, total: u64) -> [String; 6] {
    [
        h.count.to_string(),
        format!("{:.1}%", h.count as f64 * 100.0 / total.max(1) as f64),
        h.comm.clone(),
        if h.pids > 1 {
            format!("{}+{}", h.pid, h.pids - 1)
        } else {
            h.pid.to_string()
        },
        h.top_user_frame().to_owned(),
        h.kernel.first().map_or("?", |f| f).to_owned(),
    ]
}

/// The lines under the stack table: who, how much, every user frame innermost first, and
/// the innermost kernel frames.
pub fn stack_detail(h: &HotStack, total: u64, kernel_frames: usize) -> Vec<String> {
    let mut out = vec![
        format!(
            "{} (pid {}): {} samples, {:.1}% of the stacks shown",
            h.comm,
            h.pid,
            h.count,
            h.count as f64 * 100.0 / total.max(1) as f64
        ),
        "user frames, innermost first:".to_owned(),
    ];
    if h.user.is_empty() {
        out.push("  (none: a kernel thread, or no user stack)".to_owned());
    }
    out.extend(h.user.iter().map(|f| format!("  {f}")));
    let shown = h.kernel.len().min(kernel_frames);
    out.push(format!(
        "kernel frames, innermost first ({shown} of {}):",
        h.kernel.len()
    ));
    out.extend(h.kernel.iter().take(shown).map(|f| format!("  {f}")));
    out
}

/// `s` cut to `width` characters, keeping its end (the most specific part of a path).
pub fn fit_left(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let tail: String = s.chars().skip(n - (width - 1)).collect();
    format!("…{tail}")
}

/// What the header line says about the tracer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The charge hook in use, as `kind target`: `tp_btf count_memcg_events`.
    pub hook: String,
    pub interval: Duration,
    pub sample_every: u32,
    /// How far back the stacks look.
    pub window: Duration,
}

pub fn header_line(h: &Header, cgroups: usize) -> String {
    format!(
        "memtrace top | charge hook: {} | every {} | {} cgroup{} | stacks: 1 in {} charges, last {}",
        h.hook,
        humantime::format_duration(h.interval),
        cgroups,
        if cgroups == 1 { "" } else { "s" },
        h.sample_every,
        humantime::format_duration(h.window),
    )
}
