//! The AuthService gRPC adapter.

use std::{net::SocketAddr, sync::Arc};

use bank_platform::auth::{Caller, TokenSigner, caller};
use bank_proto::v1::{self as pb, auth_service_server::AuthService};
use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    credentials::{self, Authenticated, blocking},
    error::AuthError,
    second_factor::{self, Totp},
    service_clients::ServiceClients,
    store::{self, Spend, User},
    throttle::LoginThrottle,
    validate,
};

pub struct Settings {
    pub issuer: String,
    pub audience: String,
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub trust_forwarded_for: bool,
    /// Over mutual TLS, x-forwarded-for counts only from a client whose
    /// certificate carries this name (Envoy's: `EDGE_CERT_NAME`).
    pub edge_cert_name: String,
}

pub struct AuthApi {
    pub db: PgPool,
    pub signer: TokenSigner,
    pub throttle: LoginThrottle,
    /// Client-credential failures: per (address, client), so a stranger who
    /// guesses at a client's id locks out only their own address.
    pub client_throttle: LoginThrottle,
    /// Registrations per client address (each costs an argon2 hash).
    pub register_throttle: LoginThrottle,
    /// Second-factor codes per user: a few wrong ones, then none for a while.
    pub code_throttle: LoginThrottle,
    /// How second-factor seeds are stored (sealed under the service's key).
    pub totp_secrets: bank_platform::sealed::Secrets,
    pub settings: Settings,
    /// Verified against when the email is unknown, so both failures cost the same.
    pub dummy_hash: Arc<String>,
    pub service_clients: Arc<ServiceClients>,
    /// Suspensions and revocations answer once the enforcing services hold them.
    pub barrier: Arc<crate::barrier::StandingBarrier>,
}

fn role_proto(role: &str) -> pb::Role {
    match role {
        bank_platform::auth::ROLE_ADMIN => pb::Role::Admin,
        bank_platform::auth::ROLE_TELLER => pb::Role::Teller,
        bank_platform::auth::ROLE_SERVICE => pb::Role::Service,
        _ => pb::Role::Customer,
    }
}

/// The one role an admin may grant or revoke.
fn grantable(role: i32) -> Result<&'static str, AuthError> {
    match pb::Role::try_from(role) {
        Ok(pb::Role::Teller) => Ok(bank_platform::auth::ROLE_TELLER),
        _ => Err(bank_domain::InputError::new("role", "only ROLE_TELLER can be granted or revoked").into()),
    }
}

fn timestamp(t: DateTime<Utc>) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: t.timestamp(), nanos: t.timestamp_subsec_nanos() as i32 })
}

fn user_proto(u: &User) -> pb::User {
    let status = match u.status.as_str() {
        "PENDING_KYC" => pb::UserStatus::PendingKyc,
        "ACTIVE" => pb::UserStatus::Active,
        "SUSPENDED" => pb::UserStatus::Suspended,
        _ => pb::UserStatus::Unspecified,
    };
    pb::User {
        user_id: u.id.to_string(),
        email: u.email.clone(),
        full_name: u.full_name.clone(),
        status: status as i32,
        roles: credentials::role_claims(&u.roles).iter().map(|r| role_proto(r) as i32).collect(),
        created_at: timestamp(u.created_at),
        second_factor_enabled: u.second_factor,
    }
}

/// The address throttling counts against: the peer's, or behind the edge
/// (`trust_forwarded_for`) the entry Envoy appended to x-forwarded-for
/// (use_remote_address): the rightmost. Anything left of it is what the
/// client claimed, and counts for nothing.
fn client_address(forwarded: Option<&str>, trust_forwarded_for: bool, peer: Option<SocketAddr>) -> String {
    let edge_seen = forwarded.and_then(|v| v.rsplit(',').next()).map(str::trim).filter(|s| !s.is_empty());
    match edge_seen.filter(|_| trust_forwarded_for) {
        Some(address) => address.to_owned(),
        None => peer.map(|a| a.ip().to_string()).unwrap_or_else(|| "unknown".into()),
    }
}

