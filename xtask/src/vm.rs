//! `cargo xtask vm`: the integration tests inside Debian kernels under qemu.
//!
//! The build host's kernel cannot run everything (no kprobes, fentry refused, cgroup v1 only),
//! so this boots the Debian kernels the configured apt sources offer (6.1, 6.12, and any newer
//! series they carry) with an initramfs holding busybox, memtrace, the test binaries and their
//! tools, and runs every integration test binary with `MEMTRACE_REQUIRE_EBPF=1` on cgroup v2.
//!
//! Kernel packages are fetched with `apt-get download` (never installed) and only their
//! `/boot` is kept, in `target/vm/kernels/<package>/`: a second run downloads nothing.
//! The guest reports each test binary's exit code on a second serial port (a file on the host),
//! so that kernel messages on the console cannot garble the result.

use std::{
    collections::BTreeMap,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

#[derive(Debug, clap::Args)]
pub struct VmArgs {
    /// Kernel series to boot: 6.1, 6.12, ..., or "all" (every series >= 6.1 in the apt sources).
    /// Repeatable, or comma-separated.
    #[arg(long, default_value = "all", value_delimiter = ',')]
    kernel: Vec<String>,
    /// Time limit for one kernel (boot, every test binary, power-off), in seconds.
    /// A run takes ~80 s per kernel on a 2-core host.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Guest memory (qemu -m).
    #[arg(long, default_value = "1G")]
    memory: String,
    /// Run this shell command in the guest instead of the tests (debugging), e.g.
    /// --exec 'cat /sys/kernel/tracing/events/oom/mark_victim/format'.
    #[arg(long)]
    exec: Option<String>,
    /// Arguments for every test binary, e.g. a test name filter or --nocapture.
    #[arg(last = true)]
    test_args: Vec<String>,
}

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

/// Marker lines the guest's /init prints (on the console and on the results port).
const BOOTED: &str = "MEMTRACE-VM-BOOTED";
const RESULT: &str = "MEMTRACE-VM-RESULT";
const DONE: &str = "MEMTRACE-VM-DONE";

/// Latency budgets in the tests are multiplied by this in the guest: TCG emulates the CPU,
/// several times slower than the host (memtrace's emit delay reaches ~0.2 s there).
const TIME_SCALE: u32 = 10;
/// What `memtrace probes` must select on a stock Debian kernel (kprobes and fentry on): the
/// probes test compares, so a hook that silently fails to attach fails in the VM too.
const EXPECT_HOOKS: &str = "oom_victim=tp_btf,oom_context=fentry,cgroup_mkdir=tracepoint,charge=fentry,reclaim_begin=tp_btf,reclaim_end=tp_btf";

pub fn run(args: &VmArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = workspace_root()?;
    let vm_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("vm");
    std::fs::create_dir_all(&vm_dir).with_context(|| format!("mkdir {}", vm_dir.display()))?;
    let qemu = find_tool("qemu-system-x86_64")?;

    let kernels = resolve_kernels(&args.kernel, &vm_dir.join("kernels"))?;
    let built = build(&root)?;
    let tests: Vec<String> = match &args.exec {
        Some(_) => vec!["exec".into()],
        None => built.tests.iter().map(|(name, _)| name.clone()).collect(),
    };
    let initramfs = vm_dir.join("initramfs.cpio");
    let t = Instant::now();
    build_initramfs(&vm_dir.join("initramfs.d"), &initramfs, &built, args)?;
    eprintln!(
        "vm: initramfs {} ({} MiB) in {:.1?}",
        initramfs.display(),
        std::fs::metadata(&initramfs)?.len() >> 20,
        t.elapsed()
    );

    let mut reports = Vec::new();
    for k in &kernels {
        eprintln!("vm: === booting {} ({})", k.series, k.package);
        let report = boot(&qemu, k, &initramfs, &vm_dir, &tests, args)?;
        eprintln!("vm: {}", report.line());
        reports.push(report);
    }
    eprintln!("\nvm: summary");
    for r in &reports {
        eprintln!("vm:   {}", r.line());
    }
    eprintln!(
        "vm:   total {:.1}s (build, kernels, initramfs and every boot)",
        started.elapsed().as_secs_f64()
    );
    let failed: Vec<_> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| r.series.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("VM tests failed on kernel {}", failed.join(", "));
    }
    Ok(())
}

