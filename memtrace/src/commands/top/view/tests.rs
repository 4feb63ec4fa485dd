use std::time::Duration;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::{Terminal, backend::TestBackend};

use super::*;
use crate::charges::accounting::Rate;

fn row(id: u64, cgroup: &str, charges: f64) -> Row {
    Row {
        cgroup: cgroup.into(),
        cgroup_id: id,
        usage_bytes: Some(300 << 20),
        working_set_bytes: Some(200 << 20),
        limit_bytes: Some(1 << 30),
        headroom_pct: Some(70.7),
        oom_kills: Some(2),
        rate: Rate {
            charge_events_per_s: charges,
            faults_per_s: 12.4,
            reclaim_stalls_per_s: 0.25,
            ..Rate::default()
        },
    }
}

fn stack(pid: u32, count: u64) -> HotStack {
    HotStack {
        count,
        cgroup_id: 7,
        pid,
        comm: "memtrace-alloc".into(),
        user: vec![
            "memtrace_alloc::memtrace_test_trickle_chunk".into(),
            "memtrace_alloc::main".into(),
        ],
        kernel: (0..12).map(|i| format!("kframe{i}").into()).collect(),
        pids: 1,
    }
}

fn header() -> Header {
    Header {
        hook: "tp_btf mm_charge".into(),
        interval: Duration::from_secs(1),
        sample_every: 64,
        window: Duration::from_secs(10),
    }
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn screen(app: &mut App) -> Vec<String> {
    let mut t = Terminal::new(TestBackend::new(120, 30)).expect("test terminal");
    t.draw(|f| app.draw(f)).expect("draw");
    let buf = t.backend().buffer();
    buf.content
        .chunks(usize::from(buf.area.width))
        .map(|l| {
            l.iter()
                .map(|c| c.symbol())
                .collect::<String>()
                .trim_end()
                .to_owned()
        })
        .collect()
}

#[test]
fn cells_are_formatted_as_the_text_output() {
    assert_eq!(
        row_cells(&row(1, "/a", 1234.6)),
        [
            "/a",
            "300.0 MiB",
            "200.0 MiB",
            "1.0 GiB",
            "71",
            "1235",
            "12",
            "0.2",
            "2"
        ]
    );
    let bare = Row {
        usage_bytes: None,
        working_set_bytes: None,
        limit_bytes: None,
        headroom_pct: None,
        oom_kills: None,
        ..row(1, "/b", 0.0)
    };
    let c = row_cells(&bare);
    assert_eq!(
        (&c[1][..], &c[3][..], &c[4][..], &c[8][..]),
        ("-", "none", "-", "-")
    );
}

#[test]
fn stack_strings() {
    let h = stack(42, 30);
    assert_eq!(
        stack_cells(&h, 40),
        [
            "30",
            "75.0%",
            "memtrace-alloc",
            "42",
            "memtrace_alloc::memtrace_test_trickle_chunk",
            "kframe0"
        ]
    );
    let d = stack_detail(&h, 40, 3);
    assert_eq!(
        d[0],
        "memtrace-alloc (pid 42): 30 samples, 75.0% of the stacks shown"
    );
    assert_eq!(
        d[1..],
        [
            "user frames, innermost first:",
            "  memtrace_alloc::memtrace_test_trickle_chunk",
            "  memtrace_alloc::main",
            "kernel frames, innermost first (3 of 12):",
            "  kframe0",
            "  kframe1",
            "  kframe2"
        ]
    );
    assert_eq!(fit_left("/kubepods/pod123/ctr", 8), "…123/ctr");
    assert_eq!(fit_left("/abc", 4), "/abc");
    assert_eq!(fit_left("/abcdef", 4), "…def");
    assert!(header_line(&header(), 1).contains("| 1 cgroup |"));
    assert!(header_line(&header(), 3).contains("charge hook: tp_btf mm_charge | every 1s | 3 cgroups"));
}

#[test]
fn selection_follows_the_cgroup_and_keys_drill_down_and_back() {
    let mut app = App::new(header());
    assert!(
        screen(&mut app)
            .iter()
            .any(|l| l.contains("Waiting for the first sample"))
    );
    app.set_rows(vec![row(1, "/busy", 100.0), row(2, "/quiet", 10.0)]);
    assert_eq!(app.selected_row().map(|r| r.cgroup_id), Some(1));
    assert_eq!(app.on_key(key(KeyCode::Down)), Action::Redraw);
    assert_eq!(app.on_key(key(KeyCode::Char('j'))), Action::Redraw);
    assert_eq!(
        app.selected_row().map(|r| r.cgroup_id),
        Some(2),
        "clamped at the end"
    );
    // Re-sorted: the selection stays on /quiet.
    app.set_rows(vec![row(2, "/quiet", 500.0), row(1, "/busy", 100.0)]);
    assert_eq!(app.selected_row().map(|r| r.cgroup_id), Some(2));
    // Gone: the selection stays at the same place.
    app.set_rows(vec![row(1, "/busy", 100.0)]);
    assert_eq!(app.selected_row().map(|r| r.cgroup_id), Some(1));
    app.set_rows(vec![row(1, "/busy", 100.0), row(2, "/quiet", 10.0)]);
    assert_eq!(app.on_key(key(KeyCode::Char('x'))), Action::Nothing);
    assert_eq!(app.on_key(key(KeyCode::Enter)), Action::LoadStacks);
    assert_eq!(app.drilled(), Some((1, "/busy")));
    assert!(screen(&mut app).iter().any(|l| l.contains("Loading...")));
    app.set_stacks(vec![stack(5, 10), stack(6, 30)]);
    assert_eq!(app.on_key(key(KeyCode::Down)), Action::Redraw);
    // The stacks re-sort: the selection stays on pid 6.
    app.set_stacks(vec![stack(6, 40), stack(5, 10)]);
    let lines = screen(&mut app);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("memtrace-alloc (pid 6): 40 samples")),
        "{lines:#?}"
    );
    assert_eq!(app.on_key(key(KeyCode::Esc)), Action::Redraw);
    assert_eq!(app.drilled(), None);
    assert_eq!(app.on_key(key(KeyCode::Char('s'))), Action::LoadStacks);
    assert_eq!(app.on_key(key(KeyCode::Backspace)), Action::Redraw);
    assert_eq!(app.on_key(key(KeyCode::Char('q'))), Action::Quit);
    assert_eq!(
        app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
        Action::Quit
    );
}

