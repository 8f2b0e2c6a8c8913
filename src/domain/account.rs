//! What a valid account is made of: its email, its password and its display name.
use unicode_normalization::UnicodeNormalization;

pub const MAX_EMAIL_LEN: usize = 254;
pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 128;
pub const MAX_NAME_CHARS: usize = 100;

/// An email address in its one spelling: NFKC, trimmed, lower-cased, so that two spellings of
/// one address are one account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// The error is a message for the caller.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let email: String = raw.trim().nfkc().collect::<String>().trim().to_lowercase();
        if email.is_empty() {
            return Err("email is required".into());
        }
        if email.len() > MAX_EMAIL_LEN {
            return Err(format!("email must be at most {MAX_EMAIL_LEN} bytes"));
        }
        let valid = match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.is_empty()
                    && !domain.contains('@')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !domain.contains("..")
            }
            None => false,
        };
        if !valid || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("email is not a valid address".into());
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A new password that meets the length policy, counted in Unicode scalar values; never trimmed
/// or truncated. (Its strength is judged when it is hashed, against the account's own words.)
/// `Debug` never shows it.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn parse(raw: String) -> Result<Self, String> {
        let n = raw.chars().count();
        if n < MIN_PASSWORD_CHARS {
            return Err(format!(
                "password must be at least {MIN_PASSWORD_CHARS} characters"
            ));
        }
        if n > MAX_PASSWORD_CHARS {
            return Err(format!(
                "password must be at most {MAX_PASSWORD_CHARS} characters"
            ));
        }
        Ok(Self(raw))
    }

    /// Whether a presented password could be any account's (login): one outside the length
    /// bounds of every policy this server ever had cannot match, and costs no hash.
    pub fn could_match(presented: &str) -> bool {
        (1..=MAX_PASSWORD_CHARS).contains(&presented.chars().count())
    }

    /// The secret itself, for hashing.
    pub fn expose(self) -> String {
        self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// An optional display name: trimmed, at most [`MAX_NAME_CHARS`], one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    /// `None` and a blank name are no name.
    pub fn parse(raw: Option<String>) -> Result<Option<Self>, String> {
        let Some(name) = raw else { return Ok(None) };
        let name = name.trim().to_string();
        if name.chars().count() > MAX_NAME_CHARS {
            return Err(format!("name must be at most {MAX_NAME_CHARS} characters"));
        }
        if name.chars().any(char::is_control) {
            return Err("name must not contain control characters".into());
        }
        Ok((!name.is_empty()).then_some(Self(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// The words a user's own password must not be built from (zxcvbn user inputs): the normalized
/// email, its local part and the display name. Registration, password changes and the CLI all
/// use this one list, so a new password meets exactly the policy a first one does.
pub fn password_context(email: &str, name: Option<&str>) -> Vec<String> {
    let local_part = email.split('@').next().unwrap_or_default();
    [Some(email), Some(local_part), name]
        .into_iter()
        .flatten()
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(raw: &str) -> Result<String, String> {
        Email::parse(raw).map(Email::into_inner)
    }

    #[test]
    fn emails_are_normalized_to_one_spelling() {
        assert_eq!(email("  Ada@Example.COM ").unwrap(), "ada@example.com");
        // Fullwidth letters fold under NFKC.
        assert_eq!(email("ＡＤＡ@example.com").unwrap(), "ada@example.com");
        assert!(email("no-at-sign").is_err());
        assert!(email("a@b@c").is_err());
        assert!(email("a b@c.d").is_err());
        assert!(email(&format!("{}@x.io", "a".repeat(300))).is_err());
    }

    #[test]
    fn passwords_count_characters_not_bytes() {
        assert!(Password::parse("ééééééé".into()).is_err()); // 7 chars, 14 bytes
        assert!(Password::parse("éééééééé".into()).is_ok());
        assert!(Password::parse("x".repeat(128)).is_ok());
        assert!(Password::parse("x".repeat(129)).is_err());
    }

    #[test]
    fn a_password_never_shows_in_debug_output() {
        let p = Password::parse("correct horse battery".into()).unwrap();
        assert!(!format!("{p:?}").contains("horse"));
    }

    #[test]
    fn names_are_bounded_and_single_line() {
        let name = DisplayName::parse(Some(" Ada ".into())).unwrap();
        assert_eq!(name.as_ref().map(DisplayName::as_str), Some("Ada"));
        assert!(DisplayName::parse(Some("a\r\nb".into())).is_err());
        assert!(DisplayName::parse(Some("x".repeat(101))).is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Normalizing twice changes nothing, and a valid address stays within the length cap.
        #[test]
        fn email_normalization_is_idempotent(raw in "\\PC{0,80}(@\\PC{0,40})?") {
            if let Ok(once) = Email::parse(&raw) {
                prop_assert_eq!(Email::parse(once.as_str()), Ok(once.clone()));
                prop_assert!(once.as_str().len() <= MAX_EMAIL_LEN);
                prop_assert!(!once.as_str().chars().any(|c| c.is_whitespace() || c.is_control()));
            }
        }

        #[test]
        fn name_and_password_rules_never_panic(s in "\\PC{0,200}") {
            let _ = Password::parse(s.clone());
            let _ = DisplayName::parse(Some(s));
        }
    }
}
