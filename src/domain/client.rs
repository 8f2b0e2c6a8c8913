//! Service clients: their names, and the secrets they authenticate with.

/// At most this many characters in a client's name.
pub const MAX_CLIENT_NAME_CHARS: usize = 100;

/// What an operator calls a service client: trimmed, 1 to 100 characters, one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientName(String);

impl ClientName {
    pub fn parse(raw: String) -> Result<Self, String> {
        let name = raw.trim();
        if name.is_empty() {
            return Err("name must not be empty".into());
        }
        if name.chars().count() > MAX_CLIENT_NAME_CHARS {
            return Err(format!(
                "name must be at most {MAX_CLIENT_NAME_CHARS} characters"
            ));
        }
        if name.chars().any(char::is_control) {
            return Err("name must not contain control characters".into());
        }
        Ok(Self(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_bounded_and_single_line() {
        assert_eq!(
            ClientName::parse(" billing ".into()).unwrap().as_str(),
            "billing"
        );
        assert!(ClientName::parse("é".repeat(100)).is_ok());
        for bad in ["", "   ", "a\nb", "a\u{0}b"] {
            assert!(ClientName::parse(bad.into()).is_err(), "{bad:?}");
        }
        assert!(ClientName::parse("x".repeat(101)).is_err());
    }
}
