//! apt with a private sources list and state, for kernel downloads only: the suites that carry
//! the matrix's kernels are added for `apt-cache` and `apt-get download`, and the machine's own
//! apt configuration (sources, lists, cache) is never read for sources nor written.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, ensure};

/// Where each kernel series of the matrix comes from (Debian's archive, signed by the keys of
/// the `debian-archive-keyring` package):
/// bullseye: 5.10 (`linux-image-5.10.0-N-amd64`; the point-release suite, whose 5.10.0-32 still
/// has the pid-only `mark_victim` record); bookworm and bookworm-security: 6.1 and 6.12;
/// sid: the newest kernel Debian builds (7.x).
const SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main
";

/// Package lists younger than this are used without `apt-get update`.
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// apt-get / apt-cache confined to `dir` (sources.list, lists/, cache/).
pub(super) struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    /// Writes the sources list and refreshes the package lists when they are missing or stale.
    /// An update that fails (no network) is not fatal while older lists or cached kernels exist.
    pub(super) fn open(dir: &Path) -> anyhow::Result<Self> {
        for d in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(dir.join(d)).with_context(|| format!("mkdir {}", dir.display()))?;
        }
        let apt = Self { dir: dir.to_owned() };
        let sources = dir.join("sources.list");
        let changed = std::fs::read_to_string(&sources).ok().as_deref() != Some(SOURCES);
        if changed {
            std::fs::write(&sources, SOURCES)?;
        }
        if changed || apt.lists_age().is_none_or(|age| age > LISTS_MAX_AGE) {
            let t = Instant::now();
            let mut c = apt.command("apt-get");
            c.args(["update", "-q"]).stdout(Stdio::null());
            match c.status() {
                Ok(s) if s.success() => {
                    std::fs::write(dir.join("updated"), "")?;
                    eprintln!(
                        "vm: apt-get update (private lists in {}) {:.1?}",
                        dir.display(),
                        t.elapsed()
                    );
                }
                other => eprintln!(
                    "vm: apt-get update failed ({other:?}): using the lists and kernels already cached"
                ),
            }
        }
        Ok(apt)
    }

    /// Time since the last successful update (apt dates the lists themselves by the archive's
    /// Last-Modified, so a stamp of our own says when they were fetched); `None`: never.
    fn lists_age(&self) -> Option<Duration> {
        let stamp = std::fs::metadata(self.dir.join("updated"))
            .ok()?
            .modified()
            .ok()?;
        Some(SystemTime::now().duration_since(stamp).unwrap_or_default())
    }

    /// `apt-get`/`apt-cache` with the private configuration.
    fn command(&self, program: &str) -> Command {
        let d = |sub: &str| self.dir.join(sub).display().to_string();
        let mut c = Command::new(program);
        c.arg("-o")
            .arg(format!("Dir::Etc::SourceList={}", d("sources.list")))
            .args(["-o", "Dir::Etc::SourceParts=/dev/null"])
            .arg("-o")
            .arg(format!("Dir::State::Lists={}", d("lists")))
            .arg("-o")
            .arg(format!("Dir::Cache={}", d("cache")))
            // Downloads land in directories of ours that the _apt user cannot write.
            .args(["-o", "APT::Sandbox::User=root"]);
        c
    }

    /// Package names matching `regex` (apt-cache search --names-only).
    pub(super) fn search(&self, regex: &str) -> Vec<String> {
        let mut c = self.command("apt-cache");
        c.args(["search", "--names-only", regex]).stderr(Stdio::null());
        let Ok(out) = c.output() else { return vec![] };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(" - ").next())
            .map(|n| n.trim().to_owned())
            .collect()
    }

    /// `apt-cache policy` has a candidate version: the package can be downloaded.
    pub(super) fn has_candidate(&self, package: &str) -> bool {
        let mut c = self.command("apt-cache");
        c.args(["policy", package]).stderr(Stdio::null());
        c.output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| l.trim().strip_prefix("Candidate:"))
                    .any(|c| c.trim() != "(none)")
            })
            .unwrap_or(false)
    }

    /// The packages `package` depends on (its candidate version's Depends, alternatives
    /// flattened, version constraints dropped).
    pub(super) fn depends(&self, package: &str) -> anyhow::Result<Vec<String>> {
        let mut c = self.command("apt-cache");
        c.args(["show", "--no-all-versions", package])
            .stderr(Stdio::null());
        let out = c.output().context("apt-cache show")?;
        ensure!(out.status.success(), "apt-cache show {package}: {}", out.status);
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .filter_map(|l| l.strip_prefix("Depends:"))
            .flat_map(|d| d.split([',', '|']))
            .filter_map(|d| d.split_whitespace().next().map(str::to_owned))
            .collect())
    }

    /// Downloads the .deb files of `packages` into `to` (nothing is installed).
    pub(super) fn download(&self, packages: &[String], to: &Path) -> anyhow::Result<()> {
        let mut c = self.command("apt-get");
        c.args(["download", "-q"]).args(packages).current_dir(to);
        let status = c.status().context("apt-get download")?;
        ensure!(
            status.success(),
            "apt-get download {} failed ({status}): network and the Debian archive are needed once per kernel",
            packages.join(" ")
        );
        Ok(())
    }
}
