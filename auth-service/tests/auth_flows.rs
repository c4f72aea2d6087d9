//! auth-service over real gRPC against real Postgres and Redis.

use std::{collections::HashMap, sync::Arc, time::Duration};

use bank_platform::{
    CancellationToken,
    auth::{KeyCache, TokenSigner, TokenVerifier},
    config::ProcessEnv,
    service::Running,
};
use bank_proto::v1::{self as pb, auth_service_client::AuthServiceClient};
use bank_testkit::{DbRole, Principal, TestDb, assert_eventually, authed};
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

const ADMIN_EMAIL: &str = "root@bank.test";
const ADMIN_PASSWORD: &str = "admin password for tests";

struct Auth {
    running: Running,
    client: AuthServiceClient<Channel>,
    db: sqlx::PgPool,
    config: auth_service::Config,
}

impl Auth {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(tweak: impl FnOnce(&mut auth_service::Config)) -> Self {
        bank_platform::telemetry::init_for_tests();
        let mut config = auth_service::Config::from_env(&ProcessEnv).unwrap();
        config.grpc_addr = "127.0.0.1:0".parse().unwrap();
        config.http_addr = "127.0.0.1:0".parse().unwrap();
        let database = TestDb::migrated("auth", DbRole::AuthOwner, &auth_service::MIGRATOR).await;
        config.database_url = database.url_as(DbRole::Auth);
        config.redis_url = bank_testkit::redis_url_as(Principal::Auth);
        let prefix = bank_testkit::unique_prefix("auth");
        config.redis_prefix = format!("bank:auth:{prefix}:");
        config.standing_feed.nats_url = bank_testkit::nats_url_as(Principal::Auth);
        config.standing_feed.stream = format!("{}_USERS", prefix.to_uppercase());
        config.standing_feed.subject_prefix = format!("{prefix}.users");
        let feed = &config.standing_feed;
        bank_testkit::provision_streams(&feed.nats_url, &[(&feed.stream, &feed.subject_prefix)]).await;
        config.bootstrap_admin = Some((ADMIN_EMAIL.into(), ADMIN_PASSWORD.into()));
        // Second-factor seeds sealed at rest, as in every stack (TOTP_SECRETS_KEY).
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        config.totp_secrets = bank_platform::sealed::Secrets::sealed_with(&key).unwrap();
        tweak(&mut config);
        let running = auth_service::start(config.clone(), CancellationToken::new()).await.unwrap();
        let client = match config.tls.as_deref() {
            None => AuthServiceClient::connect(format!("http://{}", running.grpc_addr)).await.unwrap(),
            Some(tls) => tls_client(running.grpc_addr, tls).await,
        };
        let db = bank_platform::db::connect(&database.admin_url(), 2).await.unwrap();
        Self { running, client, db, config }
    }

    /// Another instance on the same database, Redis and feed.
    async fn second_instance(&self) -> Running {
        let config = auth_service::Config {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            ..self.config.clone()
        };
        auth_service::start(config, CancellationToken::new()).await.unwrap()
    }

    fn c(&self) -> AuthServiceClient<Channel> {
        self.client.clone()
    }

    async fn register(&self, email: &str, password: &str) -> Result<pb::User, tonic::Status> {
        let req =
            pb::RegisterRequest { email: email.into(), password: password.into(), full_name: "Ada Lovelace".into() };
        self.c().register(req).await.map(|r| r.into_inner().user.unwrap())
    }

    async fn login(&self, email: &str, password: &str) -> Result<pb::LoginResponse, tonic::Status> {
        self.c()
            .login(pb::LoginRequest { email: email.into(), password: password.into(), ..Default::default() })
            .await
            .map(|r| r.into_inner())
    }

    async fn admin_token(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.unwrap().access_token
    }

    async fn refresh(&self, token: &str) -> Result<pb::LoginResponse, tonic::Status> {
        self.c().refresh(pb::RefreshRequest { refresh_token: token.into() }).await.map(|r| r.into_inner())
    }

    async fn users(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&self.db).await.unwrap()
    }
}

/// A client over mutual TLS presenting `tls`'s certificate.
async fn tls_client(addr: std::net::SocketAddr, tls: &bank_platform::tls::Tls) -> AuthServiceClient<Channel> {
    AuthServiceClient::new(bank_testkit::mtls_channel(addr, tls).await)
}

fn reason(s: &tonic::Status) -> String {
    s.get_details_error_info().map(|i| i.reason).unwrap_or_default()
}

fn fields(s: &tonic::Status) -> Vec<String> {
    s.get_details_bad_request().map(|b| b.field_violations.into_iter().map(|v| v.field).collect()).unwrap_or_default()
}

const PASSWORD: &str = "correct horse battery";

#[tokio::test]
async fn register_approve_login_whoami_refresh_reuse_and_logout() {
    let a = Auth::start().await;
    let user = a.register("Ada@Example.com", PASSWORD).await.unwrap();
    assert_eq!(user.status, pb::UserStatus::PendingKyc as i32);
    assert_eq!(user.email, "ada@example.com");

    let first = a.login("ada@example.com", PASSWORD).await.unwrap();
    let me = a.c().who_am_i(authed(pb::WhoAmIRequest {}, &first.access_token)).await.unwrap().into_inner();
    assert_eq!(me.user_id, user.user_id);

    let admin = a.admin_token().await;
    let approved = a
        .c()
        .approve_customer(authed(pb::ApproveCustomerRequest { user_id: user.user_id.clone() }, &admin))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(approved.status, pb::UserStatus::Active as i32);

    // Rotation: the new access token carries the approval.
    let second = a.refresh(&first.refresh_token).await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    let verifier = TokenVerifier::new(
        Arc::new(
            KeyCache::from_jwks_url(format!("http://{}/.well-known/jwks.json", a.running.http_addr), None).unwrap(),
        ),
        &a.config.issuer,
        &a.config.audience,
    );
    let (caller, _) =
        verifier.verify(&second.access_token).await.expect("the JWKS served over HTTP verifies the token");
    assert!(caller.is_active());
    assert_eq!(caller.user_id.to_string(), user.user_id);

    // The spent token is refused, and its reuse revokes the whole family.
    let reused = a.refresh(&first.refresh_token).await.unwrap_err();
    assert_eq!((reused.code(), reason(&reused)), (Code::Unauthenticated, "REFRESH_TOKEN_REUSED".into()));
    let after_reuse = a.refresh(&second.refresh_token).await.unwrap_err();
    assert_eq!(after_reuse.code(), Code::Unauthenticated);

    // A new login is a new family; logout ends it.
    let third = a.login("ada@example.com", PASSWORD).await.unwrap();
    a.c().logout(pb::LogoutRequest { refresh_token: third.refresh_token.clone() }).await.unwrap();
    a.c().logout(pb::LogoutRequest { refresh_token: third.refresh_token.clone() }).await.unwrap();
    assert_eq!(a.refresh(&third.refresh_token).await.unwrap_err().code(), Code::Unauthenticated);
}

