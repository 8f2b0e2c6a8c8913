//! Second factors: TOTP enrolment (POST and DELETE /mfa/totp, POST /mfa/totp/confirm), recovery
//! codes, and the pending logins that wait for a factor (the `mfa_token` of POST /login/mfa).
//!
//! Codes and secrets are never logged, audited or counted by value: audit details and metrics
//! carry the method and the outcome only.
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use aes_gcm::{
    aead::{Aead, KeyInit, Payload},
    Aes256Gcm, Nonce,
};
use base64::{
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
    Engine,
};
use hmac::{Hmac, Mac};
use rand::RngCore;
use redis::Script;
use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, Builder, Totp};
use uuid::Uuid;

use super::{App, Caller};
use crate::actor::Ask;
use crate::{
    audit::AuditEvent,
    domain::AuditKind,
    error::ApiError,
    federation::pending::RecordSeal,
    redis::{script, Redis, RedisUnavailable},
    session::now_unix,
    throttle::{Scope, Throttled},
    users::{
        ConfirmTotp, DropExpiredTotp, FindAccount, FindTotp, RemoveTotp, SpendRecoveryCode,
        SpendTotpStep, StartTotp,
    },
};

/// How long a pending login waits for its second factor.
pub const MFA_TOKEN_TTL: Duration = crate::config::PendingTtls::PRODUCTION.mfa_token;
/// Codes one pending login may try; the last one ends it whatever its outcome.
pub const MFA_TOKEN_ATTEMPTS: u64 = 5;
const RECOVERY_CODES: usize = 10;
/// 160 bits, what RFC 4226 recommends.
const SECRET_BYTES: usize = 20;
const STEP_SECONDS: u64 = 30;

/// A second factor as POST /login/mfa presents it.
pub enum SecondFactor {
    Totp(String),
    RecoveryCode(String),
    /// A WebAuthn assertion answering the challenge issued with the `mfa_token`.
    Webauthn {
        mfa_token: String,
        assertion: Box<webauthn_rs::prelude::PublicKeyCredential>,
    },
}

impl SecondFactor {
    /// The method's name in metrics, audit details and `amr`.
    pub fn method(&self) -> &'static str {
        match self {
            SecondFactor::Totp(_) => "totp",
            SecondFactor::RecoveryCode(_) => "recovery_code",
            SecondFactor::Webauthn { .. } => "webauthn",
        }
    }
}

/// What POST /mfa/totp hands out, once: the secret for the authenticator app.
pub struct Enrolment {
    /// Base32, as authenticator apps take it when typed.
    pub secret: String,
    pub otpauth_uri: String,
    pub qr_svg: String,
}

/// Starts (or restarts) a TOTP enrolment: a new secret, pending until a code confirms it. An
/// account that already has a confirmed authenticator must remove it first (409).
pub async fn start_totp(app: &App, caller: &Caller) -> Result<Enrolment, ApiError> {
    let account = app
        .users
        .ask(FindAccount(caller.user_id))
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    let mut secret = vec![0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut secret);
    // `:` separates issuer and account in the label; neither may hold one.
    let issuer = app.settings.mfa_issuer.replace(':', "_");
    let label = account.email.replace(':', "_");
    let totp = Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(STEP_SECONDS)
        .with_secret(secret.clone())
        .with_issuer(Some(issuer))
        .with_account_name(label)
        .build()
        .map_err(|e| ApiError::Internal(format!("TOTP parameters: {e}")))?;
    let otpauth_uri = totp
        .to_url()
        .map_err(|e| ApiError::Internal(format!("otpauth URI: {e}")))?;
    let qr_svg = qrcode::QrCode::new(otpauth_uri.as_bytes())
        .map_err(|e| ApiError::Internal(format!("QR code: {e}")))?
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(200, 200)
        .build();
    let sealed = seal(app.settings.mfa_key(), caller.user_id, &secret)?;
    let stored = app
        .users
        .ask(StartTotp {
            user_id: caller.user_id,
            secret: sealed,
        })
        .await?;
    if !stored {
        return Err(ApiError::Conflict(
            "a TOTP authenticator is already active: remove it first (DELETE /mfa/totp)".into(),
        ));
    }
    Ok(Enrolment {
        secret: totp.secret().to_base32(),
        otpauth_uri,
        qr_svg,
    })
}

