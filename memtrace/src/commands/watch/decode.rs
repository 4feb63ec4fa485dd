//! The decode stage: records out of the kernel's ring buffers, each length-checked into its
//! type (kernel/records.rs, kernel/user_kill.rs). A ring slot is released as soon as its
//! record is decoded, before any I/O; what cannot be decoded is counted and logged.

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFdReadyMutGuard;

use crate::{
    cgroup::CgroupPaths,
    kernel::records::{CgroupCreated, OomRecord},
    kernel::tracer::AsyncRing,
    kernel::user_kill::UserKillSignal,
    output::metrics::Metrics,
};

/// Decodes every record waiting in the OOM ring buffer; undecodable ones are counted in
/// `decode_errors` (and in the metrics) as lost.
pub fn oom_records(
    ring: &mut RingBuf<MapData>,
    decode_errors: &mut u64,
    metrics: &Metrics,
) -> Vec<OomRecord> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        match OomRecord::try_from(&*item) {
            Ok(r) => out.push(r),
            Err(e) => {
                *decode_errors += 1;
                metrics.lost("decode_error", "", 1);
                log::error!("undecodable OOM record ({e}); counted as lost");
            }
        }
    }
    out
}

/// Decodes the userspace SIGKILLs waiting in their ring.
pub fn user_kill_signals(ring: &mut RingBuf<MapData>) -> Vec<UserKillSignal> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        match UserKillSignal::try_from(&*item) {
            Ok(s) => out.push(s),
            // Not in decode_errors: that one balances the OOM ring's produced == delivered.
            Err(e) => log::error!("undecodable userspace kill record ({e}); lost"),
        }
    }
    out
}

/// Records the paths of cgroups created in the memory hierarchy, and returns them (the charge
/// worker's limit sweep learns them too). Read without waiting: the records only matter when
/// a kill needs them, and every kill reads them first.
pub fn learn_cgroups(
    ring: Option<&mut AsyncRing>,
    paths: Option<&mut CgroupPaths>,
    mem_root: Option<u32>,
) -> Vec<(u64, String)> {
    let mut learned = Vec::new();
    let (Some(ring), Some(paths)) = (ring, paths) else {
        return learned;
    };
    while let Some(item) = ring.get_mut().next() {
        match CgroupCreated::try_from(&*item) {
            Ok(c) if Some(c.root) == mem_root => {
                if let Some(path) = c.path {
                    paths.remember(c.id, path.clone());
                    learned.push((c.id, path));
                }
            }
            Ok(_) => {}
            Err(e) => log::warn!("undecodable cgroup record: {e}"),
        }
    }
    learned
}

/// Readiness of an optional ring; never, without one.
pub async fn readable(
    ring: Option<&mut AsyncRing>,
) -> std::io::Result<AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
    match ring {
        Some(r) => r.readable_mut().await,
        None => std::future::pending().await,
    }
}
