//! Seals on session records in Redis: HMAC-SHA256 under a key Redis never sees, so whoever can
//! write Redis cannot mint a session or widen one (roles, permissions, expiry, refresh state).
//!
//! Three MACs, one per write path, each binding the user id and the session id (so a record
//! copied under another key does not verify):
//! - `grant_mac` over roles, permissions and expires_at: written by login and by role changes;
//! - `token_mac` over the current refresh_hash: Rust can compute the one a presented token needs
//!   before calling the rotation script, so the script itself refuses to rotate a forged hash
//!   (nothing is written, and the forged record is deleted in the same step);
//! - `auth_mac` over amr, auth_time and idp (how and when the user last authenticated): written
//!   by login and by POST /reauthenticate, so nobody can freshen auth_time or add a factor;
//! - `rotation_mac` over prev_hash, rotated_at, succ_sealed and succ_jti (the grace-window state):
//!   all of it is known to Rust before the rotation, and it is checked before a replayed
//!   successor is handed out.
//!
//! The key is HMAC-SHA256(SESSION_SECRET, "sessiond session seal v1"), or the same derivation
//! from JWT_SECRET when no SESSION_SECRET is set: never the raw JWT key. The previous secret
//! (SESSION_SECRET_PREVIOUS, or JWT_SECRET_PREVIOUS without a SESSION_SECRET) still verifies;
//! new seals always use the current key. A grant seal is rewritten only by a role change, so the
//! previous secret must stay configured for one session lifetime (TOKEN_EXPIRATION).
//!
//! Inputs are length-prefixed fields after a per-MAC label, so no two different records encode
//! the same.
//!
//! One-time records (identity-provider states and codes, pending MFA logins, WebAuthn
//! ceremonies: `federation::pending`, `app::mfa`) are sealed with the same keys: their Redis key
//! is an HMAC of their kind and the secret value the client holds (the code, state, token or
//! session id) under a key of its own derivation ("sessiond record key v1"), so Redis holds no
//! usable value and nobody without the secret computes the key for a value of his choice; the
//! value carries a MAC over its kind, that secret value and the whole payload, so a record edited
//! or moved to another record's key does not verify.
//!
//! Residual risk: an attacker who can write Redis can still delete records (a denial of
//! service), bring back an earlier sealed state of the same session (e.g. its roles from before
//! a demotion, or a revoked session's record), keep an idle session alive (last_seen_at is not
//! sealed) and mark tokens as reused; he cannot create a session, move one to another user or
//! session id, or give it more than it once had.
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::config::{Config, Secret};

type HmacSha256 = Hmac<Sha256>;

const DERIVATION_LABEL: &[u8] = b"sessiond session seal v1";
/// The key that names one-time records in Redis: never the one that seals them.
const RECORD_KEY_LABEL: &[u8] = b"sessiond record key v1";

/// The fields of a record that grant access.
pub struct Grant<'a> {
    pub roles: &'a str,
    pub permissions: &'a str,
    pub expires_at: i64,
}

/// The grace-window state of the last rotation.
pub struct RotationState<'a> {
    pub prev_hash: &'a str,
    pub rotated_at: i64,
    pub succ_sealed: &'a str,
    pub succ_jti: &'a str,
}

/// How the user last authenticated, as stored (amr comma-joined; no idp: empty).
pub struct AuthFields<'a> {
    pub amr: &'a str,
    pub auth_time: i64,
    pub idp: &'a str,
}

/// One derived key, keyed once: each MAC clones the keyed state.
#[derive(Clone)]
struct Key(HmacSha256);

impl Key {
    fn derive(secret: &[u8], label: &[u8]) -> Self {
        // HMAC accepts keys of any length; an error here is impossible.
        let mut kdf = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
        kdf.update(label);
        let derived = kdf.finalize().into_bytes();
        Self(HmacSha256::new_from_slice(&derived).unwrap_or_else(|_| unreachable!()))
    }