const NOTHING_PENDING: &str = "no pending TOTP enrolment: start one with POST /mfa/totp";

/// Confirms the pending enrolment with a current code: from now on logins need a second
/// factor. Returns the ten recovery codes, shown this once (only their hashes are kept).
///
/// A stolen access token must not guess its way to the recovery codes: limited per session and
/// per account, wrong codes count toward the account's lockout (as at POST /login/mfa), a
/// locked account is refused, and an enrolment pending longer than
/// `Settings::totp_enrolment_ttl` is gone. (The route also requires a recent authentication.)
pub async fn confirm_totp(app: &App, caller: &Caller, code: &str) -> Result<Vec<String>, ApiError> {
    let event = |e: AuditEvent, reason: &str| {
        e.by(caller.user_id)
            .ip(caller.ip.clone())
            .detail(serde_json::json!({ "method": "totp", "reason": reason }))
    };
    let throttled = |reason: &str, t: Throttled| {
        app.audit
            .record(event(AuditEvent::denied(AuditKind::MfaEnrol), reason));
        ApiError::from(t)
    };
    let account = app
        .users
        .ask(FindAccount(caller.user_id))
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    let now = now_unix();
    let bucket =
        match super::limits::admit_caller(app, caller, &account.email, Scope::LoginAccount, now)
            .await?
        {
            Ok(bucket) => bucket,
            Err(r) => return Err(throttled(r.reason, r.throttled)),
        };
    let ttl = chrono::Duration::from_std(app.settings.totp_enrolment_ttl)
        .map_err(|_| ApiError::Internal("TOTP enrolment lifetime out of range".into()))?;
    let cutoff = chrono::Utc::now() - ttl;
    let Some(pending) = app
        .users
        .ask(FindTotp(caller.user_id))
        .await?
        .filter(|t| t.confirmed_at.is_none())
    else {
        return Err(ApiError::Conflict(NOTHING_PENDING.into()));
    };
    if pending.created_at <= cutoff {
        // Expired: as if never started, and not left behind.
        app.users
            .ask(DropExpiredTotp {
                user_id: caller.user_id,
                started_before: cutoff,
            })
            .await?;
        return Err(ApiError::Conflict(NOTHING_PENDING.into()));
    }
    let secret = open(app.settings.mfa_key(), caller.user_id, &pending.secret)?;
    let Some(step) = check_code(secret, code, now) else {
        super::limits::count_failure(app, &bucket, now, Some(caller.user_id), caller.ip.clone())
            .await?;
        app.audit.record(event(
            AuditEvent::failure(AuditKind::MfaEnrol),
            "invalid_code",
        ));
        return Err(ApiError::InvalidGrant(
            "the code is wrong or already used".into(),
        ));
    };
    let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
    let notice = super::notices::notice(
        app,
        crate::mail::Template::MethodChanged,
        &account,
        &[(
            "change",
            "An authenticator app was turned on, with new recovery codes: together with your \
             password they sign you in",
        )],
    );
    let confirmed = app
        .users
        .ask(ConfirmTotp {
            user_id: caller.user_id,
            started_after: cutoff,
            step,
            recovery_hashes: codes
                .iter()
                .map(|c| app.settings.recovery_keys.hash(caller.user_id, c))
                .collect(),
            notice,
        })
        .await?;
    if !confirmed {
        return Err(ApiError::Conflict(NOTHING_PENDING.into()));
    }
    app.mailer.wake();
    app.throttle.record_success(bucket.id()).await?;
    app.audit.record(
        AuditEvent::success(AuditKind::MfaEnrol)
            .by(caller.user_id)
            .ip(caller.ip.clone())
            .detail(serde_json::json!({ "method": "totp" })),
    );
    tracing::info!(user_id = %caller.user_id, "TOTP enrolled");
    Ok(codes)
}

