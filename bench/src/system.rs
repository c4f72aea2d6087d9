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
        let (command, query, projector_http) =
            (bank_testkit::free_addr(), bank_testkit::free_addr(), bank_testkit::free_addr());
        let mut env = base_env;
        env.extend(
            [
                ("COMMAND_GRPC_ADDR", command.to_string()),
                ("COMMAND_HTTP_ADDR", bank_testkit::free_addr().to_string()),
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
        Ok(Self { children, env, dbs, command, query, projector_http })
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

/// CPU time (user + system) of a process in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the ")" that ends the command name; utime and stime are 14 and 15.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

fn pids_named(comm: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm))
        .collect()
}

/// CPU use per process group over a phase, in percent of one core.
pub struct CpuSample {
    groups: Vec<(String, Vec<u32>, u64)>,
    started: Instant,
}

impl CpuSample {
    pub fn start(services: &Services) -> Self {
        let mut groups: Vec<(String, Vec<u32>)> =
            services.children.iter().map(|(n, c)| (n.to_string(), vec![c.id()])).collect();
        groups.push(("postgres".into(), pids_named("postgres")));
        groups.push(("nats-server".into(), pids_named("nats-server")));
        groups.push(("redis-server".into(), pids_named("redis-server")));
        groups.push(("bench".into(), vec![std::process::id()]));
        let groups = groups
            .into_iter()
            .map(|(n, pids)| {
                let t = pids.iter().map(|p| cpu_ticks(*p)).sum();
                (n, pids, t)
            })
            .collect();
        Self { groups, started: Instant::now() }
    }

    pub fn finish(self) -> serde_json::Value {
        let secs = self.started.elapsed().as_secs_f64();
        let ticks_per_sec = 100.0; // USER_HZ on Linux
        let mut out = serde_json::Map::new();
        for (name, pids, before) in self.groups {
            let after: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
            let pct = (after.saturating_sub(before)) as f64 / ticks_per_sec / secs * 100.0;
            out.insert(name, serde_json::json!(crate::load::round(pct)));
        }
        serde_json::Value::Object(out)
    }
}
