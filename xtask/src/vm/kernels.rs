//! Kernel images: which Debian packages, downloaded once, their /boot kept and checked.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};

use super::{run_ok, shell_quote};

/// Kernel options the guest cannot do without (checked in the package's /boot/config-*).
const REQUIRED_CONFIG: &[&str] = &[
    "CONFIG_BLK_DEV_INITRD",
    "CONFIG_DEVTMPFS",
    "CONFIG_TMPFS",
    "CONFIG_SERIAL_8250_CONSOLE",
    "CONFIG_BPF_SYSCALL",
    "CONFIG_BPF_EVENTS",
    "CONFIG_DEBUG_INFO_BTF",
    "CONFIG_CGROUPS",
    "CONFIG_MEMCG",
    "CONFIG_TRACING",
];

/// Reported, not required: what the VM covers that the build host cannot.
const INFO_CONFIG: &[&str] = &["CONFIG_KPROBES", "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS"];

/// The oldest series `--kernel all` boots.
const OLDEST_SERIES: (u32, u32) = (6, 1);

#[derive(Debug, Clone, PartialEq, Eq)]
struct KernelPkg {
    /// apt package name, e.g. linux-image-6.12.117+deb12-amd64.
    package: String,
    /// "6.12"
    series: String,
    /// Upstream version numbers, then the Debian ABI number (6.1.0-56 -> [6, 1, 0, 56]).
    order: Vec<u32>,
}

/// Parses a generic amd64 image name: `linux-image-6.1.0-56-amd64` (ABI-numbered) or
/// `linux-image-6.12.117+deb12-amd64`. cloud/rt flavours, -dbg, -unsigned and meta packages
/// are not matched.
fn parse_kernel_pkg(name: &str) -> Option<KernelPkg> {
    let mid = name.strip_prefix("linux-image-")?.strip_suffix("-amd64")?;
    let split = mid.find(['-', '+'])?;
    let (ver, rest) = mid.split_at(split);
    let mut order: Vec<u32> = ver.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    if order.len() < 2 {
        return None;
    }
    let abi = match rest.split_at(1) {
        ("-", n) => n,
        ("+", n) => n.strip_prefix("deb")?,
        _ => return None,
    };
    order.push(abi.parse().ok()?);
    Some(KernelPkg {
        package: name.to_owned(),
        series: format!("{}.{}", order[0], order[1]),
        order,
    })
}

fn series_key(series: &str) -> Option<(u32, u32)> {
    let (a, b) = series.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub(super) struct Kernel {
    pub(super) series: String,
    pub(super) package: String,
    pub(super) vmlinuz: PathBuf,
}

/// Every generic amd64 kernel image the apt sources know, grouped by series, newest first.
fn apt_kernels() -> BTreeMap<(u32, u32), Vec<KernelPkg>> {
    let mut by_series: BTreeMap<(u32, u32), Vec<KernelPkg>> = BTreeMap::new();
    let out = Command::new("apt-cache")
        .args([
            "search",
            "--names-only",
            r"^linux-image-[0-9][0-9.]*[-+][0-9a-z+.-]*-amd64$",
        ])
        .stderr(Stdio::null())
        .output();
    let Ok(out) = out else { return by_series };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split(" - ").next().unwrap_or_default().trim();
        if let Some(k) = parse_kernel_pkg(name)
            && let Some(key) = series_key(&k.series)
        {
            by_series.entry(key).or_default().push(k);
        }
    }
    for list in by_series.values_mut() {
        list.sort_by(|a, b| b.order.cmp(&a.order));
    }
    by_series
}

/// `apt-cache policy` has a candidate version: the package can be downloaded.
fn has_candidate(package: &str) -> bool {
    Command::new("apt-cache")
        .args(["policy", package])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.trim().strip_prefix("Candidate:"))
                .any(|c| c.trim() != "(none)")
        })
        .unwrap_or(false)
}

/// Kernels already extracted in the cache, by series, newest first (for offline runs).
fn cached_kernels(cache: &Path) -> BTreeMap<(u32, u32), Vec<KernelPkg>> {
    let mut by_series: BTreeMap<(u32, u32), Vec<KernelPkg>> = BTreeMap::new();
    for entry in std::fs::read_dir(cache).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().join("vmlinuz").is_file()
            && let Some(k) = parse_kernel_pkg(&name)
            && let Some(key) = series_key(&k.series)
        {
            by_series.entry(key).or_default().push(k);
        }
    }
    for list in by_series.values_mut() {
        list.sort_by(|a, b| b.order.cmp(&a.order));
    }
    by_series
}

