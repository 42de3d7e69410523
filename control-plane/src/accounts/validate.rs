//! Input rules for accounts. Every problem is reported, not just the first.

use crate::error::{Error, FieldError, Result};
use crate::secret::Secret;

pub const PASSWORD_MIN_CHARS: usize = 8;
pub const PASSWORD_MAX_CHARS: usize = 1024;
pub const NAME_MAX_CHARS: usize = 100;

/// Collects field errors; `finish` turns them into one `Validation` error.
#[derive(Debug, Default)]
pub struct Problems(Vec<FieldError>);

impl Problems {
    pub fn push(&mut self, field: &'static str, code: &'static str, message: impl Into<String>) {
        self.0.push(FieldError::new(field, code, message));
    }

    pub fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::Validation(self.0))
        }
    }
}

/// Trims and lower-cases; records `required` or `invalid` problems. The rules follow what the
/// seed accepted (PHP's FILTER_VALIDATE_EMAIL: ASCII only), so lower-casing is unambiguous.
pub fn email(raw: Option<&str>, problems: &mut Problems) -> Option<String> {
    let value = raw.map(str::trim).unwrap_or_default();
    if value.is_empty() {
        problems.push("email", "required", "Email is required");
        return None;
    }
    let value = value.to_ascii_lowercase();
    if is_valid_email(&value) {
        Some(value)
    } else {
        problems.push("email", "invalid", "Invalid email format");
        None
    }
}

pub fn new_password(
    field: &'static str,
    raw: Option<&Secret>,
    problems: &mut Problems,
) -> Option<Secret> {
    let Some(password) = raw.filter(|p| !p.expose().is_empty()) else {
        problems.push(field, "required", "Password is required");
        return None;
    };
    let chars = password.expose().chars().count();
    if chars < PASSWORD_MIN_CHARS {
        problems.push(
            field,
            "too_short",
            format!("Password must be at least {PASSWORD_MIN_CHARS} characters"),
        );
        None
    } else if chars > PASSWORD_MAX_CHARS {
        problems.push(
            field,
            "too_long",
            format!("Password must be at most {PASSWORD_MAX_CHARS} characters"),
        );
        None
    } else {
        Some(password.clone())
    }
}

pub fn person_name(field: &'static str, raw: Option<&str>, problems: &mut Problems) -> String {
    let value = raw.map(str::trim).unwrap_or_default();
    if value.chars().count() > NAME_MAX_CHARS {
        problems.push(
            field,
            "too_long",
            format!("Must be at most {NAME_MAX_CHARS} characters"),
        );
    } else if value.chars().any(char::is_control) {
        problems.push(field, "invalid", "Must not contain control characters");
    }
    value.to_owned()
}

pub fn required_token(raw: Option<&str>, problems: &mut Problems) -> Option<String> {
    match raw.map(str::trim) {
        Some(t) if !t.is_empty() && t.len() <= 256 => Some(t.to_owned()),
        Some(t) if !t.is_empty() => {
            problems.push("token", "invalid", "Token is malformed");
            None
        }
        _ => {
            problems.push("token", "required", "Token is required");
            None
        }
    }
}

fn is_valid_email(email: &str) -> bool {
    if email.len() > 254 || !email.is_ascii() {
        return false;
    }
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".!#$%&'*+/=?^_`{|}~-".contains(&c));
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
        && labels
            .last()
            .is_some_and(|tld| tld.len() >= 2 && tld.bytes().all(|c| c.is_ascii_alphabetic()));
    local_ok && domain_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        for ok in [
            "a@b.co",
            "first.last+tag@mail.example.org",
            "x_y-z@sub-domain.io",
        ] {
            assert!(is_valid_email(ok), "{ok}");
        }
        for bad in [
            "",
            "plain",
            "@b.co",
            "a@",
            "a@b",
            "a@b.c",
            "a..b@c.io",
            ".a@c.io",
            "a@-b.io",
            "a b@c.io",
            "ü@c.io",
            "a@b..io",
            "a@b.i0",
        ] {
            assert!(!is_valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn email_is_trimmed_and_lowercased() {
        let mut p = Problems::default();
        assert_eq!(
            email(Some("  Ada@Example.COM "), &mut p).as_deref(),
            Some("ada@example.com")
        );
        assert!(p.finish().is_ok());
    }

    #[test]
    fn every_problem_is_listed() {
        let mut p = Problems::default();
        email(None, &mut p);
        new_password("password", Some(&Secret::new("short")), &mut p);
        let Err(Error::Validation(list)) = p.finish() else {
            panic!()
        };
        let codes: Vec<_> = list.iter().map(|f| (f.field, f.code)).collect();
        assert_eq!(codes, [("email", "required"), ("password", "too_short")]);
    }
}
