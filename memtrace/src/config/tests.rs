use std::time::Duration;

use super::*;
use crate::output::Format;

fn err(text: &str) -> (String, String) {
    Config::parse(text).expect_err(text)
}

#[test]
fn example_file_parses_and_validates() {
    let text = include_str!("../../../memtrace.example.toml");
    let c = Config::parse(text).unwrap_or_else(|e| panic!("{e:?}"));
    c.validate().unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn enrich_budget_is_bounded() {
    let c = Config::parse("[watch]\nenrich_budget = \"200ms\"\n").expect("parse");
    assert_eq!(c.watch.enrich_budget, std::time::Duration::from_millis(200));
    c.validate().expect("valid");
    for bad in ["0s", "1m"] {
        let c = Config::parse(&format!("[watch]\nenrich_budget = \"{bad}\"\n")).expect("parse");
        let e = c.validate().expect_err(bad);
        assert!(e.to_string().contains("watch.enrich_budget"), "{e}");
    }
}

#[test]
fn kill_stacks_wait_is_off_by_default_and_bounded() {
    assert!(
        Config::parse("")
            .expect("parse")
            .charges
            .kill_stacks_wait
            .is_zero()
    );
    let c = Config::parse("[charges]\nkill_stacks_wait = \"50ms\"\n").expect("parse");
    assert_eq!(c.charges.kill_stacks_wait, std::time::Duration::from_millis(50));
    c.validate().expect("valid");
    let c = Config::parse("[charges]\nkill_stacks_wait = \"11s\"\n").expect("parse");
    let e = c.validate().expect_err("11s");
    assert!(e.to_string().contains("charges.kill_stacks_wait"), "{e}");
}

#[test]
fn empty_file_is_the_defaults() {
    let c = Config::parse("").expect("empty");
    assert!(c.sinks.stdout.as_ref().is_some_and(|s| s.enabled));
    assert!(c.sinks.webhook.is_none() && !c.metrics.enabled);
    c.validate().expect("defaults are valid");
}

#[test]
fn unknown_keys_are_named() {
    let (k, m) = err("[sinks.stdout]\nformatt = \"json\"\n");
    assert_eq!(k, "sinks.stdout.formatt", "{m}");
    assert!(m.contains("unknown field `formatt`"), "{m}");
    let (k, m) = err("[sinks.webhook]\nurl = \"http://x\"\ntokn = \"a\"\n");
    assert_eq!(k, "sinks.webhook.tokn");
    assert!(m.contains("unknown field"), "{m}");
    let (k, m) = err("[metric]\nenabled = true\n");
    assert_eq!(k, "metric", "{m}");
}

#[test]
fn variants_are_parsed_with_the_file() {
    let (k, m) = err("[watch]\nvariants = [\"cgroup_mkdir=kprobe\"]\n");
    assert!(k.starts_with("watch.variants"), "{k}: {m}");
    assert!(m.contains("no \"kprobe\" variant"), "{m}");
    let c = Config::parse("[watch]\nvariants = [\"oom_victim=tracepoint\"]\n").expect("valid");
    assert_eq!(
        c.watch.variants,
        vec!["oom_victim=tracepoint".parse().expect("valid")]
    );
}

#[test]
fn type_errors_name_the_key() {
    let (k, m) =
        err("[sinks.webhook]\nurl = \"http://x\"\n[sinks.webhook.retry]\nmax_attempts = \"three\"\n");
    assert_eq!(k, "sinks.webhook.retry.max_attempts", "{m}");
    let (k, m) = err("[sinks.webhook]\nurl = \"http://x\"\ntimeout = \"soon\"\n");
    assert_eq!(k, "sinks.webhook.timeout");
    assert!(m.contains("not a duration"), "{m}");
    let (k, m) = err("[sinks.stdout]\nformat = \"xml\"\n");
    assert_eq!(k, "sinks.stdout.format");
    assert!(m.contains("xml"), "{m}");
}

fn invalid_key(text: &str) -> String {
    match Config::parse(text).expect(text).validate() {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("{text}: {other:?}"),
    }
}

#[test]
fn bad_values_name_the_key() {
    assert_eq!(
        invalid_key("[sinks.webhook]\nurl = \"ftp://x\"\n"),
        "sinks.webhook.url"
    );
    assert_eq!(
        invalid_key("[sinks.webhook]\nurl = \"http://u:p@x/\"\n"),
        "sinks.webhook.url"
    );
    assert_eq!(
        invalid_key("[sinks.alertmanager]\nurl = \"http://x\"\nretry = { max_attempts = 0 }\n"),
        "sinks.alertmanager.retry.max_attempts"
    );
    assert_eq!(
        invalid_key("[sinks.alertmanager]\nurl = \"http://x\"\nlabels = { \"bad-name\" = \"1\" }\n"),
        "sinks.alertmanager.labels.bad-name"
    );
    assert_eq!(
        invalid_key("[metrics]\nenabled = true\nlisten = \"localhost\"\n"),
        "metrics.listen"
    );
    assert_eq!(
        invalid_key("[watch]\nws_alert_ratio = 1.5\n"),
        "watch.ws_alert_ratio"
    );
    assert_eq!(
        invalid_key("[watch]\noom_ring_bytes = 1000\n"),
        "watch.oom_ring_bytes"
    );
    assert_eq!(
        invalid_key("[sinks.file]\npath = \"/tmp/x\"\nmax_bytes = 10\n"),
        "sinks.file.max_bytes"
    );
}

#[test]
fn secrets_stay_out_of_debug() {
    let c = Config::parse("[sinks.webhook]\nurl = \"http://x\"\nbearer_token = \"hunter2-very-secret\"\n")
        .expect("parse");
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("hunter2"), "{dbg}");
    assert!(dbg.contains("Secret(***)"));
}

