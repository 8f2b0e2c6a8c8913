//! Asymmetric signing keys (JWT_ALGORITHM EdDSA, ES256, RS256): generation, encryption at rest,
//! the database table every pod reads, rotation, and the key set [`JwtKeys`] verifies with.
//!
//! The timeline of one algorithm's keys is read from the table alone, so every pod reaches the
//! same verdict without talking to the others: the newest key whose `activates_at` has passed
//! signs; a key is published (JWKS, verification) from its creation until its successor has
//! signed for one access-token lifetime (plus the leeway), then it is deleted a day later.
//! A rotation inserts the next `generation`, which is unique: when two pods rotate at once one
//! insert fails, and that pod simply reads the winner's key.
use std::{sync::Arc, time::Duration};

use aes_gcm::{
    aead::{Aead, KeyInit, Payload},
    Aes256Gcm, Nonce,
};
use base64::{engine::general_purpose::STANDARD, Engine};
use entities::signing_key;
use jsonwebtoken::{
    jwk::{Jwk, PublicKeyUse, ThumbprintHash},
    Algorithm, DecodingKey, EncodingKey,
};
use rand::RngCore;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, Set,
};

use super::jwt::{JwtKeys, KeySet, PublishedKey, Signer, LEEWAY_SECONDS};
use crate::config::{Config, JwtAlgorithm};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing-key database error: {0}")]
    Db(#[from] sea_orm::DbErr),
    #[error("JWT_KEY_ENCRYPTION_KEY is needed to generate or use the signing keys")]
    NoEncryptionKey,
    #[error("signing key {0} cannot be decrypted (is JWT_KEY_ENCRYPTION_KEY the one it was stored with?)")]
    Decrypt(String),
    #[error("signing key: {0}")]
    Invalid(String),
    #[error("key generation failed: {0}")]
    Generate(String),
}

pub fn jws_algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::Hs256 => Algorithm::HS256,
        JwtAlgorithm::EdDsa => Algorithm::EdDSA,
        JwtAlgorithm::Es256 => Algorithm::ES256,
        JwtAlgorithm::Rs256 => Algorithm::RS256,
    }
}

/// A private key in the DER form jsonwebtoken signs with (PKCS#8 for EdDSA and ES256, PKCS#1
/// for RS256), with its public JWK and the kid (RFC 7638 thumbprint) that names it.
pub struct KeyMaterial {
    pub kid: String,
    pub algorithm: JwtAlgorithm,
    der: Vec<u8>,
    /// The public JWK with `kid`, `alg` and `use` set, as JSON.
    pub public_jwk: String,
}

