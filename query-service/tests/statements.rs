//! Statements the bank signs, checked the way a customer's auditor would:
//! offline, from the statement and the published keys alone.

mod common;

use std::time::Duration;

use bank_proto::v1 as pb;
use bank_statement::{JwkSet, Refusal};
use bank_testkit::{DbRole, authed};
use common::{Bank, ts};

async fn statement(
    bank: &Bank,
    token: &str,
    account: &str,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
    after: &str,
) -> pb::Statement {
    let req = pb::GetStatementRequest {
        account_id: account.into(),
        from_time: ts(from),
        to_time: ts(to),
        min_consistency_token: after.into(),
    };
    bank.queries.clone().get_statement(authed(req, token)).await.unwrap().into_inner()
}

/// The published keys as the JWKS document the REST answer is.
async fn published_keys(bank: &Bank, token: &str) -> JwkSet {
    let keys = bank
        .queries
        .clone()
        .get_statement_keys(authed(pb::GetStatementKeysRequest {}, token))
        .await
        .unwrap()
        .into_inner();
    let keys: Vec<_> = keys
        .keys
        .iter()
        .map(|k| serde_json::json!({"kty": k.kty, "crv": k.crv, "alg": k.alg, "use": k.r#use, "kid": k.kid, "x": k.x}))
        .collect();
    serde_json::from_value(serde_json::json!({ "keys": keys })).unwrap()
}

#[tokio::test]
async fn a_statement_verifies_offline_chains_to_the_next_and_one_changed_digit_fails() {
    let bank = Bank::start().await;
    let alice = bank.customer();
    let a = bank.open(&alice).await.account.unwrap().account_id;
    let b = bank.open(&alice).await.account.unwrap().account_id;
    bank.deposit(&a, "10.00").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let from = chrono::Utc::now();
    bank.deposit(&a, "50.00").await;
    let moved = bank.transfer(&alice, &a, &b, "15.50").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mid = chrono::Utc::now();
    let last = bank.deposit(&a, "0.25").await;
    let to = chrono::Utc::now() + chrono::Duration::seconds(1);

    let first = statement(&bank, &alice, &a, from, mid, &moved.consistency_token).await;
    let next = statement(&bank, &alice, &a, mid, to, &last.consistency_token).await;
    let keys = published_keys(&bank, &alice).await;

    // Each verifies from its signed form and the keys alone, and says what
    // the answer says.
    let signed_first = bank_statement::verify(&first.signed_statement, &keys).unwrap();
    let signed_next = bank_statement::verify(&next.signed_statement, &keys).unwrap();
    assert_eq!(signed_first.opening_balance.to_string(), "10.00");
    assert_eq!(signed_first.closing_balance.to_string(), "44.50");
    assert_eq!(
        (signed_first.total_credits.to_string(), signed_first.total_debits.to_string()),
        ("50.00".into(), "15.50".into())
    );
    assert_eq!(signed_first.entries.len(), 2);
    assert_eq!(signed_first.closing_balance.to_string(), first.closing_balance.unwrap().amount);
    assert_eq!(signed_next.closing_balance.to_string(), "44.75");

    // Heads: after the first deposit (v2) .. after the transfer (v4), then
    // .. after the last deposit (v5), the account's head in the read model.
    assert_eq!((signed_first.opening_chain_head.version, signed_first.closing_chain_head.version), (2, 4));
    assert_eq!(first.closing_chain_head.as_ref().unwrap().version, 4);
    assert_eq!(bank_statement::follows(&signed_first, &signed_next), Ok(()));
    let db = sqlx::PgPool::connect(&bank.read_db.url_as(DbRole::Query)).await.unwrap();
    let account_id: uuid::Uuid = a.parse().unwrap();
    let head = sqlx::query!(
        r#"SELECT version, last_hash AS "last_hash!" FROM account_view WHERE account_id = $1"#,
        account_id
    )
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(signed_next.closing_chain_head, bank_statement::ChainHead::new(head.version, &head.last_hash));
    assert_eq!(next.closing_chain_head.unwrap().hash, head.last_hash);

    // Out of order, they do not chain.
    assert!(matches!(bank_statement::follows(&signed_next, &signed_first), Err(Refusal::DoesNotChain(_))));

    // One digit of the signed document changed: refused.
    let jws = &first.signed_statement;
    let (head_part, rest) = jws.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let forged = text.replacen("44.50", "44.59", 1);
    assert_ne!(forged, text);
    let forged = format!("{head_part}.{}.{signature}", URL_SAFE_NO_PAD.encode(forged));
    assert!(matches!(bank_statement::verify(&forged, &keys), Err(Refusal::BadSignature(_))));

    // Someone else's keys do not verify it.
    let stranger = bank_platform::auth::jwks(&[bank_platform::auth::TokenSigner::generate()]);
    let their_keys: JwkSet = serde_json::from_value(stranger).unwrap();
    assert!(matches!(bank_statement::verify(jws, &their_keys), Err(Refusal::UnknownKey(_))));
}

#[tokio::test]
async fn the_statement_keys_are_for_signed_in_callers_only() {
    let bank = Bank::start().await;
    let err = bank.queries.clone().get_statement_keys(pb::GetStatementKeysRequest {}).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn after_a_key_rotation_statements_signed_before_it_still_verify_against_the_published_keys() {
    let bank = Bank::start().await;
    let alice = bank.customer();
    let a = bank.open(&alice).await.account.unwrap().account_id;
    let from = chrono::Utc::now();
    let moved = bank.deposit(&a, "10.00").await;
    let to = chrono::Utc::now() + chrono::Duration::seconds(1);
    let before = statement(&bank, &alice, &a, from, to, &moved.consistency_token).await;

    // The rotation: a new signing key; the old key's public half published beside it.
    let old = bank.query_config.statement_signer.clone();
    let mut rotated = bank.query_config.clone();
    rotated.statement_signer = bank_platform::auth::TokenSigner::generate();
    let old_public = bank_platform::signing::EventKeys::from_public_pems([("old", old.to_pems().1)]).unwrap();
    rotated.statement_previous_keys = Some(std::sync::Arc::new(old_public));
    let running = query_service::start(rotated.clone(), bank_platform::CancellationToken::new()).await.unwrap();
    let queries = bank_proto::v1::account_query_service_client::AccountQueryServiceClient::connect(format!(
        "http://{}",
        running.grpc_addr
    ))
    .await
    .unwrap();
    let after_bank = Bank { queries, ..bank };

    let keys = published_keys(&after_bank, &alice).await;
    let kids: Vec<String> = keys.keys.iter().filter_map(|k| k.common.key_id.clone()).collect();
    assert_eq!(kids, [rotated.statement_signer.kid().to_owned(), old.kid().to_owned()], "the current key first");
    assert_eq!(bank_statement::verify(&before.signed_statement, &keys).unwrap().closing_balance.to_string(), "10.00");
    let after = statement(&after_bank, &alice, &a, from, to, &moved.consistency_token).await;
    assert!(bank_statement::verify(&after.signed_statement, &keys).is_ok());
    // Without the old key published, the statement signed before would not verify.
    let current_only: JwkSet =
        serde_json::from_value(bank_platform::auth::jwks(std::slice::from_ref(&rotated.statement_signer))).unwrap();
    assert!(matches!(bank_statement::verify(&before.signed_statement, &current_only), Err(Refusal::UnknownKey(_))));
}
