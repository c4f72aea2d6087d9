//! Signed events. command-service's relay signs each event envelope exactly
//! as stored (Ed25519, `EVENT_SIGNING_KEY`) and appends the signature and its
//! key id as the envelope's last fields; a consumer verifies them against the
//! public keys it was given (`EVENT_VERIFYING_KEYS`) before applying anything.
//! Whoever can publish on NATS but does not hold the key cannot make an event
//! the projector applies. A stream message carrying many events (an
//! `EventBatch`) is signed once, the same way.

use std::collections::HashMap;

use anyhow::{Context, Result};
use ed25519_dalek::{Signature, VerifyingKey, pkcs8::DecodePublicKey};

use bank_proto::v1 as pb;
use prost::Message;

use crate::auth::{TokenSigner, kid_of};

/// The previous hash of an account's first event.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// Each account's events form a hash chain: an event's hash is SHA-256(the
/// previous event's hash ‖ the envelope encoded with its hash, signature and
/// key id empty). Encoding is deterministic (maps are BTreeMaps), so anyone
/// holding the envelope recomputes it.
pub fn chain_hash(previous: &[u8], envelope: &bank_proto::v1::EventEnvelope) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let unsealed = bank_proto::v1::EventEnvelope {
        hash: Vec::new(),
        signature: Vec::new(),
        signing_key_id: String::new(),
        ..envelope.clone()
    };
    let mut h = Sha256::new();
    h.update(previous);
    h.update(unsealed.encode_to_vec());
    h.finalize().to_vec()
}

/// Whether `envelope` carries the hash that chains it to `previous`.
pub fn chain_link_holds(previous: &[u8], envelope: &bank_proto::v1::EventEnvelope) -> bool {
    chain_hash(previous, envelope) == envelope.hash
}

/// `events` (envelopes as stored) as one signed stream message.
pub fn sign_batch(events: Vec<Vec<u8>>, signer: &TokenSigner) -> Vec<u8> {
    let body = pb::EventBatch { events, ..Default::default() }.encode_to_vec();
    let suffix = pb::EventBatch {
        signature: signer.sign_bytes(&body),
        signing_key_id: signer.kid().to_owned(),
        ..Default::default()
    }
    .encode_to_vec();
    [body, suffix].concat()
}

/// The envelopes a stream message carries: a batch's (`batch`: it came on a
/// batch subject) or the message itself. Only decodes; `verify_batch` and a
/// consumer's own checks decide whether to believe them.
pub fn events_of(batch: bool, payload: &[u8]) -> Result<Vec<pb::EventEnvelope>, String> {
    let decode = |bytes: &[u8]| pb::EventEnvelope::decode(bytes).map_err(|e| format!("undecodable envelope: {e}"));
    if !batch {
        return Ok(vec![decode(payload)?]);
    }
    let batch = pb::EventBatch::decode(payload).map_err(|e| format!("undecodable batch: {e}"))?;
    batch.events.iter().map(|e| decode(e)).collect()
}

/// Checks a batch's one signature: it is the message's last fields, over
/// everything before them.
pub fn verify_batch(payload: &[u8], batch: &pb::EventBatch, keys: &EventKeys) -> Result<(), String> {
    verify_suffixed(payload, &batch.signature, &batch.signing_key_id, keys, |signature, kid| {
        pb::EventBatch { signature, signing_key_id: kid, ..Default::default() }.encode_to_vec()
    })
}

/// Checks an envelope published on its own: signature and key id are its
/// last fields, over the envelope as stored.
pub fn verify_envelope(payload: &[u8], env: &pb::EventEnvelope, keys: &EventKeys) -> Result<(), String> {
    verify_suffixed(payload, &env.signature, &env.signing_key_id, keys, |signature, kid| {
        pb::EventEnvelope { signature, signing_key_id: kid, ..Default::default() }.encode_to_vec()
    })
}

/// `payload` ends with `suffix(signature, kid)`, and `signature` by `kid`
/// covers what comes before it.
fn verify_suffixed(
    payload: &[u8],
    signature: &[u8],
    kid: &str,
    keys: &EventKeys,
    suffix: impl FnOnce(Vec<u8>, String) -> Vec<u8>,
) -> Result<(), String> {
    if signature.is_empty() {
        return Err("unsigned event".into());
    }
    let suffix = suffix(signature.to_vec(), kid.to_owned());
    let signed = payload.strip_suffix(suffix.as_slice()).ok_or("the signature is not the message's last field")?;
    keys.verify(kid, signed, signature).map_err(|e| format!("bad signature: {e}"))
}

