//! A session's life after login: refreshing it, the logouts, the owner's list and revocation,
//! and keeping every live session of an account in line with its roles.
use std::sync::Arc;

use uuid::Uuid;

use super::{App, Caller, Client};
use crate::actor::Ask;
use crate::{
    audit::AuditEvent,
    domain::{Access, AuditKind},
    error::ApiError,
    session::{
        now_unix, ListSessions, Refresh, RefreshToken, Revoke, RevokeAll, Rotation, SessionRecord,
        SetAccess, SharedAuth,
    },
    throttle::Scope,
    users::FindAccess,
    webhooks::Event,
};

/// What a login or a refresh hands out: the refresh token, and what the access token carries.
/// `issued_at` and `jti` are inputs of the signature, so a replayed refresh yields byte-identical
/// tokens.
#[derive(Debug, Clone)]
pub struct Grant {
    pub refresh: RefreshToken,
    pub access: Arc<Access>,
    /// Absolute end of the session (unix seconds).
    pub expires_at: i64,
    pub issued_at: i64,
    pub jti: Uuid,
    /// How the session's user authenticated (the token's `amr`, `auth_time`, `idp`).
    pub auth: SharedAuth,
}

/// Rotates the refresh token. Within the grace window the just-rotated token gets the same
/// successor (parallel tabs); after it, presenting it again revokes the whole session.
/// `presented` is `None` when the token did not even parse.
pub async fn refresh(
    app: &App,
    client: &Client,
    presented: Option<RefreshToken>,
) -> Result<Grant, ApiError> {
    app.limit_client(Scope::RefreshIp, client).await?;
    let presented = presented.ok_or(ApiError::Unauthorized)?;
    let successor = RefreshToken::generate(presented.user_id, presented.session_id);
    let (jti, now) = (Uuid::new_v4(), now_unix());
    let outcome = app
        .sessions
        .ask(Refresh {
            presented: presented.clone(),
            successor: successor.clone(),
            jti,
            now,
        })
        .await?;
    match outcome {
        Rotation::Rotated {
            expires_at,
            access,
            auth,
        } => Ok(Grant {
            refresh: successor,
            access,
            auth,
            expires_at,
            issued_at: now,
            jti,
        }),
        Rotation::Replayed {
            expires_at,
            access,
            auth,
            rotated_at,
            sealed_successor,
            jti,
        } => Ok(Grant {
            refresh: presented
                .unseal(&sealed_successor)
                .ok_or(ApiError::Unauthorized)?,
            access,
            auth,
            expires_at,
            issued_at: rotated_at,
            jti,
        }),
        Rotation::Reused => {
            app.audit.record(
                AuditEvent::denied(AuditKind::RefreshReuse)
                    .subject(presented.user_id)
                    .ip(client.ip.clone())
                    .detail(serde_json::json!({ "session_id": presented.session_id })),
            );
            // The replay ended the session (see `Refresh`).
            app.webhooks
                .emit_after(Event::session_revoked(
                    presented.user_id,
                    presented.session_id,
                    "refresh_reuse",
                ))
                .await;
            Err(ApiError::Unauthorized)
        }
        Rotation::Invalid | Rotation::Unsealed => Err(ApiError::Unauthorized),
    }
}

/// Ends the caller's session on every pod, once the store acknowledged it; 401 if a racing
/// logout ended it first.
pub async fn logout(app: &App, caller: &Caller) -> Result<(), ApiError> {
    // Sessions live in Redis: the event is stored ahead of the revocation (see
    // `Webhooks::write_ahead`).
    let event = Event::session_revoked(caller.user_id, caller.session_id, "logout");
    app.webhooks.write_ahead(&[event]).await?;
    let revoked = app
        .sessions
        .ask(Revoke {
            user_id: caller.user_id,
            session_id: caller.session_id,
        })
        .await?;
    if !revoked {
        return Err(ApiError::Unauthorized);
    }
    app.audit.record(
        AuditEvent::success(AuditKind::Logout)
            .by(caller.user_id)
            .ip(caller.ip.clone())
            .detail(serde_json::json!({ "session_id": caller.session_id })),
    );
    tracing::info!(user_id = %caller.user_id, session_id = %caller.session_id, "logged out");
    Ok(())
}

/// Ends every session of the caller on every pod, or all but the calling one.
pub async fn logout_all(app: &App, caller: &Caller, keep_current: bool) -> Result<(), ApiError> {
    let except = keep_current.then_some(caller.session_id);
    let event = Event::sessions_revoked(caller.user_id, "logout_all", except);
    app.webhooks.write_ahead(&[event]).await?;
    let n = app
        .sessions
        .ask(RevokeAll {
            user_id: caller.user_id,
            except,
        })
        .await?;
    app.audit.record(
        AuditEvent::success(AuditKind::LogoutAll)
            .by(caller.user_id)
            .ip(caller.ip.clone())
            .detail(serde_json::json!({ "revoked": n, "kept_current": keep_current })),
    );
    tracing::info!(user_id = %caller.user_id, revoked = n, "logged out everywhere");
    Ok(())
}

/// The live sessions of the calling user.
pub async fn list_own(app: &App, user_id: Uuid) -> Result<Vec<SessionRecord>, ApiError> {
    Ok(app.sessions.ask(ListSessions(user_id)).await?)
}

/// Ends one of the caller's own sessions: anyone else's id is 404, like an unknown one.
pub async fn revoke_own(app: &App, caller: &Caller, session_id: Uuid) -> Result<(), ApiError> {
    // The event is stored ahead of the revocation; only for one of the caller's live sessions,
    // so made-up ids (404) write nothing.
    if app.webhooks.enabled() {
        let own = app.sessions.ask(ListSessions(caller.user_id)).await?;
        if !own.iter().any(|s| s.session_id == session_id) {
            return Err(ApiError::NotFound("session"));
        }
    }
    let event = Event::session_revoked(caller.user_id, session_id, "revoked");
    app.webhooks.write_ahead(&[event]).await?;
    let revoked = app
        .sessions
        .ask(Revoke {
            user_id: caller.user_id,
            session_id,
        })
        .await?;
    if !revoked {
        return Err(ApiError::NotFound("session"));
    }
    app.audit.record(
        AuditEvent::success(AuditKind::SessionRevoke)
            .by(caller.user_id)
            .ip(caller.ip.clone())
            .detail(serde_json::json!({ "session_id": session_id })),
    );
    Ok(())
}

/// Brings every live session of the user in line with the roles in the database, on every pod.
/// Re-reads after writing so that concurrent role changes converge on the last one committed.
/// Returns the account's access, or `None` if it no longer exists.
pub async fn sync_session_access(app: &App, user_id: Uuid) -> Result<Option<Access>, ApiError> {
    let mut current = app.users.ask(FindAccess(user_id)).await?;
    for _ in 0..3 {
        let Some(account) = current else {
            return Ok(None);
        };
        app.sessions
            .ask(SetAccess {
                user_id,
                access: Arc::new(account.access.clone()),
            })
            .await?;
        current = app.users.ask(FindAccess(user_id)).await?;
        if current.as_ref().map(|c| &c.access) == Some(&account.access) {
            return Ok(Some(account.access));
        }
    }
    Ok(current.map(|c| c.access))
}
