//! Access tokens: HS256 JWTs with the claims API.md lists. Verification pins the algorithm,
//! requires every claim, checks iss, aud, exp and nbf with a small leeway, and checks `typ`.
use std::time::Duration;

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::Config;

/// Clock skew tolerated on exp/nbf (RFC 8725 asks for little; ASVS for at most 30 s).
pub const LEEWAY_SECONDS: u64 = 10;
/// Longer than any token we issue; longer headers are rejected before any parsing.
pub const MAX_TOKEN_BYTES: usize = 4096;

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
}

pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
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
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some("JWT".into());
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
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
        roles: Vec<String>,
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
            roles,
        };
        let token = encode(&self.header, &claims, &self.encoding).map_err(|_| SignError)?;
        Ok((token, exp - now))
    }

    /// `None` for anything that is not a valid access token of this server; the reason is not
    /// told to the client.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        if token.len() > MAX_TOKEN_BYTES {
            return None;
        }
        let data = decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        if data.header.typ.as_deref() != Some("JWT") {
            return None;
        }
        Some(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};

    fn keys() -> JwtKeys {
        let secret = "k".repeat(40);
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
                vec!["user".into()],
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
    fn access_token_never_outlives_its_session() {
        let k = keys();
        let now = crate::session::now_unix();
        let (_, ttl) = k
            .issue(
                Uuid::new_v4(),
                Uuid::new_v4(),
                vec![],
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
                vec![],
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
