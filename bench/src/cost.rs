//! What one transfer costs, from counters read before and after a phase:
//! rows written per table (`pg_stat_user_tables`), WAL bytes (the WAL
//! position, exact), WAL writes and fsyncs (`pg_stat_wal`), and the stream's
//! messages and bytes. CPU per process comes from `system::CpuSample`.
//!
//! Postgres publishes a backend's table and WAL counters when its
//! transaction ends, at most once a second; a phase's last second can show in
//! the next reading. Phases run 15 s or more, so that blurs the figures by a
//! few percent at most, the same way for the mesh and for pgbench.

use std::collections::BTreeMap;

use anyhow::Result;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::load::round;

/// The counters at one instant.
#[derive(Default)]
pub struct Counters {
    /// "<database label>.<table>" → (inserted, updated, deleted) rows.
    tables: BTreeMap<String, (i64, i64, i64)>,
    wal_bytes: i64,
    wal_writes: i64,
    wal_syncs: i64,
    nats_messages: u64,
    nats_bytes: u64,
}

/// Where the counters are read: every database the phase writes (label,
/// pool), and the stream, if the phase publishes.
pub struct Probe<'a> {
    pub dbs: Vec<(&'static str, &'a PgPool)>,
    pub stream: Option<async_nats::jetstream::stream::Stream>,
}

impl Probe<'_> {
    pub async fn read(&mut self) -> Result<Counters> {
        let mut c = Counters::default();
        for (label, db) in &self.dbs {
            let rows: Vec<(String, i64, i64, i64)> =
                sqlx::query_as("SELECT relname::text, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables")
                    .fetch_all(*db)
                    .await?;
            for (table, ins, upd, del) in rows {
                c.tables.insert(format!("{label}.{table}"), (ins, upd, del));
            }
        }
        if let Some((_, db)) = self.dbs.first() {
            (c.wal_bytes, c.wal_writes, c.wal_syncs) = sqlx::query_as(
                "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8, wal_write, wal_sync FROM pg_stat_wal",
            )
            .fetch_one(*db)
            .await?;
        }
        if let Some(stream) = &mut self.stream {
            let state = stream.info().await.map_err(|e| anyhow::anyhow!("stream info: {e}"))?.state.clone();
            (c.nats_messages, c.nats_bytes) = (state.messages, state.bytes);
        }
        Ok(c)
    }
}

/// Per transfer, from `before` to `after` over `transfers` transfers.
pub fn per_transfer(before: &Counters, after: &Counters, transfers: u64, cpu_us: Value) -> Value {
    let n = transfers.max(1) as f64;
    let per = |x: f64| round(x / n);
    let mut tables = serde_json::Map::new();
    let mut rows_total = 0.0;
    for (table, (ins, upd, del)) in &after.tables {
        let (bi, bu, bd) = before.tables.get(table).copied().unwrap_or_default();
        let (i, u, d) = ((ins - bi) as f64, (upd - bu) as f64, (del - bd) as f64);
        if i + u + d > 0.0 {
            rows_total += i + u + d;
            tables.insert(
                table.clone(),
                json!({"written": per(i + u + d), "inserted": per(i), "updated": per(u), "deleted": per(d)}),
            );
        }
    }
    json!({
        "transfers": transfers,
        "cpu_us": cpu_us,
        "rows_written": per(rows_total),
        "rows_by_table": tables,
        "wal_bytes": per((after.wal_bytes - before.wal_bytes) as f64),
        "wal_writes": per((after.wal_writes - before.wal_writes) as f64),
        "wal_fsyncs": per((after.wal_syncs - before.wal_syncs) as f64),
        "nats_messages": per(after.nats_messages.saturating_sub(before.nats_messages) as f64),
        "nats_bytes": per(after.nats_bytes.saturating_sub(before.nats_bytes) as f64),
    })
}
