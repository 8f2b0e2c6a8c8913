//! Passkeys and security keys (WebAuthn): WEBAUTHN_RP_ID, WEBAUTHN_ORIGINS, WEBAUTHN_RP_NAME.
//! Without WEBAUTHN_RP_ID the feature is off.
use super::{err, ConfigError};

#[derive(Clone, Debug)]
pub struct WebauthnConfig {
    /// The relying party id: the domain credentials are bound to (e.g. `example.com`).
    pub rp_id: String,
    /// The exact origins (scheme, host, port) ceremonies may come from; each host is the RP id
    /// or a subdomain of it. Normalized (`https://app.example.com`, no path).
    pub origins: Vec<String>,
    /// Shown by authenticators next to the account.
    pub rp_name: String,
}

/// Reads the settings; `None` when WEBAUTHN_RP_ID is unset. `default_name` is JWT_ISSUER.
pub fn read(
    rp_id: Option<String>,
    origins: Option<String>,
    rp_name: Option<String>,
    default_name: &str,
) -> Result<Option<WebauthnConfig>, ConfigError> {
    let Some(rp_id) = rp_id else {
        if origins.is_some() {
            return Err(err(
                "WEBAUTHN_ORIGINS",
                "is set but WEBAUTHN_RP_ID is not: set both, or neither",
            ));
        }
        return Ok(None);
    };
    let rp_id = rp_id.trim().to_ascii_lowercase();
    let valid_id = !rp_id.is_empty()
        && !rp_id.starts_with('.')
        && !rp_id.ends_with('.')
        && rp_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        // An IP address cannot be a relying party id (WebAuthn asks for a domain).
        && rp_id.parse::<std::net::IpAddr>().is_err();
    if !valid_id {
        return Err(err(
            "WEBAUTHN_RP_ID",
            format!("must be a domain name such as example.com, got {rp_id:?}"),
        ));
    }
    let raw = origins.unwrap_or_else(|| format!("https://{rp_id}"));
    let mut checked = Vec::new();
    for origin in raw.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        checked.push(check_origin(&rp_id, origin)?);
    }
    if checked.is_empty() {
        return Err(err("WEBAUTHN_ORIGINS", "lists no origin"));
    }
    checked.dedup();
    let rp_name = rp_name
        .map(|n| n.trim().to_string())
        .unwrap_or_else(|| default_name.to_string());
    if rp_name.is_empty() || rp_name.len() > 64 {
        return Err(err("WEBAUTHN_RP_NAME", "must be 1 to 64 characters"));
    }
    Ok(Some(WebauthnConfig {
        rp_id,
        origins: checked,
        rp_name,
    }))
}

/// An origin is `https://host[:port]` (or `http://localhost[:port]` for development) whose host
/// is the RP id or a subdomain of it: browsers refuse any other pairing.
fn check_origin(rp_id: &str, origin: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| {
        err(
            "WEBAUTHN_ORIGINS",
            format!("{origin:?} {why} (each origin is https://<host>[:port] whose host is WEBAUTHN_RP_ID or a subdomain of it)"),
        )
    };
    let url = url::Url::parse(origin).map_err(|_| bad("is not a URL"))?;
    let host = url.domain().ok_or_else(|| bad("has no domain name"))?;
    let secure = url.scheme() == "https" || (url.scheme() == "http" && host == "localhost");
    if !secure {
        return Err(bad("must use https (http only for localhost)"));
    }
    if !(url.path() == "/" || url.path().is_empty())
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
    {
        return Err(bad("must be an origin only, without a path"));
    }
    if !(host == rp_id || host.ends_with(&format!(".{rp_id}"))) {
        return Err(bad("is not on WEBAUTHN_RP_ID"));
    }
    Ok(url.origin().ascii_serialization())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_with(
        id: Option<&str>,
        origins: Option<&str>,
    ) -> Result<Option<WebauthnConfig>, ConfigError> {
        read(
            id.map(String::from),
            origins.map(String::from),
            None,
            "sessiond",
        )
    }

    #[test]
    fn origins_must_be_on_the_relying_party() {
        let c = read_with(Some("Example.com"), None).unwrap().unwrap();
        assert_eq!(c.rp_id, "example.com");
        assert_eq!(c.origins, ["https://example.com"]);
        assert_eq!(c.rp_name, "sessiond");
        let c = read_with(
            Some("example.com"),
            Some("https://app.example.com, https://example.com:8443/"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            c.origins,
            ["https://app.example.com", "https://example.com:8443"]
        );
        assert!(read_with(Some("localhost"), Some("http://localhost:3000")).is_ok());
        for bad in [
            "https://example.org",
            "https://badexample.com",
            "http://app.example.com",
            "https://app.example.com/login",
            "not a url",
            "https://127.0.0.1",
        ] {
            let e = read_with(Some("example.com"), Some(bad)).unwrap_err();
            assert_eq!(e.var, "WEBAUTHN_ORIGINS", "{bad}");
        }
        assert_eq!(
            read_with(Some("https://example.com"), None)
                .unwrap_err()
                .var,
            "WEBAUTHN_RP_ID"
        );
        assert_eq!(
            read_with(None, Some("https://example.com"))
                .unwrap_err()
                .var,
            "WEBAUTHN_ORIGINS"
        );
        assert!(read_with(None, None).unwrap().is_none());
    }
}
