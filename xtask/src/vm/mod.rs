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
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

mod apt;
mod boot;
mod build;
mod initramfs;
mod kernels;
mod report;

#[derive(Debug, clap::Args)]
pub struct VmArgs {
    /// Kernel series to boot: 6.1, 6.12, ..., or "all" (every series >= 6.1 in the apt sources).
    /// Repeatable, or comma-separated.
    #[arg(long, default_value = "all", value_delimiter = ',')]
    kernel: Vec<String>,
    /// Time limit for one kernel (boot, every test binary, power-off), in seconds.
    /// Under TCG a kernel takes 8-14 min on a 2-core host (two guests at once, more under load).
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    /// CPU emulation: kvm (hardware virtualization, needs a usable /dev/kvm), tcg (qemu's
    /// emulator, anywhere, several times slower) or auto (kvm when /dev/kvm opens).
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    accel: Accel,
    /// Guest memory (qemu -m).
    #[arg(long, default_value = "1G")]
    memory: String,
    /// Run this shell command in the guest instead of the tests (debugging), e.g.
    /// --exec 'cat /sys/kernel/tracing/events/oom/mark_victim/format'.
    #[arg(long)]
    exec: Option<String>,
    /// Run only these integration test binaries (tests/tests/NAME.rs), e.g. --test oom_kill,why.
    /// Repeatable, or comma-separated; default: every binary that runs in a guest.
    #[arg(long = "test", value_delimiter = ',')]
    only: Vec<String>,
    /// Guests booted at once (each has one vCPU, so one per host CPU keeps them from slowing
    /// each other); default: the host's CPUs, at most one per kernel.
    #[arg(long)]
    jobs: Option<usize>,
    /// Arguments for every test binary, e.g. a test name filter or --nocapture.
    #[arg(last = true)]
    test_args: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    /// `auto` resolved: KVM when /dev/kvm opens read-write (what qemu needs).
    fn resolve(self) -> Self {
        match self {
            Self::Auto => {
                let kvm = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/kvm");
                match kvm {
                    Ok(_) => Self::Kvm,
                    Err(e) => {
                        eprintln!("vm: /dev/kvm: {e}: emulating the CPU (TCG), several times slower");
                        Self::Tcg
                    }
                }
            }
            other => other,
        }
    }

    /// qemu's -accel and -cpu.
    fn qemu_args(self) -> [&'static str; 4] {
        match self {
            Self::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Self::Auto | Self::Tcg => ["-accel", "tcg", "-cpu", "max"],
        }
    }

    /// Latency budgets in the tests are multiplied by this in the guest: TCG emulates the
    /// CPU, several times slower than the host (memtrace's emit delay reaches ~0.2 s there);
    /// under KVM the guest's one vCPU still competes with the host's load.
    fn time_scale(self) -> u32 {
        match self {
            Self::Kvm => 3,
            Self::Auto | Self::Tcg => 10,
        }
    }
}

impl Accel {
    /// A guest that has not reached /init by then never will: under TCG a Debian kernel
    /// reaches it in ~6 s (~30 s on a loaded host). Some hosts' /dev/kvm opens but cannot
    /// run a guest (this one's: the 5.10 kernel hangs in its decompressor, 7.2 stops with
    /// "KVM internal error ... emulation failure"), so KVM gets a short limit and TCG takes over.
    fn boot_limit(self) -> Duration {
        Duration::from_secs(match self {
            Self::Kvm => 30,
            Self::Auto | Self::Tcg => 180,
        })
    }
}

/// Marker lines the guest's /init prints (on the console and on the results port).
const BOOTED: &str = "MEMTRACE-VM-BOOTED";
const RESULT: &str = "MEMTRACE-VM-RESULT";
const DONE: &str = "MEMTRACE-VM-DONE";

pub fn run(args: &VmArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let root = workspace_root()?;
    let vm_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), PathBuf::from)
        .join("vm");
    std::fs::create_dir_all(&vm_dir).with_context(|| format!("mkdir {}", vm_dir.display()))?;
    let qemu = find_tool("qemu-system-x86_64")?;
    let accel = args.accel.resolve();

    let apt = apt::PrivateApt::open(&vm_dir.join("apt"))?;
    let kernels = kernels::resolve_kernels(&args.kernel, &apt, &vm_dir.join("kernels"))?;
    let built = build::build(&root, &args.only)?;
    let tests: Vec<String> = match &args.exec {
        Some(_) => vec!["exec".into()],
        None => built.tests.iter().map(|(name, _)| name.clone()).collect(),
    };
    // This run's own image and result files: two runs (another kernel, --exec) can overlap.
    let run_dir = vm_dir.join(format!("run-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir)?;
    let initramfs = run_dir.join("initramfs.cpio");
    let t = Instant::now();
    initramfs::build_initramfs(&run_dir.join("initramfs.d"), &initramfs, &built, args)?;
    eprintln!(
        "vm: initramfs {} ({} MiB) in {:.1?}",
        initramfs.display(),
        std::fs::metadata(&initramfs)?.len() >> 20,
        t.elapsed()
    );

    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, kernels.len().max(1));
    // KVM that cannot boot a guest is found out once: TCG from then on, for every guest.
    let accel = std::sync::Mutex::new(accel);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: std::sync::Mutex<Vec<Option<anyhow::Result<report::Report>>>> =
        std::sync::Mutex::new(kernels.iter().map(|_| None).collect());
    let boot_one = |k: &kernels::Kernel| -> anyhow::Result<report::Report> {
        let a = *accel.lock().map_err(|_| anyhow::anyhow!("accel lock"))?;
        eprintln!("vm: === booting {} ({}, {a:?})", k.series, k.package);
        let mut report = boot::boot(&qemu, a, k, &initramfs, &run_dir, &tests, args)?;
        if report.boot.is_none() && a == Accel::Kvm && args.accel == Accel::Auto {
            eprintln!("vm: KVM cannot boot guests on this host: TCG from now on");
            *accel.lock().map_err(|_| anyhow::anyhow!("accel lock"))? = Accel::Tcg;
            report = boot::boot(&qemu, Accel::Tcg, k, &initramfs, &run_dir, &tests, args)?;
        }
        eprintln!("vm: {}", report.line());
        Ok(report)
    };
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(k) = kernels.get(i) else { break };
                    let r = boot_one(k);
                    if let Ok(mut slots) = slots.lock() {
                        slots[i] = Some(r);
                    }
                }
            });
        }
    });
    let mut reports = Vec::new();
    for r in slots.into_inner().map_err(|_| anyhow::anyhow!("results lock"))? {
        reports.push(r.context("a guest thread ended without a result")??);
    }
    let _ = std::fs::remove_dir_all(&run_dir);
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

pub(super) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub(super) fn run_ok(mut c: Command) -> anyhow::Result<()> {
    let status = c.status().with_context(|| format!("running {c:?}"))?;
    ensure!(status.success(), "{c:?} failed: {status}");
    Ok(())
}

pub(super) fn output_ok(mut c: Command) -> anyhow::Result<String> {
    let out = c
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {c:?}"))?;
    ensure!(out.status.success(), "{c:?} failed: {}", out.status);
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A program on PATH (or in the sbin directories a non-root PATH lacks).
pub(super) fn find_tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found: run scripts/setup.sh"))
}

pub(super) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
