//! The relay deletes an event's outbox row once
//! JetStream acknowledges it, so an acknowledgement must mean the event is on
//! disk. The server the tests run (the stack's, with deploy/nats/nats.conf,
//! as compose runs it) syncs every write before it acknowledges.

mod common;

use std::{collections::HashMap, time::Duration};

use bank_proto::v1 as pb;
use bank_testkit::{assert_eventually, http_get};
use common::Harness;

#[tokio::test]
async fn jetstream_syncs_every_write_before_it_acknowledges() {
    let monitor = std::env::var("NATS_MONITOR_ADDR").unwrap_or_else(|_| "127.0.0.1:8222".into());
    let varz = http_get(monitor.parse().expect("NATS_MONITOR_ADDR"), "/varz").await.expect("NATS monitoring answers");
    let varz: serde_json::Value = serde_json::from_str(&varz).expect("varz is JSON");
    let config = &varz["jetstream"]["config"];
    assert_eq!(config["sync_always"], serde_json::Value::Bool(true), "JetStream config: {config}");
}

/// Every event on the harness's stream with what carried it: the message's
/// stream sequence and its `Nats-Batch-Id` if it was part of an atomic
/// batch, in stream order.
async fn stored_with_batches(h: &Harness) -> Vec<(pb::EventEnvelope, (u64, Option<String>))> {
    let client = bank_platform::nats::connect(&bank_testkit::nats_admin_url()).await.unwrap();
    let stream = async_nats::jetstream::new(client).get_stream(&h.config.relay.stream).await.unwrap();
    bank_platform::nats::stored_events(&stream)
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            let batch = e.headers.as_ref().and_then(|h| h.get("Nats-Batch-Id")).map(|v| v.to_string());
            (e.envelope, (e.sequence, batch))
        })
        .collect()
}

/// Each account's versions on the stream: 1, 2, 3, … with none twice.
fn assert_in_version_order(stored: &[(pb::EventEnvelope, (u64, Option<String>))]) {
    let mut next: HashMap<String, i64> = HashMap::new();
    for (e, _) in stored {
        let expected = next.entry(e.account_id.clone()).or_insert(1);
        assert_eq!(e.version, *expected, "account {} out of order on the stream", e.account_id);
        *expected += 1;
    }
}

/// The relay publishes a round as one message per partition, message by
/// message (not as a JetStream atomic batch: the server stages each of
/// those in a file store of its own, which cost more than the fsync per
/// message it saves). A transfer's two legs are committed in one
/// transaction, so when both accounts are in one partition they reach the
/// stream in one message; every event is there once, each account's in
/// version order.
#[tokio::test]
async fn a_transactions_events_in_one_partition_reach_the_stream_in_one_message() {
    let h = Harness::start().await;
    let (_, alice) = h.customer();
    let a = h.open(&alice, "USD").await;
    let partition = |id: &str| bank_platform::nats::event_partition(id.parse().unwrap());
    let mut b = h.open(&alice, "USD").await;
    while partition(&b) != partition(&a) {
        b = h.open(&alice, "USD").await;
    }
    h.fund(&a, "100.00").await;
    let mut transfers = Vec::new();
    for _ in 0..5 {
        transfers.push(h.transfer(&alice, &a, &b, "1.00").await.unwrap().transaction_id);
    }
    assert_eventually!(h.count("outbox").await == 0, Duration::from_secs(30), "outbox did not drain");
    let stored = stored_with_batches(&h).await;
    assert_eq!(stored.len() as i64, h.count("events").await, "every event on the stream once");
    assert_in_version_order(&stored);
    for t in &transfers {
        let legs: Vec<_> = stored.iter().filter(|(e, _)| &e.transaction_id == t).collect();
        assert_eq!(legs.len(), 2, "transfer {t}: both legs on the stream");
        assert_eq!(legs[0].1.0, legs[1].1.0, "transfer {t}: the legs were published in two messages");
    }
    assert!(stored.iter().all(|(_, (_, batch))| batch.is_none()), "no atomic batch: {stored:?}");
}

/// A stream made by hand with JetStream's defaults, not provisioned by us,
/// still gets every event, message by message, in order.
#[tokio::test]
async fn a_stream_made_with_defaults_still_gets_every_event_in_order() {
    let prefix = bank_testkit::unique_prefix("old");
    let (stream, subjects) = (prefix.to_uppercase(), format!("{prefix}.events"));
    let admin =
        async_nats::jetstream::new(bank_platform::nats::connect(&bank_testkit::nats_admin_url()).await.unwrap());
    admin
        .create_stream(async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{subjects}.>")],
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    let h = Harness::start_with(&bank_testkit::nats_url_as(bank_testkit::Principal::Command), |c| {
        c.relay.stream = stream.clone();
        c.relay.subject_prefix = subjects.clone();
    })
    .await;
    let (_, alice) = h.customer();
    let (a, b) = (h.open(&alice, "USD").await, h.open(&alice, "USD").await);
    h.fund(&a, "100.00").await;
    for _ in 0..5 {
        h.transfer(&alice, &a, &b, "1.00").await.unwrap();
    }
    assert_eventually!(h.count("outbox").await == 0, Duration::from_secs(30), "outbox did not drain");
    let stored = stored_with_batches(&h).await;
    assert_eq!(stored.len() as i64, h.count("events").await, "every event on the stream once");
    assert_in_version_order(&stored);
    assert!(stored.iter().all(|(_, (_, batch))| batch.is_none()), "no atomic batch");
}
