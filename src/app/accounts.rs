//! Accounts: registration and `sessiond user create` (one way to make an account), login and
//! its second factor, password change, and the caller's profile.
use std::sync::Arc;

use actix::Addr;
use uuid::Uuid;

use super::{
    limits::count_failure,
    mfa::{self, SecondFactor, Verdict},
    sessions::Grant,
    step_up::check_current_password,
    App, Caller, Client,
};
use crate::actor::Ask;
use crate::{
    audit::{AuditEvent, WriteAudit},
    domain::{
        password_context, Access, AuditKind, DisplayName, Email, Password, ADMIN_ROLE, USER_ROLE,
    },
    error::ApiError,
    mail::{Mail, Template},
    session::{
        now_unix, AuthContext, CreateSession, Created, RefreshToken, Revoke, RevokeAll,
        SessionRecord, SharedAuth,
    },
    throttle::{account_key, Bucket, Scope, Throttled},
    users::{
        password::{PasswordHasher, Priority},
        AccountAccess, CreateUser, FindAccess, FindAccount, FindByEmail, FindById, NewToken,
        QueueMail, SetPassword, User, UserStore,
    },
    webhooks::Event,
};

/// A new account, parsed.
#[derive(Debug)]
pub struct NewAccount {
    pub email: Email,
    pub password: Password,
    pub name: Option<DisplayName>,
    /// Besides `user`, which every account holds.
    pub roles: Vec<String>,
}

/// Stores a new account whose password meets the policy (judged against the account's own
/// words): the one way accounts are made, by registration and by `sessiond user create`.
/// `verify`: the verification token and mail, stored with the account; `verified`: the
/// address is vouched for (an operator's `sessiond user create`).
pub async fn create_account(
    users: &Addr<UserStore>,
    hasher: &PasswordHasher,
    account: NewAccount,
    verify: Option<(NewToken, Mail)>,
    verified: bool,
) -> Result<User, ApiError> {
    let NewAccount {
        email,
        password,
        name,
        roles,
    } = account;
    // Spares an argon2 hash for the common duplicate; the unique index settles races.
    if users
        .ask(FindByEmail(email.as_str().to_string()))
        .await?
        .is_some()
    {
        return Err(ApiError::EmailTaken);
    }
    let known = password_context(email.as_str(), name.as_ref().map(DisplayName::as_str));
    let password_hash = hasher.hash_new(password.expose(), known).await?;
    let (verify, mail) = match verify {
        Some((token, mail)) => (Some(token), vec![mail]),
        None => (None, Vec::new()),
    };
    let user = users
        .ask(CreateUser {
            email: email.into_inner(),
            name: name.map(DisplayName::into_inner),
            password_hash,
            roles,
            verify,
            mail,
            email_verified: verified,
        })
        .await?;
    Ok(user)
}

/// What a registration answers.
pub enum Registered {
    /// The account (REQUIRE_EMAIL_VERIFICATION off).
    Created(User),
    /// REQUIRE_EMAIL_VERIFICATION: one answer whether the account was made or the address was
    /// taken (its owner is mailed a notice then).
    Pending,
}

/// POST /register: an account with `user`, and a verification mail. An address of
/// ADMIN_EMAILS gets `admin` only once proven (`admin::grant_listed_admin`): registering proves
/// nothing. The caller has counted the attempt against the client's limit.
pub async fn register(
    app: &App,
    client: &Client,
    mut account: NewAccount,
) -> Result<Registered, ApiError> {
    account.roles = vec![USER_ROLE.to_string()];
    let pending = app.settings.require_verification;
    if pending {
        let owner = app
            .users
            .ask(FindByEmail(account.email.as_str().to_string()))
            .await?;
        if let Some(owner) = owner {
            return taken_registration(app, client, account, owner).await;
        }
    }
    let verify = super::notices::verification(app, account.email.as_str());
    let user = match create_account(&app.users, &app.hasher, account, Some(verify), false).await {
        Ok(user) => user,
        // Lost a race with another registration of the address: the same one answer.
        Err(ApiError::EmailTaken) if pending => return Ok(Registered::Pending),
        Err(e) => return Err(e),
    };
    app.mailer.wake();
    app.metrics.registrations.inc();
    app.audit.record(
        AuditEvent::success(AuditKind::Register)
            .by(user.id)
            .ip(client.ip.clone())
            .detail(serde_json::json!({ "roles": user.roles })),
    );
    tracing::info!(user_id = %user.id, "registered");
    Ok(if pending {
        Registered::Pending
    } else {
        Registered::Created(user)
    })
}

