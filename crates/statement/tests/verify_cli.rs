//! `bank-statement-verify` as an auditor runs it: files in, a verdict and an
//! exit code out.

use std::process::Command;

use bank_statement::{ChainHead, Claims, Statement};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{TimeZone, Utc};
use ed25519_dalek::{SigningKey, pkcs8::EncodePrivateKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rust_decimal::Decimal;

fn statement(from_day: u32, to_day: u32, opening: &str, head: i64) -> Statement {
    let at = |d| Utc.with_ymd_and_hms(2026, 10, d, 0, 0, 0).unwrap();
    Statement {
        account_id: uuid::Uuid::nil(),
        currency: "EUR".into(),
        from_time: at(from_day),
        to_time: at(to_day),
        opening_balance: opening.parse().unwrap(),
        closing_balance: opening.parse().unwrap(),
        total_credits: Decimal::ZERO,
        total_debits: Decimal::ZERO,
        opening_chain_head: ChainHead::new(head, &[head as u8; 32]),
        closing_chain_head: ChainHead::new(head, &[head as u8; 32]),
        entries: vec![],
        issued_at: at(to_day),
    }
}

struct Files(std::path::PathBuf);

impl Files {
    fn new(key: &SigningKey) -> Self {
        let dir = std::env::temp_dir().join(format!("stmt-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let jwks = serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": "k1",
            "x": URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes())}]});
        std::fs::write(dir.join("keys.json"), jwks.to_string()).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, key: &SigningKey, s: &Statement) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("k1".into());
        let der = key.to_pkcs8_der().unwrap();
        let jws =
            jsonwebtoken::encode(&header, &Claims::new(s.clone()), &EncodingKey::from_ed_der(der.as_bytes())).unwrap();
        let path = self.0.join(name);
        std::fs::write(&path, jws).unwrap();
        path.display().to_string()
    }

    fn verify(&self, args: &[&str]) -> (i32, String) {
        let keys = self.0.join("keys.json").display().to_string();
        let out = Command::new(env!("CARGO_BIN_EXE_bank-statement-verify"))
            .arg("--jwks")
            .arg(keys)
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap(), text)
    }
}

#[test]
fn it_verifies_an_untouched_statement_and_refuses_a_changed_digit() {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let files = Files::new(&key);
    let path = files.write("october.jws", &key, &statement(1, 31, "12.34", 7));
    let (code, out) = files.verify(&[&path]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("VERIFIED") && out.contains("closing 12.34"), "{out}");

    // The payload's "12.34" becomes "12.35", re-encoded: the signature no longer holds.
    let jws = std::fs::read_to_string(&path).unwrap();
    let parts: Vec<&str> = jws.split('.').collect();
    let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    let forged = payload.replace("12.34", "12.35");
    std::fs::write(&path, format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(forged), parts[2])).unwrap();
    let (code, out) = files.verify(&[&path]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("NOT VERIFIED") && out.contains("signature"), "{out}");
}

#[test]
fn it_checks_that_a_statement_follows_the_previous_one() {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let files = Files::new(&key);
    let october = files.write("october.jws", &key, &statement(1, 31, "5.00", 7));
    let mut next = statement(1, 2, "5.00", 7);
    next.from_time = Utc.with_ymd_and_hms(2026, 10, 31, 0, 0, 0).unwrap();
    next.to_time = Utc.with_ymd_and_hms(2026, 11, 30, 0, 0, 0).unwrap();
    let november = files.write("november.jws", &key, &next);
    let (code, out) = files.verify(&[&november, "--previous", &october]);
    assert_eq!(code, 0, "{out}");
    let mut gap = next.clone();
    gap.opening_chain_head = ChainHead::new(8, &[8; 32]);
    gap.closing_chain_head = gap.opening_chain_head.clone();
    let gap = files.write("gap.jws", &key, &gap);
    let (code, out) = files.verify(&[&gap, "--previous", &october]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("do not chain"), "{out}");
}

#[test]
fn bad_usage_is_told_apart_from_a_refusal() {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let files = Files::new(&key);
    let (code, out) = files.verify(&[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("usage"), "{out}");
}
