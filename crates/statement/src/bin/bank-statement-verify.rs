//! Checks a bank statement offline, from the document and the bank's
//! statement JWKS alone:
//!
//! ```text
//! bank-statement-verify --jwks statement-keys.json statement.json [--previous last-month.json]
//! ```
//!
//! The statement is a `GetStatement` answer as JSON (REST or grpcurl) or the
//! bare signed statement; the JWKS is `GetStatementKeys`' answer
//! (`GET /v1/statement-keys`). Exit 0 and a summary when it verifies (and
//! follows the previous one); exit 1 and the reason when it does not; 2 on
//! bad usage.

use std::process::ExitCode;

use jsonwebtoken::jwk::JwkSet;

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(Failure::Usage(why)) => {
            eprintln!("{why}\nusage: bank-statement-verify --jwks FILE STATEMENT [--previous STATEMENT]");
            ExitCode::from(2)
        }
        Err(Failure::Refused(why)) => {
            eprintln!("NOT VERIFIED: {why}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    Usage(String),
    Refused(String),
}

fn run(args: Vec<String>) -> Result<String, Failure> {
    let (mut jwks, mut previous, mut statement) = (None, None, None);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--jwks" => jwks = args.next(),
            "--previous" => previous = args.next(),
            _ if statement.is_none() && !arg.starts_with("--") => statement = Some(arg),
            _ => return Err(Failure::Usage(format!("unexpected argument {arg:?}"))),
        }
    }
    let read =
        |path: &str| std::fs::read_to_string(path).map_err(|e| Failure::Usage(format!("cannot read {path}: {e}")));
    let jwks_path = jwks.ok_or_else(|| Failure::Usage("--jwks is required".into()))?;
    let keys: JwkSet = serde_json::from_str(&read(&jwks_path)?)
        .map_err(|e| Failure::Usage(format!("{jwks_path} is not a JWKS: {e}")))?;
    let path = statement.ok_or_else(|| Failure::Usage("which statement?".into()))?;
    let check = |path: &str| {
        bank_statement::check_document(&read(path)?, &keys).map_err(|e| Failure::Refused(format!("{path}: {e}")))
    };
    let s = check(&path)?;
    if let Some(previous) = previous {
        let p = check(&previous)?;
        bank_statement::follows(&p, &s).map_err(|e| Failure::Refused(format!("{previous} then {path}: {e}")))?;
    }
    Ok(format!(
        "VERIFIED: account {} ({}) from {} to {}: opening {}, {} entries, {} in, {} out, closing {}; chain v{} {} .. v{} {}",
        s.account_id,
        s.currency,
        s.from_time.to_rfc3339(),
        s.to_time.to_rfc3339(),
        s.opening_balance,
        s.entries.len(),
        s.total_credits,
        s.total_debits,
        s.closing_balance,
        s.opening_chain_head.version,
        s.opening_chain_head.hash,
        s.closing_chain_head.version,
        s.closing_chain_head.hash,
    ))
}