/// REQUIRE_EMAIL_VERIFICATION and the address has an account: the password is judged and
/// hashed as for a new account (the same answer for a weak one, and the same work), and the
/// owner is told instead of the caller.
async fn taken_registration(
    app: &App,
    client: &Client,
    account: NewAccount,
    owner: entities::user::Model,
) -> Result<Registered, ApiError> {
    let known = password_context(
        account.email.as_str(),
        account.name.as_ref().map(DisplayName::as_str),
    );
    app.hasher
        .hash_new(account.password.expose(), known)
        .await?;
    let mail = super::notices::notice(app, Template::AccountExists, &owner, &[]);
    app.users.ask(QueueMail(vec![mail])).await?;
    app.mailer.wake();
    app.audit.record(
        AuditEvent::denied(AuditKind::Register)
            .subject(owner.id)
            .ip(client.ip.clone())
            .detail(serde_json::json!({ "reason": "email_taken" })),
    );
    Ok(Registered::Pending)
}

/// `sessiond user create`: the account, and its audit event written before returning (the
/// process ends right after, so it cannot be queued).
pub async fn create_from_cli(
    users: &Addr<UserStore>,
    hasher: &PasswordHasher,
    account: NewAccount,
) -> Result<User, ApiError> {
    let user = create_account(users, hasher, account, None, true).await?;
    let event = AuditEvent::success(AuditKind::UserCreate)
        .subject(user.id)
        .detail(serde_json::json!({ "roles": user.roles, "source": "cli" }));
    users.ask(WriteAudit(vec![event])).await.map_err(|e| {
        ApiError::Internal(format!(
            "account created, but its audit event was not written: {e}"
        ))
    })?;
    Ok(user)
}

/// The caller's account: a copy at most SESSION_CACHE_TTL old (profiles change rarely; this
/// spares a database round trip per call, and concurrent misses for one user share one query),
/// with the roles as the session knows them (current on every pod, while the cached copy may
/// predate a role change).
pub async fn profile(app: &App, user_id: Uuid, access: &Access) -> Result<User, ApiError> {
    let users = app.users.clone();
    let user = app
        .profiles
        .try_get_with(user_id, async move {
            let found = users.ask(FindById(user_id)).await;
            found.map(Arc::new).map_err(ApiError::from)
        })
        .await
        .map_err(|e| Arc::try_unwrap(e).unwrap_or_else(|e| e.clone_public()))?;
    Ok(User {
        roles: access.roles.clone(),
        ..(*user).clone()
    })
}

/// What a login presents; not parsed, since a malformed email is just a wrong one.
pub struct Credentials {
    pub email: String,
    pub password: String,
}

/// Log in: a new session, or the one answer for every wrong email, password or disabled account.
pub async fn login(
    app: &App,
    client: &Client,
    credentials: Credentials,
) -> Result<Grant, ApiError> {
    let result = attempt_login(app, client, credentials).await;
    if result.as_ref().is_err_and(|e| e.code().0.is_server_error()) {
        Way::Password.count(app, "error");
    }
    result
}

async fn attempt_login(
    app: &App,
    client: &Client,
    credentials: Credentials,
) -> Result<Grant, ApiError> {
    let Credentials { email, password } = credentials;
    let attempt = LoginAttempt::new(app, client, &email, Way::Password);
    let bucket = attempt.admit().await?;
    let (account, access) = attempt.verify(&bucket, password).await?;
    attempt.require_second_factor(account.id, None).await?;
    let auth = AuthContext::password(attempt.now);
    let grant = attempt
        .finish(&bucket, account.id, access, auth, None)
        .await?;
    super::notices::note_login(app, client, &account).await;
    Ok(grant)
}

/// POST /login/mfa: the second factor of a login whose password was right. Each call spends one
/// of the pending login's attempts; a wrong code also counts toward the account's lockout, and
/// a locked account is refused like at POST /login.
pub async fn login_second_factor(
    app: &App,
    client: &Client,
    mfa_token: &str,
    factor: SecondFactor,
) -> Result<Grant, ApiError> {
    let result = attempt_second_factor(app, client, mfa_token, &factor).await;
    if result.as_ref().is_err_and(|e| e.code().0.is_server_error()) {
        Way::SecondFactor.count(app, "error");
        app.metrics
            .mfa
            .with_label_values(&[factor.method(), "error"])
            .inc();
    }
    result
}

