//! projector: durable JetStream pull consumers with explicit acks, one per
//! event partition this instance leases (`partitions`), that fold
//! BANK_EVENTS into the read models (see `fold` for the rules, `apply` for the
//! batch transaction), and `rebuild`, which refills them from the start of the
//! stream into a new generation and switches readers over when caught up.

pub mod apply;
pub mod cache_debt;
pub mod fold;
pub mod partitions;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
};
use bank_platform::redis::Redis;
use bank_platform::{
    CancellationToken,
    config::{self, Env},
    db, grpc as server, http,
    service::Running,
};
use futures::StreamExt;
use redis::aio::ConnectionManagerConfig;
use tokio::sync::mpsc;

use crate::apply::{Applier, Incoming, Outcome, gap_retry_delay};

#[derive(Clone)]
pub struct Config {
    pub http_addr: SocketAddr,
    pub database_url: String,
    pub redis_url: String,
    pub redis_prefix: String,
    /// The key cache entries and change notices are sealed with
    /// (`READ_CACHE_KEY`, shared with query-service only).
    pub cache_key: Option<String>,
    pub nats_url: String,
    pub stream: String,
    pub subject_prefix: String,
    /// Durable consumers are named `<durable_name>-p<partition>`.
    pub durable_name: String,
    /// `local` (the default: a commit returns once it is flushed here) or
    /// `on` (once the synchronous standby has it too). Never `off`: a
    /// message is acknowledged as soon as its commit returns.
    pub synchronous_commit: String,
    /// Largest batch applied in one transaction (and in flight unacked).
    pub batch: usize,
    pub max_deliveries: i64,
    /// The event store, for `projector rebuild --from event-store`
    /// (`EVENT_STORE_DATABASE_URL`: a role that reads the events only).
    pub event_store_url: Option<String>,
    /// Public keys events must be signed with (`EVENT_VERIFYING_KEYS`).
    /// `None` applies unsigned events: a development stack only.
    pub event_keys: Option<std::sync::Arc<bank_platform::signing::EventKeys>>,
    /// TLS on the metrics port (`TLS_*_FILE`).
    pub tls: Option<std::sync::Arc<bank_platform::tls::Tls>>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("http_addr", &self.http_addr)
            .field("database_url", &config::redact_url(&self.database_url))
            .field("redis_url", &config::redact_url(&self.redis_url))
            .field("redis_prefix", &self.redis_prefix)
            .field("cache_key", &self.cache_key.as_ref().map(|_| "***"))
            .field("nats_url", &config::redact_url(&self.nats_url))
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("durable_name", &self.durable_name)
            .field("synchronous_commit", &self.synchronous_commit)
            .field("batch", &self.batch)
            .field("max_deliveries", &self.max_deliveries)
            .field("verifies_signatures", &self.event_keys.is_some())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Config {
    /// Every invalid variable is reported, all in one error.
    pub fn from_env(env: &impl Env) -> Result<Self> {
        let mut problems = config::Problems::new();
        let http_addr = problems.parse(env, "PROJECTOR_HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 9094)));
        let synchronous_commit = match config::string(env, "READ_DB_SYNCHRONOUS_COMMIT", "local").as_str() {
            v @ ("local" | "on") => v.to_owned(),
            other => {
                problems.report(format!(
                    "invalid value for READ_DB_SYNCHRONOUS_COMMIT: {other:?} (local or on: messages are \
                     acknowledged when their commit returns, so it must be durable)"
                ));
                String::new()
            }
        };
        let batch = problems.parse(env, "PROJECTOR_BATCH", 256);
        // A gap is retried with delays of 0.1 s doubling to 2 s: ten
        // deliveries outlast the ack wait (5 s) that brings a missing
        // message back; past them the projector fetches it itself.
        let max_deliveries = problems.parse(env, "PROJECTOR_MAX_DELIVERIES", 10);
        let event_keys = problems.check("EVENT_VERIFYING_KEYS", bank_platform::signing::EventKeys::from_env(env));
        let tls = problems.check(&bank_platform::tls::ENV_VARS.join(", "), bank_platform::tls::Tls::from_env(env));
        problems.finish()?;
        Ok(Self {
            http_addr,
            database_url: config::string(env, "READ_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/bank_read"),
            redis_url: config::string(env, "REDIS_URL", "redis://127.0.0.1:6379"),
            redis_prefix: config::string(env, "REDIS_PREFIX", "bank:rm:"),
            cache_key: env.var("READ_CACHE_KEY"),
            nats_url: config::string(env, "NATS_URL", "nats://127.0.0.1:4222"),
            stream: config::string(env, "NATS_STREAM", "BANK_EVENTS"),
            subject_prefix: config::string(env, "NATS_SUBJECT_PREFIX", "bank.events"),
            durable_name: config::string(env, "PROJECTOR_DURABLE", "projector"),
            synchronous_commit,
            batch,
            max_deliveries,
            event_keys: event_keys.flatten().map(std::sync::Arc::new),
            tls: tls.flatten(),
            event_store_url: env.var("EVENT_STORE_DATABASE_URL"),
        })
    }
}

/// Redis with short timeouts: the cache must never stall projection.
pub async fn connect_redis(url: &str) -> Option<Redis> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)))
        .set_number_of_retries(1);
    match bank_platform::redis::connect(url, config).await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "Redis unavailable; projecting to Postgres only until it returns");
            None
        }
    }
}

