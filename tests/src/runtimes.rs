//! Real container runtimes from Debian's packages (containerd + runc, docker.io), started by
//! the test in a temp dir of their own (state, root, sockets), and everything they made
//! removed on drop, even when the test fails: containers, images, mounts, cgroups, daemons.
//! Nothing is pulled: root filesystems are made from host binaries and the libraries `ldd`
//! lists.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

/// Runs a command, panicking with its stderr when it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The same, for clean-up: failures are reported and ignored.
fn run_quiet(cmd: &mut Command) {
    match cmd.stdin(Stdio::null()).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!("cleanup: {cmd:?}: {}", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => eprintln!("cleanup: {cmd:?}: {e}"),
    }
}

/// Fails loudly (CI) or says why it skips, like [`crate::ebpf_available`], when a runtime is
/// not installed: `scripts/setup.sh` installs them.
pub fn runtimes_available(test: &str, bins: &[&str]) -> bool {
    let missing: Vec<&str> = bins.iter().copied().filter(|b| which(b).is_none()).collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("MEMTRACE_REQUIRE_EBPF").is_ok_and(|v| v == "1") {
        panic!("{test}: {missing:?} not installed (scripts/setup.sh) and MEMTRACE_REQUIRE_EBPF=1");
    }
    eprintln!("\n!!! SKIPPED {test}: {missing:?} not installed (run scripts/setup.sh)\n");
    false
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
}

/// Debian's docker client: /usr/local/bin may hold another one first in PATH.
fn docker_client() -> PathBuf {
    let debian = PathBuf::from("/usr/bin/docker");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("docker")
    }
}

/// Host paths the runtimes create outside their temp dirs: containerd's shim sockets and
/// fifos (`/run/containerd/{s,fifo}`, fixed in containerd 1.6), dockerd's `/run/docker` and
/// trust key `/etc/docker/key.json`.
const HOST_LEFTOVERS: [&str; 3] = ["/run/containerd", "/run/docker", "/etc/docker/key.json"];

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One runtime test at a time (they share those host paths), and on drop, once every daemon
/// is gone, those of the paths that did not exist before are removed (directories only when
/// empty: nothing of anyone else's is touched). Take it first, so that it drops last.
pub struct RuntimeLock {
    _serial: std::sync::MutexGuard<'static, ()>,
    absent_before: Vec<&'static str>,
}

pub fn runtime_lock() -> RuntimeLock {
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    RuntimeLock {
        _serial: serial,
        absent_before: HOST_LEFTOVERS
            .into_iter()
            .filter(|p| !Path::new(p).exists())
            .collect(),
    }
}

impl Drop for RuntimeLock {
    fn drop(&mut self) {
        for p in &self.absent_before {
            let p = Path::new(p);
            if p.is_file() {
                let _ = std::fs::remove_file(p);
                continue;
            }
            let mut dirs = vec![];
            let mut stack = vec![p.to_path_buf()];
            while let Some(d) = stack.pop() {
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
                dirs.push(d);
            }
            dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
            for d in dirs {
                let _ = std::fs::remove_dir(&d);
            }
            if p.exists() {
                eprintln!("warning: {} left behind (not empty)", p.display());
            }
        }
    }
}

/// A root filesystem holding `bins` at its top and the libraries `ldd` lists for them.
pub fn rootfs_with(dir: &Path, bins: &[&Path]) {
    for bin in bins {
        let name = bin.file_name().expect("binary name");
        std::fs::copy(bin, dir.join(name)).unwrap_or_else(|e| panic!("copy {}: {e}", bin.display()));
        let ldd = Command::new("ldd").arg(bin).output().expect("ldd");
        // A static binary makes ldd fail ("not a dynamic executable"): nothing to copy.
        for lib in String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let dst = dir.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(dst.parent().expect("lib dir")).expect("mkdir lib dir");
            std::fs::copy(lib, &dst).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
        }
    }
}

