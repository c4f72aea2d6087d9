//! Expires holds at their deadline. The schedule is the `holds` table itself
//! (open holds by `expires_at`), so it survives restarts, and every instance
//! runs this loop: each due hold is expired through the ledger like any
//! command, under the bank's idempotency key `expire:<hold>` and its source
//! account's lock, so two instances (or a retry after a crash) expire it once.

use std::{sync::Arc, time::Duration};

use bank_domain::ledger::{BANK, Command};
use bank_platform::{CancellationToken, auth::Caller};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{error::CommandError, ledger::Ledger, validate::IdempotencyKey};

pub struct HoldExpiry {
    pub pool: PgPool,
    pub ledger: Arc<Ledger>,
    /// How often due holds are looked for: the most an expiry runs late.
    pub poll: Duration,
}

/// Most holds expired per pass; the next pass takes the rest at once.
const PASS: i64 = 256;

impl HoldExpiry {
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let bank = Caller {
            user_id: BANK,
            roles: Vec::new(),
            status: "ACTIVE".into(),
            expires_at: None,
            standing_version: 0,
            second_factor_at: None,
        };
        loop {
            // Cancellable mid-pass: a pass waiting on a database that is going
            // away must not hold up shutdown (an interrupted expiry rolls back).
            let pass = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                p = self.pass(&bank) => p,
            };
            let full = match pass {
                Ok(n) => n as i64 == PASS,
                Err(e) => {
                    tracing::warn!(error = %e, "hold expiry pass failed; retrying");
                    false
                }
            };
            if !full {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(self.poll) => {}
                }
            } else if shutdown.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// Expires the holds due now; returns how many were due.
    #[tracing::instrument(skip_all, err(level = "info"))]
    async fn pass(&self, bank: &Caller) -> Result<usize, CommandError> {
        let due: Vec<Uuid> = sqlx::query_scalar!(
            "SELECT id FROM holds WHERE state = 'OPEN' AND expires_at <= $1 ORDER BY expires_at LIMIT $2",
            crate::execute::now(),
            PASS
        )
        .fetch_all(&self.pool)
        .await?;
        for hold in &due {
            let key = IdempotencyKey::parse(&format!("expire:{hold}"))?;
            let hash = hold.as_bytes().to_vec();
            match self
                .ledger
                .run::<bank_proto::v1::HoldResponse>(
                    bank,
                    "ExpireHold",
                    &key,
                    &hash,
                    Command::ExpireHold { hold: *hold },
                )
                .await
            {
                Ok(_) => tracing::info!(%hold, "hold expired"),
                // Captured or voided just before, or expired by another
                // instance: it ended once, elsewhere.
                Err(e) => tracing::debug!(%hold, error = %e, "hold not expired by this pass"),
            }
        }
        Ok(due.len())
    }
}
