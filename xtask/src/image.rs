//! `cargo xtask image`: the container image deploy/daemonset.yaml runs, built offline. The
//! release binary and the libraries it links go into a root filesystem
//! (deploy/image/rootfs.sh), which the Containerfile copies onto `scratch`: nothing is pulled.
//! Docker builds it: the host's dockerd when one answers, else a private dockerd (Debian's
//! docker.io) started in a temp dir and stopped after. The image is also saved as a tarball,
//! `target/image/memtrace-<version>.tar`, for `docker load` or `ctr -n k8s.io images import`
//! on the nodes, or to push to a registry.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

#[derive(Debug, clap::Args)]
pub struct ImageArgs {
    /// Image reference to tag (deploy/daemonset.yaml names memtrace:<version>).
    #[arg(long, default_value = concat!("memtrace:", env!("CARGO_PKG_VERSION")))]
    tag: String,
    /// Use this memtrace binary instead of building the release one.
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_owned()
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Debian's docker client (/usr/local/bin may hold another first in PATH).
fn docker_bin() -> &'static str {
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

/// A dockerd this task started: its own data root, exec root and socket in a temp dir;
/// stopped by pid on drop, with the host paths it made that did not exist before.
struct PrivateDockerd {
    child: Child,
    dir: PathBuf,
    absent_before: Vec<&'static str>,
}

/// Host paths dockerd 20.10 makes whatever its flags: the plugin directory and trust key.
const DOCKERD_HOST_PATHS: [&str; 2] = ["/etc/docker/key.json", "/run/docker"];

impl PrivateDockerd {
    fn start() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("memtrace-image-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let absent_before = DOCKERD_HOST_PATHS
            .into_iter()
            .filter(|p| !Path::new(p).exists())
            .collect();
        let log = std::fs::File::create(dir.join("dockerd.log"))?;
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .args(["--iptables=false", "--ip-masq=false", "--bridge=none"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start dockerd (apt-get install docker.io; scripts/setup.sh does)")?;
        let mut d = Self {
            child,
            dir,
            absent_before,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d
            .docker()
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?
            .success()
        {
            if let Some(st) = d.child.try_wait()? {
                let log = std::fs::read_to_string(d.dir.join("dockerd.log")).unwrap_or_default();
                bail!("dockerd exited ({st}): {log}");
            }
            if Instant::now() > deadline {
                bail!("dockerd not up in 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    fn docker(&self) -> Command {
        let mut c = Command::new(docker_bin());
        c.arg("-H")
            .arg(format!("unix://{}", self.dir.join("docker.sock").display()));
        c
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: SIGTERM to the dockerd this task spawned, by its pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            if Instant::now() > deadline {
                eprintln!("image: dockerd did not stop: SIGKILL");
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Whatever dockerd left mounted in its dirs (overlay layers, its containerd's state).
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|p| Path::new(p).starts_with(&self.dir))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = Command::new("umount").arg("-l").arg(p).status();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("image: could not remove {}: {e}", self.dir.display());
        }
        for p in &self.absent_before {
            let p = Path::new(p);
            // Only what is empty (a directory) or ours (the key dockerd just made).
            let _ = if p.is_dir() {
                remove_empty_tree(p)
            } else {
                std::fs::remove_file(p)
            };
        }
    }
}

fn remove_empty_tree(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = remove_empty_tree(&e.path());
        }
    }
    std::fs::remove_dir(dir)
}

pub fn run_image(args: &ImageArgs) -> anyhow::Result<()> {
    let root = root();
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => {
            eprintln!("image: cargo build --release -p memtrace");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            run(Command::new(cargo).current_dir(&root).args([
                "build",
                "--release",
                "-p",
                "memtrace",
                "--bin",
                "memtrace",
            ]))?;
            root.join("target/release/memtrace")
        }
    };
    let out = root.join("target/image");
    let context = out.join("context");
    if context.exists() {
        std::fs::remove_dir_all(&context)?;
    }
    std::fs::create_dir_all(&context)?;
    run(Command::new(root.join("deploy/image/rootfs.sh"))
        .arg(&binary)
        .arg(context.join("rootfs")))?;

    // The host's dockerd if one answers, else a private one for this build.
    let host = Command::new(docker_bin())
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let private = if host {
        None
    } else {
        Some(PrivateDockerd::start()?)
    };
    let docker = || match &private {
        Some(d) => d.docker(),
        None => Command::new(docker_bin()),
    };
    eprintln!(
        "image: docker build -t {} ({})",
        args.tag,
        if host { "host dockerd" } else { "private dockerd" }
    );
    let t = Instant::now();
    run(docker()
        .args(["build", "--quiet", "-t", &args.tag, "-f"])
        .arg(root.join("Containerfile"))
        .arg(&context))?;
    let tar = out.join(format!("{}.tar", args.tag.replace([':', '/'], "-")));
    run(docker().args(["save", "-o"]).arg(&tar).arg(&args.tag))?;
    let size: u64 = run(docker().args(["image", "inspect", "-f", "{{.Size}}", &args.tag]))?
        .parse()
        .context("image size")?;
    let tar_size = std::fs::metadata(&tar)?.len();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "image {}: {:.1} MiB (built in {:.1} s); saved to {} ({:.1} MiB){}",
        args.tag,
        mib(size),
        t.elapsed().as_secs_f64(),
        tar.display(),
        mib(tar_size),
        if host {
            ""
        } else {
            "; load it with `docker load -i` or `ctr -n k8s.io images import`"
        }
    );
    Ok(())
}
