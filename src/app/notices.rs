//! The notices every flow sends, and the verification mail: composed here, stored by the
//! UserStore with the change that causes them. A leaf: it imports no other application file.
use std::time::Duration;

use entities::{email_token, user};
use sha2::{Digest, Sha256};

use super::{App, Client};
use crate::{
    actor::Ask,
    error::ApiError,
    mail::{Mail, MailToken, Template},
    users::{FindAccount, IssueToken, NewToken, SeenLogin},
};

/// How long a verification link works.
pub const VERIFY_TTL: Duration = Duration::from_secs(24 * 3600);

/// A sign-in from a client not seen for this long is mailed about.
pub const NEW_LOGIN_WINDOW: Duration = Duration::from_secs(30 * 86_400);
/// A login refused for an unverified address mails a new link at most this often.
const RESEND_ON_LOGIN_EVERY: Duration = Duration::from_secs(600);

pub(super) fn minutes(d: Duration) -> String {
    (d.as_secs() / 60).to_string()
}

/// The account's name for a greeting, only in a mail to its verified address: a name is chosen
/// by whoever created the account, who need not own the address (anyone can register with
/// someone else's), so a mail to an address not yet verified greets neutrally ("Hello there").
pub(super) fn greeting_name<'a>(account: &'a user::Model, to: &str) -> &'a str {
    match &account.name {
        Some(name) if account.email_verified && to == account.email => name,
        _ => "",
    }
}

/// A mail to the account's current address, addressed by its name once it is verified.
pub(crate) fn notice(
    app: &App,
    template: Template,
    account: &user::Model,
    vars: &[(&str, &str)],
) -> Mail {
    notice_to(app, template, &account.email, account, vars)
}

pub(super) fn notice_to(
    app: &App,
    template: Template,
    to: &str,
    account: &user::Model,
    vars: &[(&str, &str)],
) -> Mail {
    let mut all = vec![
        ("name", greeting_name(account, to)),
        ("email", account.email.as_str()),
    ];
    all.extend_from_slice(vars);
    app.mailer.compose(template, to, &all)
}

/// The owner's notice that a way to sign in was added or removed (ASVS 6.3.7), stored by the
/// caller with the change. `change` is a sentence of sessiond's own, never text a user chose
/// (a passkey's name, say), which could reach an address its owner never verified.
pub(crate) async fn method_notice(
    app: &App,
    user_id: uuid::Uuid,
    change: &str,
) -> Result<Mail, ApiError> {
    let account = app
        .users
        .ask(FindAccount(user_id))
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    Ok(notice(
        app,
        Template::MethodChanged,
        &account,
        &[("change", change)],
    ))
}

/// The verification mail for `email` with a fresh token: what [`NewToken`] stores, and the mail.
/// Without the account's name: the address is not verified (see [`greeting_name`]).
pub(crate) fn verification(app: &App, email: &str) -> (NewToken, Mail) {
    let token = MailToken::generate();
    let link = app.mailer.link("verify-email", &token.token);
    let ttl = minutes(VERIFY_TTL);
    let mail = app.mailer.compose(
        Template::VerifyEmail,
        email,
        &[
            ("name", ""),
            ("email", email),
            ("link", &link),
            ("minutes", &ttl),
        ],
    );
    let stored = NewToken {
        hash: token.hash,
        purpose: email_token::VERIFY,
        email: email.to_string(),
        ttl: VERIFY_TTL,
    };
    (stored, mail)
}

/// A login refused for an unverified address: a new link, at most every few minutes, so an
/// owner whose link expired is not stuck (they cannot call the authenticated resend).
pub(crate) async fn remind_unverified(app: &App, account: &user::Model) -> Result<(), ApiError> {
    let (token, mail) = verification(app, &account.email);
    let issued = app
        .users
        .ask(IssueToken {
            user_id: account.id,
            token,
            mail: vec![mail],
            unless_within: Some(RESEND_ON_LOGIN_EVERY),
        })
        .await?;
    if issued {
        app.mailer.wake();
    }
    Ok(())
}

/// After a login: remembers the client, and mails the owner when it was not seen for 30 days
/// (NOTIFY_NEW_LOGIN). A failure here does not fail the login; it is logged.
pub(crate) async fn note_login(app: &App, client: &Client, account: &user::Model) {
    if !app.settings.notify_new_login {
        return;
    }
    let Some(ip) = client.ip.as_deref() else {
        return;
    };
    let user_agent = client.user_agent.as_deref().unwrap_or("");
    let fingerprint = hex::encode(Sha256::digest(format!("{ip}\n{user_agent}").as_bytes()));
    let shown_agent: String = user_agent
        .chars()
        .filter(|c| !c.is_control())
        .take(256)
        .collect();
    let mail = notice(
        app,
        Template::NewLogin,
        account,
        &[("ip", ip), ("user_agent", &shown_agent)],
    );
    let seen = app
        .users
        .ask(SeenLogin {
            user_id: account.id,
            fingerprint,
            window: NEW_LOGIN_WINDOW,
            mail,
        })
        .await;
    match seen {
        Ok(true) => app.mailer.wake(),
        Ok(false) => {}
        Err(e) => tracing::warn!(user_id = %account.id, cause = %e, "new sign-in not recorded"),
    }
}
