//! Service principals: internal services that call with a token of their own
//! (client credentials). Ids and secrets come from `SERVICE_CLIENTS`
//! (`id:secret,id:secret`) and `SERVICE_CLIENTS_FILE` (one `id:secret` per
//! line, `#` comments); only SHA-256 digests of the secrets stay in memory.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// Secrets shorter than this are refused at start: they are machine secrets,
/// not passwords, and are never throttled as gently.
pub const MIN_SECRET_CHARS: usize = 24;

#[derive(Clone, Default)]
pub struct ServiceClients(BTreeMap<String, [u8; 32]>);

impl std::fmt::Debug for ServiceClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.starts_with('-')
}

impl ServiceClients {
    /// Adds the `id:secret` entries of `text`, separated by `separator`
    /// (`,` in the environment, a new line in a file, so a file's secrets may
    /// hold commas). `source` names where they came from in errors, which
    /// never echo an entry that could be a piece of a secret.
    pub fn add(&mut self, text: &str, separator: char, source: &str) -> Result<()> {
        let entries = text.split(separator).map(str::trim).filter(|e| !e.is_empty() && !e.starts_with('#'));
        for (n, entry) in entries.enumerate() {
            let Some((id, secret)) = entry.split_once(':') else {
                bail!("{source}: entry {} is not of the form id:secret", n + 1);
            };
            if !valid_id(id) {
                bail!("{source}: the client id of entry {} must be 1-64 of a-z, 0-9 and '-'", n + 1);
            }
            if secret.chars().count() < MIN_SECRET_CHARS {
                bail!("{source}: the secret of client {id} needs at least {MIN_SECRET_CHARS} characters");
            }
            if self.0.insert(id.to_owned(), digest(secret)).is_some() {
                bail!("{source}: client {id} is listed twice");
            }
        }
        Ok(())
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// The principal's subject when `secret` is `id`'s. The comparison takes
    /// the same time for an unknown id, a wrong secret and the right one.
    pub fn verify(&self, id: &str, secret: &str) -> Option<Uuid> {
        let presented = digest(secret);
        let (known, expected) = match self.0.get(id) {
            Some(d) => (true, *d),
            None => (false, digest("no such client: compared anyway")),
        };
        let matches: bool = presented.ct_eq(&expected).into();
        (known && matches).then(|| Self::subject(id))
    }

    pub fn subject(id: &str) -> Uuid {
        bank_platform::auth::service_subject(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-long-enough-service-secret";

    #[test]
    fn the_right_secret_verifies_to_a_stable_subject() {
        let mut c = ServiceClients::default();
        c.add(&format!("payments:{SECRET}, fees:{SECRET}-2"), ',', "SERVICE_CLIENTS").unwrap();
        assert_eq!(c.verify("payments", SECRET), Some(ServiceClients::subject("payments")));
        assert_ne!(ServiceClients::subject("payments"), ServiceClients::subject("fees"));
        assert_eq!(c.verify("payments", "a-long-enough-service-secreT"), None);
        assert_eq!(c.verify("fees", SECRET), None);
        assert_eq!(c.verify("nobody", SECRET), None);
    }

    #[test]
    fn bad_configuration_is_refused_without_showing_the_secret() {
        for bad in [
            "payments",
            "Pay:0123456789012345678901234",
            "p:short",
            "p:0123456789012345678901234,p:0123456789012345678901234",
            "0123456789,0123456789012345678901234:x",
        ] {
            let err = ServiceClients::default().add(bad, ',', "SERVICE_CLIENTS").unwrap_err().to_string();
            assert!(!err.contains("0123456789"), "{err}");
            assert!(err.starts_with("SERVICE_CLIENTS: "), "{err}");
        }
    }

    #[test]
    fn files_take_one_entry_per_line_with_comments() {
        let mut c = ServiceClients::default();
        c.add(&format!("# internal services\npayments:{SECRET},with-a-comma\n\n"), '\n', "file").unwrap();
        assert_eq!(c.ids().collect::<Vec<_>>(), ["payments"]);
        assert!(c.verify("payments", &format!("{SECRET},with-a-comma")).is_some());
    }
}
