//! Sign-in with an identity provider, for REST clients (single-page and mobile apps):
//!
//! 1. `start`: the client gives its return URL (on OAUTH_RETURN_URLS) and its own PKCE S256
//!    challenge; sessiond keeps a single-use state (10 minutes) with its own nonce and PKCE
//!    verifier for the provider, and sends the browser there.
//! 2. `callback`: the state is taken (once), the provider's code exchanged and its answer
//!    validated (`federation`), the account found, made or refused; the browser goes back to
//!    the client with a one-time sessiond code (60 seconds, bound to the client's challenge) or
//!    an error code.
//! 3. `redeem`: the client trades that code and its PKCE verifier for the very session and token
//!    pair a password login opens (`accounts::LoginAttempt::open_session`).
//!
//! The same flow links an identity to a signed-in account (`link` set at the start).
use std::{sync::Arc, time::Duration};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{
    accounts::{LoginAttempt, Way},
    sessions::Grant,
    App, Caller, Client,
};
use crate::{
    actor::Ask,
    audit::AuditEvent,
    domain::{AuditKind, Email, ADMIN_ROLE, USER_ROLE},
    error::ApiError,
    federation::{
        pending::{Kind, Pending, PendingUnavailable},
        Asserted, Challenge, FederationError, Providers,
    },
    session::{AuthContext, Revoke, Validate},
    throttle::Scope,
    users::{
        CreateFederatedUser, FindAccess, FindAccount, FindByEmail, FindIdentity, LinkIdentity,
        ListIdentities, UnlinkIdentity, UserStoreError,
    },
    webhooks::Event,
};

/// How long a started flow may take to come back to the callback.
pub const STATE_TTL: Duration = crate::config::PendingTtls::PRODUCTION.federation_state;
/// How long the one-time code given to the client lives.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// How long a redeemed code's second use still revokes its session: longer than the code
/// could have lived.
const SPENT_CODE_TTL: Duration = Duration::from_secs(2 * 60);

/// What the flows of identity providers run on: the providers and the one-time records.
#[derive(Clone)]
pub struct Federation {
    pub providers: Providers,
    pub pending: Pending,
    /// [`STATE_TTL`] but in tests (`Config::pending_ttls`).
    pub state_ttl: Duration,
}

/// A started flow, kept under its state.
#[derive(Serialize, Deserialize)]
struct Flow {
    provider: String,
    return_to: String,
    /// The client's PKCE S256 challenge, which the one-time code is bound to.
    code_challenge: String,
    nonce: String,
    /// sessiond's own PKCE verifier toward the provider.
    pkce_verifier: String,
    /// Linking an identity to this signed-in account, rather than signing in.
    link: Option<Uuid>,
    /// The session that started the linking: the callback links only while it lives (a reset
    /// or logout since then ends the flow too).
    #[serde(default)]
    link_session: Option<Uuid>,
}

/// A one-time code, kept under the code.
#[derive(Serialize, Deserialize)]
struct CodeGrant {
    user_id: Uuid,
    provider: String,
    code_challenge: String,
}

/// An identity a linking flow asserted, waiting for the session that started the flow to
/// confirm it (OAUTH_LINK_CONFIRM), kept under its one-time `link_code`.
#[derive(Serialize, Deserialize)]
struct PendingLink {
    user_id: Uuid,
    session_id: Uuid,
    provider: String,
    subject: String,
    email: Option<String>,
    /// The starting client's PKCE S256 challenge, which the confirmation answers.
    code_challenge: String,
}

/// The ways a sign-in ends without a code, as the client reads them in `?error=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    AccessDenied,
    AccountExists,
    EmailNotVerified,
    ProviderError,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::AccessDenied => "access_denied",
            Refusal::AccountExists => "account_exists",
            Refusal::EmailNotVerified => "email_not_verified",
            Refusal::ProviderError => "provider_error",
        }
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A PKCE S256 challenge: base64url of a SHA-256, 43 characters (RFC 7636).
fn check_challenge(challenge: &str) -> Result<(), ApiError> {
    let ok = challenge.len() == 43
        && URL_SAFE_NO_PAD
            .decode(challenge)
            .is_ok_and(|b| b.len() == 32);
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "code_challenge must be a PKCE S256 challenge (43 base64url characters)",
        ))
    }
}

