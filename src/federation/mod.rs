//! Identity providers: OpenID Providers found by discovery (metadata and signing keys cached,
//! read again after OAUTH_DISCOVERY_REFRESH_SECONDS and when an ID token names an unknown key),
//! and the GitHub preset ([`github`]). Talks to the providers only; the sign-in flow is
//! `app::federation`. One-time flow records live in [`pending`].
pub mod github;
pub mod pending;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use openidconnect::{
    core::{CoreAuthenticationFlow, CoreClient, CoreJwsSigningAlgorithm, CoreProviderMetadata},
    http, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken, IssuerUrl,
    Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    SignatureVerificationError, TokenResponse,
};
use tokio::sync::Mutex;

use crate::{
    config::federation::{FederationConfig, ProviderConfig, ProviderKind},
    error::{ApiError, PublicError},
};

/// Answers larger than this from a provider are refused (a discovery document, keys, tokens).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Every call to a provider is bounded: a hung provider gives 503 or provider_error, not a hang.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// An ID token that names no known key makes the keys be read again, at most this often.
const KEY_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Clock skew tolerated on an ID token's `iat`.
const IAT_LEEWAY_SECONDS: i64 = 60;
/// An ID token issued longer ago than this is refused (it was made for another flow).
const IAT_MAX_AGE_SECONDS: i64 = 600;

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("unknown identity provider")]
    UnknownProvider,
    /// The provider could not be reached for its metadata: 503 at the start of a flow.
    #[error("identity provider unavailable: {0}")]
    Unavailable(String),
    /// The provider's answer was refused (bad ID token, failed exchange): `provider_error`.
    #[error("identity provider error: {0}")]
    Provider(String),
}

impl PublicError for FederationError {
    fn into_api_error(self) -> ApiError {
        match self {
            FederationError::UnknownProvider => ApiError::NotFound("identity provider"),
            FederationError::Unavailable(detail) => ApiError::Unavailable {
                what: "identity provider",
                detail,
            },
            FederationError::Provider(detail) => ApiError::Unavailable {
                what: "identity provider",
                detail,
            },
        }
    }
}

/// What a provider asserts about the person who signed in.
#[derive(Debug, Clone)]
pub struct Asserted {
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
}

/// What sessiond sends with the authorization request and checks at the callback.
pub struct Challenge {
    pub state: String,
    pub nonce: String,
    pub pkce_challenge: PkceCodeChallenge,
}