    fn mac(&self, label: &[u8], uid: Uuid, sid: Uuid, fields: &[&[u8]]) -> HmacSha256 {
        self.mac_parts(
            [label, uid.as_bytes().as_slice(), sid.as_bytes().as_slice()]
                .into_iter()
                .chain(fields.iter().copied()),
        )
    }

    /// Length-prefixed parts: the one encoding of every MAC and record key.
    fn mac_parts<'a>(&self, parts: impl IntoIterator<Item = &'a [u8]>) -> HmacSha256 {
        let mut m = self.0.clone();
        for part in parts {
            m.update(&(part.len() as u32).to_be_bytes());
            m.update(part);
        }
        m
    }

    /// A one-time record's MAC: its kind, the secret value it is kept under, its payload.
    fn record_mac(&self, kind: &str, id: &str, fields: &[&[u8]]) -> HmacSha256 {
        self.mac_parts(
            [RECORD, kind.as_bytes(), id.as_bytes()]
                .into_iter()
                .chain(fields.iter().copied()),
        )
    }
}

#[derive(Clone)]
pub struct SealKeys {
    current: Key,
    /// Verifies only, during a secret rotation.
    previous: Option<Key>,
    /// Name one-time records in Redis (the previous one: finds those written before a rotation).
    record_key: Key,
    previous_record_key: Option<Key>,
}

impl std::fmt::Debug for SealKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKeys(***)")
    }
}

const GRANT: &[u8] = b"grant";
const TOKEN: &[u8] = b"token";
const ROTATION: &[u8] = b"rotation";
const AUTH: &[u8] = b"auth";
const RECORD: &[u8] = b"record";

impl SealKeys {
    pub fn new(secret: &[u8], previous: Option<&[u8]>) -> Self {
        Self {
            current: Key::derive(secret, DERIVATION_LABEL),
            previous: previous.map(|p| Key::derive(p, DERIVATION_LABEL)),
            record_key: Key::derive(secret, RECORD_KEY_LABEL),
            previous_record_key: previous.map(|p| Key::derive(p, RECORD_KEY_LABEL)),
        }
    }

    /// SESSION_SECRET (+ SESSION_SECRET_PREVIOUS) if set, else JWT_SECRET (+ JWT_SECRET_PREVIOUS).
    pub fn from_config(config: &Config) -> Self {
        let expose = |s: &Option<Secret>| s.as_ref().map(|s| s.expose().to_vec());
        let (secret, previous) = match &config.session_secret {
            Some(s) => (s.expose().to_vec(), expose(&config.session_secret_previous)),
            None => (
                config.jwt_secret.expose().to_vec(),
                expose(&config.jwt_secret_previous),
            ),
        };
        Self::new(&secret, previous.as_deref())
    }

    fn keys(&self) -> impl Iterator<Item = &Key> {
        std::iter::once(&self.current).chain(self.previous.as_ref())
    }

    fn seal(&self, label: &[u8], uid: Uuid, sid: Uuid, fields: &[&[u8]]) -> String {
        hex::encode(
            self.current
                .mac(label, uid, sid, fields)
                .finalize()
                .into_bytes(),
        )
    }

    /// Constant-time check against every configured key; a missing or malformed MAC fails.
    fn verify(&self, label: &[u8], uid: Uuid, sid: Uuid, fields: &[&[u8]], mac: &str) -> bool {
        let Ok(tag) = hex::decode(mac) else {
            return false;
        };
        self.keys()
            .any(|k| k.mac(label, uid, sid, fields).verify_slice(&tag).is_ok())
    }

    /// Where a one-time record of `kind` for the secret value `id` is kept (hex, 160 bits):
    /// under the current secret, and under the previous one (to find records written before a
    /// rotation; new ones always go under the current).
    pub fn record_ids(&self, kind: &str, id: &str) -> (String, Option<String>) {
        let name = |k: &Key| {
            let tag = k
                .mac_parts([RECORD, kind.as_bytes(), id.as_bytes()])
                .finalize()
                .into_bytes();
            hex::encode(&tag[..20])
        };
        (
            name(&self.record_key),
            self.previous_record_key.as_ref().map(name),
        )
    }

