//! What the live view of `memtrace top` shows, built from data only: the strings of the cgroup
//! table and of a cgroup's stacks, the key bindings, and the drawing onto a ratatui frame.
//! Nothing here touches the terminal or the kernel, so all of it is tested with ratatui's
//! test backend.

use std::time::Duration;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Cell, Paragraph, Row as TableRow, Table, TableState},
};

use crate::{charges::accounting::Row, charges::stacks::HotStack, output::human_bytes};

/// The cgroup table's columns, as in `memtrace top --once`.
pub const COLUMNS: [&str; 9] = [
    "CGROUP",
    "USAGE",
    "WSET",
    "LIMIT",
    "HEAD%",
    "CHARGES/s",
    "FAULTS/s",
    "STALLS/s",
    "KILLS",
];

/// Widths of the columns after the first (which takes what is left), as in the text output.
const WIDTHS: [u16; 8] = [10, 10, 10, 6, 10, 10, 8, 5];

/// One cgroup's cells, formatted as the text output formats them.
pub fn row_cells(r: &Row) -> [String; 9] {
    let opt = |v: Option<u64>| v.map_or("-".into(), human_bytes);
    [
        r.cgroup.clone(),
        opt(r.usage_bytes),
        opt(r.working_set_bytes),
        r.limit_bytes.map_or("none".into(), human_bytes),
        r.headroom_pct.map_or("-".into(), |h| format!("{h:.0}")),
        format!("{:.0}", r.rate.charge_events_per_s),
        format!("{:.0}", r.rate.faults_per_s),
        format!("{:.1}", r.rate.reclaim_stalls_per_s),
        r.oom_kills.map_or("-".into(), |k| k.to_string()),
    ]
}

/// The stack table's columns.
pub const STACK_COLUMNS: [&str; 6] = [
    "SAMPLES",
    "SHARE",
    "COMM",
    "PID",
    "USER (innermost)",
    "KERNEL (innermost)",
];

/// How many kernel frames the stack detail shows.
pub const KERNEL_FRAMES: usize = 8;

/// One stack's cells; `total` is the samples of all the stacks shown.
pub fn stack_cells(h: &HotStack, total: u64) -> [String; 6] {
    [
        h.count.to_string(),
        format!("{:.1}%", h.count as f64 * 100.0 / total.max(1) as f64),
        h.comm.clone(),
        h.pid.to_string(),
        h.top_user_frame().to_owned(),
        h.kernel.first().map_or("?", String::as_str).to_owned(),
    ]
}

/// The lines under the stack table: who, how much, every user frame innermost first, and
/// the innermost kernel frames.
pub fn stack_detail(h: &HotStack, total: u64, kernel_frames: usize) -> Vec<String> {
    let mut out = vec![
        format!(
            "{} (pid {}): {} samples, {:.1}% of the stacks shown",
            h.comm,
            h.pid,
            h.count,
            h.count as f64 * 100.0 / total.max(1) as f64
        ),
        "user frames, innermost first:".to_owned(),
    ];
    if h.user.is_empty() {
        out.push("  (none: a kernel thread, or no user stack)".to_owned());
    }
    out.extend(h.user.iter().map(|f| format!("  {f}")));
    let shown = h.kernel.len().min(kernel_frames);
    out.push(format!(
        "kernel frames, innermost first ({shown} of {}):",
        h.kernel.len()
    ));
    out.extend(h.kernel.iter().take(shown).map(|f| format!("  {f}")));
    out
}

/// `s` cut to `width` characters, keeping its end (the most specific part of a path).
pub fn fit_left(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let tail: String = s.chars().skip(n - (width - 1)).collect();
    format!("…{tail}")
}

/// What the header line says about the tracer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The charge hook in use, as `kind target`: `tp_btf count_memcg_events`.
    pub hook: String,
    pub interval: Duration,
    pub sample_every: u32,
    /// How far back the stacks look.
    pub window: Duration,
}

pub fn header_line(h: &Header, cgroups: usize) -> String {
    format!(
        "memtrace top | charge hook: {} | every {} | {} cgroup{} | stacks: 1 in {} charges, last {}",
        h.hook,
        humantime::format_duration(h.interval),
        cgroups,
        if cgroups == 1 { "" } else { "s" },
        h.sample_every,
        humantime::format_duration(h.window),
    )
}

/// What a key asks of the live loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Nothing,
    Redraw,
    /// The stack screen was entered: load its stacks now, then redraw.
    LoadStacks,
    Quit,
}

/// A cgroup's top stacks.
#[derive(Debug)]
pub struct StacksScreen {
    pub cgroup_id: u64,
    pub cgroup: String,
    pub stacks: Vec<HotStack>,
    /// False until the first load.
    pub loaded: bool,
    table: TableState,
}

#[derive(Debug)]
pub enum Screen {
    Cgroups,
    Stacks(StacksScreen),
}