impl Challenge {
    /// Fresh random state, nonce and PKCE (S256); returns the PKCE verifier to keep.
    pub fn new(state: String) -> (Self, String) {
        let (pkce_challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let nonce = Nonce::new_random().secret().clone();
        (
            Self {
                state,
                nonce,
                pkce_challenge,
            },
            verifier.secret().clone(),
        )
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(String);

/// One request to a provider over sessiond's HTTP client (rustls; no redirects followed).
async fn send(
    client: &reqwest::Client,
    request: http::Request<Vec<u8>>,
) -> Result<http::Response<Vec<u8>>, HttpError> {
    let request = reqwest::Request::try_from(request).map_err(|e| HttpError(e.to_string()))?;
    let response = client
        .execute(request)
        .await
        .map_err(|e| HttpError(e.without_url().to_string()))?;
    let mut builder = http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        builder = builder.header(name, value);
    }
    let body = read_limited(response).await?;
    builder.body(body).map_err(|e| HttpError(e.to_string()))
}

pub(crate) async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| HttpError(e.without_url().to_string()))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(HttpError("response too large".into()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A provider's discovery document and keys, and when they were read.
struct Discovered {
    metadata: CoreProviderMetadata,
    fetched: Instant,
}

struct OidcProvider {
    config: ProviderConfig,
    issuer: IssuerUrl,
    discovered: Mutex<Option<Arc<Discovered>>>,
}

/// The configured providers, cheap to clone.
#[derive(Clone)]
pub struct Providers {
    inner: Arc<Inner>,
}

struct Inner {
    config: FederationConfig,
    http: reqwest::Client,
    oidc: HashMap<String, OidcProvider>,
}

impl Providers {
    /// Reads every OpenID Provider's discovery document: one that cannot be read is a start-up
    /// error naming the provider.
    pub async fn start(config: &FederationConfig) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(PROVIDER_TIMEOUT)
            .user_agent(concat!("sessiond/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let mut oidc = HashMap::new();
        for p in &config.providers {
            if let ProviderKind::Oidc { issuer } = &p.kind {
                let issuer = IssuerUrl::new(issuer.clone())
                    .map_err(|e| format!("provider {}: issuer URL: {e}", p.name))?;
                oidc.insert(
                    p.name.clone(),
                    OidcProvider {
                        config: p.clone(),
                        issuer,
                        discovered: Mutex::new(None),
                    },
                );
            }
        }
        let providers = Self {
            inner: Arc::new(Inner {
                config: config.clone(),
                http,
                oidc,
            }),
        };
        for (name, p) in &providers.inner.oidc {
            providers
                .refresh(p, None)
                .await
                .map_err(|e| format!("provider {name}: discovery failed: {e}"))?;
        }
        Ok(providers)
    }

    pub fn config(&self) -> &FederationConfig {
        &self.inner.config
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.inner.http
    }

    /// The provider's configuration; `UnknownProvider` for a name not configured.
    pub fn provider(&self, name: &str) -> Result<&ProviderConfig, FederationError> {
        self.inner
            .config
            .provider(name)
            .ok_or(FederationError::UnknownProvider)
    }

    /// Reads the discovery document and keys again, unless another caller did since `seen`
    /// (concurrent refreshes of one provider share one read).
    async fn refresh(
        &self,
        p: &OidcProvider,
        seen: Option<Instant>,
    ) -> Result<Arc<Discovered>, String> {
        let mut slot = p.discovered.lock().await;
        if let Some(d) = slot.as_ref() {
            if seen.is_none_or(|s| d.fetched > s) {
                return Ok(d.clone());
            }
        }
        let http = |request| send(&self.inner.http, request);
        let metadata = CoreProviderMetadata::discover_async(p.issuer.clone(), &http)
            .await
            .map_err(|e| error_chain(&e))?;
        let discovered = Arc::new(Discovered {
            metadata,
            fetched: Instant::now(),
        });
        *slot = Some(discovered.clone());
        Ok(discovered)
    }

    /// The cached discovery of a provider, read again when older than the refresh interval; a
    /// provider that cannot be read then is unavailable.
    async fn discovered(&self, p: &OidcProvider) -> Result<Arc<Discovered>, FederationError> {
        let current = p.discovered.lock().await.clone();
        match current {
            Some(d) if d.fetched.elapsed() < self.inner.config.discovery_refresh => Ok(d),
            other => self
                .refresh(p, other.map(|d| d.fetched))
                .await
                .map_err(FederationError::Unavailable),
        }
    }

    fn oidc(&self, name: &str) -> Option<&OidcProvider> {
        self.inner.oidc.get(name)
    }

    fn client(&self, p: &OidcProvider, d: &Discovered) -> Result<OidcClient, FederationError> {
        let redirect = RedirectUrl::new(self.inner.config.callback_url(&p.config.name))
            .map_err(|e| FederationError::Provider(format!("redirect URL: {e}")))?;
        let secret = String::from_utf8_lossy(p.config.client_secret.expose()).into_owned();
        Ok(CoreClient::from_provider_metadata(
            d.metadata.clone(),
            ClientId::new(p.config.client_id.clone()),
            Some(ClientSecret::new(secret)),
        )
        .set_redirect_uri(redirect))
    }

    /// Where to send the browser: the provider's authorization endpoint with sessiond's state,
    /// nonce and PKCE challenge.
    pub async fn authorize_url(
        &self,
        name: &str,
        challenge: Challenge,
    ) -> Result<String, FederationError> {
        let config = self.provider(name)?;
        if let ProviderKind::Github { .. } = config.kind {
            return github::authorize_url(self, config, challenge);
        }
        let p = self.oidc(name).ok_or(FederationError::UnknownProvider)?;
        let d = self.discovered(p).await?;
        let client = self.client(p, &d)?;
        let Challenge {
            state,
            nonce,
            pkce_challenge,
        } = challenge;
        let mut request = client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            move || CsrfToken::new(state),
            move || Nonce::new(nonce),
        );
        for scope in p.config.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, _, _) = request.set_pkce_challenge(pkce_challenge).url();
        Ok(url.to_string())
    }

    /// Exchanges the code at the provider and validates what comes back: for an OpenID
    /// Provider the ID token's signature (keys read again once when it names an unknown one),
    /// allowed algorithms, iss, aud, azp, exp, iat and nonce.
    pub async fn exchange(
        &self,
        name: &str,
        code: String,
        pkce_verifier: String,
        nonce: String,
    ) -> Result<Asserted, FederationError> {
        let config = self.provider(name)?;
        if let ProviderKind::Github { .. } = config.kind {
            return github::exchange(self, config, code, pkce_verifier).await;
        }
        let p = self.oidc(name).ok_or(FederationError::UnknownProvider)?;
        let d = self.discovered(p).await?;
        let client = self.client(p, &d)?;
        let http = |request| send(&self.inner.http, request);
        let token = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| FederationError::Provider(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier))
            .request_async(&http)
            .await
            .map_err(|e| {
                FederationError::Provider(format!("code exchange: {}", error_chain(&e)))
            })?;
        let id_token = token
            .id_token()
            .ok_or_else(|| FederationError::Provider("no ID token in the token response".into()))?;
        let nonce = Nonce::new(nonce);
        let verify = |client: &OidcClient| -> Result<Asserted, ClaimsVerificationError> {
            let now = chrono::Utc::now();
            let verifier = client
                .id_token_verifier()
                .set_allowed_algs(ALLOWED_ALGS)
                .set_issue_time_verifier_fn(move |iat| {
                    let age = (now - iat).num_seconds();
                    if age < -IAT_LEEWAY_SECONDS {
                        Err("issued in the future".into())
                    } else if age > IAT_MAX_AGE_SECONDS {
                        Err("issued too long ago".into())
                    } else {
                        Ok(())
                    }
                });
            let claims = id_token.claims(&verifier, &nonce)?;
            Ok(Asserted {
                subject: claims.subject().as_str().to_string(),
                email: claims.email().map(|e| e.as_str().to_string()),
                email_verified: claims.email_verified().unwrap_or(false),
                name: claims
                    .name()
                    .and_then(|n| n.get(None))
                    .map(|n| n.as_str().to_string()),
            })
        };
        let asserted = match verify(&client) {
            Ok(asserted) => Ok(asserted),
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                // The provider rotated its keys: read them again (not more often than
                // KEY_REFRESH_MIN_INTERVAL), then check once more.
                if d.fetched.elapsed() < KEY_REFRESH_MIN_INTERVAL {
                    tokio::time::sleep(KEY_REFRESH_MIN_INTERVAL - d.fetched.elapsed()).await;
                }
                let fresh = self
                    .refresh(p, Some(d.fetched))
                    .await
                    .map_err(FederationError::Provider)?;
                let client = self.client(p, &fresh)?;
                verify(&client).map_err(|e| {
                    FederationError::Provider(format!("ID token: {}", error_chain(&e)))
                })
            }
            Err(e) => Err(FederationError::Provider(format!(
                "ID token: {}",
                error_chain(&e)
            ))),
        }?;
        if asserted.email.is_some() {
            return Ok(asserted);
        }
        // Some providers (Okta, and any that conforms strictly to OpenID Connect Core 5.4) put
        // the scope's claims in the UserInfo response only, when an access token is issued.
        let Ok(request) = client.user_info(
            token.access_token().clone(),
            Some(openidconnect::SubjectIdentifier::new(
                asserted.subject.clone(),
            )),
        ) else {
            return Ok(asserted);
        };
        let info: openidconnect::core::CoreUserInfoClaims = request
            .request_async(&http)
            .await
            .map_err(|e| FederationError::Provider(format!("UserInfo: {}", error_chain(&e))))?;
        Ok(Asserted {
            email: info.email().map(|e| e.as_str().to_string()),
            email_verified: info.email_verified().unwrap_or(false),
            name: asserted.name.or_else(|| {
                info.name()
                    .and_then(|n| n.get(None))
                    .map(|n| n.as_str().to_string())
            }),
            subject: asserted.subject,
        })
    }
}

type OidcClient = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

/// Asymmetric algorithms only: an HMAC keyed with the client secret would let anyone holding
/// the secret mint ID tokens.
const ALLOWED_ALGS: [CoreJwsSigningAlgorithm; 8] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
];

/// An error with its causes, for logs (never for clients).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
