//! bench/results/<date>.json, the Markdown table of targets and the cost
//! table next to it, and latest.json/latest.md for the README to point at.

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

/// "median (min–max)" of a spread.
fn spread(s: &Value) -> String {
    format!("{:.3} ({:.3}–{:.3})", f(&s["median"]), f(&s["min"]), f(&s["max"]))
}

/// A target: (measure, key, goal text, met by the median).
type Target = (&'static str, &'static str, &'static str, fn(f64) -> bool);

/// The benchmark's targets.
const TARGETS: [Target; 6] = [
    ("uniform transfers/s ÷ pgbench same SQL", "uniform_ratio", "≥ 1.3", |x| x >= 1.3),
    ("hot-account transfers/s ÷ pgbench same SQL, hot", "hot_ratio", "≥ 2.0", |x| x >= 2.0),
    ("mesh CPU per transfer ÷ pgbench's (cost table)", "cpu_ratio", "≤ 0.8", |x| x <= 0.8),
    ("projection lag p99 at half load (ms)", "projection_lag_p99_ms", "≤ 25", |x| x <= 25.0),
    ("GetBalance/s ÷ no-op RPC/s", "get_balance_ratio", "≥ 0.95", |x| x >= 0.95),
    ("GetBalance p99 ÷ no-op p99, same open-loop rate", "get_balance_p99_ratio", "≤ 1.5", |x| x <= 1.5),
];

pub fn markdown(r: &Value) -> String {
    let reps = &r["settings"]["repetitions"];
    let mut md = format!(
        "# bankmesh benchmark — {}\n\nOne box ({} CPUs), every server on loopback, `synchronous_commit = on`, \
         JetStream `sync_interval: always`, the whole pipeline running. {} interleaved repetitions of {} s \
         phases: each figure is the median (min–max).\n\n\
         | target | median (min–max) | goal | met |\n|---|---|---|---|\n",
        r["date"].as_str().unwrap_or(""),
        r["machine"]["cpus"],
        reps,
        r["settings"]["seconds_per_phase"],
    );
    for (what, key, goal, met) in TARGETS {
        let ok = if met(f(&r[key])) { "yes" } else { "**no**" };
        md.push_str(&format!("| {what} | {} | {goal} | {ok} |\n", spread(&r["spread"][key])));
    }
    let conserved = r["conserved"] == json!(true);
    md.push_str(&format!(
        "| money conserved, reconcile clean, events = published = projected | {} | true | {} |\n",
        r["conserved"],
        if conserved { "yes" } else { "**no**" }
    ));
    md.push_str("\n| figure | median (min–max) |\n|---|---|\n");
    for (what, key) in [
        ("mesh uniform transfers/s", "transfers_uniform_per_second"),
        ("pgbench uniform transfers/s", "pgbench_uniform_per_second"),
        ("mesh hot-account transfers/s", "transfers_hot_per_second"),
        ("pgbench hot-account transfers/s", "pgbench_hot_per_second"),
        ("projection lag p50 at half load (ms)", "projection_lag_p50_ms"),
        ("backlog drain after the half load (s)", "drain_s"),
        ("GetBalance/s", "get_balance_per_second"),
        ("no-op RPC/s", "noop_rpc_per_second"),
        ("GetBalance p99 at half its ceiling (ms)", "get_balance_p99_ms_open"),
        ("no-op RPC p99 at the same rate (ms)", "noop_rpc_p99_ms_open"),
    ] {
        md.push_str(&format!("| {what} | {} |\n", spread(&r["spread"][key])));
    }
    md.push_str(&stage_table(&r["stage_latency_ms"], &r["batch_sizes"]));
    md.push_str(&cost_table(&r["cost_per_transfer"]));
    md.push_str(&read_cost_table(&r["cost_per_read"]));
    if let Some(long) = r["long"].as_array().filter(|l| !l.is_empty()) {
        md.push_str("\n## BENCH_LONG: half load, minute by minute\n\n| minute | transfers/s | p99 (ms) | disk bytes per transfer | disk total (MiB) |\n|---|---|---|---|---|\n");
        for m in long {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {:.1} |\n",
                m["minute"],
                m["per_second"],
                m["p99_ms"],
                m["disk_bytes_per_transfer"],
                f(&m["disk_bytes_total"]) / 1048576.0
            ));
        }
    }
    md.push_str(&format!(
        "\nOnce per run: command p99 at 70 % of the ceiling {} ms (pgbench {} ms); one transaction per command \
         (batching off): uniform ÷ pgbench {}, hot ÷ pgbench hot {}; peak RSS (MiB) {}; redis-benchmark GET {} /s; \
         pg_test_fsync {}.\n\nCPU % of one core at the uniform ceiling (median): {}.\n\
         Postgres wait events at the uniform ceiling, last repetition (share of active samples): {}.\n",
        r["command_p99_ms_at_70pct"],
        r["pgbench_p99_ms_at_70pct"],
        r["unbatched_uniform_ratio"],
        r["unbatched_hot_ratio"],
        r["rss_mb"],
        r["references"]["redis_benchmark_get_per_second"],
        r["references"]["pg_test_fsync_ops_per_second"],
        r["cpu_percent"]["uniform_max"],
        r["postgres_wait_events"]["mesh_uniform_max"],
    ));
    md
}

