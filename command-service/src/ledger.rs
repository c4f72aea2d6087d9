//! The money path: each command is validated into a domain `Command`, then
//! run by the batch executor (`batch`; with batching off, as a batch of one):
//! claim the idempotency key, lock the touched accounts in id order, decide
//! with `bank_domain::ledger::handle`, then write balances, events, postings,
//! outbox rows and the outcome in one statement. `decide` below is the one
//! place a decision becomes rows and a response.

use std::sync::Arc;

use std::collections::HashMap;

use bank_domain::{
    Account, AccountKind, AccountStatus, Currency, InputError, Money,
    consistency::ConsistencyToken,
    hold::HoldState,
    ledger::{self as rules, Actor, Command, Event, Posting, PostingKind, Transaction},
    parse_amount,
};
use bank_platform::{auth::Caller, standing::Standing};
use bank_proto::v1::{self as pb, event_envelope::Payload};
use chrono::{DateTime, Utc};
use prost::Message;
use rust_decimal::Decimal;
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::{
    batch::{Batcher, Job, Queue},
    error::CommandError,
    events::{self, EventDraft, NewEvent},
    store::{self, AccountRow, HoldRow, ReversalRow, Writes},
};

/// Limits from configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest amount of one deposit, withdrawal or transfer.
    pub max_amount: Decimal,
    /// Largest balance an account may hold.
    pub max_balance: Decimal,
}

pub struct Ledger {
    limits: Limits,
    executor: Executor,
    pool: PgPool,
}

/// How commands reach the batch executor.
enum Executor {
    /// Batching on: queued for the batchers.
    Queued(Queue),
    /// Batching off: each command is a batch of one, run by its caller.
    Direct(Arc<Batcher>),
}

/// What a decided command writes and answers.
pub struct Plan<R> {
    pub(crate) writes: Writes,
    pub(crate) response: R,
}

/// Genesis of every account's hash chain.
pub(crate) use bank_platform::signing::GENESIS_HASH;

