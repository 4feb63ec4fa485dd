//! The live view's state and key bindings.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    widgets::{Paragraph, TableState},
};

use super::{
    Header, Row,
    draw::{draw_cgroups, draw_stacks},
    header_line,
};
use crate::charges::stacks::HotStack;

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
    pub(super) table: TableState,
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
    pub(super) rows: Vec<Row>,
    /// Rows have been set at least once.
    pub(super) sampled: bool,
    pub(super) table: TableState,
    /// The selected cgroup, followed by id as the rows re-sort.
    pub(super) selected: Option<u64>,
    pub(super) screen: Screen,
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
