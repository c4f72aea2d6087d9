//! Holds, reversals and debit limits against real Postgres and NATS JetStream,
//! over real gRPC.

mod common;

use std::time::{Duration, Instant};

use bank_domain::Forbidden;
use bank_proto::v1 as pb;
use bank_testkit::{Principal, authed};
use common::{Harness, key, reason, usd, violation_fields};
use futures::future::join_all;
use rust_decimal::Decimal;
use tonic::Code;
use uuid::Uuid;

/// Expiry looks for due holds this often in these tests.
fn fast_expiry(c: &mut command_service::Config) {
    c.hold_expiry_poll = Duration::from_millis(50);
}

async fn start() -> Harness {
    Harness::start_with(&bank_testkit::nats_url_as(Principal::Command), fast_expiry).await
}

fn place(from: &str, to: &str, amount: &str, ttl_seconds: i64) -> pb::PlaceHoldRequest {
    pb::PlaceHoldRequest {
        from_account_id: from.into(),
        to_account_id: to.into(),
        money: usd(amount),
        expires_at: None,
        ttl_seconds,
        idempotency_key: key(),
        description: "hotel".into(),
    }
}

fn capture(hold: &str, amount: Option<&str>) -> pb::CaptureHoldRequest {
    pb::CaptureHoldRequest { hold_id: hold.into(), amount: amount.and_then(usd), idempotency_key: key() }
}

fn void(hold: &str) -> pb::VoidHoldRequest {
    pb::VoidHoldRequest { hold_id: hold.into(), idempotency_key: key() }
}

impl Harness {
    async fn place_hold(&self, token: &str, req: pb::PlaceHoldRequest) -> Result<pb::HoldResponse, tonic::Status> {
        self.client.clone().place_hold(authed(req, token)).await.map(|r| r.into_inner())
    }

    async fn capture_hold(
        &self,
        token: &str,
        req: pb::CaptureHoldRequest,
    ) -> Result<pb::MoneyMovementResponse, tonic::Status> {
        self.client.clone().capture_hold(authed(req, token)).await.map(|r| r.into_inner())
    }

    async fn void_hold(&self, token: &str, req: pb::VoidHoldRequest) -> Result<pb::HoldResponse, tonic::Status> {
        self.client.clone().void_hold(authed(req, token)).await.map(|r| r.into_inner())
    }

    async fn reverse(&self, token: &str, tx: &str) -> Result<pb::MoneyMovementResponse, tonic::Status> {
        let req = pb::ReverseTransactionRequest {
            transaction_id: tx.into(),
            reason: "posted in error".into(),
            idempotency_key: key(),
        };
        self.client.clone().reverse_transaction(authed(req, token)).await.map(|r| r.into_inner())
    }

    /// (ledger balance, held) in the write model, as text at scale 2.
    async fn held(&self, account: &str) -> (String, String) {
        let (b, h): (Decimal, Decimal) = sqlx::query_as("SELECT balance, held FROM accounts WHERE id = $1::uuid")
            .bind(account)
            .fetch_one(&self.db)
            .await
            .unwrap();
        (format!("{b:.2}"), format!("{h:.2}"))
    }

    async fn hold_state(&self, hold: &str) -> String {
        sqlx::query_scalar("SELECT state FROM holds WHERE id = $1::uuid").bind(hold).fetch_one(&self.db).await.unwrap()
    }

    /// Event kinds of an account after version `after`, in order.
    async fn kinds_since(&self, account: &str, after: i64) -> Vec<String> {
        sqlx::query_scalar("SELECT kind FROM events WHERE account_id = $1::uuid AND version > $2 ORDER BY version")
            .bind(account)
            .bind(after)
            .fetch_all(&self.db)
            .await
            .unwrap()
    }