impl AuthApi {
    fn client_address<T>(&self, req: &Request<T>) -> String {
        let forwarded = req.metadata().get("x-forwarded-for").and_then(|v| v.to_str().ok());
        // Without TLS (loopback, tests) the setting alone decides; with it,
        // only the edge may say where a call came from.
        let from_edge = match req.peer_certs() {
            None => true,
            Some(chain) => {
                chain.first().is_some_and(|c| bank_platform::tls::certificate_names(c, &self.settings.edge_cert_name))
            }
        };
        client_address(forwarded, self.settings.trust_forwarded_for && from_edge, req.remote_addr())
    }

    /// A new access token plus a refresh token in `family`, stored in `tx`.
    async fn issue(
        &self,
        tx: &mut sqlx::PgConnection,
        user: &User,
        family: Uuid,
        how: &Authenticated,
    ) -> Result<pb::LoginResponse, AuthError> {
        let s = &self.settings;
        let access = credentials::access_token(
            &self.signer,
            &s.issuer,
            &s.audience,
            s.access_ttl,
            credentials::Holder {
                id: user.id,
                roles: &user.roles,
                status: &user.status,
                standing_seq: user.standing_seq,
            },
            how,
        )?;
        let refresh = credentials::new_refresh_token();
        let refresh_expires = Utc::now() + s.refresh_ttl;
        store::insert_refresh(tx, &credentials::refresh_hash(&refresh), family, user.id, refresh_expires, how).await?;
        Ok(pb::LoginResponse {
            access_token: access.token,
            access_token_expires_at: timestamp(access.expires_at),
            refresh_token: refresh,
            refresh_token_expires_at: timestamp(refresh_expires),
            token_type: "Bearer".into(),
            user: Some(user_proto(user)),
        })
    }

    async fn admin_target(&self, caller: &Caller, user_id: &str) -> Result<Uuid, AuthError> {
        if !caller.is_admin() {
            return Err(AuthError::NotAdmin);
        }
        Uuid::try_parse(user_id).map_err(|_| bank_domain::InputError::new("user_id", "must be a UUID").into())
    }

    async fn register(&self, r: pb::RegisterRequest, address: &str) -> Result<pb::User, AuthError> {
        // Every attempt counts against the address, valid or not, before any work.
        if self.register_throttle.check("", address).await? {
            return Err(AuthError::RegistrationThrottled);
        }
        let email = validate::email(&r.email);
        let mut violations = Vec::new();
        if let Err(e) = validate::password(&r.password, email.as_deref().ok()) {
            violations.push(e);
        }
        let name = validate::full_name(&r.full_name);
        let (email, name) = match (email, name) {
            (Ok(e), Ok(n)) if violations.is_empty() => (e, n),
            (e, n) => {
                violations.extend(e.err());
                violations.extend(n.err());
                return Err(AuthError::Invalid(violations));
            }
        };
        // Checked before hashing: a taken address costs no argon2 work. (The
        // insert below still settles a race between two registrations.)
        if store::user_by_email(&self.db, &email).await?.is_some() {
            return Err(AuthError::EmailTaken);
        }
        let password = r.password.clone();
        let hash = blocking(move || credentials::hash_password(&password)).await??;
        let user = User {
            id: Uuid::now_v7(),
            email,
            full_name: name,
            password_hash: hash,
            status: "PENDING_KYC".into(),
            roles: vec!["customer".into()],
            created_at: Utc::now(),
            standing_seq: 0,
            second_factor: false,
        };
        if !store::insert_user(&self.db, &user).await? {
            return Err(AuthError::EmailTaken);
        }
        tracing::info!(user_id = %user.id, "customer registered");
        Ok(user_proto(&user))
    }

    async fn login(
        &self,
        email: &str,
        password: String,
        code: &str,
        address: &str,
    ) -> Result<pb::LoginResponse, AuthError> {
        // Unparseable emails still count against the address and fail the same way.
        let email = validate::email(email).unwrap_or_else(|_| email.trim().to_lowercase());
        if self.throttle.check(&email, address).await? {
            return Err(AuthError::Throttled);
        }
        let user = store::user_by_email(&self.db, &email).await?;
        let hash = user.as_ref().map_or_else(|| self.dummy_hash.as_ref().clone(), |u| u.password_hash.clone());
        let ok = blocking(move || credentials::verify_password(&password, &hash)).await?;
        let user = match (ok, user) {
            (true, Some(u)) => u,
            _ => {
                self.throttle.record_failure(&email).await?;
                return Err(AuthError::InvalidCredentials);
            }
        };
        self.throttle.record_success(&email, Some(address)).await?;
        if user.status == "SUSPENDED" {
            return Err(AuthError::Suspended);
        }
        let mut tx = self.db.begin().await?;
        if user.second_factor {
            let code = code.trim();
            if code.is_empty() {
                return Err(AuthError::SecondFactorRequired);
            }
            let factor = store::factor_for_update(&mut tx, user.id).await?.ok_or(AuthError::SecondFactorRequired)?;
            self.take_code(&mut tx, &user, &factor, code, address, true).await?;
        }
        let res = self.issue(&mut tx, &user, Uuid::now_v7(), &Authenticated::now(user.second_factor)).await?;
        tx.commit().await?;
        Ok(res)
    }

