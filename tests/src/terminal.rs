//! A program on a real terminal: a private tmux server (its socket in a temporary directory,
//! so no other tmux is touched) runs a shell command in a pane of a fixed size; the test types
//! with `send-keys` and reads the screen with `capture-pane`. Dropping it ends that server.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

pub struct Tmux {
    dir: tempfile::TempDir,
    socket: PathBuf,
}

/// Whether tmux is installed (scripts/setup.sh installs it).
pub fn tmux_available() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Tmux {
    /// Starts `shell_command` (run by `sh -c`) in a detached `width` x `height` session.
    pub fn start(width: u16, height: u16, shell_command: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("tmux.sock");
        let t = Self { dir, socket };
        let out = t.run(&[
            "new-session",
            "-d",
            "-s",
            "test",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            shell_command,
        ]);
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    /// A scratch directory that lives as long as the session.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .env_remove("TMUX")
            .output()
            .expect("run tmux")
    }

    /// The pane as text, one line per row.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "test"]).stdout).into_owned()
    }

    /// Keys as tmux names them: "j", "Enter", "Escape", "C-c"...
    pub fn send(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "test"];
        args.extend_from_slice(keys);
        let _ = self.run(&args);
    }

    /// The pid of the pane's process (the `sh -c`).
    pub fn pane_pid(&self) -> Option<u32> {
        let out = self.run(&["display-message", "-p", "-t", "test", "#{pane_pid}"]);
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    }
}

/// The children of `pid`, from procfs.
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Only the server on this test's own socket.
        let _ = self.run(&["kill-server"]);
    }
}