/// Whether a PKCE verifier answers an S256 challenge (compared in constant time).
fn verifier_matches(verifier: &str, challenge: &str) -> bool {
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    bool::from(computed.as_bytes().ct_eq(challenge.as_bytes()))
}

fn federation(app: &App) -> Result<&Federation, ApiError> {
    app.federation
        .as_ref()
        .ok_or(ApiError::NotFound("identity provider"))
}

/// `return_to` with one query parameter added.
fn with_param(return_to: &str, name: &str, value: &str) -> String {
    let value: String = url_encode(value);
    let sep = if return_to.contains('?') { '&' } else { '?' };
    format!("{return_to}{sep}{name}={value}")
}

fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The configured providers: name and display name.
pub fn providers(app: &App) -> Vec<(String, String)> {
    app.federation
        .as_ref()
        .map(|f| {
            f.providers
                .config()
                .providers
                .iter()
                .map(|p| (p.name.clone(), p.display_name.clone()))
                .collect()
        })
        .unwrap_or_default()
}

/// The operator's name for a provider (its configured name when it is no longer configured).
fn provider_display_name(app: &App, provider: &str) -> String {
    providers(app)
        .into_iter()
        .find(|(name, _)| name == provider)
        .map_or_else(|| provider.to_string(), |(_, display)| display)
}

/// Starts a sign-in (or, with `link`, the linking of an identity to the account of that
/// session): the URL of the provider's authorization page.
pub async fn start(
    app: &App,
    client: &Client,
    provider: &str,
    return_to: &str,
    code_challenge: &str,
    link: Option<&Caller>,
) -> Result<String, ApiError> {
    app.limit_client(Scope::OAuthIp, client).await?;
    let fed = federation(app)?;
    fed.providers.provider(provider)?;
    if !fed
        .providers
        .config()
        .return_urls
        .iter()
        .any(|u| u == return_to)
    {
        return Err(ApiError::invalid("return_to is not an allowed return URL"));
    }
    check_challenge(code_challenge)?;
    let state = random_token();
    let (challenge, pkce_verifier) = Challenge::new(state.clone());
    let flow = Flow {
        provider: provider.to_string(),
        return_to: return_to.to_string(),
        code_challenge: code_challenge.to_string(),
        nonce: challenge.nonce.clone(),
        pkce_verifier,
        link: link.map(|c| c.user_id),
        link_session: link.map(|c| c.session_id),
    };
    let url = fed
        .providers
        .authorize_url(provider, challenge)
        .await
        .inspect_err(|e| tracing::warn!(provider, cause = %e, "identity provider unavailable"))?;
    let record = serde_json::to_string(&flow).map_err(|e| ApiError::Internal(e.to_string()))?;
    fed.pending
        .put(Kind::State, &state, &record, fed.state_ttl)
        .await?;
    Ok(url)
}

/// What the provider sends the browser back with.
#[derive(Debug, Default, Deserialize)]
pub struct CallbackParams {
    pub state: Option<String>,
    pub code: Option<String>,
    pub error: Option<String>,
}

/// The callback: where to send the browser. An unknown, used, expired or foreign state is
/// `400` (there is no return URL to trust).
pub async fn callback(
    app: &App,
    client: &Client,
    provider: &str,
    params: CallbackParams,
) -> Result<String, ApiError> {
    app.limit_client(Scope::OAuthIp, client).await?;
    let fed = federation(app)?;
    fed.providers.provider(provider)?;
    let unknown = || ApiError::invalid("unknown, used or expired state");
    let state = params.state.as_deref().ok_or_else(unknown)?;
    let record = fed
        .pending
        .take(Kind::State, state)
        .await?
        .ok_or_else(unknown)?;
    let flow: Flow = serde_json::from_str(&record).map_err(|_| unknown())?;
    if flow.provider != provider {
        // Started for another provider: taken, so it cannot be tried there either.
        return Err(unknown());
    }
    let outcome = finish(app, fed, client, &flow, params).await;
    let metric = |outcome: &str| {
        app.metrics
            .oauth_signins
            .with_label_values(&[provider, outcome])
            .inc();
    };
    match outcome {
        Ok(Finished::Code(code)) => {
            metric("code");
            Ok(with_param(&flow.return_to, "code", &code))
        }
        Ok(Finished::Linked) => {
            metric("linked");
            Ok(with_param(&flow.return_to, "linked", provider))
        }
        Ok(Finished::LinkCode(code)) => {
            metric("link_pending");
            Ok(with_param(&flow.return_to, "link_code", &code))
        }
        Err(Failure::Refused(refusal)) => {
            metric(refusal.code());
            Ok(with_param(&flow.return_to, "error", refusal.code()))
        }
        Err(Failure::Error(e)) => {
            metric("error");
            Err(e)
        }
    }
}