/// The live view's state: the latest rows, the selection, and which screen is up.
#[derive(Debug)]
pub struct App {
    pub header: Header,
    rows: Vec<Row>,
    /// Rows have been set at least once.
    sampled: bool,
    table: TableState,
    /// The selected cgroup, followed by id as the rows re-sort.
    selected: Option<u64>,
    screen: Screen,
}

/// Moves a table selection by `delta`, within `len` rows.
fn step(state: &mut TableState, len: usize, delta: isize) {
    if len == 0 {
        state.select(None);
        return;
    }
    let at = state.selected().unwrap_or(0).min(len - 1) as isize;
    let to = (at + delta).clamp(0, len as isize - 1);
    state.select(Some(to as usize));
}

/// The movement a key asks for, if any.
fn movement(code: KeyCode) -> Option<isize> {
    Some(match code {
        KeyCode::Up | KeyCode::Char('k') => -1,
        KeyCode::Down | KeyCode::Char('j') => 1,
        KeyCode::PageUp => -10,
        KeyCode::PageDown => 10,
        KeyCode::Home | KeyCode::Char('g') => isize::MIN / 2,
        KeyCode::End | KeyCode::Char('G') => isize::MAX / 2,
        _ => return None,
    })
}

impl App {
    pub fn new(header: Header) -> Self {
        Self {
            header,
            rows: vec![],
            sampled: false,
            table: TableState::default(),
            selected: None,
            screen: Screen::Cgroups,
        }
    }

    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// New rows; the selection stays on the same cgroup while it is listed.
    pub fn set_rows(&mut self, rows: Vec<Row>) {
        let at = self
            .selected
            .and_then(|id| rows.iter().position(|r| r.cgroup_id == id))
            .or_else(|| (!rows.is_empty()).then(|| self.table.selected().unwrap_or(0).min(rows.len() - 1)));
        self.table.select(at);
        self.selected = at.map(|i| rows[i].cgroup_id);
        self.rows = rows;
        self.sampled = true;
    }

    pub fn selected_row(&self) -> Option<&Row> {
        self.table.selected().and_then(|i| self.rows.get(i))
    }

    /// The cgroup whose stacks are on screen: (id, path).
    pub fn drilled(&self) -> Option<(u64, &str)> {
        match &self.screen {
            Screen::Stacks(s) => Some((s.cgroup_id, s.cgroup.as_str())),
            Screen::Cgroups => None,
        }
    }

    /// New stacks for the stack screen; the selection stays on the same stack while it is
    /// listed.
    pub fn set_stacks(&mut self, stacks: Vec<HotStack>) {
        let Screen::Stacks(s) = &mut self.screen else {
            return;
        };
        let same = |a: &HotStack, b: &HotStack| {
            a.pid == b.pid && a.cgroup_id == b.cgroup_id && a.user == b.user && a.kernel == b.kernel
        };
        let at = s
            .table
            .selected()
            .and_then(|i| s.stacks.get(i))
            .and_then(|old| stacks.iter().position(|n| same(old, n)))
            .or_else(|| (!stacks.is_empty()).then(|| s.table.selected().unwrap_or(0).min(stacks.len() - 1)));
        s.table.select(at);
        s.stacks = stacks;
        s.loaded = true;
    }

    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        if key.kind != KeyEventKind::Press {
            return Action::Nothing;
        }
        let ctrl_c = key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c');
        if ctrl_c || matches!(key.code, KeyCode::Char('q' | 'Q')) {
            return Action::Quit;
        }
        match &mut self.screen {
            Screen::Cgroups => {
                if let Some(d) = movement(key.code) {
                    step(&mut self.table, self.rows.len(), d);
                    self.selected = self.selected_row().map(|r| r.cgroup_id);
                    return Action::Redraw;
                }
                if matches!(key.code, KeyCode::Enter | KeyCode::Char('s'))
                    && let Some(r) = self.selected_row()
                {
                    self.screen = Screen::Stacks(StacksScreen {
                        cgroup_id: r.cgroup_id,
                        cgroup: r.cgroup.clone(),
                        stacks: vec![],
                        loaded: false,
                        table: TableState::default(),
                    });
                    return Action::LoadStacks;
                }
                Action::Nothing
            }
            Screen::Stacks(s) => {
                if let Some(d) = movement(key.code) {
                    step(&mut s.table, s.stacks.len(), d);
                    return Action::Redraw;
                }
                if matches!(
                    key.code,
                    KeyCode::Esc | KeyCode::Backspace | KeyCode::Left | KeyCode::Char('h')
                ) {
                    self.screen = Screen::Cgroups;
                    return Action::Redraw;
                }
                Action::Nothing
            }
        }
    }

    pub fn draw(&mut self, f: &mut Frame) {
        let [top, body, foot] =
            Layout::vertical([Constraint::Length(1), Constraint::Min(3), Constraint::Length(1)])
                .areas(f.area());
        f.render_widget(
            Paragraph::new(header_line(&self.header, self.rows.len()))
                .style(Style::new().add_modifier(Modifier::REVERSED)),
            top,
        );
        let keys = match &mut self.screen {
            Screen::Cgroups => {
                draw_cgroups(f, body, &self.rows, self.sampled, &mut self.table);
                " ↑/↓ j/k select   Enter/s top stacks   q quit"
            }
            Screen::Stacks(s) => {
                draw_stacks(f, body, s, self.header.window);
                " ↑/↓ j/k select stack   Esc/Backspace back   q quit"
            }
        };
        f.render_widget(
            Paragraph::new(keys).style(Style::new().add_modifier(Modifier::DIM)),
            foot,
        );
    }
}

