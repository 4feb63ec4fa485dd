//! Kernel timestamps (CLOCK_BOOTTIME, from `bpf_ktime_get_boot_ns`) to wall-clock time.

use std::time::{Duration, SystemTime};

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec; CLOCK_BOOTTIME and CLOCK_REALTIME exist on every Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Now, on the clock the eBPF programs stamp records with.
pub fn boot_ns() -> u64 {
    clock_ns(libc::CLOCK_BOOTTIME)
}

/// The wall-clock time of a kernel timestamp: now minus how long ago it was.
pub fn wall_time(ktime_boot_ns: u64) -> SystemTime {
    let ago = boot_ns().saturating_sub(ktime_boot_ns);
    SystemTime::now() - Duration::from_nanos(ago)
}

/// RFC 3339 in UTC with nanoseconds, as log pipelines expect.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_time_is_close_to_now() {
        let t = wall_time(boot_ns());
        let d = SystemTime::now().duration_since(t).unwrap_or_default();
        assert!(d < Duration::from_secs(1));
        assert!(rfc3339(t).ends_with('Z'));
    }
}
