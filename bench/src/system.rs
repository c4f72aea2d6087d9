//! The services under test as release binaries with their own databases,
//! stream and key prefix, and the per-process figures the report needs.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

pub struct Services {
    pub children: Vec<(&'static str, Child)>,
    pub env: Vec<(String, String)>,
    /// The write and read databases the services run on.
    pub dbs: (bank_testkit::TestDb, bank_testkit::TestDb),
    pub command: SocketAddr,
    pub query: SocketAddr,
    pub projector_http: SocketAddr,
    pub command_http: SocketAddr,
}

/// The sibling binary of this one (target/release/<name>).
pub fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    Ok(exe.parent().context("exe dir")?.join(name))
}

impl Services {
    pub async fn start(
        base_env: Vec<(String, String)>,
        dbs: (bank_testkit::TestDb, bank_testkit::TestDb),
    ) -> Result<Self> {
        let (command, query, projector_http, command_http) = (
            bank_testkit::free_addr(),
            bank_testkit::free_addr(),
            bank_testkit::free_addr(),
            bank_testkit::free_addr(),
        );
        let mut env = base_env;
        env.extend(
            [
                ("COMMAND_GRPC_ADDR", command.to_string()),
                ("COMMAND_HTTP_ADDR", command_http.to_string()),
                ("QUERY_GRPC_ADDR", query.to_string()),
                ("QUERY_HTTP_ADDR", bank_testkit::free_addr().to_string()),
                ("PROJECTOR_HTTP_ADDR", projector_http.to_string()),
                ("RUST_LOG", "warn".to_owned()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        let mut children = Vec::new();
        for name in ["command-service", "projector", "query-service"] {
            let child = Command::new(sibling(name)?)
                .envs(bank_testkit::service_credentials(name, &dbs.0, &dbs.1))
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting {name} (cargo build --release --bins first)"))?;
            children.push((name, child));
        }
        for addr in [command, query, projector_http] {
            let deadline = Instant::now() + Duration::from_secs(30);
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                if Instant::now() > deadline {
                    bail!("{addr} did not open");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(Self { children, env, dbs, command, query, projector_http, command_http })
    }

    /// Restarts one service with `extra` environment on the same addresses.
    pub async fn restart_with(&mut self, name: &'static str, extra: &[(&str, &str)]) -> Result<()> {
        if let Some((_, c)) = self.children.iter_mut().find(|(n, _)| *n == name) {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.retain(|(n, _)| *n != name);
        let child = Command::new(sibling(name)?)
            .envs(bank_testkit::service_credentials(name, &self.dbs.0, &self.dbs.1))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        self.children.push((name, child));
        let addr = if name == "command-service" { self.command } else { self.query };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("{addr} did not open");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    pub fn pid(&self, name: &str) -> u32 {
        self.children.iter().find(|(n, _)| *n == name).map_or(0, |(_, c)| c.id())
    }

    /// Peak resident memory (VmHWM) of a service, MiB.
    pub fn peak_rss_mb(&self, name: &str) -> f64 {
        proc_status_kib(self.pid(name), "VmHWM:") as f64 / 1024.0
    }

    pub fn stop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop();
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// CPU time of a process and of its reaped children (user + system), in
/// clock ticks. Children count because Postgres backends and pgbench come
/// and go within a phase: once reaped, their time is their parent's.
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the ")" that ends the command name: utime, stime,
            // cutime and cstime are 14 to 17.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            (11..=14).map(|i| f.get(i)?.parse::<u64>().ok()).sum()
        })
        .unwrap_or(0)
}

fn pids_named(comm: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm))
        .collect()
}

/// Where a group's processes are found: a fixed pid, or every process of a
/// name (looked up again at the end, so processes started meanwhile count).
#[derive(Clone)]
enum Who {
    Pid(u32),
    Named(&'static str),
}

impl Who {
    fn ticks(&self) -> u64 {
        match self {
            Who::Pid(p) => cpu_ticks(*p),
            Who::Named(n) => pids_named(n).iter().map(|p| cpu_ticks(*p)).sum(),
        }
    }
}

/// CPU use per process group over a phase. A process that exits during the
/// phase is counted through its parent's children time (Postgres backends
/// by the postmaster; pgbench, a child of this process, by `bench`).
pub struct CpuSample {
    groups: Vec<(String, Who, u64)>,
    started: Instant,
}

/// What a phase cost in CPU: seconds per group over `secs` of wall time.
pub struct CpuUse {
    pub secs: f64,
    pub by_group: Vec<(String, f64)>,
}

impl CpuUse {
    /// Percent of one core per group.
    pub fn percent(&self) -> serde_json::Value {
        self.map(|cpu| cpu / self.secs * 100.0)
    }

    /// Microseconds of CPU per operation, per group and in total.
    pub fn per_op_us(&self, ops: u64) -> serde_json::Value {
        let ops = ops.max(1) as f64;
        let mut v = self.map(|cpu| cpu * 1e6 / ops);
        let total: f64 = self.by_group.iter().map(|(_, c)| c).sum::<f64>() * 1e6 / ops;
        v["total"] = serde_json::json!(crate::load::round(total));
        v
    }

    fn map(&self, f: impl Fn(f64) -> f64) -> serde_json::Value {
        let m: serde_json::Map<String, serde_json::Value> =
            self.by_group.iter().map(|(n, c)| (n.clone(), serde_json::json!(crate::load::round(f(*c))))).collect();
        serde_json::Value::Object(m)
    }
}

impl CpuSample {
    pub fn start(services: &Services) -> Self {
        let mut groups: Vec<(String, Who)> =
            services.children.iter().map(|(n, c)| (n.to_string(), Who::Pid(c.id()))).collect();
        groups.push(("postgres".into(), Who::Named("postgres")));
        groups.push(("nats-server".into(), Who::Named("nats-server")));
        groups.push(("redis-server".into(), Who::Named("redis-server")));
        // The load generator, and pgbench when it runs (its child).
        groups.push(("client".into(), Who::Pid(std::process::id())));
        let groups = groups
            .into_iter()
            .map(|(n, who)| {
                let t = who.ticks();
                (n, who, t)
            })
            .collect();
        Self { groups, started: Instant::now() }
    }

    pub fn finish(self) -> CpuUse {
        let secs = self.started.elapsed().as_secs_f64();
        let ticks_per_sec = 100.0; // USER_HZ on Linux
        let by_group = self
            .groups
            .into_iter()
            .map(|(name, who, before)| (name, who.ticks().saturating_sub(before) as f64 / ticks_per_sec))
            .collect();
        CpuUse { secs, by_group }
    }
}
