//! The consumer loop: batches of messages from a durable pull consumer,
//! checked and placed per account, applied by the consumer's store in one go,
//! and only then acknowledged.

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use anyhow::{Result, anyhow};
use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, PullConsumer, pull},
};
use bank_platform::{CancellationToken, signing::EventKeys};
use futures::{FutureExt, StreamExt};
use uuid::Uuid;

use crate::check::{Event, Head, Place, Refusal, events_of, place};

/// A consumer's store.
pub trait Sink {
    /// The heads it holds of `accounts` (an account it never applied is absent).
    fn heads(&self, accounts: &[Uuid]) -> impl Future<Output = Result<HashMap<Uuid, Head>>> + Send;

    /// Applies `events`, in order, and records each account's new head, all
    /// at once: when this returns `Ok` every effect is durable. Each
    /// account's events are consecutive versions, the first chained to the
    /// head `heads` gave.
    fn apply(&self, events: &[Event]) -> impl Future<Output = Result<()>> + Send;

    /// A message that will never be believed (forged, malformed, or an event
    /// that does not chain); it is not delivered again. Recording it (a dead
    /// letter) is the store's choice; the default only logs it.
    fn refused(&self, subject: &str, stream_sequence: u64, why: &Refusal) -> impl Future<Output = Result<()>> + Send {
        tracing::error!(subject, stream_sequence, %why, "event stream message refused");
        async { Ok(()) }
    }
}

#[derive(Clone)]
pub struct Options {
    /// The stream's subject prefix (`bank.events`).
    pub subject_prefix: String,
    /// The bank's event keys. `None` believes unsigned events: a
    /// development stack only.
    pub keys: Option<Arc<EventKeys>>,
    /// Most messages applied in one `Sink::apply`.
    pub batch: usize,
    /// How long a message waits for the events before it (a gap) before it
    /// is delivered again.
    pub gap_delay: Duration,
}

/// The durable consumer `name` on `stream`, of the events under
/// `subject_prefix` (the filter is part of the subject NATS authorizes, so a
/// user may be allowed consumers of events and nothing else): explicit acks,
/// redelivered without limit (a gap is waited out, never dropped).
pub async fn durable_consumer(
    stream: &jetstream::stream::Stream,
    name: &str,
    subject_prefix: &str,
) -> Result<PullConsumer> {
    let config = pull::Config {
        durable_name: Some(name.to_owned()),
        filter_subject: format!("{subject_prefix}.>"),
        ack_policy: AckPolicy::Explicit,
        // Short, so what a stopped or killed consumer held unacknowledged
        // comes back quickly; a slow batch is merely delivered again (and
        // is a duplicate then).
        ack_wait: Duration::from_secs(5),
        max_deliver: -1,
        ..Default::default()
    };
    stream.get_or_create_consumer(name, config).await.map_err(|e| anyhow!("consumer {name}: {e}"))
}

/// Consumes until `shutdown`, or until the stream fails (then call again
/// after a pause). A store that fails is asked again shortly; what it did
/// not take is never acknowledged.
pub async fn run<S: Sink + Sync>(
    consumer: &PullConsumer,
    sink: &S,
    options: &Options,
    shutdown: &CancellationToken,
) -> Result<()> {
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(options.batch)
        .messages()
        .await
        .map_err(|e| anyhow!("pulling from the event stream: {e}"))?;
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            m = messages.next() => m,
        };
        let first = first.ok_or_else(|| anyhow!("the event stream's messages ended"))?;
        let mut batch = vec![first.map_err(|e| anyhow!("event stream: {e}"))?];
        while batch.len() < options.batch {
            match messages.next().now_or_never() {
                Some(Some(Ok(m))) => batch.push(m),
                _ => break,
            }
        }
        if let Err(e) = handle(&batch, sink, options).await {
            // Nothing of the batch is durable: all of it comes again, on
            // this subscription (a new one would wait out the ack deadline
            // for what this one was handed).
            tracing::warn!(error = %e, "the store could not take a batch of events; again shortly");
            for m in &batch {
                let _ = m.ack_with(AckKind::Nak(Some(options.gap_delay))).await;
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(options.gap_delay) => {}
            }
        }
    }
}

enum Verdict {
    Ack,
    /// Waiting for an earlier event.
    Later,
    Never(Refusal),
}

async fn handle<S: Sink + Sync>(batch: &[jetstream::Message], sink: &S, options: &Options) -> Result<()> {
    let keys = options.keys.as_deref();
    let checked: Vec<Result<Vec<Event>, Refusal>> =
        batch.iter().map(|m| events_of(&m.subject, &m.payload, &options.subject_prefix, keys)).collect();
    let mut accounts: Vec<Uuid> = checked.iter().flatten().flatten().map(|e| e.account).collect();
    accounts.sort_unstable();
    accounts.dedup();
    let mut heads = sink.heads(&accounts).await?;

    let mut ready = Vec::new();
    let mut verdicts = Vec::with_capacity(batch.len());
    for events in checked {
        let events = match events {
            Ok(events) => events,
            Err(refusal) => {
                verdicts.push(Verdict::Never(refusal));
                continue;
            }
        };
        // A message applies whole or not at all: its events are placed
        // against heads that only become the batch's once all of them fit.
        let mut tentative: HashMap<Uuid, Head> = HashMap::new();
        let mut next = Vec::new();
        let mut verdict = Verdict::Ack;
        for event in events {
            match place(&event, tentative.get(&event.account).or(heads.get(&event.account))) {
                Place::Duplicate => {}
                Place::Next => {
                    tentative.insert(event.account, event.head());
                    next.push(event);
                }
                Place::Gap { .. } => {
                    verdict = Verdict::Later;
                    break;
                }
                Place::Unchained => {
                    let why =
                        format!("event {} v{} does not chain to its account's last", event.account, event.version());
                    verdict = Verdict::Never(Refusal::Rejected(why));
                    break;
                }
            }
        }
        if matches!(verdict, Verdict::Ack) {
            heads.extend(tentative);
            ready.extend(next);
        }
        verdicts.push(verdict);
    }

    if !ready.is_empty() {
        sink.apply(&ready).await?;
    }
    for (m, verdict) in batch.iter().zip(verdicts) {
        let sequence = m.info().map(|i| i.stream_sequence).unwrap_or_default();
        let kind = match verdict {
            Verdict::Ack => AckKind::Ack,
            Verdict::Later => AckKind::Nak(Some(options.gap_delay)),
            Verdict::Never(why) => {
                sink.refused(&m.subject, sequence, &why).await?;
                AckKind::Term
            }
        };
        if let Err(e) = m.ack_with(kind).await {
            // It comes again, and is a duplicate then.
            tracing::warn!(error = %e, sequence, "acknowledging an event stream message failed");
        }
    }
    Ok(())
}
