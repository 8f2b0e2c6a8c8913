//! Access tokens: JWTs with the claims docs/API.md lists, signed with HS256 (JWT_SECRET) or an
//! asymmetric key (see `keys`). Verification pins the algorithm to the key named by `kid`,
//! requires every claim, checks iss, aud, exp and nbf with a small leeway, and checks `typ`.
use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::{config::Config, session::AuthContext};

/// Clock skew tolerated on exp/nbf (RFC 8725 asks for little; ASVS for at most 30 s).
pub const LEEWAY_SECONDS: u64 = 10;
/// Longer than any token we issue (16 roles and 64 permissions of the longest names: about
/// 7.5 KiB; a unit test checks); longer headers are rejected before any parsing.
pub const MAX_TOKEN_BYTES: usize = 10 * 1024;
/// RFC 9068's `typ` of access tokens; `JWT` (what sessiond wrote before) is still accepted.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

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
    /// How the session's user last authenticated (RFC 8176 values: `pwd`, `otp`, `fed`, `hwk`,
    /// `swk`, and `mfa` when two factors were used), on every token of the session, refreshed
    /// ones too. Absent on sessions older than this claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amr: Option<Vec<String>>,
    /// The identity provider of a provider sign-in (its configured name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp: Option<String>,
    /// Unix seconds of the last authentication (the login, or POST /reauthenticate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_time: Option<i64>,
}

/// An HS256 verification key and the `kid` that names it.
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

/// The key that signs, with the header every token it signs carries.
pub struct Signer {
    pub(crate) header: Header,
    pub(crate) key: EncodingKey,
}

impl Signer {
    pub fn new(alg: Algorithm, kid: &str, key: EncodingKey) -> Self {
        let mut header = Header::new(alg);
        header.typ = Some(ACCESS_TOKEN_TYP.into());
        header.kid = Some(kid.to_string());
        Self { header, key }
    }

    fn kid(&self) -> Option<&str> {
        self.header.kid.as_deref()
    }
}

/// A public key that verifies tokens of its one algorithm and is listed in the JWKS.
pub struct PublishedKey {
    pub kid: String,
    pub alg: Algorithm,
    pub key: DecodingKey,
    /// The public JWK as published (`kid`, `alg`, `use` included).
    pub jwk: serde_json::Value,
    /// Unix time after which it verifies nothing and is no longer published (None: open).
    pub until: Option<i64>,
}

/// What the asymmetric keys look like at the moment: replaced as a whole by the key store.
pub struct KeySet {
    /// Signers and the unix time each signs from, oldest first: the newest whose time has come
    /// signs, so every pod switches to a rotated key at the same moment. None yet: HS256 with
    /// JWT_SECRET signs.
    signers: Vec<(i64, Arc<Signer>)>,
    published: Vec<PublishedKey>,
    /// With an asymmetric algorithm, HS256 tokens verify only before this unix time.
    hs256_until: Option<i64>,
    started_at: i64,
    /// The body of GET /.well-known/jwks.json.
    jwks: String,
}

impl KeySet {
    pub fn new(
        mut signers: Vec<(i64, Arc<Signer>)>,
        published: Vec<PublishedKey>,
        hs256_until: Option<i64>,
        started_at: i64,
    ) -> Self {
        let keys: Vec<&serde_json::Value> = published.iter().map(|k| &k.jwk).collect();
        let jwks = serde_json::json!({ "keys": keys }).to_string();
        signers.sort_by_key(|(from, _)| *from);
        Self {
            signers,
            published,
            hs256_until,
            started_at,
            jwks,
        }
    }

    pub(crate) fn signer_named(&self, kid: &str) -> Option<Arc<Signer>> {
        self.signers
            .iter()
            .find(|(_, s)| s.kid() == Some(kid))
            .map(|(_, s)| s.clone())
    }

    /// The asymmetric key that signs at `now`, if any.
    fn signer_at(&self, now: i64) -> Option<&Signer> {
        self.signers
            .iter()
            .rev()
            .find(|(from, _)| *from <= now)
            .map(|(_, s)| s.as_ref())
    }

