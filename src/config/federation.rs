//! Sign-in with identity providers: OIDC_PROVIDERS and each provider's OIDC_<NAME>_* variables,
//! the GitHub preset, PUBLIC_URL and the return-URL allow-list.
use std::time::Duration;

use super::{err, ConfigError, Secret};

/// The scopes asked of an OpenID Provider when OIDC_<NAME>_SCOPES is unset.
pub const DEFAULT_SCOPES: &str = "openid email profile";
/// The name of the GitHub preset; not available to OIDC_PROVIDERS.
pub const GITHUB: &str = "github";

#[derive(Clone, Debug)]
pub enum ProviderKind {
    /// An OpenID Provider, found through its issuer's discovery document.
    Oidc { issuer: String },
    /// GitHub: OAuth 2.0 plus its user and user-emails API (no ID token).
    Github {
        authorize_url: String,
        token_url: String,
        api_url: String,
    },
}

#[derive(Clone, Debug)]
pub struct ProviderConfig {
    /// Lower-case; the path segment of /oauth/{provider}/...
    pub name: String,
    pub display_name: String,
    pub kind: ProviderKind,
    pub client_id: String,
    pub client_secret: Secret,
    pub scopes: Vec<String>,
}

#[derive(Clone, Debug, Default)]
pub struct FederationConfig {
    /// sessiond's external base URL, without a trailing slash; callbacks derive from it.
    pub public_url: Option<String>,
    /// Exact URLs a flow may return to.
    pub return_urls: Vec<String>,
    /// A provider-verified email may sign in to the existing account holding it.
    pub link_verified_emails: bool,
    /// A linking flow's callback hands the browser a one-time `link_code`, and only the session
    /// that started the flow links with it (POST /profile/identities/{provider}/confirm).
    pub link_confirm: bool,
    pub providers: Vec<ProviderConfig>,
    /// How long a provider's discovery document and keys are used before they are read again.
    pub discovery_refresh: Duration,
}

impl FederationConfig {
    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// The redirect URI registered with the provider.
    pub fn callback_url(&self, provider: &str) -> String {
        format!(
            "{}/oauth/{provider}/callback",
            self.public_url.as_deref().unwrap_or("")
        )
    }
}

/// An http(s) URL with a host, without user info or fragment. `https` is required except on
/// loopback hosts (development and tests).
pub(super) fn check_url(var: &'static str, what: &str, url: &str) -> Result<(), ConfigError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| err(var, format!("{what}: expected an http(s) URL")))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostname = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let loopback = matches!(hostname, "localhost" | "127.0.0.1" | "[::1]");
    let ok_scheme = scheme == "https" || (scheme == "http" && loopback);
    if !ok_scheme
        || host.is_empty()
        || host.contains('@')
        || url.contains('#')
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(err(
            var,
            format!(
                "{what}: expected an https:// URL (http:// only on localhost) with a host, \
                 without user, password or fragment"
            ),
        ));
    }
    Ok(())
}

