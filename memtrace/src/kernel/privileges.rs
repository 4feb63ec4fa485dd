//! What the process may do: capabilities (from /proc/self/status), tracefs access and kernel
//! lockdown.
//!
//! The minimum, measured on 6.18 as uid 65534 (tests/tests/privileges.rs): CAP_BPF (load
//! programs, create maps), CAP_PERFMON (tracing program types and tracepoint perf events), and
//! CAP_DAC_READ_SEARCH when tracefs is not readable by the user (it is mode 0700, its format
//! and id files 0440, owned by root: uid 0 needs no DAC capability). The cgroup files, the
//! kernel BTF and /proc/<pid>/{cgroup,status} are world-readable. RLIMIT_MEMLOCK matters
//! only before 5.11, which charges BPF maps to it (memcg accounting since): there memtrace needs
//! an unlimited hard limit or CAP_SYS_RESOURCE to lift it (measured on Debian's 5.10 as uid
//! 65534, whose 64 KiB limit failed the first map with EPERM).

use serde::Serialize;

pub const CAP_DAC_OVERRIDE: u32 = 1;
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_RESOURCE: u32 = 24;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

#[derive(Debug, Clone, Serialize)]
pub struct Privileges {
    pub euid: u32,
    pub cap_bpf: bool,
    pub cap_perfmon: bool,
    pub cap_sys_admin: bool,
    /// CAP_DAC_READ_SEARCH or CAP_DAC_OVERRIDE: either lets it read root-only files.
    pub cap_dac_read_search: bool,
    /// Lets memtrace lift RLIMIT_MEMLOCK (see `memlock_limit`).
    pub cap_sys_resource: bool,
    /// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK (kernel/bpf/syscall.c
    /// bpf_charge_memlock): there, its hard limit in bytes when finite. `None`: no limit applies.
    pub memlock_limit: Option<u64>,
    /// perf_event_open refused this process (EACCES) while kernel.perf_event_paranoid is 3 or
    /// more: Debian's and Ubuntu's restriction patch, which on 5.10 lets only CAP_SYS_ADMIN
    /// through (newer versions also CAP_PERFMON). Tracepoints and page-fault sampling need it.
    pub perf_event_open_refused: bool,
    /// Can this process read tracefs's event files? `None`: tracefs is not mounted (memtrace
    /// then mounts it, which needs CAP_SYS_ADMIN).
    pub tracefs_readable: Option<bool>,
    /// `/sys/kernel/security/lockdown`'s selected mode, when the file exists.
    pub lockdown: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "memtrace needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), and CAP_DAC_READ_SEARCH unless tracefs is readable (root); missing: {missing}.{note} Run it as root (sudo memtrace ...) or grant them: setcap {setcap}+ep $(which memtrace)"
)]
pub struct MissingCapabilities {
    pub missing: String,
    /// Why a capability beyond the usual ones is needed on this kernel ("" when none is).
    pub note: String,
    pub setcap: String,
}