const MFA_TOKEN_DEAD: &str = "the mfa_token is invalid, used or expired: log in again";

async fn attempt_second_factor(
    app: &App,
    client: &Client,
    mfa_token: &str,
    factor: &SecondFactor,
) -> Result<Grant, ApiError> {
    let Some(pending) = app.mfa_tokens.attempt(mfa_token).await? else {
        // Unknown, expired, used or out of attempts (one answer: Redis cannot tell them apart).
        app.metrics
            .mfa
            .with_label_values(&[factor.method(), "invalid_token"])
            .inc();
        return Err(ApiError::InvalidGrant(MFA_TOKEN_DEAD.into()));
    };
    let account = app
        .users
        .ask(FindAccount(pending.user_id))
        .await?
        .ok_or(ApiError::InvalidGrant(MFA_TOKEN_DEAD.into()))?;
    let attempt = LoginAttempt::new(app, client, &account.email, Way::SecondFactor);
    let bucket = attempt.admit().await?;
    let method = factor.method();
    let (verdict, factor_amr) = mfa::verify_factor_amr(app, account.id, factor).await?;

    app.metrics
        .mfa
        .with_label_values(&[method, verdict.as_str()])
        .inc();
    if verdict != Verdict::Accepted {
        count_failure(
            app,
            &bucket,
            attempt.now,
            Some(account.id),
            client.ip.clone(),
        )
        .await?;
        attempt.outcome("invalid_credentials");
        app.audit.record(
            AuditEvent::failure(AuditKind::MfaVerify)
                .subject(account.id)
                .ip(client.ip.clone())
                .detail(serde_json::json!({ "method": method, "reason": verdict.as_str() })),
        );
        return Err(ApiError::InvalidGrant(match factor {
            SecondFactor::Webauthn { .. } => {
                "the passkey's answer was not accepted (wrong credential, origin or challenge)"
                    .into()
            }
            _ => "the code is wrong or already used".into(),
        }));
    }
    // The first step: a provider sign-in, or the password.
    let first = match pending.idp.as_deref() {
        Some(idp) => AuthContext::federated(idp, attempt.now),
        None => AuthContext::password(attempt.now),
    };
    if !app.mfa_tokens.consume(pending).await? {
        return Err(ApiError::InvalidGrant(MFA_TOKEN_DEAD.into()));
    }
    app.audit.record(
        AuditEvent::success(AuditKind::MfaVerify)
            .by(account.id)
            .ip(client.ip.clone())
            .detail(serde_json::json!({ "method": method })),
    );
    let access = match app.users.ask(FindAccess(account.id)).await? {
        Some(a) if !a.disabled => a.access,
        _ => {
            return Err(attempt
                .failed(&bucket, Some(account.id), "disabled")
                .await?)
        }
    };
    let auth = first.with_second_factor(factor_amr);
    let grant = attempt
        .finish(&bucket, account.id, access, auth, Some(method))
        .await?;
    super::notices::note_login(app, client, &account).await;
    Ok(grant)
}

const MAX_USER_AGENT: usize = 256;

/// The way a sign-in came in: the `method` label of `sessiond_logins_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    Password,
    /// The second step of a sign-in whose first (password or provider) asked for a factor.
    SecondFactor,
    Passkey,
    Federation,
}

impl Way {
    pub fn label(self) -> &'static str {
        match self {
            Way::Password => "password",
            Way::SecondFactor => "mfa",
            Way::Passkey => "passkey",
            Way::Federation => "federation",
        }
    }

    /// One sign-in attempt's outcome (`success`, `invalid_credentials`, `throttled`,
    /// `email_not_verified`, `mfa_required`, `error`).
    pub fn count(self, app: &App, outcome: &str) {
        app.metrics
            .logins
            .with_label_values(&[self.label(), outcome])
            .inc();
    }
}

/// One login, step by step: admitted by the limits and the lockout, verified, then a session.
pub(super) struct LoginAttempt<'a> {
    app: &'a App,
    client: &'a Client,
    way: Way,
    pub(super) now: i64,
    /// Normalized, or why it is not an address.
    email: Result<Email, String>,
    /// The limits' and lockout's key for the account the email names. It exists for any
    /// address, registered or not, so limits and lockouts say nothing about which accounts
    /// exist.
    account_key: String,
    client_group: String,
}