/// Latency per stage at half load, and batch sizes per stage at the ceilings.
fn stage_table(stages: &Value, sizes: &Value) -> String {
    let num = |v: &Value| if v.is_null() { "—".to_owned() } else { format!("{:.1}", f(v)) };
    let mut md = String::from(
        "\n## Where the time goes (median of the repetitions)\n\n\
         Latency at half load, from the event's time (its command's decision) to each stage; the last \
         row is the black box, from the transfer's answer to the owner's balance feed showing it. \
         Histogram figures are bucket upper bounds.\n\n\
         | stage | p50 (ms) | p99 (ms) |\n|---|---|---|\n",
    );
    for (what, key) in [
        ("relay publish acknowledged by JetStream", "relay_publish_acked"),
        ("projector transaction committed", "projector_committed"),
        ("balance feed shows it (after the answer)", "feed_visible_after_answer"),
    ] {
        md.push_str(&format!("| {what} | {} | {} |\n", num(&stages[key]["p50"]), num(&stages[key]["p99"])));
    }
    md.push_str(
        "\nBatch sizes at the ceilings (mean; p50 and p99 as bucket upper bounds):\n\n\
         | stage | uniform mean | p50 | p99 | hot mean | p50 | p99 |\n|---|---|---|---|---|---|---|\n",
    );
    for (what, key) in [
        ("commands per command transaction", "command_batch"),
        ("events per relay round", "relay_round"),
        ("events per stream message (signed, stored, delivered and acked once)", "stream_message"),
        ("events per projector transaction", "projector_transaction"),
    ] {
        let (u, h) = (&sizes["uniform_max"][key], &sizes["hot_max"][key]);
        md.push_str(&format!(
            "| {what} | {} | {} | {} | {} | {} | {} |\n",
            num(&u["mean"]),
            num(&u["p50"]),
            num(&u["p99"]),
            num(&h["mean"]),
            num(&h["p50"]),
            num(&h["p99"])
        ));
    }
    md
}

/// What one transfer costs at the uniform ceiling, the mesh beside pgbench.
fn cost_table(c: &Value) -> String {
    let (mesh, pg) = (&c["mesh"], &c["pgbench"]);
    let mut md = String::from(
        "\n## Cost per transfer at the uniform ceiling (median of the repetitions)\n\n\
         | per transfer | mesh | pgbench |\n|---|---|---|\n",
    );
    let num = |v: &Value| if v.is_null() { "—".to_owned() } else { format!("{:.1}", f(v)) };
    let mut processes: Vec<&String> = mesh["cpu_us"].as_object().map(|o| o.keys().collect()).unwrap_or_default();
    processes.sort_by_key(|p| (p.as_str() == "total", p.to_string()));
    for p in processes {
        md.push_str(&format!("| CPU µs, {p} | {} | {} |\n", num(&mesh["cpu_us"][p]), num(&pg["cpu_us"][p])));
    }
    for (what, key) in [
        ("rows written, all tables", "rows_written"),
        ("WAL bytes", "wal_bytes"),
        ("WAL writes", "wal_writes"),
        ("WAL fsyncs", "wal_fsyncs"),
        ("NATS messages", "nats_messages"),
        ("NATS bytes", "nats_bytes"),
    ] {
        md.push_str(&format!("| {what} | {} | {} |\n", num(&mesh[key]), num(&pg[key])));
    }
    for (side, doc) in [("mesh", mesh), ("pgbench", pg)] {
        if let Some(tables) = doc["rows_by_table"].as_object() {
            for (t, v) in tables {
                md.push_str(&format!(
                    "| rows, {side} {t} (ins/upd/del) | {:.2} ({:.2}/{:.2}/{:.2}) | |\n",
                    f(&v["written"]),
                    f(&v["inserted"]),
                    f(&v["updated"]),
                    f(&v["deleted"])
                ));
            }
        }
    }
    md
}

/// CPU per call at the read ceilings: GetBalance beside the no-op RPC.
fn read_cost_table(c: &Value) -> String {
    let (get, noop) = (&c["get_balance_cpu_us"], &c["noop_rpc_cpu_us"]);
    let mut md = String::from(
        "\n## CPU per call at the read ceilings (median)\n\n| CPU µs per call | GetBalance | no-op RPC |\n|---|---|---|\n",
    );
    let mut processes: Vec<&String> = get.as_object().map(|o| o.keys().collect()).unwrap_or_default();
    processes.sort_by_key(|p| (p.as_str() == "total", p.to_string()));
    for p in processes {
        md.push_str(&format!("| {p} | {:.1} | {:.1} |\n", f(&get[p]), f(&noop[p])));
    }
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