    /// The MAC of a one-time record of `kind` kept for the secret value `id`, over `fields`.
    pub fn seal_record(&self, kind: &str, id: &str, fields: &[&[u8]]) -> String {
        hex::encode(
            self.current
                .record_mac(kind, id, fields)
                .finalize()
                .into_bytes(),
        )
    }

    /// Constant-time check against every configured key; a missing or malformed MAC fails.
    pub fn verify_record(&self, kind: &str, id: &str, fields: &[&[u8]], mac: &str) -> bool {
        let Ok(tag) = hex::decode(mac) else {
            return false;
        };
        self.keys()
            .any(|k| k.record_mac(kind, id, fields).verify_slice(&tag).is_ok())
    }

    fn grant_fields(g: &Grant<'_>) -> [Vec<u8>; 3] {
        [
            g.roles.as_bytes().to_vec(),
            g.permissions.as_bytes().to_vec(),
            g.expires_at.to_be_bytes().to_vec(),
        ]
    }

    pub fn seal_grant(&self, uid: Uuid, sid: Uuid, g: &Grant<'_>) -> String {
        let f = Self::grant_fields(g);
        self.seal(GRANT, uid, sid, &[&f[0], &f[1], &f[2]])
    }

    pub fn verify_grant(&self, uid: Uuid, sid: Uuid, g: &Grant<'_>, mac: &str) -> bool {
        let f = Self::grant_fields(g);
        self.verify(GRANT, uid, sid, &[&f[0], &f[1], &f[2]], mac)
    }

    pub fn seal_token(&self, uid: Uuid, sid: Uuid, refresh_hash: &str) -> String {
        self.seal(TOKEN, uid, sid, &[refresh_hash.as_bytes()])
    }

    /// The token MAC a record whose current refresh hash is `refresh_hash` carries, under each
    /// configured key (current first): what the rotation script compares with.
    pub fn expected_token_macs(
        &self,
        uid: Uuid,
        sid: Uuid,
        refresh_hash: &str,
    ) -> (String, Option<String>) {
        let mac = |k: &Key| {
            hex::encode(
                k.mac(TOKEN, uid, sid, &[refresh_hash.as_bytes()])
                    .finalize()
                    .into_bytes(),
            )
        };
        (mac(&self.current), self.previous.as_ref().map(mac))
    }

    fn auth_fields(a: &AuthFields<'_>) -> [Vec<u8>; 3] {
        [
            a.amr.as_bytes().to_vec(),
            a.auth_time.to_be_bytes().to_vec(),
            a.idp.as_bytes().to_vec(),
        ]
    }

    pub fn seal_auth(&self, uid: Uuid, sid: Uuid, a: &AuthFields<'_>) -> String {
        let f = Self::auth_fields(a);
        self.seal(AUTH, uid, sid, &[&f[0], &f[1], &f[2]])
    }

    pub fn verify_auth(&self, uid: Uuid, sid: Uuid, a: &AuthFields<'_>, mac: &str) -> bool {
        let f = Self::auth_fields(a);
        self.verify(AUTH, uid, sid, &[&f[0], &f[1], &f[2]], mac)
    }

    fn rotation_fields(r: &RotationState<'_>) -> [Vec<u8>; 4] {
        [
            r.prev_hash.as_bytes().to_vec(),
            r.rotated_at.to_be_bytes().to_vec(),
            r.succ_sealed.as_bytes().to_vec(),
            r.succ_jti.as_bytes().to_vec(),
        ]
    }

    pub fn seal_rotation(&self, uid: Uuid, sid: Uuid, r: &RotationState<'_>) -> String {
        let f = Self::rotation_fields(r);
        self.seal(ROTATION, uid, sid, &[&f[0], &f[1], &f[2], &f[3]])
    }

