//! Monthly statements, delivered. When a month has ended (UTC), the
//! statement of that month for every customer account open by its end is
//! fetched from query-service, signed by the bank (this service reads
//! statements as a service principal of its own, which query-service lets
//! read statements and nothing else of other people's), kept, and delivered
//! like every notification: in the feed, by email, to webhooks. The signed
//! statement is in the message: the customer checks it offline with
//! `bank-statement-verify`. Once per (account, month), whichever instance
//! gets there first.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};
use bank_platform::{CancellationToken, tls::Tls};
use bank_proto::v1::{
    self as pb, account_query_service_client::AccountQueryServiceClient, auth_service_client::AuthServiceClient,
};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

use crate::store::Store;

/// Where statements come from, and as whom.
#[derive(Clone)]
pub struct Source {
    /// query-service (`QUERY_GRPC_URL`; comma-separated, each instance).
    pub query_url: String,
    pub credentials: Credentials,
    /// How often to look for statements to make (`STATEMENT_POLL_SECS`, 60).
    pub poll: Duration,
    /// How long after a month's end its statements wait, so the read models
    /// hold its last minutes (`STATEMENT_GRACE_SECS`, 600).
    pub grace: chrono::Duration,
    /// Added to the clock when deciding which month has ended (tests make the
    /// current month the one just ended); zero in service.
    pub clock_offset: chrono::Duration,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let who = match &self.credentials {
            Credentials::Client { auth_url, client_id, .. } => format!("{client_id} at {auth_url}"),
            Credentials::Token(_) => "a given token".to_owned(),
        };
        f.debug_struct("Source")
            .field("query_url", &self.query_url)
            .field("as", &who)
            .field("poll", &self.poll)
            .finish()
    }
}

/// This service's identity at query-service.
#[derive(Clone)]
pub enum Credentials {
    /// Client credentials at auth-service (`AUTH_GRPC_URL`, comma-separated,
    /// `SERVICE_CLIENT_ID`, `SERVICE_CLIENT_SECRET`).
    Client { auth_url: String, client_id: String, secret: String },
    /// A service token as it is (tests).
    Token(String),
}

/// A calendar month, UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    /// `2026-11`.
    pub name: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Period {
    /// The month before the one `now` is in: the last one that has ended.
    pub fn ended_before(now: DateTime<Utc>) -> Self {
        let first = |y: i32, m: u32| Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single().expect("the first of a month");
        let to = first(now.year(), now.month());
        let (y, m) = if now.month() == 1 { (now.year() - 1, 12) } else { (now.year(), now.month() - 1) };
        Self { name: format!("{y:04}-{m:02}"), from: first(y, m), to }
    }

    /// `November 2026`.
    pub fn title(&self) -> String {
        self.from.format("%B %Y").to_string()
    }
}

/// The statements one pass makes at most (the next pass goes on).
const PASS: i64 = 64;

pub struct Statements {
    source: Source,
    store: Arc<Store>,
    tls: Option<Arc<Tls>>,
    /// The service token and when to get a new one.
    token: Mutex<Option<(String, DateTime<Utc>)>>,
}

impl Statements {
    pub fn new(source: Source, store: Arc<Store>, tls: Option<Arc<Tls>>) -> Arc<Self> {
        Arc::new(Self { source, store, tls, token: Mutex::new(None) })
    }

    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<()> {
        loop {
            match self.pass().await {
                Ok(0) => {}
                Ok(made) => tracing::info!(made, "monthly statements delivered"),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "monthly statements: again at the next pass"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(self.source.poll) => {}
            }
        }
    }

    /// Makes the statements of the month that ended last and are not made yet.
    async fn pass(&self) -> Result<usize> {
        let now = Utc::now() + self.source.clock_offset;
        let period = Period::ended_before(now);
        if now < period.to + self.source.grace {
            return Ok(0);
        }
        let due = self.store.statements_due(&period, PASS).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let mut query = AccountQueryServiceClient::new(self.channel(&self.source.query_url).await?);
        let token = self.token().await?;
        let mut made = 0;
        for account in due {
            let mut req = tonic::Request::new(pb::GetStatementRequest {
                account_id: account.to_string(),
                from_time: timestamp(period.from),
                to_time: timestamp(period.to),
                ..Default::default()
            });
            req.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
            match query.get_statement(req).await {
                Ok(statement) => {
                    made += usize::from(self.store.statement_made(account, &period, &statement.into_inner()).await?)
                }
                // Not in the read model yet: the next pass asks again.
                Err(s) if s.code() == tonic::Code::NotFound => {
                    tracing::debug!(%account, "statement: account not in the read model yet");
                }
                Err(s) => {
                    // A token refused (expired early, keys rotated): a new one next time.
                    if s.code() == tonic::Code::Unauthenticated {
                        *self.token.lock().await = None;
                    }
                    return Err(anyhow::anyhow!("GetStatement: {} {}", s.code(), s.message()));
                }
            }
        }
        Ok(made)
    }