fn workspace_root() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").context("run as `cargo xtask vm`")?;
    Ok(Path::new(&dir)
        .parent()
        .context("xtask has a parent directory")?
        .to_path_buf())
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn run_ok(mut c: Command) -> anyhow::Result<()> {
    let status = c.status().with_context(|| format!("running {c:?}"))?;
    ensure!(status.success(), "{c:?} failed: {status}");
    Ok(())
}

fn output_ok(mut c: Command) -> anyhow::Result<String> {
    let out = c
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {c:?}"))?;
    ensure!(out.status.success(), "{c:?} failed: {}", out.status);
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A program on PATH (or in the sbin directories a non-root PATH lacks).
fn find_tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found: run scripts/setup.sh"))
}

// ---------------------------------------------------------------------------------------------
// Kernels

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
struct Kernel {
    series: String,
    package: String,
    vmlinuz: PathBuf,
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

fn resolve_kernels(wanted: &[String], cache: &Path) -> anyhow::Result<Vec<Kernel>> {
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

// ---------------------------------------------------------------------------------------------
// Build

struct Built {
    memtrace: PathBuf,
    alloc: PathBuf,
    /// (name, executable) of each integration test binary (tests/tests/*.rs).
    tests: Vec<(String, PathBuf)>,
}

/// Integration tests that need what the guest image does not carry (Prometheus, Alertmanager,
/// the webhook receiver and journald for `export`, tmux for `top_live`): they run on the host
/// only.
/// `top_live` needs tmux. The reliability tests (lifecycle: 100 start/stop cycles; drops,
/// bad_input, privileges: mount namespaces, setpriv as other uids) are host tests; they have not
/// been run in the guest yet.
const HOST_ONLY_TESTS: &[&str] = &[
    "export",
    "top_live",
    "lifecycle",
    "drops",
    "bad_input",
    "privileges",
];

/// Executables cargo reports building: (target name, target kinds, built as a test, path).
fn artifacts(json: &str) -> Vec<(String, Vec<String>, bool, PathBuf)> {
    let mut out = Vec::new();
    for line in json.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(exe) = v["executable"].as_str() else {
            continue;
        };
        if v["reason"] != "compiler-artifact" {
            continue;
        }
        let kinds = v["target"]["kind"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect();
        out.push((
            v["target"]["name"].as_str().unwrap_or_default().to_owned(),
            kinds,
            v["profile"]["test"] == true,
            PathBuf::from(exe),
        ));
    }
    out
}

/// Builds (if needed) what the guest runs; paths from cargo, so CARGO_TARGET_DIR is honoured.
fn build(root: &Path) -> anyhow::Result<Built> {
    let mut b = cargo();
    b.args([
        "build",
        "--package",
        "memtrace",
        "--bin",
        "memtrace",
        "--message-format=json",
    ])
    .current_dir(root);
    let memtrace = artifacts(&output_ok(b)?)
        .into_iter()
        .find(|(name, kinds, _, _)| name == "memtrace" && kinds.iter().any(|k| k == "bin"))
        .map(|(.., exe)| exe)
        .context("cargo build did not report the memtrace binary")?;
    let mut t = cargo();
    t.args([
        "test",
        "--package",
        "memtrace-tests",
        "--no-run",
        "--message-format=json",
    ])
    .current_dir(root);
    let mut tests = Vec::new();
    let mut alloc = None;
    for (name, kinds, test, exe) in artifacts(&output_ok(t)?) {
        if kinds.iter().any(|k| k == "test") {
            if HOST_ONLY_TESTS.contains(&name.as_str()) {
                continue;
            }
            tests.push((name, exe));
        } else if kinds.iter().any(|k| k == "bin") && name == "memtrace-alloc" && !test {
            alloc = Some(exe);
        }
    }
    tests.sort();
    ensure!(
        !tests.is_empty(),
        "cargo test --no-run listed no integration test binary"
    );
    Ok(Built {
        memtrace,
        alloc: alloc.context("cargo test --no-run did not report memtrace-alloc")?,
        tests,
    })
}

// ---------------------------------------------------------------------------------------------
// Initramfs

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Copies a binary into the staging tree, without debug info (the initramfs lives in guest
/// RAM); symbols stay, so backtraces still name functions.
fn install_binary(src: &Path, stage: &Path, dest: &str) -> anyhow::Result<()> {
    let to = stage.join(dest.trim_start_matches('/'));
    std::fs::create_dir_all(to.parent().context("dest has a parent")?)?;
    let stripped = Command::new("strip")
        .args(["--strip-debug", "-o"])
        .arg(&to)
        .arg(src)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(src, &to).with_context(|| format!("copy {}", src.display()))?;
    }
    set_mode(&to, 0o755)
}

fn set_mode(p: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", p.display()))
}

/// The shared libraries `ldd` says `bin` loads, the dynamic loader included.
fn shared_libs(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(bin).output().context("ldd (libc-bin)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("not a dynamic executable") {
        return Ok(vec![]); // static (busybox-static)
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!("{}: {line}", bin.display());
        }
        let path = match line.split_once("=>") {
            Some((_, right)) => right.trim().split(' ').next().unwrap_or_default(),
            None => line.split(' ').next().unwrap_or_default(), // the loader, or linux-vdso
        };
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

fn build_initramfs(stage: &Path, out: &Path, built: &Built, args: &VmArgs) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(stage);
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "etc", "root", "tests",
    ] {
        std::fs::create_dir_all(stage.join(d))?;
    }
    let busybox = find_tool("busybox")?;
    let bpftool = find_tool("bpftool")?;
    let setpriv = find_tool("setpriv")?;
    let mut bins = vec![
        (busybox, "/bin/busybox".to_owned()),
        (built.memtrace.clone(), "/bin/memtrace".to_owned()),
        (built.alloc.clone(), "/bin/memtrace-alloc".to_owned()),
        // In /bin, where busybox --install (which never overwrites) would put its own setpriv.
        (bpftool, "/bin/bpftool".to_owned()),
        (setpriv, "/bin/setpriv".to_owned()),
    ];
    for (name, exe) in &built.tests {
        bins.push((exe.clone(), format!("/tests/{name}")));
    }
    let mut libs = Vec::new();
    for (src, dest) in &bins {
        ensure!(src.is_file(), "{} is not built", src.display());
        install_binary(src, stage, dest)?;
        libs.extend(shared_libs(src)?);
    }
    libs.sort();
    libs.dedup();
    for lib in libs {
        // Copied to the path ldd named (symlinks followed): the loader's own path included.
        let to = stage.join(lib.strip_prefix("/").unwrap_or(&lib));
        std::fs::create_dir_all(to.parent().context("lib has a parent")?)?;
        std::fs::copy(&lib, &to).with_context(|| format!("copy {}", lib.display()))?;
    }
    std::fs::write(
        stage.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    std::fs::write(stage.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    let init = stage.join("init");
    std::fs::write(&init, init_script(args))?;
    set_mode(&init, 0o755)?;

    // cpio newc, uncompressed: decompressing in the guest is slow under TCG.
    let mut files = Vec::new();
    walk(stage, Path::new("."), &mut files)?;
    files.sort();
    let mut cpio = Command::new("cpio");
    cpio.args(["--quiet", "-o", "-H", "newc", "-R", "0:0"])
        .current_dir(stage)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(out).with_context(|| format!("create {}", out.display()))?);
    let mut child = cpio
        .spawn()
        .context("cpio (apt package cpio; run scripts/setup.sh)")?;
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().context("cpio stdin")?;
        for f in &files {
            writeln!(stdin, "{}", f.display())?;
        }
    }
    let status = child.wait()?;
    ensure!(status.success(), "cpio failed: {status}");
    Ok(())
}

fn walk(base: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    out.push(rel.to_path_buf());
    let dir = base.join(rel);
    if std::fs::symlink_metadata(&dir)?.is_dir() {
        for e in std::fs::read_dir(&dir)? {
            walk(base, &rel.join(e?.file_name()), out)?;
        }
    }
    Ok(())
}

/// The guest's /init (busybox sh): mounts, cgroup v2 with the memory controller, every test
/// binary in turn, one result line each, power off.
fn init_script(args: &VmArgs) -> String {
    let test_args: Vec<String> = args.test_args.iter().map(|a| shell_quote(a)).collect();
    let body = match &args.exec {
        Some(cmd) => format!("run_one exec sh -c {}\n", shell_quote(cmd)),
        None => format!(
            "for t in /tests/*; do\n  run_one \"${{t##*/}}\" \"$t\" --test-threads=1 {}\ndone\n",
            test_args.join(" ")
        ),
    };
    format!(
        r#"#!/bin/busybox sh
# Generated by `cargo xtask vm` (xtask/src/vm.rs).
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo +memory > /sys/fs/cgroup/cgroup.subtree_control
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
hostname memtrace-vm
K=$(uname -r)
up() {{ cut -d' ' -f1 /proc/uptime; }}
# Markers go to the console and to the second serial port (a file on the host).
say() {{ echo "$*"; echo "$*" > /dev/ttyS1; }}
say "{BOOTED} $K uptime=$(up) memory=$(cat /sys/fs/cgroup/cgroup.controllers | tr ' ' ,)"
failed=0
run_one() {{
  name=$1; shift
  start=$(up)
  echo "=== $name ($K)"
  env MEMTRACE_BIN=/bin/memtrace MEMTRACE_ALLOC=/bin/memtrace-alloc MEMTRACE_REQUIRE_EBPF=1 \
    MEMTRACE_TEST_TIME_SCALE={TIME_SCALE} RUST_BACKTRACE=1 \
    MEMTRACE_EXPECT_HOOKS={EXPECT_HOOKS} MEMTRACE_EXPECT_OOM_CONTEXT=1 "$@"
  rc=$?
  [ "$rc" = 0 ] || failed=$((failed + 1))
  say "{RESULT} $K $name rc=$rc start=$start end=$(up)"
}}
{body}say "{DONE} $K failed=$failed uptime=$(up)"
sync
poweroff -f
"#
    )
}

// ---------------------------------------------------------------------------------------------
// Boot

#[derive(Debug)]
struct TestResult {
    name: String,
    rc: Option<i32>,
    secs: Option<f64>,
}

#[derive(Debug)]
struct Report {
    series: String,
    uname: Option<String>,
    boot: Option<Duration>,
    wall: Duration,
    results: Vec<TestResult>,
    done: bool,
    timed_out: bool,
}

impl Report {
    fn passed(&self) -> bool {
        self.done && !self.timed_out && self.results.iter().all(|r| r.rc == Some(0))
    }

