//! OpenMetrics text to the classic Prometheus text format 0.0.4 (what `promtool check metrics`
//! and curl read).

/// OpenMetrics text (as prometheus-client writes it, for counters, gauges and info metrics)
/// to the Prometheus text format 0.0.4: counter families are named with their `_total`, info
/// families become gauges named `_info`, and `# UNIT` and `# EOF` go.
pub fn to_prometheus_text(om: &str) -> String {
    use std::collections::HashMap;
    let mut types: HashMap<&str, &str> = HashMap::new();
    for l in om.lines() {
        if let Some(rest) = l.strip_prefix("# TYPE ")
            && let Some((name, ty)) = rest.split_once(' ')
        {
            types.insert(name, ty);
        }
    }
    let rename = |name: &str| -> (String, Option<&'static str>) {
        match types.get(name).copied() {
            Some("counter") => (format!("{name}_total"), None),
            Some("info") => (format!("{name}_info"), Some("gauge")),
            _ => (name.to_owned(), None),
        }
    };
    let mut out = String::with_capacity(om.len());
    for l in om.lines() {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = l.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(&format!("# HELP {} {help}\n", rename(name).0));
        } else if let Some(rest) = l.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (n, t) = rename(name);
            out.push_str(&format!("# TYPE {n} {}\n", t.unwrap_or(ty)));
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}
