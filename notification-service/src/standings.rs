//! Follows auth-service's standing feed through a durable consumer of its
//! own (`notification-service-standing`) and tells users what changed: a
//! KYC approval, a suspension, a reinstatement. Only standings auth-service
//! signed count (the JWKS the tokens are checked against); a message is
//! acknowledged once what it made is committed.

use std::{sync::Arc, time::Duration};

use anyhow::Result;
use async_nats::jetstream;
use bank_platform::{
    CancellationToken,
    auth::KeyCache,
    standing::{Feed, apply_feed},
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
    apply_feed(messages, keys, shutdown, |s, _| async move { store.standing_changed(&s).await }).await
}