    /// Takes `code` for the user's second factor (locked in `tx`): a TOTP
    /// code of a step after the last one taken, or (where `recovery`) an
    /// unused recovery code. A few wrong codes per user, then none are
    /// tried for a while, whoever sends them from wherever.
    async fn take_code(
        &self,
        tx: &mut sqlx::PgConnection,
        user: &User,
        factor: &store::Factor,
        code: &str,
        address: &str,
        recovery: bool,
    ) -> Result<(), AuthError> {
        let key = format!("user {}", user.id);
        if self.code_throttle.check(&key, &format!("{key} {address}")).await? {
            return Err(AuthError::SecondFactorThrottled);
        }
        let now = Utc::now().timestamp().max(0) as u64;
        let step = self.totp(user, factor)?.step_of(code, now, factor.last_step);
        let taken = match step {
            Some(step) => {
                store::take_step(tx, user.id, step).await?;
                true
            }
            None if recovery && !second_factor::is_totp_code(code) => {
                store::spend_recovery(tx, user.id, &second_factor::recovery_hash(code)).await?
            }
            None => false,
        };
        if !taken {
            self.code_throttle.record_failure(&key).await?;
            return Err(AuthError::SecondFactorInvalid);
        }
        self.code_throttle.record_success(&key, None).await?;
        Ok(())
    }

    fn totp(&self, user: &User, factor: &store::Factor) -> Result<Totp, AuthError> {
        use base64::Engine;
        let seed = self.totp_secrets.open(user.id, &factor.seed)?;
        let seed = base64::engine::general_purpose::STANDARD
            .decode(seed)
            .map_err(|e| AuthError::Internal(anyhow::anyhow!("a stored TOTP seed is not base64: {e}")))?;
        Ok(Totp::new(seed, &user.email)?)
    }

    /// The caller as a user who may have a second factor (a service may not).
    async fn person(&self, caller: &Caller) -> Result<User, AuthError> {
        if caller.is_service() {
            return Err(AuthError::ServiceHasNoSecondFactor);
        }
        store::user_by_id(&self.db, caller.user_id).await?.ok_or(AuthError::UserNotFound)
    }

    async fn enroll_second_factor(&self, caller: &Caller) -> Result<pb::EnrollSecondFactorResponse, AuthError> {
        use base64::Engine;
        let user = self.person(caller).await?;
        let seed = second_factor::new_seed();
        let totp = Totp::new(seed.clone(), &user.email)?;
        let sealed = self.totp_secrets.seal(user.id, &base64::engine::general_purpose::STANDARD.encode(&seed))?;
        if !store::put_pending_factor(&self.db, user.id, &sealed).await? {
            return Err(AuthError::SecondFactorEnabled);
        }
        Ok(pb::EnrollSecondFactorResponse { otpauth_uri: totp.uri(), secret: totp.secret_base32() })
    }

    async fn confirm_second_factor(
        &self,
        caller: &Caller,
        code: &str,
        address: &str,
    ) -> Result<pb::ConfirmSecondFactorResponse, AuthError> {
        let user = self.person(caller).await?;
        let mut tx = self.db.begin().await?;
        let factor = store::factor_for_update(&mut tx, user.id).await?.ok_or(AuthError::SecondFactorNotEnrolled)?;
        if factor.confirmed {
            return Err(AuthError::SecondFactorEnabled);
        }
        // A code from the app proves it holds the secret; no recovery code yet.
        self.take_code(&mut tx, &user, &factor, code.trim(), address, false).await.map_err(code_field)?;
        let codes = second_factor::new_recovery_codes();
        let hashes: Vec<Vec<u8>> = codes.iter().map(|c| second_factor::recovery_hash(c)).collect();
        store::confirm_factor(&mut tx, user.id, &hashes).await?;
        // Sessions started with the password alone end: from now on one
        // needs both.
        store::revoke_user(&mut tx, user.id).await?;
        tx.commit().await?;
        tracing::info!(user_id = %user.id, "second factor enabled");
        Ok(pb::ConfirmSecondFactorResponse { recovery_codes: codes })
    }

