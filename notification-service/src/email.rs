//! Email: the outbox of messages written with the notifications (one per
//! notification, for users who enabled it), sent through the bank's mail
//! server (`SMTP_URL`) at least once, with the webhooks' backoff, dead after
//! the last attempt. The Message-ID is the notification's, so a mail client
//! shows a message sent twice once.

use std::{str::FromStr, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use bank_platform::CancellationToken;
use chrono::Utc;
use lettre::{
    Address, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
};
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::webhook::Policy;

/// Longest address taken (RFC 5321's path limit).
pub const MAX_ADDRESS: usize = 254;

/// Whether `text` is an address mail can be sent to.
pub fn address(text: &str) -> Result<Address, String> {
    if text.len() > MAX_ADDRESS || text.chars().any(char::is_control) {
        return Err(format!("must be an email address of at most {MAX_ADDRESS} characters"));
    }
    Address::from_str(text).map_err(|_| "is not an email address".to_owned())
}

pub struct Mailer {
    pool: PgPool,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    policy: Policy,
    wake: Arc<Notify>,
}

/// Messages claimed at once.
const BATCH: i64 = 16;

struct Claimed {
    id: Uuid,
    notification_id: Uuid,
    to_address: String,
    subject: String,
    body: String,
    attempts: i32,
}

impl Mailer {
    pub fn new(pool: PgPool, smtp_url: &str, from: &str, policy: Policy, wake: Arc<Notify>) -> Result<Arc<Self>> {
        // The URL is not repeated in an error: it may carry a password.
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp_url)
            .context("SMTP_URL is not a mail server URL (smtp://, smtps://)")?
            .timeout(Some(policy.timeout))
            .build();
        let from = Mailbox::from_str(from).context("MAIL_FROM is not a mailbox")?;
        Ok(Arc::new(Self { pool, transport, from, policy, wake }))
    }

    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<()> {
        loop {
            match self.claim().await {
                Ok(claimed) => {
                    for m in claimed {
                        if let Err(e) = self.send(m).await {
                            tracing::warn!(error = %e, "recording an email attempt failed; it is tried again");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "claiming emails failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = self.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    async fn claim(&self) -> Result<Vec<Claimed>> {
        let until = Utc::now() + chrono::Duration::from_std(self.policy.timeout + Duration::from_secs(30))?;
        let rows = sqlx::query_as!(
            Claimed,
            "UPDATE email_deliveries SET leased_until = $1
             WHERE id IN (SELECT id FROM email_deliveries
                          WHERE state = 'PENDING' AND next_attempt_at <= now()
                            AND (leased_until IS NULL OR leased_until < now())
                          ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING id, notification_id, to_address, subject, body, attempts",
            until,
            BATCH
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    async fn send(&self, m: Claimed) -> Result<()> {
        let outcome: Result<(), (String, bool)> = match address(&m.to_address) {
            // An address that cannot take mail never will: no retry.
            Err(why) => Err((format!("the address {why}"), true)),
            Ok(to) => {
                let message = Message::builder()
                    .from(self.from.clone())
                    .to(Mailbox::new(None, to))
                    .subject(m.subject.clone())
                    .message_id(Some(format!("<{}@bankmesh>", m.notification_id)))
                    .header(ContentType::TEXT_PLAIN)
                    .body(m.body.clone());
                match message {
                    Err(e) => Err((format!("the message could not be built: {e}"), true)),
                    Ok(message) => self.transport.send(message).await.map(|_| ()).map_err(|e| {
                        (if e.is_timeout() { "timed out".to_owned() } else { e.to_string() }, e.is_permanent())
                    }),
                }
            }
        };
        let now = Utc::now();
        let attempts = m.attempts + 1;
        let (state, error, next) = match outcome {
            Ok(()) => ("SENT", None, now),
            Err((error, permanent)) => {
                let dead = permanent || attempts as u32 >= self.policy.max_attempts;
                let next = now + chrono::Duration::from_std(self.policy.backoff(attempts as u32))?;
                (if dead { "DEAD" } else { "PENDING" }, Some(error), next)
            }
        };
        sqlx::query!(
            "UPDATE email_deliveries
             SET state = $2, attempts = $3, last_error = $4, next_attempt_at = $5, leased_until = NULL,
                 sent_at = CASE WHEN $2 = 'SENT' THEN $6 ELSE sent_at END
             WHERE id = $1",
            m.id,
            state,
            attempts,
            error,
            next,
            now
        )
        .execute(&self.pool)
        .await?;
        tracing::info!(email = %m.id, attempts, state, "email attempt");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_mail_can_go_to_are_taken() {
        assert!(address("ada@example.com").is_ok());
        for bad in ["", "ada", "ada@", "@example.com", "ada@exa mple.com", "a\r\nBcc: eve@example.com"] {
            assert!(address(bad).is_err(), "{bad:?}");
        }
        assert!(address(&format!("{}@example.com", "a".repeat(250))).is_err());
    }
}
