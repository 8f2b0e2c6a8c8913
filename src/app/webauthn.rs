//! Passkeys and security keys (WebAuthn, webauthn-rs): registering a credential, using it as a
//! second factor at POST /login/mfa, and passwordless sign-in with a discoverable credential.
//!
//! Each ceremony's state (its challenge) stays on the server, single-use, for
//! [`CEREMONY_TTL`], in the one-time store of sign-in flows (Redis, so any pod can finish a
//! ceremony another started; in-process when embedded): registrations under the session that
//! started them, sign-ins under an opaque `passkey_token`, second factors under the
//! `mfa_token`, step-ups (POST /reauthenticate) under the session that asked. Challenges,
//! assertions and credentials are never logged, audited or counted.
use std::{sync::Arc, time::Duration};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::Utc;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use webauthn_rs::prelude::{
    AuthenticationResult, CreationChallengeResponse, Passkey, PasskeyAuthentication,
    PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential,
    RequestChallengeResponse, Url, Webauthn, WebauthnBuilder,
};

use webauthn_rs_proto::ResidentKeyRequirement;

use super::{App, Caller};
use crate::{
    actor::Ask,
    audit::AuditEvent,
    config::webauthn::WebauthnConfig,
    domain::AuditKind,
    error::ApiError,
    federation::pending::{Kind, Pending},
    users::{
        AddWebauthn, FindAccount, FindWebauthn, ListWebauthn, RemoveWebauthn, UseWebauthn,
        UserStoreError,
    },
};

/// How long a started ceremony waits for its finish.
pub const CEREMONY_TTL: Duration = Duration::from_secs(300);
/// The longest credential name.
const MAX_NAME: usize = 64;
const DEFAULT_NAME: &str = "Passkey";

/// The relying party and the ceremonies in progress.
#[derive(Clone)]
pub struct Passkeys {
    pub(super) webauthn: Arc<Webauthn>,
    pub(super) pending: Pending,
}

impl Passkeys {
    /// The relying party of WEBAUTHN_RP_ID and WEBAUTHN_ORIGINS (checked by the configuration:
    /// an error here is a bug, reported at start-up).
    pub fn new(config: &WebauthnConfig, pending: Pending) -> Result<Self, String> {
        let parse = |o: &str| Url::parse(o).map_err(|e| format!("{o}: {e}"));
        let (first, rest) = config
            .origins
            .split_first()
            .ok_or("WEBAUTHN_ORIGINS lists no origin")?;
        let first = parse(first)?;
        let mut builder = WebauthnBuilder::new(&config.rp_id, &first)
            .map_err(|e| format!("WEBAUTHN_RP_ID and WEBAUTHN_ORIGINS: {e}"))?
            .rp_name(&config.rp_name)
            .timeout(CEREMONY_TTL);
        for origin in rest {
            builder = builder.append_allowed_origin(&parse(origin)?);
        }
        let webauthn = builder
            .build()
            .map_err(|e| format!("WEBAUTHN_RP_ID and WEBAUTHN_ORIGINS: {e}"))?;
        Ok(Self {
            webauthn: Arc::new(webauthn),
            pending,
        })
    }
}

pub(super) fn passkeys(app: &App) -> Result<&Passkeys, ApiError> {
    app.webauthn.as_ref().ok_or(ApiError::NotFound(
        "WebAuthn (WEBAUTHN_RP_ID is not set), so passkey support",
    ))
}

pub(super) fn internal(what: &str) -> impl FnOnce(serde_json::Error) -> ApiError + '_ {
    move |e| ApiError::Internal(format!("{what}: {e}"))
}

pub(super) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(super) fn count(app: &App, ceremony: &str, outcome: &str) {
    app.metrics
        .webauthn
        .with_label_values(&[ceremony, outcome])
        .inc();
}

/// Ceremony options (webauthn-rs's challenge types) as the JSON a client hands the browser.
pub fn options_json<T: Serialize>(options: &T) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(options).map_err(|e| ApiError::Internal(format!("WebAuthn options: {e}")))
}

