//! Access tokens: EdDSA JWTs with `kid`, checked by every service itself
//! (defense in depth). `TokenSigner` is what auth-service signs with;
//! `TokenVerifier` checks signature (JWKS, cached, refreshed on an unknown
//! `kid`), `exp`, `nbf`, `iss` and `aud`; `AuthLayer` runs it in front of every
//! gRPC method that is not public and puts the `Caller` into request extensions.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::{
    SigningKey,
    pkcs8::{DecodePrivateKey, EncodePrivateKey},
};
use futures::future::BoxFuture;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind, jwk::JwkSet};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::Status;
use tower::{Layer, Service};
use uuid::Uuid;

pub const ROLE_CUSTOMER: &str = "customer";
pub const ROLE_ADMIN: &str = "admin";
/// Staff who move money across the bank's boundary (Deposit, Withdraw).
pub const ROLE_TELLER: &str = "teller";
/// An internal service with credentials of its own (client credentials).
pub const ROLE_SERVICE: &str = "service";
/// The user status that may move money (KYC approved).
pub const STATUS_ACTIVE: &str = "ACTIVE";

/// The claims of a bankmesh access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    pub roles: Vec<String>,
    /// The user's status when the token was issued (PENDING_KYC, ACTIVE, SUSPENDED).
    pub status: String,
    /// The user's standing sequence number when the token was issued: a
    /// published standing with a larger one is newer than the token.
    #[serde(default)]
    pub sv: i64,
    /// How the session was started (RFC 8176): `pwd`, and `otp` once a
    /// second factor was given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub amr: Vec<String>,
    /// When the user last proved those (Unix seconds): a refreshed token
    /// keeps it, so it says how fresh the second factor is.
    #[serde(default)]
    pub auth_time: i64,
}

/// Who is calling, from a verified token. Never from a request field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: Uuid,
    pub roles: Vec<String>,
    pub status: String,
    /// When the token runs out (Unix seconds); `None` for internal callers.
    /// Long-lived calls (WatchBalance) end then.
    pub expires_at: Option<i64>,
    /// The standing sequence number the token was issued at (claim `sv`).
    pub standing_version: i64,
    /// When the holder last gave a second factor (the token's `auth_time`,
    /// if its `amr` has `otp`); `None` for a user without one.
    pub second_factor_at: Option<i64>,
}

/// The namespace of service principals' subjects (UUID v5 of the client id):
/// stable across restarts and instances, never a user's id (those are v7).
const SERVICE_SUBJECT_NAMESPACE: Uuid = Uuid::from_u128(0x6b61_6e6b_6d65_7368_8000_0000_0000_0001);

/// The subject of the service principal `client_id` (what auth-service's
/// IssueServiceToken puts in `sub`): a service that grants one principal a
/// right names it by its client id.
pub fn service_subject(client_id: &str) -> Uuid {
    Uuid::new_v5(&SERVICE_SUBJECT_NAMESPACE, client_id.as_bytes())
}

/// How recent a second factor must be for what needs a step-up (a large
/// transfer, a new webhook endpoint).
pub const STEP_UP_WINDOW_SECS: i64 = 300;

impl Caller {
    /// Whether the caller may do what needs a step-up: a user who signs in
    /// with a second factor gave it within the last `STEP_UP_WINDOW_SECS`
    /// (a refreshed token keeps the login's time, so refreshing is not
    /// enough). A user without one is not asked: the bank has not required
    /// it of them.
    pub fn stepped_up(&self, now: i64) -> bool {
        self.second_factor_at.is_none_or(|at| now - at <= STEP_UP_WINDOW_SECS)
    }

    pub fn is_admin(&self) -> bool {
        self.has(ROLE_ADMIN)
    }

    /// A teller, or an admin (who may act as one).
    pub fn is_teller(&self) -> bool {
        self.has(ROLE_TELLER) || self.is_admin()
    }

    pub fn is_service(&self) -> bool {
        self.has(ROLE_SERVICE)
    }

