//! The guest's initramfs: busybox, memtrace, the test binaries and their libraries, and /init.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail, ensure};

use super::{BOOTED, DONE, RESULT, VmArgs, build::Built, find_tool, shell_quote};

/// What `memtrace probes` must select on each stock Debian kernel (kprobes and fentry on), by
/// release prefix, first match: the probes test compares, so a hook that silently fails to
/// attach fails in the VM too. From real runs (README "Kernels").
const EXPECT_HOOKS: &[(&str, &str)] = &[
    // 5.10: mark_victim passes `int pid` (no task pointer) and its record has the pid only, so
    // fentry on mark_oom_victim() carries the victim; the charge function is still try_charge.
    (
        "5.10.",
        "oom_victim=fentry,oom_context=fentry,cgroup_mkdir=tracepoint,user_kill=tp_btf,charge=fentry,reclaim_begin=tp_btf,reclaim_end=tp_btf,exec=tracepoint,thp_fault=fentry",
    ),
    (
        "",
        "oom_victim=tp_btf,oom_context=fentry,cgroup_mkdir=tracepoint,user_kill=tp_btf,charge=fentry,reclaim_begin=tp_btf,reclaim_end=tp_btf,exec=tracepoint,thp_fault=fentry",
    ),
];

/// `case` arms setting $hooks from the running kernel's release ($K).
fn expect_hooks_case() -> String {
    let arms: Vec<String> = EXPECT_HOOKS
        .iter()
        .map(|(prefix, hooks)| format!("  {prefix}*) hooks={hooks};;"))
        .collect();
    format!("case $K in\n{}\nesac\n", arms.join("\n"))
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

pub(super) fn build_initramfs(stage: &Path, out: &Path, built: &Built, args: &VmArgs) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(stage);
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "etc", "root", "tests",
    ] {
        std::fs::create_dir_all(stage.join(d))?;
    }
    let busybox = find_tool("busybox")?;
    let bpftool = find_tool("bpftool")?;
    let setpriv = find_tool("setpriv")?;
    // util-linux's: bad_input uses --propagation, which busybox's unshare may lack.
    let unshare = find_tool("unshare")?;
    let mut bins = vec![
        (busybox, "/bin/busybox".to_owned()),
        (built.memtrace.clone(), "/bin/memtrace".to_owned()),
        (built.alloc.clone(), "/bin/memtrace-alloc".to_owned()),
        // In /bin, where busybox --install (which never overwrites) would put its own setpriv.
        (bpftool, "/bin/bpftool".to_owned()),
        (setpriv, "/bin/setpriv".to_owned()),
        (unshare, "/bin/unshare".to_owned()),
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
pub(super) fn init_script(args: &VmArgs) -> String {
    let hooks_case = expect_hooks_case();
    let test_args: Vec<String> = args.test_args.iter().map(|a| shell_quote(a)).collect();
    let body = match &args.exec {
        Some(cmd) => format!("run_one exec sh -c {}\n", shell_quote(cmd)),
        // The probes test prints what this kernel offers memtrace: shown in the log, always
        // (README "Kernels" is taken from it).
        None => format!(
            "for t in /tests/*; do\n  case $t in */probes) show=--nocapture;; *) show=;; esac\n  run_one \"${{t##*/}}\" \"$t\" --test-threads=1 $show {}\ndone\n",
            test_args.join(" ")
        ),
    };
    format!(
        r#"#!/bin/busybox sh
# Generated by `cargo xtask vm` (xtask/src/vm/initramfs.rs).
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
# Loopback only (no NIC): the metrics endpoint and test servers listen on 127.0.0.1.
ip link set lo up
# Latency budget multiplier: set by the host per accelerator (kernel command line).
scale=10
for w in $(cat /proc/cmdline); do case $w in memtrace.time_scale=*) scale=${{w#*=}};; esac; done
K=$(uname -r)
{hooks_case}up() {{ cut -d' ' -f1 /proc/uptime; }}
# Markers go to the console and to the second serial port (a file on the host).
say() {{ echo "$*"; echo "$*" > /dev/ttyS1; }}
say "{BOOTED} $K uptime=$(up) memory=$(cat /sys/fs/cgroup/cgroup.controllers | tr ' ' ,)"
failed=0
run_one() {{
  name=$1; shift
  start=$(up)
  echo "=== $name ($K)"
  env MEMTRACE_BIN=/bin/memtrace MEMTRACE_ALLOC=/bin/memtrace-alloc MEMTRACE_REQUIRE_EBPF=1 \
    MEMTRACE_TEST_TIME_SCALE=$scale RUST_BACKTRACE=1 \
    MEMTRACE_EXPECT_HOOKS=$hooks MEMTRACE_EXPECT_OOM_CONTEXT=1 "$@"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_script_quotes_test_args() {
        let args = VmArgs {
            kernel: vec!["all".into()],
            timeout: 1,
            accel: crate::vm::Accel::Tcg,
            memory: "1G".into(),
            exec: None,
            only: vec![],
            jobs: None,
            test_args: vec!["it's".into(), "--nocapture".into()],
        };
        let s = init_script(&args);
        assert!(
            s.contains(r#"--test-threads=1 $show 'it'\''s' '--nocapture'"#),
            "{s}"
        );
        assert!(s.contains("poweroff -f"));
    }
}
