//! Mail settings: SMTP_URL (`smtp://` with STARTTLS required, `smtps://` with TLS from the
//! first byte, `smtp+plaintext://` with STARTTLS only when offered; user and password in the
//! URL), SMTP_CA_FILE, MAIL_FROM, APP_URL, MAIL_TEMPLATES_DIR, and the email flows' switches.
use std::fmt;

use super::{err, ConfigError, Secret};

/// Where and how mail is sent.
#[derive(Clone)]
pub struct Smtp {
    /// As given, for check-config (which masks the password).
    pub url: String,
    pub host: String,
    pub port: u16,
    /// `smtps://`: TLS from the first byte. `smtp://`: STARTTLS, required.
    pub implicit_tls: bool,
    /// `smtp+plaintext://`: STARTTLS when offered, otherwise the password and the mails (their
    /// single-use links) go in clear. Anyone on the way can strip the offer, so only for a
    /// relay on the same host or a trusted network.
    pub allow_plaintext: bool,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// SMTP_CA_FILE's path and its PEM, added to the built-in roots.
    pub ca_file: Option<(String, Vec<u8>)>,
}

impl fmt::Debug for Smtp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Smtp")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("implicit_tls", &self.implicit_tls)
            .field("allow_plaintext", &self.allow_plaintext)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub struct MailSettings {
    /// `None`: mails are written to the log, not sent (the embedded default).
    pub smtp: Option<Smtp>,
    /// The `From:` mailbox, checked (no CR/LF, one address).
    pub from: String,
    /// The client application's base URL, without a trailing slash.
    pub app_url: String,
    pub templates_dir: Option<String>,
    pub require_verification: bool,
    pub notify_new_login: bool,
}

/// Percent-decoding of a URL's user or password.
fn decode(var: &'static str, raw: &str) -> Result<String, ConfigError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| err(var, "bad percent-encoding in the user or password"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| err(var, "the user or password is not UTF-8"))
}

/// `smtp://user:password@host:port`, `smtps://...` or `smtp+plaintext://...`; the error never
/// repeats the URL (it may carry a password).
pub fn parse_smtp_url(url: &str, ca_file: Option<String>) -> Result<Smtp, ConfigError> {
    const VAR: &str = "SMTP_URL";
    let url = url.trim();
    let shape = "expected smtp://[user:password@]host[:port] (STARTTLS required), smtps://... \
                 (TLS from the first byte) or smtp+plaintext://... (in clear without STARTTLS)";
    let (implicit_tls, allow_plaintext, rest) = if let Some(r) = url.strip_prefix("smtps://") {
        (true, false, r)
    } else if let Some(r) = url.strip_prefix("smtp://") {
        (false, false, r)
    } else if let Some(r) = url.strip_prefix("smtp+plaintext://") {
        (false, true, r)
    } else {
        return Err(err(VAR, shape));
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err(VAR, shape));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| err(VAR, format!("{shape}: bad port")))?;
            (h, port)
        }
        _ => (hostport, if implicit_tls { 465 } else { 587 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(err(VAR, format!("{shape}: no host")));
    }
    let (user, password) = match userinfo {
        None => (None, None),
        Some(info) => {
            let (u, p) = info.split_once(':').unwrap_or((info, ""));
            let user = decode(VAR, u)?;
            let password = decode(VAR, p)?;
            (
                (!user.is_empty()).then_some(user),
                (!password.is_empty()).then(|| Secret::new(password.into_bytes())),
            )
        }
    };
    let ca_file = match ca_file {
        None => None,
        Some(path) => {
            let path = path.trim().to_string();
            let pem = std::fs::read(&path)
                .map_err(|e| err("SMTP_CA_FILE", format!("cannot read {path}: {e}")))?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(err(
                    "SMTP_CA_FILE",
                    format!("{path} holds no PEM certificate"),
                ));
            }
            Some((path, pem))
        }
    };
    Ok(Smtp {
        url: url.to_string(),
        host: host.to_string(),
        port,
        implicit_tls,
        allow_plaintext,
        user,
        password,
        ca_file,
    })
}

/// MAIL_FROM: `address` or `Name <address>`, one line.
pub fn check_from(raw: &str) -> Result<String, ConfigError> {
    let value = raw.trim();
    let address = match (value.rfind('<'), value.ends_with('>')) {
        (Some(at), true) => &value[at + 1..value.len() - 1],
        _ => value,
    };
    let (local, domain) = address.split_once('@').unwrap_or(("", ""));
    if value.chars().any(char::is_control)
        || local.is_empty()
        || domain.is_empty()
        || address
            .chars()
            .any(|c| c.is_whitespace() || "<>\"".contains(c))
    {
        return Err(err(
            "MAIL_FROM",
            "expected an address or Name <address> on one line",
        ));
    }
    Ok(value.to_string())
}

