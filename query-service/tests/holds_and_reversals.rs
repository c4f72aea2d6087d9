//! Holds and reversals as readers see them: command-service → JetStream →
//! projector → read models → query-service, all real.

mod common;

use std::time::Duration;

use bank_proto::v1 as pb;
use bank_testkit::authed;
use common::{Bank, at, usd};
use futures::StreamExt;
use uuid::Uuid;

fn amount(m: Option<pb::Money>) -> String {
    m.map(|m| m.amount).unwrap_or_default()
}

#[tokio::test]
async fn balances_and_the_live_stream_show_ledger_and_available_balance_with_open_holds() {
    let bank = Bank::start().await;
    let alice = bank.customer();
    let bob = bank.customer();
    let a = bank.open(&alice).await.account.unwrap().account_id;
    let b = bank.open(&bob).await.account.unwrap().account_id;
    let funded = bank.deposit(&a, "100.00").await;
    let req = pb::WatchBalanceRequest { account_id: a.clone(), min_consistency_token: funded.consistency_token };
    let mut stream = bank.queries.clone().watch_balance(authed(req, &alice)).await.unwrap().into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!((amount(first.balance), amount(first.available_balance)), ("100.00".into(), "100.00".into()));

    let place = pb::PlaceHoldRequest {
        from_account_id: a.clone(),
        to_account_id: b.clone(),
        money: usd("40.00"),
        expires_at: None,
        ttl_seconds: 600,
        idempotency_key: Uuid::new_v4().to_string(),
        description: "deposit for the flat".into(),
    };
    let placed = bank.commands.clone().place_hold(authed(place, &alice)).await.unwrap().into_inner();
    let hold = placed.hold.unwrap();
    let read = bank.balance(&alice, &a, &placed.consistency_token).await.unwrap();
    assert_eq!((amount(read.balance), amount(read.available_balance)), ("100.00".into(), "60.00".into()));
    assert_eq!(read.open_holds.len(), 1);
    let open = &read.open_holds[0];
    assert_eq!((open.hold_id.as_str(), open.to_account_id.as_str()), (hold.hold_id.as_str(), b.as_str()));
    assert_eq!((amount(open.amount.clone()), open.state), ("40.00".into(), pb::HoldState::Open as i32));
    assert_eq!(open.expires_at, hold.expires_at);
    let next = tokio::time::timeout(Duration::from_secs(20), stream.next()).await.unwrap().unwrap().unwrap();
    assert_eq!((amount(next.balance), amount(next.available_balance)), ("100.00".into(), "60.00".into()));

    let capture = pb::CaptureHoldRequest {
        hold_id: hold.hold_id.clone(),
        amount: usd("25.00"),
        idempotency_key: Uuid::new_v4().to_string(),
    };
    let captured = bank.commands.clone().capture_hold(authed(capture, &bob)).await;
    assert_eq!(captured.unwrap_err().code(), tonic::Code::NotFound, "the destination's owner is no party to it");
    let capture = pb::CaptureHoldRequest {
        hold_id: hold.hold_id.clone(),
        amount: usd("25.00"),
        idempotency_key: Uuid::new_v4().to_string(),
    };
    let captured = bank.commands.clone().capture_hold(authed(capture, &alice)).await.unwrap().into_inner();
    let read = bank.balance(&alice, &a, &captured.consistency_token).await.unwrap();
    assert_eq!((amount(read.balance), amount(read.available_balance)), ("75.00".into(), "75.00".into()));
    assert!(read.open_holds.is_empty(), "a captured hold is not shown as pending");
    // Alice's token names her account only; bob waits for his own version 2.
    let bobs = bank_domain::consistency::ConsistencyToken::new([(Uuid::parse_str(&b).unwrap(), 2)]).encode();
    let to = bank.balance(&bob, &b, &bobs).await.unwrap();
    assert_eq!(amount(to.balance), "25.00");
    // The stream saw the release, then the debit, each with both balances.
    let mut seen = Vec::new();
    while seen.last().is_none_or(|(v, _, _): &(i64, String, String)| *v < read.version) {
        let u = tokio::time::timeout(Duration::from_secs(20), stream.next()).await.unwrap().unwrap().unwrap();
        seen.push((u.version, amount(u.balance), amount(u.available_balance)));
    }
    assert_eq!(seen, vec![(4, "100.00".into(), "100.00".into()), (5, "75.00".into(), "75.00".into())]);
}

