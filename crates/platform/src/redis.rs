//! Redis connections that follow Sentinel. `REDIS_URL` is either a plain
//! `redis://user:pw@host:port`, or
//! `redis+sentinel://user:pw@s1:p1,s2:p2,s3:p3/<master name>`: the sentinels
//! are asked where the master is (`SENTINEL get-master-addr-by-name`, the
//! only command the services' users may send them), and asked again whenever
//! a command fails as a dead or demoted master fails, so a promotion is
//! followed without a restart. The same user and password reach the
//! sentinels and the master.

use std::{
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use redis::{
    Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
};

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Direct(String),
    Sentinel { sentinels: Vec<String>, master: String, credentials: String },
}

impl Target {
    fn parse(url: &str) -> RedisResult<Self> {
        let Some(rest) = url.strip_prefix("redis+sentinel://") else { return Ok(Self::Direct(url.to_owned())) };
        let invalid = || {
            RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "REDIS_URL: redis+sentinel://[user:password@]host:port,.../master",
            ))
        };
        let (authority, master) = rest.split_once('/').ok_or_else(invalid)?;
        let (credentials, hosts) = crate::split_credentials(authority);
        let sentinels: Vec<String> = hosts.split(',').filter(|h| !h.is_empty()).map(str::to_owned).collect();
        if sentinels.is_empty() || master.is_empty() {
            return Err(invalid());
        }
        Ok(Self::Sentinel { sentinels, master: master.to_owned(), credentials: credentials.to_owned() })
    }

    /// The master's URL now: the first sentinel that knows it says.
    async fn resolve(&self) -> RedisResult<String> {
        let (sentinels, master, credentials) = match self {
            Self::Direct(url) => return Ok(url.clone()),
            Self::Sentinel { sentinels, master, credentials } => (sentinels, master, credentials),
        };
        let mut last = None;
        for sentinel in sentinels {
            let ask = async {
                let client = redis::Client::open(format!("redis://{credentials}{sentinel}"))?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                let addr: Option<(String, u16)> =
                    redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(master).query_async(&mut conn).await?;
                addr.ok_or_else(|| RedisError::from((redis::ErrorKind::Io, "the sentinel knows no such master")))
            };
            match tokio::time::timeout(Duration::from_secs(1), ask).await {
                Ok(Ok((host, port))) => return Ok(format!("redis://{credentials}{host}:{port}")),
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(RedisError::from((redis::ErrorKind::Io, "sentinel timed out"))),
            }
        }
        Err(last.unwrap_or_else(|| RedisError::from((redis::ErrorKind::Io, "no sentinel answered"))))
    }
}

/// A client for the master now (for pub/sub, which reconnects by itself).
pub async fn client(url: &str) -> RedisResult<redis::Client> {
    redis::Client::open(Target::parse(url)?.resolve().await?)
}

/// A multiplexed, reconnecting connection (`ConnectionManager`) that, behind
/// Sentinel, moves to the new master after a failover.
#[derive(Clone)]
pub struct Redis {
    shared: Arc<Shared>,
}

struct Shared {
    target: Target,
    config: ConnectionManagerConfig,
    current: RwLock<(String, ConnectionManager)>,
    /// When the master was last looked up after an error (at most every 250 ms).
    last_lookup: Mutex<Instant>,
    /// How many times the connection followed the master to a new node.
    moves: AtomicU64,
    following: tokio::sync::Mutex<()>,
}

/// Connects to `url` (see the module) with `config`.
pub async fn connect(url: &str, config: ConnectionManagerConfig) -> RedisResult<Redis> {
    let target = Target::parse(url)?;
    let master = target.resolve().await?;
    let manager = redis::Client::open(master.as_str())?.get_connection_manager_with_config(config.clone()).await?;
    let sentinel = matches!(target, Target::Sentinel { .. });
    let shared = Arc::new(Shared {
        target,
        config,
        current: RwLock::new((master, manager)),
        last_lookup: Mutex::new(Instant::now() - Duration::from_secs(1)),
        moves: AtomicU64::new(0),
        following: tokio::sync::Mutex::new(()),
    });
    if sentinel {
        // Errors trigger a lookup, but a connection that saw none while the
        // master was down reconnects by itself to the old address: were the
        // old master back as a master before Sentinel demotes it (up to about
        // 10 s), writes would go there and be lost. So also ask every second.
        let shared = Arc::downgrade(&shared);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(FOLLOW_EVERY).await;
                let Some(shared) = shared.upgrade() else { return };
                shared.follow().await;
            }
        });
    }
    Ok(Redis { shared })
}

/// How often a Sentinel-backed connection asks where the master is.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

impl Redis {
    /// How many times this connection followed the master to another node:
    /// what the old master took may not be on the new one (Redis replicates
    /// asynchronously), so a writer that must not leave stale entries writes
    /// its recent ones again when this changes.
    pub fn moves(&self) -> u64 {
        self.shared.moves.load(Ordering::Acquire)
    }

    fn manager(&self) -> ConnectionManager {
        self.shared.current.read().unwrap_or_else(|e| e.into_inner()).1.clone()
    }

    /// After a failure that a dead or demoted master gives, looks the master
    /// up again (in the background) and moves there if it moved.
    fn on_error(&self, e: &RedisError) {
        if matches!(self.shared.target, Target::Direct(_)) {
            return;
        }
        let moved = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || e.code() == Some("READONLY");
        if !moved {
            return;
        }
        {
            let mut last = self.shared.last_lookup.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() < Duration::from_millis(250) {
                return;
            }
            *last = Instant::now();
        }
        let shared = self.shared.clone();
        tokio::spawn(async move { shared.follow().await });
    }
}

impl Shared {
    /// Asks the sentinels where the master is and moves there if it moved.
    async fn follow(&self) {
        // One lookup at a time (an error's and the periodic one).
        let Ok(_one) = self.following.try_lock() else { return };
        let Ok(master) = self.target.resolve().await else { return };
        if self.current.read().unwrap_or_else(|e| e.into_inner()).0 == master {
            return;
        }
        let Ok(client) = redis::Client::open(master.as_str()) else { return };
        match client.get_connection_manager_with_config(self.config.clone()).await {
            Ok(manager) => {
                tracing::warn!("the Redis master moved; following it");
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = (master, manager);
                self.moves.fetch_add(1, Ordering::Release);
            }
            Err(e) => tracing::debug!(error = %e, "the new Redis master is not reachable yet"),
        }
    }
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.manager().req_packed_command(cmd).await;
            if let Err(e) = &result {
                self.on_error(e);
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self.manager().req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &result {
                self.on_error(e);
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.manager().get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentinel_url_names_the_sentinels_the_master_and_the_credentials() {
        let t = Target::parse("redis+sentinel://query:pw@127.0.0.1:26379,127.0.0.1:26380/bank").unwrap();
        assert_eq!(
            t,
            Target::Sentinel {
                sentinels: vec!["127.0.0.1:26379".into(), "127.0.0.1:26380".into()],
                master: "bank".into(),
                credentials: "query:pw@".into()
            }
        );
        assert_eq!(Target::parse("redis://h:1").unwrap(), Target::Direct("redis://h:1".into()));
        assert!(Target::parse("redis+sentinel://h:1").is_err());
        assert!(Target::parse("redis+sentinel://h:1/").is_err());
    }
}