    fn signer_arc_at(&self, now: i64) -> Option<Arc<Signer>> {
        self.signers
            .iter()
            .rev()
            .find(|(from, _)| *from <= now)
            .map(|(_, s)| s.clone())
    }

    pub fn signer_kid(&self) -> Option<&str> {
        self.signer_at(crate::session::now_unix())
            .and_then(|s| s.kid())
    }

    pub(crate) fn started_at(&self) -> i64 {
        self.started_at
    }
}

/// Verified tokens, keyed by the token itself. Only tokens this server signed are ever inserted, so
/// a client cannot choose what lands in it (no hash flooding), and a lookup hashes the token once
/// with a fast keyed hash instead of a SHA-256 (which cost more than the rest of the check).
type VerifiedTokens = moka::sync::Cache<Box<str>, Arc<Claims>, foldhash::fast::RandomState>;

/// Bytes of tokens the verified-token cache may hold.
const VERIFIED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// One validation per algorithm: a key verifies only tokens of its own algorithm.
#[derive(Clone)]
struct Validations {
    hs256: Validation,
    eddsa: Validation,
    es256: Validation,
    rs256: Validation,
}

impl Validations {
    fn new(config: &Config) -> Self {
        let make = |alg| {
            let mut v = Validation::new(alg);
            v.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
            v.set_issuer(&[&config.jwt_issuer]);
            v.set_audience(&[&config.jwt_audience]);
            v.validate_exp = true;
            v.validate_nbf = true;
            v.leeway = LEEWAY_SECONDS;
            v
        };
        Self {
            hs256: make(Algorithm::HS256),
            eddsa: make(Algorithm::EdDSA),
            es256: make(Algorithm::ES256),
            rs256: make(Algorithm::RS256),
        }
    }

    fn of(&self, alg: Algorithm) -> Option<&Validation> {
        match alg {
            Algorithm::HS256 => Some(&self.hs256),
            Algorithm::EdDSA => Some(&self.eddsa),
            Algorithm::ES256 => Some(&self.es256),
            Algorithm::RS256 => Some(&self.rs256),
            _ => None,
        }
    }
}

/// Clones share the cache of verified tokens and the key set.
#[derive(Clone)]
pub struct JwtKeys {
    verified: VerifiedTokens,
    /// HS256 with JWT_SECRET: signs when no asymmetric key does.
    hs_signer: Arc<Signer>,
    current: VerifyKey,
    /// JWT_SECRET_PREVIOUS: verifies tokens signed before a rotation; never signs.
    previous: Option<VerifyKey>,
    set: Arc<ArcSwap<KeySet>>,
    validations: Arc<Validations>,
    issuer: String,
    audience: String,
    access_ttl: Duration,
    /// Asymmetric signatures running at once on the blocking pool (see [`JwtKeys::issue_async`]).
    signing_slots: Arc<tokio::sync::Semaphore>,
}

#[derive(Debug, thiserror::Error)]
#[error("token signing failed")]
pub struct SignError;