/// APP_URL: `http(s)://host[/path]`, kept without its trailing slash.
pub fn check_app_url(raw: &str) -> Result<String, ConfigError> {
    let url = raw.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    if rest.is_none_or(|r| r.is_empty() || r.starts_with('/'))
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
        || url.contains(['?', '#'])
    {
        return Err(err(
            "APP_URL",
            "expected an http:// or https:// URL without query or fragment",
        ));
    }
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls_give_host_port_tls_and_credentials() {
        let s = parse_smtp_url("smtp://u%40x:p%3Aw@mail.example:2525", None).unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.implicit_tls),
            ("mail.example", 2525, false)
        );
        assert_eq!(s.user.as_deref(), Some("u@x"));
        assert_eq!(s.password.unwrap().expose(), b"p:w");
        let s = parse_smtp_url("smtps://mail.example", None).unwrap();
        assert_eq!(
            (s.port, s.implicit_tls, s.user.is_none()),
            (465, true, true)
        );
        for bad in ["http://x", "smtp://", "smtp://h:99999", "smtp://h\r\n:25"] {
            assert!(parse_smtp_url(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn check_config_masks_the_smtp_password() {
        let config = crate::config::Config::from_lookup(|k| match k {
            "SMTP_URL" => Some("smtps://mailer:hunter2-secret@mail.example:465".into()),
            _ => None,
        })
        .unwrap();
        let shown = config.describe();
        assert!(
            shown.contains("SMTP_URL=smtps://mailer:***@mail.example:465"),
            "{shown}"
        );
        assert!(!shown.contains("hunter2") && !format!("{config:?}").contains("hunter2"));
        assert!(crate::config::Config::from_lookup(|k| match k {
            "MAIL_FROM" => Some("a@b.c\nBcc: d@e.f".into()),
            _ => None,
        })
        .is_err());
    }

    #[test]
    fn smtp_requires_tls_unless_the_url_says_plaintext() {
        let smtp = |url: &str| {
            crate::config::Config::from_lookup(|k| (k == "SMTP_URL").then(|| url.to_string()))
        };
        // smtp:// with or without credentials: STARTTLS required.
        for url in ["smtp://mailer:pw@mail.example", "smtp://mail.example:25"] {
            let s = smtp(url).unwrap().mail.smtp.unwrap();
            assert!(!s.allow_plaintext && !s.implicit_tls, "{url}");
        }
        let s = parse_smtp_url("smtp+plaintext://mailer:p%40w@relay.internal:25", None).unwrap();
        assert_eq!(
            (s.host.as_str(), s.port, s.implicit_tls, s.allow_plaintext),
            ("relay.internal", 25, false, true)
        );
        assert_eq!(s.password.unwrap().expose(), b"p@w");
        assert_eq!(
            parse_smtp_url("smtp+plaintext://relay", None).unwrap().port,
            587
        );
        // check-config shows the scheme, so the opt-out, with the password masked.
        let shown = smtp("smtp+plaintext://mailer:pw-secret@relay:25")
            .unwrap()
            .describe();
        assert!(
            shown.contains("SMTP_URL=smtp+plaintext://mailer:***@relay:25"),
            "{shown}"
        );
        assert!(!shown.contains("pw-secret"));
        // Any other form is refused naming SMTP_URL, never repeating the URL.
        for bad in [
            "smtp+tls://mailer:pw-secret@relay",
            "smtps+plaintext://mailer:pw-secret@relay",
            "SMTP+PLAINTEXT://mailer:pw-secret@relay",
        ] {
            let e = smtp(bad).unwrap_err();
            assert_eq!(e.var, "SMTP_URL", "{bad}");
            assert!(!e.to_string().contains("pw-secret"), "{e}");
        }
    }

    #[test]
    fn from_and_app_url_refuse_line_breaks() {
        assert!(check_from("sessiond <no-reply@example.com>").is_ok());
        assert!(check_from("a@b\r\nBcc: c@d").is_err());
        assert!(check_from("nobody").is_err());
        assert_eq!(
            check_app_url("https://app.example/").unwrap(),
            "https://app.example"
        );
        assert!(check_app_url("https://app.example/x?y").is_err());
        assert!(check_app_url("ftp://x").is_err());
    }
}