#[tracing::instrument(skip_all, err)]
async fn applier(config: &Config) -> Result<Applier> {
    if config.event_keys.is_none() {
        tracing::warn!("EVENT_VERIFYING_KEYS not set: events are applied WITHOUT signature checks (development only)");
    }
    // A transaction's messages are acknowledged when its commit returns,
    // so the commit must be durable by then: flushed here (`local`), or on
    // a replicated Postgres (READ_DB_SYNCHRONOUS_COMMIT=on, the HA
    // topology) on the synchronous standby too, since a failover loses what
    // the standby did not get. One flush per transaction of tens to
    // hundreds of events costs less than asking where the WAL is.
    let pool = db::connect_with(&config.database_url, 8, &[("synchronous_commit", &config.synchronous_commit)]).await?;
    db::ensure_migrated(&pool, &bank_readmodel::MIGRATOR, "projector").await?;
    Ok(Applier {
        pool,
        redis: connect_redis(&config.redis_url).await,
        redis_url: config.redis_url.clone(),
        last_redis_attempt: std::time::Instant::now(),
        keys: bank_readmodel::sealed_keys(&config.redis_prefix, config.cache_key.as_deref())?,
        cache_debt: Default::default(),
        max_deliveries: config.max_deliveries,
        lasting_gaps: Vec::new(),
        event_keys: config.event_keys.clone(),
        subject_prefix: config.subject_prefix.clone(),
    })
}

async fn jetstream(url: &str) -> Result<jetstream::Context> {
    Ok(jetstream::new(bank_platform::nats::connect_lazily(url).await?))
}

/// How long the writer waits for more events once a transaction's worth
/// has not arrived by itself: under load, transactions then carry tens to
/// hundreds of events (a transaction costs about as much as 30 events);
/// idle, an event waits at most this long.
const GATHER: Duration = Duration::from_millis(1);

/// How often an idle consumer hears from the server: two missed beats (the
/// consumer's leader gone, a kill -9 sends nothing) and it binds again, to
/// whichever server leads it by then.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Between the starts of attempts to bind again: short, as a stream or
/// consumer that lost its leader gets a new one within seconds and each
/// attempt is one API request per partition. An attempt that waited out its
/// timeout has spent the pause already: the next one starts at once, so the
/// read side binds within about one timeout of the new leaders.
const REBIND_FIRST: Duration = Duration::from_millis(100);
const REBIND_MAX: Duration = Duration::from_millis(500);
/// A bind is two JetStream API requests, answered in milliseconds when the
/// stream has a leader and never while it has none: half a second is ample
/// for the first and bounds how late the read side binds after an election.
const REBIND_TIMEOUT: Duration = Duration::from_millis(500);

