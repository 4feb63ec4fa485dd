//! Typed readers of Linux memory-cgroup files, cgroup v1 and v2.
//!
//! Formats come from Documentation/admin-guide/cgroup-v2.rst ("Memory Interface
//! Files", "Pressure Stall Information") and
//! Documentation/admin-guide/cgroup-v1/memory.rst. The `parse_*` functions are
//! pure and total: any input gives `Ok` or a `ParseError`, never a panic.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use ParseErrorKind::*;
use serde::Serialize;

pub use super::hierarchy::CgroupVersion;
use thiserror::Error;

/// What reading an open kernfs file returns once its cgroup has been removed.
const ENODEV: i32 = 19;
/// Pressure files answer this when PSI is disabled at boot (`psi=0`).
const EOPNOTSUPP: i32 = 95;
/// v1 prints "no limit" as PAGE_COUNTER_MAX * PAGE_SIZE, i.e. i64::MAX rounded down
/// to a page (9223372036854771712 with 4 KiB pages); pre-4.x kernels printed i64::MAX.
/// Rounding down to 1 MiB covers every page size.
const V1_UNLIMITED: u64 = (i64::MAX as u64) & !0xF_FFFF;

/// One line of a PSI file: stall percentages over 10/60/300 s and total stall time in µs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PsiLine {
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    pub total_us: u64,
}

/// `memory.pressure`; `full` is optional as it is for CPU pressure on older kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Pressure {
    pub some: PsiLine,
    pub full: Option<PsiLine>,
}

/// Memory statistics normalised across cgroup versions; every size is in bytes.
/// A limit of `None` means unlimited (or that the file does not exist).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MemoryStats {
    pub version: CgroupVersion,
    /// v1 `memory.usage_in_bytes`, v2 `memory.current`.
    pub usage: u64,
    /// v1 `memory.max_usage_in_bytes`, v2 `memory.peak` (5.19+).
    pub peak: Option<u64>,
    /// v1 `memory.limit_in_bytes`, v2 `memory.max`.
    pub limit: Option<u64>,
    /// v1 `hierarchical_memory_limit` from memory.stat: the tightest ancestor limit.
    pub hierarchical_limit: Option<u64>,
    /// v2 `memory.high`, `memory.low`, `memory.min`.
    pub high: Option<u64>,
    pub low: Option<u64>,
    pub min: Option<u64>,
    /// Swap only: v1 `total_swap` (shown only with swap accounting), v2 `memory.swap.current`.
    pub swap_usage: Option<u64>,
    /// Swap only: v2 `memory.swap.max`. v1 has no swap-only limit, see `memsw_limit`.
    pub swap_limit: Option<u64>,
    /// v1 memory+swap counters `memory.memsw.{usage,limit}_in_bytes`.
    pub memsw_usage: Option<u64>,
    pub memsw_limit: Option<u64>,
    /// From memory.stat: v2 keys, v1 `total_*` keys (falling back to the local key).
    pub anon: u64,
    pub file: u64,
    pub inactive_file: u64,
    pub active_file: u64,
    pub shmem: u64,
    pub mapped_file: u64,
    /// v2 `kernel` (5.18+). v1: `memory.kmem.usage_in_bytes` when present, else the
    /// estimate `usage - (total_rss + total_cache)` (v1 charges kmem to usage too).
    pub kernel: Option<u64>,
    /// v2 only (`slab`, `sock` in memory.stat).
    pub slab: Option<u64>,
    pub sock: Option<u64>,
    /// v2 `memory.events` counters (hierarchical).
    pub high_events: Option<u64>,
    pub max_events: Option<u64>,
    pub oom_events: Option<u64>,
    /// v1 `oom_kill` from memory.oom_control (4.13+), v2 `oom_kill` from memory.events.
    pub oom_kills: Option<u64>,
    /// v2 `oom_group_kill` (5.17+) and `memory.oom.group`.
    pub oom_group_kills: Option<u64>,
    pub oom_group: Option<bool>,
    /// v1 memory.oom_control flags, `memory.failcnt`, `memory.swappiness`.
    pub under_oom: Option<bool>,
    pub oom_kill_disable: Option<bool>,
    pub failcnt: Option<u64>,
    pub swappiness: Option<u64>,
    /// v2 `memory.pressure` (needs CONFIG_PSI).
    pub pressure: Option<Pressure>,
}