/// The name a user gives a credential: at most 64 characters as sent (the documented schema's
/// bound), no control characters, stored trimmed and not empty then.
pub fn check_name(name: Option<&str>) -> Result<String, ApiError> {
    let Some(sent) = name else {
        return Ok(DEFAULT_NAME.to_string());
    };
    let name = sent.trim();
    if name.is_empty() || sent.chars().count() > MAX_NAME || sent.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "name must be 1 to 64 characters, without control characters",
        ));
    }
    Ok(name.to_string())
}

/// A registration in progress, kept under the session that started it.
#[derive(Serialize, Deserialize)]
struct Registration {
    user_id: Uuid,
    name: String,
    state: PasskeyRegistration,
}

/// Starts registering a passkey for the caller: the options for `navigator.credentials.create`.
/// The credential must be discoverable (a resident key, so it can sign in without an email)
/// and verify its user (PIN or biometrics). A registration started earlier from the same
/// session is replaced.
pub async fn start_registration(
    app: &App,
    caller: &Caller,
    name: Option<&str>,
) -> Result<CreationChallengeResponse, ApiError> {
    let pk = passkeys(app)?;
    let name = check_name(name)?;
    let account = app
        .users
        .ask(FindAccount(caller.user_id))
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    let held = app.users.ask(ListWebauthn(caller.user_id)).await?;
    // The authenticator refuses to make a second credential for this account.
    let exclude: Vec<_> = held
        .iter()
        .filter_map(|c| URL_SAFE_NO_PAD.decode(&c.credential_id).ok())
        .collect();
    let display = account.name.as_deref().unwrap_or(&account.email);
    // The user handle is the account id: a discoverable credential hands it back at sign-in.
    let (mut options, state) = pk
        .webauthn
        .start_passkey_registration(caller.user_id, &account.email, display, Some(exclude))
        .map_err(|e| ApiError::Internal(format!("WebAuthn registration: {e}")))?;
    // webauthn-rs asks for a credential that may not be discoverable; a passkey that signs in
    // on its own must be (residentKey required, with user verification as webauthn-rs sets).
    if let Some(selection) = options.public_key.authenticator_selection.as_mut() {
        selection.resident_key = Some(ResidentKeyRequirement::Required);
        selection.require_resident_key = true;
    }
    let record = serde_json::to_string(&Registration {
        user_id: caller.user_id,
        name,
        state,
    })
    .map_err(internal("registration state"))?;
    pk.pending
        .put(
            Kind::WebauthnRegistration,
            &caller.session_id.to_string(),
            &record,
            CEREMONY_TTL,
        )
        .await?;
    count(app, "registration", "started");
    Ok(options)
}

/// Finishes the caller's registration with the authenticator's answer: the new credential.
pub async fn finish_registration(
    app: &App,
    caller: &Caller,
    answer: &RegisterPublicKeyCredential,
) -> Result<entities::webauthn_credential::Model, ApiError> {
    let pk = passkeys(app)?;
    let record = pk
        .pending
        .take(Kind::WebauthnRegistration, &caller.session_id.to_string())
        .await?;
    let registration: Option<Registration> = record.and_then(|r| serde_json::from_str(&r).ok());
    let registration = match registration {
        Some(r) if r.user_id == caller.user_id => r,
        _ => {
            count(app, "registration", "no_ceremony");
            return Err(ApiError::InvalidGrant(
                "no registration in progress for this session (it expired or was finished): start again".into(),
            ));
        }
    };
    let refused = |reason: &str| {
        count(app, "registration", "invalid");
        app.audit.record(
            AuditEvent::failure(AuditKind::MfaEnrol)
                .by(caller.user_id)
                .ip(caller.ip.clone())
                .detail(serde_json::json!({ "method": "webauthn", "reason": reason })),
        );
    };
    let passkey = match pk
        .webauthn
        .finish_passkey_registration(answer, &registration.state)
    {
        Ok(p) => p,
        Err(e) => {
            tracing::info!(user_id = %caller.user_id, cause = %e, "WebAuthn registration refused");
            refused("invalid_attestation");
            return Err(ApiError::InvalidGrant(
                "the authenticator's answer does not match the registration (origin, challenge or user verification)".into(),
            ));
        }
    };
    let credential_id = URL_SAFE_NO_PAD.encode(passkey.cred_id());
    let stored = serde_json::to_string(&passkey).map_err(internal("passkey"))?;
    let notice = super::notices::method_notice(
        app,
        caller.user_id,
        "A passkey was registered: it signs you in",
    )
    .await?;
    let added = app
        .users
        .ask(AddWebauthn {
            user_id: caller.user_id,
            credential_id,
            name: registration.name,
            passkey: stored,
            notice,
        })
        .await;
    let credential = match added {
        Ok(c) => c,
        Err(UserStoreError::Conflict(message)) => {
            refused("conflict");
            return Err(ApiError::Conflict(message));
        }
        Err(e) => return Err(e.into()),
    };
    count(app, "registration", "success");
    app.mailer.wake();
    app.audit.record(
        AuditEvent::success(AuditKind::MfaEnrol)
            .by(caller.user_id)
            .ip(caller.ip.clone())
            .detail(serde_json::json!({ "method": "webauthn", "credential": credential.id })),
    );
    tracing::info!(user_id = %caller.user_id, credential = %credential.id, "passkey registered");
    Ok(credential)
}