impl KeyMaterial {
    fn from_der(algorithm: JwtAlgorithm, der: Vec<u8>) -> Result<Self, KeyError> {
        let alg = jws_algorithm(algorithm);
        let mut jwk = Jwk::from_encoding_key(&encoding_key(algorithm, &der)?, alg)
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| KeyError::Invalid(e.to_string()))?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let public_jwk =
            serde_json::to_string(&jwk).map_err(|e| KeyError::Invalid(e.to_string()))?;
        Ok(Self {
            kid,
            algorithm,
            der,
            public_jwk,
        })
    }

    /// A key given as PEM (JWT_PRIVATE_KEY_FILE): PKCS#8 for EdDSA and ES256; PKCS#1 or PKCS#8
    /// for RS256.
    pub fn from_pem(algorithm: JwtAlgorithm, pem: &[u8]) -> Result<Self, KeyError> {
        let text = std::str::from_utf8(pem).map_err(|_| KeyError::Invalid("not PEM".into()))?;
        let bad = |e: &dyn std::fmt::Display| {
            KeyError::Invalid(format!("not a {} private key: {e}", algorithm.name()))
        };
        let der = match algorithm {
            JwtAlgorithm::EdDsa => {
                use ed25519_dalek::pkcs8::DecodePrivateKey;
                ed25519_pkcs8_v1(
                    &ed25519_dalek::SigningKey::from_pkcs8_pem(text)
                        .map_err(|e| bad(&e))?
                        .to_bytes(),
                )
            }
            JwtAlgorithm::Es256 => {
                use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
                p256::SecretKey::from_pkcs8_pem(text)
                    .or_else(|_| p256::SecretKey::from_sec1_pem(text))
                    .map_err(|e| bad(&e))?
                    .to_pkcs8_der()
                    .map_err(|e| bad(&e))?
                    .as_bytes()
                    .to_vec()
            }
            JwtAlgorithm::Rs256 => {
                use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
                use rsa::pkcs8::DecodePrivateKey;
                let key = rsa::RsaPrivateKey::from_pkcs8_pem(text)
                    .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(text))
                    .map_err(|e| bad(&e))?;
                key.to_pkcs1_der().map_err(|e| bad(&e))?.as_bytes().to_vec()
            }
            JwtAlgorithm::Hs256 => return Err(KeyError::Invalid("HS256 has no key file".into())),
        };
        Self::from_der(algorithm, der)
    }

    /// A fresh key. RSA takes a noticeable fraction of a second: call through
    /// [`generate_blocking`] from async code.
    pub fn generate(algorithm: JwtAlgorithm) -> Result<Self, KeyError> {
        let fail = |e: &dyn std::fmt::Display| KeyError::Generate(e.to_string());
        let der = match algorithm {
            JwtAlgorithm::EdDsa => {
                let mut seed = [0u8; 32];
                rand::rng().fill_bytes(&mut seed);
                ed25519_pkcs8_v1(&seed)
            }
            JwtAlgorithm::Es256 => {
                use p256::pkcs8::EncodePrivateKey;
                // A random scalar is out of range with probability about 2^-32: draw again.
                let key = loop {
                    let mut bytes = [0u8; 32];
                    rand::rng().fill_bytes(&mut bytes);
                    if let Ok(k) = p256::SecretKey::from_slice(&bytes) {
                        break k;
                    }
                };
                key.to_pkcs8_der()
                    .map_err(|e| fail(&e))?
                    .as_bytes()
                    .to_vec()
            }
            JwtAlgorithm::Rs256 => {
                use rsa::pkcs1::EncodeRsaPrivateKey;
                let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                    .map_err(|e| fail(&e))?;
                key.to_pkcs1_der()
                    .map_err(|e| fail(&e))?
                    .as_bytes()
                    .to_vec()
            }
            JwtAlgorithm::Hs256 => return Err(KeyError::Generate("HS256 has no key pair".into())),
        };
        Self::from_der(algorithm, der)
    }

    pub fn signer(&self) -> Result<Signer, KeyError> {
        Ok(Signer::new(
            jws_algorithm(self.algorithm),
            &self.kid,
            encoding_key(self.algorithm, &self.der)?,
        ))
    }

    /// A key set where this key alone signs and is published (benchmarks, tests, key files).
    pub fn sole_key_set(&self) -> Result<KeySet, KeyError> {
        Ok(KeySet::new(
            vec![(i64::MIN, Arc::new(self.signer()?))],
            vec![self.published(None)?],
            None,
            crate::session::now_unix(),
        ))
    }

    pub fn published(&self, until: Option<i64>) -> Result<PublishedKey, KeyError> {
        published_key(&self.kid, self.algorithm, &self.public_jwk, until)
    }
}

/// The PKCS#8 v1 form (RFC 8410: seed only, 48 bytes) that jsonwebtoken reads; ed25519-dalek
/// writes v2, with the public key appended, which it refuses.
fn ed25519_pkcs8_v1(seed: &[u8; 32]) -> Vec<u8> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    [PREFIX.as_slice(), seed].concat()
}

fn encoding_key(algorithm: JwtAlgorithm, der: &[u8]) -> Result<EncodingKey, KeyError> {
    Ok(match algorithm {
        JwtAlgorithm::EdDsa => EncodingKey::from_ed_der(der),
        JwtAlgorithm::Es256 => EncodingKey::from_ec_der(der),
        JwtAlgorithm::Rs256 => EncodingKey::from_rsa_der(der),
        JwtAlgorithm::Hs256 => return Err(KeyError::Invalid("HS256 has no key pair".into())),
    })
}