/// Applies one batch in one transaction, then acknowledges each message by
/// its outcome. The commit is durable when it returns (`synchronous_commit`
/// is `local` or `on`, never `off`), so nothing is acknowledged to NATS
/// before it is on disk, and a commit that fails or is lost with the
/// server is an error here: the whole batch is naked and redelivered (the
/// version guard skips what did commit).
#[tracing::instrument(level = "debug", skip_all, fields(messages = messages.len(), ?generation))]
async fn process(applier: &mut Applier, messages: Vec<jetstream::Message>, generation: Option<i32>) {
    let incoming: Vec<Incoming> = messages.iter().map(|m| incoming(m, false)).collect();
    applier.reconnect_cache_if_due().await;
    match applier.apply(&incoming, generation).await {
        Ok(outcomes) => send_acks(messages.into_iter().zip(outcomes).collect()).await,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "batch failed; will be redelivered");
            send_acks(messages.into_iter().map(|m| (m, Outcome::Retry)).collect()).await;
        }
    }
}

#[tracing::instrument(level = "debug", skip_all, fields(messages = acks.len()))]
async fn send_acks(acks: Vec<(jetstream::Message, Outcome)>) {
    for (m, o) in acks {
        let ack = match o {
            Outcome::Ack => m.ack().await,
            Outcome::Retry => {
                let delivered = m.info().map(|i| i.delivered).unwrap_or(1);
                m.ack_with(AckKind::Nak(Some(gap_retry_delay(delivered)))).await
            }
            Outcome::Terminate => m.ack_with(AckKind::Term).await,
        };
        if let Err(e) = ack {
            // Redelivery follows; the version guard makes it harmless.
            tracing::warn!(error = %e, "ack failed");
        }
    }
}

fn incoming(m: &jetstream::Message, refetched: bool) -> Incoming {
    let (seq, delivered) = m.info().map(|i| (i.stream_sequence, i.delivered)).unwrap_or((0, 1));
    // One trace context per event: a batch carries a `traceparent` per
    // event, in order; a single event also its `tracestate`.
    let headers = m.headers.as_ref();
    let values = |key: &str| -> Vec<String> {
        headers.map(|h| h.get_all(key).map(|v| v.as_str().to_owned()).collect()).unwrap_or_default()
    };
    let mut traces: Vec<BTreeMap<String, String>> =
        values("traceparent").into_iter().map(|p| BTreeMap::from([("traceparent".to_owned(), p)])).collect();
    if let ([trace], [state]) = (traces.as_mut_slice(), values("tracestate").as_slice()) {
        trace.insert("tracestate".to_owned(), state.clone());
    }
    Incoming {
        subject: m.subject.to_string(),
        payload: m.payload.to_vec(),
        stream_sequence: seq,
        delivered,
        traces,
        refetched,
    }
}

/// Fills each gap that outlasted `max_deliveries`: fetches its subject's
/// messages from the stream (an ephemeral consumer) and applies, in stream
/// order, every one from the first that carries a gap's missing events on.
/// Every one, not only those with the gap's account: a message applies whole
/// or not at all, so one that also carries another account's missing event
/// waits for it, and the fill must bring that one too (filling account by
/// account, each fill stalled on the others' gaps: after a 30 s read-database
/// outage under load the read side took minutes to catch up). The gaps of
/// one subject are filled together, with one fetch. The gap's own message,
/// naked, then applies (or is a duplicate) on its next delivery. So a gap
/// lasts at most about `max_deliveries` nak delays (2 s each at most) once
/// the read database is reachable, whatever happened to the missing
/// message's own deliveries.
#[tracing::instrument(level = "debug", skip_all, fields(gaps = applier.lasting_gaps.len(), ?generation))]
async fn fill_gaps(js: &jetstream::Context, config: &Config, applier: &mut Applier, generation: Option<i32>) {
    let mut by_subject: Vec<(String, Vec<apply::LastingGap>)> = Vec::new();
    for gap in std::mem::take(&mut applier.lasting_gaps) {
        match by_subject.iter_mut().find(|(subject, _)| *subject == gap.subject) {
            Some((_, gaps)) => gaps.push(gap),
            None => by_subject.push((gap.subject.clone(), vec![gap])),
        }
    }
    for (subject, gaps) in by_subject {
        let filled = async {
            let missing = fetch_from_first_gap(js, config, &subject, &gaps).await?;
            for chunk in missing.chunks(config.batch.max(1)) {
                applier.apply(chunk, generation).await?;
            }
            anyhow::Ok(missing.len())
        };
        let accounts = gaps.len();
        match filled.await {
            Ok(n) => {
                apply::GAP_FILLS.inc();
                tracing::info!(subject, accounts, fetched = n, "gaps filled from the stream");
            }
            Err(e) => tracing::warn!(subject, accounts, error = %format!("{e:#}"), "gap fill failed; will try again"),
        }
    }
}