impl JwtKeys {
    /// HS256 keys from the configuration; asymmetric keys arrive with [`JwtKeys::install`]
    /// (the key store does it before the server serves).
    pub fn new(config: &Config) -> Self {
        let secret = config.jwt_secret.expose();
        let current = VerifyKey::new(secret);
        let hs_signer = Arc::new(Signer::new(
            Algorithm::HS256,
            &current.kid,
            EncodingKey::from_secret(secret),
        ));
        Self {
            verified: moka::sync::Cache::<Box<str>, Arc<Claims>>::builder()
                .time_to_live(Duration::from_secs(60))
                .weigher(|token, _| token.len().try_into().unwrap_or(u32::MAX))
                .max_capacity(VERIFIED_CACHE_BYTES)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            hs_signer,
            current,
            previous: config
                .jwt_secret_previous
                .as_ref()
                .map(|s| VerifyKey::new(s.expose())),
            set: Arc::new(ArcSwap::from_pointee(KeySet::new(
                Vec::new(),
                Vec::new(),
                None,
                crate::session::now_unix(),
            ))),
            validations: Arc::new(Validations::new(config)),
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            access_ttl: config.access_token_ttl,
            // As many signatures at once as there are CPUs: more would only queue on the
            // blocking pool's threads instead of here, where waiting costs no thread.
            signing_slots: Arc::new(tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
        }
    }

    /// Replaces the asymmetric keys (every clone sees the new set).
    pub fn install(&self, set: KeySet) {
        self.set.store(Arc::new(set));
    }

    pub fn key_set(&self) -> Arc<KeySet> {
        self.set.load_full()
    }

    /// The JWKS document: the published public keys (none with HS256 alone).
    pub fn jwks(&self) -> String {
        self.set.load().jwks.clone()
    }

    /// The kid that signs new tokens now.
    pub fn signing_kid(&self) -> String {
        let set = self.set.load();
        set.signer_kid()
            .or(self.hs_signer.kid())
            .unwrap_or_default()
            .to_string()
    }

    /// Signs an access token for the session; it never outlives the session. Deterministic in
    /// its inputs for one signing key (HS256, Ed25519, RFC 6979 ECDSA and PKCS#1 v1.5 RSA all
    /// are; fixed claim order), which lets a refresh replayed within the grace window return the
    /// very same token. Returns the token and its lifetime in seconds.
    pub fn issue(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        access: &super::Access,
        session_expires_at: i64,
        now: i64,
        jti: Uuid,
    ) -> Result<(String, i64), SignError> {
        let claims = self.claims(
            user_id,
            session_id,
            access,
            session_expires_at,
            now,
            jti,
            None,
        );
        let set = self.set.load();
        let signer = set.signer_at(now).unwrap_or(&self.hs_signer);
        let token = encode(&signer.header, &claims, &signer.key).map_err(|_| SignError)?;
        Ok((token, claims.exp - now))
    }

    /// [`Self::issue`] for request handlers, saying how the session's user authenticated
    /// (`amr`, `auth_time`, `idp`). An asymmetric signature (RS256 about
    /// 2 ms, ES256 about 0.6 ms, EdDSA less, on this machine) runs on the blocking pool, at most
    /// one per CPU at once, so logins and refreshes never stall an actix worker; HS256
    /// (microseconds) is signed inline.
    #[allow(clippy::too_many_arguments)]
    pub async fn issue_async(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        access: &super::Access,
        session_expires_at: i64,
        now: i64,
        jti: Uuid,
        auth: Option<&AuthContext>,
    ) -> Result<(String, i64), SignError> {
        let claims = self.claims(
            user_id,
            session_id,
            access,
            session_expires_at,
            now,
            jti,
            auth,
        );
        let signer = self
            .set
            .load()
            .signer_arc_at(now)
            .unwrap_or_else(|| self.hs_signer.clone());
        let lifetime = claims.exp - now;
        if signer.header.alg == Algorithm::HS256 {
            let token = encode(&signer.header, &claims, &signer.key).map_err(|_| SignError)?;
            return Ok((token, lifetime));
        }
        let _slot = self.signing_slots.acquire().await.map_err(|_| SignError)?;
        let token = tokio::task::spawn_blocking(move || {
            encode(&signer.header, &claims, &signer.key).map_err(|_| SignError)
        })
        .await
        .map_err(|_| SignError)??;
        Ok((token, lifetime))
    }

    #[allow(clippy::too_many_arguments)]
    fn claims(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        access: &super::Access,
        session_expires_at: i64,
        now: i64,
        jti: Uuid,
        auth: Option<&AuthContext>,
    ) -> Claims {
        let exp = (now + self.access_ttl.as_secs() as i64).min(session_expires_at);
        Claims {
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
            amr: auth.filter(|a| !a.amr.is_empty()).map(|a| a.amr.clone()),
            idp: auth.and_then(|a| a.idp.clone()),
            auth_time: auth.map(|a| a.auth_time).filter(|t| *t > 0),
        }
    }

    /// `None` for anything that is not a valid access token of this server; the reason is not
    /// told to the client.
    ///
    /// A token that verified once is remembered for a minute: a client presents the same token on
    /// every request, and a lookup costs a fraction of parsing and checking it again. Only the
    /// time claims can change their verdict, so they are checked again on every hit. Revocation
    /// is the session check's job. Holding the token in memory adds nothing for an attacker who
    /// can read this process: it also holds the key that signs them.
    pub fn verify(&self, token: &str) -> Option<Arc<Claims>> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let now = crate::session::now_unix();
        let leeway = LEEWAY_SECONDS as i64;
        if let Some(claims) = self.verified.get(token) {
            return (claims.nbf - leeway <= now && now < claims.exp + leeway).then_some(claims);
        }
        let claims = Arc::new(self.verify_uncached(token)?);
        self.verified.insert(token.into(), claims.clone());
        Some(claims)
    }