    fn line(&self) -> String {
        let tests: Vec<String> = self
            .results
            .iter()
            .map(|r| {
                let rc = r.rc.map_or("missing".into(), |rc| format!("rc={rc}"));
                let secs = r.secs.map_or(String::new(), |s| format!(" {s:.1}s"));
                format!("{}{secs} {rc}", r.name)
            })
            .collect();
        format!(
            "{} {:<28} boot {}, {}, wall {:.1}s{}",
            if self.passed() { "PASS" } else { "FAIL" },
            format!("{} ({})", self.series, self.uname.as_deref().unwrap_or("?")),
            self.boot
                .map_or("?".into(), |b| format!("{:.1}s", b.as_secs_f64())),
            tests.join(", "),
            self.wall.as_secs_f64(),
            match (self.timed_out, self.done) {
                (true, _) => " (TIMED OUT)",
                (false, false) => " (guest stopped before it finished)",
                _ => "",
            }
        )
    }
}

/// Removes terminal control sequences (SeaBIOS clears the screen) from a console line.
fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

fn boot(
    qemu: &Path,
    k: &Kernel,
    initramfs: &Path,
    vm_dir: &Path,
    tests: &[String],
    args: &VmArgs,
) -> anyhow::Result<Report> {
    let results_file = vm_dir.join(format!("results-{}.txt", k.series));
    let _ = std::fs::remove_file(&results_file);
    let mut cmd = Command::new(qemu);
    cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", &args.memory])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .args(["-serial", "mon:stdio"])
        .arg("-serial")
        // qemu option syntax: a comma in the path is written twice.
        .arg(format!(
            "file:{}",
            results_file.display().to_string().replace(',', ",,")
        ))
        .arg("-kernel")
        .arg(&k.vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", qemu.display()))?;
    let pid = child.id();
    let mut stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel::<String>();
    let prefix = format!("[{}] ", k.series);
    let reader = std::thread::spawn(move || {
        // Lines, not UTF-8 strings: a guest may print anything.
        let mut buf = Vec::new();
        let mut byte = [0u8; 4096];
        let mut console = Vec::new();
        loop {
            let n = match stdout.read(&mut byte) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&byte[..n]);
            while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                let line = printable(&String::from_utf8_lossy(&line));
                println!("{prefix}{line}");
                if line.contains("MEMTRACE-VM-") {
                    let _ = tx.send(line.clone());
                }
                console.push(line);
            }
        }
        if !buf.is_empty() {
            println!("{prefix}{}", printable(&String::from_utf8_lossy(&buf)));
        }
        console
    });