    /// A channel to the first of `urls` (comma-separated: every instance)
    /// that answers.
    async fn channel(&self, urls: &str) -> Result<Channel> {
        let mut last = anyhow::anyhow!("no URL in {urls:?}");
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            let mut endpoint = Endpoint::from_shared(url.to_owned())?.connect_timeout(Duration::from_secs(5));
            if let Some(tls) = &self.tls {
                let host = url::Url::parse(url)?.host_str().context("a host in the URL")?.to_owned();
                endpoint = endpoint.tls_config(tls.grpc_client(&host))?;
            }
            match endpoint.connect().await {
                Ok(channel) => return Ok(channel),
                Err(e) => last = anyhow::anyhow!("{url}: {e}"),
            }
        }
        Err(last)
    }

    /// The service token, fetched again a minute before it runs out.
    async fn token(&self) -> Result<String> {
        let (auth_url, client_id, secret) = match &self.source.credentials {
            Credentials::Token(t) => return Ok(t.clone()),
            Credentials::Client { auth_url, client_id, secret } => (auth_url, client_id, secret),
        };
        let mut cached = self.token.lock().await;
        if let Some((token, renew_at)) = cached.as_ref()
            && Utc::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let mut auth = AuthServiceClient::new(self.channel(auth_url).await?);
        let req = pb::IssueServiceTokenRequest { client_id: client_id.clone(), client_secret: secret.clone() };
        let issued = auth
            .issue_service_token(req)
            .await
            .map_err(|s| anyhow::anyhow!("IssueServiceToken: {} {}", s.code(), s.message()))?;
        let issued = issued.into_inner();
        let expires = issued.access_token_expires_at.and_then(|t| DateTime::from_timestamp(t.seconds, 0));
        let renew_at = expires.map_or_else(Utc::now, |e| e - chrono::Duration::seconds(60));
        tracing::debug!(subject = %issued.subject, "a service token for statements");
        *cached = Some((issued.access_token.clone(), renew_at));
        Ok(issued.access_token)
    }
}

fn timestamp(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: t.timestamp(), nanos: 0 })
}

/// What the notification of a statement says: its figures, and the signed
/// statement itself, to be checked offline.
pub fn statement_body(account: uuid::Uuid, period: &Period, s: &pb::Statement) -> String {
    let money =
        |m: &Option<pb::Money>| m.as_ref().map(|m| format!("{} {}", m.amount, m.currency_code)).unwrap_or_default();
    format!(
        "Your statement of account {account} for {}: opening {}, {} in, {} out, closing {}, {} entries. \
         It is signed by the bank: save the text below as a file and check it with bank-statement-verify \
         against GET /v1/statement-keys.\n\n{}",
        period.name,
        money(&s.opening_balance),
        money(&s.total_credits),
        money(&s.total_debits),
        money(&s.closing_balance),
        s.entries.len(),
        s.signed_statement
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_month_that_ended_last_is_the_one_before_nows_in_utc() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let nov = Period::ended_before(at("2026-12-08T10:00:00Z"));
        assert_eq!(
            (nov.name.as_str(), nov.from, nov.to),
            ("2026-11", at("2026-11-01T00:00:00Z"), at("2026-12-01T00:00:00Z"))
        );
        assert_eq!(nov.title(), "November 2026");
        let dec = Period::ended_before(at("2027-01-01T00:00:00Z"));
        assert_eq!(
            (dec.name.as_str(), dec.from, dec.to),
            ("2026-12", at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))
        );
        let feb = Period::ended_before(at("2028-03-31T23:59:59Z"));
        assert_eq!((feb.from, feb.to), (at("2028-02-01T00:00:00Z"), at("2028-03-01T00:00:00Z")));
    }
}