/// Removes the authenticator (confirmed or pending) and the recovery codes.
pub async fn remove_totp(app: &App, caller: &Caller) -> Result<(), ApiError> {
    let notice = super::notices::method_notice(
        app,
        caller.user_id,
        "The authenticator app and its recovery codes were removed: your account no longer asks \
         for their codes",
    )
    .await?;
    let removed = app
        .users
        .ask(RemoveTotp {
            user_id: caller.user_id,
            notice,
        })
        .await?;
    if !removed {
        return Err(ApiError::NotFound("TOTP authenticator"));
    }
    app.mailer.wake();
    app.audit.record(
        AuditEvent::success(AuditKind::MfaDisable)
            .by(caller.user_id)
            .ip(caller.ip.clone())
            .detail(serde_json::json!({ "method": "totp" })),
    );
    tracing::info!(user_id = %caller.user_id, "TOTP removed");
    Ok(())
}

/// The second factors an account must present at login (empty: the password is enough).
pub async fn enrolled_methods(app: &App, user_id: Uuid) -> Result<Vec<&'static str>, ApiError> {
    let totp = app.users.ask(FindTotp(user_id)).await?;
    let mut methods = match totp {
        Some(t) if t.confirmed_at.is_some() => vec!["totp", "recovery_code"],
        _ => Vec::new(),
    };
    if super::webauthn::enrolled(app, user_id).await? {
        methods.push("webauthn");
    }
    Ok(methods)
}

/// How a presented factor fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Wrong, or no such factor enrolled.
    Invalid,
    /// A right code whose time step (or recovery code) was already spent.
    Replay,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accepted => "success",
            Verdict::Invalid => "invalid",
            Verdict::Replay => "replay",
        }
    }
}

/// Checks a factor of `user_id` and spends it: a TOTP time step or a recovery code is accepted
/// once, whichever pod asks.
pub async fn verify_factor(
    app: &App,
    user_id: Uuid,
    factor: &SecondFactor,
) -> Result<Verdict, ApiError> {
    Ok(verify_factor_amr(app, user_id, factor).await?.0)
}

/// [`verify_factor`], with the factor's RFC 8176 `amr` value: `otp` for a TOTP or recovery
/// code, `hwk` or `swk` (a synced passkey) for WebAuthn.
pub async fn verify_factor_amr(
    app: &App,
    user_id: Uuid,
    factor: &SecondFactor,
) -> Result<(Verdict, &'static str), ApiError> {
    if let SecondFactor::Webauthn {
        mfa_token,
        assertion,
    } = factor
    {
        let asserted =
            super::webauthn::verify_second_factor(app, user_id, mfa_token, assertion).await?;
        return Ok(match asserted {
            Some(a) => (Verdict::Accepted, a.amr),
            None => (Verdict::Invalid, crate::session::amr::HARDWARE_KEY),
        });
    }
    let otp = crate::session::amr::OTP;
    Ok((verify_code(app, user_id, factor).await?, otp))
}

async fn verify_code(app: &App, user_id: Uuid, factor: &SecondFactor) -> Result<Verdict, ApiError> {
    let totp = match app.users.ask(FindTotp(user_id)).await? {
        Some(t) if t.confirmed_at.is_some() => t,
        _ => return Ok(Verdict::Invalid),
    };
    match factor {
        SecondFactor::Totp(code) => {
            let secret = open(app.settings.mfa_key(), user_id, &totp.secret)?;
            let Some(step) = check_code(secret, code, now_unix()) else {
                return Ok(Verdict::Invalid);
            };
            let spent = app.users.ask(SpendTotpStep { user_id, step }).await?;
            Ok(if spent {
                Verdict::Accepted
            } else {
                Verdict::Replay
            })
        }
        SecondFactor::RecoveryCode(code) => {
            if code.len() > 64 {
                return Ok(Verdict::Invalid);
            }
            let spent = app
                .users
                .ask(SpendRecoveryCode {
                    user_id,
                    code_hashes: app.settings.recovery_keys.candidates(user_id, code),
                })
                .await?;
            Ok(if spent {
                Verdict::Accepted
            } else {
                Verdict::Invalid
            })
        }
        SecondFactor::Webauthn { .. } => Ok(Verdict::Invalid),
    }
}