/// The messages on `subject`, in stream order, from the first that carries
/// an event one of `gaps` misses (its account's, past the version stored).
/// (That reads the subject from the start: gaps that outlast
/// `max_deliveries` are rare, and a consumer's ack floor would not bound it
/// for a rebuild.)
#[tracing::instrument(skip_all, fields(subject = subject, gaps = gaps.len()), err(level = "debug"))]
async fn fetch_from_first_gap(
    js: &jetstream::Context,
    config: &Config,
    subject: &str,
    gaps: &[apply::LastingGap],
) -> Result<Vec<Incoming>> {
    let stream = &config.stream;
    let batch = bank_platform::nats::batch_partition(&config.subject_prefix, subject).is_some();
    let stream = js.get_stream(stream).await.map_err(|e| anyhow::anyhow!("stream {stream}: {e}"))?;
    let mut consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            name: Some(format!("gap-{}", uuid::Uuid::new_v4().simple())),
            ack_policy: AckPolicy::None,
            deliver_policy: DeliverPolicy::All,
            filter_subject: subject.to_owned(),
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("gap consumer: {e}"))?;
    let pending = consumer.info().await.map_err(|e| anyhow::anyhow!("{e}"))?.num_pending;
    let missing_in = |events: &[bank_proto::v1::EventEnvelope]| {
        events
            .iter()
            .any(|e| gaps.iter().any(|g| (!batch || e.account_id == g.account.to_string()) && e.version > g.stored))
    };
    let (mut seen, mut out, mut from_here) = (0u64, Vec::new(), false);
    while seen < pending {
        let mut messages = consumer
            .batch()
            .max_messages(512)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let before = seen;
        while let Some(m) = messages.next().await {
            let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
            seen += 1;
            let events = bank_platform::signing::events_of(batch, &m.payload);
            from_here = from_here || events.as_ref().is_ok_and(|e| missing_in(e));
            // Undecodable: let the apply path judge it (it is not recorded twice).
            if from_here || events.is_err() {
                out.push(incoming(&m, true));
            }
        }
        if seen == before {
            break;
        }
    }
    let _ = stream.delete_consumer(&consumer.cached_info().name).await;
    Ok(out)
}