    fn has(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    pub fn is_active(&self) -> bool {
        self.status == STATUS_ACTIVE
    }
}

/// The verified caller of a request that passed the `AuthLayer`.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Caller, Status> {
    req.extensions().get::<Caller>().cloned().ok_or_else(|| crate::status::unauthenticated("missing access token"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("missing access token")]
    Missing,
    #[error("malformed access token")]
    Malformed,
    #[error("access token algorithm not accepted")]
    AlgorithmNotAccepted,
    #[error("access token signed by an unknown key")]
    UnknownKey,
    #[error("access token signature is invalid")]
    BadSignature,
    #[error("access token expired")]
    Expired,
    #[error("access token not yet valid")]
    NotYetValid,
    #[error("access token issuer or audience not accepted")]
    WrongIssuerOrAudience,
}

impl From<TokenError> for Status {
    fn from(e: TokenError) -> Self {
        crate::status::unauthenticated(e.to_string())
    }
}

/// A key's id: a digest of the public key, stable across restarts.
pub fn kid_of(key: &ed25519_dalek::VerifyingKey) -> String {
    URL_SAFE_NO_PAD.encode(&Sha256::digest(key.to_bytes())[..12])
}

/// An Ed25519 signing key with its key id.
#[derive(Clone)]
pub struct TokenSigner {
    kid: String,
    signing: SigningKey,
    encoding: EncodingKey,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A fresh random key (dev, tests, or when no key file is configured).
    pub fn generate() -> Self {
        Self::from_signing_key(SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// A PKCS#8 PEM private key, as written by `openssl genpkey -algorithm ed25519`.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let key = SigningKey::from_pkcs8_pem(pem).context("not an Ed25519 PKCS#8 PEM key")?;
        Ok(Self::from_signing_key(key))
    }

    fn from_signing_key(signing: SigningKey) -> Self {
        let kid = kid_of(&signing.verifying_key());
        let der = signing.to_pkcs8_der().expect("ed25519 keys encode as PKCS#8");
        let encoding = EncodingKey::from_ed_der(der.as_bytes());
        Self { kid, signing, encoding }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A raw Ed25519 signature of `message` (event envelopes).
    pub fn sign_bytes(&self, message: &[u8]) -> Vec<u8> {
        use ed25519_dalek::Signer;
        self.signing.sign(message).to_bytes().to_vec()
    }

    pub fn verifying_key(&self) -> ed25519_dalek::VerifyingKey {
        self.signing.verifying_key()
    }

    /// (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM): key files for
    /// processes started by tests.
    pub fn to_pems(&self) -> (String, String) {
        use ed25519_dalek::pkcs8::{EncodePublicKey, spki::der::pem::LineEnding};
        let private = self.signing.to_pkcs8_pem(LineEnding::LF).expect("ed25519 keys encode as PKCS#8");
        let public = self.verifying_key().to_public_key_pem(LineEnding::LF).expect("ed25519 keys encode as SPKI");
        (private.to_string(), public)
    }

    pub fn sign(&self, claims: &Claims) -> Result<String> {
        self.sign_jws(claims)
    }

    /// A compact JWS (EdDSA, this key's id) over `claims`.
    pub fn sign_jws(&self, claims: &impl Serialize) -> Result<String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).context("failed to sign")
    }

    /// A user's standing as auth-service publishes it: a JWS over the
    /// standing, for the audience `STANDING_AUDIENCE` and without expiry, so
    /// it can never pass as an access token (nor an access token as it).
    pub fn sign_standing(&self, standing: &crate::standing::Standing) -> Result<String> {
        self.sign_jws(&SignedStanding {
            aud: crate::standing::STANDING_AUDIENCE.to_owned(),
            standing: standing.clone(),
        })
    }

    /// The public half as a JWK (kty OKP, crv Ed25519).
    pub fn jwk(&self) -> serde_json::Value {
        public_jwk(&self.signing.verifying_key())
    }
}

/// An Ed25519 public key as a JWK (kty OKP, crv Ed25519), under its key id.
pub fn public_jwk(key: &ed25519_dalek::VerifyingKey) -> serde_json::Value {
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "alg": "EdDSA",
        "use": "sig",
        "kid": kid_of(key),
        "x": URL_SAFE_NO_PAD.encode(key.to_bytes()),
    })
}