/// The time step a 6-digit code matches, within one step of `now` either way.
fn check_code(secret: Vec<u8>, code: &str, now: i64) -> Option<i64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let totp: Totp = Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_skew(1)
        .with_step_duration(STEP_SECONDS)
        .with_secret(secret)
        .build()
        .ok()?;
    let step = totp.check(&code, u64::try_from(now).ok()?)?;
    i64::try_from(step).ok()
}

/// 16 characters of a 32-letter alphabet without look-alikes (80 random bits), in groups of 4.
fn recovery_code() -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let chars: Vec<char> = bytes
        .iter()
        .map(|b| ALPHABET[usize::from(b & 31)] as char)
        .collect();
    chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-")
}

/// Case, spaces and dashes do not matter.
fn normalize(code: &str) -> String {
    code.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// The first scheme's stored form: unsalted, unkeyed SHA-256 (hex, no prefix). Codes stored
/// before the keyed scheme are still accepted; new ones are never stored so.
fn legacy_recovery_hash(code: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"sessiond/recovery-code/v1:");
    h.update(normalize(code).as_bytes());
    hex::encode(h.finalize())
}

const RECOVERY_V2: &str = "v2:";
const RECOVERY_LABEL: &[u8] = b"sessiond recovery code v2";

type HmacSha256 = Hmac<Sha256>;

/// Keys of recovery codes' stored form: HMAC-SHA256 under a key derived from SESSION_SECRET (or
/// JWT_SECRET without one), as the session seals' key is but with its own label, over the
/// account id and the code. The database never sees the key, so a copy of it cannot be checked
/// offline against guessed codes, and one hash says nothing about another account's codes.
///
/// The previous secret (SESSION_SECRET_PREVIOUS, or JWT_SECRET_PREVIOUS) still verifies: codes
/// are stored once, at enrolment, so after a rotation the old secret must stay configured until
/// every account re-enrolled, or those codes stop working (the authenticator still does; an admin
/// can reset the factors). Without a configured secret (an embedded start that generated
/// JWT_SECRET) the key is the label alone: salted per account but not secret, so codes survive
/// the restart that changes the generated secret; such codes are accepted under any key.
#[derive(Clone)]
pub struct RecoveryKeys {
    current: HmacSha256,
    previous: Option<HmacSha256>,
    unkeyed: HmacSha256,
}

impl std::fmt::Debug for RecoveryKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoveryKeys(***)")
    }
}

impl RecoveryKeys {
    fn derive(secret: &[u8]) -> HmacSha256 {
        // HMAC accepts keys of any length: an error here is impossible.
        let mut kdf =
            <HmacSha256 as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
        kdf.update(RECOVERY_LABEL);
        let derived = kdf.finalize().into_bytes();
        <HmacSha256 as Mac>::new_from_slice(&derived).unwrap_or_else(|_| unreachable!())
    }

    /// `None`: no configured secret (see the type).
    pub fn new(secret: Option<&[u8]>, previous: Option<&[u8]>) -> Self {
        let unkeyed = Self::derive(b"");
        Self {
            current: secret.map_or_else(|| unkeyed.clone(), Self::derive),
            previous: previous.map(Self::derive),
            unkeyed,
        }
    }

    /// SESSION_SECRET (+ SESSION_SECRET_PREVIOUS) if set, else JWT_SECRET (+ JWT_SECRET_PREVIOUS)
    /// unless it was generated at start-up, as the session seals choose.
    pub fn from_config(config: &crate::config::Config) -> Self {
        let expose = |s: &Option<crate::config::Secret>| s.as_ref().map(|s| s.expose().to_vec());
        let (secret, previous) = match &config.session_secret {
            Some(s) => (
                Some(s.expose().to_vec()),
                expose(&config.session_secret_previous),
            ),
            None => (
                (!config.jwt_secret_generated).then(|| config.jwt_secret.expose().to_vec()),
                expose(&config.jwt_secret_previous),
            ),
        };
        Self::new(secret.as_deref(), previous.as_deref())
    }

