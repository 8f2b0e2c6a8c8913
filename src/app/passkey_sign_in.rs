//! Passwordless sign-in with a discoverable passkey (WebAuthn): one way in. The passkey's
//! ceremony and checks are `app::webauthn`'s; the end of the sign-in is `LoginAttempt`'s.
use std::sync::Arc;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use uuid::Uuid;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PublicKeyCredential, RequestChallengeResponse,
};

use super::{
    accounts::{LoginAttempt, Way},
    sessions::Grant,
    webauthn::{self, amr, internal, passkeys, random_token, record_use, CEREMONY_TTL},
    App, Client,
};
use crate::{
    actor::Ask,
    audit::AuditEvent,
    domain::AuditKind,
    error::ApiError,
    federation::pending::Kind,
    throttle::Scope,
    users::{FindAccess, FindAccount, FindWebauthn},
};

/// The ceremony's outcome, and the sign-in's in `sessiond_logins_total` like any other way in.
fn count(app: &App, ceremony: &str, outcome: &str) {
    webauthn::count(app, ceremony, outcome);
    let outcome = match outcome {
        "started" => return,
        "invalid" => "invalid_credentials",
        other => other,
    };
    Way::Passkey.count(app, outcome);
}

/// Starts a passwordless sign-in: an opaque `passkey_token` to finish with, and the request
/// options for `navigator.credentials.get` (any discoverable credential of this relying party).
/// Limited per client address like logins.
pub async fn start_sign_in(
    app: &App,
    client: &Client,
) -> Result<(String, RequestChallengeResponse), ApiError> {
    let pk = passkeys(app)?;
    if let Err(e) = app.limit_client(Scope::LoginIp, client).await {
        count(app, "sign_in", "throttled");
        return Err(e);
    }
    let (options, state) = pk
        .webauthn
        .start_discoverable_authentication()
        .map_err(|e| ApiError::Internal(format!("WebAuthn authentication: {e}")))?;
    let token = random_token();
    let record = serde_json::to_string(&state).map_err(internal("authentication state"))?;
    pk.pending
        .put(Kind::WebauthnSignIn, &token, &record, CEREMONY_TTL)
        .await?;
    count(app, "sign_in", "started");
    Ok((token, options))
}

const SIGN_IN_REFUSED: &str =
    "the passkey_token is unknown, used or expired, or the passkey was not accepted: start again";

/// Finishes a passwordless sign-in: the very session and token pair a password login opens,
/// and the `amr` of the credential. The `passkey_token` is spent whatever the outcome. A
/// passkey verifies its user itself, so no second factor is asked; disabled accounts, and
/// unverified addresses under REQUIRE_EMAIL_VERIFICATION, are refused as at POST /login.
pub async fn finish_sign_in(
    app: &App,
    client: &Client,
    passkey_token: &str,
    assertion: &PublicKeyCredential,
) -> Result<(Grant, &'static str), ApiError> {
    let result = attempt_sign_in(app, client, passkey_token, assertion).await;
    if result.as_ref().is_err_and(|e| e.code().0.is_server_error()) {
        count(app, "sign_in", "error");
    }
    result
}

async fn attempt_sign_in(
    app: &App,
    client: &Client,
    passkey_token: &str,
    assertion: &PublicKeyCredential,
) -> Result<(Grant, &'static str), ApiError> {
    let pk = passkeys(app)?;
    if let Err(e) = app.limit_client(Scope::LoginIp, client).await {
        count(app, "sign_in", "throttled");
        return Err(e);
    }
    let refuse = |subject: Option<Uuid>, reason: &str| {
        count(app, "sign_in", "invalid");
        app.audit.record(
            AuditEvent::failure(AuditKind::Login)
                .subject(subject)
                .ip(client.ip.clone())
                .detail(serde_json::json!({ "method": "passkey", "reason": reason })),
        );
        ApiError::InvalidGrant(SIGN_IN_REFUSED.into())
    };
    if passkey_token.is_empty() || passkey_token.len() > 128 {
        return Err(refuse(None, "no_ceremony"));
    }
    let state = pk
        .pending
        .take(Kind::WebauthnSignIn, passkey_token)
        .await?
        .and_then(|r| serde_json::from_str::<DiscoverableAuthentication>(&r).ok());
    let Some(state) = state else {
        return Err(refuse(None, "no_ceremony"));
    };
    let Ok((user_id, raw_id)) = pk.webauthn.identify_discoverable_authentication(assertion) else {
        return Err(refuse(None, "invalid_assertion"));
    };
    let credential = match app
        .users
        .ask(FindWebauthn(URL_SAFE_NO_PAD.encode(raw_id)))
        .await?
    {
        Some(c) if c.user_id == user_id => c,
        _ => return Err(refuse(None, "unknown_credential")),
    };
    let Ok(passkey) = serde_json::from_str::<Passkey>(&credential.passkey) else {
        return Err(ApiError::Internal(format!(
            "stored passkey {} does not parse",
            credential.id
        )));
    };
    let result = match pk
        .webauthn
        .finish_discoverable_authentication_v2(assertion, state, &passkey)
    {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(%user_id, cause = %e, "passkey sign-in refused");
            return Err(refuse(Some(user_id), "invalid_assertion"));
        }
    };
    if !record_use(app, &credential, passkey, &result).await? {
        return Err(refuse(Some(user_id), "counter"));
    }
    let account = app
        .users
        .ask(FindAccount(user_id))
        .await?
        .ok_or_else(|| refuse(Some(user_id), "disabled"))?;
    let access = match app.users.ask(FindAccess(user_id)).await? {
        Some(a) if !a.disabled => a.access,
        _ => {
            count(app, "sign_in", "invalid");
            app.audit.record(
                AuditEvent::failure(AuditKind::Login)
                    .subject(user_id)
                    .ip(client.ip.clone())
                    .detail(serde_json::json!({ "method": "passkey", "reason": "disabled" })),
            );
            return Err(ApiError::InvalidCredentials);
        }
    };
    if app.settings.require_verification && !account.email_verified {
        count(app, "sign_in", "email_not_verified");
        app.audit.record(
            AuditEvent::denied(AuditKind::Login)
                .subject(user_id)
                .ip(client.ip.clone())
                .detail(serde_json::json!({ "method": "passkey", "reason": "email_not_verified" })),
        );
        super::notices::remind_unverified(app, &account).await?;
        return Err(ApiError::EmailNotVerified);
    }
    let attempt = LoginAttempt::new(app, client, &account.email, Way::Passkey);
    let amr = amr(&result);
    // A passkey with user verification is a sign-in of its own: the key's `amr` only.
    let auth = Arc::new(crate::session::AuthContext::new(&[amr], attempt.now, None));
    let (refresh, access) = match attempt.open_session(user_id, access, auth.clone()).await {
        Ok(opened) => opened,
        Err(e) => {
            if matches!(e, ApiError::InvalidCredentials) {
                count(app, "sign_in", "invalid");
            }
            return Err(e);
        }
    };
    count(app, "sign_in", "success");
    app.audit.record(
        AuditEvent::success(AuditKind::Login)
            .by(user_id)
            .ip(client.ip.clone())
            .detail(serde_json::json!({
                "session_id": refresh.session_id,
                "method": "passkey",
                "credential": credential.id,
            })),
    );
    tracing::info!(%user_id, session_id = %refresh.session_id, "signed in with a passkey");
    super::notices::note_login(app, client, &account).await;
    Ok((attempt.grant(refresh, access, auth), amr))
}
