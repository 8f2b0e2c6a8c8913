//! HTTPS served by the process itself (rustls), for deployments without a TLS-terminating load
//! balancer: TLS_CERT_FILE (PEM certificate chain, leaf first) and TLS_KEY_FILE (PEM private key:
//! PKCS#8, PKCS#1 or SEC1), both or neither. Loaded and checked with the rest of the
//! configuration, so `sessiond check-config` catches an unreadable file or a key that does not
//! match the certificate, and every error names the variable it came from.
use std::{fmt, sync::Arc};

use rustls::{crypto::ring, ServerConfig};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use super::ConfigError;

#[derive(Clone)]
pub struct Tls {
    pub cert_file: String,
    pub key_file: String,
    server_config: Arc<ServerConfig>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

impl Tls {
    /// `None` when neither variable is set: plain HTTP.
    pub fn from_env(
        cert_file: Option<String>,
        key_file: Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        match (cert_file, key_file) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(err("TLS_KEY_FILE", "required when TLS_CERT_FILE is set")),
            (None, Some(_)) => Err(err("TLS_CERT_FILE", "required when TLS_KEY_FILE is set")),
            (Some(cert), Some(key)) => Self::load(cert, key).map(Some),
        }
    }

    pub fn load(cert_file: String, key_file: String) -> Result<Self, ConfigError> {
        let certs = CertificateDer::pem_file_iter(&cert_file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| err("TLS_CERT_FILE", format!("cannot read {cert_file:?}: {e}")))?;
        if certs.is_empty() {
            return Err(err(
                "TLS_CERT_FILE",
                format!("{cert_file:?} holds no PEM CERTIFICATE block"),
            ));
        }
        let key = PrivateKeyDer::from_pem_file(&key_file).map_err(|e| {
            err(
                "TLS_KEY_FILE",
                format!("cannot read a PEM private key from {key_file:?}: {e}"),
            )
        })?;
        // An explicit provider: ring is what the dependency tree already builds (sqlx), and a
        // process-wide default would be ambiguous when another crate enables aws-lc-rs too.
        let server_config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| err("TLS_CERT_FILE", e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                err(
                    "TLS_KEY_FILE",
                    format!("unusable with the certificate in TLS_CERT_FILE: {e}"),
                )
            })?;
        Ok(Self {
            cert_file,
            key_file,
            server_config: Arc::new(server_config),
        })
    }

    /// What the HTTP server is given (actix-http sets the ALPN protocols itself).
    pub fn server_config(&self) -> ServerConfig {
        (*self.server_config).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_or_neither_and_errors_name_the_variable() {
        assert!(Tls::from_env(None, None).unwrap().is_none());
        let e = Tls::from_env(Some("cert.pem".into()), None).unwrap_err();
        assert_eq!(e.var, "TLS_KEY_FILE");
        let e = Tls::from_env(None, Some("key.pem".into())).unwrap_err();
        assert_eq!(e.var, "TLS_CERT_FILE");
        let e = Tls::from_env(
            Some("/nonexistent/cert.pem".into()),
            Some("/nonexistent/key.pem".into()),
        )
        .unwrap_err();
        assert_eq!(e.var, "TLS_CERT_FILE");
    }
}