/// The caller's credentials.
pub async fn credentials(
    app: &App,
    caller: &Caller,
) -> Result<Vec<entities::webauthn_credential::Model>, ApiError> {
    passkeys(app)?;
    Ok(app.users.ask(ListWebauthn(caller.user_id)).await?)
}

/// Deletes one of the caller's credentials (404 for any other id, another account's included).
pub async fn delete_credential(app: &App, caller: &Caller, id: Uuid) -> Result<(), ApiError> {
    passkeys(app)?;
    let notice = super::notices::method_notice(
        app,
        caller.user_id,
        "A passkey was deleted: it no longer signs you in",
    )
    .await?;
    let removed = app
        .users
        .ask(RemoveWebauthn {
            user_id: caller.user_id,
            id,
            notice,
        })
        .await?;
    if !removed {
        return Err(ApiError::NotFound("passkey"));
    }
    app.mailer.wake();
    app.audit.record(
        AuditEvent::success(AuditKind::MfaDisable)
            .by(caller.user_id)
            .ip(caller.ip.clone())
            .detail(serde_json::json!({ "method": "webauthn", "credential": id })),
    );
    tracing::info!(user_id = %caller.user_id, credential = %id, "passkey deleted");
    Ok(())
}

/// Whether the account holds a credential that counts (WebAuthn configured).
pub async fn enrolled(app: &App, user_id: Uuid) -> Result<bool, ApiError> {
    if app.webauthn.is_none() {
        return Ok(false);
    }
    Ok(!app.users.ask(ListWebauthn(user_id)).await?.is_empty())
}

fn parse_passkeys(held: &[entities::webauthn_credential::Model]) -> Vec<Passkey> {
    held.iter()
        .filter_map(|c| serde_json::from_str(&c.passkey).ok())
        .collect()
}

/// A pending login's WebAuthn challenge: the request options for `navigator.credentials.get`,
/// allowing the account's credentials. Kept with (and ended by) the `mfa_token`.
pub async fn second_factor_challenge(
    app: &App,
    user_id: Uuid,
    mfa_token: &str,
) -> Result<Option<RequestChallengeResponse>, ApiError> {
    let Some(pk) = app.webauthn.as_ref() else {
        return Ok(None);
    };
    let held = parse_passkeys(&app.users.ask(ListWebauthn(user_id)).await?);
    if held.is_empty() {
        return Ok(None);
    }
    let (options, state) = pk
        .webauthn
        .start_passkey_authentication(&held)
        .map_err(|e| ApiError::Internal(format!("WebAuthn authentication: {e}")))?;
    let record = serde_json::to_string(&state).map_err(internal("authentication state"))?;
    pk.pending
        .put(Kind::WebauthnMfa, mfa_token, &record, CEREMONY_TTL)
        .await?;
    Ok(Some(options))
}

