//! The references, measured on the same servers in the same run: pgbench
//! running the command-service's transfer SQL, redis-benchmark GET, and
//! pg_test_fsync for the disk's fsync ceiling.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::load::round;

/// A database with the write model's schema and `n` accounts whose ids
/// pgbench derives from their number (see bench/transfer.sql).
pub async fn prepare_pgbench_db(url: &str, n: usize) -> Result<PgPool> {
    let pool = bank_platform::db::connect(url, 2).await?;
    command_service::MIGRATOR.run(&pool).await?;
    // Funded as a fixture, not by postings: as the superuser, with the
    // balance check (a trigger) off for this one transaction.
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL session_replication_role = replica").execute(&mut *tx).await?;
    sqlx::query(
        "INSERT INTO accounts (id, owner_id, kind, currency, balance, status, version, last_hash, opened_at)
         SELECT ('00000000-0000-7000-8000-' || lpad(g::text, 12, '0'))::uuid, '00000000-0000-7000-8000-000000000000',
                'CHECKING', 'USD', 1000000000, 'ACTIVE', 1, '\\x00', now()
         FROM generate_series(1, $1) g",
    )
    .bind(n as i32)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(pool)
}

pub struct PgbenchRun {
    pub tps: f64,
    pub latency_us: Histogram<u64>,
    pub rate: Option<f64>,
}

impl PgbenchRun {
    pub fn ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// Transactions pgbench logged.
    pub fn count(&self) -> u64 {
        self.latency_us.len()
    }

    pub fn json(&self) -> Value {
        json!({
            "per_second": round(self.tps),
            "offered_rate": self.rate.map(round),
            "p50_ms": round(self.ms(0.5)),
            "p99_ms": round(self.ms(0.99)),
            "p999_ms": round(self.ms(0.999)),
            "max_ms": round(self.latency_us.max() as f64 / 1000.0),
        })
    }
}

pub struct Pgbench<'a> {
    pub url: &'a str,
    pub script: &'a Path,
    pub clients: usize,
    pub accounts: usize,
    pub workdir: &'a Path,
    /// Session settings for pgbench's connections (`PGOPTIONS`), e.g.
    /// `-c synchronous_commit=local` to commit without the standby.
    pub pgoptions: Option<&'a str>,
}