impl Privileges {
    pub fn current() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let eff = parse_cap_eff(&status).unwrap_or(0);
        let lockdown = std::fs::read_to_string("/sys/kernel/security/lockdown")
            .ok()
            .and_then(|s| selected_lockdown(&s));
        let cap_perfmon = eff & (1 << CAP_PERFMON) != 0;
        let cap_sys_admin = eff & (1 << CAP_SYS_ADMIN) != 0;
        Self {
            // SAFETY: geteuid has no preconditions and cannot fail.
            euid: unsafe { libc::geteuid() },
            cap_bpf: eff & (1 << CAP_BPF) != 0,
            cap_perfmon,
            cap_sys_admin,
            cap_dac_read_search: eff & (1 << CAP_DAC_READ_SEARCH | 1 << CAP_DAC_OVERRIDE) != 0,
            cap_sys_resource: eff & (1 << CAP_SYS_RESOURCE) != 0,
            memlock_limit: memlock_limit(),
            // Only CAP_PERFMON without CAP_SYS_ADMIN at paranoid 3 or more can be told apart
            // by the probe: without CAP_PERFMON a CPU-wide event is refused at any paranoid
            // level above 0 (and CAP_PERFMON is named missing anyway); with CAP_SYS_ADMIN
            // nothing is refused, and root skips the probe.
            perf_event_open_refused: cap_perfmon
                && !cap_sys_admin
                && perf_event_paranoid().is_some_and(|p| p >= 3)
                && perf_event_open_refused(),
            tracefs_readable: crate::kernel::tracefs::readable(),
            lockdown,
        }
    }

    /// Loading tracing programs needs CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN on older kernels;
    /// reading tracepoint layouts needs tracefs, which is root's unless CAP_DAC_READ_SEARCH.
    pub fn check(&self) -> Result<(), MissingCapabilities> {
        let mut missing = vec![];
        if !self.cap_sys_admin {
            missing.extend(
                [(self.cap_bpf, "CAP_BPF"), (self.cap_perfmon, "CAP_PERFMON")]
                    .into_iter()
                    .filter_map(|(have, name)| (!have).then_some(name)),
            );
        }
        if self.tracefs_readable == Some(false) {
            missing.push("CAP_DAC_READ_SEARCH");
        }
        // A finite limit may be too small, and how much is enough grows with the CPUs (per-CPU
        // maps): memtrace asks for the capability that lifts it rather than guess.
        let mut note = String::new();
        if let Some(limit) = self.memlock_limit
            && !self.cap_sys_resource
        {
            missing.push("CAP_SYS_RESOURCE");
            note = format!(
                " This kernel (before 5.11) charges BPF maps to RLIMIT_MEMLOCK, limited to {} KiB here: grant CAP_SYS_RESOURCE, or make the limit unlimited (systemd LimitMEMLOCK=infinity, ulimit -l unlimited).",
                limit >> 10
            );
        }
        if self.perf_event_open_refused && !self.cap_sys_admin {
            missing.push("CAP_SYS_ADMIN");
            note += " This kernel refuses perf_event_open (tracepoints, page-fault sampling) without CAP_SYS_ADMIN at kernel.perf_event_paranoid=3: grant it, or set kernel.perf_event_paranoid=2.";
        }
        if missing.is_empty() {
            return Ok(());
        }
        let mut setcap = "cap_bpf,cap_perfmon,cap_dac_read_search".to_owned();
        for (needed, cap) in [
            (missing.contains(&"CAP_SYS_RESOURCE"), ",cap_sys_resource"),
            (missing.contains(&"CAP_SYS_ADMIN"), ",cap_sys_admin"),
        ] {
            if needed {
                setcap += cap;
            }
        }
        Err(MissingCapabilities {
            missing: missing.join(", "),
            setcap,
            note,
        })
    }
}

/// Opens (and closes) a disabled software dummy event on this CPU, for every task: what a
/// tracepoint attach or the page-fault sampler will ask of perf_event_open. True when it is
/// refused with EACCES, the answer of the perf_event_paranoid >= 3 restriction. Not a per-task
/// event: the first one in a process costs ~15 ms (the kernel turns on its context-switch
/// hooks), which `memtrace top --once` paid at every start.
fn perf_event_open_refused() -> bool {
    const PERF_TYPE_SOFTWARE: u32 = 1;
    const PERF_COUNT_SW_DUMMY: u64 = 9;
    // struct perf_event_attr (include/uapi/linux/perf_event.h), 128 bytes of it (a size the
    // kernel accepts since 5.x): type, size, config; flags at byte 40: disabled,
    // exclude_kernel, exclude_hv.
    let mut attr = [0u64; 16];
    attr[0] = u64::from(PERF_TYPE_SOFTWARE) | (128u64 << 32);
    attr[1] = PERF_COUNT_SW_DUMMY;
    attr[5] = 1 | 1 << 5 | 1 << 6;
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() }.max(0);
    // SAFETY: a valid, fully initialised attr of the size it declares; pid -1 (every task),
    // this CPU, no group, no flags. The fd, if any, is closed at once.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1 as libc::pid_t,
            cpu as libc::c_int,
            -1 as libc::c_int,
            0 as libc::c_ulong,
        )
    };
    if fd >= 0 {
        // SAFETY: our own fd.
        unsafe { libc::close(fd as libc::c_int) };
        return false;
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EACCES)
}

