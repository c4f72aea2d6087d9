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
    Ok(parsed(env, key).map_err(anyhow::Error::msg)?.unwrap_or(default))
}

/// The parsed value of `key` if it is set; the problem (naming `key`) if it
/// does not parse.
fn parsed<T>(env: &impl Env, key: &str) -> Result<Option<T>, String>
where
    T: FromStr,
    T::Err: Display,
{
    match env.var(key) {
        None => Ok(None),
        Some(raw) => raw.parse::<T>().map(Some).map_err(|e| format!("invalid value for {key}: {raw:?}: {e}")),
    }
}

/// A required value.
pub fn required(env: &impl Env, key: &str) -> Result<String> {
    env.var(key).with_context(|| format!("{key} must be set"))
}

/// Every invalid or missing variable of a configuration, gathered while it
/// is read, so a service that cannot start names them all in one error
/// instead of one per attempt. Each problem names its variable. Values with
/// a problem read as their default (or `None`) meanwhile; `finish` fails if
/// there was any.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    pub fn new() -> Self {
        Self::default()
    }

    /// `parse`, keeping the problem: the default stands in for a bad value.
    pub fn parse<T>(&mut self, env: &impl Env, key: &str, default: T) -> T
    where
        T: FromStr,
        T::Err: Display,
    {
        match parsed(env, key) {
            Ok(value) => value.unwrap_or(default),
            Err(problem) => {
                self.0.push(problem);
                default
            }
        }
    }

    /// `required`, keeping the problem: `None` when missing.
    pub fn required(&mut self, env: &impl Env, key: &str) -> Option<String> {
        let value = env.var(key);
        if value.is_none() {
            self.0.push(format!("{key} must be set"));
        }
        value
    }

    /// The value of a fallible reading of `vars` (key files, TLS files…),
    /// keeping its error, named by `vars` unless it names them already.
    pub fn check<T>(&mut self, vars: &str, result: Result<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(e) => {
                let e = format!("{e:#}");
                self.0.push(if e.contains(vars) { e } else { format!("{vars}: {e}") });
                None
            }
        }
    }

    /// A problem the caller found itself; it names its variable.
    pub fn report(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Ok if nothing was wrong, else one error listing every problem.
    pub fn finish(self) -> Result<()> {
        match self.0.as_slice() {
            [] => Ok(()),
            [one] => anyhow::bail!("invalid configuration: {one}"),
            all => anyhow::bail!("invalid configuration ({} problems):\n  - {}", all.len(), all.join("\n  - ")),
        }
    }
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
    fn every_bad_variable_is_reported_in_one_error() {
        let env: HashMap<String, String> = HashMap::from([
            ("PORT".to_owned(), "eighty".to_owned()),
            ("ADDR".to_owned(), "127.0.0.1:99999".to_owned()),
            ("GOOD".to_owned(), "12".to_owned()),
        ]);
        let mut problems = Problems::new();
        assert_eq!(problems.parse::<u16>(&env, "PORT", 1), 1, "the default stands in");
        let _ = problems.parse::<std::net::SocketAddr>(&env, "ADDR", ([127, 0, 0, 1], 2).into());
        assert_eq!(problems.parse::<u32>(&env, "GOOD", 7), 12);
        assert_eq!(problems.required(&env, "GOOD").as_deref(), Some("12"));
        assert!(!problems.is_empty());
        let err = problems.finish().unwrap_err().to_string();
        assert!(err.contains("2 problems"), "{err}");
        assert!(err.contains("invalid value for PORT: \"eighty\""), "{err}");
        assert!(err.contains("invalid value for ADDR: \"127.0.0.1:99999\""), "{err}");
        assert!(!err.contains("GOOD"), "{err}");
    }

    #[test]
    fn missing_and_unreadable_values_are_reported_with_the_bad_ones() {
        let env: HashMap<&str, &str> = HashMap::from([("BATCH", "-3")]);
        let mut problems = Problems::new();
        assert_eq!(problems.required(&env, "DATABASE_URL"), None);
        assert_eq!(problems.parse::<usize>(&env, "BATCH", 256), 256);
        assert_eq!(problems.check::<()>("KEY_FILE", Err(anyhow::anyhow!("cannot read /nowhere"))), None);
        problems.report("invalid value for MODE: \"sideways\" (on or off)");
        let err = problems.finish().unwrap_err().to_string();
        for expected in ["4 problems", "DATABASE_URL must be set", "BATCH", "KEY_FILE: cannot read /nowhere", "MODE"] {
            assert!(err.contains(expected), "{expected}: {err}");
        }
        assert!(Problems::new().finish().is_ok());
    }

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("nats://h:4222"), "nats://h:4222");
    }
}
