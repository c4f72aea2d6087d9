//! A statement that proves itself: the bank signs the whole document
//! (balances, every entry, the account's event-chain head at both ends) as a
//! compact JWS (EdDSA) under a key it publishes in a JWKS. Anyone holding the
//! JWS and the JWKS checks it offline ([`verify`]): the signature, then that
//! the document adds up; and that consecutive statements chain
//! ([`follows`]). Deliberately free of the services' code: this is what a
//! customer's auditor would run.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
/// The keys a statement is checked against (a JWKS document).
pub use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The audience of a signed statement: it is never an access token, and an
/// access token is never a statement.
pub const AUDIENCE: &str = "bankmesh-statement";

/// The hash an account's chain starts from (before its first event).
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// The account's event chain at an instant: its last event at or before it
/// (version 0 and the genesis hash before the first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    pub version: i64,
    /// SHA-256 chain hash of that event, lowercase hex.
    pub hash: String,
}

impl ChainHead {
    pub fn new(version: i64, hash: &[u8]) -> Self {
        Self { version, hash: hex(hash) }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Credit,
    Debit,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub version: i64,
    pub transaction_id: Uuid,
    pub kind: String,
    pub direction: Direction,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub balance_after: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterparty_account_id: Option<Uuid>,
    pub description: String,
    pub occurred_at: DateTime<Utc>,
}

/// What the bank signs. Amounts are decimal strings at the currency's scale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    pub account_id: Uuid,
    pub currency: String,
    /// Exclusive: the opening balance is the balance at this instant.
    pub from_time: DateTime<Utc>,
    /// Inclusive: the closing balance is the balance at this instant.
    pub to_time: DateTime<Utc>,
    #[serde(with = "rust_decimal::serde::str")]
    pub opening_balance: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub closing_balance: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total_credits: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub total_debits: Decimal,
    pub opening_chain_head: ChainHead,
    pub closing_chain_head: ChainHead,
    /// Oldest first.
    pub entries: Vec<Entry>,
    pub issued_at: DateTime<Utc>,
}

/// The JWS payload: the statement under the statement audience.
#[derive(Serialize, Deserialize)]
pub struct Claims {
    pub aud: String,
    pub statement: Statement,
}

impl Claims {
    pub fn new(statement: Statement) -> Self {
        Self { aud: AUDIENCE.to_owned(), statement }
    }
}

/// Why a statement is not to be believed. Each names what failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not a signed statement: {0}")]
    Malformed(String),
    #[error("signed with a key the JWKS does not hold: {0:?}")]
    UnknownKey(String),
    #[error("the signature does not verify: {0}")]
    BadSignature(String),
    #[error("the statement does not add up: {0}")]
    DoesNotAddUp(String),
    #[error("the answer is not what the bank signed: {0}")]
    Altered(String),
    #[error("the statements do not chain: {0}")]
    DoesNotChain(String),
}

/// The statement inside `jws`, if a key of `jwks` signed it and it adds up.
pub fn verify(jws: &str, jwks: &JwkSet) -> Result<Statement, Refusal> {
    let header = jsonwebtoken::decode_header(jws.trim()).map_err(|e| Refusal::Malformed(e.to_string()))?;
    if header.alg != Algorithm::EdDSA {
        return Err(Refusal::Malformed(format!("algorithm {:?} is not accepted (EdDSA only)", header.alg)));
    }
    let kid = header.kid.ok_or_else(|| Refusal::Malformed("no key id".into()))?;
    let jwk = jwks.find(&kid).ok_or_else(|| Refusal::UnknownKey(kid.clone()))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| Refusal::UnknownKey(format!("{kid}: {e}")))?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&[AUDIENCE]);
    validation.validate_exp = false;
    validation.set_required_spec_claims(&["aud"]);
    let statement = jsonwebtoken::decode::<Claims>(jws.trim(), &key, &validation)
        .map_err(|e| Refusal::BadSignature(e.to_string()))?
        .claims
        .statement;
    adds_up(&statement)?;
    Ok(statement)
}