fn published_key(
    kid: &str,
    algorithm: JwtAlgorithm,
    public_jwk: &str,
    until: Option<i64>,
) -> Result<PublishedKey, KeyError> {
    let jwk: Jwk =
        serde_json::from_str(public_jwk).map_err(|e| KeyError::Invalid(format!("{kid}: {e}")))?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| KeyError::Invalid(format!("{kid}: {e}")))?;
    let json: serde_json::Value =
        serde_json::from_str(public_jwk).map_err(|e| KeyError::Invalid(format!("{kid}: {e}")))?;
    Ok(PublishedKey {
        kid: kid.to_string(),
        alg: jws_algorithm(algorithm),
        key,
        jwk: json,
        until,
    })
}

/// RSA generation on the bounded blocking pool, never on a worker or actor thread.
pub async fn generate_blocking(algorithm: JwtAlgorithm) -> Result<KeyMaterial, KeyError> {
    actix_web::web::block(move || KeyMaterial::generate(algorithm))
        .await
        .map_err(|e| KeyError::Generate(e.to_string()))?
}

/// The kid is the associated data: a ciphertext moved to another row does not decrypt.
fn aad(kid: &str) -> Vec<u8> {
    [b"sessiond/signing-key/v1:".as_slice(), kid.as_bytes()].concat()
}

fn encrypt(kek: &[u8], kid: &str, der: &[u8]) -> Result<String, KeyError> {
    let cipher = Aes256Gcm::new_from_slice(kek).map_err(|_| KeyError::NoEncryptionKey)?;
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut nonce);
    let sealed = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: der,
                aad: &aad(kid),
            },
        )
        .map_err(|_| KeyError::Invalid("encryption failed".into()))?;
    Ok(STANDARD.encode([nonce.as_slice(), &sealed].concat()))
}

fn decrypt(kek: &[u8], kid: &str, stored: &str) -> Result<Vec<u8>, KeyError> {
    let fail = || KeyError::Decrypt(kid.to_string());
    let bytes = STANDARD.decode(stored).map_err(|_| fail())?;
    if bytes.len() < 12 + 16 {
        return Err(fail());
    }
    let cipher = Aes256Gcm::new_from_slice(kek).map_err(|_| KeyError::NoEncryptionKey)?;
    let (nonce, sealed) = bytes.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| fail())?;
    cipher
        .decrypt(
            &Nonce::from(nonce),
            Payload {
                msg: sealed,
                aad: &aad(kid),
            },
        )
        .map_err(|_| fail())
}

/// Where a key stands at a moment, as `sessiond keys list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Published, signs from `activates_at` on.
    Pending,
    /// Signs.
    Active,
    /// Superseded or retired, still published while tokens it signed may live.
    Previous,
    /// No longer published (deleted a day later).
    Expired,
}

/// One row's place in the timeline.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    pub kid: String,
    pub algorithm: String,
    pub generation: i64,
    pub created_at: i64,
    pub activates_at: i64,
    pub retired_at: Option<i64>,
    /// Published until (None: while it is the newest key).
    pub published_until: Option<i64>,
    pub state: KeyState,
}

/// Timing of the key store, from the configuration.
#[derive(Clone)]
pub struct KeyPolicy {
    pub algorithm: JwtAlgorithm,
    /// sessiond generates and rotates keys (asymmetric algorithm without JWT_PRIVATE_KEY_FILE).
    pub managed: bool,
    pub kek: Option<Vec<u8>>,
    pub access_ttl: i64,
    pub rotation: i64,
    /// A new key is published this long before it signs: every verifier's cached JWKS (and
    /// every pod's poll) has seen it by then.
    pub publish_ahead: i64,
    pub poll: Duration,
    /// The first key of the algorithm in a deployment that has accounts signs this long after
    /// it was made (see [`first_key_delay`]); 0 when JWT_SECRET was generated for one process.
    pub first_key_delay: i64,
}

