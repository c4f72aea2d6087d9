//! Follows auth-service's standing feed through a durable consumer of its
//! own (`notification-service-standing`) and tells users what changed: a
//! KYC approval, a suspension, a reinstatement. Only standings auth-service
//! signed count (the JWKS the tokens are checked against); a message is
//! acknowledged once what it made is committed.

use std::{sync::Arc, time::Duration};

use anyhow::Result;
use async_nats::jetstream::{self, AckKind};
use bank_platform::{
    CancellationToken,
    auth::KeyCache,
    standing::{Feed, Verdict, read_feed},
};

use crate::store::Store;

/// The durable consumer this service reads the standing feed through.
pub const CONSUMER: &str = "notification-service-standing";

pub async fn run(store: Arc<Store>, feed: Feed, keys: Arc<KeyCache>, shutdown: CancellationToken) -> Result<()> {
    let mut pause = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let consumed = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = consume(&store, &feed, &keys, &shutdown) => r,
        };
        match consumed {
            Ok(()) => return Ok(()),
            Err(e) => tracing::warn!(error = %e, "user standing feed unavailable; again shortly"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
    Ok(())
}

async fn consume(store: &Store, feed: &Feed, keys: &KeyCache, shutdown: &CancellationToken) -> Result<()> {
    let js = jetstream::new(bank_platform::nats::connect(&feed.nats_url).await?);
    let stream = feed.stream(&js).await?;
    let consumer = bank_stream::durable_consumer(&stream, CONSUMER, &feed.subject_prefix).await?;
    let messages = consumer.messages().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    read_feed(messages, keys, shutdown, |verdict, message| async move {
        let ack = match verdict {
            Verdict::Signed(s) => {
                store.standing_changed(&s).await?;
                AckKind::Ack
            }
            Verdict::Refused => AckKind::Ack,
            // A key rotated in a moment ago, or the JWKS out of reach: again
            // in a second, for a minute (a forgery must not come back for ever).
            Verdict::NotYet if message.info().is_ok_and(|i| i.delivered < 60) => {
                AckKind::Nak(Some(Duration::from_secs(1)))
            }
            Verdict::NotYet => AckKind::Ack,
        };
        message.ack_with(ack).await.map_err(|e| anyhow::anyhow!("{e}"))
    })
    .await
}