enum Finished {
    Code(String),
    Linked,
    /// OAUTH_LINK_CONFIRM: the one-time code the starting session confirms the link with.
    LinkCode(String),
}

enum Failure {
    Refused(Refusal),
    /// A failure of sessiond's own stores: the status it maps to (503), not a redirect.
    Error(ApiError),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Error(e)
    }
}

impl From<UserStoreError> for Failure {
    fn from(e: UserStoreError) -> Self {
        Failure::Error(e.into())
    }
}

impl From<PendingUnavailable> for Failure {
    fn from(e: PendingUnavailable) -> Self {
        Failure::Error(e.into())
    }
}

impl From<FederationError> for Failure {
    fn from(e: FederationError) -> Self {
        Failure::Error(e.into())
    }
}

async fn finish(
    app: &App,
    fed: &Federation,
    client: &Client,
    flow: &Flow,
    params: CallbackParams,
) -> Result<Finished, Failure> {
    let provider = flow.provider.as_str();
    if let Some(error) = params.error {
        tracing::info!(provider, error = %error.chars().take(64).collect::<String>(), "identity provider refused the sign-in");
        return Err(Failure::Refused(if error == "access_denied" {
            Refusal::AccessDenied
        } else {
            Refusal::ProviderError
        }));
    }
    let code = params
        .code
        .ok_or(Failure::Refused(Refusal::ProviderError))?;
    let asserted = match fed
        .providers
        .exchange(
            provider,
            code,
            flow.pkce_verifier.clone(),
            flow.nonce.clone(),
        )
        .await
    {
        Ok(a) => a,
        Err(e @ (FederationError::Provider(_) | FederationError::Unavailable(_))) => {
            tracing::warn!(provider, cause = %e, "identity provider sign-in failed");
            app.audit.record(
                AuditEvent::failure(AuditKind::Login)
                    .ip(client.ip.clone())
                    .detail(
                        serde_json::json!({ "provider": provider, "reason": "provider_error" }),
                    ),
            );
            return Err(Failure::Refused(Refusal::ProviderError));
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(user_id) = flow.link {
        if !flow_session_lives(app, user_id, flow.link_session).await? {
            app.audit.record(
                AuditEvent::denied(AuditKind::IdentityLink)
                    .subject(user_id)
                    .ip(client.ip.clone())
                    .detail(serde_json::json!({ "provider": provider, "reason": "session_ended" })),
            );
            return Err(Failure::Refused(Refusal::AccessDenied));
        }
        if fed.providers.config().link_confirm {
            // Not linked yet: a browser that was handed someone else's flow (a linking swap)
            // brings its code to a client whose session did not start it.
            let pending = PendingLink {
                user_id,
                session_id: flow.link_session.unwrap_or_default(),
                provider: provider.to_string(),
                subject: asserted.subject,
                email: asserted.email,
                code_challenge: flow.code_challenge.clone(),
            };
            let record =
                serde_json::to_string(&pending).map_err(|e| ApiError::Internal(e.to_string()))?;
            let code = random_token();
            fed.pending
                .put(Kind::LinkCode, &code, &record, CODE_TTL)
                .await?;
            return Ok(Finished::LinkCode(code));
        }
        return link(app, client, user_id, provider, asserted).await;
    }
    let user_id = account_for(app, fed, client, provider, asserted).await?;
    // A disabled account signs in through no provider either.
    match app.users.ask(FindAccess(user_id)).await? {
        Some(a) if !a.disabled => {}
        _ => {
            app.audit.record(
                AuditEvent::failure(AuditKind::Login)
                    .subject(user_id)
                    .ip(client.ip.clone())
                    .detail(serde_json::json!({ "provider": provider, "reason": "disabled" })),
            );
            return Err(Failure::Refused(Refusal::AccessDenied));
        }
    }
    // REQUIRE_EMAIL_VERIFICATION: the password path refuses an unverified account even after
    // a right password, so no provider enters it either (an identity linked to it before the
    // address was proven is no proof of it).
    if app.settings.require_verification {
        let account = app.users.ask(FindAccount(user_id)).await?;
        if let Some(account) = account.filter(|a| !a.email_verified) {
            app.audit.record(
                AuditEvent::denied(AuditKind::Login)
                    .subject(user_id)
                    .ip(client.ip.clone())
                    .detail(serde_json::json!({
                        "provider": provider,
                        "reason": "email_not_verified",
                    })),
            );
            super::notices::remind_unverified(app, &account).await?;
            return Err(Failure::Refused(Refusal::EmailNotVerified));
        }
    }
    let code = random_token();
    let grant = CodeGrant {
        user_id,
        provider: provider.to_string(),
        code_challenge: flow.code_challenge.clone(),
    };
    let record = serde_json::to_string(&grant).map_err(|e| ApiError::Internal(e.to_string()))?;
    fed.pending
        .put(Kind::Code, &code, &record, CODE_TTL)
        .await?;
    Ok(Finished::Code(code))
}

/// Whether the session that started a linking flow still lives, read from the store (not a
/// cached answer: a revocation on another pod a moment ago counts).
async fn flow_session_lives(
    app: &App,
    user_id: Uuid,
    session_id: Option<Uuid>,
) -> Result<bool, Failure> {
    let Some(session_id) = session_id else {
        return Ok(false);
    };
    let state = app
        .sessions
        .ask(Validate {
            user_id,
            session_id,
            fresh: true,
        })
        .await
        .map_err(ApiError::from)?;
    Ok(state.is_some_and(|s| s.user_id == user_id))
}

/// The account of the asserted identity: the one it is linked to; else, for a verified email,
/// a new passwordless account, or the account holding the email when OAUTH_LINK_VERIFIED_EMAILS
/// allows (never otherwise: whoever controls an identity at a provider must not take over an
/// account made with a password).
async fn account_for(
    app: &App,
    fed: &Federation,
    client: &Client,
    provider: &str,
    asserted: Asserted,
) -> Result<Uuid, Failure> {
    if let Some(identity) = app
        .users
        .ask(FindIdentity {
            provider: provider.to_string(),
            subject: asserted.subject.clone(),
        })
        .await?
    {
        return Ok(identity.user_id);
    }
    let email = match (&asserted.email, asserted.email_verified) {
        (Some(email), true) => Email::parse(email).ok(),
        _ => None,
    };
    let Some(email) = email else {
        return Err(Failure::Refused(Refusal::EmailNotVerified));
    };
    if let Some(existing) = app
        .users
        .ask(FindByEmail(email.as_str().to_string()))
        .await?
    {
        // An address nobody has proven may have been registered by anyone (an attacker
        // waiting for its owner, a pre-account takeover): the provider's word for the address
        // never joins an account whose password or factors were set by whoever registered it.
        let reason = if !fed.providers.config().link_verified_emails {
            Some("account_exists")
        } else if !existing.email_verified {
            Some("account_unverified")
        } else {
            None
        };
        if let Some(reason) = reason {
            app.audit.record(
                AuditEvent::denied(AuditKind::Login)
                    .subject(existing.id)
                    .ip(client.ip.clone())
                    .detail(serde_json::json!({ "provider": provider, "reason": reason })),
            );
            return Err(Failure::Refused(Refusal::AccountExists));
        }
        match link(app, client, existing.id, provider, asserted).await {
            Ok(_) => return Ok(existing.id),
            Err(e) => return Err(e),
        }
    }
    let mut roles = vec![USER_ROLE.to_string()];
    // Only a verified email reaches here, so ADMIN_EMAILS cannot be claimed by an assertion.
    if app
        .settings
        .admin_emails
        .iter()
        .any(|e| e == email.as_str())
    {
        roles.push(ADMIN_ROLE.to_string());
    }
    let created = app
        .users
        .ask(CreateFederatedUser {
            email: email.into_inner(),
            name: asserted
                .name
                .map(|n| n.chars().filter(|c| !c.is_control()).take(200).collect()),
            roles,
            provider: provider.to_string(),
            subject: asserted.subject,
        })
        .await;
    let user = match created {
        Ok(u) => u,
        // Made by a concurrent sign-in or registration meanwhile.
        Err(UserStoreError::EmailTaken) => return Err(Failure::Refused(Refusal::AccountExists)),
        Err(e) => return Err(e.into()),
    };
    app.metrics.registrations.inc();
    app.audit.record(
        AuditEvent::success(AuditKind::Register)
            .by(user.id)
            .ip(client.ip.clone())
            .detail(serde_json::json!({ "roles": user.roles, "provider": provider })),
    );
    tracing::info!(user_id = %user.id, provider, "registered through an identity provider");
    Ok(user.id)
}

async fn link(
    app: &App,
    client: &Client,
    user_id: Uuid,
    provider: &str,
    asserted: Asserted,
) -> Result<Finished, Failure> {
    let change = format!(
        "Your identity at {} was linked: it signs you in",
        provider_display_name(app, provider)
    );
    let notice = super::notices::method_notice(app, user_id, &change).await?;
    let linked = app
        .users
        .ask(LinkIdentity {
            user_id,
            provider: provider.to_string(),
            subject: asserted.subject,
            email: asserted.email,
            notice,
        })
        .await;
    match linked {
        Ok(_) => {
            app.mailer.wake();
            app.audit.record(
                AuditEvent::success(AuditKind::IdentityLink)
                    .by(user_id)
                    .ip(client.ip.clone())
                    .detail(serde_json::json!({ "provider": provider })),
            );
            Ok(Finished::Linked)
        }
        Err(UserStoreError::Conflict(_)) => Err(Failure::Refused(Refusal::AccountExists)),
        Err(e) => Err(e.into()),
    }
}

/// POST /profile/identities/{provider}/confirm (OAUTH_LINK_CONFIRM): links the identity a
/// linking flow's callback left under `link_code`, for the session that started that flow
/// only, with its PKCE verifier. The code is taken first, so any failure spends it; every
/// failure is the same `400 invalid_grant`, and one by another session is audited.
pub async fn confirm_link(
    app: &App,
    client: &Client,
    caller: &Caller,
    provider: &str,
    link_code: &str,
    code_verifier: &str,
) -> Result<(), ApiError> {
    app.limit_client(Scope::OAuthIp, client).await?;
    let invalid = || {
        ApiError::InvalidGrant(
            "unknown, used or expired link_code, another session's, or wrong verifier".into(),
        )
    };
    let fed = federation(app)?;
    fed.providers.provider(provider)?;
    if !fed.providers.config().link_confirm {
        return Err(ApiError::NotFound("linking confirmation"));
    }
    if link_code.is_empty() || link_code.len() > 128 || code_verifier.len() > 128 {
        return Err(invalid());
    }
    let Some(record) = fed.pending.take(Kind::LinkCode, link_code).await? else {
        return Err(invalid());
    };
    let pending: PendingLink = serde_json::from_str(&record).map_err(|_| invalid())?;
    if pending.session_id != caller.session_id || pending.user_id != caller.user_id {
        app.audit.record(
            AuditEvent::denied(AuditKind::IdentityLink)
                .by(caller.user_id)
                .subject(pending.user_id)
                .ip(caller.ip.clone())
                .detail(serde_json::json!({ "provider": provider, "reason": "other_session" })),
        );
        tracing::warn!(user_id = %caller.user_id, flow_user = %pending.user_id, provider,
            "a linking flow's code brought by a session that did not start it: refused");
        return Err(invalid());
    }
    if pending.provider != provider || !verifier_matches(code_verifier, &pending.code_challenge) {
        return Err(invalid());
    }
    let asserted = Asserted {
        subject: pending.subject,
        email: pending.email,
        email_verified: false,
        name: None,
    };
    match link(app, client, caller.user_id, provider, asserted).await {
        Ok(_) => {
            app.metrics
                .oauth_signins
                .with_label_values(&[provider, "linked"])
                .inc();
            Ok(())
        }
        Err(Failure::Refused(_)) => Err(ApiError::Conflict(
            "this identity, or one at the same provider, is already linked".into(),
        )),
        Err(Failure::Error(e)) => Err(e),
    }
}

/// POST /oauth/token: the one-time code and the client's PKCE verifier for a new session. The
/// code is taken first, so it is spent even when the verifier is wrong.
pub async fn redeem(
    app: &App,
    client: &Client,
    code: &str,
    code_verifier: &str,
) -> Result<(Grant, String), ApiError> {
    let result = attempt_redeem(app, client, code, code_verifier).await;
    // `mfa_required` is counted where it is decided (`require_second_factor`).
    let outcome = match &result {
        Ok(_) => Some("success"),
        Err(ApiError::MfaRequired { .. }) => None,
        Err(ApiError::RateLimited { .. }) => Some("throttled"),
        Err(e) if e.code().0.is_server_error() => Some("error"),
        Err(_) => Some("invalid_credentials"),
    };
    if let Some(outcome) = outcome {
        Way::Federation.count(app, outcome);
    }
    result
}

async fn attempt_redeem(
    app: &App,
    client: &Client,
    code: &str,
    code_verifier: &str,
) -> Result<(Grant, String), ApiError> {
    app.limit_client(Scope::OAuthIp, client).await?;
    let invalid =
        || ApiError::InvalidGrant("unknown, used or expired code, or wrong verifier".into());
    if code.is_empty() || code.len() > 128 || code_verifier.len() > 128 {
        return Err(invalid());
    }
    // Without providers no code was ever given out.
    let fed = app.federation.as_ref().ok_or_else(invalid)?;
    let Some(record) = fed.pending.take(Kind::Code, code).await? else {
        revoke_on_reuse(app, fed, client, code).await?;
        return Err(invalid());
    };
    let grant: CodeGrant = serde_json::from_str(&record).map_err(|_| invalid())?;
    // Spent: a second use of the code, for CODE_TTL, revokes what this one issues (RFC 6749
    // 4.1.2). Written before the session exists, so a reuse racing this call is seen: it takes
    // the mark, and this call then revokes its own session.
    let spent = serde_json::json!({ "user_id": grant.user_id }).to_string();
    fed.pending
        .put(Kind::SpentCode, code, &spent, SPENT_CODE_TTL)
        .await?;
    if !verifier_matches(code_verifier, &grant.code_challenge) {
        app.metrics
            .oauth_signins
            .with_label_values(&[grant.provider.as_str(), "invalid_grant"])
            .inc();
        return Err(invalid());
    }
    let access = match app.users.ask(FindAccess(grant.user_id)).await? {
        Some(a) if !a.disabled => a.access,
        _ => return Err(invalid()),
    };
    let attempt = LoginAttempt::new(app, client, "", Way::Federation);
    // The provider vouches for the identity, not for the account's own second factor: an
    // account with one finishes at POST /login/mfa, as after a password (the code is spent).
    if let Err(e) = attempt
        .require_second_factor(grant.user_id, Some(&grant.provider))
        .await
    {
        if matches!(e, ApiError::MfaRequired { .. }) {
            app.metrics
                .oauth_signins
                .with_label_values(&[grant.provider.as_str(), "mfa_required"])
                .inc();
        }
        return Err(e);
    }
    let auth = Arc::new(AuthContext::federated(&grant.provider, attempt.now));
    let (refresh, access) = attempt
        .open_session(grant.user_id, access, auth.clone())
        .await?;
    let issued = serde_json::json!({ "user_id": grant.user_id, "session_id": refresh.session_id })
        .to_string();
    if fed.pending.take(Kind::SpentCode, code).await?.is_none() {
        // Used again meanwhile: the session this call opened is the one to revoke.
        app.sessions
            .ask(Revoke {
                user_id: grant.user_id,
                session_id: refresh.session_id,
            })
            .await?;
        audit_reuse(app, client, grant.user_id, refresh.session_id).await;
        return Err(invalid());
    }
    fed.pending
        .put(Kind::SpentCode, code, &issued, SPENT_CODE_TTL)
        .await?;
    app.metrics
        .oauth_signins
        .with_label_values(&[grant.provider.as_str(), "success"])
        .inc();
    app.audit.record(
        AuditEvent::success(AuditKind::Login)
            .by(grant.user_id)
            .ip(client.ip.clone())
            .detail(serde_json::json!({
                "session_id": refresh.session_id,
                "provider": grant.provider,
            })),
    );
    tracing::info!(user_id = %grant.user_id, session_id = %refresh.session_id, provider = %grant.provider, "signed in through an identity provider");
    // The new-sign-in notice, as for every way in (a failure to look the account up only
    // skips it).
    if let Ok(Some(account)) = app.users.ask(FindAccount(grant.user_id)).await {
        super::notices::note_login(app, client, &account).await;
    }
    Ok((attempt.grant(refresh, access, auth), grant.provider))
}

/// A one-time code presented again: the session its first use opened (if any yet) is revoked
/// on every pod; a use still opening it finds its mark gone and revokes it itself.
async fn revoke_on_reuse(
    app: &App,
    fed: &Federation,
    client: &Client,
    code: &str,
) -> Result<(), ApiError> {
    let Some(spent) = fed.pending.take(Kind::SpentCode, code).await? else {
        return Ok(());
    };
    #[derive(Deserialize)]
    struct Spent {
        user_id: Uuid,
        session_id: Option<Uuid>,
    }
    let Ok(spent) = serde_json::from_str::<Spent>(&spent) else {
        return Ok(());
    };
    if let Some(session_id) = spent.session_id {
        app.sessions
            .ask(Revoke {
                user_id: spent.user_id,
                session_id,
            })
            .await?;
        audit_reuse(app, client, spent.user_id, session_id).await;
    }
    Ok(())
}

async fn audit_reuse(app: &App, client: &Client, user_id: Uuid, session_id: Uuid) {
    app.webhooks
        .emit_after(Event::session_revoked(user_id, session_id, "code_reuse"))
        .await;
    app.audit.record(
        AuditEvent::denied(AuditKind::SessionRevoke)
            .subject(user_id)
            .ip(client.ip.clone())
            .detail(serde_json::json!({ "session_id": session_id, "reason": "code_reuse" })),
    );
    tracing::warn!(user_id = %user_id, session_id = %session_id, "one-time code used twice: its session revoked");
}

/// The caller's linked identities.
pub async fn identities(
    app: &App,
    caller: &Caller,
) -> Result<Vec<entities::identity::Model>, ApiError> {
    Ok(app.users.ask(ListIdentities(caller.user_id)).await?)
}

/// Unlinks the caller's identity at a provider (409 when it is the last way to sign in).
pub async fn unlink(app: &App, caller: &Caller, provider: &str) -> Result<(), ApiError> {
    let change = format!(
        "Your identity at {} was unlinked: it no longer signs you in",
        provider_display_name(app, provider)
    );
    let notice = super::notices::method_notice(app, caller.user_id, &change).await?;
    app.users
        .ask(UnlinkIdentity {
            user_id: caller.user_id,
            provider: provider.to_string(),
            notice,
        })
        .await
        .map_err(|e| match e {
            UserStoreError::NotFound => ApiError::NotFound("identity"),
            e => e.into(),
        })?;
    app.mailer.wake();
    app.audit.record(
        AuditEvent::success(AuditKind::IdentityUnlink)
            .by(caller.user_id)
            .ip(caller.ip.clone())
            .detail(serde_json::json!({ "provider": provider })),
    );
    Ok(())
}