impl KeyPolicy {
    pub fn new(config: &Config) -> Self {
        Self {
            algorithm: config.jwt_algorithm,
            managed: config.jwt_algorithm.is_asymmetric() && config.jwt_private_key.is_none(),
            kek: config
                .jwt_key_encryption_key
                .as_ref()
                .map(|k| k.expose().to_vec()),
            access_ttl: config.access_token_ttl.as_secs() as i64,
            rotation: config.jwt_key_rotation.as_secs() as i64,
            publish_ahead: (config.access_token_ttl + config.jwks_max_age + config.jwt_key_poll)
                .as_secs() as i64,
            poll: config.jwt_key_poll,
            first_key_delay: if config.jwt_secret_generated {
                0
            } else {
                2 * config.jwt_key_poll.as_secs() as i64 + 1
            },
        }
    }

    /// How long a key stays published after it stopped signing.
    fn tail(&self) -> i64 {
        self.access_ttl + LEEWAY_SECONDS as i64
    }
}

/// The timeline of `rows` at `now`.
pub fn timeline(rows: &[signing_key::Model], policy: &KeyPolicy, now: i64) -> Vec<KeyInfo> {
    let mut infos: Vec<KeyInfo> = rows
        .iter()
        .map(|row| {
            let successor = rows
                .iter()
                .filter(|r| {
                    r.algorithm == row.algorithm
                        && r.retired_at.is_none()
                        && r.activates_at > row.activates_at
                })
                .map(|r| r.activates_at)
                .min();
            let end = match (row.retired_at, successor) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let published_until = end.map(|e| e + policy.tail());
            let state = if published_until.is_some_and(|u| u <= now) {
                KeyState::Expired
            } else if row.activates_at > now && end.is_none_or(|e| e > now) {
                KeyState::Pending
            } else if end.is_none_or(|e| e > now) {
                KeyState::Active
            } else {
                KeyState::Previous
            };
            KeyInfo {
                kid: row.kid.clone(),
                algorithm: row.algorithm.clone(),
                generation: row.generation,
                created_at: row.created_at,
                activates_at: row.activates_at,
                retired_at: row.retired_at,
                published_until,
                state,
            }
        })
        .collect();
    infos.sort_by_key(|i| i.generation);
    infos
}

pub async fn load(db: &DatabaseConnection) -> Result<Vec<signing_key::Model>, KeyError> {
    Ok(signing_key::Entity::find()
        .order_by_asc(signing_key::Column::Generation)
        .all(db)
        .await?)
}

/// Generates a key of the configured algorithm and inserts it as the next generation. `Ok(None)`
/// when another pod inserted that generation first.
async fn insert_next(
    db: &DatabaseConnection,
    policy: &KeyPolicy,
    rows: &[signing_key::Model],
    activates_at: i64,
    now: i64,
) -> Result<Option<String>, KeyError> {
    let kek = policy.kek.as_deref().ok_or(KeyError::NoEncryptionKey)?;
    let generation = rows.iter().map(|r| r.generation).max().unwrap_or(0) + 1;
    let key = generate_blocking(policy.algorithm).await?;
    let row = signing_key::ActiveModel {
        kid: Set(key.kid.clone()),
        generation: Set(generation),
        algorithm: Set(policy.algorithm.name().to_string()),
        public_jwk: Set(key.public_jwk.clone()),
        private_key: Set(encrypt(kek, &key.kid, &key.der)?),
        created_at: Set(now),
        activates_at: Set(activates_at),
        retired_at: Set(None),
    };
    match row.insert(db).await {
        Ok(_) => {
            tracing::info!(
                kid = %key.kid,
                algorithm = policy.algorithm.name(),
                generation,
                activates_at,
                "new signing key"
            );
            Ok(Some(key.kid))
        }
        Err(e) => {
            // Most likely the rotation race, lost; if not, the next poll says so again.
            tracing::debug!(cause = %e, generation, "signing key not inserted");
            Ok(None)
        }
    }
}