    fn mac(key: &HmacSha256, user_id: Uuid, code: &str) -> String {
        let mut m = key.clone();
        let normalized = normalize(code);
        for part in [user_id.as_bytes().as_slice(), normalized.as_bytes()] {
            m.update(&(part.len() as u32).to_be_bytes());
            m.update(part);
        }
        // base64url (46 characters in all): the column holds 64, the first scheme's hex.
        format!(
            "{RECOVERY_V2}{}",
            URL_SAFE_NO_PAD.encode(m.finalize().into_bytes())
        )
    }

    /// A new recovery code's stored form, under the current key.
    pub fn hash(&self, user_id: Uuid, code: &str) -> String {
        Self::mac(&self.current, user_id, code)
    }

    /// Every stored form `code` of `user_id` may have: under the current key, the previous one,
    /// no secret, and the first (unkeyed) scheme.
    pub fn candidates(&self, user_id: Uuid, code: &str) -> Vec<String> {
        let mut all = vec![self.hash(user_id, code)];
        for key in self.previous.iter().chain([&self.unkeyed]) {
            let h = Self::mac(key, user_id, code);
            if !all.contains(&h) {
                all.push(h);
            }
        }
        all.push(legacy_recovery_hash(code));
        all
    }
}

const SEALED: &str = "enc:v1:";
const PLAIN: &str = "plain:";

/// The user id is the associated data: a sealed secret copied to another account's row does not
/// open.
fn aad(user_id: Uuid) -> Vec<u8> {
    format!("sessiond/totp/v1:{user_id}").into_bytes()
}

/// Seals a TOTP secret under JWT_KEY_ENCRYPTION_KEY (AES-256-GCM). Without that key the secret
/// is stored as it is (marked `plain:`): the database then holds what an authenticator app does,
/// which docs/mfa-and-passkeys.md says.
fn seal(key: Option<&[u8]>, user_id: Uuid, secret: &[u8]) -> Result<String, ApiError> {
    let Some(key) = key else {
        return Ok(format!("{PLAIN}{}", STANDARD.encode(secret)));
    };
    let cipher = Aes256Gcm::new_from_slice(key)
        .map_err(|_| ApiError::Internal("JWT_KEY_ENCRYPTION_KEY is not 32 bytes".into()))?;
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut nonce);
    let sealed = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: secret,
                aad: &aad(user_id),
            },
        )
        .map_err(|_| ApiError::Internal("TOTP secret encryption failed".into()))?;
    Ok(format!(
        "{SEALED}{}",
        STANDARD.encode([nonce.as_slice(), &sealed].concat())
    ))
}

fn open(key: Option<&[u8]>, user_id: Uuid, stored: &str) -> Result<Vec<u8>, ApiError> {
    let fail = |why: &str| ApiError::Internal(format!("TOTP secret of {user_id}: {why}"));
    if let Some(plain) = stored.strip_prefix(PLAIN) {
        return STANDARD.decode(plain).map_err(|_| fail("not base64"));
    }
    let sealed = stored
        .strip_prefix(SEALED)
        .ok_or_else(|| fail("unknown format"))?;
    let key = key.ok_or_else(|| fail("sealed, but JWT_KEY_ENCRYPTION_KEY is not set"))?;
    let bytes = STANDARD.decode(sealed).map_err(|_| fail("not base64"))?;
    if bytes.len() < 12 + 16 {
        return Err(fail("too short"));
    }
    let (nonce, sealed) = bytes.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| fail("bad nonce"))?;
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| fail("key is not 32 bytes"))?;
    cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: sealed,
                aad: &aad(user_id),
            },
        )
        .map_err(|_| fail("does not decrypt (another JWT_KEY_ENCRYPTION_KEY?)"))
}

/// Pending logins: a correct password of an account with a second factor, waiting for it. Kept
/// in the session store (Redis, so any pod can finish the login; in-process when embedded),
/// under an HMAC of the token (`session::seal`, as the one-time records of `federation::pending`):
/// whoever writes Redis can neither read a usable token nor plant a pending login under a token
/// of his choice. In Redis the hash carries a MAC over the token, the user id and the provider
/// (`idp`), so one edited or moved to another token's key is refused like an unknown one, and
/// deleted. The attempts counter is not sealed: it only limits the guesses at the factor (it
/// counts up to the limit, then the entry is gone), and whoever can write Redis can already reset
/// the rate-limit and lockout counters; resetting it brings no login without the factor.
#[derive(Clone)]
pub struct MfaTokens {
    store: TokenStore,
    seal: RecordSeal,
}

