//! Refresh tokens: 256 random bits, prefixed with the user and session ids so any pod can find
//! the session's Redis key (hash-tagged by user) without an extra index. Only the SHA-256 of a
//! token is stored.
//!
//! During the reuse grace window a parallel request that presents the just-rotated token gets
//! the same successor. The successor's random part is kept "sealed" with a one-time pad derived
//! from the token it replaced, so only a holder of that previous token can open it: nothing
//! usable is at rest in Redis.
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand::RngCore;
use sha2::{Digest, Sha256};
use uuid::Uuid;

const RAW_LEN: usize = 16 + 16 + 32;
/// base64url without padding of 64 bytes.
const ENCODED_LEN: usize = 86;

#[derive(Clone, PartialEq, Eq)]
pub struct RefreshToken {
    pub user_id: Uuid,
    pub session_id: Uuid,
    secret: [u8; 32],
}

impl std::fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RefreshToken({}, ***)", self.session_id)
    }
}

impl RefreshToken {
    pub fn generate(user_id: Uuid, session_id: Uuid) -> Self {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        Self {
            user_id,
            session_id,
            secret,
        }
    }

    pub fn encode(&self) -> String {
        let mut raw = [0u8; RAW_LEN];
        raw[..16].copy_from_slice(self.user_id.as_bytes());
        raw[16..32].copy_from_slice(self.session_id.as_bytes());
        raw[32..].copy_from_slice(&self.secret);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// `None` for anything that is not shaped like one of our tokens.
    pub fn parse(token: &str) -> Option<Self> {
        if token.len() != ENCODED_LEN {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        let raw: [u8; RAW_LEN] = raw.try_into().ok()?;
        let id = |b: &[u8]| Uuid::from_slice(b).ok();
        Some(Self {
            user_id: id(&raw[..16])?,
            session_id: id(&raw[16..32])?,
            secret: raw[32..].try_into().ok()?,
        })
    }

    /// What is stored: hex SHA-256 of the encoded token.
    pub fn hash(&self) -> String {
        hex::encode(Sha256::digest(self.encode().as_bytes()))
    }

    fn pad(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"sessiond/refresh-successor/v1");
        h.update(self.encode().as_bytes());
        h.finalize().into()
    }

    /// The successor's secret, sealed with a pad only this token can derive (each token seals
    /// exactly one successor, so the pad is never reused).
    pub fn seal(&self, successor: &RefreshToken) -> String {
        let pad = self.pad();
        let sealed: Vec<u8> = successor
            .secret
            .iter()
            .zip(pad)
            .map(|(s, p)| s ^ p)
            .collect();
        hex::encode(sealed)
    }

    /// Opens what [`seal`](Self::seal) produced when called on this same token.
    pub fn unseal(&self, sealed: &str) -> Option<RefreshToken> {
        let bytes = hex::decode(sealed).ok()?;
        let bytes: [u8; 32] = bytes.try_into().ok()?;
        let pad = self.pad();
        let mut secret = [0u8; 32];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = bytes[i] ^ pad[i];
        }
        Some(RefreshToken {
            user_id: self.user_id,
            session_id: self.session_id,
            secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let t = RefreshToken::generate(Uuid::new_v4(), Uuid::new_v4());
        let encoded = t.encode();
        assert_eq!(encoded.len(), ENCODED_LEN);
        assert_eq!(RefreshToken::parse(&encoded), Some(t.clone()));
        assert_eq!(t.hash().len(), 64);
        assert!(RefreshToken::parse("garbage").is_none());
        assert!(RefreshToken::parse(&"!".repeat(ENCODED_LEN)).is_none());
        assert!(RefreshToken::parse(&format!("{encoded}A")).is_none());
    }

    #[test]
    fn only_the_previous_token_opens_its_successor() {
        let (u, s) = (Uuid::new_v4(), Uuid::new_v4());
        let (prev, next, other) = (
            RefreshToken::generate(u, s),
            RefreshToken::generate(u, s),
            RefreshToken::generate(u, s),
        );
        let sealed = prev.seal(&next);
        assert_eq!(prev.unseal(&sealed), Some(next.clone()));
        assert_ne!(other.unseal(&sealed), Some(next));
        assert!(!sealed.contains(&hex::encode(prev.secret)));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parse_never_panics_and_round_trips(token in ".{0,200}") {
            if let Some(t) = RefreshToken::parse(&token) {
                prop_assert_eq!(RefreshToken::parse(&t.encode()), Some(t));
            }
        }
    }
}
