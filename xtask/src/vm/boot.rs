//! One qemu boot: the kernel, the initramfs, the console and the results port.

use std::{
    io::Read as _,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    Accel, BOOTED, DONE, RESULT, VmArgs,
    kernels::Kernel,
    report::{Report, parse_report, printable},
};

pub(super) fn boot(
    qemu: &Path,
    accel: Accel,
    k: &Kernel,
    initramfs: &Path,
    vm_dir: &Path,
    tests: &[String],
    args: &VmArgs,
) -> anyhow::Result<Report> {
    let results_file = vm_dir.join(format!("results-{}.txt", k.series));
    let _ = std::fs::remove_file(&results_file);
    let mut cmd = Command::new(qemu);
    cmd.args(accel.qemu_args())
        .args(["-smp", "1", "-m", &args.memory])
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
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 quiet memtrace.time_scale={}",
            accel.time_scale()
        ))
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
    let boot_deadline = start + accel.boot_limit();
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
        if boot_time.is_none() && Instant::now() > boot_deadline {
            eprintln!(
                "vm: {} under {accel:?} did not reach /init within {:?}: killing qemu (pid {pid})",
                k.series,
                accel.boot_limit()
            );
            let _ = child.kill(); // SIGKILL to this qemu's pid only
            let _ = child.wait();
            timed_out = true;
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
