//! The email flows: forgotten password and reset, address verification, email change (the
//! notices other flows send too are in `notices`). Each mail is rendered here and
//! handed to the UserStore with the change that causes it, which stores both in one
//! transaction; the delivery worker is woken once that has committed.
use std::time::Duration;

use entities::{email_token, user};

use super::{
    notices::{greeting_name, minutes, notice, notice_to, verification},
    step_up::check_current_password,
    App, Caller, Client,
};
use crate::{
    actor::Ask,
    audit::AuditEvent,
    domain::{password_context, AuditKind, Email, Password},
    error::ApiError,
    mail::{MailToken, Template},
    session::RevokeAll,
    throttle::{account_key, Scope},
    users::{
        FindAccount, FindByEmail, FindToken, FirstProofMail, IssueToken, NewToken, Redeem,
        Redemption, Removed, RequestReset,
    },
    webhooks::Event,
};

/// How long a password-reset link works.
pub const RESET_TTL: Duration = Duration::from_secs(30 * 60);
pub use super::notices::VERIFY_TTL;
/// How long the link confirming a new address works.
pub const CHANGE_TTL: Duration = Duration::from_secs(3600);

/// POST /password/forgot. The caller always gets the same answer; with or without an account
/// for the address, the same lookups and the same transaction run (a decoy token and a
/// discarded mail for an unknown one), so neither the answer nor its timing tells which
/// addresses have accounts. Limited per client and per address.
pub async fn forgot_password(app: &App, client: &Client, email: Email) -> Result<(), ApiError> {
    app.limit_client(Scope::MailIp, client).await?;
    app.throttle
        .hit(Scope::MailAccount, &account_key(email.as_str()))
        .await??;
    let account = app
        .users
        .ask(FindByEmail(email.as_str().to_string()))
        .await?
        .filter(|a| a.disabled_at.is_none());
    let token = MailToken::generate();
    let link = app.mailer.link("reset-password", &token.token);
    let ttl = minutes(RESET_TTL);
    let name = account
        .as_ref()
        .map_or("", |a| greeting_name(a, email.as_str()));
    let mail = app.mailer.compose(
        Template::PasswordReset,
        email.as_str(),
        &[
            ("name", name),
            ("email", email.as_str()),
            ("link", &link),
            ("minutes", &ttl),
        ],
    );
    let user_id = account.as_ref().map(|a| a.id);
    app.users
        .ask(RequestReset {
            user_id,
            token: NewToken {
                hash: token.hash,
                purpose: email_token::RESET,
                email: email.into_inner(),
                ttl: RESET_TTL,
            },
            mail,
        })
        .await?;
    // Woken for a decoy too (it then finds nothing to send): the worker's reads of the outbox
    // follow either answer alike.
    app.mailer.wake();
    // Audited either way: the same write after either answer, and a trail of requests for
    // addresses no account holds (someone probing for accounts).
    match user_id {
        Some(id) => {
            app.audit.record(
                AuditEvent::success(AuditKind::PasswordResetRequest)
                    .subject(id)
                    .ip(client.ip.clone()),
            );
            tracing::info!(user_id = %id, "password reset link mailed");
        }
        None => app.audit.record(
            AuditEvent::failure(AuditKind::PasswordResetRequest)
                .ip(client.ip.clone())
                .detail(serde_json::json!({ "reason": "unknown_address" })),
        ),
    }
    Ok(())
}

/// POST /password/reset: a new password (the registration policy) through a mailed link. Every
/// session of the account is revoked (on every pod) before the token is used up, so a failure
/// there leaves the link usable for a retry; the notice is stored with the new hash.
pub async fn reset_password(
    app: &App,
    client: &Client,
    token: &str,
    new_password: Password,
) -> Result<(), ApiError> {
    let (token, account) = find_token(
        app,
        client,
        token,
        &[email_token::RESET],
        AuditKind::PasswordReset,
    )
    .await?;
    let password_hash = app
        .hasher
        .hash_new(
            new_password.expose(),
            password_context(&account.email, account.name.as_deref()),
        )
        .await?;
    // Sessions live in Redis: the event is stored ahead of the revocation (see
    // `Webhooks::write_ahead`).
    let event = Event::sessions_revoked(account.id, "password_reset", None);
    app.webhooks.write_ahead(&[event]).await?;
    let revoked = app
        .sessions
        .ask(RevokeAll {
            user_id: account.id,
            except: None,
        })
        .await?;
    let mail = notice(app, Template::PasswordChanged, &account, &[]);
    let removed = app
        .users
        .ask(Redeem {
            token_id: token.id,
            user_id: account.id,
            change: Redemption::Password { password_hash },
            mail: vec![mail],
            first_proof: Some(first_proof_notice(app, &account)),
            webhooks: app.webhooks.clone(),
        })
        .await?;
    app.mailer.wake();
    if let Some(removed) = removed {
        proven(app, client, &account, &removed).await?;
    }
    // `user.password_changed` committed with the new hash (see `Redeem`).
    app.webhooks.wake();
    app.profiles.invalidate(&account.id).await;
    app.audit.record(
        AuditEvent::success(AuditKind::PasswordReset)
            .subject(account.id)
            .ip(client.ip.clone())
            .detail(serde_json::json!({ "sessions_revoked": revoked })),
    );
    tracing::info!(user_id = %account.id, sessions_revoked = revoked, "password reset");
    Ok(())
}