/// The public keys events may be signed with, by key id.
#[derive(Debug, Clone, Default)]
pub struct EventKeys(HashMap<String, VerifyingKey>);

impl EventKeys {
    /// The public halves of `signers` (tests).
    pub fn of(signers: &[TokenSigner]) -> Self {
        Self(signers.iter().map(|s| (s.kid().to_owned(), s.verifying_key())).collect())
    }

    /// SubjectPublicKeyInfo PEMs, as `openssl pkey -pubout` writes them.
    pub fn from_public_pems<'a>(pems: impl IntoIterator<Item = (&'a str, String)>) -> Result<Self> {
        let mut keys = HashMap::new();
        for (name, pem) in pems {
            let key = VerifyingKey::from_public_key_pem(&pem)
                .with_context(|| format!("{name} is not an Ed25519 public key PEM"))?;
            keys.insert(kid_of(&key), key);
        }
        Ok(Self(keys))
    }

    /// From `EVENT_VERIFYING_KEYS` (comma-separated file paths); `None` when unset.
    pub fn from_env(env: &impl crate::config::Env) -> Result<Option<Self>> {
        Self::from_env_var(env, "EVENT_VERIFYING_KEYS")
    }

    /// Every key as a JWK, in key-id order (a JWKS's `keys`).
    pub fn jwks(&self) -> Vec<serde_json::Value> {
        let mut kids: Vec<&String> = self.0.keys().collect();
        kids.sort();
        kids.into_iter().map(|kid| crate::auth::public_jwk(&self.0[kid])).collect()
    }

    /// From the public key PEM files `var` names (comma-separated paths);
    /// `None` when unset.
    pub fn from_env_var(env: &impl crate::config::Env, var: &str) -> Result<Option<Self>> {
        let Some(paths) = env.var(var) else { return Ok(None) };
        let mut pems = Vec::new();
        for path in paths.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let pem = std::fs::read_to_string(path).with_context(|| format!("cannot read event key {path}"))?;
            pems.push((path, pem));
        }
        Self::from_public_pems(pems.iter().map(|(p, k)| (*p, k.clone()))).map(Some)
    }

    /// Checks `signature` over `message` by the key `kid`.
    pub fn verify(&self, kid: &str, message: &[u8], signature: &[u8]) -> Result<(), String> {
        let key = self.0.get(kid).ok_or_else(|| format!("signed with an unknown key {kid:?}"))?;
        let signature = Signature::from_slice(signature).map_err(|_| "the signature is malformed".to_owned())?;
        key.verify_strict(message, &signature).map_err(|_| "the signature does not verify".to_owned())
    }
}

/// The signing key of command-service: `EVENT_SIGNING_KEY` (a PKCS#8 PEM
/// file), or a generated one for development.
pub fn signer_from_env(env: &impl crate::config::Env) -> Result<TokenSigner> {
    signer_from_file(env, "EVENT_SIGNING_KEY", "events")
}

/// The Ed25519 key in the PKCS#8 PEM file `var` names, or a generated one
/// for development (what it signs then verifies only while this process runs).
pub fn signer_from_file(env: &impl crate::config::Env, var: &str, signs: &str) -> Result<TokenSigner> {
    match env.var(var) {
        Some(path) => {
            let pem = std::fs::read_to_string(&path).with_context(|| format!("cannot read {var} {path}"))?;
            TokenSigner::from_pem(&pem).with_context(|| format!("{var} {path}"))
        }
        None => {
            tracing::warn!("{var} not set: {signs} are signed with a generated dev key");
            Ok(TokenSigner::generate())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_right_key_and_the_exact_message_verify() {
        let (signer, other) = (TokenSigner::generate(), TokenSigner::generate());
        let keys = EventKeys::of(std::slice::from_ref(&signer));
        let sig = signer.sign_bytes(b"event");
        assert!(keys.verify(signer.kid(), b"event", &sig).is_ok());
        assert!(keys.verify(signer.kid(), b"evenT", &sig).is_err());
        assert!(keys.verify(other.kid(), b"event", &other.sign_bytes(b"event")).is_err(), "unknown key");
        assert!(keys.verify(signer.kid(), b"event", &other.sign_bytes(b"event")).is_err(), "someone else's signature");
    }
}
