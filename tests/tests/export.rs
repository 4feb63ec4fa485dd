//! Export to pipelines, end to end: real OOM kills in real memory cgroups, observed through
//! `memtrace watch` and received by real servers from Debian packages (Prometheus,
//! Alertmanager, webhook, systemd-journald) on loopback ports, each started by the test and
//! stopped by its pid.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use memtrace_tests::{
    TestCgroup, Watcher, ebpf_available, procs,
    servers::{Server, free_port, http_get, server_dir, tool_available, urlencode, wait_for},
};
use serde_json::Value;

const LIMIT: u64 = 64 << 20;
const WAIT: Duration = Duration::from_secs(60);

/// One allocator killed in its own 64 MiB cgroup: (cgroup, pid, when its exit was seen).
fn kill_one(tag: &str) -> (TestCgroup, u32, Instant) {
    let cg = TestCgroup::new(tag, LIMIT);
    let mut child = procs::alloc_in(&cg, &["grow"], None);
    let pid = child.id();
    let status = child.wait().expect("wait allocator");
    let seen = Instant::now();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "allocator was SIGKILLed"
    );
    (cg, pid, seen)
}

/// The address memtrace printed for `/metrics`.
fn metrics_addr(w: &Watcher) -> SocketAddr {
    w.stderr_lines
        .iter()
        .find_map(|l| l.strip_prefix("memtrace: metrics on http://"))
        .and_then(|l| l.strip_suffix("/metrics"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no metrics address in {:#?}", w.stderr_lines))
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the sample `series` (exact name and labels) in a text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

fn write_config(dir: &Path, toml: &str) -> String {
    let p = dir.join("memtrace.toml");
    std::fs::write(&p, toml).expect("write config");
    p.to_string_lossy().into_owned()
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn prometheus_scrapes_the_kill_counter() {
    if !ebpf_available("prometheus_scrapes_the_kill_counter")
        || !tool_available("prometheus_scrapes_the_kill_counter", "prometheus")
    {
        return;
    }
    let mut w = Watcher::start(&["--metrics-addr", "127.0.0.1:0"]);
    let target = metrics_addr(&w);
    let port = free_port();
    let prom_addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let dir = server_dir("prometheus");
    // The shipped alerting rules, evaluated every second.
    let rules = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/memtrace-rules.yaml");
    std::fs::copy(&rules, dir.path().join("memtrace-rules.yaml")).expect("copy the rules");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files:\n  - memtrace-rules.yaml\nscrape_configs:\n  - job_name: memtrace\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("prometheus.yml");
    let mut prom = Server::start(
        "prometheus",
        "prometheus",
        &[
            "--config.file=prometheus.yml".into(),
            "--storage.tsdb.path=data".into(),
            format!("--web.listen-address={prom_addr}"),
        ],
        dir,
    );
    prom.wait_http_ok(prom_addr, "/-/ready", Duration::from_secs(30));

    let (cg, pid, _) = kill_one("prom");
    w.next_event(WAIT, |v| memtrace_tests::is_kill(v) && v["process.pid"] == pid);

    let query = format!("memtrace_oom_kills_total{{cgroup=\"{}\"}}", cg.rel);
    let path = format!("/api/v1/query?query={}", urlencode(&query));
    let result = wait_for("the kill counter in Prometheus", WAIT, || {
        prom.assert_running();
        let (status, body) = http_get(prom_addr, &path).ok()?;
        let v = json(&body);
        assert_eq!(status, 200, "{body}");
        let r = v["data"]["result"].as_array()?.first()?.clone();
        Some(r)
    });
    eprintln!("PromQL {query} -> {result}");
    assert_eq!(result["metric"]["cgroup"], cg.rel.as_str());
    assert_eq!(result["metric"]["constraint"], "memcg");
    assert_eq!(result["metric"]["job"], "memtrace");
    assert_eq!(result["value"][1], "1", "one kill");
    // Prometheus asked for (and parsed) OpenMetrics: the build info made it through too.
    let (_, body) = http_get(
        prom_addr,
        &format!("/api/v1/query?query={}", urlencode("memtrace_build_info")),
    )
    .expect("query");
    assert!(body.contains("\"version\""), "{body}");

    // The shipped rules fire for this kill (deploy/prometheus/memtrace-rules.yaml), and only
    // MemtraceOOMKill does for this cgroup; the daemon is up, so MemtraceDown stays quiet.
    let alerts = wait_for("MemtraceOOMKill firing in Prometheus", WAIT, || {
        prom.assert_running();
        let (_, body) = http_get(prom_addr, "/api/v1/alerts").ok()?;
        let v = json(&body);
        let alerts = v["data"]["alerts"].as_array()?.clone();
        alerts
            .iter()
            .any(|a| {
                a["labels"]["alertname"] == "MemtraceOOMKill"
                    && a["labels"]["cgroup"] == cg.rel.as_str()
                    && a["state"] == "firing"
            })
            .then_some(alerts)
    });
    let kill = alerts
        .iter()
        .find(|a| a["labels"]["alertname"] == "MemtraceOOMKill" && a["labels"]["cgroup"] == cg.rel.as_str())
        .expect("the alert");
    eprintln!("alert: {kill}");
    assert_eq!(kill["labels"]["severity"], "critical");
    assert_eq!(kill["labels"]["constraint"], "memcg");
    assert!(
        kill["annotations"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains(&cg.rel)),
        "{kill}"
    );
    // The daemon is up: its last scrape succeeded. MemtraceDown may be listed pending: before
    // the first scrape `absent(up)` holds, and a scrape that overran its 1 s timeout on a
    // loaded machine reads `up == 0` (CI once listed it pending, failing the old check).
    let (_, body) = http_get(
        prom_addr,
        &format!("/api/v1/query?query={}", urlencode("up{job=\"memtrace\"}")),
    )
    .expect("query up");
    let up = json(&body)["data"]["result"][0]["value"][1].clone();
    assert_eq!(up, "1", "memtrace's last scrape: {body}");
    // And MemtraceDown's condition does not hold now.
    let down = r#"up{job="memtrace"} == 0 or absent(up{job="memtrace"})"#;
    let (_, body) = http_get(prom_addr, &format!("/api/v1/query?query={}", urlencode(down))).expect("query");
    assert_eq!(json(&body)["data"]["result"], serde_json::json!([]), "{body}");
    drop(cg);
    w.stop();
}

#[test]
fn alertmanager_lists_the_alert() {
    if !ebpf_available("alertmanager_lists_the_alert")
        || !tool_available("alertmanager_lists_the_alert", "prometheus-alertmanager")
    {
        return;
    }
    let port = free_port();
    let am_addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let dir = server_dir("alertmanager");
    std::fs::write(
        dir.path().join("alertmanager.yml"),
        "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n",
    )
    .expect("alertmanager.yml");
    let mut am = Server::start(
        "alertmanager",
        "prometheus-alertmanager",
        &[
            "--config.file=alertmanager.yml".into(),
            "--storage.path=data".into(),
            format!("--web.listen-address={am_addr}"),
            // No gossip listener (it would bind 0.0.0.0:9094).
            "--cluster.listen-address=".into(),
        ],
        dir,
    );
    am.wait_http_ok(am_addr, "/-/ready", Duration::from_secs(30));

    let mut w = Watcher::start(&["--alertmanager-url", &format!("http://{am_addr}")]);
    let (cg, pid, _) = kill_one("am");
    let ev = w.next_event(WAIT, |v| memtrace_tests::is_kill(v) && v["process.pid"] == pid);

    let alert = wait_for("the alert in Alertmanager", WAIT, || {
        am.assert_running();
        let (_, body) = http_get(am_addr, "/api/v2/alerts").ok()?;
        json(&body)
            .as_array()?
            .iter()
            .find(|a| a["labels"]["cgroup"] == cg.rel.as_str())
            .cloned()
    });
    eprintln!("alert: {alert}");
    assert_eq!(alert["labels"]["alertname"], "MemtraceOOMKill");
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["annotations"]["summary"], ev["memtrace.verdict"]);
    assert_eq!(alert["status"]["state"], "active");
    drop(cg);
    w.stop();
}

#[test]
fn webhook_receives_the_event_with_the_token() {
    const TOKEN: &str = "tok-s3cret-do-not-log";
    if !ebpf_available("webhook_receives_the_event_with_the_token")
        || !tool_available("webhook_receives_the_event_with_the_token", "webhook")
    {
        return;
    }
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let dir = server_dir("webhook");
    let d = dir.path().to_path_buf();
    let script = d.join("save.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$1\" >> '{}'\n",
            d.join("payloads.jsonl").display()
        ),
    )
    .expect("save.sh");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    // The hook fires only with the bearer token: a payload on disk proves it was sent.
    let hooks = serde_json::json!([{
        "id": "memtrace",
        "execute-command": script,
        "command-working-directory": d,
        "http-methods": ["POST"],
        "pass-arguments-to-command": [{ "source": "entire-payload" }],
        "trigger-rule": { "match": {
            "type": "value",
            "value": format!("Bearer {TOKEN}"),
            "parameter": { "source": "header", "name": "Authorization" },
        }},
    }]);
    std::fs::write(d.join("hooks.json"), hooks.to_string()).expect("hooks.json");
    let mut hook = Server::start(
        "webhook",
        "webhook",
        &[
            "-hooks".into(),
            "hooks.json".into(),
            "-ip".into(),
            "127.0.0.1".into(),
            "-port".into(),
            port.to_string(),
            "-verbose".into(),
        ],
        dir,
    );
    hook.wait_listening(addr, Duration::from_secs(30));

    let cfg_dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(
        cfg_dir.path(),
        &format!(
            "[sinks.webhook]\nurl = \"http://{addr}/hooks/memtrace\"\nbearer_token = \"{TOKEN}\"\n[sinks.webhook.retry]\ninitial_backoff = \"100ms\"\n"
        ),
    );
    let mut w = Watcher::start(&["--config", &cfg, "-vv"]);
    let (cg, pid, _) = kill_one("hook");
    let ev = w.next_event(WAIT, |v| memtrace_tests::is_kill(v) && v["process.pid"] == pid);

    let payloads = hook.path("payloads.jsonl");
    let got = wait_for("the payload at the webhook", WAIT, || {
        hook.assert_running();
        std::fs::read_to_string(&payloads)
            .ok()?
            .lines()
            .map(json)
            .find(|v| memtrace_tests::is_kill(v) && v["process.pid"] == pid)
    });
    eprintln!("webhook payload: {got}");
    assert_eq!(got["memtrace.cgroup.path"], cg.rel.as_str());
    assert_eq!(got["event.name"], "memtrace.oom_kill");
    assert_eq!(got["memtrace.seq"], ev["memtrace.seq"]);
    assert_eq!(got, ev, "the webhook gets the same JSON as stdout");
    drop(cg);
    let lines = w.stderr_lines.clone();
    let s = w.stop();
    assert!(s.delivered >= 1);
    assert!(
        lines.iter().all(|l| !l.contains(TOKEN)),
        "the token leaked into the log: {lines:#?}"
    );
}

/// A journald of our own: namespace `memtrace-test-<pid>`, sockets under
/// /run/systemd/journal.<ns>/, files under /var/log/journal/<machine-id>.<ns>/ (both removed).
struct Journald {
    server: Server,
    ns: String,
}

impl Journald {
    fn start() -> Self {
        let ns = format!("memtrace-test-{}", std::process::id());
        let server = Server::start(
            "journald",
            "/lib/systemd/systemd-journald",
            std::slice::from_ref(&ns),
            server_dir("journald"),
        );
        let mut j = Self { server, ns };
        let sock = j.socket();
        wait_for("journald's socket", Duration::from_secs(30), || {
            j.server.assert_running();
            sock.exists().then_some(())
        });
        j
    }

    fn socket(&self) -> std::path::PathBuf {
        format!("/run/systemd/journal.{}/socket", self.ns).into()
    }

    /// `journalctl --namespace=<ns> -o json --all MATCHES`, one JSON object per entry.
    fn entries(&self, matches: &[&str]) -> Vec<Value> {
        let out = std::process::Command::new("journalctl")
            .arg(format!("--namespace={}", self.ns))
            .args(["-o", "json", "--all", "--no-pager"])
            .args(matches)
            .output()
            .expect("journalctl");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the journald this test started, by its pid.
        unsafe { libc::kill(self.server.pid() as i32, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(200));
        let _ = std::fs::remove_dir_all(format!("/run/systemd/journal.{}", self.ns));
        if let Ok(id) = std::fs::read_to_string("/etc/machine-id") {
            for base in ["/var/log/journal", "/run/log/journal"] {
                let _ = std::fs::remove_dir_all(format!("{base}/{}.{}", id.trim(), self.ns));
            }
        }
    }
}

#[test]
fn journald_stores_the_entry_with_its_fields() {
    let journald = "/lib/systemd/systemd-journald";
    if !ebpf_available("journald_stores_the_entry_with_its_fields")
        || !tool_available("journald_stores_the_entry_with_its_fields", journald)
        || !tool_available("journald_stores_the_entry_with_its_fields", "journalctl")
    {
        return;
    }
    let j = Journald::start();
    let cfg_dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(
        cfg_dir.path(),
        &format!("[sinks.journald]\nsocket = \"{}\"\n", j.socket().display()),
    );
    let mut w = Watcher::start(&["--config", &cfg]);
    let (cg, pid, _) = kill_one("journal");
    let ev = w.next_event(WAIT, |v| memtrace_tests::is_kill(v) && v["process.pid"] == pid);

    let id = memtrace::sinks::journald::MESSAGE_ID;
    let entry = wait_for("the entry in the journal", WAIT, || {
        j.entries(&[&format!("MESSAGE_ID={id}")])
            .into_iter()
            .find(|e| e["PROCESS_PID"] == pid.to_string().as_str())
    });
    eprintln!("journal entry: {entry}");
    assert_eq!(entry["SYSLOG_IDENTIFIER"], "memtrace");
    assert_eq!(entry["PRIORITY"], "3");
    assert_eq!(entry["MEMTRACE_CGROUP_PATH"], cg.rel.as_str());
    assert_eq!(entry["PROCESS_EXECUTABLE_NAME"], procs::ALLOC_COMM);
    assert_eq!(entry["MEMTRACE_VERDICT"], ev["memtrace.verdict"]);
    assert_eq!(
        entry["MEMTRACE_VICTIM_ANON_RSS_BYTES"],
        ev["memtrace.victim.anon_rss_bytes"].to_string().as_str()
    );
    let msg = entry["MESSAGE"].as_str().expect("MESSAGE");
    assert!(msg.starts_with(&format!("OOM kill: pid {pid} ")), "{msg}");
    assert_eq!(entry["_TRANSPORT"], "journal", "native protocol");
    drop(cg);
    w.stop();

    // An entry too large for a datagram goes through a sealed memfd.
    let big = "m".repeat(300_000);
    let journal = memtrace::sinks::journald::Journal::new(&j.socket()).expect("socket");
    let tag = format!("memfd-{}", std::process::id());
    journal
        .send(&[
            ("MESSAGE", tag.as_str()),
            ("SYSLOG_IDENTIFIER", "memtrace-test"),
            ("BLOB", big.as_str()),
        ])
        .expect("send a large entry");
    let e = wait_for("the large entry", WAIT, || {
        j.entries(&[&format!("MESSAGE={tag}")]).into_iter().next()
    });
    assert_eq!(e["BLOB"].as_str().map(str::len), Some(big.len()));
}

/// Sinks whose endpoints are down (a webhook that never answers, an Alertmanager port with
/// nothing on it): stdout is not delayed, the failures and the drops are counted.
#[test]
fn dead_endpoints_never_delay_stdout() {
    if !ebpf_available("dead_endpoints_never_delay_stdout") {
        return;
    }
    // Accepts connections (the kernel's backlog does) but never reads or answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    let refused = free_port();
    let cfg_dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(
        cfg_dir.path(),
        &format!(
            r#"[watch]
shutdown_timeout = "1s"
[metrics]
enabled = true
listen = "127.0.0.1:0"
[sinks.webhook]
url = "http://{silent_addr}/hook"
timeout = "2s"
queue = 1
retry = {{ max_attempts = 3, initial_backoff = "100ms" }}
[sinks.alertmanager]
url = "http://127.0.0.1:{refused}"
retry = {{ max_attempts = 2, initial_backoff = "100ms" }}
"#
        ),
    );
    let mut w = Watcher::start(&["--config", &cfg]);
    let metrics = metrics_addr(&w);

    // Three kills at once: the webhook has one in flight (3 attempts x 2 s), one queued, and
    // drops the third; stdout gets all three at once.
    let cgs: Vec<TestCgroup> = (0..3)
        .map(|i| TestCgroup::new(&format!("dead{i}"), LIMIT))
        .collect();
    let children: Vec<_> = cgs
        .iter()
        .map(|cg| procs::alloc_in(cg, &["grow"], None))
        .collect();
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    // The allocators' exits are seen by another thread while this one reads stdout.
    let reaper = std::thread::spawn(move || {
        children
            .into_iter()
            .map(|mut c| {
                c.wait().expect("wait allocator");
                (c.id(), Instant::now())
            })
            .collect::<Vec<_>>()
    });
    let mut arrived = vec![];
    while arrived.len() < pids.len() {
        let done: Vec<u32> = arrived.iter().map(|(p, _)| *p).collect();
        let ev = w.next_event(WAIT, |v| {
            memtrace_tests::is_kill(v) && pids.iter().any(|p| v["process.pid"] == *p && !done.contains(p))
        });
        let delay = ev["memtrace.emit_delay_us"].as_u64().expect("delay");
        assert!(delay < 100_000, "event built {delay} us after the kill");
        let pid = ev["process.pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .expect("pid");
        arrived.push((pid, Instant::now()));
    }
    for (pid, exited) in reaper.join().expect("reaper") {
        let (_, at) = arrived.iter().find(|(p, _)| *p == pid).expect("event");
        let late = at.saturating_duration_since(exited);
        eprintln!("stdout event for {pid}: {late:?} after the allocator's exit was seen");
        assert!(
            late < Duration::from_secs(1),
            "stdout waited {late:?}: a dead sink delayed it"
        );
    }

    let text = wait_for("failed deliveries in the metrics", WAIT, || {
        let t = scrape(metrics);
        let webhook = sample(&t, r#"memtrace_sink_deliveries_failed_total{sink="webhook"}"#)?;
        let am = sample(
            &t,
            r#"memtrace_sink_deliveries_failed_total{sink="alertmanager"}"#,
        )?;
        (webhook >= 1.0 && am >= 3.0).then_some(t)
    });
    eprintln!("{text}");
    // Kills elsewhere on the machine (other tests) are counted too: at least ours.
    let stdout = sample(&text, r#"memtrace_sink_deliveries_total{sink="stdout"}"#).expect("stdout");
    assert!(stdout >= 3.0, "stdout delivered {stdout}");
    assert_eq!(
        sample(&text, r#"memtrace_sink_deliveries_total{sink="webhook"}"#),
        Some(0.0)
    );
    let dropped = sample(
        &text,
        r#"memtrace_events_lost_total{cause="sink_queue_full",sink="webhook"}"#,
    )
    .expect("webhook drops");
    assert!(
        dropped >= 1.0,
        "the webhook's full queue dropped an event: {dropped}"
    );
    assert_eq!(
        sample(
            &text,
            r#"memtrace_events_lost_total{cause="sink_queue_full",sink="stdout"}"#
        ),
        Some(0.0)
    );
    drop(cgs);
    let t = Instant::now();
    let s = w.stop();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "exit waited {:?}",
        t.elapsed()
    );
    assert_eq!(
        s.delivered,
        s.kernel_seen - s.dropped_ringbuf_full - s.decode_errors
    );
    drop(silent);
}

#[test]
fn metrics_pass_promtool() {
    if !ebpf_available("metrics_pass_promtool") || !tool_available("metrics_pass_promtool", "promtool") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let refused = free_port();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[metrics]\nenabled = true\nlisten = \"127.0.0.1:0\"\n[sinks.file]\npath = \"{}\"\n[sinks.webhook]\nurl = \"http://127.0.0.1:{refused}/\"\nretry = {{ max_attempts = 1 }}\n",
            dir.path().join("events.jsonl").display()
        ),
    );
    let mut w = Watcher::start(&["--config", &cfg]);
    let addr = metrics_addr(&w);
    let (cg, pid, _) = kill_one("promtool");
    w.next_event(WAIT, |v| memtrace_tests::is_kill(v) && v["process.pid"] == pid);
    let text = wait_for("the webhook failure counted", WAIT, || {
        let t = scrape(addr);
        (sample(&t, r#"memtrace_sink_deliveries_failed_total{sink="webhook"}"#)? >= 1.0).then_some(t)
    });
    let mut p = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(&mut p.stdin.take().expect("stdin"), text.as_bytes()).expect("write");
    let out = p.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );
    assert!(
        text.contains(&format!("cgroup=\"{}\"", cg.rel)),
        "the kill is in the metrics: {text}"
    );
    // The charge side: the cgroup that charged up to its limit has its counters (it was busy
    // and nearly full), and the reconciliation state is there. The default samples page faults
    // (charges are counted only with --exact-charges).
    let faults = format!("memtrace_cgroup_page_faults_total{{cgroup=\"{}\"}}", cg.rel);
    let text = wait_for("the killed cgroup's charge counters", WAIT, || {
        let t = scrape(addr);
        (sample(&t, &faults)? > 0.0).then_some(t)
    });
    let of = |family: &str| sample(&text, &format!("{family}{{cgroup=\"{}\"}}", cg.rel));
    assert!(
        of("memtrace_cgroup_page_faults_total").is_some_and(|n| n >= 8192.0),
        "the allocator touched its 64 MiB page by page: at least 32 MiB of faults: {text}"
    );
    assert!(of("memtrace_cgroup_reclaim_stalls_total").is_some(), "{text}");
    assert!(
        of("memtrace_cgroup_reclaim_stall_seconds_total").is_some(),
        "{text}"
    );
    assert_eq!(
        sample(&text, "memtrace_reconcile_mismatched_cgroups"),
        Some(0.0),
        "{text}"
    );
    let mut p = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(&mut p.stdin.take().expect("stdin"), text.as_bytes()).expect("write");
    let out = p.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool on the charge side: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The file sink wrote the event too.
    let file = std::fs::read_to_string(dir.path().join("events.jsonl")).expect("events file");
    assert!(
        file.lines()
            .map(json)
            .any(|v| memtrace_tests::is_kill(&v) && v["process.pid"] == pid)
    );
    drop(cg);
    w.stop();
}

/// Config errors name the key, and stop memtrace before it touches the kernel.
#[test]
fn config_errors_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (toml, needle) in [
        (
            "[sinks.webhook]\nurl = \"http://x\"\ntimeout = \"soon\"\n",
            "sinks.webhook.timeout",
        ),
        ("[sinks.stdout]\nformatt = \"json\"\n", "sinks.stdout.formatt"),
        (
            "[sinks.alertmanager]\nurl = \"https://am\"\n",
            "sinks.alertmanager.url",
        ),
        (
            "[metrics]\nenabled = true\nlisten = \"nowhere\"\n",
            "metrics.listen",
        ),
    ] {
        let cfg = write_config(dir.path(), toml);
        let out = std::process::Command::new(memtrace_tests::memtrace_bin())
            .args(["watch", "--config", &cfg])
            .output()
            .expect("run memtrace");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{toml}: {err}");
        assert!(err.contains(needle), "{toml}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
}
