//! What the process may do: capabilities (from /proc/self/status) and kernel lockdown.

use serde::Serialize;

pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

#[derive(Debug, Clone, Serialize)]
pub struct Privileges {
    pub euid: u32,
    pub cap_bpf: bool,
    pub cap_perfmon: bool,
    pub cap_sys_admin: bool,
    /// `/sys/kernel/security/lockdown`'s selected mode, when the file exists.
    pub lockdown: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "memtrace needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); missing: {missing}. Run it as root (sudo memtrace ...) or grant them: setcap cap_bpf,cap_perfmon,cap_dac_read_search+ep $(which memtrace)"
)]
pub struct MissingCapabilities {
    pub missing: String,
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
            lockdown,
        }
    }

    /// Loading tracing programs needs CAP_BPF + CAP_PERFMON, or CAP_SYS_ADMIN on older kernels.
    pub fn check(&self) -> Result<(), MissingCapabilities> {
        if self.cap_sys_admin || (self.cap_bpf && self.cap_perfmon) {
            return Ok(());
        }
        let missing: Vec<_> = [(self.cap_bpf, "CAP_BPF"), (self.cap_perfmon, "CAP_PERFMON")]
            .into_iter()
            .filter_map(|(have, name)| (!have).then_some(name))
            .collect();
        Err(MissingCapabilities {
            missing: missing.join(", "),
        })
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

    #[test]
    fn missing_caps_are_named() {
        let p = Privileges {
            euid: 1000,
            cap_bpf: true,
            cap_perfmon: false,
            cap_sys_admin: false,
            lockdown: None,
        };
        let e = p.check().expect_err("missing perfmon");
        assert_eq!(e.missing, "CAP_PERFMON");
        assert!(e.to_string().contains("CAP_PERFMON"));
    }
}
