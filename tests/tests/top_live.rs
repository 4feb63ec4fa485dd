//! `memtrace top`'s live view on a real terminal (a tmux pane): the allocating cgroup is
//! listed, Enter on it shows its top charging stacks naming the allocator's function, Esc goes
//! back, and q quits with the terminal restored. Host only (`cargo xtask vm` guests have no
//! tmux).

use std::time::{Duration, Instant};

use memtrace_tests::{
    TestCgroup, ebpf_available, memtrace_bin, procs,
    terminal::{Tmux, children, tmux_available},
    time_scale,
};

const MIB: u64 = 1 << 20;
/// The allocator's allocating function (tests/src/bin/memtrace-alloc.rs).
const ALLOC_FN: &str = "memtrace_test_trickle_chunk";
const STACKS_TITLE: &str = "and below: top charging stacks";

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// SIGTERM to a pid this test started, if it is still there.
struct StopOnDrop(u32);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if std::path::Path::new(&format!("/proc/{}", self.0)).exists() {
            // SAFETY: kill(2) of the memtrace this test started, by its pid.
            unsafe { libc::kill(self.0 as i32, libc::SIGTERM) };
        }
    }
}

/// Whether `line` is the table row of cgroup `rel`.
fn is_row_of(line: &str, rel: &str) -> bool {
    line.contains(&format!(" {rel} "))
}

#[test]
fn live_view_drills_into_the_allocating_cgroup() {
    if !ebpf_available("live_view_drills_into_the_allocating_cgroup") {
        return;
    }
    if !tmux_available() {
        assert!(
            !std::env::var("MEMTRACE_REQUIRE_EBPF").is_ok_and(|v| v == "1"),
            "tmux is not installed (scripts/setup.sh installs it) and MEMTRACE_REQUIRE_EBPF=1"
        );
        eprintln!(
            "\n!!! SKIPPED live_view_drills_into_the_allocating_cgroup: no tmux (scripts/setup.sh installs it).\n"
        );
        return;
    }
    let cg = TestCgroup::new("tui", 1024 * MIB);
    let mut alloc = procs::alloc_in(&cg, &["trickle", "20", "400"], None);
    procs::wait_ready(&mut alloc);

    let scratch = tempfile::tempdir().expect("tempdir");
    let stderr = scratch.path().join("stderr");
    let command = format!(
        "{} top 2>{}; echo \"memtrace exited: $?\"; stty -a | tr ' ' '\\n' | grep -E '^-?(icanon|echo)$' | tr '\\n' ' '; echo; sleep 600",
        quote(&memtrace_bin().display().to_string()),
        quote(&stderr.display().to_string()),
    );
    let tmux = Tmux::start(160, 40, &command);
    let shell = tmux.pane_pid().expect("pane pid");
    let started = Instant::now();
    let memtrace = loop {
        if let Some(pid) = children(shell).first() {
            break *pid;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "memtrace did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let _stop = StopOnDrop(memtrace);
    let fail = |what: &str, screen: &str| -> ! {
        panic!(
            "{what}\n--- screen ---\n{screen}\n--- memtrace stderr ---\n{}",
            std::fs::read_to_string(&stderr).unwrap_or_default()
        )
    };

    // Select the test cgroup (the rows re-sort every second: steer from what the screen
    // shows), Enter, and wait for its stacks to name the allocating function.
    let deadline = Instant::now() + Duration::from_secs(40 * time_scale());
    let mut saw_list = None;
    let stacks = loop {
        let s = tmux.screen();
        if Instant::now() > deadline {
            fail(&format!("no stacks of {} naming {ALLOC_FN}", cg.rel), &s);
        }
        let lines: Vec<&str> = s.lines().collect();
        if let Some(title) = lines.iter().find(|l| l.contains(STACKS_TITLE)) {
            if !title.contains(&format!(" {} ", cg.rel)) {
                tmux.send(&["Escape"]); // another cgroup's: it moved under the cursor
            } else if s.contains(ALLOC_FN) && s.contains("kernel frames, innermost first") {
                // Both panes drawn: tmux can capture a frame that the terminal is still
                // writing, with the table of stacks but not yet the selected stack below it.
                break s;
            }
        } else if let Some(target) = lines.iter().position(|l| is_row_of(l, &cg.rel)) {
            saw_list.get_or_insert_with(|| s.clone());
            match lines.iter().position(|l| l.starts_with("│> ")) {
                Some(at) if at == target => tmux.send(&["Enter"]),
                Some(at) => {
                    let key = if target > at { "j" } else { "k" };
                    tmux.send(&vec![key; target.abs_diff(at)]);
                }
                None => {}
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let list = saw_list.unwrap_or_default();
    eprintln!("--- list ---\n{list}\n--- stacks ---\n{stacks}");
    assert!(
        list.lines().next().is_some_and(|l| l.contains("charge hook:")),
        "header names the hook: {list}"
    );
    assert!(list.contains("CHARGES/s") && list.contains("1.0 GiB"), "{list}");
    let pid = alloc.id().to_string();
    assert!(
        stacks
            .lines()
            .any(|l| l.contains("memtrace-alloc") && l.contains(&format!(" {pid} "))),
        "a stack row of the allocator (pid {pid}): {stacks}"
    );
    // The selected stack's kernel frames (the charge path, or the fault accounting that the
    // same hook counts: either may be the most sampled).
    let kernel = stacks
        .lines()
        .skip_while(|l| !l.contains("kernel frames, innermost first"))
        .skip(1)
        .take_while(|l| l.starts_with("│  "))
        .count();
    assert!(kernel > 0, "kernel frames listed: {stacks}");

    // Esc: back to the list; q: memtrace exits 0 and the terminal is back to cooked mode.
    tmux.send(&["Escape"]);
    let deadline = Instant::now() + Duration::from_secs(5 * time_scale());
    loop {
        let s = tmux.screen();
        if s.contains(" cgroups by charge rate ") {
            break;
        }
        if Instant::now() > deadline {
            fail("Esc did not go back to the list", &s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    tmux.send(&["q"]);
    let deadline = Instant::now() + Duration::from_secs(10 * time_scale());
    loop {
        let s = tmux.screen();
        if s.contains("memtrace exited:") && s.contains("icanon") {
            assert!(s.contains("memtrace exited: 0"), "exit status: {s}");
            assert!(
                s.contains("icanon echo") && !s.contains("-icanon") && !s.contains("-echo"),
                "terminal restored to cooked mode: {s}"
            );
            break;
        }
        if Instant::now() > deadline {
            fail("q did not quit", &s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = alloc.kill();
    let _ = alloc.wait();
}
