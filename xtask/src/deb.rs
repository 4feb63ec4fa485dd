//! `cargo xtask deb [--check]`: the Debian package, built with `dpkg-deb` from a tree staged
//! under target/debian: the release binary, the systemd unit, the example config (a conffile),
//! man pages (`memtrace manpages`, from the same clap definitions as `--help`) and the alerting
//! rules as examples. `--check` installs it with `dpkg -i`, runs `memtrace probes` from it,
//! checks the unit with `systemd-analyze verify`, then removes and purges it, checking that
//! nothing is left.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};

#[derive(Debug, clap::Args)]
pub struct DebArgs {
    /// Then install it, run it, verify the unit, remove and purge it (needs root; refuses if a
    /// memtrace package is already installed).
    #[arg(long)]
    check: bool,
}

const UNIT: &str = "lib/systemd/system/memtrace.service";
const CONFIG: &str = "etc/memtrace/memtrace.toml";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `c`; its stdout, or an error with both streams.
fn output(c: &mut Command) -> anyhow::Result<String> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{c:?}: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

fn install(src: &Path, dst: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(d) = dst.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::copy(src, dst).with_context(|| format!("{} -> {}", src.display(), dst.display()))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write(dst: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(d) = dst.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(dst, text).with_context(|| format!("writing {}", dst.display()))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The newest glibc symbol version the binary needs: its `libc6` dependency.
fn glibc_needed(bin: &Path) -> anyhow::Result<String> {
    let syms = output(Command::new("objdump").arg("-T").arg(bin))?;
    let mut best: Option<(u32, u32)> = None;
    for v in syms.split("GLIBC_").skip(1) {
        let v: String = v
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut it = v.split('.').filter_map(|p| p.parse::<u32>().ok());
        if let (Some(a), Some(b)) = (it.next(), it.next()) {
            best = best.max(Some((a, b)));
        }
    }
    let (a, b) = best.context("no GLIBC_ symbol versions in the binary")?;
    Ok(format!("{a}.{b}"))
}

/// The packaged unit: the repository's, with the binary at /usr/bin.
fn unit_text(repo_unit: &str) -> String {
    let body: Vec<&str> = repo_unit.lines().skip_while(|l| l.starts_with('#')).collect();
    format!(
        "# memtrace as a systemd service, from the memtrace Debian package.\n\
         # Edit /etc/memtrace/memtrace.toml, then: systemctl enable --now memtrace\n\
         # journalctl -u memtrace -f        # memtrace's own log (stderr)\n{}\n",
        body.join("\n")
            .replace("/usr/local/bin/memtrace", "/usr/bin/memtrace")
    )
}

pub fn build() -> anyhow::Result<PathBuf> {
    let root = root();
    let t = Instant::now();
    output(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args(["build", "--release", "--package", "memtrace", "--bin", "memtrace"]),
    )?;
    let bin = root.join("target/release/memtrace");
    let version = output(Command::new(&bin).arg("--version"))?
        .trim()
        .strip_prefix("memtrace ")
        .context("memtrace --version")?
        .to_owned();
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_owned();
    let name = format!("memtrace_{version}_{arch}");
    let out = root.join("target/debian");
    let stage = out.join(&name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    install(&bin, &stage.join("usr/bin/memtrace"), 0o755)?;
    output(
        Command::new("strip")
            .arg("--strip-unneeded")
            .arg(stage.join("usr/bin/memtrace")),
    )?;
    let repo_unit = std::fs::read_to_string(root.join("deploy/memtrace.service"))?;
    write(&stage.join(UNIT), &unit_text(&repo_unit), 0o644)?;
    install(&root.join("memtrace.example.toml"), &stage.join(CONFIG), 0o644)?;
    let man = stage.join("usr/share/man/man1");
    output(Command::new(&bin).arg("manpages").arg(&man))?;
    for page in std::fs::read_dir(&man)? {
        output(Command::new("gzip").args(["-9n"]).arg(page?.path()))?;
    }
    let doc = stage.join("usr/share/doc/memtrace");
    for (src, dst) in [
        ("README.md", "README.md"),
        (
            "deploy/prometheus/memtrace-rules.yaml",
            "examples/memtrace-rules.yaml",
        ),
        (
            "deploy/prometheus/memtrace-prometheusrule.yaml",
            "examples/memtrace-prometheusrule.yaml",
        ),
        ("deploy/daemonset.yaml", "examples/daemonset.yaml"),
    ] {
        install(&root.join(src), &doc.join(dst), 0o644)?;
    }
    write(
        &doc.join("copyright"),
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: memtrace\n\nFiles: *\nLicense: MIT or Apache-2.0\n",
        0o644,
    )?;
    let size_kib = output(Command::new("du").args(["-sk"]).arg(&stage))?
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .to_owned();
    let glibc = glibc_needed(&stage.join("usr/bin/memtrace"))?;
    write(
        &stage.join("DEBIAN/control"),
        &format!(
            "Package: memtrace\nVersion: {version}\nArchitecture: {arch}\n\
             Maintainer: memtrace developers <memtrace@localhost>\n\
             Depends: libc6 (>= {glibc})\nSection: admin\nPriority: optional\n\
             Installed-Size: {size_kib}\n\
             Description: eBPF OOM-kill tracer\n \
             Reports every OOM-killed task within milliseconds, with its cgroup, container\n \
             and pod, the memory at the kill and why it happened, to stdout, journald,\n \
             webhooks, Alertmanager, OTLP and Prometheus.\n"
        ),
        0o644,
    )?;
    write(&stage.join("DEBIAN/conffiles"), &format!("/{CONFIG}\n"), 0o644)?;
    // Not started on install: the config wants a look first (and PID 1 may not be systemd).
    write(
        &stage.join("DEBIAN/postinst"),
        "#!/bin/sh\nset -e\nif [ \"$1\" = configure ] && [ -d /run/systemd/system ]; then\n  \
         systemctl daemon-reload || true\nfi\n",
        0o755,
    )?;
    write(
        &stage.join("DEBIAN/postrm"),
        "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then\n  systemctl daemon-reload || true\nfi\n\
         if [ \"$1\" = purge ]; then\n  rm -rf /var/log/memtrace\n  rmdir /etc/memtrace 2>/dev/null || true\nfi\n",
        0o755,
    )?;
    let deb = out.join(format!("{name}.deb"));
    output(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    let bytes = std::fs::metadata(&deb)?.len();
    eprintln!(
        "xtask deb: {} ({} KiB, installed {size_kib} KiB) in {:.0?}",
        deb.display(),
        bytes / 1024,
        t.elapsed()
    );
    Ok(deb)
}

fn installed_status() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "memtrace"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
        .filter(|s| !s.contains("not-installed"))
}

/// Purges the package if a check step fails half-way.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "memtrace"]).output();
    }
}

fn check(deb: &Path) -> anyhow::Result<()> {
    if let Some(s) = installed_status() {
        bail!("a memtrace package is already installed ({s}): not touching it");
    }
    let t = Instant::now();
    let guard = Purge;
    output(Command::new("dpkg").arg("-i").arg(deb))?;
    let probes = output(Command::new("/usr/bin/memtrace").arg("probes"))?;
    ensure!(probes.contains("oom_victim"), "memtrace probes: {probes}");
    eprintln!("xtask deb: installed; /usr/bin/memtrace probes:\n{probes}");
    let verify = Command::new("systemd-analyze")
        .args(["verify", &format!("/{UNIT}")])
        .output()?;
    let said = String::from_utf8_lossy(&verify.stderr);
    ensure!(
        verify.status.success() && !said.contains("memtrace.service"),
        "systemd-analyze verify: {}\n{said}",
        verify.status
    );
    let page = output(Command::new("zcat").arg("/usr/share/man/man1/memtrace-watch.1.gz"))?;
    ensure!(page.contains(".TH memtrace-watch"), "man page: {page}");
    ensure!(Path::new("/").join(CONFIG).is_file(), "no /{CONFIG}");

    output(Command::new("dpkg").args(["-r", "memtrace"]))?;
    ensure!(
        !Path::new("/usr/bin/memtrace").exists(),
        "binary left after dpkg -r"
    );
    ensure!(!Path::new("/").join(UNIT).exists(), "unit left after dpkg -r");
    ensure!(
        installed_status().is_some_and(|s| s.contains("config-files")),
        "after dpkg -r only the conffile stays"
    );
    output(Command::new("dpkg").args(["-P", "memtrace"]))?;
    ensure!(installed_status().is_none(), "still known to dpkg after purge");
    ensure!(
        !Path::new("/etc/memtrace").exists(),
        "/etc/memtrace left after purge"
    );
    std::mem::forget(guard);
    eprintln!(
        "xtask deb: dpkg -i, memtrace probes, systemd-analyze verify, dpkg -r, dpkg -P: ok in {:.1?}",
        t.elapsed()
    );
    Ok(())
}

pub fn run(args: &DebArgs) -> anyhow::Result<()> {
    let deb = build()?;
    if args.check {
        check(&deb)?;
    }
    Ok(())
}
