//! Mail: templates (text and HTML, built into the binary, replaceable from
//! MAIL_TEMPLATES_DIR), the outbox rows the UserStore writes in the transaction of the change
//! that causes each mail, and the delivery worker ([`deliver`]) that sends them over SMTP, or,
//! without SMTP_URL, writes them to the log.
//!
//! Mailed links carry single-use tokens: 256 random bits, of which only the SHA-256 is stored
//! ([`MailToken`]). The token is in the rendered body of its outbox row until the row is sent
//! or given up, when the bodies are cleared.
mod deliver;

use std::{collections::HashMap, sync::Arc};

use base64::Engine;
use entities::mail_outbox;
use rand::RngCore;
use sea_orm::{ConnectionTrait, DbErr, Set};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use uuid::Uuid;

pub use deliver::MailWorker;

use crate::config::mail::MailSettings;

/// The mails sessiond sends; each is `<name>.txt` (first line `Subject: ...`) and `<name>.html`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Template {
    PasswordReset,
    VerifyEmail,
    ConfirmEmailChange,
    PasswordChanged,
    EmailChanged,
    NewLogin,
    AccountExists,
    MfaReset,
    MethodsRemoved,
    MethodChanged,
}

impl Template {
    pub const ALL: [Template; 10] = [
        Self::PasswordReset,
        Self::VerifyEmail,
        Self::ConfirmEmailChange,
        Self::PasswordChanged,
        Self::EmailChanged,
        Self::NewLogin,
        Self::AccountExists,
        Self::MfaReset,
        Self::MethodsRemoved,
        Self::MethodChanged,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::PasswordReset => "password_reset",
            Self::VerifyEmail => "verify_email",
            Self::ConfirmEmailChange => "confirm_email_change",
            Self::PasswordChanged => "password_changed",
            Self::EmailChanged => "email_changed",
            Self::NewLogin => "new_login",
            Self::AccountExists => "account_exists",
            Self::MfaReset => "mfa_reset",
            Self::MethodsRemoved => "methods_removed",
            Self::MethodChanged => "method_changed",
        }
    }

    fn embedded(self) -> (&'static str, &'static str) {
        macro_rules! pair {
            ($n:literal) => {
                (
                    include_str!(concat!("templates/", $n, ".txt")),
                    include_str!(concat!("templates/", $n, ".html")),
                )
            };
        }
        match self {
            Self::PasswordReset => pair!("password_reset"),
            Self::VerifyEmail => pair!("verify_email"),
            Self::ConfirmEmailChange => pair!("confirm_email_change"),
            Self::PasswordChanged => pair!("password_changed"),
            Self::EmailChanged => pair!("email_changed"),
            Self::NewLogin => pair!("new_login"),
            Self::AccountExists => pair!("account_exists"),
            Self::MfaReset => pair!("mfa_reset"),
            Self::MethodsRemoved => pair!("methods_removed"),
            Self::MethodChanged => pair!("method_changed"),
        }
    }
}

/// One template: the subject line and the two bodies, with `{{var}}` placeholders.
#[derive(Debug, Clone)]
struct Parts {
    subject: String,
    text: String,
    html: String,
}

fn split_subject(name: &str, text: &str) -> Result<(String, String), String> {
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
    let subject = first
        .strip_prefix("Subject:")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{name}.txt must start with a `Subject: ...` line"))?;
    Ok((subject.to_string(), rest.to_string()))
}