/// Why a standing on the feed is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StandingRefusal {
    /// Signed with a key not known here: perhaps only not yet (try later).
    #[error("{0}")]
    UnknownKey(String),
    /// Not auth-service's: never taken.
    #[error("{0}")]
    Invalid(String),
}

#[derive(Serialize, Deserialize)]
struct SignedStanding {
    aud: String,
    #[serde(flatten)]
    standing: crate::standing::Standing,
}

/// A JWKS document for a set of signers (all live keys, for rotation).
pub fn jwks(signers: &[TokenSigner]) -> serde_json::Value {
    serde_json::json!({ "keys": signers.iter().map(TokenSigner::jwk).collect::<Vec<_>>() })
}

/// Public keys by `kid`: fixed, or fetched from a JWKS URL and refreshed when
/// a token names a `kid` we have not seen (key rotation), at most once a second.
pub struct KeyCache {
    keys: RwLock<HashMap<String, DecodingKey>>,
    jwks_url: Option<String>,
    http: reqwest::Client,
    last_refresh: tokio::sync::Mutex<Option<Instant>>,
}

const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(1);
const JWKS_TIMEOUT: Duration = Duration::from_secs(3);

impl KeyCache {
    pub fn fixed(signers: &[TokenSigner]) -> Result<Self> {
        let cache = Self::new(None);
        cache.load(&serde_json::from_value(jwks(signers))?);
        Ok(cache)
    }

    /// Keys from the JWKS at `url`, over HTTPS only and trusting the mesh's
    /// CA alone when `tls` is given.
    pub fn from_jwks_url(url: impl Into<String>, tls: Option<&crate::tls::Tls>) -> Result<Self> {
        let http = match tls {
            Some(tls) => tls.https_client(JWKS_TIMEOUT)?,
            None => reqwest::Client::builder().timeout(JWKS_TIMEOUT).build()?,
        };
        Ok(Self { http, ..Self::new(Some(url.into())) })
    }

    fn new(jwks_url: Option<String>) -> Self {
        Self {
            keys: RwLock::new(HashMap::new()),
            jwks_url,
            http: reqwest::Client::new(),
            last_refresh: tokio::sync::Mutex::new(None),
        }
    }

