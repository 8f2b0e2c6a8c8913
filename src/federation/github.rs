//! The GitHub preset: OAuth 2.0 (with PKCE) on GitHub's web URL, then its REST API's `GET /user`
//! (the stable numeric id is the subject) and `GET /user/emails` (only the primary address, and
//! only when GitHub has verified it). GitHub issues no ID token.
use openidconnect::url::Url;
use serde::Deserialize;

use super::{read_limited, Asserted, Challenge, FederationError, Providers};
use crate::config::federation::{ProviderConfig, ProviderKind};

const API_VERSION: &str = "2022-11-28";

fn endpoints(config: &ProviderConfig) -> Result<(&str, &str, &str), FederationError> {
    match &config.kind {
        ProviderKind::Github {
            authorize_url,
            token_url,
            api_url,
        } => Ok((authorize_url, token_url, api_url)),
        ProviderKind::Oidc { .. } => Err(FederationError::UnknownProvider),
    }
}

pub(super) fn authorize_url(
    providers: &Providers,
    config: &ProviderConfig,
    challenge: Challenge,
) -> Result<String, FederationError> {
    let (authorize, _, _) = endpoints(config)?;
    let mut url = Url::parse(authorize).map_err(|e| FederationError::Provider(e.to_string()))?;
    url.query_pairs_mut()
        .append_pair("client_id", &config.client_id)
        .append_pair(
            "redirect_uri",
            &providers.config().callback_url(&config.name),
        )
        .append_pair("scope", &config.scopes.join(" "))
        .append_pair("state", &challenge.state)
        .append_pair("code_challenge", challenge.pkce_challenge.as_str())
        .append_pair("code_challenge_method", "S256")
        .append_pair("allow_signup", "true");
    Ok(url.to_string())
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct GithubUser {
    id: u64,
    name: Option<String>,
}

#[derive(Deserialize)]
struct GithubEmail {
    email: String,
    primary: bool,
    verified: bool,
}

async fn get_json<T: for<'de> Deserialize<'de>>(
    providers: &Providers,
    url: String,
    token: &str,
) -> Result<T, FederationError> {
    let response = providers
        .http()
        .get(url)
        .bearer_auth(token)
        .header("Accept", "application/vnd.github+json")
        .header("X-GitHub-Api-Version", API_VERSION)
        .send()
        .await
        .map_err(|e| FederationError::Provider(e.without_url().to_string()))?;
    let status = response.status();
    let body = read_limited(response)
        .await
        .map_err(|e| FederationError::Provider(e.to_string()))?;
    if !status.is_success() {
        return Err(FederationError::Provider(format!("GitHub API: {status}")));
    }
    serde_json::from_slice(&body)
        .map_err(|e| FederationError::Provider(format!("GitHub API answer: {e}")))
}

pub(super) async fn exchange(
    providers: &Providers,
    config: &ProviderConfig,
    code: String,
    pkce_verifier: String,
) -> Result<Asserted, FederationError> {
    let (_, token_url, api) = endpoints(config)?;
    let secret = String::from_utf8_lossy(config.client_secret.expose()).into_owned();
    let redirect = providers.config().callback_url(&config.name);
    let response = providers
        .http()
        .post(token_url)
        .header("Accept", "application/json")
        .form(&[
            ("client_id", config.client_id.as_str()),
            ("client_secret", secret.as_str()),
            ("code", code.as_str()),
            ("redirect_uri", redirect.as_str()),
            ("code_verifier", pkce_verifier.as_str()),
        ])
        .send()
        .await
        .map_err(|e| FederationError::Provider(e.without_url().to_string()))?;
    let body = read_limited(response)
        .await
        .map_err(|e| FederationError::Provider(e.to_string()))?;
    let answer: TokenAnswer = serde_json::from_slice(&body)
        .map_err(|e| FederationError::Provider(format!("GitHub token answer: {e}")))?;
    let token = match answer {
        TokenAnswer {
            access_token: Some(t),
            ..
        } => t,
        TokenAnswer { error, .. } => {
            return Err(FederationError::Provider(format!(
                "GitHub refused the code: {}",
                error.unwrap_or_else(|| "no access token".into())
            )))
        }
    };
    let user: GithubUser = get_json(providers, format!("{api}/user"), &token).await?;
    let emails: Vec<GithubEmail> =
        get_json(providers, format!("{api}/user/emails"), &token).await?;
    let primary = emails.into_iter().find(|e| e.primary);
    Ok(Asserted {
        subject: user.id.to_string(),
        email_verified: primary.as_ref().is_some_and(|e| e.verified),
        email: primary.map(|e| e.email),
        name: user.name,
    })
}
