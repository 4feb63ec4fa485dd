//! Kernel images: which Debian packages, downloaded once, their kernel and config kept and checked.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};

use super::{apt::PrivateApt, run_ok, shell_quote};

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
const OLDEST_SERIES: (u32, u32) = (5, 10);

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

/// Every generic amd64 kernel image the private apt sources know, by series, newest first.
fn apt_kernels(apt: &PrivateApt) -> BTreeMap<(u32, u32), Vec<KernelPkg>> {
    let mut by_series: BTreeMap<(u32, u32), Vec<KernelPkg>> = BTreeMap::new();
    for name in apt.search(r"^linux-image-[0-9][0-9.]*[-+][0-9a-z+.-]*-amd64$") {
        if let Some(k) = parse_kernel_pkg(&name)
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

pub(super) fn resolve_kernels(
    wanted: &[String],
    apt: &PrivateApt,
    cache: &Path,
) -> anyhow::Result<Vec<Kernel>> {
    let listed = apt_kernels(apt);
    let cached = cached_kernels(cache);
    let mut series: Vec<(u32, u32)> = Vec::new();
    for w in wanted {
        if w == "all" {
            let mut all: Vec<_> = listed.keys().chain(cached.keys()).copied().collect();
            all.retain(|k| *k >= OLDEST_SERIES);
            all.sort();
            all.dedup();
            ensure!(
                !all.is_empty(),
                "no Debian kernel image >= 5.10 in the apt sources (network?) nor in {}",
                cache.display()
            );
            series.extend(all);
        } else {
            series.push(
                series_key(w)
                    .with_context(|| format!("--kernel {w}: expected 5.10, 6.1, 6.12, 7.2, ... or all"))?,
            );
        }
    }
    series.dedup();
    let mut out = Vec::new();
    for key in series {
        let label = format!("{}.{}", key.0, key.1);
        // The newest downloadable package of the series; a cached one when apt has none.
        let from_apt = listed
            .get(&key)
            .into_iter()
            .flatten()
            .find(|k| cache.join(&k.package).join("vmlinuz").is_file() || apt.has_candidate(&k.package));
        let pkg = match from_apt.or_else(|| cached.get(&key).and_then(|l| l.first())) {
            Some(p) => p.clone(),
            None => {
                let known: Vec<String> = listed.keys().map(|(a, b)| format!("{a}.{b}")).collect();
                bail!(
                    "kernel {label}: no linux-image-{label}*-amd64 package in the apt sources \
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
        let vmlinuz = fetch_kernel(apt, &pkg.package, cache)?;
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

/// Downloads the package (once) and keeps only the kernel and its config. The modules (most of
/// the package) are not needed: everything the tests use is built in (checked here).
/// Up to Debian 13 the image package holds `/boot/vmlinuz-*` and `/boot/config-*`; since the
/// 7.x packages (sid) it is empty and depends on `linux-binary-*`
/// (`/usr/lib/modules/<release>/vmlinuz`) and `linux-base-*` (`.../config`).
fn fetch_kernel(apt: &PrivateApt, package: &str, cache: &Path) -> anyhow::Result<PathBuf> {
    let dir = cache.join(package);
    let vmlinuz = dir.join("vmlinuz");
    if !vmlinuz.is_file() {
        let tmp = cache.join(format!(".{package}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        eprintln!("vm: apt-get download {package}");
        let t = Instant::now();
        apt.download(&[package.to_owned()], &tmp)?;
        extract_kernel(&tmp)?;
        if !tmp.join("vmlinuz").is_file() {
            let split: Vec<String> = apt
                .depends(package)?
                .into_iter()
                .filter(|d| d.starts_with("linux-binary-") || d.starts_with("linux-base-"))
                .collect();
            ensure!(
                !split.is_empty(),
                "{package} has no /boot/vmlinuz-* and depends on no linux-binary-* package"
            );
            eprintln!("vm: apt-get download {} (the kernel is split)", split.join(" "));
            apt.download(&split, &tmp)?;
            extract_kernel(&tmp)?;
        }
        ensure!(
            tmp.join("vmlinuz").is_file(),
            "{package}: no vmlinuz in its packages"
        );
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir)?;
        eprintln!("vm: {package} cached in {} ({:.1?})", dir.display(), t.elapsed());
    }
    check_config(package, &dir.join("config"))?;
    Ok(vmlinuz)
}

/// Takes vmlinuz and config out of every .deb in `dir` (then deletes the .deb).
fn extract_kernel(dir: &Path) -> anyhow::Result<()> {
    let debs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    ensure!(!debs.is_empty(), "apt-get download left no .deb");
    for deb in debs {
        let x = dir.join("x");
        let _ = std::fs::remove_dir_all(&x);
        std::fs::create_dir_all(&x)?;
        // dpkg-deb -x would unpack ~400 MB of modules; tar takes just the two files.
        let sh = format!(
            "dpkg-deb --fsys-tarfile {} | tar -x -C {} --wildcards --no-wildcards-match-slash \
             './boot/vmlinuz-*' './boot/config-*' './usr/lib/modules/*/vmlinuz' './usr/lib/modules/*/config' \
             2>/dev/null; true",
            shell_quote(&deb.to_string_lossy()),
            shell_quote(&x.to_string_lossy())
        );
        run_ok({
            let mut c = Command::new("sh");
            c.args(["-c", &sh]);
            c
        })?;
        let mut found = Vec::new();
        collect_files(&x, &mut found)?;
        for f in found {
            let name = f.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let to = if name.starts_with("vmlinuz") {
                "vmlinuz"
            } else if name.starts_with("config") {
                "config"
            } else {
                continue;
            };
            std::fs::rename(&f, dir.join(to))?;
        }
        std::fs::remove_dir_all(&x)?;
        std::fs::remove_file(&deb)?;
    }
    Ok(())
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        let p = e.path();
        if e.file_type()?.is_dir() {
            collect_files(&p, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
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
        let k = parse_kernel_pkg("linux-image-5.10.0-32-amd64").expect("5.10 (bullseye)");
        assert_eq!(k.series, "5.10");
        let k = parse_kernel_pkg("linux-image-7.2.13+deb14-amd64").expect("7.2 (sid)");
        assert_eq!(
            (k.series.as_str(), k.order.as_slice()),
            ("7.2", &[7, 2, 13, 14][..])
        );
        for bad in [
            // bullseye's backport of 6.1: bookworm's own 6.1 is the one booted.
            "linux-image-6.1.0-0.deb11.52-amd64",
            "linux-image-7.2.13+deb14-amd64-dbg",
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