/// The live projector until shutdown: leases its share of the partitions,
/// runs a consumer for each it holds, and one writer that applies what they
/// all deliver, many events per transaction.
#[tracing::instrument(skip_all, fields(durable = %config.durable_name), err)]
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    use std::collections::HashMap;
    let applier = applier(&config).await?;
    let js = jetstream(&config.nats_url).await?;
    let leases = partitions::Leases::new(applier.pool.clone(), bank_platform::nats::EVENT_PARTITIONS).await?;
    tracing::info!(member = leases.member(), "projector joined");
    // Bounded: when the writer falls behind, consumers stop pulling, and
    // what they hold unacknowledged stays within `max_ack_pending`.
    let (deliver, delivered) = mpsc::channel(config.batch.max(1) * 2);
    let writer = tokio::spawn(write(config.clone(), js.clone(), applier, delivered, shutdown.clone()));
    let mut running: HashMap<u32, (CancellationToken, tokio::task::JoinHandle<()>)> = HashMap::new();
    let mut last_renewed = std::time::Instant::now();
    while !shutdown.is_cancelled() {
        let stop_released = |parts: Vec<u32>| {
            let stopping: Vec<_> = parts.iter().filter_map(|p| running.remove(p)).collect();
            stop_partitions(stopping)
        };
        match leases.round(stop_released).await {
            Ok(held) => {
                last_renewed = std::time::Instant::now();
                let lost: Vec<u32> = running.keys().filter(|p| !held.contains(p)).copied().collect();
                stop_partitions(lost.iter().filter_map(|p| running.remove(p)).collect()).await;
                for p in held {
                    running.entry(p).or_insert_with(|| {
                        tracing::info!(partition = p, "partition taken");
                        let stop = shutdown.child_token();
                        let task = run_partition(config.clone(), js.clone(), deliver.clone(), p, stop.clone());
                        (stop, tokio::spawn(task))
                    });
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "partition leases not renewed");
                // Others take expired leases over: stop rather than share.
                if last_renewed.elapsed() > partitions::LEASE_TTL {
                    stop_partitions(running.drain().map(|(_, r)| r).collect()).await;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(partitions::RENEW_EVERY) => {}
        }
    }
    stop_partitions(running.drain().map(|(_, r)| r).collect()).await;
    drop(deliver);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    leases.leave().await;
    Ok(())
}

/// The writer: takes what the partitions' consumers deliver, a transaction
/// at a time (whatever is waiting, up to `config.batch`, gathered for at
/// most `GATHER`), until every consumer is gone or shutdown.
#[tracing::instrument(skip_all)]
async fn write(
    config: Config,
    js: jetstream::Context,
    mut applier: Applier,
    mut delivered: mpsc::Receiver<jetstream::Message>,
    shutdown: CancellationToken,
) {
    let mut cache_check = tokio::time::interval(Duration::from_millis(250));
    cache_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = delivered.recv() => match m {
                Some(m) => m,
                None => return,
            },
            // Writes the cache is owed, with no event to carry them. Always
            // armed: the master can move while no event comes, and the
            // replay must not wait for the next one.
            _ = cache_check.tick() => {
                applier.reconnect_cache_if_due().await;
                if applier.cache_owed() {
                    applier.settle_cache().await;
                }
                continue;
            }
        };
        let batch = gather(first, &mut delivered, config.batch.max(1)).await;
        process(&mut applier, batch, None).await;
        fill_gaps(&js, &config, &mut applier, None).await;
    }
}

/// `first` and what else arrives: everything already waiting, then, while
/// under `max`, whatever comes within `GATHER`.
async fn gather(
    first: jetstream::Message,
    delivered: &mut mpsc::Receiver<jetstream::Message>,
    max: usize,
) -> Vec<jetstream::Message> {
    let mut batch = vec![first];
    let deadline = tokio::time::Instant::now() + GATHER;
    while batch.len() < max {
        match delivered.try_recv() {
            Ok(m) => batch.push(m),
            Err(_) => match tokio::time::timeout_at(deadline, delivered.recv()).await {
                Ok(Some(m)) => batch.push(m),
                _ => break,
            },
        }
    }
    batch
}