impl Pgbench<'_> {
    /// `rate` = None: as fast as it goes; Some(r): open loop (`-R`), latency
    /// including the schedule lag, like the service's open-loop runs.
    pub fn run(&self, hot: bool, duration: Duration, rate: Option<f64>) -> Result<PgbenchRun> {
        let dir = self.workdir.join(format!("pgbench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let mut cmd = Command::new(tool("pgbench")?);
        cmd.current_dir(&dir)
            .args(["-n", "-M", "prepared", "-j", "2", "-l", "--log-prefix=tx"])
            .arg(format!("-c{}", self.clients))
            .arg(format!("-T{}", duration.as_secs().max(1)))
            .arg(format!("-Dnaccounts={}", self.accounts))
            .arg(format!("-Dhot={}", u8::from(hot)))
            .arg("-f")
            .arg(self.script);
        if let Some(r) = rate {
            cmd.arg(format!("-R{}", r.max(1.0)));
        }
        if let Some(options) = self.pgoptions {
            cmd.env("PGOPTIONS", options);
        }
        // Several hosts (the HA cluster): libpq picks the one that takes writes.
        let url = if self.url.contains(',') {
            format!("{}?target_session_attrs=read-write", self.url)
        } else {
            self.url.to_owned()
        };
        // The password reaches pgbench through its environment, never its
        // command line (which every local user can read).
        let (url, password) = without_password(&url);
        if let Some(password) = password {
            cmd.env("PGPASSWORD", password);
        }
        let out = cmd.arg(url).output().context("pgbench")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!("pgbench failed: {}{}", stdout, String::from_utf8_lossy(&out.stderr));
        }
        let tps = stdout
            .lines()
            .find_map(|l| l.strip_prefix("tps = ")?.split_whitespace().next()?.parse().ok())
            .context("no tps in pgbench output")?;
        let mut latency_us = Histogram::new_with_bounds(1, 120_000_000, 3)?;
        for entry in std::fs::read_dir(&dir)? {
            let text = std::fs::read_to_string(entry?.path())?;
            for line in text.lines() {
                // client tx_no time_us script epoch epoch_us [schedule_lag_us]
                let f: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
                if f.len() >= 6 {
                    let lag = f.get(6).copied().unwrap_or(0);
                    let _ = latency_us.record((f[2] + lag).max(1));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(PgbenchRun { tps, latency_us, rate })
    }
}

/// `postgres://user:password@host/db` as the URL without its password, and
/// the password.
fn without_password(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else { return (url.to_owned(), None) };
    let Some((creds, host)) = rest.rsplit_once('@') else { return (url.to_owned(), None) };
    match creds.split_once(':') {
        Some((user, password)) => (format!("{scheme}://{user}@{host}"), Some(password.to_owned())),
        None => (url.to_owned(), None),
    }
}

/// GET/s from redis-benchmark at `clients` concurrent connections. The
/// administrator (`redis_url`, `redis://admin:password@host:port`) makes a
/// user for the run that may only GET redis-benchmark's own keys, and
/// removes it afterwards: redis-benchmark takes a password only as an
/// argument, which every local user can read, so the one it gets is worth
/// nothing after the run and little during it. The administrator's own
/// password goes to redis-cli through its environment and stdin only.
pub fn redis_get(redis_url: &str, clients: usize) -> Result<f64> {
    let rest = redis_url.trim_start_matches("redis://").trim_end_matches('/');
    let (creds, host_port) = rest.rsplit_once('@').context("a Redis URL with a user")?;
    let (admin, admin_password) = creds.split_once(':').context("a Redis URL with a password")?;
    let port = host_port.rsplit(':').next().unwrap_or("6379").to_owned();
    let user = format!("bench-{}", uuid::Uuid::new_v4().simple());
    let password = uuid::Uuid::new_v4().simple().to_string();
    let acl = |command: String| -> Result<()> {
        use std::io::Write;
        let mut cli = Command::new(tool("redis-cli")?)
            .args(["-h", "127.0.0.1", "-p", &port, "--user", admin])
            .env("REDISCLI_AUTH", admin_password)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("redis-cli")?;
        cli.stdin.take().context("redis-cli stdin")?.write_all(format!("{command}\n").as_bytes())?;
        let out = cli.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let answered = text.trim_start().starts_with("OK") || text.trim().parse::<u64>().is_ok();
        if !out.status.success() || !answered {
            bail!("redis-cli {}: {text}", command.split_whitespace().take(2).collect::<Vec<_>>().join(" "));
        }
        Ok(())
    };
    acl(format!("ACL SETUSER {user} on >{password} resetkeys ~key:* resetchannels -@all +get +ping"))?;
    let out = Command::new(tool("redis-benchmark")?)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "--user",
            &user,
            "-a",
            &password,
            "-t",
            "get",
            "-n",
            "200000",
            "-q",
            "--csv",
        ])
        .arg("-c")
        .arg(clients.to_string())
        .output()
        .context("redis-benchmark");
    acl(format!("ACL DELUSER {user}"))?;
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("\"GET\""))
        .and_then(|l| l.split(',').nth(1)?.trim_matches('"').parse().ok())
        .with_context(|| format!("no GET line in redis-benchmark output: {text}"))
}

/// pg_test_fsync on the disk Postgres writes to: ops/s per sync method.
pub fn pg_test_fsync(dir: &Path) -> Result<Value> {
    let file = dir.join("pg_test_fsync.tmp");
    let out = Command::new(tool("pg_test_fsync")?).args(["-s", "2", "-f"]).arg(&file).output()?;
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&out.stdout);
    // Lines like "        fdatasync                    1234.567 ops/sec     810 usecs/op"
    let mut methods = serde_json::Map::new();
    let mut section = String::new();
    for line in text.lines() {
        if line.starts_with("Compare") {
            section = line.trim().to_owned();
        } else if let Some(i) = line.find(" ops/sec") {
            let head = line[..i].trim();
            if let Some((name, ops)) = head.rsplit_once(char::is_whitespace)
                && let Ok(ops) = ops.trim().parse::<f64>()
                && section.starts_with("Compare file sync methods using one")
            {
                methods.insert(name.trim().to_owned(), json!(ops));
            }
        }
    }
    Ok(Value::Object(methods))
}

/// A Postgres/Redis tool from PATH or Postgres's bindir.
pub fn tool(name: &str) -> Result<std::path::PathBuf> {
    if let Ok(path) = which(name) {
        return Ok(path);
    }
    for dir in ["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("{name} not found (scripts/bench installs it)")
}

fn which(name: &str) -> Result<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.exists()).context("not on PATH")
}