/// What an accepted assertion says about its credential.
pub struct Asserted {
    pub user_id: Uuid,
    /// `swk` for a backup-eligible (synced) passkey, else `hwk`: the `amr` of the session.
    pub amr: &'static str,
}

pub(super) fn amr(result: &AuthenticationResult) -> &'static str {
    if result.backup_eligible() {
        "swk"
    } else {
        "hwk"
    }
}

/// Records the use of a credential: its updated signature counter, and the time. `false`: the
/// assertion must be refused, as a cloned authenticator's or a raced one's: its signature
/// counter is not above the one stored now (the ceremony's state may hold an older one), or
/// another assertion of the same credential stored its counter first. Authenticators that always
/// report 0 (synced passkeys) have no counter to check.
pub(super) async fn record_use(
    app: &App,
    credential: &entities::webauthn_credential::Model,
    mut passkey: Passkey,
    result: &AuthenticationResult,
) -> Result<bool, ApiError> {
    // The stored counter (webauthn-rs keeps it behind a feature; its JSON has it as is).
    let stored = serde_json::from_str::<serde_json::Value>(&credential.passkey)
        .ok()
        .and_then(|v| v["cred"]["counter"].as_u64())
        .unwrap_or(0);
    let counter = u64::from(result.counter());
    if counter != 0 && counter <= stored {
        tracing::warn!(credential = %credential.id, counter, stored,
            "passkey assertion with a signature counter not above the stored one refused");
        return Ok(false);
    }
    let changed = passkey.update_credential(result).unwrap_or(false);
    let passkey = if changed {
        Some(serde_json::to_string(&passkey).map_err(internal("passkey"))?)
    } else {
        None
    };
    let recorded = app
        .users
        .ask(UseWebauthn {
            id: credential.id,
            expected: credential.passkey.clone(),
            passkey,
            at: Utc::now(),
        })
        .await?;
    if !recorded {
        tracing::warn!(credential = %credential.id, "raced passkey assertion refused");
    }
    Ok(recorded)
}

/// Checks an assertion presented at POST /login/mfa against the pending login's challenge.
/// `None`: refused (wrong origin, challenge or signature, another account's or an unknown
/// credential, no challenge). A refused assertion leaves the challenge for another try within
/// the `mfa_token`'s attempts; the `mfa_token` ends with the first success.
pub async fn verify_second_factor(
    app: &App,
    user_id: Uuid,
    mfa_token: &str,
    assertion: &PublicKeyCredential,
) -> Result<Option<Asserted>, ApiError> {
    let Some(pk) = app.webauthn.as_ref() else {
        return Ok(None);
    };
    let Some(record) = pk.pending.take(Kind::WebauthnMfa, mfa_token).await? else {
        return Ok(None);
    };
    let outcome = async {
        let Ok(state) = serde_json::from_str::<PasskeyAuthentication>(&record) else {
            return Ok(None);
        };
        let credential_id = URL_SAFE_NO_PAD.encode(assertion.get_credential_id());
        let credential = match app.users.ask(FindWebauthn(credential_id)).await? {
            Some(c) if c.user_id == user_id => c,
            _ => return Ok(None),
        };
        let Ok(passkey) = serde_json::from_str::<Passkey>(&credential.passkey) else {
            return Ok(None);
        };
        match pk.webauthn.finish_passkey_authentication(assertion, &state) {
            Ok(result) => {
                if !record_use(app, &credential, passkey, &result).await? {
                    return Ok(None);
                }
                Ok(Some(Asserted {
                    user_id,
                    amr: amr(&result),
                }))
            }
            Err(e) => {
                tracing::info!(%user_id, cause = %e, "WebAuthn assertion refused");
                Ok(None)
            }
        }
    }
    .await;
    if !matches!(outcome, Ok(Some(_))) {
        // Put back for another attempt: the mfa_token bounds the tries and the lifetime.
        pk.pending
            .put(Kind::WebauthnMfa, mfa_token, &record, CEREMONY_TTL)
            .await?;
    }
    outcome
}

/// A step-up challenge, kept under the session that asked for it.
#[derive(Serialize, Deserialize)]
struct Reauthentication {
    user_id: Uuid,
    state: PasskeyAuthentication,
}