    /// Replaces the key set with the Ed25519 keys of `set`; other key types
    /// are ignored. The JWKS is the authority on which keys are live (a key
    /// it no longer lists is revoked), so a set is taken whole; but a set
    /// with no usable key is refused and the keys held are kept, so a broken
    /// response cannot take every token down.
    fn load(&self, set: &JwkSet) {
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else { continue };
            let jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(okp) = &jwk.algorithm else { continue };
            // jsonwebtoken indexes the first 32 bytes: refuse anything shorter.
            if URL_SAFE_NO_PAD.decode(&okp.x).map(|x| x.len()) != Ok(32) {
                continue;
            }
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, key);
            }
        }
        if keys.is_empty() {
            tracing::warn!("JWKS holds no usable Ed25519 key; keeping the keys held");
            return;
        }
        *self.keys.write().expect("key cache lock") = keys;
    }

    fn cached(&self, kid: &str) -> Option<DecodingKey> {
        self.keys.read().expect("key cache lock").get(kid).cloned()
    }

    /// Fetches the JWKS now (also used at start-up to warm the cache). The
    /// URL may name several instances, comma-separated (they publish the same
    /// keys): the first that answers is taken, so one that is down does not
    /// leave a service unable to learn a key.
    pub async fn refresh(&self) -> Result<()> {
        let Some(urls) = &self.jwks_url else { return Ok(()) };
        let mut failure = None;
        for url in urls.split(',').map(str::trim).filter(|u| !u.is_empty()) {
            match self.fetch(url).await {
                Ok(set) => {
                    self.load(&set);
                    return Ok(());
                }
                Err(e) => failure = Some(e),
            }
        }
        Err(failure.unwrap_or_else(|| anyhow::anyhow!("no JWKS URL configured")))
    }

    async fn fetch(&self, url: &str) -> Result<JwkSet> {
        self.http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .context("failed to fetch JWKS")?
            .json()
            .await
            .context("JWKS is not valid JSON")
    }

    /// The standing inside `jws` if auth-service signed it (one of the keys
    /// of its JWKS); otherwise why not.
    pub async fn verify_standing(&self, jws: &str) -> Result<crate::standing::Standing, StandingRefusal> {
        use StandingRefusal::Invalid;
        let header = jsonwebtoken::decode_header(jws).map_err(|_| Invalid("not a signed standing".to_owned()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(Invalid(format!("algorithm {:?} is not accepted", header.alg)));
        }
        let kid = header.kid.ok_or_else(|| Invalid("no key id".to_owned()))?;
        // Not known (yet): the JWKS may be unreachable right now, or a key
        // rotated in a moment ago.
        let key = self
            .get(&kid)
            .await
            .ok_or_else(|| StandingRefusal::UnknownKey(format!("signed with a key not known here (yet): {kid:?}")))?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_audience(&[crate::standing::STANDING_AUDIENCE]);
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["aud"]);
        jsonwebtoken::decode::<SignedStanding>(jws, &key, &validation)
            .map(|d| d.claims.standing)
            .map_err(|e| Invalid(format!("the standing does not verify: {e}")))
    }

    async fn get(&self, kid: &str) -> Option<DecodingKey> {
        if let Some(key) = self.cached(kid) {
            return Some(key);
        }
        self.jwks_url.as_ref()?;
        let mut last = self.last_refresh.lock().await;
        // Someone else may have refreshed while we waited for the lock.
        if let Some(key) = self.cached(kid) {
            return Some(key);
        }
        if last.is_some_and(|t| t.elapsed() < MIN_REFRESH_INTERVAL) {
            return None;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %format!("{e:#}"), "JWKS refresh failed");
        }
        self.cached(kid)
    }
}

/// Checks access tokens against a `KeyCache`, an issuer and an audience.
pub struct TokenVerifier {
    keys: Arc<KeyCache>,
    validation: Validation,
    /// Tokens whose signature and claims already verified, until they expire:
    /// a client sends the same access token with every call, and the Ed25519
    /// check is most of the per-call CPU of a read. Keyed by the whole token,
    /// so only a byte-identical token hits; bounded by clearing when full.
    verified: std::sync::Mutex<std::collections::HashMap<String, (Caller, Claims)>>,
}

/// Most tokens remembered as verified at once.
const VERIFIED_CACHE_MAX: usize = 10_000;

impl TokenVerifier {
    pub fn new(keys: Arc<KeyCache>, issuer: &str, audience: &str) -> Self {
        // Only EdDSA: `alg: none`, HS256 with a public key as secret and
        // every other algorithm are refused before any key is looked at.
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        Self { keys, validation, verified: Default::default() }
    }

    /// A verifier following auth-service's JWKS at `jwks_url`. An unreachable
    /// JWKS at start is not fatal: auth-service may start later, and unknown
    /// kids refresh on demand.
    pub async fn from_jwks_url(
        jwks_url: &str,
        issuer: &str,
        audience: &str,
        tls: Option<&crate::tls::Tls>,
    ) -> Result<Self> {
        let keys = Arc::new(KeyCache::from_jwks_url(jwks_url.to_owned(), tls)?);
        if let Err(e) = keys.refresh().await {
            tracing::warn!(error = %format!("{e:#}"), "JWKS not reachable yet");
        }
        Ok(Self::new(keys, issuer, audience))
    }

    pub async fn verify(&self, token: &str) -> Result<(Caller, Claims), TokenError> {
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let leeway = self.validation.leeway as i64;
        {
            let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            match verified.get(token) {
                Some((_, claims)) if claims.exp + leeway < now => {
                    verified.remove(token);
                    return Err(TokenError::Expired);
                }
                Some(hit) => return Ok(hit.clone()),
                None => {}
            }
        }
        let verified = self.verify_uncached(token).await?;
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= VERIFIED_CACHE_MAX {
            cache.clear();
        }
        cache.insert(token.to_owned(), verified.clone());
        Ok(verified)
    }