#[test]
fn flags_win() {
    use clap::Parser as _;
    let mut c = Config::parse(
        "[sinks.stdout]\nformat = \"text\"\n[sinks.webhook]\nurl = \"http://a\"\ntimeout = \"2s\"\n",
    )
    .expect("parse");
    let cli = crate::cli::Cli::try_parse_from([
        "memtrace",
        "watch",
        "--output",
        "json",
        "--webhook-url",
        "http://b",
        "--metrics-addr",
        "127.0.0.1:1234",
    ])
    .expect("flags");
    let crate::cli::Command::Watch(args) = cli.command else {
        panic!("watch")
    };
    c.apply_flags(&args);
    c.validate().expect("valid");
    assert_eq!(c.sinks.stdout.as_ref().map(|s| s.format), Some(Format::Json));
    let w = c.sinks.webhook.as_ref().expect("webhook");
    assert_eq!(w.url, "http://b");
    assert_eq!(w.timeout, Duration::from_secs(2), "the file's other keys stay");
    assert_eq!(
        c.metrics_addr().expect("addr"),
        Some("127.0.0.1:1234".parse().expect("addr"))
    );
}

#[test]
fn charge_keys_and_their_flags() {
    use clap::Parser as _;
    let mut c = Config::parse(
        "[charges]\nwarn_ratio = 0.8\nkill_context_window = \"30s\"\nstack_sample_every = 16\n",
    )
    .expect("parse");
    assert_eq!((c.charges.warn_ratio, c.charges.stack_sample_every), (0.8, 16));
    assert_eq!(c.charges.kill_context_window, Duration::from_secs(30));
    let cli = crate::cli::Cli::try_parse_from(["memtrace", "watch", "--warn-ratio", "0.95", "--no-charges"])
        .expect("flags");
    let crate::cli::Command::Watch(args) = cli.command else {
        panic!("watch")
    };
    c.apply_flags(&args);
    assert_eq!(c.charges.warn_ratio, 0.95, "the flag wins");
    assert_eq!(c.charges.stack_sample_every, 16, "the file's other keys stay");
    assert!(!c.charges.enabled);
    let bad = Config::parse("[charges]\nwarn_ratio = 1.5\n").expect("parses; validation is separate");
    let e = bad.validate().expect_err("out of range").to_string();
    assert!(e.contains("charges.warn_ratio"), "{e}");
}