#[tokio::test]
async fn hostile_registrations_are_refused_and_store_nothing() {
    let a = Auth::start().await;
    let before = a.users().await;
    let long = format!("{}@example.com", "a".repeat(260));
    for (email, password, field) in [
        ("", PASSWORD, "email"),
        (long.as_str(), PASSWORD, "email"),
        ("not-an-email", PASSWORD, "email"),
        ("ada@example.com", "short", "password"),
        ("ada@example.com", "aaaaaaaaaaaaaaaa", "password"),
        ("ada@example.com", "ada-is-my-password-really", "password"),
    ] {
        let err = a.register(email, password).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{email:?}/{password:?}");
        assert!(fields(&err).contains(&field.to_string()), "{email:?}: {:?}", fields(&err));
    }
    let both = a.register("nope", "x").await.unwrap_err();
    assert_eq!(fields(&both), vec!["password".to_string(), "email".to_string()]);
    assert_eq!(a.users().await, before, "a refused registration stored a row");

    a.register("grace@example.com", PASSWORD).await.unwrap();
    let dup = a.register("GRACE@example.COM", PASSWORD).await.unwrap_err();
    assert_eq!((dup.code(), reason(&dup)), (Code::AlreadyExists, "EMAIL_TAKEN".into()));
    assert_eq!(a.users().await, before + 1);
}

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_answer_then_throttling() {
    let a = Auth::start().await;
    a.register("ada@example.com", PASSWORD).await.unwrap();
    let wrong = a.login("ada@example.com", "wrong password here").await.unwrap_err();
    let unknown = a.login("nobody@example.com", PASSWORD).await.unwrap_err();
    assert_eq!((wrong.code(), wrong.message()), (unknown.code(), unknown.message()));
    assert_eq!(reason(&wrong), "INVALID_CREDENTIALS");

    for _ in 0..10 {
        let _ = a.login("ada@example.com", "wrong password here").await;
    }
    let throttled = a.login("ada@example.com", PASSWORD).await.unwrap_err();
    assert_eq!((throttled.code(), reason(&throttled)), (Code::ResourceExhausted, "LOGIN_THROTTLED".into()));
}