impl MemoryStats {
    /// cAdvisor's `container_memory_working_set_bytes`: usage minus inactive file cache.
    pub fn working_set(&self) -> u64 {
        self.usage.saturating_sub(self.inactive_file)
    }

    /// Bytes left before the hard limit; `None` when unlimited.
    pub fn headroom(&self) -> Option<u64> {
        self.limit.map(|limit| limit.saturating_sub(self.usage))
    }

    /// `usage / limit`; `None` when unlimited (or a zero limit).
    pub fn usage_ratio(&self) -> Option<f64> {
        self.limit
            .filter(|&l| l > 0)
            .map(|l| self.usage as f64 / l as f64)
    }
}

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

#[derive(Debug, Error)]
pub enum StatsError {
    /// The file or the whole cgroup is gone: removed before or during the read.
    #[error("{path}: vanished (cgroup removed?)")]
    Vanished { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: ParseError },
    #[error("{path}: required key {key:?} missing")]
    MissingKey { path: PathBuf, key: &'static str },
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

/// Reads `dir/name`; `Ok(None)` if that file alone is missing (or PSI is disabled).
fn read_optional(dir: &Path, name: &str) -> Result<Option<String>, StatsError> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        // An absent optional file is normal; an absent cgroup is not.
        Err(e) if e.kind() == io::ErrorKind::NotFound && dir.is_dir() => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StatsError::Vanished { path: dir.to_owned() }),
        Err(e) if e.raw_os_error() == Some(ENODEV) => Err(StatsError::Vanished { path }),
        Err(e) if e.raw_os_error() == Some(EOPNOTSUPP) => Ok(None),
        Err(source) => Err(StatsError::Io { path, source }),
    }
}

type Parser<T> = fn(&str) -> Result<T, ParseError>;

fn optional<T>(dir: &Path, name: &str, parse: Parser<T>) -> Result<Option<T>, StatsError> {
    read_optional(dir, name)?
        .map(|text| {
            parse(&text).map_err(|source| StatsError::Parse {
                path: dir.join(name),
                source,
            })
        })
        .transpose()
}

fn required<T>(dir: &Path, name: &str, parse: Parser<T>) -> Result<T, StatsError> {
    optional(dir, name, parse)?.ok_or_else(|| StatsError::Vanished { path: dir.join(name) })
}

/// Reads the memory controller files of the cgroup directory `dir`. Only the usage
/// file and memory.stat are required; every other file may be absent (old kernel,
/// no swap accounting, no PSI) and leaves its field `None`.
pub fn read_memory_stats(dir: &Path, version: CgroupVersion) -> Result<MemoryStats, StatsError> {
    match version {
        CgroupVersion::V1 => read_v1(dir),
        CgroupVersion::V2 => read_v2(dir),
    }
}

