//! The OTLP sink against a real OpenTelemetry collector: rotel (`pip install rotel`, installed
//! by scripts/setup.sh into .tools/) started on loopback ports, printing every log record it
//! receives. A real OOM kill must arrive as one record with the right EventName, severity, body,
//! timestamp and attributes.

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, UNIX_EPOCH},
};

use memtrace_tests::{
    TestCgroup, Watcher, ebpf_available, procs,
    servers::{Server, free_port, server_dir, tool_available, wait_for},
};

const WAIT: Duration = Duration::from_secs(60);

/// `$MEMTRACE_ROTEL`, else the one scripts/setup.sh links into .tools/bin.
fn rotel() -> String {
    std::env::var("MEMTRACE_ROTEL").unwrap_or_else(|_| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../.tools/bin/rotel-agent")
            .to_string_lossy()
            .into_owned()
    })
}

/// The `LogRecord #n` block of rotel's debug log that has `needle` among its lines.
fn record_with<'a>(log: &'a str, needle: &str) -> Option<&'a str> {
    log.split("LogRecord #")
        .skip(1)
        .find(|r| r.lines().any(|l| l.trim() == needle))
}

fn field<'a>(record: &'a str, name: &str) -> Option<&'a str> {
    record
        .lines()
        .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(": "))
}

#[test]
fn otlp_record_reaches_a_real_collector() {
    let bin = rotel();
    if !ebpf_available("otlp_record_reaches_a_real_collector")
        || !tool_available("otlp_record_reaches_a_real_collector", &bin)
    {
        return;
    }
    let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let dir = server_dir("rotel");
    let pid_file = dir.path().join("rotel.pid");
    let mut collector = Server::start(
        "rotel",
        &bin,
        &[
            "start".into(),
            "--otlp-http-endpoint".into(),
            http.to_string(),
            "--otlp-grpc-endpoint".into(),
            grpc.to_string(),
            "--exporter".into(),
            "blackhole".into(),
            "--debug-log".into(),
            "logs".into(),
            "--debug-log-verbosity".into(),
            "detailed".into(),
            "--pid-file".into(),
            pid_file.to_string_lossy().into_owned(),
        ],
        dir,
    );
    collector.wait_listening(http, Duration::from_secs(30));

    let cfg_dir = tempfile::tempdir().expect("tempdir");
    let cfg = cfg_dir.path().join("memtrace.toml");
    std::fs::write(
        &cfg,
        format!("[watch]\nhost_name = \"otlp-node\"\n[sinks.otlp]\nurl = \"http://{http}/v1/logs\"\n"),
    )
    .expect("config");
    let mut w = Watcher::start(&["--config", cfg.to_str().expect("utf-8")]);
    let cg = TestCgroup::new("otlp", 64 << 20);
    let mut child = procs::alloc_in(&cg, &["grow"], None);
    let pid = child.id();
    child.wait().expect("wait allocator");
    let ev = w.next_event(WAIT, |v| memtrace_tests::is_kill(v) && v["process.pid"] == pid);

    let pid_line = format!("-> process.pid: Int({pid})");
    let log = wait_for("the kill's record in rotel's log", WAIT, || {
        collector.assert_running();
        let log = collector.log();
        record_with(&log, &pid_line).is_some().then_some(log)
    });
    let r = record_with(&log, &pid_line).expect("record");
    eprintln!("rotel printed:\nLogRecord #{r}");
    assert_eq!(field(r, "EventName"), Some("memtrace.oom_kill"), "{r}");
    assert_eq!(field(r, "SeverityText"), Some("ERROR"), "{r}");
    assert_eq!(
        field(r, "SeverityNumber"),
        Some("SEVERITY_NUMBER_ERROR(17)"),
        "{r}"
    );
    // The body is the sentence for people: the JSON line's body and the verdict.
    let body = format!(
        "Str({}: {})",
        ev["body"].as_str().expect("body"),
        ev["memtrace.verdict"].as_str().expect("verdict")
    );
    assert_eq!(field(r, "Body"), Some(body.as_str()), "{r}");
    // The kill's own time, to the nanosecond, as the JSON line has it.
    let ts = humantime::parse_rfc3339(ev["timestamp"].as_str().expect("timestamp")).expect("rfc3339");
    let ns = ts.duration_since(UNIX_EPOCH).expect("after 1970").as_nanos();
    assert_eq!(field(r, "Timestamp"), Some(ns.to_string().as_str()), "{r}");
    for attr in [
        format!("-> memtrace.cgroup.path: Str({})", cg.rel),
        "-> memtrace.constraint: Str(memcg)".to_owned(),
        format!(
            "-> process.executable.name: Str({})",
            ev["process.executable.name"].as_str().expect("comm")
        ),
        format!("-> memtrace.snapshot.limit_bytes: Int({})", 64u64 << 20),
    ] {
        assert!(r.lines().any(|l| l.trim() == attr), "{attr} missing:\n{r}");
    }
    // Current conventions: the event name is not also a (deprecated) attribute.
    assert!(!r.contains("-> event.name:"), "{r}");
    // The resource names the node and the service.
    assert!(log.contains("-> host.name: Str(otlp-node)"), "{log}");
    assert!(log.contains("-> service.name: Str(memtrace)"), "{log}");
    drop(cg);
    let exit = w.kill_with(libc::SIGTERM, Duration::from_secs(15));
    assert!(
        // (Other tests' kills on this host may be delivered too.)
        exit.stderr
            .iter()
            .any(|l| l.contains("sink otlp: delivered=") && l.contains(" failed=0 dropped=0")),
        "{:#?}",
        exit.stderr
    );
}