/// kernel.perf_event_paranoid, if readable.
fn perf_event_paranoid() -> Option<i32> {
    std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// RLIMIT_MEMLOCK's hard limit where the running kernel charges BPF maps to it (before 5.11)
/// and it is finite; `None` otherwise.
fn memlock_limit() -> Option<u64> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    if !charges_memlock(&release) {
        return None;
    }
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 || r.rlim_max == libc::RLIM_INFINITY {
        return None;
    }
    Some(r.rlim_max)
}

/// "5.10.0-32-amd64" -> true: memcg accounting of BPF memory came in 5.11.
fn charges_memlock(release: &str) -> bool {
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().ok());
    match (nums.next().flatten(), nums.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) < (5, 11),
        _ => false,
    }
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// "none [integrity] confidentiality" -> "integrity".
fn selected_lockdown(s: &str) -> Option<String> {
    let start = s.find('[')?;
    let end = s[start..].find(']')? + start;
    Some(s[start + 1..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_and_lockdown() {
        assert_eq!(
            parse_cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            Some(0x1ff_ffff_ffff)
        );
        assert_eq!(parse_cap_eff("CapEff:\tzz"), None);
        assert_eq!(
            selected_lockdown("none [integrity] confidentiality\n").as_deref(),
            Some("integrity")
        );
        assert_eq!(selected_lockdown("none"), None);
    }

    fn privileges(bpf: bool, perfmon: bool, tracefs: Option<bool>) -> Privileges {
        Privileges {
            euid: 1000,
            cap_bpf: bpf,
            cap_perfmon: perfmon,
            cap_sys_admin: false,
            cap_dac_read_search: false,
            cap_sys_resource: false,
            memlock_limit: None,
            perf_event_open_refused: false,
            tracefs_readable: tracefs,
            lockdown: None,
        }
    }

    #[test]
    fn missing_caps_are_named() {
        let e = privileges(true, false, Some(true))
            .check()
            .expect_err("missing perfmon");
        assert_eq!(e.missing, "CAP_PERFMON");
        assert!(e.to_string().contains("CAP_PERFMON"));
        let e = privileges(false, true, None).check().expect_err("missing bpf");
        assert_eq!(e.missing, "CAP_BPF");
        let e = privileges(true, true, Some(false)).check().expect_err("tracefs");
        assert_eq!(e.missing, "CAP_DAC_READ_SEARCH");
        let e = privileges(false, false, Some(false)).check().expect_err("all");
        assert_eq!(e.missing, "CAP_BPF, CAP_PERFMON, CAP_DAC_READ_SEARCH");
        assert!(privileges(true, true, Some(true)).check().is_ok());
        // Not mounted: memtrace mounts it (or says why it cannot).
        assert!(privileges(true, true, None).check().is_ok());
        let admin = Privileges {
            cap_sys_admin: true,
            ..privileges(false, false, Some(true))
        };
        assert!(admin.check().is_ok());
        // Before 5.11, a finite RLIMIT_MEMLOCK: CAP_SYS_RESOURCE, and why.
        let limited = Privileges {
            memlock_limit: Some(64 << 10),
            ..privileges(true, true, Some(true))
        };
        let e = limited.check().expect_err("memlock");
        assert_eq!(e.missing, "CAP_SYS_RESOURCE");
        assert!(e.to_string().contains("64 KiB") && e.to_string().contains("cap_sys_resource+ep"));
        let lifted = Privileges {
            cap_sys_resource: true,
            ..limited
        };
        assert!(lifted.check().is_ok());
        // perf_event_paranoid=3 refusing CAP_PERFMON (Debian's 5.10): CAP_SYS_ADMIN, and why.
        let refused = Privileges {
            perf_event_open_refused: true,
            ..privileges(true, true, Some(true))
        };
        let e = refused.check().expect_err("perf_event_open");
        assert_eq!(e.missing, "CAP_SYS_ADMIN");
        assert!(e.to_string().contains("perf_event_paranoid"));
        assert!(
            Privileges {
                cap_sys_admin: true,
                ..refused
            }
            .check()
            .is_ok()
        );
    }

    #[test]
    fn memlock_is_charged_before_5_11() {
        assert!(charges_memlock("5.10.0-32-amd64"));
        assert!(charges_memlock("4.19.0"));
        assert!(!charges_memlock("5.11.0"));
        assert!(!charges_memlock("6.18.44-fc-v782"));
        assert!(!charges_memlock(""));
    }
}
