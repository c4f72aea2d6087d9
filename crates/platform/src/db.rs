//! Postgres connections. Databases and roles are provisioned outside the
//! services (deploy/postgres/provision.sql); each database's migration role
//! runs its migrations (`<service> migrate`), and the services run as roles
//! that own nothing and change no schema (issue 15).

use std::{str::FromStr, time::Duration};

use anyhow::{Context, Result};
use sqlx::{
    ConnectOptions, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// Connects a pool to `url` (the database must exist).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    connect_with(url, max_connections, &[]).await
}

/// As `connect`, with more session settings (`name`, `value`).
pub async fn connect_with(url: &str, max_connections: u32, settings: &[(&str, &str)]) -> Result<PgPool> {
    // A process that hangs mid-transaction (SIGSTOP, a stalled host) must not
    // hold its row locks (the settlement account's, say) for everyone else:
    // Postgres ends such a session after 2 idle seconds (no service waits on
    // anything else inside a transaction). Its other transactions, queued on
    // the first one's locks, give up waiting after 2 s too, so a hung
    // process's locks are gone within ~4 s however many it held; a healthy
    // command that waits that long answers UNAVAILABLE and is retried.
    let options = PgConnectOptions::from_str(url)
        .context("invalid database URL")?
        .options([("idle_in_transaction_session_timeout", "2s"), ("lock_timeout", "2s")])
        .options(settings.iter().copied());
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options.log_statements(tracing::log::LevelFilter::Debug))
        .await
        .context("failed to connect to Postgres")
}

/// `<service> migrate`: runs `migrator` as the migration role whose URL is
/// in `$var`, then returns.
pub async fn migrate_from_env(var: &str, migrator: &Migrator) -> Result<()> {
    let url = std::env::var(var).with_context(|| format!("{var} (the migration role's database URL) is not set"))?;
    let pool = connect(&url, 1).await?;
    migrator.run(&pool).await.context("migrations failed")?;
    pool.close().await;
    Ok(())
}

/// Refuses to run against a database whose schema is not the one this build
/// expects, naming the fix (the service itself never migrates).
pub async fn ensure_migrated(pool: &PgPool, migrator: &Migrator, service: &str) -> Result<()> {
    let expected = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Option<i64> = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .unwrap_or(None);
    anyhow::ensure!(
        applied == Some(expected),
        "the database is at migration {applied:?}, this build needs {expected}: run `{service} migrate` \
         with the migration role's URL first"
    );
    Ok(())
}
