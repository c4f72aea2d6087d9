//! The consumer's store: a batch of events applied in one transaction —
//! each account's owner, balance and head, the notifications the events make
//! (once per (event, rule)), the balance alerts they fire, and a webhook
//! delivery per notification and endpoint (an outbox the deliverer works
//! through) — so nothing is acknowledged that is not all written.

use std::{collections::HashMap, sync::Arc};

use anyhow::{Context, Result, bail};
use bank_domain::{Currency, format_amount, ledger::BANK};
use bank_platform::standing::Standing;
use bank_proto::v1::event_envelope::Payload;
use bank_stream::{Event, Head, Refusal, Sink};
use chrono::Utc;
use rust_decimal::Decimal;
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::rules::{self, Alert, Direction};

/// The Postgres channel new notifications are announced on (payload: the user id).
pub const NEWS_CHANNEL: &str = "bank_notifications";

pub struct Store {
    pool: PgPool,
    /// Woken after a batch made notifications (the webhook deliverer, the mailer).
    made: Vec<Arc<Notify>>,
}

impl Store {
    pub fn new(pool: PgPool, made: Vec<Arc<Notify>>) -> Self {
        Self { pool, made }
    }
}

/// An account as this service knows it.
struct Watched {
    owner: Uuid,
    currency: String,
    balance: Decimal,
    version: i64,
    hash: Vec<u8>,
    /// Its AccountOpened's time (known for accounts opened in this batch).
    opened_at: Option<chrono::DateTime<Utc>>,
}

struct AlertRow {
    id: Uuid,
    user: Uuid,
    alert: Alert,
    fired: i64,
}

/// A notification to write.
struct New {
    id: Uuid,
    user: Uuid,
    event: Uuid,
    /// `None` for what is about the user, not an account (a KYC approval).
    account: Option<Uuid>,
    rule: String,
    kind: String,
    title: String,
    body: String,
}

impl Store {
    /// What a signed change of a user's standing makes, once however often
    /// the feed delivers it: its id is derived from (user, seq).
    pub async fn standing_changed(&self, s: &Standing) -> Result<()> {
        let Some(made) = rules::standing_notification(s.previous_status.as_deref(), &s.status) else {
            return Ok(());
        };
        let event = Uuid::new_v5(&STANDING_NAMESPACE, format!("{}:{}", s.user_id, s.seq).as_bytes());
        let new = New {
            id: Uuid::now_v7(),
            user: s.user_id,
            event,
            account: None,
            rule: made.rule,
            kind: made.kind.to_owned(),
            title: made.title,
            body: made.body,
        };
        let mut tx = self.pool.begin().await?;
        let any = write_notifications(&mut tx, std::slice::from_ref(&new)).await?;
        tx.commit().await?;
        if any {
            self.made.iter().for_each(|n| n.notify_one());
        }
        Ok(())
    }
}

impl Store {
    /// Customer accounts open by the end of `period` whose statement of it
    /// is not made yet (at most `limit`).
    pub async fn statements_due(&self, period: &crate::statements::Period, limit: i64) -> Result<Vec<Uuid>> {
        Ok(sqlx::query_scalar!(
            "SELECT account_id FROM watched_accounts w
             WHERE owner_id <> $1 AND (opened_at IS NULL OR opened_at < $2)
               AND NOT EXISTS (SELECT 1 FROM monthly_statements m WHERE m.account_id = w.account_id AND m.period = $3)
             ORDER BY account_id LIMIT $4",
            BANK,
            period.to,
            period.name,
            limit
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Keeps `statement` and delivers it to the account's owner, in one
    /// transaction, unless another instance did already; whether this did.
    pub async fn statement_made(
        &self,
        account: Uuid,
        period: &crate::statements::Period,
        statement: &bank_proto::v1::Statement,
    ) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let owner = sqlx::query_scalar!("SELECT owner_id FROM watched_accounts WHERE account_id = $1", account)
            .fetch_one(&mut *tx)
            .await?;
        let new = New {
            id: Uuid::now_v7(),
            user: owner,
            event: Uuid::new_v5(&STATEMENT_NAMESPACE, format!("{account}:{}", period.name).as_bytes()),
            account: Some(account),
            rule: format!("statement:{}", period.name),
            kind: "statement".to_owned(),
            title: format!("Statement for {}", period.title()),
            body: crate::statements::statement_body(account, period, statement),
        };
        let kept = sqlx::query!(
            "INSERT INTO monthly_statements (account_id, period, signed_statement, notification_id, created_at)
             VALUES ($1, $2, $3, $4, now()) ON CONFLICT DO NOTHING",
            account,
            period.name,
            statement.signed_statement,
            new.id
        );
        // The notification first (the statement row names it); a conflict on
        // either means another instance made it: nothing is written twice.
        let made = write_notifications(&mut tx, std::slice::from_ref(&new)).await?;
        if !made || kept.execute(&mut *tx).await?.rows_affected() == 0 {
            return Ok(false);
        }
        tx.commit().await?;
        self.made.iter().for_each(|n| n.notify_one());
        Ok(true)
    }
}

/// The namespace of the event ids given to monthly statements.
const STATEMENT_NAMESPACE: Uuid = Uuid::from_u128(0x9e41_2c07_5b3d_4f18_b6a2_d0c5_7e19_4f62);

/// The namespace of the event ids given to standing changes.
const STANDING_NAMESPACE: Uuid = Uuid::from_u128(0x5d0c_1b7e_8f2a_4e63_a1d4_7c9b_2e5f_8a30);

impl Sink for Store {
    async fn heads(&self, accounts: &[Uuid]) -> Result<HashMap<Uuid, Head>> {
        let rows =
            sqlx::query!("SELECT account_id, version, hash FROM watched_accounts WHERE account_id = ANY($1)", accounts)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|r| (r.account_id, Head { version: r.version, hash: Some(r.hash) })).collect())
    }

