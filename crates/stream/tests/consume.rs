//! The shared consumer against a real JetStream and a store in a real
//! Postgres: each account's events reach the store once and in order however
//! they are delivered, nothing forged or unchained is ever applied, and
//! nothing is acknowledged before the store has it.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Result;
use bank_platform::{
    CancellationToken,
    auth::TokenSigner,
    nats,
    signing::{self, EventKeys, GENESIS_HASH, chain_hash},
};
use bank_proto::v1 as pb;
use bank_stream::{Event, Head, Options, Refusal, Sink};
use bank_testkit::{DbRole, TestDb, assert_eventually};
use prost::Message;
use sqlx::PgPool;
use uuid::Uuid;

/// A consumer's store: what it applied, in the order it applied it, and the
/// heads, written in one transaction per batch.
struct Store {
    db: PgPool,
    /// Batches to fail before succeeding (the store being down).
    failures: AtomicUsize,
    refused: AtomicUsize,
}

impl Sink for Store {
    async fn heads(&self, accounts: &[Uuid]) -> Result<HashMap<Uuid, Head>> {
        let rows: Vec<(Uuid, i64, Vec<u8>)> =
            sqlx::query_as("SELECT account_id, version, hash FROM heads WHERE account_id = ANY($1)")
                .bind(accounts)
                .fetch_all(&self.db)
                .await?;
        Ok(rows.into_iter().map(|(a, version, hash)| (a, Head { version, hash: Some(hash) })).collect())
    }

