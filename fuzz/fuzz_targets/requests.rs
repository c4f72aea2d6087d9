//! Bytes as a gRPC request body → the command-service's input checks, and
//! strings → the domain's parsers. Never a panic; an accepted amount is
//! positive, within the limit and formats back to a parseable amount.
#![no_main]

use bank_domain::{Currency, consistency::ConsistencyToken, format_amount, parse_amount};
use bank_proto::v1 as pb;
use command_service::validate::{IdempotencyKey, description, parse_id};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use rust_decimal::Decimal;

fn money(m: Option<&pb::Money>) {
    let max = Decimal::from(1_000_000_000u64);
    if let Ok(parsed) = command_service::validate::money("money", m, max) {
        assert!(parsed.amount > Decimal::ZERO && parsed.amount <= max, "accepted {}", parsed.amount);
        let amount = parsed.amount_string();
        let again = parse_amount("amount", &amount, parsed.currency, max).expect("formatted amounts parse");
        assert_eq!(format_amount(again, parsed.currency), amount);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else { return };
    match which % 4 {
        0 => {
            if let Ok(r) = pb::TransferRequest::decode(body) {
                let _ = (parse_id("from_account_id", &r.from_account_id), parse_id("to", &r.to_account_id));
                let _ = (IdempotencyKey::parse(&r.idempotency_key), description(&r.description));
                money(r.money.as_ref());
            }
        }
        1 => {
            if let Ok(r) = pb::DepositRequest::decode(body) {
                let _ = (parse_id("account_id", &r.account_id), description(&r.description));
                money(r.money.as_ref());
            }
        }
        2 => {
            if let Ok(r) = pb::GetBalanceRequest::decode(body) {
                let _ = ConsistencyToken::parse("min_consistency_token", &r.min_consistency_token);
            }
        }
        _ => {
            let text = String::from_utf8_lossy(body);
            for code in ["USD", "JPY", "KWD"] {
                let currency = Currency::from_code(code).expect("supported");
                let _ = parse_amount("amount", &text, currency, Decimal::MAX);
            }
            let _ = Currency::from_code(&text);
        }
    }
});
