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
    pub setcap: &'static str,
}

impl Privileges {
    pub fn current() -> Self {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let eff = parse_cap_eff(&status).unwrap_or(0);
        let lockdown = std::fs::read_to_string("/sys/kernel/security/lockdown")
            .ok()
            .and_then(|s| selected_lockdown(&s));
        Self {
            // SAFETY: geteuid has no preconditions and cannot fail.
            euid: unsafe { libc::geteuid() },
            cap_bpf: eff & (1 << CAP_BPF) != 0,
            cap_perfmon: eff & (1 << CAP_PERFMON) != 0,
            cap_sys_admin: eff & (1 << CAP_SYS_ADMIN) != 0,
            cap_dac_read_search: eff & (1 << CAP_DAC_READ_SEARCH | 1 << CAP_DAC_OVERRIDE) != 0,
            cap_sys_resource: eff & (1 << CAP_SYS_RESOURCE) != 0,
            memlock_limit: memlock_limit(),
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
        if missing.is_empty() {
            return Ok(());
        }
        Err(MissingCapabilities {
            missing: missing.join(", "),
            setcap: if note.is_empty() {
                "cap_bpf,cap_perfmon,cap_dac_read_search"
            } else {
                "cap_bpf,cap_perfmon,cap_dac_read_search,cap_sys_resource"
            },
            note,
        })
    }
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