    async fn apply(&self, events: &[Event]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let mut accounts: Vec<Uuid> = events.iter().map(|e| e.account).collect();
        accounts.sort_unstable();
        accounts.dedup();
        // Locked: another instance applying these accounts waits, and a head
        // that moved since it was read fails the batch, which is placed again.
        let mut watched: HashMap<Uuid, Watched> = sqlx::query!(
            "SELECT account_id, owner_id, currency, balance, version, hash FROM watched_accounts
             WHERE account_id = ANY($1) ORDER BY account_id FOR UPDATE",
            &accounts
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| {
            let w = Watched {
                owner: r.owner_id,
                currency: r.currency,
                balance: r.balance,
                version: r.version,
                hash: r.hash,
                opened_at: None,
            };
            (r.account_id, w)
        })
        .collect();
        let mut alerts: HashMap<Uuid, Vec<AlertRow>> = HashMap::new();
        for r in sqlx::query!(
            "SELECT id, user_id, account_id, direction, threshold, beyond FROM balance_alerts
             WHERE account_id = ANY($1) AND deleted_at IS NULL ORDER BY id FOR UPDATE",
            &accounts
        )
        .fetch_all(&mut *tx)
        .await?
        {
            let direction = Direction::parse(&r.direction).context("a stored alert's direction")?;
            let alert = Alert { direction, threshold: r.threshold, beyond: r.beyond };
            alerts.entry(r.account_id).or_default().push(AlertRow { id: r.id, user: r.user_id, alert, fired: 0 });
        }

        let mut made = Vec::new();
        for e in events {
            let env = &e.envelope;
            let event_id = Uuid::try_parse(&env.event_id).context("event_id is not a UUID")?;
            let w = match (watched.get_mut(&e.account), env.payload.as_ref()) {
                (Some(w), _) if w.version + 1 == env.version => w,
                (Some(_), _) => bail!("account {}'s head moved while this batch was placed", e.account),
                (None, Some(Payload::AccountOpened(o))) if env.version == 1 => {
                    let owner = Uuid::try_parse(&o.owner_id).context("owner_id is not a UUID")?;
                    let w = Watched {
                        owner,
                        currency: o.currency_code.clone(),
                        balance: Decimal::ZERO,
                        version: 0,
                        hash: Vec::new(),
                        opened_at: bank_stream::occurred_at(env),
                    };
                    watched.entry(e.account).or_insert(w)
                }
                (None, _) => bail!("account {}'s events before it was opened", e.account),
            };
            w.version = env.version;
            w.hash = env.hash.clone();
            // The bank's own accounts (settlement, fee income) have no one to tell.
            if let Some(made_one) = rules::notification_for(env).filter(|_| w.owner != BANK) {
                made.push(New {
                    id: Uuid::now_v7(),
                    user: w.owner,
                    event: event_id,
                    account: Some(e.account),
                    rule: made_one.rule,
                    kind: made_one.kind.to_owned(),
                    title: made_one.title,
                    body: made_one.body,
                });
            }
            let Some(balance) = rules::balance_after(env) else { continue };
            w.balance = balance;
            for a in alerts.get_mut(&e.account).into_iter().flatten() {
                let (fires, after) = a.alert.on_balance(balance);
                a.alert = after;
                if fires {
                    a.fired += 1;
                    let (word, sign) = match a.alert.direction {
                        Direction::Below => ("below", "under"),
                        Direction::Above => ("above", "over"),
                    };
                    let money = |amount: Decimal| match Currency::from_code(&w.currency) {
                        Ok(c) => format!("{} {}", format_amount(amount, c), w.currency),
                        Err(_) => format!("{} {}", amount.normalize(), w.currency),
                    };
                    let (balance, threshold) = (money(balance), money(a.alert.threshold));
                    made.push(New {
                        id: Uuid::now_v7(),
                        user: a.user,
                        event: event_id,
                        account: Some(e.account),
                        rule: format!("balance_alert:{}", a.id),
                        kind: "balance_alert".into(),
                        title: format!("Balance {word} {threshold}"),
                        body: format!(
                            "The balance of account {} is {balance}, {sign} your alert at {threshold}.",
                            e.account
                        ),
                    });
                }
            }
        }

        write_accounts(&mut tx, &watched, &accounts).await?;
        let rows: Vec<&AlertRow> = alerts.values().flatten().collect();
        sqlx::query!(
            "UPDATE balance_alerts a SET beyond = u.beyond, fired = a.fired + u.fired
             FROM UNNEST($1::uuid[], $2::bool[], $3::bigint[]) AS u(id, beyond, fired) WHERE a.id = u.id",
            &rows.iter().map(|a| a.id).collect::<Vec<_>>(),
            &rows.iter().map(|a| a.alert.beyond).collect::<Vec<_>>(),
            &rows.iter().map(|a| a.fired).collect::<Vec<_>>(),
        )
        .execute(&mut *tx)
        .await?;
        let any = write_notifications(&mut tx, &made).await?;
        tx.commit().await?;
        if any {
            self.made.iter().for_each(|n| n.notify_one());
        }
        Ok(())
    }

