//! The Postgres adapter: users and refresh-token families. Every statement
//! is checked against the schema at compile time (`.sqlx/`).

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::{credentials::Authenticated, error::AuthError};

#[derive(Debug, Clone)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub full_name: String,
    pub password_hash: String,
    pub status: String,
    pub roles: Vec<String>,
    pub created_at: DateTime<Utc>,
    /// The sequence number of the user's last standing change (0: none).
    pub standing_seq: i64,
    /// A confirmed second factor: every login needs a code.
    pub second_factor: bool,
}

/// Adds `role` to the user's roles (once); false when there is no such user.
pub async fn grant_role(db: &PgPool, id: Uuid, role: &str) -> sqlx::Result<bool> {
    let r = sqlx::query!(
        "UPDATE users SET roles = array_append(array_remove(roles, $2), $2), updated_at = now() WHERE id = $1",
        id,
        role
    )
    .execute(db)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Removes `role` from the user's roles; false when there is no such user.
pub async fn revoke_role(db: &PgPool, id: Uuid, role: &str) -> sqlx::Result<bool> {
    let r =
        sqlx::query!("UPDATE users SET roles = array_remove(roles, $2), updated_at = now() WHERE id = $1", id, role)
            .execute(db)
            .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn insert_user(db: &PgPool, user: &User) -> Result<bool, AuthError> {
    let inserted = sqlx::query!(
        "INSERT INTO users (id, email, full_name, password_hash, status, roles) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (email) DO NOTHING",
        user.id,
        user.email,
        user.full_name,
        user.password_hash,
        user.status,
        &user.roles
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Makes sure the bootstrap admin exists, is an admin and is active; an
/// existing user's password is left alone. Safe when instances race.
/// Creates the bootstrap admin unless a user with its email exists. An
/// existing user is never changed: not promoted (whoever registered the
/// address first would become admin with their own password), not
/// reactivated (an admin suspended by another stays suspended). Returns
/// whether that existing user is an admin.
pub async fn ensure_admin(db: &PgPool, user: &User) -> Result<bool, AuthError> {
    sqlx::query!(
        "INSERT INTO users (id, email, full_name, password_hash, status, roles)
         VALUES ($1, $2, $3, $4, 'ACTIVE', ARRAY['admin'])
         ON CONFLICT (email) DO NOTHING",
        user.id,
        user.email,
        user.full_name,
        user.password_hash
    )
    .execute(db)
    .await?;
    let roles = sqlx::query_scalar!("SELECT roles FROM users WHERE email = $1", user.email).fetch_one(db).await?;
    Ok(roles.iter().any(|r| r == bank_platform::auth::ROLE_ADMIN))
}

pub async fn set_password(db: &mut PgConnection, id: Uuid, hash: &str) -> Result<(), AuthError> {
    sqlx::query!("UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1", id, hash).execute(db).await?;
    Ok(())
}

pub async fn user_by_email(db: &PgPool, email: &str) -> Result<Option<User>, AuthError> {
    Ok(sqlx::query_as!(
        User,
        r#"SELECT id, email, full_name, password_hash, status, roles, created_at, standing_seq,
               EXISTS (SELECT 1 FROM second_factors f WHERE f.user_id = users.id AND f.confirmed_at IS NOT NULL)
                   AS "second_factor!"
           FROM users WHERE email = $1"#,
        email
    )
    .fetch_optional(db)
    .await?)
}

pub async fn user_by_id(db: impl sqlx::PgExecutor<'_>, id: Uuid) -> Result<Option<User>, AuthError> {
    Ok(sqlx::query_as!(
        User,
        r#"SELECT id, email, full_name, password_hash, status, roles, created_at, standing_seq,
               EXISTS (SELECT 1 FROM second_factors f WHERE f.user_id = users.id AND f.confirmed_at IS NOT NULL)
                   AS "second_factor!"
           FROM users WHERE id = $1"#,
        id
    )
    .fetch_optional(db)
    .await?)
}

pub async fn set_status(db: &mut PgConnection, id: Uuid, status: &str) -> Result<(), AuthError> {
    sqlx::query!("UPDATE users SET status = $2, updated_at = now() WHERE id = $1", id, status).execute(db).await?;
    Ok(())
}

pub async fn insert_refresh(
    db: &mut PgConnection,
    hash: &[u8],
    family: Uuid,
    user: Uuid,
    expires_at: DateTime<Utc>,
    how: &Authenticated,
) -> Result<(), AuthError> {
    sqlx::query!(
        "INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at, amr, auth_time)
         VALUES ($1, $2, $3, $4, $5, $6)",
        hash,
        family,
        user,
        expires_at,
        &how.amr,
        how.at
    )
    .execute(db)
    .await?;
    Ok(())
}

pub enum Spend {
    /// This call spent it: (user, family, how the session was started).
    Spent(Uuid, Uuid, Authenticated),
    /// It had been spent before: a replay. The family to revoke.
    Reused(Uuid),
    /// Unknown, expired or revoked.
    Invalid,
}

/// Spends a refresh token atomically: of two concurrent callers exactly one wins.
pub async fn spend_refresh(db: &mut PgConnection, hash: &[u8]) -> Result<Spend, AuthError> {
    let spent = sqlx::query!(
        "UPDATE refresh_tokens SET spent_at = now()
         WHERE token_hash = $1 AND spent_at IS NULL AND revoked_at IS NULL AND expires_at > now()
         RETURNING user_id, family_id, amr, auth_time",
        hash
    )
    .fetch_optional(&mut *db)
    .await?;
    if let Some(s) = spent {
        return Ok(Spend::Spent(s.user_id, s.family_id, Authenticated { amr: s.amr, at: s.auth_time }));
    }
    let prior = sqlx::query!("SELECT family_id, spent_at FROM refresh_tokens WHERE token_hash = $1", hash)
        .fetch_optional(db)
        .await?;
    Ok(match prior {
        Some(p) if p.spent_at.is_some() => Spend::Reused(p.family_id),
        _ => Spend::Invalid,
    })
}

pub async fn revoke_family(db: impl sqlx::PgExecutor<'_>, family: Uuid) -> Result<(), AuthError> {
    sqlx::query!("UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL", family)
        .execute(db)
        .await?;
    Ok(())
}

pub async fn family_of(db: &PgPool, hash: &[u8]) -> Result<Option<Uuid>, AuthError> {
    Ok(sqlx::query_scalar!("SELECT family_id FROM refresh_tokens WHERE token_hash = $1", hash)
        .fetch_optional(db)
        .await?)
}

pub async fn revoke_user(db: &mut PgConnection, user: Uuid) -> Result<(), AuthError> {
    sqlx::query!("UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL", user)
        .execute(db)
        .await?;
    Ok(())
}

/// A user's second factor, as stored.
pub struct Factor {
    /// The TOTP seed, sealed (`bank_platform::sealed`), base64 inside.
    pub seed: String,
    pub confirmed: bool,
    /// The newest time step a code was taken for.
    pub last_step: i64,
}

/// The user's second factor, locked until the transaction ends (two logins
/// with one code: the second waits, then finds its step taken).
pub async fn factor_for_update(db: &mut PgConnection, user: Uuid) -> Result<Option<Factor>, AuthError> {
    Ok(sqlx::query_as!(
        Factor,
        r#"SELECT seed, confirmed_at IS NOT NULL AS "confirmed!", last_step FROM second_factors
           WHERE user_id = $1 FOR UPDATE"#,
        user
    )
    .fetch_optional(db)
    .await?)
}

/// Stores a new seed waiting for confirmation (replacing one that waits);
/// false when a confirmed one exists.
pub async fn put_pending_factor(db: &PgPool, user: Uuid, seed: &str) -> Result<bool, AuthError> {
    let put = sqlx::query!(
        "INSERT INTO second_factors (user_id, seed) VALUES ($1, $2)
         ON CONFLICT (user_id) DO UPDATE SET seed = EXCLUDED.seed, last_step = 0, created_at = now()
         WHERE second_factors.confirmed_at IS NULL",
        user,
        seed
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(put == 1)
}

/// The code for `step` was taken: no code of it or before is good again.
pub async fn take_step(db: &mut PgConnection, user: Uuid, step: i64) -> Result<(), AuthError> {
    sqlx::query!("UPDATE second_factors SET last_step = $2 WHERE user_id = $1", user, step).execute(db).await?;
    Ok(())
}

/// Spends an unused recovery code; whether there was one.
pub async fn spend_recovery(db: &mut PgConnection, user: Uuid, hash: &[u8]) -> Result<bool, AuthError> {
    let spent = sqlx::query!(
        "UPDATE recovery_codes SET used_at = now() WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
        user,
        hash
    )
    .execute(db)
    .await?
    .rows_affected();
    Ok(spent == 1)
}

/// Confirms the user's second factor, with fresh recovery codes.
pub async fn confirm_factor(db: &mut PgConnection, user: Uuid, recovery: &[Vec<u8>]) -> Result<(), AuthError> {
    sqlx::query!("UPDATE second_factors SET confirmed_at = now() WHERE user_id = $1", user).execute(&mut *db).await?;
    sqlx::query!("DELETE FROM recovery_codes WHERE user_id = $1", user).execute(&mut *db).await?;
    sqlx::query!(
        "INSERT INTO recovery_codes (user_id, code_hash) SELECT $1, h FROM UNNEST($2::bytea[]) AS h",
        user,
        recovery
    )
    .execute(db)
    .await?;
    Ok(())
}

pub async fn delete_factor(db: &mut PgConnection, user: Uuid) -> Result<(), AuthError> {
    sqlx::query!("DELETE FROM recovery_codes WHERE user_id = $1", user).execute(&mut *db).await?;
    sqlx::query!("DELETE FROM second_factors WHERE user_id = $1", user).execute(db).await?;
    Ok(())
}
