//! Access tokens: HS256 JWTs with the claims docs/API.md lists. Verification pins the algorithm,
//! requires every claim, checks iss, aud, exp and nbf with a small leeway, and checks `typ`.
use std::time::Duration;

use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::Config;

/// Clock skew tolerated on exp/nbf (RFC 8725 asks for little; ASVS for at most 30 s).
pub const LEEWAY_SECONDS: u64 = 10;
/// Longer than any token we issue (16 roles and 64 permissions of the longest names: about
/// 7.5 KiB; a unit test checks); longer headers are rejected before any parsing.
pub const MAX_TOKEN_BYTES: usize = 10 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: Uuid,
    pub sid: Uuid,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    pub jti: Uuid,
    pub roles: Vec<String>,
    /// Effective permissions of the roles (tokens issued before permissions existed lack it).
    #[serde(default)]
    pub permissions: Vec<String>,
}

/// A verification key and the `kid` that names it.
#[derive(Clone)]
struct VerifyKey {
    kid: String,
    key: DecodingKey,
}

impl VerifyKey {
    fn new(secret: &[u8]) -> Self {
        Self {
            kid: key_id(secret),
            key: DecodingKey::from_secret(secret),
        }
    }
}

/// A public name for a secret (a hash prefix), so a token says which key signed it during a
/// rotation without revealing anything about the key.
fn key_id(secret: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"sessiond/kid/v1");
    h.update(secret);
    hex::encode(&h.finalize()[..8])
}

/// Verified tokens, keyed by the token itself. Only tokens this server signed are ever inserted, so
/// a client cannot choose what lands in it (no hash flooding), and a lookup hashes the token once
/// with a fast keyed hash instead of a SHA-256 (which cost more than the rest of the check).
type VerifiedTokens =
    moka::sync::Cache<Box<str>, std::sync::Arc<Claims>, foldhash::fast::RandomState>;

/// Bytes of tokens the verified-token cache may hold.
const VERIFIED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// Clones share the cache of verified tokens.
#[derive(Clone)]
pub struct JwtKeys {
    verified: VerifiedTokens,
    encoding: EncodingKey,
    current: VerifyKey,
    /// JWT_SECRET_PREVIOUS: verifies tokens signed before a rotation; never signs.
    previous: Option<VerifyKey>,
    validation: Validation,
    header: Header,
    issuer: String,
    audience: String,
    access_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("token signing failed")]
pub struct SignError;

impl JwtKeys {
    pub fn new(config: &Config) -> Self {
        let secret = config.jwt_secret.expose();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        validation.set_issuer(&[&config.jwt_issuer]);
        validation.set_audience(&[&config.jwt_audience]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        let current = VerifyKey::new(secret);
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some("JWT".into());
        header.kid = Some(current.kid.clone());
        Self {
            verified: moka::sync::Cache::<Box<str>, std::sync::Arc<Claims>>::builder()
                .time_to_live(std::time::Duration::from_secs(60))
                .weigher(|token, _| token.len().try_into().unwrap_or(u32::MAX))
                .max_capacity(VERIFIED_CACHE_BYTES)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            encoding: EncodingKey::from_secret(secret),
            current,
            previous: config
                .jwt_secret_previous
                .as_ref()
                .map(|s| VerifyKey::new(s.expose())),
            validation,
            header,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            access_ttl: config.access_token_ttl,
        }
    }

    /// Signs an access token for the session; it never outlives the session. Deterministic in
    /// its inputs (HS256, fixed claim order), which lets a refresh replayed within the grace
    /// window return the very same token. Returns the token and its lifetime in seconds.
    pub fn issue(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        access: &super::Access,
        session_expires_at: i64,
        now: i64,
        jti: Uuid,
    ) -> Result<(String, i64), SignError> {
        let exp = (now + self.access_ttl.as_secs() as i64).min(session_expires_at);
        let claims = Claims {
            sub: user_id,
            sid: session_id,
            iat: now,
            nbf: now,
            exp,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            jti,
            roles: access.roles.clone(),
            permissions: access.permissions.clone(),
        };
        let token = encode(&self.header, &claims, &self.encoding).map_err(|_| SignError)?;
        Ok((token, exp - now))
    }

    /// `None` for anything that is not a valid access token of this server; the reason is not
    /// told to the client.
    ///
    /// A token that verified once is remembered for a minute: a client presents the same token on
    /// every request, and a lookup costs a fraction of parsing and HMAC-checking it again. Only the
    /// time claims can change their verdict, so they are checked again on every hit. Revocation
    /// is the session check's job. Holding the token in memory adds nothing for an attacker who
    /// can read this process: it also holds the key that signs them.
    pub fn verify(&self, token: &str) -> Option<std::sync::Arc<Claims>> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let now = crate::session::now_unix();
        let leeway = LEEWAY_SECONDS as i64;
        if let Some(claims) = self.verified.get(token) {
            return (claims.nbf - leeway <= now && now < claims.exp + leeway).then_some(claims);
        }
        let claims = std::sync::Arc::new(self.verify_uncached(token)?);
        self.verified.insert(token.into(), claims.clone());
        Some(claims)
    }

