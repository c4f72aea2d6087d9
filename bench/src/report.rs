//! bench/results/<date>.json, the Markdown table of targets next to it, and
//! latest.json/latest.md for the README to point at.

use std::path::Path;

use anyhow::Result;
use serde_json::{Value, json};

pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name"))?.split(':').nth(1).map(|m| m.trim().to_owned()));
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_owned()),
    })
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// (target, measured, goal, met)
fn rows(r: &Value) -> Vec<(String, String, String, Option<bool>)> {
    let pg_p99 = f(&r["pgbench_p99_ms"]);
    let mut rows = vec![
        ("uniform transfers/s ÷ pgbench".into(), f(&r["uniform_ratio"]), "≥ 0.7".into(), f(&r["uniform_ratio"]) >= 0.7),
        ("hot-account transfers/s ÷ pgbench".into(), f(&r["hot_ratio"]), "≥ 1.0".into(), f(&r["hot_ratio"]) >= 1.0),
        (
            "command p99 at 70 % of max (ms)".into(),
            f(&r["command_p99_ms"]),
            format!("≤ 2 × pgbench p99 + 1 = {:.2}", 2.0 * pg_p99 + 1.0),
            f(&r["command_p99_ms"]) <= 2.0 * pg_p99 + 1.0,
        ),
        (
            "projection lag p99 at 50 % (ms)".into(),
            f(&r["projection_lag_p99_ms"]),
            "≤ 50".into(),
            f(&r["projection_lag_p99_ms"]) <= 50.0,
        ),
        ("backlog drain after load (s)".into(), f(&r["drain_s"]), "< 2".into(), f(&r["drain_s"]) < 2.0),
        (
            "GetBalance/s ÷ no-op RPC/s".into(),
            f(&r["get_balance_ratio"]),
            "≥ 0.8".into(),
            f(&r["get_balance_ratio"]) >= 0.8,
        ),
        (
            "GetBalance p99 at 50 % (ms)".into(),
            f(&r["get_balance_p99_ms"]),
            "≤ 1".into(),
            f(&r["get_balance_p99_ms"]) <= 1.0,
        ),
    ]
    .into_iter()
    .map(|(t, m, g, ok): (String, f64, String, bool)| (t, format!("{m:.3}"), g, Some(ok)))
    .collect::<Vec<_>>();
    for (svc, limit) in [("command-service", 128.0), ("projector", 64.0), ("query-service", 64.0)] {
        let mb = f(&r["rss_mb"][svc]);
        rows.push((format!("peak RSS {svc} (MiB)"), format!("{mb:.1}"), format!("≤ {limit}"), Some(mb <= limit)));
    }
    let v = f(&r["batched_ratio"]);
    rows.push((
        "batched (the default) uniform ÷ pgbench one-tx-per-transfer".into(),
        format!("{v:.3}"),
        "> 1.0 (aim)".into(),
        Some(v > 1.0),
    ));
    for (what, key) in [
        ("one tx per command: uniform ÷ pgbench", "unbatched_uniform_ratio"),
        ("one tx per command: hot ÷ pgbench hot", "unbatched_hot_ratio"),
    ] {
        rows.push((what.into(), format!("{:.3}", f(&r[key])), "(comparison)".into(), None));
    }
    rows.push((
        "money conserved, events = published = projected".into(),
        r["conserved"].to_string(),
        "true".into(),
        Some(r["conserved"] == json!(true)),
    ));
    rows
}

pub fn markdown(r: &Value) -> String {
    let mut md = format!(
        "# bankmesh benchmark — {}\n\nOne box ({} CPUs), every server on loopback, `synchronous_commit = on`. \
         command-service in its default batching mode unless the row says otherwise.\n\n\
         | target | measured | goal | met |\n|---|---|---|---|\n",
        r["date"].as_str().unwrap_or(""),
        r["machine"]["cpus"]
    );
    for (target, measured, goal, ok) in rows(r) {
        let met = match ok {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        md.push_str(&format!("| {target} | {measured} | {goal} | {met} |\n"));
    }
    let refs = &r["references"];
    md.push_str(&format!(
        "\nReferences in this run: pgbench uniform {} tx/s (p99 {} ms), hot {} tx/s; no-op RPC {} /s; \
         redis-benchmark GET {} /s; pg_test_fsync {}.\n\nCPU % of one core at the uniform ceiling: {}.\n\
         Postgres wait events at the uniform ceiling (share of active samples): {}.\n",
        refs["pgbench_uniform"]["per_second"],
        refs["pgbench_uniform"]["p99_ms"],
        refs["pgbench_hot"]["per_second"],
        refs["noop_rpc"]["per_second"],
        refs["redis_benchmark_get_per_second"],
        refs["pg_test_fsync_ops_per_second"],
        r["saturation"]["cpu_percent_uniform_max"],
        r["saturation"]["postgres_wait_events_uniform_max"],
    ));
    md
}

pub fn write(dir: &Path, result: &Value) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let stamp = chrono::Utc::now().format("%Y-%m-%dT%H%M%SZ");
    let json = serde_json::to_string_pretty(result)?;
    let md = markdown(result);
    for name in [format!("{stamp}"), "latest".to_owned()] {
        std::fs::write(dir.join(format!("{name}.json")), &json)?;
        std::fs::write(dir.join(format!("{name}.md")), &md)?;
    }
    println!("{md}");
    Ok(())
}