/// Stops partition consumers and waits (briefly) for each to finish its batch.
#[tracing::instrument(skip_all, fields(partitions = stopping.len()))]
async fn stop_partitions(stopping: Vec<(CancellationToken, tokio::task::JoinHandle<()>)>) {
    for (stop, _) in &stopping {
        stop.cancel();
    }
    for (_, task) in stopping {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
}

/// One partition's durable consumer until stopped, reconnecting with
/// backoff when NATS or the stream is unavailable.
#[tracing::instrument(skip_all, fields(partition = partition))]
async fn run_partition(
    config: Config,
    js: jetstream::Context,
    deliver: mpsc::Sender<jetstream::Message>,
    partition: u32,
    shutdown: CancellationToken,
) {
    let mut backoff = REBIND_FIRST;
    // Since when this partition has been without a consumer, and how many
    // attempts failed: one warning when it is lost and one line when it is
    // back, not one per attempt while a leader is being elected.
    let mut interrupted: Option<(tokio::time::Instant, u32)> = None;
    while !shutdown.is_cancelled() {
        let attempt = tokio::time::Instant::now();
        match consume(&config, &js, &deliver, &shutdown, partition, &mut interrupted).await {
            Ok(()) => break,
            Err(e) => {
                match &mut interrupted {
                    None => {
                        tracing::warn!(error = %format!("{e:#}"), "consumer interrupted; binding again");
                        interrupted = Some((tokio::time::Instant::now(), 0));
                        backoff = REBIND_FIRST;
                    }
                    Some((_, failed)) => {
                        *failed += 1;
                        tracing::debug!(error = %format!("{e:#}"), "binding again failed; retrying");
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep_until(attempt + backoff) => {}
                }
                backoff = (backoff * 2).min(REBIND_MAX);
            }
        }
    }
}

#[tracing::instrument(skip_all, fields(partition = partition), err(level = "debug"))]
async fn durable_consumer(config: &Config, js: &jetstream::Context, partition: u32) -> Result<PullConsumer> {
    let name = format!("{}-p{partition}", config.durable_name);
    // The command side owns the stream; we only wait for it to exist.
    let stream = js.get_stream(&config.stream).await.map_err(|e| anyhow::anyhow!("stream {}: {e}", config.stream))?;
    stream
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                ack_policy: AckPolicy::Explicit,
                // Short, so messages a killed projector held unacked come back
                // quickly; a slow batch is merely redelivered (version guard).
                ack_wait: Duration::from_secs(5),
                max_ack_pending: (config.batch * 4) as i64,
                filter_subject: format!("{}.{partition}.>", config.subject_prefix),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("consumer {name}: {e}"))
}

/// Hands the partition's messages to the writer, in stream order, until
/// stopped (what it handed over and the writer has not acknowledged comes
/// back after the ack wait, to whoever holds the partition then).
#[tracing::instrument(skip_all, fields(partition = partition), err(level = "debug"))]
async fn consume(
    config: &Config,
    js: &jetstream::Context,
    deliver: &mpsc::Sender<jetstream::Message>,
    shutdown: &CancellationToken,
    partition: u32,
    interrupted: &mut Option<(tokio::time::Instant, u32)>,
) -> Result<()> {
    let consumer =
        bank_platform::nats::answered_within(REBIND_TIMEOUT, "JetStream", durable_consumer(config, js, partition))
            .await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(config.batch)
        .heartbeat(HEARTBEAT)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("pull: {e}"))?;
    match interrupted.take() {
        None => tracing::info!(consumer = %config.durable_name, partition, "projector consuming"),
        Some((since, failed)) => tracing::info!(
            consumer = %config.durable_name,
            partition,
            after_ms = since.elapsed().as_millis() as u64,
            failed_attempts = failed,
            "projector consuming again"
        ),
    }
    loop {
        let m = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            m = messages.next() => m,
        };
        let m = m.ok_or_else(|| anyhow::anyhow!("message stream ended"))?.map_err(|e| anyhow::anyhow!("{e}"))?;
        // A full channel (the writer behind) must not keep a stopped
        // partition waiting: what it holds comes back after the ack wait.
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            sent = deliver.send(m) => if sent.is_err() { return Ok(()) },
        }
    }
}

pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running> {
    let http_listener = server::bind(config.http_addr).await?;
    let addr = http_listener.local_addr()?;
    let mut running = Running::new(addr, addr, shutdown.clone());
    running.spawn(http::serve(http_listener, axum::Router::new(), config.tls.clone(), shutdown.clone()));
    running.spawn(run(config, shutdown));
    Ok(running)
}

/// What a rebuild did.
#[derive(Debug)]
pub struct RebuildReport {
    pub old_generation: i32,
    pub new_generation: i32,
    pub accounts: i64,
    pub entries: i64,
}

/// Where a rebuild reads the events from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebuildSource {
    /// The JetStream stream (events as published, signed).
    Stream,
    /// The event store itself (`EVENT_STORE_DATABASE_URL`): for when the
    /// stream is lost or was cut short.
    EventStore,
}

