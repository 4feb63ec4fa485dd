//! The first run is clean: `scripts/setup.sh` (which `scripts/run.sh` runs before the daemon)
//! says nothing on stdout, so `scripts/run.sh --output json | jq` sees only events, even on the
//! run that installs the toolchain.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Command, Stdio},
};

fn setup(path_prefix: Option<&Path>) -> (bool, String, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut c = Command::new("bash");
    c.arg(root.join("scripts/setup.sh")).stdin(Stdio::null());
    if let Some(p) = path_prefix {
        let path = std::env::var("PATH").unwrap_or_default();
        c.env("PATH", format!("{}:{path}", p.display()));
    }
    let out = c.output().expect("run scripts/setup.sh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn setup_says_nothing_on_stdout() {
    let (ok, stdout, stderr) = setup(None);
    assert!(ok, "scripts/setup.sh failed: {stderr}");
    assert_eq!(stdout, "", "set-up output on stdout (stderr: {stderr})");
    assert!(stderr.contains("setup: ok"), "{stderr}");
}

/// rustup prints an installed toolchain's summary on stdout: on a fresh machine that went into
/// the JSON stream. A rustup in front of the real one reports the toolchains missing and
/// "installs" them the way rustup talks (progress on stderr, the summary on stdout).
#[test]
fn toolchain_installer_output_goes_to_stderr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = String::from_utf8(
        Command::new("bash")
            .args(["-c", "command -v rustup"])
            .output()
            .expect("which rustup")
            .stdout,
    )
    .expect("utf-8");
    let shim = dir.path().join("rustup");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\n\
             case \"$1 $2\" in\n\
             'toolchain list') exit 0 ;;\n\
             'toolchain install') echo \"info: syncing channel updates for '$3'\" >&2;\n\
               echo \"  $3 installed - rustc 1.99.0\"; exit 0 ;;\n\
             esac\n\
             exec {} \"$@\"\n",
            real.trim()
        ),
    )
    .expect("shim");
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (ok, stdout, stderr) = setup(Some(dir.path()));
    assert!(ok, "scripts/setup.sh failed: {stderr}");
    assert_eq!(stdout, "", "installer output on stdout (stderr: {stderr})");
    assert!(stderr.contains("installed - rustc"), "the shim ran: {stderr}");
}
