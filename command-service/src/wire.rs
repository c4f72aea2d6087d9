//! Domain values as the bank.v1 wire types, shared by what is published
//! (`events`) and what is answered (`views`).

use bank_domain::{AccountKind, Currency, format_amount, hold::HoldState};
use bank_proto::v1 as pb;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

pub fn money(currency: Currency, amount: Decimal) -> Option<pb::Money> {
    Some(pb::Money { currency_code: currency.code().to_owned(), amount: format_amount(amount, currency) })
}

pub fn timestamp(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 })
}

pub fn account_type(kind: AccountKind) -> pb::AccountType {
    match kind {
        AccountKind::Checking => pb::AccountType::Checking,
        AccountKind::Savings => pb::AccountType::Savings,
        AccountKind::Settlement => pb::AccountType::Settlement,
        AccountKind::FeeIncome => pb::AccountType::FeeIncome,
    }
}

pub fn hold_state(state: HoldState) -> pb::HoldState {
    match state {
        HoldState::Open => pb::HoldState::Open,
        HoldState::Captured => pb::HoldState::Captured,
        HoldState::Voided => pb::HoldState::Voided,
        HoldState::Expired => pb::HoldState::Expired,
    }
}

pub fn limit_text(limit: Option<Decimal>) -> String {
    limit.map(|d| d.normalize().to_string()).unwrap_or_default()
}