    let deadline = start + Duration::from_secs(args.timeout);
    let mut boot_time = None;
    let mut timed_out = false;
    loop {
        while let Ok(line) = rx.try_recv() {
            if boot_time.is_none() && line.contains(BOOTED) {
                boot_time = Some(start.elapsed());
            }
        }
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            eprintln!(
                "vm: {} did not finish within {}s: killing qemu (pid {pid})",
                k.series, args.timeout
            );
            let _ = child.kill(); // SIGKILL to this qemu's pid only
            let _ = child.wait();
            timed_out = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let wall = start.elapsed();
    let console = reader.join().unwrap_or_default();
    while let Ok(line) = rx.try_recv() {
        if boot_time.is_none() && line.contains(BOOTED) {
            boot_time = Some(wall);
        }
    }
    // Results port first; the console copy when the port is empty.
    let port = std::fs::read_to_string(&results_file).unwrap_or_default();
    let marker_lines: Vec<String> = if port.contains(DONE) || port.contains(RESULT) {
        port.lines().map(printable).collect()
    } else {
        console
    };
    Ok(parse_report(
        &k.series,
        &marker_lines,
        tests,
        boot_time,
        wall,
        timed_out,
    ))
}

fn parse_report(
    series: &str,
    lines: &[String],
    tests: &[String],
    boot: Option<Duration>,
    wall: Duration,
    timed_out: bool,
) -> Report {
    let mut uname = None;
    let mut done = false;
    let mut seen: BTreeMap<String, (Option<i32>, Option<f64>)> = BTreeMap::new();
    for line in lines {
        let Some(at) = line.find("MEMTRACE-VM-") else {
            continue;
        };
        let mut words = line[at..].split_whitespace();
        let marker = words.next().unwrap_or_default();
        let kernel = words.next().map(str::to_owned);
        let rest: Vec<&str> = words.collect();
        let kv = |key: &str| {
            rest.iter()
                .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        };
        match marker {
            BOOTED => uname = kernel,
            RESULT => {
                let Some(name) = rest.first() else { continue };
                let rc = kv("rc").and_then(|v| v.parse().ok());
                let secs = kv("start")
                    .zip(kv("end"))
                    .and_then(|(s, e)| Some(e.parse::<f64>().ok()? - s.parse::<f64>().ok()?));
                seen.insert((*name).to_owned(), (rc, secs));
            }
            DONE => done = true,
            _ => {}
        }
    }
    let results = tests
        .iter()
        .map(|name| {
            let (rc, secs) = seen.get(name).copied().unwrap_or((None, None));
            TestResult {
                name: name.clone(),
                rc,
                secs,
            }
        })
        .collect();
    Report {
        series: series.to_owned(),
        uname,
        boot,
        wall,
        results,
        done,
        timed_out,
    }
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

    #[test]
    fn results_from_markers() {
        let lines: Vec<String> = [
            "\x1b[2JMEMTRACE-VM-BOOTED 6.1.0-56-amd64 uptime=2.1",
            "[  9.1] oom-kill: noise MEMTRACE-VM-RESULT 6.1.0-56-amd64 oom_kill rc=0 start=2.5 end=40.0",
            "MEMTRACE-VM-RESULT 6.1.0-56-amd64 cli_errors rc=101 start=40.0 end=41.0",
            "MEMTRACE-VM-DONE 6.1.0-56-amd64 failed=1",
        ]
        .iter()
        .map(|l| printable(l))
        .collect();
        let tests = ["cli_errors", "oom_kill", "vm_only"].map(String::from);
        let r = parse_report("6.1", &lines, &tests, None, Duration::from_secs(50), false);
        assert_eq!(r.uname.as_deref(), Some("6.1.0-56-amd64"));
        assert!(r.done);
        assert_eq!(r.results[0].rc, Some(101));
        assert_eq!(r.results[1].rc, Some(0));
        assert!((r.results[1].secs.unwrap_or_default() - 37.5).abs() < 1e-9);
        assert_eq!(r.results[2].rc, None, "a binary with no result line fails");
        assert!(!r.passed());
    }

    #[test]
    fn init_script_quotes_test_args() {
        let args = VmArgs {
            kernel: vec!["all".into()],
            timeout: 1,
            memory: "1G".into(),
            exec: None,
            test_args: vec!["it's".into(), "--nocapture".into()],
        };
        let s = init_script(&args);
        assert!(s.contains(r#"--test-threads=1 'it'\''s' '--nocapture'"#), "{s}");
        assert!(s.contains("poweroff -f"));
    }
}