impl<'a> LoginAttempt<'a> {
    pub(super) fn new(app: &'a App, client: &'a Client, email: &str, way: Way) -> Self {
        let normalized = Email::parse(email);
        let account_key = account_key(match &normalized {
            Ok(e) => e.as_str(),
            Err(_) => email.trim(),
        });
        Self {
            app,
            client,
            way,
            now: now_unix(),
            email: normalized,
            account_key,
            client_group: client.group(),
        }
    }

    fn outcome(&self, outcome: &str) {
        self.way.count(self.app, outcome);
    }

    /// The limits per address and per account, then the lockout. An address that logged in to
    /// the account recently is judged by its own attempts only (ASVS 6.1.1); every other
    /// address shares one bucket. While locked, even the right password is refused, with the
    /// same answer as a wrong one.
    async fn admit(&self) -> Result<Bucket, ApiError> {
        let throttle = &self.app.throttle;
        if let Err(t) = throttle.hit(Scope::LoginIp, &self.client_group).await? {
            return Err(self.throttled("rate_limited", t).await);
        }
        let bucket = throttle
            .bucket(&self.account_key, &self.client_group)
            .await?;
        if let Err(t) = throttle.hit(Scope::LoginAccount, bucket.id()).await? {
            return Err(self.throttled("rate_limited", t).await);
        }
        if let Err(t) = throttle.check_lock(bucket.id(), self.now).await? {
            return Err(self.throttled("locked", t).await);
        }
        Ok(bucket)
    }

    /// A throttled or locked login: audited about the account when the email names one (looked
    /// up whether or not it exists, and never shown in the answer, which is the same for every
    /// email).
    async fn throttled(&self, reason: &'static str, t: Throttled) -> ApiError {
        self.outcome("throttled");
        let subject = match &self.email {
            Ok(email) => match self
                .app
                .users
                .ask(FindByEmail(email.as_str().to_string()))
                .await
            {
                Ok(account) => account.map(|a| a.id),
                _ => None,
            },
            Err(_) => None,
        };
        self.app.audit.record(
            AuditEvent::denied(AuditKind::Login)
                .subject(subject)
                .ip(self.client.ip.clone())
                .detail(serde_json::json!({ "reason": reason })),
        );
        ApiError::from(t)
    }

    /// Wrong credentials (or a disabled account): counted and audited, one answer for all.
    fn refused(&self, subject: Option<Uuid>, reason: &str) -> ApiError {
        self.outcome("invalid_credentials");
        self.app.audit.record(
            AuditEvent::failure(AuditKind::Login)
                .subject(subject)
                .ip(self.client.ip.clone())
                .detail(serde_json::json!({ "reason": reason })),
        );
        ApiError::InvalidCredentials
    }

    /// Counts the failure toward the lockout, then refuses.
    async fn failed(
        &self,
        bucket: &Bucket,
        subject: Option<Uuid>,
        reason: &str,
    ) -> Result<ApiError, ApiError> {
        count_failure(self.app, bucket, self.now, subject, self.client.ip.clone()).await?;
        Ok(self.refused(subject, reason))
    }

    /// The password against the account's hash, and the account enabled.
    async fn verify(
        &self,
        bucket: &Bucket,
        password: String,
    ) -> Result<(entities::user::Model, Access), ApiError> {
        // A malformed email or an impossible password cannot match any account: same answer
        // as a wrong password, without spending a hash.
        let email = match &self.email {
            Ok(email) if Password::could_match(&password) => email,
            _ => return Err(self.failed(bucket, None, "invalid_credentials").await?),
        };
        let app = self.app;
        let account = app
            .users
            .ask(FindByEmail(email.as_str().to_string()))
            .await?;
        // Unknown accounts still pay one hash, so timing does not tell which emails exist.
        let stored = account.as_ref().map(|a| a.password_hash.clone());
        let verified = app.hasher.verify(password, stored, Priority::Login).await?;
        let account = match account {
            Some(a) if verified => a,
            other => {
                let subject = other.map(|a| a.id);
                return Err(self.failed(bucket, subject, "invalid_credentials").await?);
            }
        };
        // A disabled account gets the very answer a wrong password gets, and counts as a
        // failure, so neither the response nor the lockout tells that it exists.
        let access = match app.users.ask(FindAccess(account.id)).await? {
            Some(a) if !a.disabled => a.access,
            _ => return Err(self.failed(bucket, Some(account.id), "disabled").await?),
        };
        // A listed address proven since the last start-up (e.g. verified on another pod).
        let access = if account.email_verified
            && !access.roles.iter().any(|r| r == ADMIN_ROLE)
            && super::admin::grant_listed_admin(app, &account.email).await?
        {
            match app.users.ask(FindAccess(account.id)).await? {
                Some(a) if !a.disabled => a.access,
                _ => return Err(self.failed(bucket, Some(account.id), "disabled").await?),
            }
        } else {
            access
        };
        // Only after the right password, so it tells nothing to whoever lacks it.
        if app.settings.require_verification && !account.email_verified {
            self.outcome("email_not_verified");
            app.audit.record(
                AuditEvent::denied(AuditKind::Login)
                    .subject(account.id)
                    .ip(self.client.ip.clone())
                    .detail(serde_json::json!({ "reason": "email_not_verified" })),
            );
            super::notices::remind_unverified(app, &account).await?;
            return Err(ApiError::EmailNotVerified);
        }
        Ok((account, access))
    }