/// The usable token and its account, or `invalid_token` (audited as a failure of `kind`).
async fn find_token(
    app: &App,
    client: &Client,
    token: &str,
    purposes: &'static [&'static str],
    kind: AuditKind,
) -> Result<(email_token::Model, user::Model), ApiError> {
    // A token is 43 base64url characters; anything else cannot match, and is not looked up.
    let plausible = token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let found = if plausible {
        app.users
            .ask(FindToken {
                hash: MailToken::hash(token),
                purposes,
            })
            .await?
    } else {
        None
    };
    found.ok_or_else(|| {
        // A loop of bad tokens from one client is one counted event per window.
        app.audit.record_denial(
            format!("invalid_token {}", client.group()),
            AuditEvent::failure(kind)
                .ip(client.ip.clone())
                .detail(serde_json::json!({ "reason": "invalid_token" })),
        );
        ApiError::InvalidToken
    })
}

/// POST /email/verify: a verification link, or the link that confirms a new address (then the
/// account's address changes, and the old one is told).
pub async fn verify_email(app: &App, client: &Client, token: &str) -> Result<(), ApiError> {
    const PURPOSES: &[&str] = &[email_token::VERIFY, email_token::CHANGE];
    let (token, account) = find_token(app, client, token, PURPOSES, AuditKind::EmailVerify).await?;
    let audit = |kind| {
        AuditEvent::success(kind)
            .subject(account.id)
            .ip(client.ip.clone())
    };
    if token.purpose == email_token::CHANGE {
        let mail = notice(
            app,
            Template::EmailChanged,
            &account,
            &[("new_email", token.email.as_str())],
        );
        app.users
            .ask(Redeem {
                token_id: token.id,
                user_id: account.id,
                change: Redemption::ChangeEmail {
                    old: account.email.clone(),
                    new: token.email.clone(),
                },
                mail: vec![mail],
                first_proof: None,
                webhooks: Default::default(),
            })
            .await?;
        app.mailer.wake();
        app.profiles.invalidate(&account.id).await;
        app.audit.record(
            audit(AuditKind::EmailChange).detail(serde_json::json!({ "step": "confirmed" })),
        );
        tracing::info!(user_id = %account.id, "email changed");
    } else {
        // The first proof of the address ends every session opened before it (whoever
        // registered the address may hold them), ahead of the change, as a reset does: should
        // the change fail, the link still works for a retry.
        if !account.email_verified {
            let event = Event::sessions_revoked(account.id, "address_proven", None);
            app.webhooks.write_ahead(&[event]).await?;
            app.sessions
                .ask(RevokeAll {
                    user_id: account.id,
                    except: None,
                })
                .await?;
        }
        let removed = app
            .users
            .ask(Redeem {
                token_id: token.id,
                user_id: account.id,
                change: Redemption::Verify {
                    email: token.email.clone(),
                },
                mail: Vec::new(),
                first_proof: Some(first_proof_notice(app, &account)),
                webhooks: Default::default(),
            })
            .await?;
        app.mailer.wake();
        app.profiles.invalidate(&account.id).await;
        if let Some(removed) = removed {
            proven(app, client, &account, &removed).await?;
        }
        app.audit.record(
            audit(AuditKind::EmailVerify).detail(serde_json::json!({ "step": "verified" })),
        );
        tracing::info!(user_id = %account.id, "email verified");
    }
    Ok(())
}

