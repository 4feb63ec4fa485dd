//! Drawing the cgroup table and a cgroup's stacks onto a ratatui frame.

use std::time::Duration;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Cell, Paragraph, Row as TableRow, Table, TableState},
};

use super::*;

fn right(s: impl Into<String>) -> Cell<'static> {
    Cell::from(Line::from(s.into()).right_aligned())
}

const HIGHLIGHT: &str = "> ";

pub(super) fn draw_cgroups(f: &mut Frame, area: Rect, rows: &[Row], sampled: bool, state: &mut TableState) {
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

pub(super) fn draw_stacks(f: &mut Frame, area: Rect, s: &mut StacksScreen, window: Duration) {
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