    /// The step between a right password and a session: an account with a second factor gets
    /// `403 mfa_required` and a pending login (the `mfa_token`) instead. Failures are not cleared
    /// yet, so wrong codes keep counting toward the lockout across fresh passwords.
    /// `idp`: the provider of a sign-in that came first (`None`: a password).
    pub(super) async fn require_second_factor(
        &self,
        user_id: Uuid,
        idp: Option<&str>,
    ) -> Result<(), ApiError> {
        let methods = mfa::enrolled_methods(self.app, user_id).await?;
        if methods.is_empty() {
            return Ok(());
        }
        let mfa_token = self.app.mfa_tokens.issue_after(user_id, idp).await?;
        let webauthn = if methods.contains(&"webauthn") {
            super::webauthn::second_factor_challenge(self.app, user_id, &mfa_token)
                .await?
                .map(|options| super::webauthn::options_json(&options).map(Box::new))
                .transpose()?
        } else {
            None
        };
        self.outcome("mfa_required");
        Err(ApiError::MfaRequired {
            mfa_token,
            methods,
            webauthn,
        })
    }

    /// Clears the failures, opens the session and audits the login. `auth` says how the user
    /// authenticated (the session's and its tokens' `amr`: a passwordless sign-in passes its
    /// own); `second_factor` names the factor presented after the password, if any.
    pub(super) async fn finish(
        &self,
        bucket: &Bucket,
        user_id: Uuid,
        access: Access,
        auth: AuthContext,
        second_factor: Option<&str>,
    ) -> Result<Grant, ApiError> {
        let app = self.app;
        self.succeeded(bucket).await?;
        let auth = Arc::new(auth);
        let (refresh, access) = self.open_session(user_id, access, auth.clone()).await?;
        self.outcome("success");
        let detail = match second_factor {
            Some(m) => serde_json::json!({ "session_id": refresh.session_id, "mfa": m }),
            None => serde_json::json!({ "session_id": refresh.session_id }),
        };
        app.audit.record(
            AuditEvent::success(AuditKind::Login)
                .by(user_id)
                .ip(self.client.ip.clone())
                .detail(detail),
        );
        tracing::info!(user_id = %user_id, session_id = %refresh.session_id, "logged in");
        Ok(self.grant(refresh, access, auth))
    }

    /// The grant of a session [`Self::open_session`] opened: its tokens are issued now, and it
    /// ends SESSION_LIFETIME from now.
    pub(super) fn grant(&self, refresh: RefreshToken, access: Access, auth: SharedAuth) -> Grant {
        Grant {
            refresh,
            access: Arc::new(access),
            expires_at: self.now + self.app.settings.session_lifetime.as_secs() as i64,
            issued_at: self.now,
            jti: Uuid::new_v4(),
            auth,
        }
    }

    /// Clears the failures, and remembers the address for this account.
    async fn succeeded(&self, bucket: &Bucket) -> Result<(), ApiError> {
        let throttle = &self.app.throttle;
        throttle.record_success(bucket.id()).await?;
        // Without a peer address there is nothing to recognise the client by next time.
        if self.client.ip.is_some() {
            throttle
                .remember(&self.account_key, &self.client_group)
                .await?;
        }
        Ok(())
    }

