//! Configuration from environment variables behind a small trait, so parsing
//! is unit-tested with a map instead of the real environment.

use std::{collections::HashMap, fmt::Display, str::FromStr};

use anyhow::{Context, Result};

pub trait Env {
    fn var(&self, key: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).cloned()
    }
}

impl Env for HashMap<&str, &str> {
    fn var(&self, key: &str) -> Option<String> {
        self.get(key).map(|v| v.to_string())
    }
}

/// A string value or its default.
pub fn string(env: &impl Env, key: &str, default: &str) -> String {
    env.var(key).unwrap_or_else(|| default.to_owned())
}

/// A parsed value or its default; a value that does not parse is an error
/// naming the variable (never silently the default).
pub fn parse<T>(env: &impl Env, key: &str, default: T) -> Result<T>
where
    T: FromStr,
    T::Err: Display,
{
    match env.var(key) {
        None => Ok(default),
        Some(raw) => raw
            .parse::<T>()
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("invalid value for {key}: {raw:?}")),
    }
}

/// A required value.
pub fn required(env: &impl Env, key: &str) -> Result<String> {
    env.var(key).with_context(|| format!("{key} must be set"))
}

/// Hides the password of a URL for the effective-config log line.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_when_unset_and_bad_values_are_errors() {
        let env: HashMap<&str, &str> = HashMap::from([("PORT", "8080"), ("BAD", "x")]);
        assert_eq!(parse::<u16>(&env, "PORT", 1).unwrap(), 8080);
        assert_eq!(parse::<u16>(&env, "MISSING", 7).unwrap(), 7);
        let err = parse::<u16>(&env, "BAD", 7).unwrap_err().to_string();
        assert!(err.contains("BAD"), "{err}");
        assert!(required(&env, "MISSING").is_err());
    }

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
    }
}