#[derive(Clone)]
enum TokenStore {
    /// With the tokens' lifetime (the key's TTL).
    Redis(Redis, Duration),
    Memory(moka::sync::Cache<String, Arc<Mutex<Pending>>>),
}

/// The name of pending logins in their MAC and in `sessiond_record_seal_failures_total{kind}`.
const MFA_LOGIN: &str = "mfa-login";

#[derive(Debug, Clone)]
pub struct Pending {
    user_id: Uuid,
    attempts: u64,
    idp: Option<String>,
}

/// One attempt at a pending login, counted.
pub struct Attempt {
    pub user_id: Uuid,
    /// The identity provider whose sign-in this login continues; `None`: a password login.
    pub idp: Option<String>,
    key: String,
    /// This was the last attempt allowed: the pending login is already gone.
    last: bool,
}

static ISSUE: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    script(&[r"
redis.call('HSET', KEYS[1], 'user_id', ARGV[1], 'attempts', 0, 'idp', ARGV[3], 'mac', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1"])
});

/// Counts an attempt: nil when the token is unknown, expired or used up; else the user id, the
/// attempt's number, the provider and the MAC (the last allowed attempt deletes the entry).
static ATTEMPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| {
    script(&[r"
local uid = redis.call('HGET', KEYS[1], 'user_id')
if not uid then return false end
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
local idp = redis.call('HGET', KEYS[1], 'idp') or ''
local mac = redis.call('HGET', KEYS[1], 'mac') or ''
if n >= tonumber(ARGV[1]) then redis.call('DEL', KEYS[1]) end
return {uid, n, idp, mac}"])
});

fn unavailable(e: RedisUnavailable) -> ApiError {
    ApiError::Unavailable {
        what: "session store",
        detail: e.0,
    }
}

/// What a pending login's MAC covers besides the token: the account and the provider.
fn sealed_fields(user_id: &str, idp: &str) -> [Vec<u8>; 2] {
    [user_id.as_bytes().to_vec(), idp.as_bytes().to_vec()]
}

impl MfaTokens {
    /// `ttl`: [`MFA_TOKEN_TTL`] but in tests (`Config::pending_ttls`).
    pub fn memory(ttl: Duration, seal: RecordSeal) -> Self {
        MfaTokens {
            store: TokenStore::Memory(
                moka::sync::Cache::builder()
                    .time_to_live(ttl)
                    .max_capacity(1_000_000)
                    .build(),
            ),
            seal,
        }
    }

    pub fn redis(redis: Redis, ttl: Duration, seal: RecordSeal) -> Self {
        MfaTokens {
            store: TokenStore::Redis(redis, ttl),
            seal,
        }
    }

    /// The token's keys: under the current secret, and under the previous one.
    fn keys(&self, token: &str) -> (String, Option<String>) {
        let (current, previous) = self.seal.keys().record_ids(MFA_LOGIN, token);
        let key = |hash: String| match &self.store {
            TokenStore::Redis(r, _) => format!("{}mfa:{hash}", r.prefix()),
            TokenStore::Memory(_) => hash,
        };
        (key(current), previous.map(key))
    }

    /// A new pending login for `user_id` after a password; returns its token (256 random bits).
    pub async fn issue(&self, user_id: Uuid) -> Result<String, ApiError> {
        self.issue_after(user_id, None).await
    }

    /// A new pending login for `user_id`, after a sign-in through the provider `idp` (`None`:
    /// after a password).
    pub async fn issue_after(&self, user_id: Uuid, idp: Option<&str>) -> Result<String, ApiError> {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let (key, _) = self.keys(&token);
        match &self.store {
            TokenStore::Redis(r, ttl) => {
                let (uid, idp) = (user_id.to_string(), idp.unwrap_or_default());
                let [f1, f2] = sealed_fields(&uid, idp);
                let mac = self.seal.keys().seal_record(MFA_LOGIN, &token, &[&f1, &f2]);
                let mut call = ISSUE.key(key);
                call.arg(uid).arg(ttl.as_millis() as u64).arg(idp).arg(mac);
                r.call("mfa_token_issue", async |c| {
                    call.invoke_async::<i64>(c).await
                })
                .await
                .map_err(unavailable)?;
            }
            TokenStore::Memory(c) => c.insert(
                key,
                Arc::new(Mutex::new(Pending {
                    user_id,
                    attempts: 0,
                    idp: idp.map(str::to_string),
                })),
            ),
        }
        Ok(token)
    }

    /// Counts one attempt on a pending login; `None` when the token is unknown, expired, used,
    /// out of attempts, or its record fails its seal (then it is deleted).
    pub async fn attempt(&self, token: &str) -> Result<Option<Attempt>, ApiError> {
        if token.is_empty() || token.len() > 128 {
            return Ok(None);
        }
        let (current, previous) = self.keys(token);
        let found = match self.attempt_at(token, &current).await? {
            None => match previous {
                Some(previous) => self.attempt_at(token, &previous).await?,
                None => None,
            },
            found => found,
        };
        Ok(found)
    }

    async fn attempt_at(&self, token: &str, key: &str) -> Result<Option<Attempt>, ApiError> {
        let (user_id, n, idp) = match &self.store {
            TokenStore::Redis(r, _) => {
                let mut call = ATTEMPT.key(key);
                call.arg(MFA_TOKEN_ATTEMPTS);
                let got: Option<(String, u64, String, String)> = r
                    .call("mfa_token_attempt", async |c| call.invoke_async(c).await)
                    .await
                    .map_err(unavailable)?;
                let Some((uid, n, idp, mac)) = got else {
                    return Ok(None);
                };
                let [f1, f2] = sealed_fields(&uid, &idp);
                let sealed = self
                    .seal
                    .keys()
                    .verify_record(MFA_LOGIN, token, &[&f1, &f2], &mac);
                let parsed = Uuid::parse_str(&uid).ok().filter(|_| sealed);
                let Some(user_id) = parsed else {
                    self.seal.refused(MFA_LOGIN);
                    // Best effort: a record left behind keeps failing its seal.
                    let del = redis::cmd("DEL").arg(key).to_owned();
                    if let Err(e) = r
                        .call("mfa_token_consume", async |c| {
                            del.query_async::<i64>(c).await
                        })
                        .await
                    {
                        tracing::warn!(error = %e.0, "could not delete a pending login that failed its seal");
                    }
                    return Ok(None);
                };
                (user_id, n, (!idp.is_empty()).then_some(idp))
            }
            TokenStore::Memory(c) => {
                let Some(entry) = c.get(key) else {
                    return Ok(None);
                };
                // A poisoned lock still holds a consistent count.
                let mut pending = entry.lock().unwrap_or_else(|e| e.into_inner());
                if pending.attempts >= MFA_TOKEN_ATTEMPTS {
                    return Ok(None);
                }
                pending.attempts += 1;
                if pending.attempts >= MFA_TOKEN_ATTEMPTS {
                    c.invalidate(key);
                }
                (pending.user_id, pending.attempts, pending.idp.clone())
            }
        };
        Ok(Some(Attempt {
            user_id,
            idp,
            key: key.to_string(),
            last: n >= MFA_TOKEN_ATTEMPTS,
        }))
    }

    /// Ends the pending login after a right factor; `false` if another attempt ended it first
    /// (the token is single-use even under concurrent attempts).
    pub async fn consume(&self, attempt: Attempt) -> Result<bool, ApiError> {
        if attempt.last {
            return Ok(true);
        }
        match &self.store {
            TokenStore::Redis(r, _) => {
                let deleted: i64 = r
                    .call("mfa_token_consume", async |c| {
                        redis::cmd("DEL").arg(&attempt.key).query_async(c).await
                    })
                    .await
                    .map_err(unavailable)?;
                Ok(deleted == 1)
            }
            TokenStore::Memory(c) => Ok(c.remove(&attempt.key).is_some()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_open_only_for_their_account_and_key() {
        let key = [7u8; 32];
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let sealed = seal(Some(&key), alice, b"twenty bytes secret!").unwrap();
        assert!(sealed.starts_with(SEALED));
        assert_eq!(
            open(Some(&key), alice, &sealed).unwrap(),
            b"twenty bytes secret!"
        );
        assert!(open(Some(&key), bob, &sealed).is_err());
        assert!(open(Some(&[8u8; 32]), alice, &sealed).is_err());
        assert!(open(None, alice, &sealed).is_err());
        let plain = seal(None, alice, b"twenty bytes secret!").unwrap();
        assert_eq!(open(None, alice, &plain).unwrap(), b"twenty bytes secret!");
    }

    #[test]
    fn recovery_codes_match_however_they_are_typed() {
        let keys = RecoveryKeys::new(Some(b"a secret"), None);
        let user = Uuid::new_v4();
        let code = recovery_code();
        assert_eq!(code.len(), 19);
        assert_eq!(
            keys.hash(user, &code),
            keys.hash(user, &code.to_uppercase().replace('-', " "))
        );
        assert_ne!(keys.hash(user, &code), keys.hash(user, &recovery_code()));
    }

    #[test]
    fn recovery_hashes_are_keyed_and_bound_to_the_account() {
        let code = recovery_code();
        let (alice, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let keys = RecoveryKeys::new(Some(b"first secret"), None);
        let stored = keys.hash(alice, &code);
        assert!(stored.starts_with(RECOVERY_V2), "{stored}");
        // Not the plain (or the first scheme's) SHA-256 of the code.
        assert_ne!(stored, legacy_recovery_hash(&code));
        assert!(stored.len() <= 64, "{stored}");
        // Another account, another key: another hash.
        assert_ne!(stored, keys.hash(bob, &code));
        let other = RecoveryKeys::new(Some(b"other secret"), None);
        assert!(!other.candidates(alice, &code).contains(&stored));
        assert!(keys.candidates(alice, &code).contains(&stored));
        assert!(!keys.candidates(bob, &code).contains(&stored));
    }

    #[test]
    fn recovery_codes_survive_a_secret_rotation_and_the_first_scheme() {
        let code = recovery_code();
        let user = Uuid::new_v4();
        let old = RecoveryKeys::new(Some(b"old secret"), None);
        let rotated = RecoveryKeys::new(Some(b"new secret"), Some(b"old secret"));
        let stored = old.hash(user, &code);
        assert!(rotated.candidates(user, &code).contains(&stored));
        // New codes use the new secret.
        assert_ne!(rotated.hash(user, &code), stored);
        // Once the previous secret is gone, its codes no longer match.
        let forgot = RecoveryKeys::new(Some(b"new secret"), None);
        assert!(!forgot.candidates(user, &code).contains(&stored));
        // Codes stored by the first scheme, and without a secret, keep working under any key.
        assert!(rotated
            .candidates(user, &code)
            .contains(&legacy_recovery_hash(&code)));
        let generated = RecoveryKeys::new(None, None).hash(user, &code);
        assert!(rotated.candidates(user, &code).contains(&generated));
        assert!(!rotated.candidates(user, &recovery_code()).contains(&stored));
    }

    #[test]
    fn codes_match_within_one_step_only() {
        let secret = vec![3u8; 20];
        let totp = Builder::new().with_secret(secret.clone()).build().unwrap();
        let now = 1_800_000_000i64;
        let code = |t: i64| totp.generate(t as u64).to_string();
        let step = now / 30;
        assert_eq!(check_code(secret.clone(), &code(now), now), Some(step));
        assert_eq!(
            check_code(secret.clone(), &code(now - 30), now),
            Some(step - 1)
        );
        assert_eq!(
            check_code(secret.clone(), &code(now + 30), now),
            Some(step + 1)
        );
        assert_eq!(check_code(secret.clone(), &code(now - 60), now), None);
        assert_eq!(check_code(secret.clone(), "12345", now), None);
        assert_eq!(check_code(secret, "１２３４５６", now), None);
    }
}