#[tokio::test]
async fn attempts_from_one_address_are_throttled_across_emails() {
    let a = Auth::start_with(|c| c.throttle.attempts_per_address = 5).await;
    for i in 0..5 {
        let _ = a.login(&format!("user{i}@example.com"), PASSWORD).await;
    }
    let err = a.login("someone@example.com", PASSWORD).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn bad_tokens_are_unauthenticated() {
    let a = Auth::start().await;
    let stranger = TokenSigner::generate();
    let now = chrono::Utc::now().timestamp();
    let mut claims = bank_platform::auth::Claims {
        sub: uuid::Uuid::now_v7().to_string(),
        iss: a.config.issuer.clone(),
        aud: a.config.audience.clone(),
        exp: now + 600,
        nbf: now,
        iat: now,
        jti: "x".into(),
        roles: vec!["admin".into()],
        status: "ACTIVE".into(),
        sv: 0,
        amr: vec!["pwd".into()],
        auth_time: now,
    };
    let foreign = stranger.sign(&claims).unwrap();
    claims.exp = now - 600;
    claims.nbf = now - 1200;
    let expired = a.config.signers[0].sign(&claims).unwrap();
    let none = format!("eyJhbGciOiJub25lIn0.{}.", "e30");
    for token in [foreign.as_str(), expired.as_str(), "garbage", none.as_str()] {
        let err = a.c().who_am_i(authed(pb::WhoAmIRequest {}, token)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token}");
    }
    let err = a.c().who_am_i(pb::WhoAmIRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn only_admins_approve_and_suspension_ends_refresh() {
    let a = Auth::start().await;
    let ada = a.register("ada@example.com", PASSWORD).await.unwrap();
    a.register("eve@example.com", PASSWORD).await.unwrap();
    let eve = a.login("eve@example.com", PASSWORD).await.unwrap();
    let denied = a
        .c()
        .approve_customer(authed(pb::ApproveCustomerRequest { user_id: ada.user_id.clone() }, &eve.access_token))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    let admin = a.admin_token().await;
    let bad =
        a.c().approve_customer(authed(pb::ApproveCustomerRequest { user_id: "x".into() }, &admin)).await.unwrap_err();
    assert_eq!(fields(&bad), vec!["user_id"]);
    let missing = a
        .c()
        .approve_customer(authed(pb::ApproveCustomerRequest { user_id: uuid::Uuid::now_v7().to_string() }, &admin))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let session = a.login("ada@example.com", PASSWORD).await.unwrap();
    let suspended = a
        .c()
        .suspend_customer(authed(
            pb::SuspendCustomerRequest { user_id: ada.user_id.clone(), reason: "fraud".into() },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(suspended.status, pb::UserStatus::Suspended as i32);
    assert_eq!(a.refresh(&session.refresh_token).await.unwrap_err().code(), Code::Unauthenticated);
    let login = a.login("ada@example.com", PASSWORD).await.unwrap_err();
    assert_eq!(reason(&login), "USER_SUSPENDED");
}

/// The `roles` and `sub` claims of an access token (already verified by the
/// services; here only read).
fn claims(token: &str) -> (Vec<String>, String) {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let roles = json["roles"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect();
    (roles, json["sub"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn admins_grant_and_revoke_the_teller_role_which_the_next_token_carries() {
    let a = Auth::start().await;
    let tom = a.register("tom@example.com", PASSWORD).await.unwrap();
    let session = a.login("tom@example.com", PASSWORD).await.unwrap();
    assert_eq!(claims(&session.access_token).0, ["customer"]);
    let grant = |user_id: &str, role: pb::Role, token: &str| {
        let (mut client, req) =
            (a.c(), authed(pb::GrantRoleRequest { user_id: user_id.into(), role: role as i32 }, token));
        async move { client.grant_role(req).await }
    };

    // Given a customer, when they try to grant themselves a role: refused.
    let denied = grant(&tom.user_id, pb::Role::Teller, &session.access_token).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // Only the teller role can be granted, and only to someone who exists.
    let admin = a.admin_token().await;
    let not_grantable = grant(&tom.user_id, pb::Role::Admin, &admin).await.unwrap_err();
    assert_eq!(fields(&not_grantable), ["role"]);
    let nobody = grant(&uuid::Uuid::now_v7().to_string(), pb::Role::Teller, &admin).await.unwrap_err();
    assert_eq!(nobody.code(), Code::NotFound);

    // When the admin grants teller: the user shows it, and the next token carries it.
    let user = grant(&tom.user_id, pb::Role::Teller, &admin).await.unwrap().into_inner().user.unwrap();
    assert_eq!(user.roles, [pb::Role::Customer as i32, pb::Role::Teller as i32]);
    grant(&tom.user_id, pb::Role::Teller, &admin).await.unwrap(); // idempotent: stored once
    let stored: Vec<String> = sqlx::query_scalar("SELECT roles FROM users WHERE id = $1::uuid")
        .bind(&tom.user_id)
        .fetch_one(&a.db)
        .await
        .unwrap();
    assert_eq!(stored, ["customer", "teller"]);
    let refreshed = a.refresh(&session.refresh_token).await.unwrap();
    assert_eq!(claims(&refreshed.access_token).0, ["customer", "teller"]);

    // Only an admin revokes, too.
    let teller_token = refreshed.access_token.clone();
    let denied = a
        .c()
        .revoke_role(authed(
            pb::RevokeRoleRequest { user_id: tom.user_id.clone(), role: pb::Role::Teller as i32 },
            &teller_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    // When it is revoked: the next token (a refresh of the same session too) has no teller.
    let revoked = a
        .c()
        .revoke_role(authed(
            pb::RevokeRoleRequest { user_id: tom.user_id.clone(), role: pb::Role::Teller as i32 },
            &admin,
        ))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(revoked.roles, [pb::Role::Customer as i32]);
    let after = a.refresh(&refreshed.refresh_token).await.unwrap();
    assert_eq!(claims(&after.access_token).0, ["customer"]);
}

const SERVICE_SECRET: &str = "payments-service-secret-0123456789";

#[tokio::test]
async fn service_principals_trade_their_secret_for_a_service_token_and_guessing_is_throttled() {
    let a = Auth::start_with(|c| {
        c.service_clients = Default::default();
        c.service_clients.add(&format!("payments:{SERVICE_SECRET},fees:{SERVICE_SECRET}-fees"), ',', "test").unwrap()
    })
    .await;
    let issue = |id: &str, secret: &str| {
        let (mut client, req) =
            (a.c(), pb::IssueServiceTokenRequest { client_id: id.into(), client_secret: secret.into() });
        async move { client.issue_service_token(req).await }
    };
    let token = issue("payments", SERVICE_SECRET).await.unwrap().into_inner();
    let (roles, sub) = claims(&token.access_token);
    assert_eq!(roles, ["service"]);
    assert_eq!(sub, token.subject);
    assert_eq!(sub, auth_service::service_clients::ServiceClients::subject("payments").to_string());
    // The token verifies like any other against the published keys.
    let verifier = TokenVerifier::new(
        Arc::new(
            KeyCache::from_jwks_url(format!("http://{}/.well-known/jwks.json", a.running.http_addr), None).unwrap(),
        ),
        &a.config.issuer,
        &a.config.audience,
    );
    let (caller, _) = verifier.verify(&token.access_token).await.unwrap();
    assert!(caller.is_service() && !caller.is_teller() && caller.is_active());

    // A wrong secret and an unknown client get the same answer.
    for (id, secret) in [("payments", "payments-service-secret-0123456788"), ("nobody", SERVICE_SECRET)] {
        let err = issue(id, secret).await.unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::Unauthenticated, "INVALID_CREDENTIALS".into()));
    }
    // Guessing a client's secret is throttled like guessing a password.
    let mut throttled = false;
    for _ in 0..8 {
        if issue("payments", "not-the-secret-at-all-xxxxxxxx").await.unwrap_err().code() == Code::ResourceExhausted {
            throttled = true;
            break;
        }
    }
    assert!(throttled, "repeated wrong secrets were never throttled");
    // While throttled even the right secret is refused; another client is not affected.
    assert_eq!(issue("payments", SERVICE_SECRET).await.unwrap_err().code(), Code::ResourceExhausted);
    issue("fees", &format!("{SERVICE_SECRET}-fees")).await.unwrap();
    // An id no client can have is refused without touching the throttle.
    let odd = issue(&"x".repeat(10_000), SERVICE_SECRET).await.unwrap_err();
    assert_eq!(odd.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn two_concurrent_refreshes_of_one_token_have_exactly_one_winner() {
    let a = Auth::start().await;
    a.register("ada@example.com", PASSWORD).await.unwrap();
    let s = a.login("ada@example.com", PASSWORD).await.unwrap();
    let results = futures::future::join_all((0..2).map(|_| a.refresh(&s.refresh_token))).await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
}

#[tokio::test]
async fn the_bootstrap_admin_is_ensured_idempotently() {
    let a = Auth::start().await;
    let second = a.second_instance().await;
    let admins: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE 'admin' = ANY(roles) AND status = 'ACTIVE'")
        .fetch_one(&a.db)
        .await
        .unwrap();
    assert_eq!(admins, 1);
    let jwks: HashMap<String, serde_json::Value> = reqwest_free_get(second.http_addr).await;
    assert!(jwks.contains_key("keys"));
    second.stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// GET /.well-known/jwks.json with a raw HTTP/1.0 request (no client crate needed).
async fn reqwest_free_get(addr: std::net::SocketAddr) -> HashMap<String, serde_json::Value> {
    serde_json::from_str(&bank_testkit::http_get(addr, "/.well-known/jwks.json").await.unwrap()).unwrap()
}

/// The roles as the money path sees them: a real command-service trusting
/// this auth-service's JWKS. A teller's deposit goes through; once the role is
/// revoked, the teller's next token is refused; a service principal's client
/// credentials buy a token that may deposit too; a customer's may not.
/// A command-service trusting this auth-service's keys and following its
/// feed of user standings.
async fn money_path(a: &Auth) -> (Running, pb::account_command_service_client::AccountCommandServiceClient<Channel>) {
    let prefix = bank_testkit::unique_prefix("roles");
    let mut config = command_service::Config::from_env(&ProcessEnv).unwrap();
    config.grpc_addr = "127.0.0.1:0".parse().unwrap();
    config.http_addr = "127.0.0.1:0".parse().unwrap();
    config.database_url =
        TestDb::migrated("roles", DbRole::CommandOwner, &command_service::MIGRATOR).await.url_as(DbRole::Command);
    config.jwks_url = format!("http://{}/.well-known/jwks.json", a.running.http_addr);
    config.jwt_issuer = a.config.issuer.clone();
    config.jwt_audience = a.config.audience.clone();
    config.relay.nats_url = bank_testkit::nats_url_as(Principal::Command);
    config.relay.stream = prefix.to_uppercase();
    config.relay.subject_prefix = format!("{prefix}.events");
    // Suspensions and role changes reach it from this test's auth-service.
    config.standing_feed = a.config.standing_feed.clone();
    config.standing_feed.nats_url = bank_testkit::nats_url_as(Principal::Command);
    config.audit.read_database_url = None;
    config.audit.redis_url = None;
    bank_testkit::provision_streams(&config.relay.nats_url, &[(&config.relay.stream, &config.relay.subject_prefix)])
        .await;
    let bank = command_service::start(config, CancellationToken::new()).await.unwrap();
    let commands =
        pb::account_command_service_client::AccountCommandServiceClient::connect(format!("http://{}", bank.grpc_addr))
            .await
            .unwrap();
    (bank, commands)
}

/// Ada, an approved customer, and Tom, an approved customer who is also a
/// teller, each signed in: their user ids, then their access tokens.
async fn ada_and_teller_tom(a: &Auth, admin: &str) -> (String, String, String, String) {
    let approve = |id: &str| pb::ApproveCustomerRequest { user_id: id.into() };
    let ada = a.register("ada@example.com", PASSWORD).await.unwrap();
    a.c().approve_customer(authed(approve(&ada.user_id), admin)).await.unwrap();
    let tom = a.register("tom@example.com", PASSWORD).await.unwrap();
    a.c().approve_customer(authed(approve(&tom.user_id), admin)).await.unwrap();
    let grant = pb::GrantRoleRequest { user_id: tom.user_id.clone(), role: pb::Role::Teller as i32 };
    a.c().grant_role(authed(grant, admin)).await.unwrap();
    // Tokens issued now stay valid for their whole lifetime (15 minutes).
    let ada_token = a.login("ada@example.com", PASSWORD).await.unwrap().access_token;
    let tom_token = a.login("tom@example.com", PASSWORD).await.unwrap().access_token;
    (ada.user_id, tom.user_id, ada_token, tom_token)
}

async fn suspend(a: &Auth, admin: &str, user_id: &str) {
    let req = pb::SuspendCustomerRequest { user_id: user_id.into(), reason: "fraud review".into() };
    a.c().suspend_customer(authed(req, admin)).await.unwrap();
}

async fn revoke_teller(a: &Auth, admin: &str, user_id: &str) {
    let req = pb::RevokeRoleRequest { user_id: user_id.into(), role: pb::Role::Teller as i32 };
    a.c().revoke_role(authed(req, admin)).await.unwrap();
}

/// query-service alone (no projector: the reads below need no read model),
/// following this test's auth-service for tokens and standings.
async fn read_path(a: &Auth) -> (Running, pb::account_query_service_client::AccountQueryServiceClient<Channel>) {
    let mut config = query_service::Config::from_env(&ProcessEnv).unwrap();
    config.grpc_addr = "127.0.0.1:0".parse().unwrap();
    config.http_addr = "127.0.0.1:0".parse().unwrap();
    config.database_url =
        TestDb::migrated("reads", DbRole::ReadOwner, &bank_readmodel::MIGRATOR).await.url_as(DbRole::Query);
    config.redis_url = bank_testkit::redis_url_as(Principal::Query);
    config.redis_prefix = bank_testkit::read_model_prefix(&bank_testkit::unique_prefix("reads"));
    config.cache_key = Some(bank_testkit::read_cache_key().to_owned());
    config.jwks_url = format!("http://{}/.well-known/jwks.json", a.running.http_addr);
    config.jwt_issuer = a.config.issuer.clone();
    config.jwt_audience = a.config.audience.clone();
    config.standing_feed = a.config.standing_feed.clone();
    config.standing_feed.nats_url = bank_testkit::nats_url_as(Principal::Query);
    let reads = query_service::start(config, CancellationToken::new()).await.unwrap();
    let client =
        pb::account_query_service_client::AccountQueryServiceClient::connect(format!("http://{}", reads.grpc_addr))
            .await
            .unwrap();
    (reads, client)
}

#[tokio::test]
async fn a_suspension_and_a_revoked_role_stop_reads_before_the_call_answers() {
    let a = Auth::start().await;
    let (money, _commands) = money_path(&a).await;
    let (reads, queries) = read_path(&a).await;
    let admin = a.admin_token().await;
    let (ada, tom, ada_token, tom_token) = ada_and_teller_tom(&a, &admin).await;
    let list = |token: &str| {
        let mut q = queries.clone();
        let req = authed(pb::ListAccountsRequest::default(), token);
        async move { q.list_accounts(req).await }
    };
    list(&ada_token).await.expect("control: Ada reads");
    list(&tom_token).await.expect("control: Tom reads");

    suspend(&a, &admin, &ada).await;
    let ada_refused = list(&ada_token).await.expect_err("Ada's read right after her suspension answered");
    revoke_teller(&a, &admin, &tom).await;
    let tom_refused = list(&tom_token).await.expect_err("Tom's read right after his revocation answered");
    for refused in [&ada_refused, &tom_refused] {
        assert_eq!((refused.code(), reason(refused)), (Code::PermissionDenied, "STANDING_REVOKED".into()));
    }
    reads.stop().await.unwrap();
    money.stop().await.unwrap();
}

/// The attack as seen: transfers sent back to back while the admin suspends
/// their sender. Those sent before the answer may go either way; every one
/// sent after it is refused.
#[tokio::test]
async fn no_transfer_sent_after_a_suspension_answered_succeeds() {
    let a = Auth::start().await;
    let (money, commands) = money_path(&a).await;
    let admin = a.admin_token().await;
    let (ada, _, ada_token, tom_token) = ada_and_teller_tom(&a, &admin).await;
    let open =
        |key: &str| pb::OpenAccountRequest { r#type: 1, currency_code: "USD".into(), idempotency_key: key.into() };
    let mut c = commands.clone();
    let from = c.open_account(authed(open("o1"), &ada_token)).await.unwrap().into_inner().account.unwrap().account_id;
    let to = c.open_account(authed(open("o2"), &ada_token)).await.unwrap().into_inner().account.unwrap().account_id;
    let deposit = pb::DepositRequest {
        account_id: from.clone(),
        money: Some(pb::Money { currency_code: "USD".into(), amount: "500.00".into() }),
        idempotency_key: "d1".into(),
        description: String::new(),
    };
    c.deposit(authed(deposit, &tom_token)).await.unwrap();

    let sender = tokio::spawn(async move {
        let mut sent = Vec::new();
        for i in 0..200 {
            let req = pb::TransferRequest {
                from_account_id: from.clone(),
                to_account_id: to.clone(),
                money: Some(pb::Money { currency_code: "USD".into(), amount: "1.00".into() }),
                idempotency_key: format!("t{i}"),
                description: String::new(),
            };
            let at = std::time::Instant::now();
            let ok = c.transfer(authed(req, &ada_token)).await.is_ok();
            sent.push((at, ok));
        }
        sent
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    suspend(&a, &admin, &ada).await;
    let answered = std::time::Instant::now();
    let sent = sender.await.unwrap();
    let before = sent.iter().filter(|(at, ok)| *at < answered && *ok).count();
    let after: Vec<_> = sent.iter().filter(|(at, _)| *at > answered).collect();
    assert!(before > 0, "control: transfers succeeded before the suspension");
    assert!(after.len() > 10, "control: transfers were sent after the answer ({})", after.len());
    let succeeded = after.iter().filter(|(_, ok)| *ok).count();
    assert_eq!(succeeded, 0, "{succeeded} of {} transfers sent after the suspension answered succeeded", after.len());
    money.stop().await.unwrap();
}

#[tokio::test]
async fn tellers_and_service_principals_deposit_and_a_revoked_teller_no_longer_can() {
    let a = Auth::start_with(|c| {
        c.service_clients = Default::default();
        c.service_clients.add(&format!("payments:{SERVICE_SECRET}"), ',', "test").unwrap()
    })
    .await;
    let (bank, mut commands) = money_path(&a).await;
    let admin = a.admin_token().await;

    // Ada, an approved customer with an account.
    let ada = a.register("ada@example.com", PASSWORD).await.unwrap();
    a.c().approve_customer(authed(pb::ApproveCustomerRequest { user_id: ada.user_id }, &admin)).await.unwrap();
    let ada_token = a.login("ada@example.com", PASSWORD).await.unwrap().access_token;
    let open = pb::OpenAccountRequest { r#type: 1, currency_code: "USD".into(), idempotency_key: "open".into() };
    let account = commands.open_account(authed(open, &ada_token)).await.unwrap().into_inner().account.unwrap();
    let deposit = |token: String, key: &str| {
        let req = pb::DepositRequest {
            account_id: account.account_id.clone(),
            money: Some(pb::Money { currency_code: "USD".into(), amount: "10.00".into() }),
            idempotency_key: key.into(),
            description: String::new(),
        };
        let mut c = commands.clone();
        async move { c.deposit(authed(req, &token)).await }
    };
    assert_eq!(deposit(ada_token, "ada").await.unwrap_err().code(), Code::PermissionDenied);

    // Tom, approved staff, granted teller: his next token deposits.
    let tom = a.register("tom@example.com", PASSWORD).await.unwrap();
    a.c().approve_customer(authed(pb::ApproveCustomerRequest { user_id: tom.user_id.clone() }, &admin)).await.unwrap();
    let role = |user_id: &str| pb::GrantRoleRequest { user_id: user_id.into(), role: pb::Role::Teller as i32 };
    a.c().grant_role(authed(role(&tom.user_id), &admin)).await.unwrap();
    let session = a.login("tom@example.com", PASSWORD).await.unwrap();
    deposit(session.access_token.clone(), "tom-1").await.unwrap();

    // Revoked: the refreshed token of the same session no longer may.
    let revoke = pb::RevokeRoleRequest { user_id: tom.user_id.clone(), role: pb::Role::Teller as i32 };
    a.c().revoke_role(authed(revoke, &admin)).await.unwrap();
    let after = a.refresh(&session.refresh_token).await.unwrap();
    assert_eq!(deposit(after.access_token, "tom-2").await.unwrap_err().code(), Code::PermissionDenied);

    // A service principal, with a token of its own from its client credentials.
    let service = a
        .c()
        .issue_service_token(pb::IssueServiceTokenRequest {
            client_id: "payments".into(),
            client_secret: SERVICE_SECRET.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .access_token;
    let moved = deposit(service, "payments-1").await.unwrap().into_inner();
    assert_eq!(moved.balances_after[0].balance.as_ref().unwrap().amount, "20.00");
    bank.stop().await.unwrap();
}

#[tokio::test]
async fn a_registered_bootstrap_email_is_never_promoted_and_the_service_says_why() {
    let a = Auth::start().await;
    // Someone registers the address an operator is about to configure.
    a.register("squatter@bank.test", PASSWORD).await.unwrap();
    let err = auth_service::start(
        auth_service::Config {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            http_addr: "127.0.0.1:0".parse().unwrap(),
            bootstrap_admin: Some(("squatter@bank.test".into(), "the operator's password".into())),
            ..a.config.clone()
        },
        CancellationToken::new(),
    )
    .await
    .err()
    .expect("auth-service refuses to start");
    assert!(format!("{err:#}").contains("refusing to promote"), "{err:#}");
    let (roles, _) = claims(&a.login("squatter@bank.test", PASSWORD).await.unwrap().access_token);
    assert_eq!(roles, vec!["customer".to_string()], "the squatter did not become admin");
    assert!(a.login("squatter@bank.test", "the operator's password").await.is_err());
}

#[tokio::test]
async fn a_changed_password_ends_every_session_and_the_old_password() {
    let a = Auth::start().await;
    a.register("ada@example.com", PASSWORD).await.unwrap();
    let first = a.login("ada@example.com", PASSWORD).await.unwrap();
    let second = a.login("ada@example.com", PASSWORD).await.unwrap();
    let change = |current: &str, new: &str| pb::ChangePasswordRequest {
        current_password: current.into(),
        new_password: new.into(),
    };
    let new = "a much better passphrase";

    let err = a.c().change_password(change(PASSWORD, new)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "a token is required");
    let err = a.c().change_password(authed(change("wrong guess", new), &first.access_token)).await.unwrap_err();
    assert_eq!((err.code(), fields(&err)), (Code::InvalidArgument, vec!["current_password".to_string()]));
    let err = a.c().change_password(authed(change(PASSWORD, "short"), &first.access_token)).await.unwrap_err();
    assert_eq!(fields(&err), vec!["new_password".to_string()]);
    assert!(a.login("ada@example.com", PASSWORD).await.is_ok(), "refused changes changed nothing");

    a.c().change_password(authed(change(PASSWORD, new), &first.access_token)).await.unwrap();
    assert_eq!(a.login("ada@example.com", PASSWORD).await.unwrap_err().code(), Code::Unauthenticated);
    assert!(a.login("ada@example.com", new).await.is_ok());
    for session in [&first, &second] {
        let err = a.refresh(&session.refresh_token).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "a session from before the change still refreshes");
    }
}

#[tokio::test]
async fn made_up_method_paths_do_not_grow_the_metrics() {
    let a = Auth::start().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", a.running.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    let marker = uuid::Uuid::new_v4().simple().to_string();
    for i in 0..100 {
        // Public-looking paths: the token check lets them through to routing.
        let path = format!("/bank.v1.AuthService/Register{marker}{i}").parse().unwrap();
        grpc.ready().await.unwrap();
        let req = pb::RegisterRequest::default();
        let res = grpc
            .unary::<_, pb::RegisterResponse, _>(
                tonic::Request::new(req),
                path,
                tonic_prost::ProstCodec::<pb::RegisterRequest, pb::RegisterResponse>::default(),
            )
            .await;
        assert!(res.is_err());
    }
    let metrics = bank_testkit::http_get(a.running.http_addr, "/metrics").await.unwrap();
    assert!(!metrics.contains(&marker), "a made-up path became a metric label");
    let unknown: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("rpc_requests_total{") && l.contains("method=\"unknown\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(unknown >= 100.0, "unknown paths are counted under one label: {unknown}");
}

#[tokio::test]
async fn a_suspension_and_a_revoked_role_stop_money_before_the_call_answers_while_the_tokens_are_still_valid() {
    let a = Auth::start().await;
    let (bank, commands) = money_path(&a).await;
    let admin = a.admin_token().await;
    let (ada, tom, ada_token, tom_token) = ada_and_teller_tom(&a, &admin).await;
    let open =
        |key: &str| pb::OpenAccountRequest { r#type: 1, currency_code: "USD".into(), idempotency_key: key.into() };
    let mut c = commands.clone();
    let from = c.open_account(authed(open("o1"), &ada_token)).await.unwrap().into_inner().account.unwrap().account_id;
    let to = c.open_account(authed(open("o2"), &ada_token)).await.unwrap().into_inner().account.unwrap().account_id;
    let deposit = |key: &str| pb::DepositRequest {
        account_id: from.clone(),
        money: Some(pb::Money { currency_code: "USD".into(), amount: "50.00".into() }),
        idempotency_key: key.into(),
        description: String::new(),
    };
    let transfer = |key: &str| pb::TransferRequest {
        from_account_id: from.clone(),
        to_account_id: to.clone(),
        money: Some(pb::Money { currency_code: "USD".into(), amount: "1.00".into() }),
        idempotency_key: key.into(),
        description: String::new(),
    };
    c.deposit(authed(deposit("d1"), &tom_token)).await.unwrap();
    c.transfer(authed(transfer("t1"), &ada_token)).await.unwrap();

    // The admin suspends Ada and takes Tom's teller role away.
    suspend(&a, &admin, &ada).await;
    revoke_teller(&a, &admin, &tom).await;

    // The calls answered: from now on the old tokens move nothing, not even
    // the very first command sent after the answer.
    let ada_refused =
        c.transfer(authed(transfer("t-after"), &ada_token)).await.expect_err("Ada's transfer after her suspension");
    let tom_refused =
        c.deposit(authed(deposit("d-after"), &tom_token)).await.expect_err("Tom's deposit after his revocation");
    assert_eq!((ada_refused.code(), reason(&ada_refused)), (Code::FailedPrecondition, "CUSTOMER_NOT_ACTIVE".into()));
    assert_eq!(tom_refused.code(), Code::PermissionDenied);
    bank.stop().await.unwrap();
}

#[tokio::test]
async fn registrations_from_one_address_are_throttled_before_any_hashing() {
    let a = Auth::start_with(|c| c.throttle.attempts_per_address = 3).await;
    let before = a.users().await;
    for i in 0..3 {
        a.register(&format!("user{i}@example.com"), PASSWORD).await.unwrap();
    }
    let err = a.register("user3@example.com", PASSWORD).await.unwrap_err();
    assert_eq!((err.code(), reason(&err)), (Code::ResourceExhausted, "REGISTER_THROTTLED".to_string()));
    // Invalid attempts count too, and nothing more is stored.
    let err = a.register("not an email", "x").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(a.users().await, before + 3);
}

#[tokio::test]
async fn a_strangers_wrong_passwords_do_not_lock_the_owner_out_of_an_address_she_used_before() {
    let a = Auth::start_with(|c| c.trust_forwarded_for = true).await;
    a.register("ada@example.com", PASSWORD).await.unwrap();
    let login_from = |password: &str, address: &str| {
        let mut req = tonic::Request::new(pb::LoginRequest {
            email: "ada@example.com".into(),
            password: password.into(),
            ..Default::default()
        });
        req.metadata_mut().insert("x-forwarded-for", address.parse().unwrap());
        let mut c = a.c();
        async move { c.login(req).await }
    };
    login_from(PASSWORD, "198.51.100.7").await.unwrap();
    // A stranger guesses from elsewhere until the email is locked there.
    for _ in 0..6 {
        let _ = login_from("a wrong guess", "203.0.113.66").await;
    }
    let stranger = login_from(PASSWORD, "203.0.113.66").await.unwrap_err();
    assert_eq!((stranger.code(), reason(&stranger)), (Code::ResourceExhausted, "LOGIN_THROTTLED".into()));
    let new_place = login_from(PASSWORD, "192.0.2.1").await.unwrap_err();
    assert_eq!(new_place.code(), Code::ResourceExhausted, "an address never used before stays locked for now");
    // Ada, from where she logged in before, still gets in.
    login_from(PASSWORD, "198.51.100.7").await.unwrap();
}

/// Only auth-service's own role reaches its database (the
/// password hashes), and that role can neither change the schema nor turn
/// off the trigger that records every change of standing.
#[tokio::test]
async fn no_other_service_reaches_the_password_hashes_and_auth_cannot_turn_off_its_trigger() {
    use sqlx::Connection;
    let a = Auth::start().await;
    let db = TestDb { name: a.config.database_url.rsplit('/').next().unwrap().to_owned() };
    for role in [DbRole::Command, DbRole::CommandOwner, DbRole::Projector, DbRole::Query, DbRole::ReadOwner] {
        let refusal = sqlx::PgConnection::connect(&db.url_as(role)).await.err().map(|e| e.to_string());
        assert!(refusal.unwrap_or_default().contains("permission denied"), "{role:?} reached auth's database");
    }
    let mut own = sqlx::PgConnection::connect(&db.url_as(DbRole::Auth)).await.unwrap();
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&mut own).await.expect("control");
    assert!(users >= 1, "the bootstrap admin");
    for sql in [
        "SET session_replication_role = replica",
        "ALTER TABLE users DISABLE TRIGGER USER",
        "DELETE FROM users",
        "DROP TABLE user_changes",
        "CREATE TABLE mine (x int)",
    ] {
        let error = sqlx::query(sql).execute(&mut own).await.expect_err(sql).to_string();
        assert!(
            error.contains("permission denied") || error.contains("must be owner"),
            "{sql}: refused for another reason: {error}"
        );
    }
}

/// Over mutual TLS, x-forwarded-for counts only
/// when Envoy's certificate presents it. Another holder of a certificate from
/// the mesh's CA (a service, an operator) cannot choose the address its
/// attempts count against.
#[tokio::test]
async fn over_mutual_tls_only_envoy_may_say_where_a_call_came_from() {
    let certs = bank_testkit::MeshCerts::make(&["auth-service", "envoy", "operator"]);
    let tls = certs.tls("auth-service");
    let a = Auth::start_with(|c| {
        c.tls = Some(tls);
        c.trust_forwarded_for = true;
        c.throttle.attempts_per_address = 3;
    })
    .await;
    let attempt = |client: AuthServiceClient<Channel>, email: String, from: String| async move {
        let mut req =
            tonic::Request::new(pb::LoginRequest { email, password: "not the password".into(), ..Default::default() });
        req.metadata_mut().insert("x-forwarded-for", from.parse().unwrap());
        client.clone().login(req).await.expect_err("no such user").code()
    };
    // Envoy: each attempt counts against the address Envoy saw.
    let envoy = tls_client(a.running.grpc_addr, &certs.tls("envoy")).await;
    for i in 0..5 {
        let code = attempt(envoy.clone(), format!("nobody{i}@envoy.test"), format!("203.0.113.{i}")).await;
        assert_eq!(code, Code::Unauthenticated, "attempt {i} through Envoy");
    }
    // The operator's claims count for nothing: its own address is counted,
    // and the fourth attempt is throttled whatever it claims.
    let operator = tls_client(a.running.grpc_addr, &certs.tls("operator")).await;
    let mut codes = Vec::new();
    for i in 0..4 {
        codes.push(attempt(operator.clone(), format!("nobody{i}@operator.test"), format!("198.51.100.{i}")).await);
    }
    assert_eq!(codes, [Code::Unauthenticated, Code::Unauthenticated, Code::Unauthenticated, Code::ResourceExhausted]);
}

/// Two instances run the standing feed on one database: one publishes at a
/// time, so each change reaches the stream once and in order, and neither
/// sends what the other already did (JetStream would drop the copy, or
/// refuse it while it replicates the first: "duplicate message id is in
/// process", a round lost and retried).
#[tokio::test]
async fn two_instances_publish_each_standing_once_without_racing() {
    let a = Auth::start().await;
    let second = a.second_instance().await;
    let user: uuid::Uuid = a.register("ada@example.com", PASSWORD).await.unwrap().user_id.parse().unwrap();
    // Bursts of changes committed at once: both instances find them waiting.
    for _ in 0..3 {
        let mut tx = a.db.begin().await.unwrap();
        for i in 0..100 {
            let roles = if i % 2 == 0 { vec!["customer", "teller"] } else { vec!["customer"] };
            sqlx::query("UPDATE users SET roles = $1 WHERE id = $2")
                .bind(&roles)
                .bind(user)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = std::time::Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar("SELECT count(*) FROM user_changes").fetch_one(&a.db).await.unwrap();
        if waiting == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{waiting} standings still unpublished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // This user's standings on the stream: 300, each once, in order.
    let client = bank_platform::nats::connect(&bank_testkit::nats_admin_url()).await.unwrap();
    let stream = async_nats::jetstream::new(client).get_stream(&a.config.standing_feed.stream).await.unwrap();
    let last = stream.get_info().await.unwrap().state.last_sequence;
    let mut ids = Vec::new();
    for n in 1..=last {
        let m = stream.get_raw_message(n).await.unwrap();
        if m.subject.ends_with(&user.to_string()) {
            let id = m.headers.get("Nats-Msg-Id").unwrap().as_str().to_owned();
            ids.push(id.trim_start_matches("user-change-").parse::<i64>().unwrap());
        }
    }
    assert_eq!(ids.len(), 300, "every change on the stream once");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in the order they were made: {ids:?}");
    // Neither instance published a standing the stream already held, and no
    // round was interrupted (both instances run in this process: one registry).
    let metrics = bank_platform::metrics::render();
    let value = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .map_or(0, |v| v.trim().parse().unwrap())
    };
    assert_eq!(value("user_standings_published_twice_total"), 0, "a standing published twice");
    assert_eq!(value("user_standing_feed_interrupted_total"), 0, "a round of the feed interrupted");
    second.stop().await.unwrap();
}

/// Each standing on the feed says the status it moved from, signed with the
/// rest: a reader tells a KYC approval from a reinstatement by the standing
/// alone.
#[tokio::test]
async fn each_standing_on_the_feed_says_the_status_it_moved_from() {
    let a = Auth::start().await;
    let admin = a.admin_token().await;
    let ada = a.register("ada@example.com", PASSWORD).await.unwrap();
    a.c().approve_customer(authed(pb::ApproveCustomerRequest { user_id: ada.user_id.clone() }, &admin)).await.unwrap();
    suspend(&a, &admin, &ada.user_id).await;
    assert_eventually!(
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM user_changes").fetch_one(&a.db).await.unwrap() == 0,
        Duration::from_secs(10),
        "the feed published both changes"
    );

    let client = bank_platform::nats::connect(&bank_testkit::nats_admin_url()).await.unwrap();
    let stream = async_nats::jetstream::new(client).get_stream(&a.config.standing_feed.stream).await.unwrap();
    let keys = KeyCache::from_jwks_url(format!("http://{}/.well-known/jwks.json", a.running.http_addr), None).unwrap();
    let mut moves = Vec::new();
    for n in 1..=stream.get_info().await.unwrap().state.last_sequence {
        let m = stream.get_raw_message(n).await.unwrap();
        if m.subject.ends_with(&ada.user_id) {
            let s = bank_platform::standing::verified(&keys, &m.subject, &m.payload).await.unwrap();
            moves.push((s.previous_status.unwrap(), s.status));
        }
    }
    let pairs: Vec<(&str, &str)> = moves.iter().map(|(p, s)| (p.as_str(), s.as_str())).collect();
    assert_eq!(pairs, [("PENDING_KYC", "ACTIVE"), ("ACTIVE", "SUSPENDED")]);
}

/// The current code of the secret an enrolment gave, `offset` seconds from now.
fn code(secret: &str, offset: i64) -> String {
    let totp = auth_service::second_factor::Totp::from_base32(secret, "ada@example.com").unwrap();
    totp.code_at((chrono::Utc::now().timestamp() + offset) as u64)
}

/// The `amr` and `auth_time` claims of an access token.
fn how_authenticated(token: &str) -> (Vec<String>, i64) {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let amr = json["amr"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()).collect();
    (amr, json["auth_time"].as_i64().unwrap())
}

async fn login_with(a: &Auth, code: &str) -> Result<pb::LoginResponse, tonic::Status> {
    let req = pb::LoginRequest {
        email: "ada@example.com".into(),
        password: PASSWORD.into(),
        second_factor_code: code.into(),
    };
    a.c().login(req).await.map(|r| r.into_inner())
}

/// Ada, registered and approved, enrolled: her token and the enrolment.
async fn enrolled(a: &Auth) -> (String, pb::EnrollSecondFactorResponse) {
    let admin = a.admin_token().await;
    let ada = a.register("ada@example.com", PASSWORD).await.unwrap();
    a.c().approve_customer(authed(pb::ApproveCustomerRequest { user_id: ada.user_id }, &admin)).await.unwrap();
    let token = a.login("ada@example.com", PASSWORD).await.unwrap().access_token;
    let enrolment = a.c().enroll_second_factor(authed(pb::EnrollSecondFactorRequest {}, &token)).await.unwrap();
    (token, enrolment.into_inner())
}

#[tokio::test]
async fn once_a_second_factor_is_confirmed_every_login_needs_a_fresh_code_once() {
    let a = Auth::start().await;
    let (token, enrolment) = enrolled(&a).await;
    assert!(enrolment.otpauth_uri.starts_with("otpauth://totp/bankmesh:"), "{}", enrolment.otpauth_uri);
    assert!(enrolment.otpauth_uri.contains(&format!("secret={}", enrolment.secret)));
    // The seed at rest is sealed: the database does not give it away.
    let stored: String = sqlx::query_scalar("SELECT seed FROM second_factors").fetch_one(&a.db).await.unwrap();
    assert!(stored.starts_with("sealed:v1:") && !stored.contains(&enrolment.secret), "{stored}");
    // Not confirmed yet: a password alone still signs in.
    let before = a.login("ada@example.com", PASSWORD).await.unwrap();
    assert_eq!(how_authenticated(&before.access_token).0, ["pwd"]);

    let confirm = |code: String| pb::ConfirmSecondFactorRequest { code };
    let wrong = a.c().confirm_second_factor(authed(confirm("000000".into()), &token)).await.unwrap_err();
    assert_eq!(fields(&wrong), vec!["code"]);
    let now = code(&enrolment.secret, 0);
    let codes = a.c().confirm_second_factor(authed(confirm(now.clone()), &token)).await.unwrap().into_inner();
    assert_eq!(codes.recovery_codes.len(), 10);
    // Sessions started with the password alone are over.
    assert_eq!(a.refresh(&before.refresh_token).await.unwrap_err().code(), Code::Unauthenticated);

    assert_eq!(reason(&login_with(&a, "").await.unwrap_err()), "SECOND_FACTOR_REQUIRED");
    assert_eq!(reason(&login_with(&a, &now).await.unwrap_err()), "SECOND_FACTOR_INVALID", "the code confirm took");
    let next = code(&enrolment.secret, 30);
    let signed_in = login_with(&a, &next).await.unwrap();
    let (amr, auth_time) = how_authenticated(&signed_in.access_token);
    assert_eq!(amr, ["pwd", "otp"]);
    assert!((chrono::Utc::now().timestamp() - auth_time).abs() < 5);
    assert!(signed_in.user.unwrap().second_factor_enabled);
    assert_eq!(reason(&login_with(&a, &next).await.unwrap_err()), "SECOND_FACTOR_INVALID", "replayed");
    for offset in [-90, 90] {
        let out_of_window = login_with(&a, &code(&enrolment.secret, offset)).await.unwrap_err();
        assert_eq!(reason(&out_of_window), "SECOND_FACTOR_INVALID", "{offset} s away");
    }
    // A recovery code stands in for a code, once.
    let recovery = &codes.recovery_codes[0];
    assert_eq!(how_authenticated(&login_with(&a, recovery).await.unwrap().access_token).0, ["pwd", "otp"]);
    assert_eq!(reason(&login_with(&a, recovery).await.unwrap_err()), "SECOND_FACTOR_INVALID", "spent");

    // A refresh is the same session: how and when it began, not a new proof.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refreshed = a.refresh(&signed_in.refresh_token).await.unwrap();
    assert_eq!(how_authenticated(&refreshed.access_token), (amr, auth_time));
}

#[tokio::test]
async fn guessing_codes_is_throttled_per_user_and_then_even_the_right_code_waits() {
    let a = Auth::start().await;
    let (token, enrolment) = enrolled(&a).await;
    let confirm = pb::ConfirmSecondFactorRequest { code: code(&enrolment.secret, 0) };
    a.c().confirm_second_factor(authed(confirm, &token)).await.unwrap();
    let mut reasons = Vec::new();
    for guess in ["111111", "222222", "333333", "444444", "555555"] {
        reasons.push(reason(&login_with(&a, guess).await.unwrap_err()));
    }
    assert_eq!(reasons, ["SECOND_FACTOR_INVALID"; 5]);
    let right = login_with(&a, &code(&enrolment.secret, 30)).await.unwrap_err();
    assert_eq!((right.code(), reason(&right)), (Code::ResourceExhausted, "SECOND_FACTOR_THROTTLED".to_owned()));
}

#[tokio::test]
async fn turning_the_second_factor_off_takes_a_good_code_and_enrolling_over_it_is_refused() {
    let a = Auth::start().await;
    let (token, enrolment) = enrolled(&a).await;
    let confirm = pb::ConfirmSecondFactorRequest { code: code(&enrolment.secret, 0) };
    let recovery = a.c().confirm_second_factor(authed(confirm, &token)).await.unwrap().into_inner().recovery_codes;
    let token = login_with(&a, &code(&enrolment.secret, 30)).await.unwrap().access_token;
    // Enrolling again over it is refused: it must be turned off first.
    let again = a.c().enroll_second_factor(authed(pb::EnrollSecondFactorRequest {}, &token)).await.unwrap_err();
    assert_eq!(reason(&again), "SECOND_FACTOR_ENABLED");
    let disable = |code: &str| pb::DisableSecondFactorRequest { code: code.into() };
    let wrong = a.c().disable_second_factor(authed(disable("123456"), &token)).await.unwrap_err();
    assert_eq!(fields(&wrong), vec!["code"]);
    assert_eq!(reason(&login_with(&a, "").await.unwrap_err()), "SECOND_FACTOR_REQUIRED", "still on");
    a.c().disable_second_factor(authed(disable(&recovery[3]), &token)).await.unwrap();
    let back = login_with(&a, "").await.unwrap();
    assert_eq!(how_authenticated(&back.access_token).0, ["pwd"], "a password alone again");
    assert!(!back.user.unwrap().second_factor_enabled);
}