/// The variable of one provider setting, e.g. `OIDC_CORP_ISSUER` for `corp` and `ISSUER`.
pub fn provider_var(name: &str, setting: &str) -> String {
    format!(
        "OIDC_{}_{setting}",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

/// Reads the identity-provider settings. `get` returns set, non-blank values only.
pub(super) fn read(
    get: &dyn Fn(&str) -> Option<String>,
    flag: impl Fn(&'static str) -> Result<bool, ConfigError>,
    refresh_seconds: u64,
) -> Result<FederationConfig, ConfigError> {
    let mut providers = Vec::new();
    for raw in get("OIDC_PROVIDERS").unwrap_or_default().split(',') {
        let name = raw.trim().to_ascii_lowercase();
        if name.is_empty() {
            continue;
        }
        if name.len() > 32
            || !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(err(
                "OIDC_PROVIDERS",
                format!("{name:?}: a provider name is 1 to 32 letters, digits or dashes"),
            ));
        }
        if name == GITHUB {
            return Err(err(
                "OIDC_PROVIDERS",
                "github is the GitHub preset: set GITHUB_CLIENT_ID and GITHUB_CLIENT_SECRET instead",
            ));
        }
        if providers.iter().any(|p: &ProviderConfig| p.name == name) {
            return Err(err("OIDC_PROVIDERS", format!("{name:?} is listed twice")));
        }
        let required = |setting: &'static str, var: &'static str| {
            let full = provider_var(&name, setting);
            get(&full).ok_or_else(|| {
                err(
                    var,
                    format!("{full} is required for provider {name:?} (listed in OIDC_PROVIDERS)"),
                )
            })
        };
        let issuer = required("ISSUER", "OIDC_<NAME>_ISSUER")?
            .trim()
            .trim_end_matches('/')
            .to_string();
        check_url(
            "OIDC_<NAME>_ISSUER",
            &provider_var(&name, "ISSUER"),
            &issuer,
        )?;
        let client_id = required("CLIENT_ID", "OIDC_<NAME>_CLIENT_ID")?
            .trim()
            .to_string();
        let client_secret = Secret::new(
            required("CLIENT_SECRET", "OIDC_<NAME>_CLIENT_SECRET")?
                .trim()
                .as_bytes(),
        );
        let scopes = get(&provider_var(&name, "SCOPES")).unwrap_or_else(|| DEFAULT_SCOPES.into());
        let scopes: Vec<String> = scopes.split_whitespace().map(str::to_string).collect();
        if !scopes.iter().any(|s| s == "openid") {
            return Err(err(
                "OIDC_<NAME>_SCOPES",
                format!("{} must include openid", provider_var(&name, "SCOPES")),
            ));
        }
        let display_name = get(&provider_var(&name, "DISPLAY_NAME"))
            .map(|d| d.trim().to_string())
            .unwrap_or_else(|| name.clone());
        providers.push(ProviderConfig {
            name,
            display_name,
            kind: ProviderKind::Oidc { issuer },
            client_id,
            client_secret,
            scopes,
        });
    }

    let base = |var: &'static str, default: &str| -> Result<String, ConfigError> {
        let url = get(var)
            .unwrap_or_else(|| default.to_string())
            .trim()
            .trim_end_matches('/')
            .to_string();
        check_url(var, var, &url)?;
        Ok(url)
    };
    let web = base("GITHUB_WEB_URL", "https://github.com")?;
    let api = base("GITHUB_API_URL", "https://api.github.com")?;
    match (get("GITHUB_CLIENT_ID"), get("GITHUB_CLIENT_SECRET")) {
        (Some(id), Some(secret)) => {
            providers.push(ProviderConfig {
                name: GITHUB.into(),
                display_name: "GitHub".into(),
                kind: ProviderKind::Github {
                    authorize_url: format!("{web}/login/oauth/authorize"),
                    token_url: format!("{web}/login/oauth/access_token"),
                    api_url: api,
                },
                client_id: id.trim().to_string(),
                client_secret: Secret::new(secret.trim().as_bytes()),
                scopes: vec!["read:user".into(), "user:email".into()],
            });
        }
        (None, None) => {}
        (Some(_), None) => {
            return Err(err(
                "GITHUB_CLIENT_SECRET",
                "required with GITHUB_CLIENT_ID",
            ))
        }
        (None, Some(_)) => {
            return Err(err(
                "GITHUB_CLIENT_ID",
                "required with GITHUB_CLIENT_SECRET",
            ))
        }
    }

    let public_url = get("PUBLIC_URL").map(|u| u.trim().trim_end_matches('/').to_string());
    if let Some(url) = &public_url {
        check_url("PUBLIC_URL", "PUBLIC_URL", url)?;
        if url.contains('?') {
            return Err(err("PUBLIC_URL", "expected a base URL without a query"));
        }
    }
    let return_urls: Vec<String> = get("OAUTH_RETURN_URLS")
        .unwrap_or_default()
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    for url in &return_urls {
        // Custom schemes (com.example.app:/cb) serve mobile apps; https for the web.
        let ok = url.split_once(':').is_some_and(|(scheme, rest)| {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                && !rest.is_empty()
        }) && !url.contains('#')
            && !url.contains('?')
            && !url.chars().any(|c| c.is_whitespace() || c.is_control());
        if !ok {
            return Err(err(
                "OAUTH_RETURN_URLS",
                "expected comma-separated absolute URLs without query or fragment",
            ));
        }
        if url.starts_with("http") {
            check_url("OAUTH_RETURN_URLS", "OAUTH_RETURN_URLS", url)?;
        }
    }
    if !providers.is_empty() {
        if public_url.is_none() {
            return Err(err(
                "PUBLIC_URL",
                "required when identity providers are configured (the callback URLs derive from it)",
            ));
        }
        if return_urls.is_empty() {
            return Err(err(
                "OAUTH_RETURN_URLS",
                "required when identity providers are configured (where a sign-in may return to)",
            ));
        }
    }
    Ok(FederationConfig {
        public_url,
        return_urls,
        link_verified_emails: flag("OAUTH_LINK_VERIFIED_EMAILS")?,
        link_confirm: flag("OAUTH_LINK_CONFIRM")?,
        providers,
        discovery_refresh: Duration::from_secs(refresh_seconds),
    })
}