    async fn verify_uncached(&self, token: &str) -> Result<(Caller, Claims), TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::AlgorithmNotAccepted);
        }
        let kid = header.kid.ok_or(TokenError::UnknownKey)?;
        let key = self.keys.get(&kid).await.ok_or(TokenError::UnknownKey)?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::ImmatureSignature => TokenError::NotYetValid,
            ErrorKind::InvalidSignature | ErrorKind::InvalidEddsaKey => TokenError::BadSignature,
            ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => TokenError::WrongIssuerOrAudience,
            ErrorKind::InvalidAlgorithm => TokenError::AlgorithmNotAccepted,
            _ => TokenError::Malformed,
        })?;
        let user_id = Uuid::parse_str(&data.claims.sub).map_err(|_| TokenError::Malformed)?;
        // The nil id is the bank itself (owner of the system accounts): no
        // token may speak as it.
        if user_id.is_nil() {
            return Err(TokenError::Malformed);
        }
        let caller = Caller {
            user_id,
            roles: data.claims.roles.clone(),
            status: data.claims.status.clone(),
            expires_at: Some(data.claims.exp),
            standing_version: data.claims.sv,
            second_factor_at: Some(data.claims.auth_time).filter(|_| data.claims.amr.iter().any(|m| m == "otp")),
        };
        Ok((caller, data.claims))
    }

    /// The keys it checks against (also those of auth-service's other
    /// signed messages: the standing feed).
    pub fn keys(&self) -> Arc<KeyCache> {
        self.keys.clone()
    }

    /// Verifies the `authorization: Bearer …` value of a request.
    pub async fn verify_header(&self, value: Option<&str>) -> Result<(Caller, Claims), TokenError> {
        let value = value.ok_or(TokenError::Missing)?;
        let token =
            value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")).ok_or(TokenError::Malformed)?;
        self.verify(token.trim()).await
    }
}