pub(super) fn resolve_kernels(wanted: &[String], cache: &Path) -> anyhow::Result<Vec<Kernel>> {
    let apt = apt_kernels();
    let cached = cached_kernels(cache);
    let mut series: Vec<(u32, u32)> = Vec::new();
    for w in wanted {
        if w == "all" {
            let mut all: Vec<_> = apt.keys().chain(cached.keys()).copied().collect();
            all.retain(|k| *k >= OLDEST_SERIES);
            all.sort();
            all.dedup();
            ensure!(
                !all.is_empty(),
                "no Debian kernel image >= 6.1 in the apt sources (apt-get update?) nor in {}",
                cache.display()
            );
            series.extend(all);
        } else {
            series.push(
                series_key(w).with_context(|| format!("--kernel {w}: expected 6.1, 6.12, ... or all"))?,
            );
        }
    }
    series.dedup();
    let mut out = Vec::new();
    for key in series {
        let label = format!("{}.{}", key.0, key.1);
        // The newest downloadable package of the series; a cached one when apt has none.
        let from_apt = apt
            .get(&key)
            .into_iter()
            .flatten()
            .find(|k| cache.join(&k.package).join("vmlinuz").is_file() || has_candidate(&k.package));
        let pkg = match from_apt.or_else(|| cached.get(&key).and_then(|l| l.first())) {
            Some(p) => p.clone(),
            None => {
                let known: Vec<String> = apt.keys().map(|(a, b)| format!("{a}.{b}")).collect();
                bail!(
                    "kernel {label}: no linux-image-{label}*-amd64 package in the configured apt sources \
                     (they have: {}) and none cached in {}",
                    if known.is_empty() {
                        "none".into()
                    } else {
                        known.join(", ")
                    },
                    cache.display()
                );
            }
        };
        let vmlinuz = fetch_kernel(&pkg.package, cache)?;
        // Older builds of the series are not booted again.
        for old in cached.get(&key).into_iter().flatten() {
            if old.package != pkg.package {
                let _ = std::fs::remove_dir_all(cache.join(&old.package));
            }
        }
        out.push(Kernel {
            series: label,
            package: pkg.package,
            vmlinuz,
        });
    }
    Ok(out)
}

/// Downloads the package (once) and keeps its /boot: vmlinuz and config. The modules (most of
/// the package) are not needed: everything the tests use is built in (checked here).
fn fetch_kernel(package: &str, cache: &Path) -> anyhow::Result<PathBuf> {
    let dir = cache.join(package);
    let vmlinuz = dir.join("vmlinuz");
    if !vmlinuz.is_file() {
        let tmp = cache.join(format!(".{package}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        eprintln!("vm: apt-get download {package}");
        let t = Instant::now();
        let mut dl = Command::new("apt-get");
        dl.args(["download", "-q", package]).current_dir(&tmp);
        run_ok(dl).context("apt-get download (network and apt sources needed once per kernel)")?;
        let deb = std::fs::read_dir(&tmp)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb")?;
        // dpkg-deb -x would unpack ~400 MB of modules; only /boot is kept.
        let sh = format!(
            "dpkg-deb --fsys-tarfile {} | tar -x -C {} --wildcards './boot/*'",
            shell_quote(&deb.to_string_lossy()),
            shell_quote(&tmp.to_string_lossy())
        );
        run_ok({
            let mut c = Command::new("sh");
            c.args(["-c", &sh]);
            c
        })?;
        let boot = tmp.join("boot");
        let mut found = false;
        for e in std::fs::read_dir(&boot)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("vmlinuz-") {
                std::fs::rename(e.path(), tmp.join("vmlinuz"))?;
                found = true;
            } else if name.starts_with("config-") {
                std::fs::rename(e.path(), tmp.join("config"))?;
            }
        }
        ensure!(found, "{package} has no /boot/vmlinuz-*");
        std::fs::remove_dir_all(&boot)?;
        std::fs::remove_file(&deb)?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir)?;
        eprintln!("vm: {package} cached in {} ({:.1?})", dir.display(), t.elapsed());
    }
    check_config(package, &dir.join("config"))?;
    Ok(vmlinuz)
}

fn check_config(package: &str, config: &Path) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(config) else {
        eprintln!("vm: warning: {package} has no config file; kernel options not checked");
        return Ok(());
    };
    let value = |opt: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(opt).and_then(|r| r.strip_prefix('=')))
            .unwrap_or("n")
            .to_owned()
    };
    let missing: Vec<String> = REQUIRED_CONFIG
        .iter()
        .filter(|o| value(o) != "y")
        .map(|o| format!("{o}={}", value(o)))
        .collect();
    ensure!(
        missing.is_empty(),
        "{package}: needs these built in (=y), the initramfs has no modules: {}",
        missing.join(", ")
    );
    let info: Vec<String> = INFO_CONFIG.iter().map(|o| format!("{o}={}", value(o))).collect();
    eprintln!("vm: {package}: required options built in; {}", info.join(" "));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_package_names() {
        let k = parse_kernel_pkg("linux-image-6.1.0-56-amd64").expect("6.1");
        assert_eq!(
            (k.series.as_str(), k.order.as_slice()),
            ("6.1", &[6, 1, 0, 56][..])
        );
        let k = parse_kernel_pkg("linux-image-6.12.117+deb12-amd64").expect("6.12");
        assert_eq!(
            (k.series.as_str(), k.order.as_slice()),
            ("6.12", &[6, 12, 117, 12][..])
        );
        for bad in [
            "linux-image-6.12-amd64",
            "linux-image-6.1.0-56-cloud-amd64",
            "linux-image-6.1.0-56-rt-amd64",
            "linux-image-6.12.117+deb12-amd64-unsigned",
            "linux-image-amd64",
        ] {
            assert_eq!(parse_kernel_pkg(bad), None, "{bad}");
        }
        let a = parse_kernel_pkg("linux-image-6.1.0-9-amd64").expect("a");
        let b = parse_kernel_pkg("linux-image-6.1.0-56-amd64").expect("b");
        assert!(b.order > a.order, "ABI numbers compare as numbers");
    }
}