/// A test's own cgroup parent, `/memtrace-test-rt-<tag>-<pid>`, that runtimes get ABSOLUTE
/// paths under (a relative one lands under the caller's own cgroup). runc makes it in every
/// v1 hierarchy; drop kills what is left and removes it from all of them, innermost first.
pub struct RuntimeCgroups {
    pub name: String,
}

impl RuntimeCgroups {
    pub fn new(tag: &str) -> Self {
        Self {
            name: format!("memtrace-test-rt-{tag}-{}", std::process::id()),
        }
    }

    /// `/<name>/<rel>`, as memtrace reports the path.
    pub fn path(&self, rel: &str) -> String {
        format!("/{}/{}", self.name, rel.trim_start_matches('/'))
    }

    fn dirs(&self) -> Vec<PathBuf> {
        let mut found = vec![];
        let hierarchies = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten();
        for h in hierarchies {
            let mut stack = vec![h.path().join(&self.name)];
            while let Some(d) = stack.pop() {
                if !d.is_dir() {
                    continue;
                }
                for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
                found.push(d);
            }
        }
        // Children before parents.
        found.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        found
    }
}

impl Drop for RuntimeCgroups {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let dirs = self.dirs();
            for d in &dirs {
                let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: kill(2) of a process inside the cgroup this test made.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                let _ = std::fs::remove_dir(d);
            }
            let left = self.dirs();
            if left.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                eprintln!("warning: could not remove {left:?}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A daemon started by the test: SIGTERM by pid on drop, SIGKILL if it lingers.
struct Daemon {
    child: Child,
    name: &'static str,
}

impl Daemon {
    fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Self {
        let log = std::fs::File::create(log).expect("daemon log");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Self { child, name }
    }

    fn wait_up(&mut self, log: &Path, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready() {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "{} exited ({st}): {}",
                    self.name,
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "{} not up in 30 s", self.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: signals to the daemon this test spawned, by its pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: {} did not stop on SIGTERM: SIGKILL", self.name);
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Unmounts whatever is still mounted under `dir` (snapshots, shm, rootfs), deepest first.
fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        run_quiet(Command::new("umount").arg("-l").arg(p));
    }
}

/// containerd with its own root, state and sockets in a temp dir; its CRI plugin off.
/// Containers made through [`Containerd::ctr`] in namespaces passed to [`Containerd::track`]
/// are killed and deleted on drop.
pub struct Containerd {
    pub dir: tempfile::TempDir,
    namespaces: Vec<String>,
    daemon: Option<Daemon>,
}

impl Containerd {
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("memtrace-ctrd-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("containerd.sock").display(),
        );
        std::fs::write(d.join("config.toml"), config).expect("containerd config");
        let log = d.join("containerd.log");
        let mut daemon = Daemon::spawn(
            "containerd",
            Command::new("containerd")
                .arg("--config")
                .arg(d.join("config.toml")),
            &log,
        );
        let mut this = Self {
            dir,
            namespaces: vec![],
            daemon: None,
        };
        daemon.wait_up(&log, || {
            this.ctr("default")
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        this.daemon = Some(daemon);
        this
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    /// Where this containerd keeps task bundles (`<ns>/<id>/config.json` below).
    pub fn task_dir(&self) -> PathBuf {
        self.dir.path().join("state/io.containerd.runtime.v2.task")
    }

    /// `ctr -a <socket> -n <namespace>`.
    pub fn ctr(&self, namespace: &str) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(self.socket()).args(["-n", namespace]);
        c
    }

    /// `ctr run --runc-root <temp dir>` in `namespace`: runc's state stays in the temp dir.
    pub fn ctr_run(&self, namespace: &str) -> Command {
        let mut c = self.ctr(namespace);
        c.arg("run").arg("--runc-root").arg(self.dir.path().join("runc"));
        c
    }

    /// Containers of `namespace` are removed on drop.
    pub fn track(&mut self, namespace: &str) {
        if !self.namespaces.iter().any(|n| n == namespace) {
            self.namespaces.push(namespace.to_owned());
        }
    }

    /// Kills and deletes one container (task, then container).
    pub fn remove(&self, namespace: &str, id: &str) {
        // Fails when the task is already gone (the OOM killer's work): not worth a word.
        let _ = self
            .ctr(namespace)
            .args(["task", "kill", "-s", "SIGKILL", id])
            .output();
        // A task killed a moment ago may still be stopping: `rm -f` waits for it.
        run_quiet(self.ctr(namespace).args(["task", "rm", "-f", id]));
        run_quiet(self.ctr(namespace).args(["container", "rm", id]));
    }

    fn list(&self, namespace: &str, what: &str) -> Vec<String> {
        self.ctr(namespace)
            .args([what, "ls", "-q"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            for id in self.list(ns, "containers") {
                self.remove(ns, &id);
            }
            for img in self.list(ns, "images") {
                run_quiet(self.ctr(ns).args(["images", "rm", &img]));
            }
        }
        drop(self.daemon.take());
        unmount_under(self.dir.path());
    }
}

/// dockerd 20.10 (Debian's docker.io) on a [`Containerd`], with its own data root, exec root
/// and socket in a temp dir; no bridge, no iptables (loopback-free containers: `--network
/// none`). Its containers' cgroups go under `cgroup_parent` (absolute). Drop removes its
/// containers and images, stops it, and removes the `/sys/fs/cgroup/*/docker` directories it
/// made, if any.
pub struct Dockerd {
    pub dir: tempfile::TempDir,
    daemon: Option<Daemon>,
    docker_cgroups_before: Vec<PathBuf>,
}

fn docker_cgroup_dirs() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|h| h.path().join("docker"))
        .filter(|d| d.is_dir())
        .collect()
}

impl Dockerd {
    pub fn start(containerd: &Containerd, cgroup_parent: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("memtrace-dockerd-")
            .tempdir()
            .expect("tempdir");
        let d = dir.path();
        let before = docker_cgroup_dirs();
        let log = d.join("dockerd.log");
        let mut daemon = Daemon::spawn(
            "dockerd",
            Command::new("dockerd")
                .arg("--containerd")
                .arg(containerd.socket())
                .arg("--data-root")
                .arg(d.join("data"))
                .arg("--exec-root")
                .arg(d.join("exec"))
                .arg("--pidfile")
                .arg(d.join("dockerd.pid"))
                .arg("-H")
                .arg(format!("unix://{}", d.join("docker.sock").display()))
                .args(["--iptables=false", "--ip-masq=false", "--bridge=none"])
                .args(["--cgroup-parent", cgroup_parent]),
            &log,
        );
        let mut this = Self {
            dir,
            daemon: None,
            docker_cgroups_before: before,
        };
        daemon.wait_up(&log, || {
            this.docker()
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        this.daemon = Some(daemon);
        this
    }

    pub fn data_root(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `docker -H unix://<socket>`.
    pub fn docker(&self) -> Command {
        let mut c = Command::new(docker_client());
        c.arg("-H").arg(format!(
            "unix://{}",
            self.dir.path().join("docker.sock").display()
        ));
        c
    }

    /// `docker import` of a root filesystem (a tar made here): no registry involved.
    pub fn import(&self, rootfs: &Path, tag: &str) {
        let tar = self.dir.path().join("rootfs.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        run(self.docker().arg("import").arg(&tar).arg(tag));
        let _ = std::fs::remove_file(tar);
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = self.docker().args(["ps", "-aq"]).output();
        for id in ids
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .lines()
        {
            run_quiet(self.docker().args(["rm", "-f", id]));
        }
        let imgs = self.docker().args(["images", "-q"]).output();
        for img in imgs
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
            .lines()
        {
            run_quiet(self.docker().args(["rmi", "-f", img]));
        }
        drop(self.daemon.take());
        unmount_under(self.dir.path());
        for d in docker_cgroup_dirs() {
            if !self.docker_cgroups_before.contains(&d) && std::fs::remove_dir(&d).is_err() {
                eprintln!("warning: could not remove {}", d.display());
            }
        }
    }
}