/// Starts a step-up with a passkey (POST /reauthenticate/passkey/start): the request options for
/// `navigator.credentials.get` over the caller's own credentials, with user verification. The
/// challenge is kept for this session only, single-use, for [`CEREMONY_TTL`]; a new start
/// replaces it.
pub async fn start_reauthentication(
    app: &App,
    caller: &Caller,
) -> Result<RequestChallengeResponse, ApiError> {
    let pk = passkeys(app)?;
    let held = parse_passkeys(&app.users.ask(ListWebauthn(caller.user_id)).await?);
    if held.is_empty() {
        return Err(ApiError::Conflict(
            "this account has no passkey: reauthenticate with the password (and its second factor)"
                .into(),
        ));
    }
    let (options, state) = pk
        .webauthn
        .start_passkey_authentication(&held)
        .map_err(|e| ApiError::Internal(format!("WebAuthn authentication: {e}")))?;
    let record = serde_json::to_string(&Reauthentication {
        user_id: caller.user_id,
        state,
    })
    .map_err(internal("authentication state"))?;
    pk.pending
        .put(
            Kind::WebauthnReauth,
            &caller.session_id.to_string(),
            &record,
            CEREMONY_TTL,
        )
        .await?;
    count(app, "reauthentication", "started");
    Ok(options)
}

/// Checks an assertion presented at POST /reauthenticate against the challenge the caller's
/// session started. `None`: refused (no challenge for this session, another origin or
/// challenge, a bad signature, another account's or an unknown credential). The challenge is
/// spent by any attempt: a refused one starts again.
pub async fn verify_reauthentication(
    app: &App,
    caller: &Caller,
    assertion: &PublicKeyCredential,
) -> Result<Option<Asserted>, ApiError> {
    let pk = passkeys(app)?;
    let record = pk
        .pending
        .take(Kind::WebauthnReauth, &caller.session_id.to_string())
        .await?;
    let ceremony: Option<Reauthentication> = record.and_then(|r| serde_json::from_str(&r).ok());
    let Some(ceremony) = ceremony.filter(|c| c.user_id == caller.user_id) else {
        count(app, "reauthentication", "no_ceremony");
        return Ok(None);
    };
    let credential_id = URL_SAFE_NO_PAD.encode(assertion.get_credential_id());
    let credential = match app.users.ask(FindWebauthn(credential_id)).await? {
        Some(c) if c.user_id == caller.user_id => c,
        _ => {
            count(app, "reauthentication", "invalid");
            return Ok(None);
        }
    };
    let Ok(passkey) = serde_json::from_str::<Passkey>(&credential.passkey) else {
        count(app, "reauthentication", "invalid");
        return Ok(None);
    };
    match pk
        .webauthn
        .finish_passkey_authentication(assertion, &ceremony.state)
    {
        Ok(result) => {
            if !record_use(app, &credential, passkey, &result).await? {
                count(app, "reauthentication", "invalid");
                return Ok(None);
            }
            count(app, "reauthentication", "success");
            Ok(Some(Asserted {
                user_id: caller.user_id,
                amr: amr(&result),
            }))
        }
        Err(e) => {
            tracing::info!(user_id = %caller.user_id, cause = %e, "WebAuthn step-up assertion refused");
            count(app, "reauthentication", "invalid");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_held_to_the_documented_schema() {
        assert_eq!(check_name(None).ok().as_deref(), Some(DEFAULT_NAME));
        assert_eq!(
            check_name(Some("  Laptop ")).ok().as_deref(),
            Some("Laptop")
        );
        assert!(check_name(Some(&"é".repeat(64))).is_ok());
        // 64 characters as sent, the schema's bound, even when trimming would shorten them.
        assert!(check_name(Some(&"é".repeat(65))).is_err());
        assert!(check_name(Some(&format!(" {}", "a".repeat(64)))).is_err());
        for bad in ["", "   ", "a\u{0}b", "tab\there", "c1\u{85}", "del\u{7f}"] {
            assert!(check_name(Some(bad)).is_err(), "{bad:?}");
        }
    }
}