    /// The full check, without the verified-token cache (benchmarks compare the two).
    pub fn verify_uncached(&self, token: &str) -> Option<Claims> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
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
        // RFC 9068 4: `at+jwt` (media types compare case-insensitively, the `application/`
        // prefix may be there); `JWT` from before the upgrade until those tokens expire.
        let typ = header.typ.as_deref()?;
        let typ = typ
            .get(..12)
            .filter(|p| p.eq_ignore_ascii_case("application/"))
            .map_or(typ, |_| &typ[12..]);
        if !(typ == "JWT" || typ.eq_ignore_ascii_case(ACCESS_TOKEN_TYP)) {
            return None;
        }
        let validation = self.validations.of(header.alg)?;
        if header.alg == Algorithm::HS256 {
            return self.verify_hs256(token, header.kid.as_deref(), validation);
        }
        // Asymmetric: the kid must name a published key of exactly this algorithm.
        let set = self.set.load();
        let now = crate::session::now_unix();
        let key = set
            .published
            .iter()
            .find(|k| Some(k.kid.as_str()) == header.kid.as_deref())?;
        if key.alg != header.alg || key.until.is_some_and(|u| u <= now) {
            return None;
        }
        decode::<Claims>(token, &key.key, validation)
            .ok()
            .map(|d| d.claims)
    }

    fn verify_hs256(
        &self,
        token: &str,
        kid: Option<&str>,
        validation: &Validation,
    ) -> Option<Claims> {
        let hs256_until = self.set.load().hs256_until;
        if hs256_until.is_some_and(|u| u <= crate::session::now_unix()) {
            return None;
        }
        let keys: Vec<&VerifyKey> = match kid {
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
        let claims = keys
            .into_iter()
            .find_map(|k| decode::<Claims>(token, &k.key, validation).ok())
            .map(|data| data.claims)?;
        // After a switch away from HS256, no HS256 token may outlive the window.
        if hs256_until.is_some_and(|u| claims.exp > u) {
            return None;
        }
        Some(claims)
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

    /// The request path signs asymmetric tokens on the blocking pool: the very token the inline
    /// path makes (a replayed refresh relies on it), for every algorithm, verifying here.
    #[actix_web::test]
    async fn tokens_signed_off_the_worker_are_the_inline_ones() {
        use crate::{auth::keys::KeyMaterial, config::JwtAlgorithm};
        let k = keys();
        let access = crate::auth::Access::new(vec!["user".into()], vec![]);
        let (uid, sid, jti, now) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            crate::session::now_unix(),
        );
        for alg in [
            None,
            Some(JwtAlgorithm::EdDsa),
            Some(JwtAlgorithm::Es256),
            Some(JwtAlgorithm::Rs256),
        ] {
            if let Some(alg) = alg {
                k.install(KeyMaterial::generate(alg).unwrap().sole_key_set().unwrap());
            }
            let inline = k.issue(uid, sid, &access, now + 3600, now, jti).unwrap();
            let pooled = k
                .issue_async(uid, sid, &access, now + 3600, now, jti, None)
                .await
                .unwrap();
            assert_eq!(inline, pooled, "{alg:?}");
            assert!(k.verify(&pooled.0).is_some(), "{alg:?}");
        }
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