    pub fn verify_rotation(&self, uid: Uuid, sid: Uuid, r: &RotationState<'_>, mac: &str) -> bool {
        let f = Self::rotation_fields(r);
        self.verify(ROTATION, uid, sid, &[&f[0], &f[1], &f[2], &f[3]], mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: &[u8] = b"first-secret-first-secret-first-secret";
    const S2: &[u8] = b"second-secret-second-secret-second-secret";

    fn grant(expires_at: i64) -> Grant<'static> {
        Grant {
            roles: "user",
            permissions: "",
            expires_at,
        }
    }

    #[test]
    fn a_grant_verifies_only_for_its_own_fields_ids_and_key() {
        let keys = SealKeys::new(S1, None);
        let (u, s) = (Uuid::new_v4(), Uuid::new_v4());
        let mac = keys.seal_grant(u, s, &grant(100));
        assert!(keys.verify_grant(u, s, &grant(100), &mac));
        assert!(!keys.verify_grant(u, s, &grant(101), &mac));
        assert!(!keys.verify_grant(Uuid::new_v4(), s, &grant(100), &mac));
        assert!(!keys.verify_grant(u, Uuid::new_v4(), &grant(100), &mac));
        let wider = Grant {
            roles: "admin,user",
            ..grant(100)
        };
        assert!(!keys.verify_grant(u, s, &wider, &mac));
        assert!(!SealKeys::new(S2, None).verify_grant(u, s, &grant(100), &mac));
        for garbage in ["", "zz", &mac[..10]] {
            assert!(!keys.verify_grant(u, s, &grant(100), garbage));
        }
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let keys = SealKeys::new(S1, None);
        let (u, s) = (Uuid::new_v4(), Uuid::new_v4());
        let a = Grant {
            roles: "ab",
            permissions: "c",
            expires_at: 1,
        };
        let b = Grant {
            roles: "a",
            permissions: "bc",
            expires_at: 1,
        };
        assert_ne!(keys.seal_grant(u, s, &a), keys.seal_grant(u, s, &b));
        // Different MACs of the same ids never stand in for each other.
        assert!(!keys.verify_grant(u, s, &grant(1), &keys.seal_token(u, s, "user")));
    }

    #[test]
    fn an_auth_seal_covers_time_methods_and_provider() {
        let keys = SealKeys::new(S1, None);
        let (u, s) = (Uuid::new_v4(), Uuid::new_v4());
        let auth = |amr, auth_time, idp| AuthFields {
            amr,
            auth_time,
            idp,
        };
        let mac = keys.seal_auth(u, s, &auth("pwd", 100, ""));
        assert!(keys.verify_auth(u, s, &auth("pwd", 100, ""), &mac));
        assert!(!keys.verify_auth(u, s, &auth("pwd", 101, ""), &mac));
        assert!(!keys.verify_auth(u, s, &auth("pwd,otp,mfa", 100, ""), &mac));
        assert!(!keys.verify_auth(u, s, &auth("pwd", 100, "github"), &mac));
        assert!(!keys.verify_auth(u, Uuid::new_v4(), &auth("pwd", 100, ""), &mac));
        // A grant MAC never stands in for an auth MAC.
        assert!(!keys.verify_auth(u, s, &auth("pwd", 100, ""), &keys.seal_token(u, s, "pwd")));
    }

    #[test]
    fn the_previous_secret_verifies_but_never_seals() {
        let (u, s) = (Uuid::new_v4(), Uuid::new_v4());
        let old = SealKeys::new(S1, None);
        let rotated = SealKeys::new(S2, Some(S1));
        let state = RotationState {
            prev_hash: "h",
            rotated_at: 5,
            succ_sealed: "x",
            succ_jti: "j",
        };
        let old_mac = old.seal_rotation(u, s, &state);
        assert!(rotated.verify_rotation(u, s, &state, &old_mac));
        let new_mac = rotated.seal_rotation(u, s, &state);
        assert_ne!(new_mac, old_mac);
        assert!(SealKeys::new(S2, None).verify_rotation(u, s, &state, &new_mac));
        let (current, previous) = rotated.expected_token_macs(u, s, "h");
        assert_eq!(current, rotated.seal_token(u, s, "h"));
        assert_eq!(previous, Some(old.seal_token(u, s, "h")));
    }

    #[test]
    fn a_record_seal_binds_kind_id_and_every_field() {
        let keys = SealKeys::new(S1, None);
        let mac = keys.seal_record("oauth-code", "c1", &[b"payload", b"x"]);
        assert!(keys.verify_record("oauth-code", "c1", &[b"payload", b"x"], &mac));
        assert!(!keys.verify_record("oauth-code", "c2", &[b"payload", b"x"], &mac));
        assert!(!keys.verify_record("oauth-state", "c1", &[b"payload", b"x"], &mac));
        assert!(!keys.verify_record("oauth-code", "c1", &[b"payloaD", b"x"], &mac));
        assert!(!keys.verify_record("oauth-code", "c1", &[b"payload"], &mac));
        assert!(!keys.verify_record("oauth-code", "c1", &[b"payloadx"], &mac));
        assert!(!SealKeys::new(S2, None).verify_record(
            "oauth-code",
            "c1",
            &[b"payload", b"x"],
            &mac
        ));
        for garbage in ["", "zz", &mac[..10]] {
            assert!(!keys.verify_record("oauth-code", "c1", &[b"payload", b"x"], garbage));
        }
    }

    #[test]
    fn record_ids_are_keyed_and_the_previous_secret_still_finds_and_verifies() {
        let old = SealKeys::new(S1, None);
        let rotated = SealKeys::new(S2, Some(S1));
        let (id, none) = old.record_ids("oauth-code", "c1");
        assert_eq!(none, None);
        assert_eq!(id.len(), 40);
        // Keyed: another secret, kind or value names another record; the unkeyed hash of the
        // value (what the key was before) is not it.
        assert_ne!(SealKeys::new(S2, None).record_ids("oauth-code", "c1").0, id);
        assert_ne!(old.record_ids("oauth-state", "c1").0, id);
        assert_ne!(old.record_ids("oauth-code", "c2").0, id);
        use sha2::Digest;
        let unkeyed = hex::encode(&Sha256::digest(b"sessiond/oauth-code/c1")[..20]);
        assert_ne!(id, unkeyed);
        // A record id is never the record's MAC (own derivation).
        assert!(!old.seal_record("oauth-code", "c1", &[]).starts_with(&id));
        let (current, previous) = rotated.record_ids("oauth-code", "c1");
        assert_eq!(previous.as_deref(), Some(id.as_str()));
        assert_eq!(
            current,
            SealKeys::new(S2, None).record_ids("oauth-code", "c1").0
        );
        let old_mac = old.seal_record("mfa-login", "t", &[b"u"]);
        assert!(rotated.verify_record("mfa-login", "t", &[b"u"], &old_mac));
        let new_mac = rotated.seal_record("mfa-login", "t", &[b"u"]);
        assert_ne!(new_mac, old_mac);
        assert!(!old.verify_record("mfa-login", "t", &[b"u"], &new_mac));
    }

    #[test]
    fn the_key_is_derived_not_the_raw_secret() {
        let (u, s) = (Uuid::new_v4(), Uuid::new_v4());
        let mut raw = HmacSha256::new_from_slice(S1).expect("key");
        for part in [TOKEN, u.as_bytes(), s.as_bytes(), b"h"] {
            raw.update(&(part.len() as u32).to_be_bytes());
            raw.update(part);
        }
        let raw = hex::encode(raw.finalize().into_bytes());
        assert_ne!(SealKeys::new(S1, None).seal_token(u, s, "h"), raw);
    }
}
