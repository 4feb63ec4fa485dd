//! The result of one boot: parsed from the marker lines /init prints.

use std::{collections::BTreeMap, time::Duration};

use super::{BOOTED, DONE, RESULT};

#[derive(Debug)]
struct TestResult {
    name: String,
    rc: Option<i32>,
    secs: Option<f64>,
}

#[derive(Debug)]
pub(super) struct Report {
    pub(super) series: String,
    uname: Option<String>,
    pub(super) boot: Option<Duration>,
    wall: Duration,
    results: Vec<TestResult>,
    done: bool,
    timed_out: bool,
}

impl Report {
    pub(super) fn passed(&self) -> bool {
        self.done && !self.timed_out && self.results.iter().all(|r| r.rc == Some(0))
    }

    pub(super) fn line(&self) -> String {
        let tests: Vec<String> = self
            .results
            .iter()
            .map(|r| {
                let rc = r.rc.map_or("missing".into(), |rc| format!("rc={rc}"));
                let secs = r.secs.map_or(String::new(), |s| format!(" {s:.1}s"));
                format!("{}{secs} {rc}", r.name)
            })
            .collect();
        format!(
            "{} {:<28} boot {}, {}, wall {:.1}s{}",
            if self.passed() { "PASS" } else { "FAIL" },
            format!("{} ({})", self.series, self.uname.as_deref().unwrap_or("?")),
            self.boot
                .map_or("?".into(), |b| format!("{:.1}s", b.as_secs_f64())),
            tests.join(", "),
            self.wall.as_secs_f64(),
            match (self.timed_out, self.done) {
                (true, _) => " (TIMED OUT)",
                (false, false) => " (guest stopped before it finished)",
                _ => "",
            }
        )
    }
}

/// Removes terminal control sequences (SeaBIOS clears the screen) from a console line.
pub(super) fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            c if c.is_control() && c != '\t' => {}
            c => out.push(c),
        }
    }
    out
}

pub(super) fn parse_report(
    series: &str,
    lines: &[String],
    tests: &[String],
    boot: Option<Duration>,
    wall: Duration,
    timed_out: bool,
) -> Report {
    let mut uname = None;
    let mut done = false;
    let mut seen: BTreeMap<String, (Option<i32>, Option<f64>)> = BTreeMap::new();
    for line in lines {
        let Some(at) = line.find("MEMTRACE-VM-") else {
            continue;
        };
        let mut words = line[at..].split_whitespace();
        let marker = words.next().unwrap_or_default();
        let kernel = words.next().map(str::to_owned);
        let rest: Vec<&str> = words.collect();
        let kv = |key: &str| {
            rest.iter()
                .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        };
        match marker {
            BOOTED => uname = kernel,
            RESULT => {
                let Some(name) = rest.first() else { continue };
                let rc = kv("rc").and_then(|v| v.parse().ok());
                let secs = kv("start")
                    .zip(kv("end"))
                    .and_then(|(s, e)| Some(e.parse::<f64>().ok()? - s.parse::<f64>().ok()?));
                seen.insert((*name).to_owned(), (rc, secs));
            }
            DONE => done = true,
            _ => {}
        }
    }
    let results = tests
        .iter()
        .map(|name| {
            let (rc, secs) = seen.get(name).copied().unwrap_or((None, None));
            TestResult {
                name: name.clone(),
                rc,
                secs,
            }
        })
        .collect();
    Report {
        series: series.to_owned(),
        uname,
        boot,
        wall,
        results,
        done,
        timed_out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_from_markers() {
        let lines: Vec<String> = [
            "\x1b[2JMEMTRACE-VM-BOOTED 6.1.0-56-amd64 uptime=2.1",
            "[  9.1] oom-kill: noise MEMTRACE-VM-RESULT 6.1.0-56-amd64 oom_kill rc=0 start=2.5 end=40.0",
            "MEMTRACE-VM-RESULT 6.1.0-56-amd64 cli_errors rc=101 start=40.0 end=41.0",
            "MEMTRACE-VM-DONE 6.1.0-56-amd64 failed=1",
        ]
        .iter()
        .map(|l| printable(l))
        .collect();
        let tests = ["cli_errors", "oom_kill", "vm_only"].map(String::from);
        let r = parse_report("6.1", &lines, &tests, None, Duration::from_secs(50), false);
        assert_eq!(r.uname.as_deref(), Some("6.1.0-56-amd64"));
        assert!(r.done);
        assert_eq!(r.results[0].rc, Some(101));
        assert_eq!(r.results[1].rc, Some(0));
        assert!((r.results[1].secs.unwrap_or_default() - 37.5).abs() < 1e-9);
        assert_eq!(r.results[2].rc, None, "a binary with no result line fails");
        assert!(!r.passed());
    }
}