fn right(s: impl Into<String>) -> Cell<'static> {
    Cell::from(Line::from(s.into()).right_aligned())
}

const HIGHLIGHT: &str = "> ";

fn draw_cgroups(f: &mut Frame, area: Rect, rows: &[Row], sampled: bool, state: &mut TableState) {
    let block = Block::bordered().title(" cgroups by charge rate ");
    if rows.is_empty() {
        let msg = if sampled {
            "No cgroup has charged memory in the last 30 s."
        } else {
            "Waiting for the first sample..."
        };
        f.render_widget(Paragraph::new(msg).block(block), area);
        return;
    }
    let fixed: u16 = WIDTHS.iter().sum::<u16>() + WIDTHS.len() as u16 + HIGHLIGHT.len() as u16 + 2;
    let first = usize::from(area.width.saturating_sub(fixed).max(6));
    let header = TableRow::new(
        COLUMNS
            .iter()
            .enumerate()
            .map(|(i, c)| if i == 0 { Cell::from(*c) } else { right(*c) }),
    )
    .style(Style::new().add_modifier(Modifier::BOLD));
    let body = rows.iter().map(|r| {
        let [cgroup, rest @ ..] = row_cells(r);
        TableRow::new(
            std::iter::once(Cell::from(fit_left(&cgroup, first))).chain(rest.into_iter().map(right)),
        )
    });
    let widths = std::iter::once(Constraint::Fill(1)).chain(WIDTHS.iter().map(|w| Constraint::Length(*w)));
    let table = Table::new(body, widths)
        .header(header)
        .block(block)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol(HIGHLIGHT);
    f.render_stateful_widget(table, area, state);
}

fn draw_stacks(f: &mut Frame, area: Rect, s: &mut StacksScreen, window: Duration) {
    let title = format!(
        " {} and below: top charging stacks, last {} ",
        s.cgroup,
        humantime::format_duration(window)
    );
    let block = Block::bordered().title(title);
    if s.stacks.is_empty() {
        let msg = if s.loaded {
            "No charge samples for this cgroup in the window (it may have stopped charging)."
        } else {
            "Loading..."
        };
        f.render_widget(Paragraph::new(msg).block(block), area);
        return;
    }
    let list_height = (s.stacks.len() as u16 + 3).min(area.height / 2).max(4);
    let [list, detail] = Layout::vertical([Constraint::Length(list_height), Constraint::Min(3)]).areas(area);
    let total: u64 = s.stacks.iter().map(|h| h.count).sum();
    let header = TableRow::new(STACK_COLUMNS.iter().enumerate().map(|(i, c)| {
        if i < 2 || i == 3 {
            right(*c)
        } else {
            Cell::from(*c)
        }
    }))
    .style(Style::new().add_modifier(Modifier::BOLD));
    let body = s.stacks.iter().map(|h| {
        let [n, share, comm, pid, user, kernel] = stack_cells(h, total);
        TableRow::new([
            right(n),
            right(share),
            Cell::from(comm),
            right(pid),
            Cell::from(user),
            Cell::from(kernel),
        ])
    });
    let widths = [
        Constraint::Length(7),
        Constraint::Length(6),
        Constraint::Length(16),
        Constraint::Length(7),
        Constraint::Fill(3),
        Constraint::Fill(2),
    ];
    let table = Table::new(body, widths)
        .header(header)
        .block(block)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .highlight_symbol(HIGHLIGHT);
    f.render_stateful_widget(table, list, &mut s.table);
    let at = s.table.selected().unwrap_or(0).min(s.stacks.len() - 1);
    let lines: Vec<Line> = stack_detail(&s.stacks[at], total, KERNEL_FRAMES)
        .into_iter()
        .map(Line::from)
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(format!(
            " stack {} of {} ",
            at + 1,
            s.stacks.len()
        ))),
        detail,
    );
}

#[cfg(test)]
mod tests {
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
            kernel: (0..12).map(|i| format!("kframe{i}")).collect(),
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
            first.contains("30")
                && first.contains("75.0%")
                && first.contains("42")
                && first.contains("kframe0"),
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
}
