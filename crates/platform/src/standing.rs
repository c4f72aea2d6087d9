//! A user's standing (status and roles) as auth-service publishes each change
//! of it, so services that act on a token can act on the newest standing
//! instead: a suspension or a revoked role takes effect at once, not when the
//! access token runs out.
//!
//! auth-service records every change in the same transaction as the change
//! (a trigger on `users`) and publishes it to JetStream, subject
//! `<prefix>.<user_id>`, message id `user-change-<seq>`; `seq` only grows.

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The audience of a signed standing (`TokenSigner::sign_standing`).
pub const STANDING_AUDIENCE: &str = "bankmesh-standing";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    pub user_id: Uuid,
    pub status: String,
    pub roles: Vec<String>,
    /// Order of changes: a newer standing has a larger seq.
    pub seq: i64,
    /// The status this change moved from (so a reader can tell a KYC
    /// approval from a reinstatement); `None` in standings recorded before
    /// the feed carried it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<String>,
}

impl Standing {
    pub fn is_active(&self) -> bool {
        self.status == crate::auth::STATUS_ACTIVE
    }

    pub fn has(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Where standings are published.
#[derive(Clone)]
pub struct Feed {
    pub nats_url: String,
    pub stream: String,
    pub subject_prefix: String,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("nats_url", &crate::config::redact_url(&self.nats_url))
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .finish()
    }
}

impl Feed {
    /// From `NATS_URL`, `USERS_STREAM` and `USERS_SUBJECT_PREFIX`: the same
    /// variables for the publisher (auth-service) and its consumers.
    pub fn from_env(env: &impl crate::config::Env) -> Self {
        use crate::config::string;
        Self {
            nats_url: string(env, "NATS_URL", "nats://127.0.0.1:4222"),
            stream: string(env, "USERS_STREAM", "BANK_USERS"),
            subject_prefix: string(env, "USERS_SUBJECT_PREFIX", "bank.users"),
        }
    }

    /// The stream (made at provisioning).
    pub async fn stream(&self, js: &jetstream::Context) -> anyhow::Result<jetstream::stream::Stream> {
        crate::nats::durable_stream(js, &self.stream).await
    }
}

static REFUSED: std::sync::LazyLock<prometheus::IntCounter> = std::sync::LazyLock::new(|| {
    prometheus::register_int_counter!(
        "user_standings_refused_total",
        "standings on the feed that auth-service did not sign, or that name another user than their subject"
    )
    .expect("registers once")
});

/// The standing a feed message carries, if auth-service signed it (a key of
/// its JWKS) and it is about the user its subject names; otherwise why not
/// (counted in `user_standings_refused_total`).
pub async fn verified(
    keys: &crate::auth::KeyCache,
    subject: &str,
    payload: &[u8],
) -> Result<Standing, crate::auth::StandingRefusal> {
    use crate::auth::StandingRefusal::Invalid;
    let result = async {
        let jws = std::str::from_utf8(payload).map_err(|_| Invalid("not a signed standing".to_owned()))?;
        let standing = keys.verify_standing(jws).await?;
        if !subject.ends_with(&format!(".{}", standing.user_id)) {
            return Err(Invalid("published on another user's subject".to_owned()));
        }
        Ok(standing)
    }
    .await;
    if result.is_err() {
        REFUSED.inc();
    }
    result
}

/// What a message on the feed turned out to be.
#[derive(Debug)]
pub enum Verdict {
    Signed(Standing),
    /// Not auth-service's: drop it.
    Refused,
    /// Signed with a key not known here yet: ask again later (a suspension
    /// must not be lost because the JWKS was briefly out of reach).
    NotYet,
}

/// Reads a consumer's `messages` until shutdown, handing each to `handle`
/// with its verdict (refusals are logged and counted, and never block the
/// rest). Returns an error when the feed ends or fails.
pub async fn read_feed<S, E, F, Fut>(
    messages: S,
    keys: &crate::auth::KeyCache,
    shutdown: &crate::CancellationToken,
    mut handle: F,
) -> anyhow::Result<()>
where
    S: futures::Stream<Item = Result<jetstream::Message, E>>,
    E: std::fmt::Display,
    F: FnMut(Verdict, jetstream::Message) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    use futures::StreamExt;
    let mut messages = std::pin::pin!(messages);
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            m = messages.next() => m,
        };
        let Some(message) = message else { anyhow::bail!("the feed ended") };
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        let verdict = match verified(keys, &message.subject, &message.payload).await {
            Ok(s) => Verdict::Signed(s),
            Err(why) => {
                tracing::warn!(reason = %why, subject = %message.subject, "user standing refused");
                match why {
                    crate::auth::StandingRefusal::UnknownKey(_) => Verdict::NotYet,
                    crate::auth::StandingRefusal::Invalid(_) => Verdict::Refused,
                }
            }
        };
        handle(verdict, message).await?;
    }
}

/// Follows a durable consumer of the feed: each standing auth-service signed
/// goes to `apply` (with the message as published), and its message is
/// acknowledged once `apply` succeeded; one nobody signed is dropped; one
/// signed with a key not known here yet (rotated in a moment ago, the JWKS
/// out of reach) comes again in a second, for a minute, and is dropped then:
/// a forgery must not come back for ever.
pub async fn apply_feed<S, E, F, Fut>(
    messages: S,
    keys: &crate::auth::KeyCache,
    shutdown: &crate::CancellationToken,
    mut apply: F,
) -> anyhow::Result<()>
where
    S: futures::Stream<Item = Result<jetstream::Message, E>>,
    E: std::fmt::Display,
    F: FnMut(Standing, Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    use async_nats::jetstream::AckKind;
    read_feed(messages, keys, shutdown, |verdict, message| {
        let (applied, ack) = match verdict {
            Verdict::Signed(s) => (Some(apply(s, message.payload.to_vec())), AckKind::Ack),
            Verdict::Refused => (None, AckKind::Ack),
            Verdict::NotYet if message.info().is_ok_and(|i| i.delivered < 60) => {
                (None, AckKind::Nak(Some(std::time::Duration::from_secs(1))))
            }
            Verdict::NotYet => (None, AckKind::Ack),
        };
        async move {
            if let Some(applied) = applied {
                applied.await?;
            }
            message.ack_with(ack).await.map_err(|e| anyhow::anyhow!("{e}"))
        }
    })
    .await
}