    /// Stores the session (ending the oldest beyond MAX_SESSIONS_PER_USER), then checks that
    /// the account was not disabled and its roles not changed meanwhile. Returns the refresh
    /// token and the access the session carries.
    pub(super) async fn open_session(
        &self,
        user_id: Uuid,
        access: Access,
        auth: SharedAuth,
    ) -> Result<(RefreshToken, Access), ApiError> {
        let app = self.app;
        // A v7 id sorts by creation time, which orders the sessions of one second when the
        // oldest must end (MAX_SESSIONS_PER_USER). The session id is no secret (GET /sessions
        // lists it).
        let refresh = RefreshToken::generate(user_id, Uuid::now_v7());
        let user_agent = self.client.user_agent.as_deref().map(|ua| {
            ua.chars()
                .filter(|c| !c.is_control())
                .take(MAX_USER_AGENT)
                .collect()
        });
        let record = SessionRecord {
            session_id: refresh.session_id,
            user_id,
            created_at: self.now,
            last_seen_at: self.now,
            expires_at: self.now + app.settings.session_lifetime.as_secs() as i64,
            ip: self.client.ip.clone(),
            user_agent,
            access: Arc::new(access.clone()),
            refresh_hash: refresh.hash(),
            auth,
        };
        let evicted = match app.sessions.ask(CreateSession(record)).await? {
            Created::Stored { evicted } => evicted,
            // Disabled or deleted while this login ran (the account was cut off first).
            Created::AccountCutOff => return Err(self.refused(Some(user_id), "disabled")),
        };
        for sid in evicted {
            app.audit.record(
                AuditEvent::success(AuditKind::SessionRevoke)
                    .subject(user_id)
                    .ip(self.client.ip.clone())
                    .detail(serde_json::json!({ "session_id": sid, "reason": "max_sessions" })),
            );
            // Chosen by the store in the same atomic step as the new session: known only now.
            app.webhooks
                .emit_after(Event::session_revoked(user_id, sid, "max_sessions"))
                .await;
            tracing::info!(user_id = %user_id, session_id = %sid, "oldest session ended: MAX_SESSIONS_PER_USER reached");
        }
        // An admin may have disabled the account or changed its roles while this login ran;
        // their session updates could not see the new session, so look again now that it
        // exists.
        let access = match app.users.ask(FindAccess(user_id)).await? {
            Some(AccountAccess {
                access: now_access,
                disabled: false,
            }) if now_access == access => access,
            Some(AccountAccess {
                disabled: false, ..
            }) => match super::sessions::sync_session_access(app, user_id).await? {
                Some(synced) => synced,
                None => return Err(self.refused(Some(user_id), "disabled")),
            },
            _ => {
                app.sessions
                    .ask(Revoke {
                        user_id,
                        session_id: refresh.session_id,
                    })
                    .await?;
                return Err(self.refused(Some(user_id), "disabled"));
            }
        };
        Ok((refresh, access))
    }
}

/// Changes the caller's password, and ends every other session of the account. Sessions are
/// revoked before the new hash is stored: if the second step fails, the old password still
/// works and the call can simply be retried. The owner is mailed a notice, and the account's
/// unused reset links die with the old password (same transaction as the new hash).
///
/// An account without a password (made by a provider sign-in) may set one without
/// `current_password` while its session's authentication is recent (STEP_UP_MAX_AGE).
pub async fn change_password(
    app: &App,
    caller: &Caller,
    current_password: Option<String>,
    new_password: Password,
) -> Result<(), ApiError> {
    let account =
        check_current_password(app, caller, current_password, AuditKind::PasswordChange).await?;
    // Exactly the registration policy, with the same context words.
    let password_hash = app
        .hasher
        .hash_new(
            new_password.expose(),
            password_context(&account.email, account.name.as_deref()),
        )
        .await?;
    let revoked = app
        .sessions
        .ask(RevokeAll {
            user_id: caller.user_id,
            except: Some(caller.session_id),
        })
        .await?;
    let notice = super::notices::notice(app, Template::PasswordChanged, &account, &[]);
    app.users
        .ask(SetPassword {
            user_id: caller.user_id,
            password_hash,
            kept_session_id: caller.session_id,
            webhooks: app.webhooks.clone(),
            mail: vec![notice],
        })
        .await?;
    app.mailer.wake();
    app.audit.record(
        AuditEvent::success(AuditKind::PasswordChange)
            .by(caller.user_id)
            .ip(caller.ip.clone())
            .detail(serde_json::json!({ "other_sessions_revoked": revoked })),
    );
    // `user.password_changed` committed with the new hash (see `SetPassword`).
    app.webhooks.wake();
    tracing::info!(user_id = %caller.user_id, other_sessions_revoked = revoked, "password changed");
    Ok(())
}
