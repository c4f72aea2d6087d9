//! Postgres connections. Databases and roles are provisioned outside the
//! services (deploy/postgres/provision.sql); each database's migration role
//! runs its migrations (`<service> migrate`), and the services run as roles
//! that own nothing and change no schema.

use std::{str::FromStr, time::Duration};

use anyhow::{Context, Result};
use sqlx::{
    ConnectOptions, Connection, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// Connects a pool to `url` (the database must exist).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    connect_with(url, max_connections, &[]).await
}

/// As `connect`, with more session settings (`name`, `value`).
///
/// A URL may name several hosts, as libpq's do
/// (`postgres://user:pw@h1:5432,h2:5433/db`): the pool then connects to the
/// one that accepts writes, refuses a connection that reached a standby, and
/// follows a promotion without a restart (`follow_primary`).
pub async fn connect_with(url: &str, max_connections: u32, settings: &[(&str, &str)]) -> Result<PgPool> {
    let hosts = Hosts::parse(url)?;
    // A process that hangs mid-transaction (SIGSTOP, a stalled host) must not
    // hold its row locks (the settlement account's, say) for everyone else:
    // Postgres ends such a session after 2 idle seconds (no service waits on
    // anything else inside a transaction). Its other transactions, queued on
    // the first one's locks, give up waiting after 2 s too, so a hung
    // process's locks are gone within ~4 s however many it held; a healthy
    // command that waits that long answers UNAVAILABLE and is retried.
    let options_for = |url: &str| -> Result<PgConnectOptions> {
        Ok(PgConnectOptions::from_str(url)
            .context("invalid database URL")?
            .options([("idle_in_transaction_session_timeout", "2s"), ("lock_timeout", "2s")])
            .options(settings.iter().copied())
            .log_statements(tracing::log::LevelFilter::Debug))
    };
    let pool_options = PgPoolOptions::new().max_connections(max_connections).acquire_timeout(Duration::from_secs(5));
    if hosts.urls.len() == 1 {
        return pool_options.connect_with(options_for(url)?).await.context("failed to connect to Postgres");
    }
    let candidates = hosts.urls.iter().map(|u| options_for(u)).collect::<Result<Vec<_>>>()?;
    let primary = find_primary(&candidates, Duration::from_secs(30)).await.context("failed to connect to Postgres")?;
    let pool = pool_options
        // target_session_attrs=read-write: a connection that reached a
        // standby (the pool's target was demoted) is refused, not used.
        .after_connect(|conn, _| {
            Box::pin(async move {
                if is_standby(&mut *conn).await? {
                    return Err(sqlx::Error::Protocol("reached a standby; the primary has moved".into()));
                }
                Ok(())
            })
        })
        .connect_with(candidates[primary].clone())
        .await
        .context("failed to connect to Postgres")?;
    tokio::spawn(follow_primary(pool.clone(), candidates, primary));
    Ok(pool)
}

/// Whether the server behind `conn` is a standby (in recovery: read-only).
async fn is_standby<'e>(conn: impl sqlx::PgExecutor<'e>) -> sqlx::Result<bool> {
    // Runtime SQL: this crate serves every service's database, so there is
    // no one schema to check it against (it names no table).
    sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(conn).await
}

/// The hosts of a database URL, each as a URL of its own.
#[derive(Debug, PartialEq, Eq)]
struct Hosts {
    urls: Vec<String>,
}

impl Hosts {
    fn parse(url: &str) -> Result<Self> {
        let scheme_end = url.find("://").map(|i| i + 3).context("invalid database URL: no scheme")?;
        let rest = &url[scheme_end..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..authority_end];
        let (credentials, hosts) = crate::split_credentials(authority);
        let urls = hosts
            .split(',')
            .map(|host| format!("{}{credentials}{host}{}", &url[..scheme_end], &rest[authority_end..]))
            .collect();
        Ok(Self { urls })
    }
}

/// The index of the candidate that accepts writes, asking each in turn until
/// one does or `within` has passed (a promotion may be under way).
async fn find_primary(candidates: &[PgConnectOptions], within: Duration) -> Result<usize> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        for (i, options) in candidates.iter().enumerate() {
            let probe = async {
                let mut conn = options.connect().await?;
                let standby = is_standby(&mut conn).await?;
                let _ = conn.close().await;
                Ok::<_, sqlx::Error>(standby)
            };
            if let Ok(Ok(false)) = tokio::time::timeout(Duration::from_secs(1), probe).await {
                return Ok(i);
            }
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no host accepts writes");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every half second, asks the pool whether it still writes to a primary;
/// when it does not (the host died, or was demoted), points the pool's new
/// connections at whichever host was promoted. Ends with the pool.
async fn follow_primary(pool: PgPool, candidates: Vec<PgConnectOptions>, mut current: usize) {
    while !pool.is_closed() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Ok(Ok(false)) = tokio::time::timeout(Duration::from_secs(1), is_standby(&pool)).await {
            continue;
        }
        if let Ok(found) = find_primary(&candidates, Duration::ZERO).await
            && found != current
        {
            tracing::warn!(from = current, to = found, "the Postgres primary moved; following it");
            pool.set_connect_options(candidates[found].clone());
            current = found;
        }
    }
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
    // Runtime SQL: sqlx's own bookkeeping table, the same in every service's
    // database and possibly absent (an unmigrated database answers None).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_with_several_hosts_becomes_one_url_per_host() {
        let h = Hosts::parse("postgres://u:p%40w@127.0.0.1:5432,127.0.0.1:5433/db?sslmode=disable").unwrap();
        assert_eq!(
            h.urls,
            [
                "postgres://u:p%40w@127.0.0.1:5432/db?sslmode=disable",
                "postgres://u:p%40w@127.0.0.1:5433/db?sslmode=disable"
            ]
        );
        assert_eq!(Hosts::parse("postgres://h/db").unwrap().urls, ["postgres://h/db"]);
        assert!(Hosts::parse("h1,h2").is_err());
    }
}