pub(crate) fn now() -> DateTime<Utc> {
    // Postgres keeps microseconds: truncate so the stored row and the
    // published envelope carry the same instant.
    let t = Utc::now();
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

// ---- input validation (no I/O) ----

pub fn parse_id(field: &str, text: &str) -> Result<Uuid, InputError> {
    if text.is_empty() {
        return Err(InputError::new(field, "is required"));
    }
    Uuid::try_parse(text).map_err(|_| InputError::new(field, "must be a UUID"))
}

pub fn check_idempotency_key(key: &str) -> Result<(), InputError> {
    let field = "idempotency_key";
    if key.is_empty() {
        Err(InputError::new(field, "is required for every mutating command"))
    } else if key.chars().count() > 128 || key.chars().any(char::is_control) {
        Err(InputError::new(field, "must be 1-128 characters without control characters"))
    } else {
        Ok(())
    }
}

pub fn check_description(text: &str) -> Result<(), InputError> {
    if text.chars().count() > 140 || text.chars().any(char::is_control) {
        Err(InputError::new("description", "must be at most 140 characters without control characters"))
    } else {
        Ok(())
    }
}

pub fn parse_money(money: Option<&pb::Money>, max: Decimal) -> Result<Money, Vec<InputError>> {
    let Some(m) = money else {
        return Err(vec![InputError::new("money", "is required")]);
    };
    let currency = Currency::from_code(&m.currency_code)
        .map_err(|_| vec![InputError::new("money.currency_code", "must be a supported ISO 4217 code such as USD")])?;
    let amount = parse_amount("money.amount", &m.amount, currency, max).map_err(|e| vec![e])?;
    Ok(Money::new(currency, amount))
}

/// Collects every violation of a request, so the caller learns all at once.
#[derive(Default)]
pub struct Violations(Vec<InputError>);

impl Violations {
    pub fn check<T>(&mut self, r: Result<T, InputError>) -> Option<T> {
        r.map_err(|e| self.0.push(e)).ok()
    }

    pub fn check_all<T>(&mut self, r: Result<T, Vec<InputError>>) -> Option<T> {
        r.map_err(|e| self.0.extend(e)).ok()
    }

    pub fn add(&mut self, field: &str, description: &str) {
        self.0.push(InputError::new(field, description));
    }

    /// The built value when nothing was violated.
    pub fn finish<T>(self, build: impl FnOnce() -> Option<T>) -> Result<T, CommandError> {
        if !self.0.is_empty() {
            return Err(CommandError::Invalid(self.0));
        }
        build().ok_or_else(|| CommandError::Internal(anyhow::anyhow!("validated value missing")))
    }
}

// ---- proto views ----

fn account_type(kind: AccountKind) -> pb::AccountType {
    match kind {
        AccountKind::Checking => pb::AccountType::Checking,
        AccountKind::Savings => pb::AccountType::Savings,
        AccountKind::Settlement => pb::AccountType::Settlement,
        AccountKind::FeeIncome => pb::AccountType::FeeIncome,
    }
}

pub fn account_proto(row: &AccountRow) -> pb::Account {
    let a = &row.account;
    pb::Account {
        account_id: a.id.to_string(),
        owner_id: a.owner_id.to_string(),
        r#type: account_type(a.kind) as i32,
        currency_code: a.currency.code().to_owned(),
        balance: events::money(a.currency, a.balance),
        status: match a.status {
            AccountStatus::Active => pb::AccountStatus::Active,
            AccountStatus::Frozen => pb::AccountStatus::Frozen,
            AccountStatus::Closed => pb::AccountStatus::Closed,
        } as i32,
        version: a.version,
        opened_at: events::timestamp(row.opened_at),
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

pub fn hold_proto(row: &HoldRow) -> pb::Hold {
    let h = &row.hold;
    pb::Hold {
        hold_id: h.id.to_string(),
        from_account_id: h.account.to_string(),
        to_account_id: h.to.to_string(),
        amount: events::money(h.money.currency, h.money.amount),
        state: hold_state(h.state) as i32,
        expires_at: events::timestamp(h.expires_at),
        captured: events::money(h.money.currency, row.captured),
    }
}

fn limit_text(limit: Option<Decimal>) -> String {
    limit.map(|d| d.normalize().to_string()).unwrap_or_default()
}

fn token_of(events: &[NewEvent]) -> String {
    ConsistencyToken::new(events.iter().map(|e| (e.account_id, e.version))).encode()
}

/// The actor the rules see: the verified token, narrowed by the user's newest
/// standing from auth-service where that is newer than the token. A
/// suspension or a revoked role counts at once; an approval or a grant waits
/// for a new token (a standing only ever takes away what the token gives).
pub fn actor(caller: &Caller, standing: Option<&Standing>) -> Actor {
    use bank_platform::auth::{ROLE_ADMIN, ROLE_TELLER};
    let (active, teller, admin) = match standing {
        // Only a standing newer than the token counts: one the token already
        // reflects (or an older one still in flight) says nothing new.
        Some(s) if s.seq > caller.standing_version => {
            (s.is_active(), s.has(ROLE_TELLER) || s.has(ROLE_ADMIN), s.has(ROLE_ADMIN))
        }
        _ => (true, true, true),
    };
    Actor {
        id: caller.user_id,
        active: caller.is_active() && active,
        teller: caller.is_teller() && teller,
        admin: caller.is_admin() && admin,
        service: caller.is_service(),
    }
}

fn posting_proto(p: &Posting) -> pb::Posting {
    pb::Posting { account_id: p.account.to_string(), amount: events::money(p.currency, p.amount) }
}

/// The published payload of a domain event on `account` (as the event left
/// it), and its signed balance change.
fn payload(event: &Event, account: &Account) -> (Payload, Decimal) {
    let currency = account.currency;
    let m = |d: Decimal| events::money(currency, d);
    match event {
        Event::AccountOpened { kind, currency, owner, .. } => (
            Payload::AccountOpened(pb::AccountOpened {
                owner_id: owner.to_string(),
                r#type: account_type(*kind) as i32,
                currency_code: currency.code().to_owned(),
            }),
            Decimal::ZERO,
        ),
        Event::Posted { posting, before, after, kind, description, .. } => {
            let (amount, before, after, description) =
                (m(posting.amount.abs()), m(*before), m(*after), description.clone());
            let p = match kind {
                PostingKind::Deposit => Payload::MoneyDeposited(pb::MoneyDeposited {
                    amount,
                    balance_before: before,
                    balance_after: after,
                    description,
                }),
                PostingKind::Withdrawal => Payload::MoneyWithdrawn(pb::MoneyWithdrawn {
                    amount,
                    balance_before: before,
                    balance_after: after,
                    description,
                }),
                PostingKind::TransferOut { to } => Payload::TransferDebited(pb::TransferDebited {
                    amount,
                    balance_before: before,
                    balance_after: after,
                    to_account_id: to.to_string(),
                    description,
                }),
                PostingKind::TransferIn { from } => Payload::TransferCredited(pb::TransferCredited {
                    amount,
                    balance_before: before,
                    balance_after: after,
                    from_account_id: from.to_string(),
                    description,
                }),
                PostingKind::Leg => Payload::Posted(pb::Posted {
                    amount: m(posting.amount),
                    balance_before: before,
                    balance_after: after,
                    description,
                }),
                PostingKind::Reversal { original } => Payload::Reversed(pb::Reversed {
                    amount: m(posting.amount),
                    balance_before: before,
                    balance_after: after,
                    reverses_transaction_id: original.to_string(),
                    reason: description,
                }),
            };
            (p, posting.amount)
        }
        Event::HoldPlaced { hold, description } => (
            Payload::HoldPlaced(pb::HoldPlaced {
                hold_id: hold.id.to_string(),
                to_account_id: hold.to.to_string(),
                amount: m(hold.money.amount),
                expires_at: events::timestamp(hold.expires_at),
                held_after: m(account.held),
                description: description.clone(),
            }),
            Decimal::ZERO,
        ),
        Event::HoldReleased { hold, released, state, captured, .. } => (
            Payload::HoldReleased(pb::HoldReleased {
                hold_id: hold.to_string(),
                released: m(*released),
                held_after: m(account.held),
                state: hold_state(*state) as i32,
                captured: m(*captured),
            }),
            Decimal::ZERO,
        ),
        Event::LimitsSet { limits, .. } => (
            Payload::LimitsSet(pb::LimitsSet {
                max_single_debit: limit_text(limits.max_debit),
                daily_debit_limit: limit_text(limits.daily_debit),
            }),
            Decimal::ZERO,
        ),
        Event::AccountFrozen { reason, .. } => {
            (Payload::AccountFrozen(pb::AccountFrozen { reason: reason.clone() }), Decimal::ZERO)
        }
        Event::AccountUnfrozen { reason, .. } => {
            (Payload::AccountUnfrozen(pb::AccountUnfrozen { reason: reason.clone() }), Decimal::ZERO)
        }
        Event::AccountClosed { .. } => (Payload::AccountClosed(pb::AccountClosed {}), Decimal::ZERO),
    }
}

/// Seals `event` (already applied to `row`) as the next link of the row's
/// hash chain.
fn record(
    row: &mut AccountRow,
    event: &Event,
    tx: Uuid,
    actor: Uuid,
    at: DateTime<Utc>,
    trace: &std::collections::BTreeMap<String, String>,
) -> NewEvent {
    let (payload, delta) = payload(event, &row.account);
    let counterparties = match event {
        Event::Posted { counterparties, .. } => counterparties.iter().map(posting_proto).collect(),
        _ => Vec::new(),
    };
    let new = events::seal(
        EventDraft {
            account_id: row.account.id,
            currency: row.account.currency,
            version: row.account.version,
            transaction_id: tx,
            actor,
            occurred_at: at,
            delta,
            balance_after: row.account.balance,
            payload,
            counterparties,
        },
        &row.last_hash,
        trace,
    );
    row.last_hash = new.hash.clone();
    new
}

/// Opens the bank's settlement and fee-income accounts in every supported
/// currency that lacks them (at start; several instances may race, so they
/// take turns on an advisory lock). Returns how many were opened.
pub async fn open_system_accounts(pool: &PgPool, subject_prefix: &str) -> Result<usize, CommandError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('bankmesh.system_accounts'))").execute(&mut *tx).await?;
    let wanted: Vec<(Uuid, AccountKind, Currency)> =
        Currency::all().flat_map(|c| AccountKind::SYSTEM.map(|k| (rules::system_account_id(k, c), k, c))).collect();
    let ids: Vec<Uuid> = wanted.iter().map(|w| w.0).collect();
    let existing: Vec<Uuid> = store::lock_accounts(&mut tx, &ids).await?.iter().map(|r| r.account.id).collect();
    let at = now();
    let mut writes = store::BatchWrites::default();
    for (id, kind, currency) in wanted.into_iter().filter(|w| !existing.contains(&w.0)) {
        let event = Event::AccountOpened { account: id, owner: rules::BANK, kind, currency };
        let account = rules::apply(None, &event).expect("opening applies to no account");
        let mut row = AccountRow { account, last_hash: GENESIS_HASH.to_vec(), opened_at: at };
        writes.events.push(record(&mut row, &event, Uuid::now_v7(), rules::BANK, at, &Default::default()));
        writes.new_accounts.push(row);
    }
    let opened = writes.new_accounts.len();
    if opened > 0 {
        store::apply_batch(&mut tx, subject_prefix, &writes).await?;
    }
    tx.commit().await?;
    Ok(opened)
}

/// Decides one command on the rows it locked (as earlier commands of its
/// batch left them): the rules pick the events, then each event advances
/// its account's version and hash chain. The one path every command takes.
pub(crate) fn decide(
    limits: &Limits,
    caller: &Caller,
    command: &Command,
    rows: &[AccountRow],
    holds: &HashMap<Uuid, HoldRow>,
    transactions: &HashMap<Uuid, Transaction>,
    standing: Option<&Standing>,
) -> Result<Plan<Vec<u8>>, CommandError> {
    let at = now();
    let mut world = rules::State::new(rows.iter().map(|r| (r.account.id, r.account.clone())).collect(), at);
    if let Some(row) = command.hold().and_then(|id| holds.get(&id)) {
        world.holds.insert(row.hold.id, row.hold.clone());
    }
    if let Command::Reverse { transaction, .. } = command
        && let Some(t) = transactions.get(transaction)
    {
        world.transactions.insert(*transaction, t.clone());
    }
    let actor = actor(caller, standing);
    let decided = rules::handle(&world, &actor, command, &rules::Limits { max_balance: limits.max_balance })?;
    let (tx, trace) = (Uuid::now_v7(), bank_platform::telemetry::current_trace_context());
    let mut changed_holds: Vec<HoldRow> = Vec::new();
    let mut reversals: Vec<ReversalRow> = Vec::new();
    for event in &decided {
        match event {
            Event::HoldPlaced { hold, .. } => changed_holds.push(HoldRow {
                hold: hold.clone(),
                captured: Decimal::ZERO,
                placed_at: at,
                ended_at: None,
            }),
            Event::HoldReleased { hold, state, captured, .. } => {
                let mut row = holds
                    .get(hold)
                    .cloned()
                    .ok_or_else(|| CommandError::Internal(anyhow::anyhow!("released a hold it did not read")))?;
                (row.hold.state, row.captured, row.ended_at) = (*state, *captured, Some(at));
                changed_holds.push(row);
            }
            Event::Posted { kind: PostingKind::Reversal { original }, description, .. }
                if !reversals.iter().any(|r| r.original == *original) =>
            {
                reversals.push(ReversalRow {
                    original: *original,
                    reversal: tx,
                    by: caller.user_id,
                    reason: description.clone(),
                    at,
                })
            }
            _ => {}
        }
    }
    let mut touched: HashMap<Uuid, AccountRow> = rows.iter().map(|r| (r.account.id, r.clone())).collect();
    let (mut order, mut opened, mut sealed) = (Vec::new(), Vec::new(), Vec::new());
    for event in &decided {
        let id = event.account();
        let current = touched.get(&id).map(|r| &r.account);
        let next = rules::apply(current, event)
            .ok_or_else(|| CommandError::Internal(anyhow::anyhow!("event for an account it cannot apply to")))?;
        let row = touched.entry(id).or_insert_with(|| {
            opened.push(id);
            AccountRow { account: next.clone(), last_hash: GENESIS_HASH.to_vec(), opened_at: at }
        });
        row.account = next;
        sealed.push(record(row, event, tx, caller.user_id, at, &trace));
        if !order.contains(&id) {
            order.push(id);
        }
    }
    let response = respond(caller, command, &touched, &changed_holds, &sealed, tx, at);
    let mut writes = Writes { holds: changed_holds, reversals, ..Writes::default() };
    for id in order {
        let row = touched.remove(&id).expect("every event's account is touched");
        if opened.contains(&id) { writes.new_accounts.push(row) } else { writes.changed_accounts.push(row) }
    }
    writes.events = sealed;
    Ok(Plan { writes, response })
}

/// The response of a decided command, encoded.
fn respond(
    caller: &Caller,
    command: &Command,
    rows: &HashMap<Uuid, AccountRow>,
    holds: &[HoldRow],
    events: &[NewEvent],
    tx: Uuid,
    at: DateTime<Utc>,
) -> Vec<u8> {
    let account = |id: &Uuid| rows.get(id).map(account_proto);
    // The token names the accounts the caller was answered about: a teller
    // reading after a deposit waits for the customer's account, not for the
    // bank's busy settlement account.
    //
    // And only accounts the caller may see (their own; staff and services
    // any): a sender learns nothing of the payee's balance, and the token
    // stays one the query side accepts from them.
    let sees_all = (caller.is_teller() && caller.is_active()) || caller.is_service();
    let moved = |ids: Vec<Uuid>| {
        let ids: Vec<Uuid> = ids
            .into_iter()
            .filter(|id| sees_all || rows.get(id).is_some_and(|r| r.account.owner_id == caller.user_id))
            .collect();
        let named: Vec<NewEvent> = events.iter().filter(|e| ids.contains(&e.account_id)).cloned().collect();
        pb::MoneyMovementResponse {
            transaction_id: tx.to_string(),
            balances_after: ids
                .iter()
                .filter_map(|id| rows.get(id))
                .map(|r| pb::AccountBalance {
                    account_id: r.account.id.to_string(),
                    balance: events::money(r.account.currency, r.account.balance),
                    version: r.account.version,
                })
                .collect(),
            consistency_token: token_of(&named),
            occurred_at: events::timestamp(at),
        }
        .encode_to_vec()
    };
    match command {
        Command::OpenAccount { id, .. } => {
            pb::OpenAccountResponse { account: account(id), consistency_token: token_of(events) }.encode_to_vec()
        }
        // The teller sees the customer's account; settlement is the bank's business.
        Command::Deposit { account, .. } | Command::Withdraw { account, .. } => moved(vec![*account]),
        Command::Transfer { from, to, .. } => moved(vec![*from, *to]),
        Command::Post { legs, .. } => moved(legs.iter().map(|l| l.account).collect()),
        Command::CaptureHold { .. } | Command::Reverse { .. } => {
            let mut ids: Vec<Uuid> = Vec::new();
            for e in events.iter().filter(|e| e.delta != Decimal::ZERO) {
                if !ids.contains(&e.account_id) {
                    ids.push(e.account_id);
                }
            }
            moved(ids)
        }
        Command::PlaceHold { .. } | Command::VoidHold { .. } | Command::ExpireHold { .. } => {
            let hold = holds.first();
            let source = hold.and_then(|h| rows.get(&h.hold.account));
            pb::HoldResponse {
                hold: hold.map(hold_proto),
                available_balance: source.and_then(|r| events::money(r.account.currency, r.account.available())),
                consistency_token: token_of(events),
            }
            .encode_to_vec()
        }
        Command::Freeze { account: id, .. }
        | Command::Unfreeze { account: id, .. }
        | Command::Close { account: id }
        | Command::SetLimits { account: id, .. } => {
            pb::AccountChangeResponse { account: account(id), consistency_token: token_of(events) }.encode_to_vec()
        }
    }
}

impl Ledger {
    pub fn new(
        pool: PgPool,
        standings: Arc<crate::standing::Standings>,
        limits: Limits,
        subject_prefix: String,
        outbox_written: Arc<Notify>,
    ) -> Self {
        let direct = Arc::new(Batcher::new(pool.clone(), standings, subject_prefix, outbox_written, limits.clone()));
        Self { limits, executor: Executor::Direct(direct), pool }
    }

    /// Sends every command through `queue` (batching mode).
    pub fn with_batching(mut self, queue: Queue) -> Self {
        self.executor = Executor::Queued(queue);
        self
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Runs `command` for `caller` under its idempotency key; see the module doc.
    #[tracing::instrument(skip_all, fields(rpc = rpc, caller = %caller.user_id), err(level = "info"))]
    pub async fn run<R: Message + Default>(
        &self,
        caller: &Caller,
        rpc: &'static str,
        key: &str,
        request_hash: &[u8],
        command: Command,
    ) -> Result<R, CommandError> {
        let lock_ids = store::accounts_to_lock(&self.pool, &command).await?;
        let job = Job::new(caller, rpc, key, request_hash, command, lock_ids);
        let bytes = match &self.executor {
            Executor::Queued(queue) => queue.run(job).await?,
            Executor::Direct(batcher) => batcher.run_one(job).await?,
        };
        R::decode(bytes.as_slice()).map_err(|e| CommandError::Internal(anyhow::anyhow!("response: {e}")))
    }
}