    async fn disable_second_factor(&self, caller: &Caller, code: &str, address: &str) -> Result<(), AuthError> {
        let user = self.person(caller).await?;
        let mut tx = self.db.begin().await?;
        let factor = store::factor_for_update(&mut tx, user.id)
            .await?
            .filter(|f| f.confirmed)
            .ok_or(AuthError::SecondFactorNotEnrolled)?;
        self.take_code(&mut tx, &user, &factor, code.trim(), address, true).await.map_err(code_field)?;
        store::delete_factor(&mut tx, user.id).await?;
        tx.commit().await?;
        tracing::info!(user_id = %user.id, "second factor disabled");
        Ok(())
    }

    async fn change_password(&self, caller: &Caller, r: pb::ChangePasswordRequest) -> Result<(), AuthError> {
        let user = store::user_by_id(&self.db, caller.user_id).await?.ok_or(AuthError::UserNotFound)?;
        // Guesses at the current password with a stolen access token are
        // throttled like guesses at login.
        if self.throttle.check(&user.email, &format!("user {}", user.id)).await? {
            return Err(AuthError::Throttled);
        }
        let mut violations = Vec::new();
        if let Err(e) = validate::password(&r.new_password, Some(&user.email)) {
            violations.push(bank_domain::InputError::new("new_password", e.description));
        } else if r.new_password == r.current_password {
            violations.push(bank_domain::InputError::new("new_password", "must differ from the current password"));
        }
        let (current, hash) = (r.current_password.clone(), user.password_hash.clone());
        if !blocking(move || credentials::verify_password(&current, &hash)).await? {
            self.throttle.record_failure(&user.email).await?;
            violations.insert(0, bank_domain::InputError::new("current_password", "is not the current password"));
        }
        if !violations.is_empty() {
            return Err(AuthError::Invalid(violations));
        }
        let new = r.new_password;
        let hash = blocking(move || credentials::hash_password(&new)).await??;
        let mut tx = self.db.begin().await?;
        store::set_password(&mut tx, user.id, &hash).await?;
        store::revoke_user(&mut tx, user.id).await?;
        tx.commit().await?;
        tracing::info!(user_id = %user.id, "password changed; every session revoked");
        Ok(())
    }

    /// Grants (or revokes) a staff role; the user as it is afterwards.
    async fn change_role(&self, caller: &Caller, user_id: &str, role: i32, grant: bool) -> Result<User, AuthError> {
        let id = self.admin_target(caller, user_id).await?;
        let role = grantable(role)?;
        let found = if grant {
            store::grant_role(&self.db, id, role).await?
        } else {
            store::revoke_role(&self.db, id, role).await?
        };
        if !found {
            return Err(AuthError::UserNotFound);
        }
        tracing::info!(user_id = %id, admin = %caller.user_id, role, grant, "role changed");
        let user = store::user_by_id(&self.db, id).await?.ok_or(AuthError::UserNotFound)?;
        // A grant needs a new token to take effect; a revocation is at once.
        if !grant {
            self.barrier.wait(user.standing_seq).await?;
        }
        Ok(user)
    }

    async fn service_token(
        &self,
        r: pb::IssueServiceTokenRequest,
        address: &str,
    ) -> Result<pb::IssueServiceTokenResponse, AuthError> {
        // An id no client can have is refused before it becomes a cache key.
        if !crate::service_clients::valid_id(&r.client_id) {
            return Err(AuthError::InvalidClientCredentials);
        }
        let throttle_key = format!("{address} {}", r.client_id);
        if self.client_throttle.check(&throttle_key, address).await? {
            return Err(AuthError::Throttled);
        }
        let Some(subject) = self.service_clients.verify(&r.client_id, &r.client_secret) else {
            self.client_throttle.record_failure(&throttle_key).await?;
            return Err(AuthError::InvalidClientCredentials);
        };
        self.client_throttle.record_success(&throttle_key, None).await?;
        let s = &self.settings;
        let roles = [bank_platform::auth::ROLE_SERVICE.to_owned()];
        let access = credentials::access_token(
            &self.signer,
            &s.issuer,
            &s.audience,
            s.access_ttl,
            credentials::Holder { id: subject, roles: &roles, status: "ACTIVE", standing_seq: 0 },
            &Authenticated::now(false),
        )?;
        tracing::info!(client_id = %r.client_id, %subject, "service token issued");
        Ok(pb::IssueServiceTokenResponse {
            access_token: access.token,
            access_token_expires_at: timestamp(access.expires_at),
            token_type: "Bearer".into(),
            subject: subject.to_string(),
        })
    }
}

