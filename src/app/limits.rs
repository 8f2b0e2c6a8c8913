//! The limits and the lockout in front of a signed-in caller's proof (a password or a code it
//! presents again: a password change, a step-up, a TOTP confirmation). A leaf: it imports no
//! other application file.
use uuid::Uuid;

use super::{App, Caller};
use crate::{
    audit::AuditEvent,
    domain::AuditKind,
    error::ApiError,
    throttle::{account_key, Bucket, Scope, Throttled},
};

/// An attempt turned away before its proof was checked: the reason to audit (`rate_limited`,
/// `locked`) and the 429 to answer.
pub(crate) struct Refused {
    pub reason: &'static str,
    pub throttled: Throttled,
}

/// Counts the attempt against the caller's session, then against the account (`scope`, per
/// client group: an address that signed in to it recently has a bucket of its own), then checks
/// the account's lockout. Admitted: the bucket its failure or success is recorded in.
pub(crate) async fn admit_caller(
    app: &App,
    caller: &Caller,
    email: &str,
    scope: Scope,
    now: i64,
) -> Result<Result<Bucket, Refused>, ApiError> {
    let refused = |reason, throttled| Ok(Err(Refused { reason, throttled }));
    let throttle = &app.throttle;
    let session = caller.session_id.to_string();
    if let Err(t) = throttle.hit(Scope::PasswordChangeSession, &session).await? {
        return refused("rate_limited", t);
    }
    let group = super::client_group(caller.ip.as_deref());
    let bucket = throttle.bucket(&account_key(email), &group).await?;
    if let Err(t) = throttle.hit(scope, bucket.id()).await? {
        return refused("rate_limited", t);
    }
    if let Err(t) = throttle.check_lock(bucket.id(), now).await? {
        return refused("locked", t);
    }
    Ok(Ok(bucket))
}

/// Counts a wrong password (or a disabled account) toward the bucket's lockout. The failure that
/// starts a lock is audited once as `account_locked`, about the account when it exists (an
/// unknown email's locks are not recorded, so a spray of made-up addresses cannot flood the
/// trail).
pub(crate) async fn count_failure(
    app: &App,
    bucket: &Bucket,
    now: i64,
    subject: Option<Uuid>,
    ip: Option<String>,
) -> Result<(), ApiError> {
    let started = app.throttle.record_failure(bucket.id(), now).await?;
    if let (Some(seconds), Some(subject)) = (started, subject) {
        let addresses = if bucket.known() { "known" } else { "unknown" };
        app.audit.record(
            AuditEvent::denied(AuditKind::AccountLocked)
                .subject(subject)
                .ip(ip)
                .detail(serde_json::json!({ "seconds": seconds, "addresses": addresses })),
        );
        tracing::info!(user_id = %subject, seconds, addresses, "account locked");
    }
    Ok(())
}