/// Opening plus each entry in turn gives its balance after, the last the
/// closing balance; the totals are the entries' sums; the entries lie
/// between the chain heads, in version order, inside the period.
pub fn adds_up(s: &Statement) -> Result<(), Refusal> {
    let wrong = |why: String| Err(Refusal::DoesNotAddUp(why));
    if s.from_time >= s.to_time {
        return wrong("the period ends before it starts".into());
    }
    if s.opening_chain_head.version > s.closing_chain_head.version {
        return wrong("the opening chain head is after the closing one".into());
    }
    let (mut balance, mut credits, mut debits) = (s.opening_balance, Decimal::ZERO, Decimal::ZERO);
    let mut last = s.opening_chain_head.version;
    let mut seen = HashSet::new();
    for e in &s.entries {
        if e.version <= last || e.version > s.closing_chain_head.version || !seen.insert(e.version) {
            return wrong(format!("entry v{} is out of order or outside the chain heads", e.version));
        }
        last = e.version;
        if e.occurred_at <= s.from_time || e.occurred_at > s.to_time {
            return wrong(format!("entry v{} is outside the period", e.version));
        }
        if e.amount <= Decimal::ZERO {
            return wrong(format!("entry v{} has amount {}", e.version, e.amount));
        }
        match e.direction {
            Direction::Credit => (balance, credits) = (balance + e.amount, credits + e.amount),
            Direction::Debit => (balance, debits) = (balance - e.amount, debits + e.amount),
        }
        if balance != e.balance_after {
            return wrong(format!(
                "entry v{} says {} after it, the entries before it give {balance}",
                e.version, e.balance_after
            ));
        }
    }
    if balance != s.closing_balance {
        return wrong(format!("closing balance {} but the entries give {balance}", s.closing_balance));
    }
    if credits != s.total_credits || debits != s.total_debits {
        return wrong(format!(
            "totals {} in, {} out but the entries give {credits} in, {debits} out",
            s.total_credits, s.total_debits
        ));
    }
    Ok(())
}

/// `next` continues `previous`: same account and currency, it starts where
/// the other ended, with its closing balance and chain head.
pub fn follows(previous: &Statement, next: &Statement) -> Result<(), Refusal> {
    let broken = |why: &str| Err(Refusal::DoesNotChain(why.to_owned()));
    if previous.account_id != next.account_id || previous.currency != next.currency {
        return broken("they are of different accounts");
    }
    if previous.to_time != next.from_time {
        return broken("the second does not start where the first ends");
    }
    if previous.closing_balance != next.opening_balance {
        return broken("the opening balance is not the previous closing balance");
    }
    if previous.closing_chain_head != next.opening_chain_head {
        return broken("the opening chain head is not the previous closing chain head");
    }
    Ok(())
}

/// Checks a statement document against `jwks`: a bare compact JWS, or a
/// `GetStatement` answer as JSON (REST's `signedStatement`, gRPC's
/// `signed_statement`), whose readable figures must then be the signed ones
/// (a changed digit anywhere is caught).
pub fn check_document(document: &str, jwks: &JwkSet) -> Result<Statement, Refusal> {
    let text = document.trim();
    if !text.starts_with('{') {
        return verify(text, jwks);
    }
    let answer: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Refusal::Malformed(format!("not JSON: {e}")))?;
    let jws = field(&answer, "signedStatement", "signed_statement")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Refusal::Malformed("the document has no signedStatement".into()))?;
    let statement = verify(jws, jwks)?;
    readable_is_signed(&answer, &statement)?;
    Ok(statement)
}

/// A key in its JSON (camelCase) or its proto (snake_case) name.
fn field<'a>(v: &'a serde_json::Value, camel: &str, snake: &str) -> Option<&'a serde_json::Value> {
    v.get(camel).or_else(|| v.get(snake))
}

/// The answer's own fields say what the signed statement says.
fn readable_is_signed(answer: &serde_json::Value, s: &Statement) -> Result<(), Refusal> {
    let text = |v: Option<&serde_json::Value>| match v {
        Some(serde_json::Value::String(t)) => t.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => String::new(),
    };
    let amount =
        |v: &serde_json::Value, camel: &str, snake: &str| text(field(v, camel, snake).and_then(|m| m.get("amount")));
    let mut shown = vec![
        ("accountId", text(field(answer, "accountId", "account_id")), s.account_id.to_string()),
        ("openingBalance", amount(answer, "openingBalance", "opening_balance"), s.opening_balance.to_string()),
        ("closingBalance", amount(answer, "closingBalance", "closing_balance"), s.closing_balance.to_string()),
        ("totalCredits", amount(answer, "totalCredits", "total_credits"), s.total_credits.to_string()),
        ("totalDebits", amount(answer, "totalDebits", "total_debits"), s.total_debits.to_string()),
    ];
    let entries = answer.get("entries").and_then(|e| e.as_array()).cloned().unwrap_or_default();
    if entries.len() != s.entries.len() {
        return Err(Refusal::Altered(format!(
            "it shows {} entries, the signed statement has {}",
            entries.len(),
            s.entries.len()
        )));
    }
    for (shown_entry, signed) in entries.iter().zip(&s.entries) {
        shown.push(("entries[].version", text(shown_entry.get("version")), signed.version.to_string()));
        shown.push(("entries[].amount", amount(shown_entry, "amount", "amount"), signed.amount.to_string()));
        shown.push((
            "entries[].balanceAfter",
            amount(shown_entry, "balanceAfter", "balance_after"),
            signed.balance_after.to_string(),
        ));
    }
    match shown.into_iter().find(|(_, shown, signed)| shown != signed) {
        Some((name, shown, signed)) => {
            Err(Refusal::Altered(format!("it shows {name} {shown:?}, the signed statement {signed:?}")))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