/// How long the first key of the algorithm waits, published, before it signs. In a deployment
/// that already has accounts, pods of the previous JWT_ALGORITHM may still run (a rolling
/// switch): they verify with the keys they read from the table, once per JWT_KEY_POLL_SECONDS,
/// so a token of a key they have not read yet would be 401 there. The key therefore signs only
/// after two poll intervals (one, and one of margin for a slow pass); meanwhile JWT_SECRET
/// (HS256), which every pod still has, keeps signing. A new deployment (no account yet) has no
/// such pods and no tokens, and one whose JWT_SECRET was generated is a single process: there
/// the first key signs at once.
async fn first_key_delay(db: &DatabaseConnection, policy: &KeyPolicy) -> Result<i64, KeyError> {
    if policy.first_key_delay == 0 {
        return Ok(0);
    }
    let has_accounts = entities::user::Entity::find().one(db).await?.is_some();
    Ok(if has_accounts {
        policy.first_key_delay
    } else {
        0
    })
}

/// One maintenance pass: with managed keys, creates the first key (signing at once, or after
/// [`first_key_delay`] during a switch) or the next one when the active key is due, published
/// `publish_ahead` before it signs; deletes keys unpublished for a day. Returns the rows after.
pub async fn maintain(
    db: &DatabaseConnection,
    policy: &KeyPolicy,
    now: i64,
) -> Result<Vec<signing_key::Model>, KeyError> {
    let mut rows = load(db).await?;
    if policy.managed {
        let name = policy.algorithm.name();
        let mine: Vec<&signing_key::Model> = rows
            .iter()
            .filter(|r| r.algorithm == name && r.retired_at.is_none())
            .collect();
        let newest = mine.iter().map(|r| r.activates_at).max();
        let due = match newest {
            None => Some(now + first_key_delay(db, policy).await?),
            Some(newest)
                if newest <= now && now >= newest + policy.rotation - policy.publish_ahead =>
            {
                Some((newest + policy.rotation).max(now + policy.publish_ahead))
            }
            Some(_) => None,
        };
        if let Some(activates_at) = due {
            insert_next(db, policy, &rows, activates_at, now).await?;
            rows = load(db).await?;
        }
    }
    let stale: Vec<String> = timeline(&rows, policy, now)
        .into_iter()
        .filter(|i| i.published_until.is_some_and(|u| u + 86_400 < now))
        .map(|i| i.kid)
        .collect();
    if !stale.is_empty() {
        signing_key::Entity::delete_many()
            .filter(signing_key::Column::Kid.is_in(stale.clone()))
            .exec(db)
            .await?;
        rows.retain(|r| !stale.contains(&r.kid));
    }
    Ok(rows)
}

/// `sessiond keys rotate`: a new key now, signing once `publish_ahead` has passed.
pub async fn rotate(
    db: &DatabaseConnection,
    policy: &KeyPolicy,
    now: i64,
) -> Result<Option<String>, KeyError> {
    if !policy.managed {
        return Err(KeyError::Invalid(
            "keys are rotated only with JWT_ALGORITHM EdDSA, ES256 or RS256 and no JWT_PRIVATE_KEY_FILE"
                .into(),
        ));
    }
    let rows = load(db).await?;
    insert_next(db, policy, &rows, now + policy.publish_ahead, now).await
}

/// `sessiond keys retire`: keys of another algorithm than JWT_ALGORITHM (all of them with
/// HS256) sign no more and leave the JWKS once their tokens have expired. The last step of an
/// algorithm switch, once every pod runs the new setting.
pub async fn retire_other_algorithms(
    db: &DatabaseConnection,
    policy: &KeyPolicy,
    now: i64,
) -> Result<u64, KeyError> {
    let result = signing_key::Entity::update_many()
        .col_expr(
            signing_key::Column::RetiredAt,
            sea_orm::sea_query::Expr::value(now),
        )
        .filter(signing_key::Column::RetiredAt.is_null())
        .filter(signing_key::Column::Algorithm.ne(policy.algorithm.name()))
        .exec(db)
        .await?;
    Ok(result.rows_affected)
}

