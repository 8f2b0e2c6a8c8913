//! Step-up: sensitive changes (the password, the email, the second factors, linked identities)
//! need an authentication more recent than STEP_UP_MAX_AGE, and POST /reauthenticate renews the
//! session's authentication without a new session.
//!
//! The guard reads the session from the store, not from the pod's cache: these calls are rare,
//! and a reauthentication made through another pod a moment ago must count at once.
use super::{
    limits::count_failure,
    mfa::{self, SecondFactor, Verdict},
    App, Caller,
};
use webauthn_rs::prelude::PublicKeyCredential;

use crate::actor::Ask;
use crate::{
    audit::AuditEvent,
    domain::{AuditKind, Password},
    error::ApiError,
    session::{now_unix, AuthContext, Reauthenticate, SessionState, Validate},
    throttle::{Scope, Throttled},
    users::{password::Priority, FindAccess, FindAccount, NO_PASSWORD},
};

const STALE: &str = "this change needs a recent authentication: POST /reauthenticate with the \
password (and the second factor, when one is enrolled) or with a passkey, then try again";
const NO_PASSWORD_TO_CHECK: &str = "this account has no password: reauthenticate with a passkey \
alone, sign in again through its identity provider (a new sign-in is recent), or set a password \
first";

/// The caller's session as the store has it now (not the pod's cache); 401 if it has ended.
async fn current_session(app: &App, caller: &Caller) -> Result<SessionState, ApiError> {
    app.sessions
        .ask(Validate {
            user_id: caller.user_id,
            session_id: caller.session_id,
            fresh: true,
        })
        .await?
        .filter(|s| s.user_id == caller.user_id)
        .ok_or(ApiError::Unauthorized)
}

/// `403 reauthentication_required` unless the caller's session authenticated (logged in, or
/// POST /reauthenticate) within STEP_UP_MAX_AGE. Reads the session's current authentication,
/// so a reauthentication through any pod counts at once for the same access token.
pub async fn require_recent(app: &App, caller: &Caller) -> Result<(), ApiError> {
    let session = current_session(app, caller).await?;
    if session
        .auth
        .is_recent(now_unix(), app.settings.step_up_max_age)
    {
        return Ok(());
    }
    app.metrics
        .reauthentications
        .with_label_values(&["required"])
        .inc();
    Err(ApiError::ReauthenticationRequired(STALE))
}

/// What POST /reauthenticate presents: the password with a code, the password with a passkey,
/// or a passkey alone (a user-verified assertion is two factors, as at a passwordless sign-in).
pub enum Proof {
    Password {
        password: String,
        /// Required when the account has a second factor.
        factor: Option<SecondFactor>,
    },
    /// An assertion answering the challenge of POST /reauthenticate/passkey/start for this
    /// session; with the password, or alone.
    Passkey {
        password: Option<String>,
        assertion: Box<PublicKeyCredential>,
    },
}

/// POST /reauthenticate: the password (and the second factor, when enrolled) again, as at
/// login, or a passkey of the account (with or without the password): limited per session and
/// per account, wrong answers count toward the account's lockout, and a locked account is
/// refused like a wrong password. On success the session's
/// `auth_time` (and `amr`) are renewed on every pod; no new session.
pub async fn reauthenticate(app: &App, caller: &Caller, proof: Proof) -> Result<(), ApiError> {
    let result = attempt(app, caller, proof).await;
    if result.as_ref().is_err_and(|e| e.code().0.is_server_error()) {
        app.metrics
            .reauthentications
            .with_label_values(&["error"])
            .inc();
    }
    result
}

