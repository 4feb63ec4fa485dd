//! Bad input and missing privileges: a one-line error that says what to do, never a panic.

use std::process::{Command, Stdio};

use memtrace_tests::memtrace_bin;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(memtrace_bin())
        .args(args)
        .output()
        .expect("run memtrace");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_exit_2_with_a_message() {
    for (args, needle) in [
        (&["watch", "--output", "xml"][..], "xml"),
        (
            &["watch", "--variant", "cgroup_mkdir=kprobe"][..],
            "no \"kprobe\" variant",
        ),
        (&["watch", "--oom-ring-bytes", "1000"][..], "power of two"),
        (&["watch", "--ws-alert-ratio", "2"][..], "must be in (0, 1]"),
        (&["watch", "--ws-alert-ratio", "NaN"][..], "must be in (0, 1]"),
        (&["watch", "--exit-after", "many"][..], "--exit-after"),
        (&["watch", "--variant", "oom_victim"][..], "--variant"),
        (&["frobnicate"][..], "unrecognized subcommand"),
    ] {
        let (code, err) = run(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// Unprivileged: setpriv drops to nobody with no capabilities.
#[test]
fn missing_privileges_name_the_capability() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("!!! SKIPPED missing_privileges_name_the_capability: needs root to drop privileges");
        return;
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(memtrace_bin())
        .arg("watch")
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("CAP_BPF") && err.contains("CAP_PERFMON"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `memtrace top | head -1`: a reader that goes away ends a printing command quietly, as it
/// does other Unix tools. `top` and `probes` panicked there ("failed printing to stdout:
/// Broken pipe", exit 101).
#[test]
fn a_reader_that_goes_away_ends_printing_quietly() {
    if !memtrace_tests::ebpf_available("a_reader_that_goes_away_ends_printing_quietly") {
        return;
    }
    for args in [&["top", "--interval", "200ms"][..], &["probes"][..]] {
        let mut child = Command::new(memtrace_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run memtrace");
        // The reader goes away before the first line (top prints after its interval, probes
        // after loading its programs).
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?}: {err}", out.status);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