/// Rebuilds both read models from the start of `source` into a new
/// generation while readers keep using the active one; switches when caught
/// up, keeps applying until caught up again (the live projector then writes
/// the new generation too; the version guard makes the overlap harmless),
/// then drops the old generation.
#[tracing::instrument(skip_all, fields(?source), err)]
pub async fn rebuild(config: &Config, source: RebuildSource) -> Result<RebuildReport> {
    let mut applier = applier(config).await?;
    let pool = applier.pool.clone();
    let old: i32 = bank_readmodel::active_generation(&pool).await?;
    let new = old + 1;
    clear_generation(&pool, new).await?;
    tracing::info!(old, new, ?source, "rebuild started");
    match source {
        RebuildSource::Stream => {
            let js = jetstream(&config.nats_url).await?;
            let stream =
                js.get_stream(&config.stream).await.map_err(|e| anyhow::anyhow!("stream {}: {e}", config.stream))?;
            let consumer: PullConsumer = stream
                .create_consumer(pull::Config {
                    name: Some(format!("rebuild-{new}-{}", uuid::Uuid::new_v4().simple())),
                    ack_policy: AckPolicy::Explicit,
                    deliver_policy: DeliverPolicy::All,
                    filter_subject: format!("{}.>", config.subject_prefix),
                    inactive_threshold: Duration::from_secs(60),
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("rebuild consumer: {e}"))?;
            drain(&consumer, &mut applier, new, config.batch).await?;
            switch_generation(&pool, new).await?;
            drain(&consumer, &mut applier, new, config.batch).await?;
            let _ = stream.delete_consumer(&consumer.cached_info().name).await;
        }
        RebuildSource::EventStore => {
            let url = config
                .event_store_url
                .as_deref()
                .context("EVENT_STORE_DATABASE_URL must be set to rebuild from the event store")?;
            let store = db::connect(url, 1).await?;
            // Read over an authenticated connection from the append-only
            // store: envelopes there are as committed, before the relay signs
            // them for the wire, so signatures are not asked for (the hash
            // chain still is).
            applier.event_keys = None;
            let mut after = replay(&store, config, &mut applier, new, 0).await?;
            switch_generation(&pool, new).await?;
            after = replay(&store, config, &mut applier, new, after).await?;
            tracing::info!(last_seq = after, "event store replayed");
            store.close().await;
        }
    }

    // Readers may hold the old generation for a moment; then it goes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop_generations_before(&pool, new).await?;
    // The old generation's cache entries are left to expire (CACHE_TTL_SECS):
    // the projector's Redis user may not list keys, which would show it every
    // other service's key names.
    let accounts =
        sqlx::query_scalar!(r#"SELECT count(*) AS "accounts!" FROM account_view WHERE generation = $1"#, new)
            .fetch_one(&pool)
            .await?;
    let entries =
        sqlx::query_scalar!(r#"SELECT count(*) AS "entries!" FROM transaction_history WHERE generation = $1"#, new)
            .fetch_one(&pool)
            .await?;
    Ok(RebuildReport { old_generation: old, new_generation: new, accounts, entries })
}

/// Empties generation `generation` of every read model (what an earlier,
/// interrupted rebuild left there).
#[tracing::instrument(skip_all, fields(generation = generation), err)]
async fn clear_generation(pool: &sqlx::PgPool, generation: i32) -> Result<()> {
    sqlx::query!("DELETE FROM account_view WHERE generation = $1", generation).execute(pool).await?;
    sqlx::query!("DELETE FROM transaction_history WHERE generation = $1", generation).execute(pool).await?;
    sqlx::query!("DELETE FROM account_chain WHERE generation = $1", generation).execute(pool).await?;
    sqlx::query!("DELETE FROM hold_view WHERE generation = $1", generation).execute(pool).await?;
    sqlx::query!("DELETE FROM reversal_view WHERE generation = $1", generation).execute(pool).await?;
    Ok(())
}

/// Drops every generation older than `generation` from every read model.
#[tracing::instrument(skip_all, fields(generation = generation), err)]
async fn drop_generations_before(pool: &sqlx::PgPool, generation: i32) -> Result<()> {
    sqlx::query!("DELETE FROM account_view WHERE generation < $1", generation).execute(pool).await?;
    sqlx::query!("DELETE FROM transaction_history WHERE generation < $1", generation).execute(pool).await?;
    sqlx::query!("DELETE FROM account_chain WHERE generation < $1", generation).execute(pool).await?;
    sqlx::query!("DELETE FROM hold_view WHERE generation < $1", generation).execute(pool).await?;
    sqlx::query!("DELETE FROM reversal_view WHERE generation < $1", generation).execute(pool).await?;
    Ok(())
}

#[tracing::instrument(skip_all, fields(new = new), err)]
async fn switch_generation(pool: &sqlx::PgPool, new: i32) -> Result<()> {
    // Waits for in-flight live batches (they hold the row FOR SHARE). A
    // synchronous commit: the switch, and with it every batch of the
    // rebuild before it, is on disk when the rebuild reports success.
    let mut tx = pool.begin().await?;
    sqlx::query!("SET LOCAL synchronous_commit = on").execute(&mut *tx).await?;
    sqlx::query!("UPDATE projection_meta SET active_generation = $1 WHERE id = 1", new).execute(&mut *tx).await?;
    tx.commit().await?;
    tracing::info!(new, "readers switched to the new generation");
    Ok(())
}

/// One event as the event store holds it, for a replay.
struct StoredEvent {
    seq: i64,
    account_id: uuid::Uuid,
    envelope: Vec<u8>,
}

/// Applies the event store's events after `after` (its `seq`) in commit
/// order, a batch at a time; returns the last `seq` applied.
#[tracing::instrument(skip_all, fields(generation = generation, after = after), err)]
async fn replay(
    store: &sqlx::PgPool,
    config: &Config,
    applier: &mut Applier,
    generation: i32,
    mut after: i64,
) -> Result<i64> {
    loop {
        let rows: Vec<StoredEvent> = sqlx::query_as!(
            StoredEvent,
            "SELECT seq, account_id, envelope FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
            after,
            config.batch.max(1) as i64,
        )
        .fetch_all(store)
        .await?;
        let Some(last) = rows.last().map(|r| r.seq) else { return Ok(after) };
        let batch: Vec<Incoming> = rows
            .into_iter()
            .map(|StoredEvent { seq, account_id, envelope }| Incoming {
                subject: bank_platform::nats::event_subject(&config.subject_prefix, account_id),
                payload: envelope,
                stream_sequence: seq as u64,
                delivered: 1,
                traces: Vec::new(),
                refetched: false,
            })
            .collect();
        applier.apply(&batch, Some(generation)).await?;
        after = last;
    }
}

/// Applies until the consumer has nothing pending and nothing unacked.
#[tracing::instrument(skip_all, fields(generation = generation), err)]
async fn drain(consumer: &PullConsumer, applier: &mut Applier, generation: i32, batch: usize) -> Result<()> {
    loop {
        let mut messages = consumer
            .batch()
            .max_messages(batch)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut got = Vec::new();
        while let Some(m) = messages.next().await {
            got.push(m.map_err(|e| anyhow::anyhow!("{e}"))?);
        }
        if got.is_empty() {
            let mut c = consumer.clone();
            let info = c.info().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                return Ok(());
            }
            continue;
        }
        process(applier, got, Some(generation)).await;
        // In stream order a gap is transient here: the redelivery fills it.
        applier.lasting_gaps.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn every_bad_variable_is_named_in_one_error() {
        let env: HashMap<&str, &str> = HashMap::from([
            ("PROJECTOR_BATCH", "lots"),
            ("READ_DB_SYNCHRONOUS_COMMIT", "sometimes"),
            ("PROJECTOR_HTTP_ADDR", "nowhere"),
            ("TLS_CERT_FILE", "/only/the/cert.pem"),
        ]);
        let err = format!("{:#}", Config::from_env(&env).unwrap_err());
        for var in ["PROJECTOR_BATCH", "READ_DB_SYNCHRONOUS_COMMIT", "PROJECTOR_HTTP_ADDR", "TLS_CERT_FILE"] {
            assert!(err.contains(var), "{var} missing from: {err}");
        }
        assert!(Config::from_env(&HashMap::<&str, &str>::new()).is_ok());
    }
}