/// Methods reachable without a token, in addition to health and reflection.
#[derive(Clone)]
pub struct AuthLayer {
    verifier: Arc<TokenVerifier>,
    public_methods: Arc<[&'static str]>,
}

impl AuthLayer {
    /// `public_methods` are full gRPC paths such as `/bank.v1.AuthService/Login`.
    pub fn new(verifier: Arc<TokenVerifier>, public_methods: &[&'static str]) -> Self {
        Self { verifier, public_methods: public_methods.into() }
    }

    fn is_public(&self, path: &str) -> bool {
        path.starts_with("/grpc.health.v1.Health/")
            || path.starts_with("/grpc.reflection.")
            || self.public_methods.contains(&path)
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, auth: self.clone() }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: AuthLayer,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for AuthService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        // The ready service goes into the future; a fresh clone stays here.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = self.auth.clone();
        Box::pin(async move {
            if auth.is_public(req.uri().path()) {
                return inner.call(req).await;
            }
            let header = req.headers().get(http::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            match auth.verifier.verify_header(header).await {
                Ok((caller, _)) => {
                    req.extensions_mut().insert(caller);
                    inner.call(req).await
                }
                Err(e) => Ok(Status::from(e).into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "bankmesh-auth";
    const AUD: &str = "bankmesh";

    fn claims(offset_exp: i64, offset_nbf: i64) -> Claims {
        let now = chrono::Utc::now().timestamp();
        Claims {
            sub: Uuid::now_v7().to_string(),
            iss: ISS.into(),
            aud: AUD.into(),
            exp: now + offset_exp,
            nbf: now + offset_nbf,
            iat: now,
            jti: Uuid::now_v7().to_string(),
            roles: vec![ROLE_CUSTOMER.into()],
            status: STATUS_ACTIVE.into(),
            sv: 0,
            amr: vec!["pwd".into()],
            auth_time: now,
        }
    }

    fn verifier(signers: &[TokenSigner]) -> TokenVerifier {
        TokenVerifier::new(Arc::new(KeyCache::fixed(signers).unwrap()), ISS, AUD)
    }

    #[test]
    fn a_jwks_with_no_usable_key_does_not_take_away_the_keys_held() {
        let signer = TokenSigner::generate();
        let cache = KeyCache::fixed(std::slice::from_ref(&signer)).unwrap();
        cache.load(&serde_json::from_value(serde_json::json!({ "keys": [] })).unwrap());
        assert!(cache.cached(signer.kid()).is_some());
        // A set that lists other keys is the authority: the old one is revoked.
        let next = TokenSigner::generate();
        cache.load(&serde_json::from_value(jwks(std::slice::from_ref(&next))).unwrap());
        assert!(cache.cached(signer.kid()).is_none() && cache.cached(next.kid()).is_some());
    }

    #[tokio::test]
    async fn a_jwks_url_naming_two_instances_learns_the_keys_from_the_one_that_answers() {
        let signer = TokenSigner::generate();
        let set = jwks(std::slice::from_ref(&signer));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = listener.local_addr().unwrap();
        let app =
            axum::Router::new().route("/jwks", axum::routing::get(move || std::future::ready(axum::Json(set.clone()))));
        tokio::spawn(async move { axum::serve(listener, app).await });
        // A port nothing listens on: the instance that is down.
        let down = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let cache = KeyCache::from_jwks_url(format!("http://{down}/jwks,http://{up}/jwks"), None).unwrap();
        cache.refresh().await.unwrap();
        assert!(cache.cached(signer.kid()).is_some());
        let none_up = KeyCache::from_jwks_url(format!("http://{down}/jwks"), None).unwrap();
        assert!(none_up.refresh().await.is_err());
    }

    #[tokio::test]
    async fn a_standing_verifies_only_as_signed_and_never_passes_for_a_token() {
        let (signer, other) = (TokenSigner::generate(), TokenSigner::generate());
        let standing = crate::standing::Standing {
            user_id: Uuid::now_v7(),
            status: "SUSPENDED".into(),
            roles: vec![ROLE_CUSTOMER.into()],
            seq: 7,
            previous_status: Some("ACTIVE".into()),
        };
        let keys = KeyCache::fixed(std::slice::from_ref(&signer)).unwrap();
        let jws = signer.sign_standing(&standing).unwrap();
        assert_eq!(keys.verify_standing(&jws).await.unwrap(), standing);
        assert!(keys.verify_standing(&other.sign_standing(&standing).unwrap()).await.is_err(), "another key");
        assert!(keys.verify_standing(&serde_json::to_string(&standing).unwrap()).await.is_err(), "unsigned");
        let (head, rest) = jws.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let forged = serde_json::json!({"aud": crate::standing::STANDING_AUDIENCE, "user_id": standing.user_id,
            "status": "ACTIVE", "roles": ["customer"], "seq": 1_000_000});
        let forged = format!("{head}.{}.{sig}", URL_SAFE_NO_PAD.encode(forged.to_string()));
        assert!(keys.verify_standing(&forged).await.is_err(), "a changed body under the old signature");
        // Neither kind of message passes for the other.
        assert!(verifier(std::slice::from_ref(&signer)).verify(&jws).await.is_err(), "a standing as a token");
        let token = signer.sign(&claims(60, 0)).unwrap();
        assert!(keys.verify_standing(&token).await.is_err(), "a token as a standing");
    }

    #[tokio::test]
    async fn a_valid_token_yields_its_caller() {
        let signer = TokenSigner::generate();
        let c = claims(60, 0);
        let token = signer.sign(&c).unwrap();
        let (caller, got) = verifier(&[signer]).verify(&token).await.unwrap();
        assert_eq!(caller.user_id.to_string(), c.sub);
        assert_eq!(got, c);
    }

    #[tokio::test]
    async fn no_token_speaks_as_the_bank() {
        let signer = TokenSigner::generate();
        let mut c = claims(60, 0);
        c.sub = Uuid::nil().to_string();
        let token = signer.sign(&c).unwrap();
        assert_eq!(verifier(&[signer]).verify(&token).await.unwrap_err(), TokenError::Malformed);
    }

    #[tokio::test]
    async fn expired_and_not_yet_valid_tokens_are_refused() {
        let signer = TokenSigner::generate();
        let v = verifier(std::slice::from_ref(&signer));
        let expired = signer.sign(&claims(-60, -120)).unwrap();
        assert_eq!(v.verify(&expired).await.unwrap_err(), TokenError::Expired);
        let future = signer.sign(&claims(600, 300)).unwrap();
        assert_eq!(v.verify(&future).await.unwrap_err(), TokenError::NotYetValid);
    }

    #[tokio::test]
    async fn a_remembered_token_is_still_refused_once_it_expires() {
        let signer = TokenSigner::generate();
        let v = verifier(std::slice::from_ref(&signer));
        // Expired 4 s ago: still inside the 5 s leeway, for about a second.
        let token = signer.sign(&claims(-4, -60)).unwrap();
        assert!(v.verify(&token).await.is_ok());
        assert!(v.verify(&token).await.is_ok(), "answered from the verified cache");
        tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
        assert_eq!(v.verify(&token).await.unwrap_err(), TokenError::Expired);
        // A different token is never a hit, even with the same claims.
        let other = TokenSigner::generate().sign(&claims(60, 0)).unwrap();
        assert_eq!(v.verify(&other).await.unwrap_err(), TokenError::UnknownKey);
    }

    #[tokio::test]
    async fn tampered_payload_fails_the_signature() {
        let signer = TokenSigner::generate();
        let token = signer.sign(&claims(60, 0)).unwrap();
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut c = claims(60, 0);
        c.roles = vec![ROLE_ADMIN.into()];
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        let forged = parts.join(".");
        assert_eq!(verifier(&[signer]).verify(&forged).await.unwrap_err(), TokenError::BadSignature);
    }

    #[tokio::test]
    async fn alg_none_and_hs256_confusion_are_refused() {
        let signer = TokenSigner::generate();
        let v = verifier(std::slice::from_ref(&signer));
        let c = claims(60, 0);
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap());
        let none_header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#, signer.kid()));
        assert!(v.verify(&format!("{none_header}.{body}.")).await.is_err());

        // HS256 "signed" with the public key bytes as the HMAC secret.
        let public = URL_SAFE_NO_PAD.decode(signer.jwk()["x"].as_str().unwrap()).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(signer.kid().to_owned());
        let hs = jsonwebtoken::encode(&header, &c, &EncodingKey::from_secret(&public)).unwrap();
        assert_eq!(v.verify(&hs).await.unwrap_err(), TokenError::AlgorithmNotAccepted);
    }

    #[tokio::test]
    async fn unknown_keys_and_wrong_audience_are_refused() {
        let trusted = TokenSigner::generate();
        let stranger = TokenSigner::generate();
        let v = verifier(std::slice::from_ref(&trusted));
        let token = stranger.sign(&claims(60, 0)).unwrap();
        assert_eq!(v.verify(&token).await.unwrap_err(), TokenError::UnknownKey);
        let mut c = claims(60, 0);
        c.aud = "someone-else".into();
        let token = trusted.sign(&c).unwrap();
        assert_eq!(v.verify(&token).await.unwrap_err(), TokenError::WrongIssuerOrAudience);
    }

    #[tokio::test]
    async fn several_live_keys_verify_for_rotation() {
        let old = TokenSigner::generate();
        let new = TokenSigner::generate();
        let v = verifier(&[old.clone(), new.clone()]);
        assert!(v.verify(&old.sign(&claims(60, 0)).unwrap()).await.is_ok());
        assert!(v.verify(&new.sign(&claims(60, 0)).unwrap()).await.is_ok());
    }

    #[tokio::test]
    async fn garbage_is_malformed_not_a_panic() {
        let v = verifier(&[TokenSigner::generate()]);
        for junk in ["", "a.b.c", "....", "eyJhbGciOiJFZERTQSJ9", "Bearer x"] {
            assert!(v.verify(junk).await.is_err());
        }
        assert_eq!(v.verify_header(None).await.unwrap_err(), TokenError::Missing);
        assert_eq!(v.verify_header(Some("Basic abc")).await.unwrap_err(), TokenError::Malformed);
    }
}