/// Every template, the built-in ones replaced file by file from `dir`.
fn load_templates(dir: Option<&str>) -> Result<HashMap<Template, Parts>, String> {
    let mut out = HashMap::new();
    for t in Template::ALL {
        let (mut text, mut html) = {
            let (t, h) = t.embedded();
            (t.to_string(), h.to_string())
        };
        if let Some(dir) = dir {
            let path = std::path::Path::new(dir);
            for (ext, slot) in [("txt", &mut text), ("html", &mut html)] {
                let file = path.join(format!("{}.{ext}", t.name()));
                match std::fs::read_to_string(&file) {
                    Ok(s) => *slot = s,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
                }
            }
        }
        let (subject, text) = split_subject(t.name(), &text)?;
        out.insert(
            t,
            Parts {
                subject,
                text,
                html,
            },
        );
    }
    Ok(out)
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Replaces each `{{key}}` in one pass: a value is never scanned for placeholders, so a name
/// holding `{{link}}` stays that text. `escape` is applied to the values (HTML bodies); an
/// unknown placeholder stays as it is.
fn fill(template: &str, vars: &[(&str, &str)], escape: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find("{{") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let value = after.find("}}").and_then(|end| {
            let key = &after[..end];
            vars.iter().find(|(k, _)| *k == key).map(|(_, v)| (v, end))
        });
        match value {
            Some((v, end)) => {
                out.push_str(&escape(v));
                rest = &after[end + 2..];
            }
            // Not a placeholder: keep one brace and look again from the next.
            None => {
                out.push('{');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A mail rendered and addressed, ready to be stored in the outbox.
#[derive(Debug, Clone)]
pub struct Mail {
    pub template: Template,
    /// A normalized address (no CR/LF: `domain::Email` refuses them).
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

impl Mail {
    fn row(self, state: i16, now_ms: i64) -> mail_outbox::ActiveModel {
        mail_outbox::ActiveModel {
            id: Set(Uuid::now_v7()),
            kind: Set(self.template.name().to_string()),
            recipient: Set(self.to),
            subject: Set(self.subject),
            text_body: Set(self.text),
            html_body: Set(self.html),
            created_at_ms: Set(now_ms),
            state: Set(state),
            attempts: Set(0),
            next_attempt_ms: Set(now_ms),
            done_at_ms: Set((state != mail_outbox::PENDING).then_some(now_ms)),
            last_error: Set(None),
        }
    }
}

/// Stores mails in the outbox, on the caller's connection or transaction. `discarded`: stored
/// as never to be sent (the same write as a real mail, for a request about an unknown address).
pub async fn enqueue(
    conn: &impl ConnectionTrait,
    mails: Vec<Mail>,
    discarded: bool,
) -> Result<(), DbErr> {
    let now = chrono::Utc::now().timestamp_millis();
    let state = if discarded {
        mail_outbox::DECOY
    } else {
        mail_outbox::PENDING
    };
    let rows = mails.into_iter().map(|m| m.row(state, now)).collect();
    crate::outbox::insert_rows(conn, rows).await
}

/// A single-use token for a mailed link: 256 random bits, base64url; only `hash` is stored.
pub struct MailToken {
    pub token: String,
    pub hash: String,
}

impl MailToken {
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let hash = Self::hash(&token);
        Self { token, hash }
    }

    /// What a presented token is looked up by.
    pub fn hash(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }
}

/// Renders mails and wakes this pod's delivery worker once they are stored.
#[derive(Clone)]
pub struct Mailer {
    inner: Arc<Inner>,
}

struct Inner {
    templates: HashMap<Template, Parts>,
    app_url: String,
    wake: Arc<Notify>,
}

impl Mailer {
    /// The templates (MAIL_TEMPLATES_DIR's replacing the built-in ones); an unreadable file or
    /// a text template without its subject line is an error.
    pub fn new(settings: &MailSettings) -> Result<Self, String> {
        Ok(Self {
            inner: Arc::new(Inner {
                templates: load_templates(settings.templates_dir.as_deref())?,
                app_url: settings.app_url.clone(),
                wake: Arc::new(Notify::new()),
            }),
        })
    }

    pub(crate) fn wake_handle(&self) -> Arc<Notify> {
        self.inner.wake.clone()
    }

    /// After a transaction that stored mails has committed.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// `APP_URL/<page>#token=<token>`: in the fragment, so it reaches no server's access log.
    pub fn link(&self, page: &str, token: &str) -> String {
        format!("{}/{page}#token={token}", self.inner.app_url)
    }

    /// The template filled with `vars` (and `app_url`), HTML-escaped in the HTML body; line
    /// breaks in values never reach the subject.
    pub fn compose(&self, template: Template, to: &str, vars: &[(&str, &str)]) -> Mail {
        let mut all: Vec<(&str, &str)> = vec![("app_url", self.inner.app_url.as_str())];
        // "Hello there," for an account without a name.
        all.extend(vars.iter().map(|&(k, v)| {
            (
                k,
                if k == "name" && v.is_empty() {
                    "there"
                } else {
                    v
                },
            )
        }));
        let parts = &self.inner.templates[&template];
        let one_line = |v: &str| v.replace(['\r', '\n'], " ");
        Mail {
            template,
            to: to.to_string(),
            subject: fill(&parts.subject, &all, one_line),
            text: fill(&parts.text, &all, str::to_string),
            html: fill(&parts.html, &all, escape_html),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: Option<String>) -> MailSettings {
        MailSettings {
            smtp: None,
            from: "a@b.c".into(),
            app_url: "https://app.example".into(),
            templates_dir: dir,
            require_verification: false,
            notify_new_login: true,
        }
    }

    #[test]
    fn every_template_renders_with_escaped_html() {
        let m = Mailer::new(&settings(None)).unwrap();
        for t in Template::ALL {
            let mail = m.compose(t, "x@y.z", &[("name", "<b>Ada</b>"), ("email", "x@y.z")]);
            assert!(!mail.subject.is_empty() && !mail.subject.contains('\n'));
            assert!(!mail.html.contains("<b>Ada"), "{}", t.name());
        }
        assert_eq!(
            m.link("reset-password", "tok"),
            "https://app.example/reset-password#token=tok"
        );
    }

    #[test]
    fn values_are_substituted_in_one_pass() {
        let vars = [("name", "{{link}} {{app_url}}"), ("link", "SECRET")];
        // A value is never scanned for placeholders, whatever the order of the variables.
        assert_eq!(
            fill("Hi {{name}}: {{link}}", &vars, str::to_string),
            "Hi {{link}} {{app_url}}: SECRET"
        );
        let reversed = [vars[1], vars[0]];
        assert_eq!(
            fill("Hi {{name}}: {{link}}", &reversed, str::to_string),
            "Hi {{link}} {{app_url}}: SECRET"
        );
        // Unknown placeholders and stray braces stay as they are.
        assert_eq!(
            fill("{{nope}} {{ {{{link}}} }}", &vars, str::to_string),
            "{{nope}} {{ {SECRET} }}"
        );
        assert_eq!(fill("{{link", &vars, str::to_string), "{{link");
        // HTML: values escaped, the template's own markup kept.
        assert_eq!(
            fill(
                "<p>{{name}}</p>",
                &[("name", "<a href=\"x\">{{link}}</a> & 'q'")],
                escape_html
            ),
            "<p>&lt;a href=&quot;x&quot;&gt;{{link}}&lt;/a&gt; &amp; &#39;q&#39;</p>"
        );
    }

    #[test]
    fn a_name_holding_placeholders_is_not_expanded_in_any_template() {
        let m = Mailer::new(&settings(None)).unwrap();
        for t in Template::ALL {
            let mail = m.compose(
                t,
                "x@y.z",
                &[
                    ("name", "{{link}}{{app_url}}<i>"),
                    ("email", "x@y.z"),
                    ("link", "https://app.example/p#token=SECRET"),
                    ("new_email", "n@y.z"),
                ],
            );
            for body in [&mail.text, &mail.html, &mail.subject] {
                assert!(body.matches("SECRET").count() <= 1, "{}: {body}", t.name());
            }
            assert!(!mail.html.contains("<i>"), "{}", t.name());
            // Some notices greet no one by name (methods_removed: the registrant chose it).
            if !t.embedded().0.contains("{{name}}") {
                continue;
            }
            assert!(mail.text.contains("{{link}}{{app_url}}<i>"), "{}", t.name());
            assert!(
                mail.html.contains("{{link}}{{app_url}}&lt;i&gt;"),
                "{}",
                t.name()
            );
        }
    }

    #[test]
    fn templates_are_replaced_from_the_directory() {
        let dir = std::env::temp_dir().join(format!("sessiond-tpl-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("new_login.txt"),
            "Subject: Hi {{name}}\nbody {{ip}}",
        )
        .unwrap();
        let m = Mailer::new(&settings(Some(dir.to_string_lossy().into()))).unwrap();
        let mail = m.compose(
            Template::NewLogin,
            "x@y.z",
            &[("name", "A\r\nBcc: e"), ("ip", "1")],
        );
        assert_eq!(mail.subject, "Hi A  Bcc: e");
        assert_eq!(mail.text, "body 1");
        std::fs::write(dir.join("new_login.txt"), "no subject").unwrap();
        assert!(Mailer::new(&settings(Some(dir.to_string_lossy().into()))).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn tokens_carry_256_bits_and_are_stored_hashed() {
        let t = MailToken::generate();
        assert_eq!(t.token.len(), 43);
        assert_eq!(t.hash, MailToken::hash(&t.token));
        assert_ne!(t.hash, MailToken::generate().hash);
    }
}