#[test]
fn screens_render_the_table_and_the_stacks() {
    let mut app = App::new(header());
    let long = format!("/kubepods/{}/container", "x".repeat(100));
    app.set_rows(vec![row(1, "/busy", 1234.0), row(2, &long, 10.0)]);
    let lines = screen(&mut app);
    assert!(lines[0].starts_with("memtrace top | charge hook: tp_btf mm_charge | every 1s | 2 cgroups"));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("CGROUP") && l.contains("CHARGES/s") && l.contains("KILLS"))
    );
    let busy = lines.iter().find(|l| l.contains("/busy")).expect("busy row");
    assert!(busy.contains("> /busy"), "selected: {busy}");
    assert!(busy.contains("300.0 MiB") && busy.contains("1.0 GiB") && busy.contains("1234"));
    let cut = lines.iter().find(|l| l.contains("/container")).expect("long row");
    assert!(cut.contains('…') && cut.contains("200.0 MiB"), "{cut}");
    assert!(lines.last().is_some_and(|l| l.contains("Enter/s top stacks")));

    app.on_key(key(KeyCode::Enter));
    app.set_stacks(vec![stack(42, 30), stack(43, 10)]);
    let lines = screen(&mut app);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("/busy and below: top charging stacks, last 10s"))
    );
    let first = lines.iter().find(|l| l.contains("> ")).expect("selected stack");
    assert!(
        first.contains("30") && first.contains("75.0%") && first.contains("42") && first.contains("kframe0"),
        "{first}"
    );
    let at = |s: &str| {
        lines
            .iter()
            .position(|l| l.contains(s))
            .unwrap_or_else(|| panic!("{s} in {lines:#?}"))
    };
    assert!(at("user frames, innermost first") < at("  memtrace_alloc::main"));
    assert!(at("kernel frames, innermost first (8 of 12)") < at("  kframe7"));
    assert!(!lines.iter().any(|l| l.contains("kframe8")));
    assert!(lines.last().is_some_and(|l| l.contains("Esc/Backspace back")));

    app.set_stacks(vec![]);
    assert!(
        screen(&mut app)
            .iter()
            .any(|l| l.contains("No charge samples for this cgroup"))
    );
}