/// A wrong code where the caller is signed in already is a bad field, not a
/// failed login.
fn code_field(e: AuthError) -> AuthError {
    match e {
        AuthError::SecondFactorInvalid => {
            bank_domain::InputError::new("code", "is wrong, was used already, or is out of its time window").into()
        }
        other => other,
    }
}

impl AuthApi {
    async fn refresh(&self, token: &str) -> Result<pb::LoginResponse, AuthError> {
        if token.is_empty() || token.len() > 256 {
            return Err(AuthError::InvalidRefreshToken);
        }
        let hash = credentials::refresh_hash(token);
        let mut tx = self.db.begin().await?;
        match store::spend_refresh(&mut tx, &hash).await? {
            Spend::Spent(user_id, family, how) => {
                let user = store::user_by_id(&mut *tx, user_id).await?.ok_or(AuthError::InvalidRefreshToken)?;
                if user.status == "SUSPENDED" {
                    return Err(AuthError::Suspended);
                }
                // The same session: how and when it was started, not now.
                let res = self.issue(&mut tx, &user, family, &how).await?;
                tx.commit().await?;
                Ok(res)
            }
            Spend::Reused(family) => {
                // A spent token presented again: someone holds a copy. End the whole session.
                store::revoke_family(&mut *tx, family).await?;
                tx.commit().await?;
                tracing::warn!(%family, "refresh token reuse: family revoked");
                Err(AuthError::RefreshTokenReused)
            }
            Spend::Invalid => Err(AuthError::InvalidRefreshToken),
        }
    }
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn register(&self, req: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        let address = self.client_address(&req);
        let user = AuthApi::register(self, req.into_inner(), &address).await?;
        Ok(Response::new(pb::RegisterResponse { user: Some(user) }))
    }

    async fn login(&self, req: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let address = self.client_address(&req);
        let r = req.into_inner();
        Ok(Response::new(AuthApi::login(self, &r.email, r.password, &r.second_factor_code, &address).await?))
    }

    async fn enroll_second_factor(
        &self,
        req: Request<pb::EnrollSecondFactorRequest>,
    ) -> Result<Response<pb::EnrollSecondFactorResponse>, Status> {
        let caller = caller(&req)?;
        Ok(Response::new(AuthApi::enroll_second_factor(self, &caller).await?))
    }

    async fn confirm_second_factor(
        &self,
        req: Request<pb::ConfirmSecondFactorRequest>,
    ) -> Result<Response<pb::ConfirmSecondFactorResponse>, Status> {
        let (caller, address) = (caller(&req)?, self.client_address(&req));
        Ok(Response::new(AuthApi::confirm_second_factor(self, &caller, &req.get_ref().code, &address).await?))
    }

    async fn disable_second_factor(
        &self,
        req: Request<pb::DisableSecondFactorRequest>,
    ) -> Result<Response<pb::DisableSecondFactorResponse>, Status> {
        let (caller, address) = (caller(&req)?, self.client_address(&req));
        AuthApi::disable_second_factor(self, &caller, &req.get_ref().code, &address).await?;
        Ok(Response::new(pb::DisableSecondFactorResponse {}))
    }

    async fn refresh(&self, req: Request<pb::RefreshRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        Ok(Response::new(AuthApi::refresh(self, &req.into_inner().refresh_token).await?))
    }

