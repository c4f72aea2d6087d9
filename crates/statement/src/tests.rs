use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::TimeZone;
use ed25519_dalek::{SigningKey, pkcs8::EncodePrivateKey};
use jsonwebtoken::{EncodingKey, Header};

use super::*;

struct Bank {
    kid: String,
    key: SigningKey,
}

impl Bank {
    fn new(kid: &str) -> Self {
        Self { kid: kid.into(), key: SigningKey::generate(&mut rand::rngs::OsRng) }
    }

    fn sign(&self, s: &Statement) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let der = self.key.to_pkcs8_der().unwrap();
        jsonwebtoken::encode(&header, &Claims::new(s.clone()), &EncodingKey::from_ed_der(der.as_bytes())).unwrap()
    }

    fn jwks(&self) -> JwkSet {
        serde_json::from_value(serde_json::json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(self.key.verifying_key().to_bytes()),
        }]}))
        .unwrap()
    }
}

fn at(day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, day, 12, 0, 0).unwrap()
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn entry(version: i64, direction: Direction, amount: &str, after: &str, day: u32) -> Entry {
    Entry {
        version,
        transaction_id: Uuid::now_v7(),
        kind: if direction == Direction::Credit { "DEPOSIT" } else { "WITHDRAWAL" }.into(),
        direction,
        amount: dec(amount),
        balance_after: dec(after),
        counterparty_account_id: None,
        description: "groceries".into(),
        occurred_at: at(day),
    }
}

/// November: 100.00 opening, +50.25 on the 3rd, −20.00 on the 4th.
fn november() -> Statement {
    Statement {
        account_id: Uuid::now_v7(),
        currency: "USD".into(),
        from_time: at(1),
        to_time: at(30),
        opening_balance: dec("100.00"),
        closing_balance: dec("130.25"),
        total_credits: dec("50.25"),
        total_debits: dec("20.00"),
        opening_chain_head: ChainHead::new(4, &[4; 32]),
        closing_chain_head: ChainHead::new(7, &[7; 32]),
        entries: vec![
            entry(5, Direction::Credit, "50.25", "150.25", 3),
            entry(7, Direction::Debit, "20.00", "130.25", 4),
        ],
        issued_at: at(30),
    }
}

#[test]
fn an_untouched_statement_verifies() {
    let bank = Bank::new("statements-1");
    let s = november();
    assert_eq!(verify(&bank.sign(&s), &bank.jwks()), Ok(s));
}

#[test]
fn one_changed_digit_anywhere_in_the_signed_statement_fails() {
    let bank = Bank::new("statements-1");
    let jws = bank.sign(&november());
    let payload_at = jws.find('.').unwrap() + 1;
    let payload_len = jws[payload_at..].find('.').unwrap();
    let payload =
        String::from_utf8(URL_SAFE_NO_PAD.decode(&jws[payload_at..payload_at + payload_len]).unwrap()).unwrap();
    // Every digit of the document, one at a time, changed to another digit.
    let mut tried = 0;
    for (i, c) in payload.char_indices().filter(|(_, c)| c.is_ascii_digit()) {
        let other = if c == '9' { '0' } else { char::from(c as u8 + 1) };
        let forged = format!("{}{other}{}", &payload[..i], &payload[i + 1..]);
        let forged_jws =
            format!("{}{}{}", &jws[..payload_at], URL_SAFE_NO_PAD.encode(forged), &jws[payload_at + payload_len..]);
        assert!(
            matches!(verify(&forged_jws, &bank.jwks()), Err(Refusal::BadSignature(_) | Refusal::Malformed(_))),
            "changing digit {i} of {payload} went unnoticed"
        );
        tried += 1;
    }
    assert!(tried > 100, "the document has its figures in it ({tried} digits)");
}

#[test]
fn another_key_or_a_key_not_in_the_jwks_fails() {
    let (bank, impostor) = (Bank::new("statements-1"), Bank::new("statements-1"));
    assert!(matches!(verify(&impostor.sign(&november()), &bank.jwks()), Err(Refusal::BadSignature(_))));
    let stranger = Bank::new("elsewhere");
    assert!(matches!(verify(&stranger.sign(&november()), &bank.jwks()), Err(Refusal::UnknownKey(_))));
}

#[test]
fn a_signed_statement_that_does_not_add_up_fails() {
    // Signed, but wrong: the bank must not be able to sign arithmetic away.
    let bank = Bank::new("statements-1");
    let mut s = november();
    s.closing_balance = dec("130.26");
    assert!(matches!(verify(&bank.sign(&s), &bank.jwks()), Err(Refusal::DoesNotAddUp(_))));
    let mut s = november();
    s.entries[1].balance_after = dec("130.24");
    assert!(matches!(adds_up(&s), Err(Refusal::DoesNotAddUp(_))));
    let mut s = november();
    s.total_debits = dec("0.00");
    assert!(matches!(adds_up(&s), Err(Refusal::DoesNotAddUp(_))));
    let mut s = november();
    s.entries[0].version = 3;
    assert!(matches!(adds_up(&s), Err(Refusal::DoesNotAddUp(_))), "an entry before the opening chain head");
    let mut s = november();
    s.entries[1].occurred_at = at(30) + chrono::Duration::seconds(1);
    assert!(matches!(adds_up(&s), Err(Refusal::DoesNotAddUp(_))), "an entry after the period");
}

#[test]
fn consecutive_statements_chain_and_a_gap_does_not() {
    let first = november();
    let mut next = november();
    next.account_id = first.account_id;
    next.from_time = first.to_time;
    next.to_time = first.to_time + chrono::Duration::days(31);
    next.opening_balance = first.closing_balance;
    next.closing_balance = first.closing_balance;
    next.total_credits = dec("0");
    next.total_debits = dec("0");
    next.entries.clear();
    next.opening_chain_head = first.closing_chain_head.clone();
    next.closing_chain_head = first.closing_chain_head.clone();
    assert_eq!(adds_up(&next), Ok(()));
    assert_eq!(follows(&first, &next), Ok(()));
    let mut skipped = next.clone();
    skipped.opening_chain_head = ChainHead::new(8, &[8; 32]);
    assert!(matches!(follows(&first, &skipped), Err(Refusal::DoesNotChain(_))));
    let mut later = next;
    later.from_time += chrono::Duration::days(1);
    assert!(matches!(follows(&first, &later), Err(Refusal::DoesNotChain(_))));
}

#[test]
fn an_answers_readable_figures_must_be_the_signed_ones() {
    let bank = Bank::new("statements-1");
    let s = november();
    let money = |a: &str| serde_json::json!({"currencyCode": "USD", "amount": a});
    let answer = |closing: &str| {
        serde_json::json!({
            "accountId": s.account_id.to_string(),
            "openingBalance": money("100.00"),
            "closingBalance": money(closing),
            "totalCredits": money("50.25"),
            "totalDebits": money("20.00"),
            "entries": [
                {"version": "5", "amount": money("50.25"), "balanceAfter": money("150.25")},
                {"version": "7", "amount": money("20.00"), "balanceAfter": money("130.25")},
            ],
            "signedStatement": bank.sign(&s),
        })
        .to_string()
    };
    assert_eq!(check_document(&answer("130.25"), &bank.jwks()), Ok(s.clone()));
    assert!(matches!(check_document(&answer("930.25"), &bank.jwks()), Err(Refusal::Altered(_))));
    assert_eq!(check_document(&bank.sign(&s), &bank.jwks()), Ok(s), "a bare JWS");
}