/// The key set at `now` from the table (plus a JWT_PRIVATE_KEY_FILE key). The previous set's
/// signer is reused when it is still the one, so a poll decrypts nothing in the steady state.
pub fn key_set(
    rows: &[signing_key::Model],
    policy: &KeyPolicy,
    file: Option<&KeyMaterial>,
    previous: &KeySet,
    now: i64,
) -> Result<KeySet, KeyError> {
    let infos = timeline(rows, policy, now);
    let mut published = Vec::new();
    for info in &infos {
        let Some(row) = rows.iter().find(|r| r.kid == info.kid) else {
            continue;
        };
        if info.state == KeyState::Expired {
            continue;
        }
        let Some(algorithm) = JwtAlgorithm::parse(&row.algorithm) else {
            continue;
        };
        match published_key(&row.kid, algorithm, &row.public_jwk, info.published_until) {
            Ok(k) => published.push(k),
            Err(e) => tracing::error!(cause = %e, "a stored signing key is unusable"),
        }
    }
    let mut signers = Vec::new();
    if let Some(file) = file {
        if !published.iter().any(|p| p.kid == file.kid) {
            published.push(file.published(None)?);
        }
        signers.push((i64::MIN, Arc::new(file.signer()?)));
    } else if policy.managed {
        // The active key and any pending one: decrypted ahead, so the switch needs no poll.
        let candidates = infos.iter().filter(|i| {
            i.algorithm == policy.algorithm.name()
                && matches!(i.state, KeyState::Active | KeyState::Pending)
        });
        for active in candidates {
            let signer = match previous.signer_named(&active.kid) {
                Some(s) => s,
                None => {
                    let kek = policy.kek.as_deref().ok_or(KeyError::NoEncryptionKey)?;
                    let row = rows
                        .iter()
                        .find(|r| r.kid == active.kid)
                        .ok_or_else(|| KeyError::Invalid(active.kid.clone()))?;
                    let der = decrypt(kek, &row.kid, &row.private_key)?;
                    let material = KeyMaterial::from_der(policy.algorithm, der)?;
                    if material.kid != row.kid {
                        return Err(KeyError::Invalid(format!(
                            "{}: the private key does not match the kid",
                            row.kid
                        )));
                    }
                    Arc::new(material.signer()?)
                }
            };
            signers.push((active.activates_at, signer));
        }
        // A switch from another asymmetric algorithm, before the first key of this one signs
        // (see `first_key_delay`): the previous algorithm's key keeps signing, since the pods
        // still on it verify their own keys and (long since) no HS256 token.
        let own_active = infos
            .iter()
            .any(|i| i.algorithm == policy.algorithm.name() && i.state == KeyState::Active);
        let previous_active = infos
            .iter()
            .filter(|i| {
                i.algorithm != policy.algorithm.name()
                    && i.retired_at.is_none()
                    && i.state == KeyState::Active
            })
            .max_by_key(|i| i.activates_at);
        if let (false, Some(info)) = (own_active, previous_active) {
            match previous.signer_named(&info.kid) {
                Some(s) => signers.push((i64::MIN, s)),
                None => match other_algorithm_signer(rows, policy, &info.kid) {
                    Ok(s) => signers.push((i64::MIN, Arc::new(s))),
                    Err(e) => {
                        tracing::error!(cause = %e, "the previous algorithm's key is unusable")
                    }
                },
            }
        }
    }
    // HS256 tokens stay valid across a switch to an asymmetric algorithm until they expire:
    // for one token lifetime after the first asymmetric key signed (with a key file: after this
    // process started), then never again, so JWT_SECRET alone can no longer mint tokens. Of any
    // asymmetric algorithm: a later switch between two of them does not open HS256 again.
    let hs256_until = if !policy.algorithm.is_asymmetric() {
        None
    } else {
        let since = if file.is_some() {
            previous.started_at()
        } else {
            infos.iter().map(|i| i.activates_at).min().unwrap_or(now)
        };
        Some(since + policy.tail())
    };
    Ok(KeySet::new(
        signers,
        published,
        hs256_until,
        previous.started_at(),
    ))
}

