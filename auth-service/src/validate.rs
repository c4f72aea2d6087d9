//! Registration input rules, as pure functions.

use bank_domain::InputError;

pub const MIN_PASSWORD: usize = 12;
pub const MAX_PASSWORD: usize = 128;

/// Trimmed, lower-cased email, or why it is refused. Deliberately simple:
/// one `@`, a plausible local part and a dotted domain of letters, digits and
/// hyphens; no attempt at full RFC 5322.
pub fn email(raw: &str) -> Result<String, InputError> {
    let bad = |why: &str| InputError::new("email", why);
    let email = raw.trim().to_lowercase();
    if email.is_empty() {
        return Err(bad("is required"));
    }
    if email.chars().count() > 254 {
        return Err(bad("must be at most 254 characters"));
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err(bad("must look like name@example.com"));
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local.chars().all(|c| c.is_ascii_alphanumeric() || "._%+-'".contains(c))
        && !local.starts_with('.')
        && !local.ends_with('.');
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !local_ok || !domain_ok {
        return Err(bad("must look like name@example.com"));
    }
    Ok(email)
}

/// Password strength: long enough, not one repeated character, not the email's name.
pub fn password(password: &str, email: Option<&str>) -> Result<(), InputError> {
    let bad = |why: String| InputError::new("password", why);
    let n = password.chars().count();
    if !(MIN_PASSWORD..=MAX_PASSWORD).contains(&n) {
        return Err(bad(format!("must be {MIN_PASSWORD} to {MAX_PASSWORD} characters")));
    }
    let mut chars = password.chars();
    let first = chars.next();
    if chars.all(|c| Some(c) == first) {
        return Err(bad("must not be one repeated character".into()));
    }
    let local = email.and_then(|e| e.split_once('@')).map(|(l, _)| l).filter(|l| l.len() >= 3);
    if local.is_some_and(|l| password.to_lowercase().contains(l)) {
        return Err(bad("must not contain your email name".into()));
    }
    Ok(())
}

pub fn full_name(raw: &str) -> Result<String, InputError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(InputError::new("full_name", "must be 1 to 200 characters without control characters"));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_lowercased_and_checked() {
        assert_eq!(email("  Ada@Example.COM ").unwrap(), "ada@example.com");
        let long = format!("{}@example.com", "a".repeat(250));
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@@example.com",
            "ada@exa_mple.com",
            "ada@-x.com",
            long.as_str(),
        ] {
            assert!(email(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn weak_passwords_are_refused() {
        assert!(password("short", None).is_err());
        assert!(password("aaaaaaaaaaaaaaaa", None).is_err());
        assert!(password("my-name-is-ada-lovelace", Some("lovelace@example.com")).is_err());
        assert!(password(&"x".repeat(129), None).is_err());
        assert!(password("correct horse battery", Some("ada@example.com")).is_ok());
    }

    #[test]
    fn names_need_content_and_no_control_characters() {
        assert_eq!(full_name(" Ada Lovelace ").unwrap(), "Ada Lovelace");
        assert!(full_name("   ").is_err());
        assert!(full_name("Ada\u{0}").is_err());
        assert!(full_name(&"x".repeat(201)).is_err());
    }
}