    async fn refused(&self, subject: &str, stream_sequence: u64, why: &Refusal) -> Result<()> {
        tracing::error!(subject, stream_sequence, %why, "event stream message refused");
        sqlx::query!(
            "INSERT INTO refused_messages (stream_sequence, subject, reason) VALUES ($1, $2, $3)",
            stream_sequence as i64,
            subject,
            why.to_string()
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

async fn write_accounts(
    tx: &mut sqlx::PgConnection,
    watched: &HashMap<Uuid, Watched>,
    accounts: &[Uuid],
) -> Result<()> {
    let rows: Vec<(&Uuid, &Watched)> = accounts.iter().filter_map(|a| watched.get(a).map(|w| (a, w))).collect();
    let written = sqlx::query!(
        "INSERT INTO watched_accounts (account_id, owner_id, currency, balance, version, hash, opened_at)
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::numeric[], $5::bigint[], $6::bytea[],
                              $7::timestamptz[])
         ON CONFLICT (account_id) DO UPDATE
         SET balance = excluded.balance, version = excluded.version, hash = excluded.hash
         WHERE watched_accounts.version < excluded.version",
        &rows.iter().map(|(a, _)| **a).collect::<Vec<_>>(),
        &rows.iter().map(|(_, w)| w.owner).collect::<Vec<_>>(),
        &rows.iter().map(|(_, w)| w.currency.clone()).collect::<Vec<_>>(),
        &rows.iter().map(|(_, w)| w.balance).collect::<Vec<_>>(),
        &rows.iter().map(|(_, w)| w.version).collect::<Vec<_>>(),
        &rows.iter().map(|(_, w)| w.hash.clone()).collect::<Vec<_>>(),
        &rows.iter().map(|(_, w)| w.opened_at).collect::<Vec<Option<chrono::DateTime<Utc>>>>()
            as &[Option<chrono::DateTime<Utc>>],
    )
    .execute(tx)
    .await?
    .rows_affected();
    // An account first seen by two instances at once: the one that wrote it
    // first wins, and the other's batch is placed again (its events are
    // duplicates then).
    if written != rows.len() as u64 {
        bail!("another instance applied these accounts' events first");
    }
    Ok(())
}

/// Writes the notifications not made before, a delivery of each to every
/// endpoint of its user, and announces them; whether any was new.
async fn write_notifications(tx: &mut sqlx::PgConnection, made: &[New]) -> Result<bool> {
    if made.is_empty() {
        return Ok(false);
    }
    let now = Utc::now();
    let inserted = sqlx::query!(
        "INSERT INTO notifications (id, user_id, event_id, rule, kind, title, body, account_id, created_at)
         SELECT u.*, $9 FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::text[],
                                    $7::text[], $8::uuid[]) AS u
         ON CONFLICT (event_id, rule, user_id) DO NOTHING
         RETURNING id, user_id",
        &made.iter().map(|n| n.id).collect::<Vec<_>>(),
        &made.iter().map(|n| n.user).collect::<Vec<_>>(),
        &made.iter().map(|n| n.event).collect::<Vec<_>>(),
        &made.iter().map(|n| n.rule.clone()).collect::<Vec<_>>(),
        &made.iter().map(|n| n.kind.clone()).collect::<Vec<_>>(),
        &made.iter().map(|n| n.title.clone()).collect::<Vec<_>>(),
        &made.iter().map(|n| n.body.clone()).collect::<Vec<_>>(),
        &made.iter().map(|n| n.account).collect::<Vec<Option<Uuid>>>() as &[Option<Uuid>],
        now,
    )
    .fetch_all(&mut *tx)
    .await?;
    if inserted.is_empty() {
        return Ok(false);
    }
    let by_id: HashMap<Uuid, &New> = made.iter().map(|n| (n.id, n)).collect();
    let fresh: Vec<&New> = inserted.iter().filter_map(|r| by_id.get(&r.id).copied()).collect();
    let payloads: Vec<String> = fresh.iter().map(|n| payload(n, now)).collect();
    sqlx::query!(
        "INSERT INTO webhook_deliveries (id, endpoint_id, notification_id, payload, state, next_attempt_at, created_at)
         SELECT gen_random_uuid(), e.id, n.id, n.payload, 'PENDING', $4, $4
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[]) AS n(id, user_id, payload)
         JOIN webhook_endpoints e ON e.user_id = n.user_id AND e.deleted_at IS NULL
         ON CONFLICT (endpoint_id, notification_id) DO NOTHING",
        &fresh.iter().map(|n| n.id).collect::<Vec<_>>(),
        &fresh.iter().map(|n| n.user).collect::<Vec<_>>(),
        &payloads,
        now,
    )
    .execute(&mut *tx)
    .await?;
    // And an email each, for those who enabled it.
    sqlx::query!(
        "INSERT INTO email_deliveries (id, notification_id, to_address, subject, body, state, next_attempt_at, created_at)
         SELECT gen_random_uuid(), n.id, p.email, 'bankmesh: ' || n.title, n.body || E'\\n\\n-- bankmesh', 'PENDING', $5, $5
         FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::text[]) AS n(id, user_id, title, body)
         JOIN notification_preferences p ON p.user_id = n.user_id AND p.email_enabled
         ON CONFLICT (notification_id) DO NOTHING",
        &fresh.iter().map(|n| n.id).collect::<Vec<_>>(),
        &fresh.iter().map(|n| n.user).collect::<Vec<_>>(),
        &fresh.iter().map(|n| n.title.clone()).collect::<Vec<_>>(),
        &fresh.iter().map(|n| n.body.clone()).collect::<Vec<_>>(),
        now,
    )
    .execute(&mut *tx)
    .await?;
    let mut users: Vec<String> = fresh.iter().map(|n| n.user.to_string()).collect();
    users.sort();
    users.dedup();
    for user in users {
        sqlx::query!("SELECT pg_notify($1, $2)", NEWS_CHANNEL, user).execute(&mut *tx).await?;
    }
    Ok(true)
}

/// The webhook body: `type`, `timestamp` and `data`, as Standard Webhooks
/// recommends.
fn payload(n: &New, at: chrono::DateTime<Utc>) -> String {
    serde_json::json!({
        "type": format!("notification.{}", n.kind),
        "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": {
            "notification_id": n.id,
            "kind": n.kind,
            "title": n.title,
            "body": n.body,
            "account_id": n.account,
            "event_id": n.event,
        }
    })
    .to_string()
}