/// The signer of a stored key of another algorithm than JWT_ALGORITHM (same encryption key).
fn other_algorithm_signer(
    rows: &[signing_key::Model],
    policy: &KeyPolicy,
    kid: &str,
) -> Result<Signer, KeyError> {
    let kek = policy.kek.as_deref().ok_or(KeyError::NoEncryptionKey)?;
    let row = rows
        .iter()
        .find(|r| r.kid == kid)
        .ok_or_else(|| KeyError::Invalid(kid.to_string()))?;
    let algorithm = JwtAlgorithm::parse(&row.algorithm)
        .ok_or_else(|| KeyError::Invalid(format!("{kid}: unknown algorithm {}", row.algorithm)))?;
    let material = KeyMaterial::from_der(algorithm, decrypt(kek, &row.kid, &row.private_key)?)?;
    if material.kid != row.kid {
        return Err(KeyError::Invalid(format!(
            "{kid}: the private key does not match the kid"
        )));
    }
    material.signer()
}

/// Keeps `jwt` in step with the table: one pass now (an error here fails the start), then one
/// per JWT_KEY_POLL_SECONDS on the current arbiter. The returned handle stops the loop.
pub async fn start(
    db: DatabaseConnection,
    config: &Config,
    jwt: JwtKeys,
) -> Result<tokio::task::JoinHandle<()>, KeyError> {
    let policy = KeyPolicy::new(config);
    let file = match &config.jwt_private_key {
        Some(f) => Some(
            KeyMaterial::from_pem(config.jwt_algorithm, f.pem.expose())
                .map_err(|e| KeyError::Invalid(format!("JWT_PRIVATE_KEY_FILE {}: {e}", f.path)))?,
        ),
        None => None,
    };
    match refresh(&db, &policy, file.as_ref(), &jwt).await {
        Ok(()) => {}
        // The schema may be behind until the migration job has run (then /ready says so):
        // HS256 signs meanwhile and the loop retries.
        Err(KeyError::Db(e)) => {
            tracing::warn!(cause = %e, "signing keys not readable yet; retrying")
        }
        Err(e) => return Err(e),
    }
    let handle = actix_web::rt::spawn(async move {
        let mut tick = tokio::time::interval(policy.poll);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = refresh(&db, &policy, file.as_ref(), &jwt).await {
                tracing::warn!(cause = %e, "signing keys not refreshed; keeping the current set");
            }
        }
    });
    Ok(handle)
}

/// One maintenance pass and the key set it leaves.
pub async fn refresh(
    db: &DatabaseConnection,
    policy: &KeyPolicy,
    file: Option<&KeyMaterial>,
    jwt: &JwtKeys,
) -> Result<(), KeyError> {
    let now = crate::session::now_unix();
    let rows = maintain(db, policy, now).await?;
    let set = key_set(&rows, policy, file, &jwt.key_set(), now)?;
    if policy.algorithm.is_asymmetric() && set.signer_kid().is_none() {
        tracing::warn!("no signing key is active yet: signing with JWT_SECRET (HS256) meanwhile");
    }
    jwt.install(set);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_sign_tokens_their_published_half_verifies() {
        for alg in [
            JwtAlgorithm::EdDsa,
            JwtAlgorithm::Es256,
            JwtAlgorithm::Rs256,
        ] {
            let key = KeyMaterial::generate(alg).unwrap();
            let signer = key.signer().unwrap();
            let published = key.published(None).unwrap();
            let token = jsonwebtoken::encode(
                &signer.header,
                &serde_json::json!({"sub": "x"}),
                &signer.key,
            )
            .unwrap();
            let mut v = jsonwebtoken::Validation::new(jws_algorithm(alg));
            v.required_spec_claims.clear();
            v.validate_exp = false;
            v.validate_aud = false;
            jsonwebtoken::decode::<serde_json::Value>(&token, &published.key, &v).unwrap();
            assert_eq!(published.jwk["kid"], key.kid.as_str());
            assert_eq!(published.jwk["alg"], alg.name());
            assert_eq!(published.jwk["use"], "sig");
            assert!(published.jwk.get("d").is_none(), "no private part");
        }
    }

    #[test]
    fn private_keys_decrypt_only_with_their_kid_and_key() {
        let kek = [7u8; 32];
        let sealed = encrypt(&kek, "a", b"secret der").unwrap();
        assert_eq!(decrypt(&kek, "a", &sealed).unwrap(), b"secret der");
        assert!(decrypt(&kek, "b", &sealed).is_err());
        assert!(decrypt(&[8u8; 32], "a", &sealed).is_err());
    }
}