fn read_v1(dir: &Path) -> Result<MemoryStats, StatsError> {
    let usage = required(dir, "memory.usage_in_bytes", parse_u64_file)?;
    let stat = required(dir, "memory.stat", parse_flat_keyed)?;
    // total_* keys are hierarchical (cgroup-v1/memory.rst 5.2); prefer them.
    let get = |key: &str| {
        stat.get(&format!("total_{key}"))
            .or_else(|| stat.get(key))
            .copied()
    };
    let need = |key: &'static str| {
        get(key).ok_or_else(|| StatsError::MissingKey {
            path: dir.join("memory.stat"),
            key,
        })
    };
    let (anon, file) = (need("rss")?, need("cache")?);
    let oom = optional(dir, "memory.oom_control", parse_flat_keyed)?;
    let oom_get = |key: &str| oom.as_ref().and_then(|m| m.get(key).copied());
    let kmem = optional(dir, "memory.kmem.usage_in_bytes", parse_u64_file)?;
    Ok(MemoryStats {
        version: CgroupVersion::V1,
        usage,
        peak: optional(dir, "memory.max_usage_in_bytes", parse_u64_file)?,
        limit: optional(dir, "memory.limit_in_bytes", parse_limit_v1)?.flatten(),
        hierarchical_limit: get("hierarchical_memory_limit").filter(|&v| v < V1_UNLIMITED),
        swap_usage: get("swap"),
        memsw_usage: optional(dir, "memory.memsw.usage_in_bytes", parse_u64_file)?,
        memsw_limit: optional(dir, "memory.memsw.limit_in_bytes", parse_limit_v1)?.flatten(),
        anon,
        file,
        inactive_file: get("inactive_file").unwrap_or(0),
        active_file: get("active_file").unwrap_or(0),
        shmem: get("shmem").unwrap_or(0),
        mapped_file: get("mapped_file").unwrap_or(0),
        kernel: Some(kmem.unwrap_or_else(|| usage.saturating_sub(anon.saturating_add(file)))),
        oom_kills: oom_get("oom_kill"),
        under_oom: oom_get("under_oom").map(|v| v != 0),
        oom_kill_disable: oom_get("oom_kill_disable").map(|v| v != 0),
        failcnt: optional(dir, "memory.failcnt", parse_u64_file)?,
        swappiness: optional(dir, "memory.swappiness", parse_u64_file)?,
        ..MemoryStats::default()
    })
}

