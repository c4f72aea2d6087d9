//! NATS connections as a named user. async-nats ignores credentials in a
//! URL, so they are taken out of it here and sent as user and password; the
//! request inbox is the user's own (`_INBOX_<user>`), because the server lets
//! each user subscribe to its own inboxes only (deploy/nats/nats.conf):
//! nobody reads the replies and deliveries meant for another service.

use std::time::Duration;

use anyhow::Context;
use async_nats::{Client, ConnectOptions};

/// A URL's credentials, if any, and the URL without them. A URL may name
/// several servers of a cluster, comma-separated
/// (`nats://user:pw@h1:4222,h2:4223,h3:4224`): the client knows them all
/// from the start and moves to another when its server goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    pub user: Option<(String, String)>,
}

impl Endpoint {
    pub fn parse(raw: &str) -> anyhow::Result<Self> {
        let mut servers = raw.split(',');
        let mut endpoint = Self::parse_one(servers.next().unwrap_or_default())?;
        for other in servers {
            let other = if other.contains("://") { other.to_owned() } else { format!("nats://{other}") };
            endpoint.url = format!("{},{}", endpoint.url, Self::parse_one(&other)?.url);
        }
        Ok(endpoint)
    }

    fn parse_one(raw: &str) -> anyhow::Result<Self> {
        // The URL is not repeated in the error: it may hold a password.
        let mut url = url::Url::parse(raw).context("NATS_URL is not a URL")?;
        let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
        let user = match url.username() {
            "" => None,
            name => Some((decode(name), decode(url.password().unwrap_or_default()))),
        };
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Ok(Self { url: url.as_str().trim_end_matches('/').to_owned(), user })
    }

    /// Options for this endpoint: user, password and the user's own inbox.
    pub fn options(&self) -> ConnectOptions {
        let options = ConnectOptions::new();
        match &self.user {
            Some((user, password)) => {
                options.user_and_password(user.clone(), password.clone()).custom_inbox_prefix(format!("_INBOX_{user}"))
            }
            None => options,
        }
    }
}

/// Connects at once; fails when the server is unreachable or refuses us.
pub async fn connect(raw_url: &str) -> anyhow::Result<Client> {
    connect_with(raw_url, ConnectOptions::connection_timeout).await
}

/// Connects in the background: the client retries until the server answers
/// (for loops that must keep working while NATS is away).
pub async fn connect_lazily(raw_url: &str) -> anyhow::Result<Client> {
    connect_with(raw_url, |o, t| o.retry_on_initial_connect().connection_timeout(t)).await
}

async fn connect_with(
    raw_url: &str,
    how: impl FnOnce(ConnectOptions, Duration) -> ConnectOptions,
) -> anyhow::Result<Client> {
    let endpoint = Endpoint::parse(raw_url)?;
    how(endpoint.options(), Duration::from_secs(2))
        .connect(endpoint.url.split(',').collect::<Vec<_>>().as_slice())
        .await
        .with_context(|| format!("NATS at {}", endpoint.url))
}

/// The project's streams, made once at provisioning by an administrator
/// (`command-service provision-streams`, run by the stack and compose before
/// the services): file storage, a two-minute duplicate window for message
/// ids, no atomic batches (nothing publishes them), and nobody, whatever
/// their permissions, removes what was published. No service may create a
/// stream: a user that could would make one over another's inbox and keep
/// copies of its deliveries.
pub fn stream_config(name: &str, subject_prefix: &str, replicas: usize) -> async_nats::jetstream::stream::Config {
    async_nats::jetstream::stream::Config {
        name: name.to_owned(),
        subjects: vec![format!("{subject_prefix}.>")],
        storage: async_nats::jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        deny_delete: true,
        deny_purge: true,
        // On a cluster, 3: an acknowledged publish is on a majority of them.
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Makes the stream unless it exists (as the administrator).
pub async fn provision_stream(
    js: &async_nats::jetstream::Context,
    name: &str,
    subject_prefix: &str,
    replicas: usize,
) -> anyhow::Result<()> {
    js.get_or_create_stream(stream_config(name, subject_prefix, replicas))
        .await
        .map_err(|e| anyhow::anyhow!("stream {name}: {e}"))?;
    Ok(())
}

/// `provision-streams`: the event and standing streams, as the administrator
/// (`NATS_PROVISION_URL`), named as the services name them (`NATS_STREAM`,
/// `NATS_SUBJECT_PREFIX`, `USERS_STREAM`, `USERS_SUBJECT_PREFIX`,
/// The subject of a partition's batched events (see `signing::sign_batch`).
pub fn batch_subject(prefix: &str, partition: u32) -> String {
    format!("{prefix}.{partition}.batch")
}

/// The partition `subject` carries batched events of, if it is a batch subject.
pub fn batch_partition(prefix: &str, subject: &str) -> Option<u32> {
    subject.strip_prefix(prefix)?.strip_prefix('.')?.strip_suffix(".batch")?.parse().ok()
}

/// One event as a stream holds it: the envelope, and the message that
/// carried it (its stream sequence and headers).
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub sequence: u64,
    pub headers: Option<async_nats::HeaderMap>,
    pub envelope: bank_proto::v1::EventEnvelope,
}

/// Every event `stream` holds, in stream order, whether published alone or
/// in a batch (reconcile, the benchmark and tests read the stream this way:
/// message by message, which needs the right to get a stream's messages and
/// no consumer). Signatures are not checked here, and a message that decodes
/// to no event is skipped.
pub async fn stored_events(stream: &async_nats::jetstream::stream::Stream) -> anyhow::Result<Vec<StoredEvent>> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let state = stream.get_info().await.context("stream info")?.state;
    let mut out = Vec::new();
    for sequence in state.first_sequence.max(1)..=state.last_sequence {
        let m = match stream.get_raw_message(sequence).await {
            Ok(m) => m,
            // Deleted from the middle of the stream (an operator's purge).
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => continue,
            Err(e) => return Err(anyhow::anyhow!("stream message {sequence}: {e}")),
        };
        // Anyone allowed to publish may store garbage: it carries no event.
        match crate::signing::events_of(m.subject.ends_with(".batch"), &m.payload) {
            Ok(events) => out.extend(events.into_iter().map(|envelope| StoredEvent {
                sequence,
                headers: Some(m.headers.clone()),
                envelope,
            })),
            Err(e) => tracing::warn!(sequence, subject = %m.subject, error = %e, "a stored message carries no event"),
        }
    }
    Ok(out)
}