async fn attempt(app: &App, caller: &Caller, proof: Proof) -> Result<(), ApiError> {
    if matches!(proof, Proof::Passkey { .. }) {
        // 404 like the other WebAuthn endpoints when passkeys are off, before any attempt counts.
        super::webauthn::passkeys(app)?;
    }
    let (password, factor, passkey) = match proof {
        Proof::Password { password, factor } => (Some(password), factor, None),
        Proof::Passkey {
            password,
            assertion,
        } => (password, None, Some(assertion)),
    };
    let outcome = |o: &str| app.metrics.reauthentications.with_label_values(&[o]).inc();
    let event = |e: AuditEvent| e.by(caller.user_id).ip(caller.ip.clone());
    let throttled = |reason: &str, t: Throttled| {
        outcome("throttled");
        app.audit.record(
            event(AuditEvent::denied(AuditKind::Reauthenticate))
                .detail(serde_json::json!({ "reason": reason })),
        );
        ApiError::from(t)
    };
    let account = app
        .users
        .ask(FindAccount(caller.user_id))
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let now = now_unix();
    let bucket =
        match super::limits::admit_caller(app, caller, &account.email, Scope::LoginAccount, now)
            .await?
        {
            Ok(bucket) => bucket,
            Err(r) => return Err(throttled(r.reason, r.throttled)),
        };
    // A passkey alone needs no password; with one, the password must exist to be checked.
    if password.is_some() && account.password_hash == NO_PASSWORD {
        outcome("no_password");
        app.audit.record(
            event(AuditEvent::denied(AuditKind::Reauthenticate))
                .detail(serde_json::json!({ "reason": "no_password" })),
        );
        return Err(ApiError::ReauthenticationRequired(NO_PASSWORD_TO_CHECK));
    }
    let refuse = async |reason: &str, error: ApiError| -> Result<ApiError, ApiError> {
        count_failure(app, &bucket, now, Some(caller.user_id), caller.ip.clone()).await?;
        outcome(reason);
        app.audit.record(
            event(AuditEvent::failure(AuditKind::Reauthenticate))
                .detail(serde_json::json!({ "reason": reason })),
        );
        Ok(error)
    };
    // Told before the password is checked, so the answer says nothing about the password.
    let enrolled = mfa::enrolled_methods(app, caller.user_id).await?;
    if !enrolled.is_empty() && factor.is_none() && passkey.is_none() {
        outcome("factor_required");
        app.audit.record(
            event(AuditEvent::denied(AuditKind::Reauthenticate))
                .detail(serde_json::json!({ "reason": "factor_required" })),
        );
        return Err(ApiError::invalid(format!(
            "this account has a second factor: send the password with one of {}",
            enrolled.join(", ")
        )));
    }
    let mut methods = Vec::new();
    if let Some(password) = password {
        // An impossible password cannot match: same answer, without spending a hash. A stolen
        // token hammering this must not take the hashing share logins keep: not `Priority::Login`.
        let verified = Password::could_match(&password)
            && app
                .hasher
                .verify(
                    password,
                    Some(account.password_hash.clone()),
                    Priority::Other,
                )
                .await?;
        if !verified {
            return Err(refuse("invalid_credentials", ApiError::InvalidCredentials).await?);
        }
        methods.push(crate::session::amr::PASSWORD);
    }
    if let Some(assertion) = passkey {
        let asserted = super::webauthn::verify_reauthentication(app, caller, &assertion).await?;
        let Some(asserted) = asserted else {
            let wrong = ApiError::InvalidGrant(
                "the passkey's answer is not accepted (another origin, or no challenge started \
                 for this session by POST /reauthenticate/passkey/start, or it was used already)"
                    .into(),
            );
            return Err(refuse("invalid_factor", wrong).await?);
        };
        methods.push(asserted.amr);
    }
    // A factor sent for an account that has none is ignored.
    if let Some(factor) = factor.filter(|_| !enrolled.is_empty()) {
        let method = factor.method();
        let (verdict, factor_amr) = mfa::verify_factor_amr(app, caller.user_id, &factor).await?;
        app.metrics
            .mfa
            .with_label_values(&[method, verdict.as_str()])
            .inc();
        if verdict != Verdict::Accepted {
            let wrong = ApiError::InvalidGrant("the code is wrong or already used".into());
            app.audit.record(
                event(AuditEvent::failure(AuditKind::MfaVerify))
                    .detail(serde_json::json!({ "method": method, "reason": verdict.as_str() })),
            );
            return Err(refuse("invalid_factor", wrong).await?);
        }
        methods.push(factor_amr);
    }
    // A disabled account's sessions are already revoked; this catches a race with it.
    match app.users.ask(FindAccess(caller.user_id)).await? {
        Some(a) if !a.disabled => {}
        _ => return Err(ApiError::Unauthorized),
    }
    app.throttle.record_success(bucket.id()).await?;
    // The provider of the session's sign-in is not part of this authentication.
    let auth = AuthContext::new(&methods, now, None);
    let amr = auth.amr.clone();
    let renewed = app
        .sessions
        .ask(Reauthenticate {
            user_id: caller.user_id,
            session_id: caller.session_id,
            auth,
        })
        .await?;
    if !renewed {
        return Err(ApiError::Unauthorized);
    }
    outcome("success");
    app.audit.record(
        event(AuditEvent::success(AuditKind::Reauthenticate)).detail(serde_json::json!({
            "session_id": caller.session_id,
            "amr": amr,
        })),
    );
    tracing::info!(user_id = %caller.user_id, session_id = %caller.session_id, "reauthenticated");
    Ok(())
}

/// The caller's account, once `current_password` is proved right: for the changes that ask for
/// it again (password, email). A stolen access token must not guess the current password faster
/// than a login could: limited per session and per account, and wrong guesses count toward the
/// same lockout as logins (the stored email is normalized, so the key is the login's). Denials
/// and wrong guesses are audited as `kind`.
pub(crate) async fn check_current_password(
    app: &App,
    caller: &Caller,
    current_password: Option<String>,
    kind: AuditKind,
) -> Result<entities::user::Model, ApiError> {
    let account = app
        .users
        .ask(FindAccount(caller.user_id))
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    let now = now_unix();
    let event = |e: AuditEvent| e.by(caller.user_id).ip(caller.ip.clone());
    let bucket = match super::limits::admit_caller(
        app,
        caller,
        &account.email,
        Scope::PasswordChangeAccount,
        now,
    )
    .await?
    {
        Ok(bucket) => bucket,
        Err(r) => {
            app.audit.record(
                event(AuditEvent::denied(kind)).detail(serde_json::json!({ "reason": r.reason })),
            );
            return Err(ApiError::from(r.throttled));
        }
    };
    let verified = match current_password {
        Some(current) => {
            app.hasher
                .verify(
                    current,
                    Some(account.password_hash.clone()),
                    Priority::Other,
                )
                .await?
        }
        None if account.password_hash != NO_PASSWORD => {
            return Err(ApiError::invalid("current_password is required"));
        }
        // A passwordless account (made by a provider sign-in) has nothing to check but the
        // sign-in itself: recent enough, as for every sensitive change.
        None => {
            super::step_up::require_recent(app, caller).await?;
            true
        }
    };
    if !verified {
        count_failure(app, &bucket, now, Some(caller.user_id), caller.ip.clone()).await?;
        app.audit.record(event(AuditEvent::failure(kind)));
        return Err(ApiError::Forbidden);
    }
    app.throttle.record_success(bucket.id()).await?;
    Ok(account)
}