    async fn logout(&self, req: Request<pb::LogoutRequest>) -> Result<Response<pb::LogoutResponse>, Status> {
        let token = req.into_inner().refresh_token;
        // Unknown tokens succeed too: logout reveals nothing and is idempotent.
        if let Some(family) =
            store::family_of(&self.db, &credentials::refresh_hash(&token)).await.map_err(Status::from)?
        {
            store::revoke_family(&self.db, family).await.map_err(Status::from)?;
        }
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn change_password(
        &self,
        req: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let caller = caller(&req)?;
        AuthApi::change_password(self, &caller, req.into_inner()).await?;
        Ok(Response::new(pb::ChangePasswordResponse {}))
    }

    async fn who_am_i(&self, req: Request<pb::WhoAmIRequest>) -> Result<Response<pb::User>, Status> {
        let caller = caller(&req)?;
        let user = store::user_by_id(&self.db, caller.user_id).await?.ok_or(AuthError::UserNotFound)?;
        Ok(Response::new(user_proto(&user)))
    }

    async fn approve_customer(&self, req: Request<pb::ApproveCustomerRequest>) -> Result<Response<pb::User>, Status> {
        let caller = caller(&req)?;
        let id = self.admin_target(&caller, &req.get_ref().user_id).await?;
        let mut tx = self.db.begin().await.map_err(AuthError::from)?;
        let user = store::user_by_id(&mut *tx, id).await?.ok_or(AuthError::UserNotFound)?;
        match user.status.as_str() {
            "SUSPENDED" => return Err(AuthError::Suspended.into()),
            "PENDING_KYC" => store::set_status(&mut tx, id, "ACTIVE").await?,
            _ => {}
        }
        let user = store::user_by_id(&mut *tx, id).await?.ok_or(AuthError::UserNotFound)?;
        tx.commit().await.map_err(AuthError::from)?;
        tracing::info!(user_id = %id, admin = %caller.user_id, "customer approved");
        Ok(Response::new(user_proto(&user)))
    }

    async fn grant_role(&self, req: Request<pb::GrantRoleRequest>) -> Result<Response<pb::GrantRoleResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let user = self.change_role(&caller, &r.user_id, r.role, true).await?;
        Ok(Response::new(pb::GrantRoleResponse { user: Some(user_proto(&user)) }))
    }

    async fn revoke_role(
        &self,
        req: Request<pb::RevokeRoleRequest>,
    ) -> Result<Response<pb::RevokeRoleResponse>, Status> {
        let caller = caller(&req)?;
        let r = req.into_inner();
        let user = self.change_role(&caller, &r.user_id, r.role, false).await?;
        Ok(Response::new(pb::RevokeRoleResponse { user: Some(user_proto(&user)) }))
    }

    async fn issue_service_token(
        &self,
        req: Request<pb::IssueServiceTokenRequest>,
    ) -> Result<Response<pb::IssueServiceTokenResponse>, Status> {
        let address = self.client_address(&req);
        Ok(Response::new(self.service_token(req.into_inner(), &address).await?))
    }

    async fn suspend_customer(&self, req: Request<pb::SuspendCustomerRequest>) -> Result<Response<pb::User>, Status> {
        let caller = caller(&req)?;
        let id = self.admin_target(&caller, &req.get_ref().user_id).await?;
        let mut tx = self.db.begin().await.map_err(AuthError::from)?;
        store::user_by_id(&mut *tx, id).await?.ok_or(AuthError::UserNotFound)?;
        store::set_status(&mut tx, id, "SUSPENDED").await?;
        store::revoke_user(&mut tx, id).await?;
        let user = store::user_by_id(&mut *tx, id).await?.ok_or(AuthError::UserNotFound)?;
        tx.commit().await.map_err(AuthError::from)?;
        tracing::info!(user_id = %id, admin = %caller.user_id, "customer suspended");
        self.barrier.wait(user.standing_seq).await?;
        Ok(Response::new(user_proto(&user)))
    }
}

#[cfg(test)]
mod client_address_tests {
    use super::client_address;

    #[test]
    fn behind_the_edge_the_address_envoy_saw_counts_and_what_the_client_claimed_does_not() {
        let envoy = Some("127.0.0.1:40000".parse().unwrap());
        assert_eq!(client_address(Some("203.0.113.9, 198.51.100.7"), true, envoy), "198.51.100.7");
        assert_eq!(client_address(Some("198.51.100.7"), true, envoy), "198.51.100.7");
        // Not behind a trusted edge: the header is ignored.
        assert_eq!(client_address(Some("203.0.113.9"), false, envoy), "127.0.0.1");
        assert_eq!(client_address(None, true, envoy), "127.0.0.1");
        assert_eq!(client_address(Some(" , "), true, None), "unknown");
    }
}