/// `NATS_STREAM_REPLICAS`).
pub async fn provision_from_env(env: &impl crate::config::Env) -> anyhow::Result<()> {
    let url = env.var("NATS_PROVISION_URL").context("NATS_PROVISION_URL (an administrator's NATS URL) is not set")?;
    let js = async_nats::jetstream::new(connect(&url).await?);
    let events = crate::config::string(env, "NATS_STREAM", "BANK_EVENTS");
    let events_prefix = crate::config::string(env, "NATS_SUBJECT_PREFIX", "bank.events");
    let feed = crate::standing::Feed::from_env(env);
    provision_stream(&js, &events, &events_prefix, stream_replicas()).await?;
    provision_stream(&js, &feed.stream, &feed.subject_prefix, stream_replicas()).await?;
    tracing::info!(%events, users = %feed.stream, replicas = stream_replicas(), "streams provisioned");
    Ok(())
}

/// `request`'s answer, or an error if none came within `limit`. For probes
/// of a stream or consumer: while it has no leader the request goes
/// unanswered, and a caller in the middle of the context's 5 s wait would
/// find the new leader only when that ends.
pub async fn answered_within<T>(
    limit: Duration,
    what: &str,
    request: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, request).await.map_err(|_| anyhow::anyhow!("{what}: no answer within {limit:?}"))?
}

/// A stream the services use: it must have been provisioned.
pub async fn durable_stream(
    js: &async_nats::jetstream::Context,
    name: &str,
) -> anyhow::Result<async_nats::jetstream::stream::Stream> {
    js.get_stream(name).await.map_err(|e| {
        anyhow::anyhow!("stream {name}: {e} (streams are made at provisioning: `command-service provision-streams`)")
    })
}

/// Event subjects carry a partition of the account:
/// `<prefix>.<partition>.<account>`, so each projector consumer takes one
/// partition (`<prefix>.<partition>.>`) and every event of an account is in
/// the same one, in order. Fixed: changing it moves accounts between
/// partitions (a new stream and a rebuild).
pub const EVENT_PARTITIONS: u32 = 8;

/// The partition of an account: its id's low bits, random in v4 and v7 ids.
pub fn event_partition(account: uuid::Uuid) -> u32 {
    (account.as_u128() % u128::from(EVENT_PARTITIONS)) as u32
}

/// The subject of an account's events.
pub fn event_subject(prefix: &str, account: uuid::Uuid) -> String {
    format!("{prefix}.{}.{account}", event_partition(account))
}

/// `NATS_STREAM_REPLICAS` (default 1; the HA topology runs 3).
pub fn stream_replicas() -> usize {
    std::env::var("NATS_STREAM_REPLICAS").ok().and_then(|v| v.parse().ok()).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url_and_become_the_user() {
        let e = Endpoint::parse("nats://command:s%40cret@127.0.0.1:4222").unwrap();
        assert_eq!(e.url, "nats://127.0.0.1:4222");
        assert_eq!(e.user, Some(("command".into(), "s@cret".into())));
    }

    #[test]
    fn a_cluster_url_names_every_server_once_and_the_user_once() {
        let e = Endpoint::parse("nats://command:pw@127.0.0.1:4222,127.0.0.1:4223,nats://127.0.0.1:4224").unwrap();
        assert_eq!(e.url, "nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224");
        assert_eq!(e.user, Some(("command".into(), "pw".into())));
    }

    #[test]
    fn an_accounts_events_have_one_partition_and_partitions_are_all_used() {
        let ids: Vec<uuid::Uuid> = (0..400).map(|_| uuid::Uuid::now_v7()).collect();
        for id in &ids {
            assert_eq!(event_subject("bank.events", *id), format!("bank.events.{}.{id}", event_partition(*id)));
        }
        let used: std::collections::HashSet<u32> = ids.iter().map(|id| event_partition(*id)).collect();
        assert_eq!(used.len(), EVENT_PARTITIONS as usize, "400 new ids cover every partition");
    }

    #[test]
    fn a_url_without_credentials_connects_anonymously() {
        let e = Endpoint::parse("nats://127.0.0.1:4222").unwrap();
        assert_eq!(e, Endpoint { url: "nats://127.0.0.1:4222".into(), user: None });
    }

    #[test]
    fn a_bad_url_is_an_error_that_hides_the_password() {
        let err = Endpoint::parse("not a url:secret@x").unwrap_err();
        assert!(!format!("{err:#}").contains("secret@"), "{err:#}");
    }
}