    fn verify_uncached(&self, token: &str) -> Option<Claims> {
        let header = decode_header(token).ok()?;
        // Keys are never fetched or taken from a token (RFC 8725 3.10): a token that points
        // elsewhere is refused outright.
        if header.jku.is_some()
            || header.jwk.is_some()
            || header.x5u.is_some()
            || header.x5c.is_some()
        {
            return None;
        }
        // RFC 7515 4.1.11: extensions listed in `crit` must be understood, and we implement
        // none, so any `crit` (even an empty one, which the RFC forbids) is refused.
        if header.crit.is_some() {
            return None;
        }
        if header.typ.as_deref() != Some("JWT") {
            return None;
        }
        let keys: Vec<&VerifyKey> = match header.kid.as_deref() {
            Some(kid) => {
                let key = [Some(&self.current), self.previous.as_ref()]
                    .into_iter()
                    .flatten()
                    .find(|k| k.kid == kid);
                vec![key?]
            }
            None => [Some(&self.current), self.previous.as_ref()]
                .into_iter()
                .flatten()
                .collect(),
        };
        keys.into_iter()
            .find_map(|k| decode::<Claims>(token, &k.key, &self.validation).ok())
            .map(|data| data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};

    fn keys() -> JwtKeys {
        let secret = "kX9v2LqT7mWz4RbN8cYp1HdS6fJg3UaE0oKi5VtQ".to_string();
        let cfg = Config::from_lookup(|k| (k == "JWT_SECRET").then(|| secret.clone())).unwrap();
        JwtKeys::new(&cfg)
    }

    #[test]
    fn issued_tokens_verify_and_carry_the_session() {
        let k = keys();
        let (uid, sid, now) = (Uuid::new_v4(), Uuid::new_v4(), crate::session::now_unix());
        let (token, ttl) = k
            .issue(
                uid,
                sid,
                &crate::auth::Access::new(vec!["user".into()], vec![]),
                now + 3600,
                now,
                Uuid::new_v4(),
            )
            .unwrap();
        assert_eq!(ttl, 900);
        let claims = k.verify(&token).unwrap();
        assert_eq!((claims.sub, claims.sid), (uid, sid));
    }

    #[test]
    fn the_largest_access_an_account_can_hold_fits_in_a_token() {
        use crate::users::{MAX_ACCOUNT_PERMISSIONS, MAX_ACCOUNT_ROLES};
        let k = keys();
        let now = crate::session::now_unix();
        let name = |i: usize, len: usize| format!("{i:0>width$}", width = len).replace('0', "a");
        let roles = (0..MAX_ACCOUNT_ROLES).map(|i| name(i, 64)).collect();
        let permissions = (0..MAX_ACCOUNT_PERMISSIONS)
            .map(|i| format!("{}:{}", name(i, 31), name(i, 32)))
            .collect();
        let access = crate::auth::Access::new(roles, permissions);
        let (token, _) = k
            .issue(
                Uuid::new_v4(),
                Uuid::new_v4(),
                &access,
                now + 60,
                now,
                Uuid::new_v4(),
            )
            .unwrap();
        assert!(token.len() < MAX_TOKEN_BYTES, "{} bytes", token.len());
        let claims = k.verify(&token).expect("verifies");
        assert_eq!(claims.permissions.len(), MAX_ACCOUNT_PERMISSIONS);
    }

    #[test]
    fn access_token_never_outlives_its_session() {
        let k = keys();
        let now = crate::session::now_unix();
        let (_, ttl) = k
            .issue(
                Uuid::new_v4(),
                Uuid::new_v4(),
                &crate::auth::Access::default(),
                now + 60,
                now,
                Uuid::new_v4(),
            )
            .unwrap();
        assert_eq!(ttl, 60);
    }

    #[test]
    fn unsigned_and_tampered_tokens_are_rejected() {
        let k = keys();
        let now = crate::session::now_unix();
        let (token, _) = k
            .issue(
                Uuid::new_v4(),
                Uuid::new_v4(),
                &crate::auth::Access::default(),
                now + 3600,
                now,
                Uuid::new_v4(),
            )
            .unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        for alg in ["none", "None", "NONE"] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            assert!(k.verify(&format!("{header}.{}.", parts[1])).is_none());
        }
        let mut payload = URL_SAFE_NO_PAD.decode(parts[1]).unwrap();
        let last = payload.len() - 2;
        payload[last] ^= 1;
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(payload),
            parts[2]
        );
        assert!(k.verify(&forged).is_none());
        assert!(k.verify(&"a".repeat(MAX_TOKEN_BYTES + 1)).is_none());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn keys() -> JwtKeys {
        let secret = "pR4wZ8nB1xKq6TvM3hYc9LdG2sFj7UeA0oWi5NtE".to_string();
        let cfg = Config::from_lookup(|k| (k == "JWT_SECRET").then(|| secret.clone())).unwrap();
        JwtKeys::new(&cfg)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Arbitrary input never panics and never verifies.
        #[test]
        fn garbage_never_verifies(token in ".{0,600}") {
            prop_assert!(keys().verify(&token).is_none());
        }

        /// Token-shaped garbage (three base64url parts) never verifies either.
        #[test]
        fn token_shaped_garbage_never_verifies(a in "[A-Za-z0-9_-]{0,120}", b in "[A-Za-z0-9_-]{0,300}", c in "[A-Za-z0-9_-]{0,90}") {
            let token = [a, b, c].join(".");
            prop_assert!(keys().verify(&token).is_none());
        }

        /// Flipping any one character of a real token breaks it.
        #[test]
        fn any_single_change_breaks_a_real_token(pos in any::<prop::sample::Index>(), replacement in "[A-Za-z0-9_-]") {
            let k = keys();
            let now = crate::session::now_unix();
            let (token, _) = k.issue(Uuid::new_v4(), Uuid::new_v4(), &crate::auth::Access::new(vec!["user".into()], vec![]), now + 60, now, Uuid::new_v4()).unwrap();
            let i = pos.index(token.len());
            let mut bytes = token.clone().into_bytes();
            let original = bytes[i];
            bytes[i] = replacement.as_bytes()[0];
            let changed = String::from_utf8(bytes).unwrap();
            // Base64 padding bits can make two characters decode alike at a part's last position.
            prop_assume!(original != replacement.as_bytes()[0] && original != b'.');
            if let Some(claims) = k.verify(&changed) {
                let reference = k.verify(&token).unwrap();
                prop_assert_eq!(claims.jti, reference.jti);
            }
        }
    }
}