    async fn releases_of(&self, hold: &str) -> i64 {
        let events: Vec<Vec<u8>> = sqlx::query_scalar("SELECT envelope FROM events WHERE kind = 'HoldReleased'")
            .fetch_all(&self.db)
            .await
            .unwrap();
        events
            .iter()
            .filter(|e| {
                use prost::Message;
                matches!(
                    pb::EventEnvelope::decode(e.as_slice()).unwrap().payload,
                    Some(pb::event_envelope::Payload::HoldReleased(r)) if r.hold_id == hold
                )
            })
            .count() as i64
    }

    async fn assert_reconcile_clean(&self) {
        let report = command_service::reconcile(&self.config).await.unwrap();
        assert!(report.is_clean(), "reconcile: {:?}", report.problems);
    }
}

async fn wait_for_state(h: &Harness, hold: &str, state: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while h.hold_state(hold).await != state {
        assert!(Instant::now() < deadline, "hold {hold} did not become {state}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn hold_lifecycle_table_every_ending_and_every_later_command() {
    let h = start().await;
    let (_, alice) = h.customer();
    let (_, bob) = h.customer();
    // (how it ends, balances after: source ledger, source held, destination, answer state)
    let table = [
        ("capture", "60.00", "0.00", "40.00", pb::HoldState::Captured),
        ("partial capture", "75.00", "0.00", "25.00", pb::HoldState::Captured),
        ("void", "100.00", "0.00", "0.00", pb::HoldState::Voided),
        ("expire", "100.00", "0.00", "0.00", pb::HoldState::Expired),
    ];
    for (ending, ledger_after, held_after, dest_after, state) in table {
        let from = h.open(&alice, "USD").await;
        let to = h.open(&bob, "USD").await;
        h.fund(&from, "100.00").await;
        let ttl = if ending == "expire" { 1 } else { 600 };
        let placed = h.place_hold(&alice, place(&from, &to, "40.00", ttl)).await.unwrap();
        let hold = placed.hold.clone().unwrap();
        assert_eq!(hold.state, pb::HoldState::Open as i32, "{ending}");
        assert_eq!(placed.available_balance.unwrap().amount, "60.00");
        // Placed: the ledger balance stays, the available balance drops.
        assert_eq!(h.held(&from).await, ("100.00".into(), "40.00".into()), "{ending}");
        let capture_all = capture(&hold.hold_id, None);
        match ending {
            "capture" => {
                let moved = h.capture_hold(&alice, capture_all.clone()).await.unwrap();
                // Alice sees her own balance after, not bob's.
                assert_eq!(moved.balances_after.len(), 1);
                assert_eq!(moved.balances_after[0].account_id, from);
                assert_eq!(moved.balances_after[0].balance.clone().unwrap().amount, "60.00");
                // A replay of the same key answers the same, with no second effect.
                assert_eq!(h.capture_hold(&alice, capture_all.clone()).await.unwrap(), moved);
            }
            "partial capture" => {
                h.capture_hold(&alice, capture(&hold.hold_id, Some("25.00"))).await.unwrap();
            }
            "void" => {
                let voided = h.void_hold(&alice, void(&hold.hold_id)).await.unwrap();
                assert_eq!(voided.hold.unwrap().state, pb::HoldState::Voided as i32);
                assert_eq!(voided.available_balance.unwrap().amount, "100.00");
            }
            _ => wait_for_state(&h, &hold.hold_id, "EXPIRED", Duration::from_secs(10)).await,
        }
        assert_eq!(h.held(&from).await, (ledger_after.into(), held_after.into()), "{ending}");
        assert_eq!(h.balance(&to).await, dest_after, "{ending}");
        let expected_kinds: &[&str] = match ending {
            "capture" | "partial capture" => &["HoldPlaced", "HoldReleased", "TransferDebited"],
            _ => &["HoldPlaced", "HoldReleased"],
        };
        assert_eq!(h.kinds_since(&from, 2).await, expected_kinds, "{ending}");
        assert_eq!(h.releases_of(&hold.hold_id).await, 1, "{ending}");

        // Every later command answers the state the hold ended in, and changes nothing.
        let want = match state {
            pb::HoldState::Captured => "HOLD_CAPTURED",
            pb::HoldState::Voided => "HOLD_VOIDED",
            _ => "HOLD_EXPIRED",
        };
        let again = h.capture_hold(&alice, capture(&hold.hold_id, None)).await.unwrap_err();
        assert_eq!((again.code(), reason(&again)), (Code::FailedPrecondition, want.into()), "{ending}");
        let again = h.void_hold(&alice, void(&hold.hold_id)).await.unwrap_err();
        assert_eq!((again.code(), reason(&again)), (Code::FailedPrecondition, want.into()), "{ending}");
        let again = h.capture_hold(&h.service(), capture(&hold.hold_id, Some("1.00"))).await.unwrap_err();
        assert_eq!(reason(&again), want, "{ending}");
        assert_eq!(h.held(&from).await, (ledger_after.into(), held_after.into()), "{ending}");
        assert_eq!(h.releases_of(&hold.hold_id).await, 1, "{ending}");
    }
    h.assert_reconcile_clean().await;
}

#[tokio::test]
async fn a_hold_reserves_money_that_nothing_else_may_spend() {
    let h = start().await;
    let (_, alice) = h.customer();
    let (_, bob) = h.customer();
    let from = h.open(&alice, "USD").await;
    let to = h.open(&bob, "USD").await;
    h.fund(&from, "50.00").await;
    let hold = h.place_hold(&alice, place(&from, &to, "30.00", 600)).await.unwrap().hold.unwrap();
    let err = h.transfer(&alice, &from, &to, "20.01").await.unwrap_err();
    assert_eq!(reason(&err), "INSUFFICIENT_FUNDS");
    let err = h.withdraw(&h.teller(), &from, "20.01").await.unwrap_err();
    assert_eq!(reason(&err), "INSUFFICIENT_FUNDS");
    let err = h.place_hold(&alice, place(&from, &to, "20.01", 600)).await.unwrap_err();
    assert_eq!(reason(&err), "INSUFFICIENT_FUNDS");
    h.transfer(&alice, &from, &to, "20.00").await.unwrap();
    // More than held is refused; the hold stays open and captures what it holds.
    let err = h.capture_hold(&alice, capture(&hold.hold_id, Some("30.01"))).await.unwrap_err();
    assert_eq!(reason(&err), "CAPTURE_EXCEEDS_HOLD");
    h.capture_hold(&alice, capture(&hold.hold_id, None)).await.unwrap();
    assert_eq!(h.held(&from).await, ("0.00".into(), "0.00".into()));
    assert_eq!(h.balance(&to).await, "50.00");
    h.assert_reconcile_clean().await;
}

#[tokio::test]
async fn hostile_hold_requests_are_clear_errors_that_write_nothing() {
    let h = start().await;
    let (_, alice) = h.customer();
    let (_, mallory) = h.customer();
    let from = h.open(&alice, "USD").await;
    let to = h.open(&mallory, "USD").await;
    h.fund(&from, "10.00").await;
    let hold = h.place_hold(&alice, place(&from, &to, "5.00", 600)).await.unwrap().hold.unwrap();
    let before = (h.count("events").await, h.count("holds").await, h.count("idempotency").await);

    let mut both = place(&from, &to, "1.00", 60);
    both.expires_at = Some(prost_types::Timestamp { seconds: chrono::Utc::now().timestamp() + 60, nanos: 0 });
    let mut past = place(&from, &to, "1.00", 0);
    past.expires_at = Some(prost_types::Timestamp { seconds: chrono::Utc::now().timestamp() - 1, nanos: 0 });
    let mut far = place(&from, &to, "1.00", 0);
    far.expires_at = Some(prost_types::Timestamp { seconds: chrono::Utc::now().timestamp() + 31 * 86400, nanos: 0 });
    for (req, field) in [
        (place(&from, &to, "1.00", 0), "expires_at"),
        (place(&from, &to, "1.00", -5), "ttl_seconds"),
        (place(&from, &to, "1.00", 30 * 86400 + 1), "ttl_seconds"),
        (both, "ttl_seconds"),
        (past, "expires_at"),
        (far, "expires_at"),
        (place(&from, &from, "1.00", 60), "to_account_id"),
        (place(&from, &to, "-1.00", 60), "money.amount"),
        (place("nope", &to, "1.00", 60), "from_account_id"),
    ] {
        let err = h.place_hold(&alice, req).await.unwrap_err();
        assert_eq!((err.code(), violation_fields(&err)), (Code::InvalidArgument, vec![field.to_string()]));
    }
    let err = h.capture_hold(&alice, capture("x", None)).await.unwrap_err();
    assert_eq!(violation_fields(&err), vec!["hold_id"]);
    let err = h.capture_hold(&alice, capture(&hold.hold_id, Some("0"))).await.unwrap_err();
    assert_eq!(violation_fields(&err), vec!["amount.amount"]);

    // Someone else's account or hold: NOT_FOUND, like one that does not exist.
    let err = h.place_hold(&mallory, place(&from, &to, "1.00", 60)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let stranger = h.void_hold(&mallory, void(&hold.hold_id)).await.unwrap_err();
    let unknown = h.void_hold(&mallory, void(&Uuid::now_v7().to_string())).await.unwrap_err();
    assert_eq!((stranger.code(), unknown.code()), (Code::NotFound, Code::NotFound));
    assert_eq!(stranger.message(), unknown.message());
    let err = h.capture_hold(&mallory, capture(&hold.hold_id, None)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let after = (h.count("events").await, h.count("holds").await, h.count("idempotency").await);
    assert_eq!(before, after, "a refused hold request wrote rows");
    assert_eq!(h.held(&from).await, ("10.00".into(), "5.00".into()));
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE reason = 'NOT_OWNER'").fetch_one(&h.db).await.unwrap();
    assert_eq!(audited, 3, "attempts on another's account or hold are audited");
}

#[tokio::test]
async fn fifty_concurrent_captures_and_voids_of_one_hold_exactly_one_wins() {
    let h = start().await;
    let (_, alice) = h.customer();
    let (_, bob) = h.customer();
    let from = h.open(&alice, "USD").await;
    let to = h.open(&bob, "USD").await;
    h.fund(&from, "100.00").await;
    let hold = h.place_hold(&alice, place(&from, &to, "60.00", 600)).await.unwrap().hold.unwrap();
    let service = h.service();

    let results = join_all((0..50).map(|i| {
        let (mut client, hold, token) =
            (h.client.clone(), hold.hold_id.clone(), if i % 3 == 0 { service.clone() } else { alice.clone() });
        tokio::spawn(async move {
            if i % 2 == 0 {
                client.capture_hold(authed(capture(&hold, None), &token)).await.map(|_| "captured")
            } else {
                client.void_hold(authed(void(&hold), &token)).await.map(|_| "voided")
            }
        })
    }))
    .await;
    let results: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    let winners: Vec<&str> = results.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    let want = if winners[0] == "captured" { "HOLD_CAPTURED" } else { "HOLD_VOIDED" };
    for err in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!((err.code(), reason(err)), (Code::FailedPrecondition, want.to_string()));
    }
    assert_eq!(h.releases_of(&hold.hold_id).await, 1);
    let (ledger, dest) = if winners[0] == "captured" { ("40.00", "60.00") } else { ("100.00", "0.00") };
    assert_eq!(h.held(&from).await, (ledger.into(), "0.00".into()));
    assert_eq!(h.balance(&to).await, dest);
    h.assert_reconcile_clean().await;
}

#[tokio::test]
async fn holds_expire_exactly_once_across_a_restart_and_with_two_instances() {
    let mut h = start().await;
    let (_, alice) = h.customer();
    let (_, bob) = h.customer();
    let from = h.open(&alice, "USD").await;
    let to = h.open(&bob, "USD").await;
    h.fund(&from, "100.00").await;
    let mut holds = Vec::new();
    for _ in 0..10 {
        holds.push(h.place_hold(&alice, place(&from, &to, "5.00", 2)).await.unwrap().hold.unwrap().hold_id);
    }
    // The only instance stops before any deadline and stays down past them all.
    h.stop().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for hold in &holds {
        assert_eq!(h.hold_state(hold).await, "OPEN", "nothing expires while no instance runs");
    }
    // Two instances come back at once over the same database.
    let mut config = h.config.clone();
    config.grpc_addr = "127.0.0.1:0".parse().unwrap();
    config.http_addr = "127.0.0.1:0".parse().unwrap();
    let first = command_service::start(config.clone(), bank_platform::CancellationToken::new()).await.unwrap();
    let second = command_service::start(config, bank_platform::CancellationToken::new()).await.unwrap();
    for hold in &holds {
        wait_for_state(&h, hold, "EXPIRED", Duration::from_secs(10)).await;
    }
    // Time for a late duplicate to show, had there been one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for hold in &holds {
        assert_eq!(h.releases_of(hold).await, 1, "hold {hold} released more than once");
    }
    assert_eq!(h.held(&from).await, ("100.00".into(), "0.00".into()));
    h.assert_reconcile_clean().await;
    first.stop().await.unwrap();
    second.stop().await.unwrap();
}

#[tokio::test]
async fn reversals_restore_balances_once_and_refuse_clearly_otherwise() {
    let h = start().await;
    let (_, alice) = h.customer();
    let (_, bob) = h.customer();
    let teller = h.teller();
    let a = h.open(&alice, "USD").await;
    let b = h.open(&bob, "USD").await;
    h.fund(&a, "100.00").await;
    let original = h.transfer(&alice, &a, &b, "30.00").await.unwrap().transaction_id;

    // Customers do not reverse.
    let err = h.reverse(&alice, &original).await.unwrap_err();
    common::assert_denied_by(&err, Forbidden::ReverseNotStaff);

    // A clean reversal restores both balances, as a new transaction.
    let reversal = h.reverse(&teller, &original).await.unwrap();
    assert_ne!(reversal.transaction_id, original);
    assert_eq!((h.balance(&a).await, h.balance(&b).await), ("100.00".into(), "0.00".into()));
    let (reverses, reason_text): (uuid::Uuid, String) = sqlx::query_as(
        "SELECT original_transaction_id, reason FROM reversals WHERE reversal_transaction_id = $1::uuid",
    )
    .bind(&reversal.transaction_id)
    .fetch_one(&h.db)
    .await
    .unwrap();
    assert_eq!((reverses.to_string(), reason_text.as_str()), (original.clone(), "posted in error"));
    // Nothing of the original disappears: its events are still there.
    let originals: i64 = sqlx::query_scalar("SELECT count(*) FROM postings WHERE transaction_id = $1::uuid")
        .bind(&original)
        .fetch_one(&h.db)
        .await
        .unwrap();
    assert_eq!(originals, 2);

    // A second reversal, and a reversal of the reversal: refused, nothing moves.
    let err = h.reverse(&teller, &original).await.unwrap_err();
    assert_eq!((err.code(), reason(&err)), (Code::FailedPrecondition, "ALREADY_REVERSED".into()));
    let err = h.reverse(&teller, &reversal.transaction_id).await.unwrap_err();
    assert_eq!((err.code(), reason(&err)), (Code::FailedPrecondition, "REVERSAL_NOT_REVERSIBLE".into()));
    let err = h.reverse(&teller, &Uuid::now_v7().to_string()).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    // A reversal that would overdraw: bob spent what he received.
    let spent = h.transfer(&alice, &a, &b, "40.00").await.unwrap().transaction_id;
    h.transfer(&bob, &b, &a, "15.00").await.unwrap();
    let err = h.reverse(&teller, &spent).await.unwrap_err();
    assert_eq!((err.code(), reason(&err)), (Code::FailedPrecondition, "REVERSAL_WOULD_OVERDRAW".into()));
    assert!(err.message().contains(&b), "{}", err.message());
    assert_eq!((h.balance(&a).await, h.balance(&b).await), ("75.00".into(), "25.00".into()));
    let reversals = h.count("reversals").await;
    assert_eq!(reversals, 1);

    // Ten concurrent reversals of one transaction: one wins.
    let fresh = h.transfer(&alice, &a, &b, "5.00").await.unwrap().transaction_id;
    let results = join_all((0..10).map(|_| {
        let (mut client, tx, token) = (h.client.clone(), fresh.clone(), teller.clone());
        tokio::spawn(async move {
            let req = pb::ReverseTransactionRequest {
                transaction_id: tx,
                reason: "duplicate".into(),
                idempotency_key: key(),
            };
            client.reverse_transaction(authed(req, &token)).await
        })
    }))
    .await;
    assert_eq!(results.iter().filter(|r| r.as_ref().unwrap().is_ok()).count(), 1);
    assert_eq!((h.balance(&a).await, h.balance(&b).await), ("75.00".into(), "25.00".into()));
    h.assert_reconcile_clean().await;
}

#[tokio::test]
async fn forty_concurrent_debits_against_a_velocity_limit_never_exceed_it() {
    let h = start().await;
    let (_, alice) = h.customer();
    let (_, bob) = h.customer();
    let a = h.open(&alice, "USD").await;
    let b = h.open(&bob, "USD").await;
    h.fund(&a, "1000.00").await;
    let set = pb::SetAccountLimitsRequest {
        account_id: a.clone(),
        max_single_debit: usd("50.00"),
        daily_debit_limit: usd("100.00"),
        idempotency_key: key(),
    };
    let err = h.client.clone().set_account_limits(authed(set.clone(), &alice)).await.unwrap_err();
    common::assert_denied_by(&err, Forbidden::LimitsNotStaff);
    h.client.clone().set_account_limits(authed(set, &h.teller())).await.unwrap();

    let err = h.transfer(&alice, &a, &b, "50.01").await.unwrap_err();
    assert_eq!((err.code(), reason(&err)), (Code::FailedPrecondition, "LIMIT_EXCEEDED".into()));

    let results = join_all((0..40).map(|_| {
        let (mut client, a, b, alice) = (h.client.clone(), a.clone(), b.clone(), alice.clone());
        tokio::spawn(async move {
            let req = pb::TransferRequest {
                from_account_id: a,
                to_account_id: b,
                money: usd("7.00"),
                idempotency_key: key(),
                description: String::new(),
            };
            client.transfer(authed(req.clone(), &alice)).await.map_err(|e| (e, req))
        })
    }))
    .await;
    let results: Vec<_> = results.into_iter().map(Result::unwrap).collect();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 14, "14 × 7.00 = 98.00 fits in 100.00; a 15th would not");
    assert_eq!((h.balance(&a).await, h.balance(&b).await), ("902.00".into(), "98.00".into()));
    let (refused, req) = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert_eq!(reason(refused), "LIMIT_EXCEEDED");
    // Stored under the key: the same request answers the same refusal.
    let again = h.client.clone().transfer(authed(req.clone(), &alice)).await.unwrap_err();
    assert_eq!(reason(&again), "LIMIT_EXCEEDED");
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE reason = 'LIMIT_EXCEEDED'")
        .fetch_one(&h.db)
        .await
        .unwrap();
    assert_eq!(audited, 27, "the single-debit refusal and the 26 over the day");
    // Holds count against the limits when placed, and the capture when it posts.
    let err = h.place_hold(&alice, place(&a, &b, "2.01", 600)).await.unwrap_err();
    assert_eq!(reason(&err), "LIMIT_EXCEEDED");
    h.assert_reconcile_clean().await;
}
