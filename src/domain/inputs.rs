//! Parse, don't validate: request values become these types at the boundary, so the inner
//! layers never check them again.

use super::DomainError;

fn invalid(field: &'static str, message: impl Into<String>) -> DomainError {
    DomainError::Invalid {
        field,
        message: message.into(),
    }
}

/// A syntactically plausible, normalised (trimmed, lower-case) e-mail address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// The longest address SMTP allows (RFC 5321's path limit, less the angle brackets).
    pub const MAX_BYTES: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let email = raw.trim().to_lowercase();
        let valid = email.len() <= Self::MAX_BYTES
            && !email.chars().any(|c| c.is_whitespace() || c.is_control())
            && match email.split_once('@') {
                Some((local, domain)) => {
                    !local.is_empty()
                        && !domain.contains('@')
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                }
                None => false,
            };
        if valid {
            Ok(Self(email))
        } else {
            Err(invalid("email", "must be a valid e-mail address"))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password of acceptable length. Never printed.
pub struct Password(String);

impl Password {
    pub const MIN_CHARS: usize = 8;
    /// argon2 accepts more, but hashing megabytes on request is a denial of service.
    pub const MAX_BYTES: usize = 1024;

    pub fn parse(raw: String) -> Result<Self, DomainError> {
        Self::parse_field("password", raw)
    }

    /// As [`Self::parse`], for a password sent under another field name.
    pub fn parse_field(field: &'static str, raw: String) -> Result<Self, DomainError> {
        if raw.chars().count() < Self::MIN_CHARS {
            return Err(invalid(
                field,
                format!("must be at least {} characters", Self::MIN_CHARS),
            ));
        }
        if raw.len() > Self::MAX_BYTES {
            return Err(invalid(
                field,
                format!("must be at most {} bytes", Self::MAX_BYTES),
            ));
        }
        Ok(Self(raw))
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

/// Checks a one-line text field (title, model, display name): trimmed, bounded, optionally
/// required to be non-empty, and free of control characters (NUL among them, which
/// PostgreSQL cannot store in text).
pub fn bounded_text(
    field: &'static str,
    raw: &str,
    max_chars: usize,
    allow_empty: bool,
) -> Result<String, DomainError> {
    checked_text(field, raw, max_chars, allow_empty, false)
}

/// Like [`bounded_text`] for prose that may span lines (a system prompt): line breaks and
/// tabs are allowed, other control characters are not.
pub fn bounded_prose(
    field: &'static str,
    raw: &str,
    max_chars: usize,
    allow_empty: bool,
) -> Result<String, DomainError> {
    checked_text(field, raw, max_chars, allow_empty, true)
}

fn checked_text(
    field: &'static str,
    raw: &str,
    max_chars: usize,
    allow_empty: bool,
    multiline: bool,
) -> Result<String, DomainError> {
    let value = raw.trim();
    if !allow_empty && value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.chars().count() > max_chars {
        return Err(invalid(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    reject_control_characters(field, value, multiline)?;
    Ok(value.to_string())
}

/// Control characters have no place in stored text: NUL breaks PostgreSQL, the rest break
/// terminals and logs. Prose keeps its line breaks (`\n`, `\r`) and tabs.
fn reject_control_characters(
    field: &'static str,
    value: &str,
    multiline: bool,
) -> Result<(), DomainError> {
    let allowed = |c: char| multiline && matches!(c, '\n' | '\r' | '\t');
    match value.chars().find(|c| c.is_control() && !allowed(*c)) {
        Some(c) => Err(invalid(
            field,
            format!(
                "must not contain control characters (found U+{:04X}){}",
                c as u32,
                if multiline {
                    "; line breaks and tabs are allowed"
                } else {
                    ""
                }
            ),
        )),
        None => Ok(()),
    }
}

pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_SYSTEM_PROMPT_CHARS: usize = 20_000;
pub const MAX_MODEL_CHARS: usize = 200;
pub const MAX_DISPLAY_NAME_CHARS: usize = 100;

/// The text of a user message: not blank, bounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageText(String);

impl MessageText {
    pub fn parse(field: &'static str, raw: &str, max_chars: usize) -> Result<Self, DomainError> {
        if raw.trim().is_empty() {
            return Err(invalid(field, "must not be empty"));
        }
        if raw.chars().count() > max_chars {
            return Err(invalid(
                field,
                format!("must be at most {max_chars} characters"),
            ));
        }
        reject_control_characters(field, raw, true)?;
        Ok(Self(raw.to_string()))
    }
    pub fn into_inner(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod control_character_tests {
    use super::*;

    fn field_of(err: DomainError) -> &'static str {
        match err {
            DomainError::Invalid { field, .. } => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_line_fields_refuse_every_control_character() {
        for bad in [
            "a\u{0}b",
            "a\nb",
            "a\tb",
            "a\u{1b}[31mb",
            "a\u{7f}b",
            "a\u{85}b",
        ] {
            let err = bounded_text("title", bad, 100, false).unwrap_err();
            assert_eq!(field_of(err), "title", "{bad:?}");
        }
        assert_eq!(bounded_text("title", " ok ", 100, false).unwrap(), "ok");
    }

    #[test]
    fn prose_keeps_line_breaks_and_tabs_but_not_nul() {
        let text = "line one\r\n\tline two";
        assert_eq!(
            bounded_prose("systemPrompt", text, 100, true).unwrap(),
            text
        );
        assert_eq!(
            MessageText::parse("message", text, 100)
                .unwrap()
                .into_inner(),
            text
        );
        for bad in ["a\u{0}b", "a\u{1b}b", "a\u{8}b"] {
            let err = bounded_prose("systemPrompt", bad, 100, true).unwrap_err();
            assert_eq!(field_of(err), "systemPrompt");
            let err = MessageText::parse("message", bad, 100).unwrap_err();
            assert_eq!(field_of(err), "message");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(
            Email::parse("  Ada@Example.COM ").unwrap().as_str(),
            "ada@example.com"
        );
        for bad in [
            "", "ada", "ada@", "@x.io", "a@b", "a b@c.io", "a@b@c.io", "a@.io",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn passwords_need_eight_characters() {
        assert!(Password::parse("1234567".into()).is_err());
        assert!(Password::parse("12345678".into()).is_ok());
        assert!(Password::parse("x".repeat(2000)).is_err());
        assert_eq!(
            format!("{:?}", Password::parse("secret-pass".into()).unwrap()),
            "Password(***)"
        );
    }

    #[test]
    fn message_text_must_not_be_blank() {
        assert!(MessageText::parse("message", "   ", 10).is_err());
        assert_eq!(
            MessageText::parse("message", " hi ", 10)
                .unwrap()
                .into_inner(),
            " hi "
        );
    }
}
