//! What the daemon says about its losses while it runs, and its exit summary: one line per
//! sink, then produced == delivered + dropped, checkable by tests.

use super::route::Delivery;
use crate::{
    kernel::tracer::{KernelCounters, Tracer},
    output::metrics::Metrics,
    sinks::SinkReport,
};

/// Loudly reports records the kernel could not queue; returns the total reported so far.
pub fn report_losses(tracer: &Tracer, reported: u64, metrics: &Metrics) -> u64 {
    let counters = tracer.counters();
    if let Ok(c) = &counters {
        metrics.ringbuf_full_total(c.oom_ringbuf_full);
    }
    match counters {
        Ok(c) if c.oom_ringbuf_full > reported => {
            log::error!(
                "LOST {} OOM events: the OOM ring buffer was full ({} lost in total); raise --oom-ring-bytes",
                c.oom_ringbuf_full - reported,
                c.oom_ringbuf_full
            );
            c.oom_ringbuf_full
        }
        Ok(_) => reported,
        Err(e) => {
            log::warn!("reading kernel counters: {e}");
            reported
        }
    }
}

/// One line per sink on stderr at exit.
pub fn sinks(reports: &[SinkReport]) {
    for r in reports {
        eprintln!(
            "memtrace: sink {}: delivered={} failed={} dropped={} unfinished={}",
            r.name, r.delivered, r.failed, r.dropped, r.unfinished
        );
    }
}

/// One line on stderr at exit: produced == delivered + dropped, checkable by tests.
pub fn exit(c: &KernelCounters, d: &Delivery, reconciled: &str) {
    eprintln!(
        "memtrace: exiting: kernel_seen={} delivered={} dropped_ringbuf_full={} decode_errors={} read_errors={} \
         context_seen={} context_dropped={} cgroup_records_dropped={} stack_tasks_dropped={} stacks_collided={} \
         user_kills_seen={} user_kills_reported={} user_kills_dropped={} warnings={} warnings_late={} enrich_late={} \
         stack_updates={} stack_updates_unsent={} reconciled={reconciled}",
        c.oom_seen,
        d.delivered,
        c.oom_ringbuf_full,
        d.decode_errors,
        c.oom_read_errors,
        c.oom_ctx_seen,
        c.oom_ctx_ringbuf_full,
        c.cgroup_ringbuf_full,
        c.stack_tasks_ringbuf_full,
        c.stacks_collided,
        d.user_kills_seen,
        d.user_kills,
        c.user_kill_ringbuf_full,
        d.warnings,
        d.late_warnings,
        d.enrich_late,
        d.stack_updates,
        d.stack_updates_unsent,
    );
}