fn read_v2(dir: &Path) -> Result<MemoryStats, StatsError> {
    let usage = required(dir, "memory.current", parse_u64_file)?;
    let stat = required(dir, "memory.stat", parse_flat_keyed)?;
    let get = |key: &str| stat.get(key).copied();
    let need = |key: &'static str| {
        get(key).ok_or_else(|| StatsError::MissingKey {
            path: dir.join("memory.stat"),
            key,
        })
    };
    let events = optional(dir, "memory.events", parse_flat_keyed)?;
    let event = |key: &str| events.as_ref().and_then(|m| m.get(key).copied());
    let max = |name: &str| optional(dir, name, parse_max_v2).map(Option::flatten);
    Ok(MemoryStats {
        version: CgroupVersion::V2,
        usage,
        peak: optional(dir, "memory.peak", parse_u64_file)?,
        limit: max("memory.max")?,
        high: max("memory.high")?,
        low: max("memory.low")?,
        min: max("memory.min")?,
        swap_usage: optional(dir, "memory.swap.current", parse_u64_file)?,
        swap_limit: max("memory.swap.max")?,
        anon: need("anon")?,
        file: need("file")?,
        inactive_file: get("inactive_file").unwrap_or(0),
        active_file: get("active_file").unwrap_or(0),
        shmem: get("shmem").unwrap_or(0),
        mapped_file: get("file_mapped").unwrap_or(0),
        kernel: get("kernel"),
        slab: get("slab"),
        sock: get("sock"),
        high_events: event("high"),
        max_events: event("max"),
        oom_events: event("oom"),
        oom_kills: event("oom_kill"),
        oom_group_kills: event("oom_group_kill"),
        oom_group: optional(dir, "memory.oom.group", parse_u64_file)?.map(|v| v != 0),
        pressure: optional(dir, "memory.pressure", parse_pressure)?,
        ..MemoryStats::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use CgroupVersion::{V1, V2};
    use std::fs;
    use std::io::{BufRead, BufReader, Write};
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    const MIB: u64 = 1 << 20;
    /// Real `memory.stat` of this machine's v1 root (kernel 6.18), pgpg* lines dropped.
    const V1_STAT: &str = "cache 9555968\nrss 4829184\nrss_huge 0\nshmem 9068544\n\
        mapped_file 7639040\ndirty 16384\nwriteback 0\nswap 0\ninactive_anon 0\n\
        active_anon 1531904\ninactive_file 0\nactive_file 487424\nunevictable 12365824\n\
        hierarchical_memory_limit 9223372036854771712\nhierarchical_memsw_limit 9223372036854771712\n\
        total_cache 28278784\ntotal_rss 8802304\ntotal_rss_huge 0\ntotal_shmem 9068544\n\
        total_mapped_file 11042816\ntotal_dirty 159744\ntotal_swap 0\ntotal_inactive_anon 3825664\n\
        total_active_anon 1560576\ntotal_inactive_file 8065024\ntotal_active_file 11145216\n\
        total_unevictable 12365824\n";
    const V1_OOM_CONTROL: &str = "oom_kill_disable 0\nunder_oom 1\noom_kill 3\n";
    /// v2 `memory.stat` in the 6.x layout (cgroup-v2.rst), abridged.
    const V2_STAT: &str = "anon 20971520\nfile 31457280\nkernel 3145728\nkernel_stack 163840\n\
        pagetables 458752\npercpu 72000\nsock 4096\nvmalloc 0\nshmem 1048576\nzswap 0\n\
        file_mapped 5242880\nfile_dirty 8192\nfile_writeback 0\nanon_thp 0\ninactive_anon 18874368\n\
        active_anon 2097152\ninactive_file 12582912\nactive_file 18874368\nunevictable 0\n\
        slab_reclaimable 1572864\nslab_unreclaimable 786432\nslab 2359296\n\
        workingset_refault_anon 0\npgfault 123456\npgmajfault 12\n";
    const V2_EVENTS: &str = "low 0\nhigh 12\nmax 34\noom 2\noom_kill 1\noom_group_kill 0\n";
    const V2_PRESSURE: &str = "some avg10=1.25 avg60=0.40 avg300=0.08 total=1234567\n\
        full avg10=0.50 avg60=0.10 avg300=0.02 total=456789\n";

    fn pe(line: usize, kind: ParseErrorKind) -> ParseError {
        ParseError { line, kind }
    }

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn flat_keyed_real_samples() {
        let stat = parse_flat_keyed(V1_STAT).unwrap();
        assert_eq!(stat.len(), 27);
        assert_eq!(stat["total_rss"], 8802304);
        assert_eq!(stat["hierarchical_memory_limit"], 9223372036854771712);
        assert_eq!(parse_flat_keyed(V1_OOM_CONTROL).unwrap()["oom_kill"], 3);
        assert_eq!(parse_flat_keyed(V2_STAT).unwrap()["file_mapped"], 5242880);
        assert_eq!(parse_flat_keyed(V2_EVENTS).unwrap()["max"], 34);
    }

    #[test]
    fn flat_keyed_malformed() {
        let cases = [
            ("", pe(0, Empty)),
            ("\n  \n", pe(0, Empty)),
            ("cache 1\nrss\n", pe(2, MissingValue("rss".into()))),
            (
                "\u{0}garbage\u{ff}",
                pe(1, MissingValue("\u{0}garbage\u{ff}".into())),
            ),
            ("rss -5", pe(1, Negative("-5".into()))),
            (
                "rss 18446744073709551616",
                pe(1, Overflow("18446744073709551616".into())),
            ),
            ("rss 12kB", pe(1, NotANumber("12kB".into()))),
            ("rss 0x10", pe(1, NotANumber("0x10".into()))),
            ("rss +5", pe(1, NotANumber("+5".into()))),
            ("rss 1 2", pe(1, ExtraField("2".into()))),
            ("rss 1\nrss 2", pe(2, DuplicateKey("rss".into()))),
        ];
        for (input, want) in cases {
            assert_eq!(parse_flat_keyed(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn single_values() {
        assert_eq!(parse_limit_v1("9223372036854771712\n"), Ok(None)); // 4 KiB pages
        assert_eq!(parse_limit_v1("9223372036854710272\n"), Ok(None)); // 64 KiB pages
        assert_eq!(parse_limit_v1("9223372036854775807\n"), Ok(None)); // pre-4.x RESOURCE_MAX
        assert_eq!(parse_limit_v1("67108864\n"), Ok(Some(64 * MIB)));
        assert_eq!(parse_max_v2("max\n"), Ok(None));
        assert_eq!(parse_max_v2("536870912\n"), Ok(Some(512 * MIB)));
        assert_eq!(parse_u64_file("0\n"), Ok(0));
        assert_eq!(parse_max_v2("-1\n"), Err(pe(1, Negative("-1".into()))));
        assert_eq!(parse_limit_v1("1\n2\n"), Err(pe(2, ExtraField("2".into()))));
        for bad in "|\n|-1|abc|18446744073709551616|1 2|MAX|1.5|max max".split('|') {
            assert!(parse_limit_v1(bad).is_err(), "{bad:?}");
            assert!(parse_max_v2(bad).is_err(), "{bad:?}");
            assert!(parse_u64_file(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pressure() {
        let p = parse_pressure(V2_PRESSURE).unwrap();
        let some = (p.some.avg10, p.some.avg60, p.some.avg300, p.some.total_us);
        assert_eq!(some, (1.25, 0.4, 0.08, 1234567));
        assert_eq!(p.full.map(|f| (f.avg10, f.total_us)), Some((0.5, 456789)));
        // This machine's idle /proc/pressure/memory; a missing `full` line is tolerated.
        let idle = "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_pressure(idle), Ok(Pressure::default()));
        let full = "full avg10=0.00 avg60=0.00 avg300=0.00 total=0";
        let cases = [
            ("", pe(0, Empty)),
            (full, pe(0, MissingSome)),
            ("partial avg10=0.00", pe(1, UnknownPressureKind("partial".into()))),
            (
                "some avg10=0.00 avg60=0.00 total=0",
                pe(1, MissingPressureField("avg300")),
            ),
            ("some avg10 avg60=0.00", pe(1, MissingValue("avg10".into()))),
            ("some avg10=-1.00", pe(1, Negative("-1.00".into()))),
            ("some avg10=nan", pe(1, NotANumber("nan".into()))),
            ("some avg10=1e3", pe(1, NotANumber("1e3".into()))),
            (
                "some total=99999999999999999999",
                pe(1, Overflow("99999999999999999999".into())),
            ),
            ("some avg10=0.00 avg10=0.00", pe(1, DuplicateKey("avg10".into()))),
            (&format!("{idle}{idle}"), pe(2, DuplicateKey("some".into()))),
        ];
        for (input, want) in cases {
            assert_eq!(parse_pressure(input), Err(want), "{input:?}");
        }
    }

    /// A small fuzzer: every prefix of every sample (torn reads) plus random token soup.
    #[test]
    fn parsers_never_panic() {
        let samples = [V1_STAT, V2_STAT, V2_EVENTS, V2_PRESSURE, "max\n"];
        let prefixes = samples
            .iter()
            .flat_map(|s| s.char_indices().map(|(i, _)| s.get(..i)));
        let mut inputs: Vec<String> = prefixes.flatten().map(str::to_owned).collect();
        let pieces: Vec<&str> = "some|full| avg10=| total=|max|rss |-|7|0.25|=| |\n|\0|é|nan|1e9\
            |18446744073709551616"
            .split('|')
            .collect();
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as usize
        };
        for _ in 0..20_000 {
            inputs.push((0..next() % 12).map(|_| pieces[next() % pieces.len()]).collect());
        }
        for s in &inputs {
            let _ = (parse_flat_keyed(s), parse_limit_v1(s), parse_max_v2(s));
            let _ = parse_pressure(s);
        }
    }

    #[test]
    fn reads_v2_fixture() {
        let dir = tree(&[
            ("memory.current", "52428800\n"),
            ("memory.peak", "73400320\n"),
            ("memory.max", "104857600\n"),
            ("memory.high", "max\n"),
            ("memory.low", "0\n"),
            ("memory.min", "0\n"),
            ("memory.swap.current", "1048576\n"),
            ("memory.swap.max", "max\n"),
            ("memory.stat", V2_STAT),
            ("memory.events", V2_EVENTS),
            ("memory.oom.group", "1\n"),
            ("memory.pressure", V2_PRESSURE),
        ]);
        let stats = read_memory_stats(dir.path(), V2).unwrap();
        let want = MemoryStats {
            version: V2,
            usage: 50 * MIB,
            peak: Some(70 * MIB),
            limit: Some(100 * MIB),
            low: Some(0),
            min: Some(0),
            swap_usage: Some(MIB),
            anon: 20 * MIB,
            file: 30 * MIB,
            inactive_file: 12 * MIB,
            active_file: 18 * MIB,
            shmem: MIB,
            mapped_file: 5 * MIB,
            kernel: Some(3 * MIB),
            slab: Some(2359296),
            sock: Some(4096),
            high_events: Some(12),
            max_events: Some(34),
            oom_events: Some(2),
            oom_kills: Some(1),
            oom_group_kills: Some(0),
            oom_group: Some(true),
            pressure: Some(parse_pressure(V2_PRESSURE).unwrap()),
            ..MemoryStats::default()
        };
        assert_eq!(stats, want);
        assert_eq!(stats.working_set(), 38 * MIB);
        assert_eq!(stats.headroom(), Some(50 * MIB));
        assert_eq!(stats.usage_ratio(), Some(0.5));

        // Optional files absent (old kernel, no swap accounting, no PSI): None, not an error.
        for name in "memory.swap.current memory.pressure memory.events memory.peak".split(' ') {
            fs::remove_file(dir.path().join(name)).unwrap();
        }
        let lean = read_memory_stats(dir.path(), V2).unwrap();
        assert!(lean.swap_usage.is_none() && lean.pressure.is_none() && lean.oom_kills.is_none());

        fs::write(dir.path().join("memory.stat"), "anon x\n").unwrap();
        let err = read_memory_stats(dir.path(), V2).unwrap_err();
        assert!(matches!(err, StatsError::Parse { ref path, .. } if path.ends_with("memory.stat")));
        fs::write(dir.path().join("memory.stat"), "file 1\n").unwrap();
        let err = read_memory_stats(dir.path(), V2).unwrap_err();
        assert!(matches!(err, StatsError::MissingKey { key: "anon", .. }), "{err}");
        fs::remove_file(dir.path().join("memory.stat")).unwrap();
        let err = read_memory_stats(dir.path(), V2).unwrap_err();
        assert!(matches!(err, StatsError::Vanished { ref path } if path.ends_with("memory.stat")));
        let err = read_memory_stats(&dir.path().join("gone"), V2).unwrap_err();
        assert!(matches!(err, StatsError::Vanished { .. }), "{err}");
    }

    #[test]
    fn reads_v1_fixture() {
        let dir = tree(&[
            ("memory.usage_in_bytes", "40370176\n"),
            ("memory.limit_in_bytes", "9223372036854771712\n"),
            ("memory.stat", V1_STAT),
            ("memory.oom_control", V1_OOM_CONTROL),
            ("memory.failcnt", "7\n"),
        ]);
        let s = read_memory_stats(dir.path(), V1).unwrap();
        assert_eq!((s.limit, s.headroom(), s.usage_ratio()), (None, None, None));
        // total_* (hierarchical) keys win over the local ones.
        assert_eq!((s.anon, s.file), (8802304, 28278784));
        assert_eq!(s.inactive_file, 8065024);
        assert_eq!(s.kernel, Some(40370176 - 8802304 - 28278784)); // no kmem file: estimate
        let oom = (s.oom_kills, s.under_oom, s.oom_kill_disable, s.failcnt);
        assert_eq!(oom, (Some(3), Some(true), Some(false), Some(7)));
        assert_eq!((s.swap_usage, s.memsw_usage), (Some(0), None));
        assert_eq!(s.hierarchical_limit, None);
        fs::write(dir.path().join("memory.kmem.usage_in_bytes"), "1048576\n").unwrap();
        assert_eq!(read_memory_stats(dir.path(), V1).unwrap().kernel, Some(MIB));
    }

    /// Re-creates and removes a cgroup while reading it: every read must be Ok or
    /// Vanished (never another error, never a panic). Returns (ok, vanished) counts.
    fn race_removal(dir: &Path, version: CgroupVersion, cycle: impl Fn() + Sync) -> (u32, u32) {
        let done = AtomicBool::new(false);
        let (mut ok, mut vanished) = (0, 0);
        std::thread::scope(|s| {
            s.spawn(|| {
                (0..300).for_each(|_| cycle());
                done.store(true, Ordering::Release);
            });
            while !done.load(Ordering::Acquire) {
                match read_memory_stats(dir, version) {
                    Ok(_) => ok += 1,
                    Err(StatsError::Vanished { .. }) => vanished += 1,
                    Err(e) => panic!("{e}"),
                }
            }
        });
        (ok, vanished)
    }

    #[test]
    fn fixture_removed_while_reading() {
        let fixture = tree(&[("memory.current", "1\n"), ("memory.stat", V2_STAT)]);
        let parent = tempfile::tempdir().unwrap();
        let live = parent.path().join("cg");
        // Renames make appearing and vanishing atomic, as kernfs does for a cgroup.
        let cycle = || {
            fs::rename(fixture.path(), &live).unwrap();
            fs::rename(&live, fixture.path()).unwrap();
        };
        let (ok, vanished) = race_removal(&live, V2, cycle);
        assert!(ok + vanished > 0);
    }

    const V1_ROOT: &str = "/sys/fs/cgroup/memory";

    fn v1_or_skip(test: &str) -> bool {
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:")?.split_whitespace().nth(1));
        let root = Path::new(V1_ROOT).join("memory.limit_in_bytes").exists();
        if euid == Some("0") && root {
            return true;
        }
        skip(test, &format!("root and cgroup v1 at {V1_ROOT}"));
        false
    }

    fn skip(test: &str, needs: &str) {
        // Straight to stderr: libtest's capture would hide eprintln! of a passing test.
        let _ = writeln!(io::stderr(), "\n*** SKIPPED {test}: needs {needs} ***\n");
    }

    /// A test cgroup under the v1 root (never process_api), removed on drop after
    /// killing its child, even when an assertion fails.
    struct TestCgroup {
        dir: PathBuf,
        child: Option<Child>,
    }

    impl TestCgroup {
        fn new(suffix: &str) -> Self {
            let name = format!("memtrace-stats-test-{}{suffix}", std::process::id());
            let dir = Path::new(V1_ROOT).join(name);
            fs::create_dir(&dir).unwrap();
            TestCgroup { dir, child: None }
        }
    }

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            // rmdir answers EBUSY until exited tasks have left the cgroup.
            for _ in 0..100 {
                match fs::remove_dir(&self.dir) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => return,
                }
            }
            let _ = writeln!(io::stderr(), "WARNING: left {}", self.dir.display());
        }
    }

    #[test]
    fn real_v1_cgroup() {
        if !v1_or_skip("real_v1_cgroup") {
            return;
        }
        let mut cg = TestCgroup::new("");
        fs::write(cg.dir.join("memory.limit_in_bytes"), (64 * MIB).to_string()).unwrap();
        let before = read_memory_stats(&cg.dir, V1).unwrap();
        assert_eq!((before.version, before.limit), (V1, Some(64 * MIB)));
        assert!(before.usage < 4 * MIB, "{before:?}");

        // The child waits for its pid to be moved into the cgroup, then touches 16 MiB.
        let script = "import sys; sys.stdin.readline(); b = b'x' * (16 << 20); \
            print(len(b), flush=True); sys.stdin.readline()";
        let mut python = Command::new("python3");
        python
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let Ok(child) = python.spawn() else {
            return skip("real_v1_cgroup allocation part", "python3");
        };
        let child = cg.child.insert(child);
        fs::write(cg.dir.join("cgroup.procs"), child.id().to_string()).unwrap();
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "go").unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "16777216");

        let during = read_memory_stats(&cg.dir, V1).unwrap();
        assert!(during.anon >= before.anon + 15 * MIB, "{during:?}");
        assert!(during.usage >= before.usage + 16 * MIB, "{during:?}");
        assert!(during.working_set() >= 16 * MIB && during.headroom() < Some(48 * MIB));
        drop(stdin); // EOF: the child exits.
        assert!(cg.child.take().unwrap().wait().unwrap().success());
    }

    #[test]
    fn real_v1_cgroup_removed_while_reading() {
        if !v1_or_skip("real_v1_cgroup_removed_while_reading") {
            return;
        }
        let cg = TestCgroup::new("-race");
        let cycle = || {
            fs::remove_dir(&cg.dir).unwrap();
            fs::create_dir(&cg.dir).unwrap();
        };
        let (ok, vanished) = race_removal(&cg.dir, V1, cycle);
        let _ = writeln!(io::stderr(), "v1 race: {ok} reads ok, {vanished} vanished");
    }
}