#[tokio::test]
async fn a_reversal_and_its_original_both_stay_in_history_and_statements_linked_both_ways() {
    let bank = Bank::start().await;
    let alice = bank.customer();
    let bob = bank.customer();
    let a = bank.open(&alice).await.account.unwrap().account_id;
    let b = bank.open(&bob).await.account.unwrap().account_id;
    let funded = bank.deposit(&a, "100.00").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let original = bank.transfer(&alice, &a, &b, "30.00").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let req = pb::ReverseTransactionRequest {
        transaction_id: original.transaction_id.clone(),
        reason: "sent to the wrong account".into(),
        idempotency_key: Uuid::new_v4().to_string(),
    };
    let teller = bank.teller();
    let reversal = bank.commands.clone().reverse_transaction(authed(req, &teller)).await.unwrap().into_inner();
    // The token names both customers' accounts: the teller may wait on it, they may not.
    let refused = bank.balance(&alice, &a, &reversal.consistency_token).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(amount(bank.balance(&teller, &a, &reversal.consistency_token).await.unwrap().balance), "100.00");
    assert_eq!(amount(bank.balance(&teller, &b, &reversal.consistency_token).await.unwrap().balance), "0.00");

    // History: the original stays, marked reversed; the reversal names it.
    for (who, account) in [(&alice, &a), (&bob, &b)] {
        let page = bank.page(who, account, 10, "").await.unwrap().transactions;
        let rev = page.iter().find(|e| e.transaction_id == reversal.transaction_id).expect("the reversal is listed");
        let orig = page.iter().find(|e| e.transaction_id == original.transaction_id).expect("the original stays");
        assert_eq!(rev.reverses_transaction_id, original.transaction_id);
        assert_eq!(rev.description, "sent to the wrong account");
        assert_eq!(orig.reversed_by_transaction_id, reversal.transaction_id);
        assert!(orig.reverses_transaction_id.is_empty() && rev.reversed_by_transaction_id.is_empty());
    }

    // Statements: both entries, and they add up.
    let (t0, t1, t2) = (funded.occurred_at.unwrap(), original.occurred_at.unwrap(), reversal.occurred_at.unwrap());
    let req = pb::GetStatementRequest {
        account_id: a.clone(),
        from_time: Some(t0),
        to_time: Some(t2),
        min_consistency_token: String::new(), // the teller's read above waited for it
    };
    let s = bank.queries.clone().get_statement(authed(req, &alice)).await.unwrap().into_inner();
    assert_eq!((amount(s.opening_balance), amount(s.closing_balance)), ("100.00".into(), "100.00".into()));
    let ids: Vec<&str> = s.entries.iter().map(|e| e.transaction_id.as_str()).collect();
    assert_eq!(ids, vec![original.transaction_id.as_str(), reversal.transaction_id.as_str()]);
    assert_eq!((amount(s.total_debits), amount(s.total_credits)), ("30.00".into(), "30.00".into()));

    // as_of across the reversal.
    let balance_at = |as_of| {
        let (mut q, alice, a) = (bank.queries.clone(), alice.clone(), a.clone());
        async move {
            let req = pb::GetBalanceRequest { account_id: a, min_consistency_token: String::new(), as_of };
            amount(q.get_balance(authed(req, &alice)).await.unwrap().into_inner().balance)
        }
    };
    assert_eq!(balance_at(at(&t1, -1)).await, "100.00", "before the original");
    assert_eq!(balance_at(at(&t1, 0)).await, "70.00", "at the original");
    assert_eq!(balance_at(at(&t2, -1)).await, "70.00", "just before the reversal");
    assert_eq!(balance_at(at(&t2, 0)).await, "100.00", "at the reversal");
}
