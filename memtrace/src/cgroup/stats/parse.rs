//! The `parse_*` functions: pure and total, any input gives `Ok` or a `ParseError`.

use std::collections::HashMap;

use ParseErrorKind::*;
use thiserror::Error;

use super::{Pressure, PsiLine};

/// v1 prints "no limit" as PAGE_COUNTER_MAX * PAGE_SIZE, i.e. i64::MAX rounded down
/// to a page (9223372036854771712 with 4 KiB pages); pre-4.x kernels printed i64::MAX.
/// Rounding down to 1 MiB covers every page size.
pub(super) const V1_UNLIMITED: u64 = (i64::MAX as u64) & !0xF_FFFF;

/// Malformed contents: where (1-based `line`, 0 for the input as a whole) and what.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("line {line}: {kind}")]
pub struct ParseError {
    pub line: usize,
    pub kind: ParseErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ParseErrorKind {
    #[error("empty input")]
    Empty,
    #[error("no value for {0:?}")]
    MissingValue(String),
    #[error("unexpected extra field {0:?}")]
    ExtraField(String),
    #[error("duplicate key {0:?}")]
    DuplicateKey(String),
    #[error("negative value {0:?}")]
    Negative(String),
    #[error("value {0:?} overflows u64")]
    Overflow(String),
    #[error("{0:?} is not a number")]
    NotANumber(String),
    #[error("unknown pressure line {0:?}, expected some or full")]
    UnknownPressureKind(String),
    #[error("pressure field {0} missing")]
    MissingPressureField(&'static str),
    #[error("pressure data has no `some` line")]
    MissingSome,
}

fn err<T>(line: usize, kind: ParseErrorKind) -> Result<T, ParseError> {
    Err(ParseError { line, kind })
}

fn numbered_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l))
}

fn is_decimal(s: &str, allow_dot: bool) -> bool {
    let digit = |b: u8| b.is_ascii_digit() || (allow_dot && b == b'.');
    !s.is_empty() && s.bytes().all(digit)
}

fn number_error<T>(line: usize, value: &str, allow_dot: bool) -> Result<T, ParseError> {
    match value.strip_prefix('-') {
        Some(digits) if is_decimal(digits, allow_dot) => err(line, Negative(value.into())),
        _ => err(line, NotANumber(value.into())),
    }
}

/// Strict decimal u64: the kernel prints no sign, no spaces and no hex.
fn parse_u64(line: usize, value: &str) -> Result<u64, ParseError> {
    if !is_decimal(value, false) {
        return number_error(line, value, false);
    }
    // Only overflow is left once every byte is a digit.
    value.parse().or_else(|_| err(line, Overflow(value.into())))
}

/// PSI averages are printed as "%lu.%02lu" percentages.
fn parse_avg(line: usize, value: &str) -> Result<f64, ParseError> {
    match value.parse::<f64>() {
        Ok(v) if is_decimal(value, true) && v.is_finite() => Ok(v),
        _ => number_error(line, value, true),
    }
}

/// The one token of a single-value file such as `memory.current` ("123\n").
fn single_token(text: &str) -> Result<(usize, &str), ParseError> {
    let mut tokens = numbered_lines(text).flat_map(|(n, l)| l.split_whitespace().map(move |t| (n, t)));
    match (tokens.next(), tokens.next()) {
        (None, _) => err(0, Empty),
        (Some(first), None) => Ok(first),
        (Some(_), Some((line, extra))) => err(line, ExtraField(extra.into())),
    }
}

/// A single-value counter file (`memory.current`, `memory.failcnt`, `memory.oom.group`...).
pub fn parse_u64_file(text: &str) -> Result<u64, ParseError> {
    let (line, value) = single_token(text)?;
    parse_u64(line, value)
}

/// v1 `memory.*limit_in_bytes`: the page-rounded i64::MAX sentinel means unlimited.
pub fn parse_limit_v1(text: &str) -> Result<Option<u64>, ParseError> {
    parse_u64_file(text).map(|v| (v < V1_UNLIMITED).then_some(v))
}

/// v2 `memory.{max,high,low,min,swap.max}`: a number or the word "max".
pub fn parse_max_v2(text: &str) -> Result<Option<u64>, ParseError> {
    match single_token(text)? {
        (_, "max") => Ok(None),
        (line, value) => parse_u64(line, value).map(Some),
    }
}

/// Flat-keyed files, cgroup-v2.rst "Format": one "key value" pair per line
/// (`memory.stat`, `memory.events`, v1 `memory.oom_control`). Blank lines are skipped.
pub fn parse_flat_keyed(text: &str) -> Result<HashMap<String, u64>, ParseError> {
    let mut map = HashMap::new();
    for (line, l) in numbered_lines(text) {
        let mut fields = l.split_whitespace();
        let Some(key) = fields.next() else { continue };
        let Some(value) = fields.next() else {
            return err(line, MissingValue(key.into()));
        };
        if let Some(extra) = fields.next() {
            return err(line, ExtraField(extra.into()));
        }
        if map.insert(key.to_owned(), parse_u64(line, value)?).is_some() {
            return err(line, DuplicateKey(key.into()));
        }
    }
    if map.is_empty() { err(0, Empty) } else { Ok(map) }
}

/// PSI format, Documentation/accounting/psi.rst:
/// `some avg10=0.00 avg60=0.00 avg300=0.00 total=0` then a `full ...` line.
pub fn parse_pressure(text: &str) -> Result<Pressure, ParseError> {
    let (mut some, mut full) = (None, None);
    for (line, l) in numbered_lines(text) {
        let mut fields = l.split_whitespace();
        let Some(kind) = fields.next() else { continue };
        let slot = match kind {
            "some" => &mut some,
            "full" => &mut full,
            _ => return err(line, UnknownPressureKind(kind.into())),
        };
        if slot.replace(parse_psi_line(line, fields)?).is_some() {
            return err(line, DuplicateKey(kind.into()));
        }
    }
    match (some, full) {
        (Some(some), full) => Ok(Pressure { some, full }),
        (None, None) => err(0, Empty),
        (None, Some(_)) => err(0, MissingSome),
    }
}

fn parse_psi_line<'a>(line: usize, fields: impl Iterator<Item = &'a str>) -> Result<PsiLine, ParseError> {
    let (mut avg10, mut avg60, mut avg300, mut total) = (None, None, None, None);
    for field in fields {
        let Some((key, value)) = field.split_once('=') else {
            return err(line, MissingValue(field.into()));
        };
        let duplicate = match key {
            "avg10" => avg10.replace(parse_avg(line, value)?).is_some(),
            "avg60" => avg60.replace(parse_avg(line, value)?).is_some(),
            "avg300" => avg300.replace(parse_avg(line, value)?).is_some(),
            "total" => total.replace(parse_u64(line, value)?).is_some(),
            _ => false, // Tolerate fields a future kernel may add.
        };
        if duplicate {
            return err(line, DuplicateKey(key.into()));
        }
    }
    let missing = |field| ParseError {
        line,
        kind: MissingPressureField(field),
    };
    Ok(PsiLine {
        avg10: avg10.ok_or_else(|| missing("avg10"))?,
        avg60: avg60.ok_or_else(|| missing("avg60"))?,
        avg300: avg300.ok_or_else(|| missing("avg300"))?,
        total_us: total.ok_or_else(|| missing("total"))?,
    })
}
