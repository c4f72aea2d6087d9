//! Partitions shared among projector instances by leases in the read
//! database. Every instance renews its membership and its leases
//! each second; a lease lasts `LEASE_TTL`. Each instance holds its fair share
//! (the partitions over the live members, rounded up): it claims free or
//! expired partitions up to it and releases what is over it, so a second
//! instance takes half the work within a second or two, and when one dies the
//! others take its partitions once its leases expire.
//!
//! Leases spread the work; they are not what keeps the read models right.
//! Two instances briefly consuming one partition (a paused holder waking up
//! after its lease expired) apply each event at most once all the same: the
//! apply path takes each account's row lock and applies only the next
//! version (`fold`), so the lease needs no fencing.

use std::time::Duration;

use sqlx::PgPool;

/// How long a lease or a membership lasts unless renewed.
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// How often they are renewed.
pub const RENEW_EVERY: Duration = Duration::from_secs(1);

/// What an instance does with its leases this round.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// How many free partitions to claim.
    pub claim: usize,
    /// Which held partitions to hand back.
    pub release: Vec<u32>,
}

/// The fair share of `partitions` among `live` members, rounded up.
pub fn share(partitions: u32, live: usize) -> usize {
    (partitions as usize).div_ceil(live.max(1))
}

/// Given the partitions an instance holds and the live members: claim up to
/// the share, release the highest-numbered ones over it.
pub fn plan(held: &[u32], partitions: u32, live: usize) -> Plan {
    let target = share(partitions, live);
    let mut sorted = held.to_vec();
    sorted.sort_unstable();
    if sorted.len() > target {
        Plan { claim: 0, release: sorted.split_off(target) }
    } else {
        Plan { claim: target - sorted.len(), release: Vec::new() }
    }
}

/// The lease table of one read database, as one member.
pub struct Leases {
    pool: PgPool,
    member: String,
    partitions: u32,
}

impl Leases {
    /// Makes the partition rows (once) and names this instance.
    #[tracing::instrument(skip_all, fields(partitions = partitions), err)]
    pub async fn new(pool: PgPool, partitions: u32) -> sqlx::Result<Self> {
        sqlx::query!(
            "INSERT INTO projector_partitions (partition) SELECT generate_series(0, $1 - 1) ON CONFLICT DO NOTHING",
            partitions as i32,
        )
        .execute(&pool)
        .await?;
        let member = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        Ok(Self { pool, member, partitions })
    }

    pub fn member(&self) -> &str {
        &self.member
    }

    /// One round: renew membership and leases, then claim or release to the
    /// fair share. Returns the partitions held now and those to stop.
    /// `stop_first` is awaited with the partitions about to be released, so
    /// their consumers stop before anyone else may start them.
    #[tracing::instrument(level = "debug", skip_all, fields(member = %self.member), err(level = "debug"))]
    pub async fn round<F, Fut>(&self, stop_first: F) -> sqlx::Result<Vec<u32>>
    where
        F: FnOnce(Vec<u32>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let ttl = LEASE_TTL.as_secs_f64();
        sqlx::query!(
            "INSERT INTO projector_members (member, expires_at) VALUES ($1, now() + make_interval(secs => $2))
             ON CONFLICT (member) DO UPDATE SET expires_at = excluded.expires_at",
            self.member,
            ttl,
        )
        .execute(&self.pool)
        .await?;
        sqlx::query!("DELETE FROM projector_members WHERE expires_at < now() - interval '1 minute'")
            .execute(&self.pool)
            .await?;
        let live: i64 =
            sqlx::query_scalar!(r#"SELECT count(*) AS "live!" FROM projector_members WHERE expires_at > now()"#)
                .fetch_one(&self.pool)
                .await?;
        let mut held: Vec<u32> = sqlx::query_scalar!(
            "UPDATE projector_partitions SET expires_at = now() + make_interval(secs => $2)
             WHERE holder = $1 AND expires_at > now() RETURNING partition",
            self.member,
            ttl,
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|p| p as u32)
        .collect();
        let plan = plan(&held, self.partitions, live as usize);
        if !plan.release.is_empty() {
            stop_first(plan.release.clone()).await;
            sqlx::query!(
                "UPDATE projector_partitions SET holder = NULL, expires_at = '-infinity'
                 WHERE holder = $1 AND partition = ANY($2)",
                self.member,
                &plan.release.iter().map(|p| *p as i32).collect::<Vec<_>>(),
            )
            .execute(&self.pool)
            .await?;
            held.retain(|p| !plan.release.contains(p));
        }
        if plan.claim > 0 {
            let claimed: Vec<i32> = sqlx::query_scalar!(
                "UPDATE projector_partitions SET holder = $1, expires_at = now() + make_interval(secs => $2)
                 WHERE partition IN (
                     SELECT partition FROM projector_partitions
                     WHERE holder IS NULL OR expires_at <= now()
                     ORDER BY partition LIMIT $3 FOR UPDATE SKIP LOCKED)
                 RETURNING partition",
                self.member,
                ttl,
                plan.claim as i64,
            )
            .fetch_all(&self.pool)
            .await?;
            held.extend(claimed.into_iter().map(|p| p as u32));
        }
        held.sort_unstable();
        Ok(held)
    }

    /// At shutdown: hand everything back at once, so the others need not
    /// wait for the leases to expire.
    #[tracing::instrument(skip_all, fields(member = %self.member))]
    pub async fn leave(&self) {
        let _ = sqlx::query!(
            "UPDATE projector_partitions SET holder = NULL, expires_at = '-infinity' WHERE holder = $1",
            self.member,
        )
        .execute(&self.pool)
        .await;
        let _ = sqlx::query!("DELETE FROM projector_members WHERE member = $1", self.member).execute(&self.pool).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alone_an_instance_claims_every_partition() {
        assert_eq!(plan(&[], 8, 1), Plan { claim: 8, release: vec![] });
    }

    #[test]
    fn when_a_second_instance_arrives_the_first_hands_back_half() {
        assert_eq!(plan(&[0, 1, 2, 3, 4, 5, 6, 7], 8, 2), Plan { claim: 0, release: vec![4, 5, 6, 7] });
        assert_eq!(plan(&[], 8, 2), Plan { claim: 4, release: vec![] });
    }

    #[test]
    fn when_the_other_instance_dies_the_survivor_claims_the_rest() {
        assert_eq!(plan(&[0, 1, 2, 3], 8, 1), Plan { claim: 4, release: vec![] });
    }

    #[test]
    fn shares_round_up_so_every_partition_has_room() {
        assert_eq!(share(8, 3), 3);
        assert_eq!(plan(&[5, 1, 3, 7], 8, 3), Plan { claim: 0, release: vec![7] });
        assert_eq!(share(8, 0), 8);
    }
}