    async fn apply(&self, events: &[Event]) -> Result<()> {
        if self.failures.load(Ordering::SeqCst) > 0 {
            self.failures.fetch_sub(1, Ordering::SeqCst);
            anyhow::bail!("the store is down");
        }
        let mut tx = self.db.begin().await?;
        for e in events {
            sqlx::query("INSERT INTO applied (account_id, version) VALUES ($1, $2)")
                .bind(e.account)
                .bind(e.version())
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO heads VALUES ($1, $2, $3)
                 ON CONFLICT (account_id) DO UPDATE SET version = excluded.version, hash = excluded.hash",
            )
            .bind(e.account)
            .bind(e.version())
            .bind(&e.envelope.hash)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn refused(&self, _subject: &str, _sequence: u64, _why: &Refusal) -> Result<()> {
        self.refused.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Setup {
    store: Arc<Store>,
    js: async_nats::jetstream::Context,
    prefix: String,
    bank: TokenSigner,
    shutdown: CancellationToken,
}

impl Setup {
    /// A stream, a store and a consumer running on them.
    async fn start() -> Self {
        let prefix = format!("{}.events", bank_testkit::unique_prefix("stream"));
        let stream_name = prefix.replace('.', "_").to_uppercase();
        let admin = bank_testkit::nats_admin_url();
        bank_testkit::provision_streams(&admin, &[(&stream_name, &prefix)]).await;
        let js = async_nats::jetstream::new(nats::connect(&admin).await.unwrap());
        let db = TestDb::create("stream", DbRole::ReadOwner).await;
        let db = bank_platform::db::connect(&db.admin_url(), 2).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE applied (seq bigserial PRIMARY KEY, account_id uuid NOT NULL, version bigint NOT NULL);
             CREATE TABLE heads (account_id uuid PRIMARY KEY, version bigint NOT NULL, hash bytea NOT NULL);",
        )
        .execute(&db)
        .await
        .unwrap();
        let store = Arc::new(Store { db, failures: AtomicUsize::new(0), refused: AtomicUsize::new(0) });
        let bank = TokenSigner::generate();
        let options = Options {
            subject_prefix: prefix.clone(),
            keys: Some(Arc::new(EventKeys::of(std::slice::from_ref(&bank)))),
            batch: 16,
            gap_delay: Duration::from_millis(100),
        };
        let shutdown = CancellationToken::new();
        let stream = js.get_stream(&stream_name).await.unwrap();
        let consumer = bank_stream::durable_consumer(&stream, "test-consumer", &prefix).await.unwrap();
        let (s, stop) = (store.clone(), shutdown.clone());
        tokio::spawn(async move {
            // As a service runs it: again after a pause when it fails.
            while !stop.is_cancelled() {
                if let Err(e) = bank_stream::run(&consumer, &*s, &options, &stop).await {
                    eprintln!("consumer: {e}; again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Self { store, js, prefix, bank, shutdown }
    }

    /// Publishes `events` as one message signed by `signer`.
    async fn publish(&self, events: &[pb::EventEnvelope], signer: &TokenSigner) {
        let account = Uuid::try_parse(&events[0].account_id).unwrap();
        let subject = nats::batch_subject(&self.prefix, nats::event_partition(account));
        let payload = signing::sign_batch(events.iter().map(Message::encode_to_vec).collect(), signer);
        self.js.publish(subject, payload.into()).await.unwrap().await.unwrap();
    }

    /// What the store applied of `account`, in order.
    async fn applied(&self, account: Uuid) -> Vec<i64> {
        sqlx::query_scalar("SELECT version FROM applied WHERE account_id = $1 ORDER BY seq")
            .bind(account)
            .fetch_all(&self.store.db)
            .await
            .unwrap()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An account's first `n` events as the bank writes them: each chained to the last.
fn chain(account: Uuid, n: i64) -> Vec<pb::EventEnvelope> {
    let mut previous = GENESIS_HASH.to_vec();
    (1..=n)
        .map(|version| {
            let mut env = pb::EventEnvelope {
                event_id: Uuid::now_v7().to_string(),
                account_id: account.to_string(),
                version,
                ..Default::default()
            };
            env.hash = chain_hash(&previous, &env);
            previous = env.hash.clone();
            env
        })
        .collect()
}

#[tokio::test]
async fn each_accounts_events_reach_the_store_once_and_in_order_whatever_the_delivery_order() {
    let s = Setup::start().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let ea = chain(a, 4);
    // Out of order, and the second event twice.
    for i in [2, 0, 1, 1, 3] {
        s.publish(&ea[i..=i], &s.bank).await;
    }
    // Two events of one account in one message.
    s.publish(&chain(b, 2), &s.bank).await;
    assert_eventually!(
        s.applied(a).await.len() >= 4 && s.applied(b).await.len() >= 2,
        Duration::from_secs(15),
        "applied"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.applied(a).await, [1, 2, 3, 4]);
    assert_eq!(s.applied(b).await, [1, 2]);
}

#[tokio::test]
async fn nothing_forged_or_unchained_is_ever_applied() {
    let s = Setup::start().await;
    let a = Uuid::now_v7();
    let events = chain(a, 2);
    // Signed by a key that is not the bank's.
    s.publish(&events[..1], &TokenSigner::generate()).await;
    // Signed by the bank, but not the event it wrote after v1.
    let mut forked = events[1].clone();
    forked.actor = "someone else".into();
    s.publish(&events[..1], &s.bank).await;
    s.publish(&[forked], &s.bank).await;
    assert_eventually!(s.store.refused.load(Ordering::SeqCst) == 2, Duration::from_secs(15), "both refused");
    s.publish(&events[1..], &s.bank).await;
    assert_eventually!(s.applied(a).await.len() >= 2, Duration::from_secs(15), "the genuine events applied");
    assert_eq!(s.applied(a).await, [1, 2]);
}

#[tokio::test]
async fn nothing_is_acknowledged_before_the_store_has_it() {
    let s = Setup::start().await;
    s.store.failures.store(2, Ordering::SeqCst);
    let a = Uuid::now_v7();
    for e in chain(a, 3).chunks(1) {
        s.publish(e, &s.bank).await;
    }
    assert_eventually!(s.applied(a).await.len() >= 3, Duration::from_secs(15), "applied once the store is back");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.store.failures.load(Ordering::SeqCst), 0, "the store refused twice");
    assert_eq!(s.applied(a).await, [1, 2, 3]);
}