/// The notice of a first proof that removed sign-in methods (none when nothing was removed):
/// addressed without the account's name, which whoever registered the address chose.
fn first_proof_notice(app: &App, account: &user::Model) -> FirstProofMail {
    let mailer = app.mailer.clone();
    let to = account.email.clone();
    Box::new(move |removed: &Removed| {
        if removed.is_empty() {
            return Vec::new();
        }
        let mut lines: Vec<String> = removed
            .identities
            .iter()
            .map(|p| format!("- the identity at {p}"))
            .collect();
        lines.extend(
            removed
                .passkeys
                .iter()
                .map(|n| format!("- the passkey \"{n}\"")),
        );
        if removed.totp {
            lines.push("- the authenticator app and its recovery codes".into());
        }
        let removed = lines.join("\n");
        vec![mailer.compose(
            Template::MethodsRemoved,
            &to,
            &[("email", to.as_str()), ("removed", removed.as_str())],
        )]
    })
}

/// After the first proof of an account's address: audited, and `admin` granted when
/// ADMIN_EMAILS lists it.
async fn proven(
    app: &App,
    client: &Client,
    account: &user::Model,
    removed: &Removed,
) -> Result<(), ApiError> {
    app.audit.record(
        AuditEvent::success(AuditKind::EmailVerify)
            .subject(account.id)
            .ip(client.ip.clone())
            .detail(serde_json::json!({
                "step": "first_proof",
                "removed_identities": removed.identities,
                "removed_passkeys": removed.passkeys.len(),
                "removed_totp": removed.totp,
            })),
    );
    tracing::info!(
        user_id = %account.id,
        identities = removed.identities.len(),
        passkeys = removed.passkeys.len(),
        totp = removed.totp,
        "address proven for the first time: earlier sign-in methods removed"
    );
    super::admin::grant_listed_admin(app, &account.email).await?;
    Ok(())
}

/// POST /email/verify/resend: a new verification link (superseding the older ones), unless the
/// address is verified already. Limited per client and per account.
pub async fn resend_verification(app: &App, caller: &Caller) -> Result<(), ApiError> {
    let client = Client {
        ip: caller.ip.clone(),
        user_agent: None,
    };
    app.limit_client(Scope::MailIp, &client).await?;
    app.throttle
        .hit(Scope::MailAccount, &caller.user_id.to_string())
        .await??;
    let account = app
        .users
        .ask(FindAccount(caller.user_id))
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    if account.email_verified {
        return Ok(());
    }
    let (token, mail) = verification(app, &account.email);
    app.users
        .ask(IssueToken {
            user_id: account.id,
            token,
            mail: vec![mail],
            unless_within: None,
        })
        .await?;
    app.mailer.wake();
    app.audit.record(
        AuditEvent::success(AuditKind::EmailVerify)
            .by(caller.user_id)
            .ip(caller.ip.clone())
            .detail(serde_json::json!({ "step": "mailed" })),
    );
    Ok(())
}

/// PUT /profile/email: after the current password (limited and locked out as a password
/// change), a link to the new address; the address changes when it is used. The answer is the
/// same whether or not the new address has an account (none is mailed then).
pub async fn change_email(
    app: &App,
    caller: &Caller,
    new_email: Email,
    current_password: String,
) -> Result<(), ApiError> {
    let account =
        check_current_password(app, caller, Some(current_password), AuditKind::EmailChange).await?;
    if new_email.as_str() == account.email {
        return Err(ApiError::invalid(
            "new_email is the account's current address",
        ));
    }
    let taken = app
        .users
        .ask(FindByEmail(new_email.as_str().to_string()))
        .await?
        .is_some();
    if !taken {
        let token = MailToken::generate();
        let link = app.mailer.link("verify-email", &token.token);
        let ttl = minutes(CHANGE_TTL);
        let mail = notice_to(
            app,
            Template::ConfirmEmailChange,
            new_email.as_str(),
            &account,
            &[
                ("new_email", new_email.as_str()),
                ("link", &link),
                ("minutes", &ttl),
            ],
        );
        app.users
            .ask(IssueToken {
                user_id: account.id,
                token: NewToken {
                    hash: token.hash,
                    purpose: email_token::CHANGE,
                    email: new_email.as_str().to_string(),
                    ttl: CHANGE_TTL,
                },
                mail: vec![mail],
                unless_within: None,
            })
            .await?;
        app.mailer.wake();
    }
    app.audit.record(
        AuditEvent::success(AuditKind::EmailChange)
            .by(caller.user_id)
            .ip(caller.ip.clone())
            .detail(serde_json::json!({ "step": "requested", "address_taken": taken })),
    );
    Ok(())
}
