//! The bank's own accounts, opened at start.

use bank_domain::{
    AccountKind, Currency,
    ledger::{self as rules, Event},
};
use bank_platform::signing::GENESIS_HASH;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    error::CommandError,
    events,
    store::{self, AccountRow},
};

/// Opens the bank's settlement and fee-income accounts in every supported
/// currency that lacks them (at start; several instances may race, so they
/// take turns on an advisory lock). Returns how many were opened.
#[tracing::instrument(skip_all, err)]
pub async fn open_system_accounts(pool: &PgPool, subject_prefix: &str) -> Result<usize, CommandError> {
    let mut tx = pool.begin().await?;
    sqlx::query!("SELECT pg_advisory_xact_lock(hashtext('bankmesh.system_accounts'))").execute(&mut *tx).await?;
    let wanted: Vec<(Uuid, AccountKind, Currency)> =
        Currency::all().flat_map(|c| AccountKind::SYSTEM.map(|k| (rules::system_account_id(k, c), k, c))).collect();
    let ids: Vec<Uuid> = wanted.iter().map(|w| w.0).collect();
    let existing: Vec<Uuid> = store::lock_accounts(&mut tx, &ids).await?.iter().map(|r| r.account.id).collect();
    let at = crate::execute::now();
    let mut writes = store::BatchWrites::default();
    for (id, kind, currency) in wanted.into_iter().filter(|w| !existing.contains(&w.0)) {
        let event = Event::AccountOpened { account: id, owner: rules::BANK, kind, currency };
        let account = rules::apply(None, &event).expect("opening applies to no account");
        let mut row = AccountRow { account, last_hash: GENESIS_HASH.to_vec(), opened_at: at };
        writes.events.push(events::record(
            &row.account,
            &mut row.last_hash,
            &event,
            Uuid::now_v7(),
            rules::BANK,
            at,
            &Default::default(),
        ));
        writes.new_accounts.push(row);
    }
    let opened = writes.new_accounts.len();
    if opened > 0 {
        store::apply_batch(&mut tx, subject_prefix, &writes).await?;
    }
    tx.commit().await?;
    Ok(opened)
}
