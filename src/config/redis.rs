//! Where Redis is and how to talk to it: exactly one topology (REDIS_URL, REDIS_SENTINEL_URLS
//! with REDIS_SENTINEL_MASTER, or REDIS_CLUSTER_URLS), the TLS files for rediss:// (a private CA,
//! a client certificate for mutual TLS), and how many replicas must acknowledge a revocation.
//! The files are read here, at start, so an unreadable or invalid PEM stops the server with an
//! error naming its variable (and `sessiond check-config` catches it).
use std::{fmt, time::Duration};

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

use super::{err, mask_url_password, ConfigError};

/// The Redis deployment the server talks to.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTopology {
    /// One node (or a managed primary endpoint): REDIS_URL.
    Single { url: String },
    /// A master found through Sentinel: REDIS_SENTINEL_URLS and REDIS_SENTINEL_MASTER. The
    /// credentials and scheme of the sentinel URLs are used for the data nodes too.
    Sentinel { urls: Vec<String>, master: String },
    /// Redis Cluster seed nodes: REDIS_CLUSTER_URLS.
    Cluster { urls: Vec<String> },
}

impl RedisTopology {
    /// The variable that configured it, for error messages.
    pub fn var(&self) -> &'static str {
        match self {
            Self::Single { .. } => "REDIS_URL",
            Self::Sentinel { .. } => "REDIS_SENTINEL_URLS",
            Self::Cluster { .. } => "REDIS_CLUSTER_URLS",
        }
    }

    pub fn urls(&self) -> Vec<&str> {
        match self {
            Self::Single { url } => vec![url.as_str()],
            Self::Sentinel { urls, .. } | Self::Cluster { urls } => {
                urls.iter().map(String::as_str).collect()
            }
        }
    }

    /// rediss:// (every URL of a topology has the same scheme).
    pub fn is_tls(&self) -> bool {
        self.urls().iter().any(|u| u.starts_with("rediss://"))
    }

    /// For logs: the URLs with their passwords masked.
    pub fn describe(&self) -> String {
        let urls = self
            .urls()
            .iter()
            .map(|u| mask_url_password(u))
            .collect::<Vec<_>>()
            .join(",");
        match self {
            Self::Single { .. } => urls,
            Self::Sentinel { master, .. } => format!("sentinel {urls} master {master}"),
            Self::Cluster { .. } => format!("cluster {urls}"),
        }
    }
}

/// Passwords never reach `Debug` output.
impl fmt::Debug for RedisTopology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The TLS material for rediss:// beyond the system roots, read at start.
#[derive(Clone, Default)]
pub struct RedisTls {
    pub ca_file: Option<String>,
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
    /// The PEM bytes of the files above, checked to parse.
    pub ca_pem: Option<Vec<u8>>,
    pub client_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTls")
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .finish_non_exhaustive()
    }
}

impl RedisTls {
    pub fn load(
        ca_file: Option<String>,
        client_cert_file: Option<String>,
        client_key_file: Option<String>,
    ) -> Result<Self, ConfigError> {
        let ca_pem = match &ca_file {
            Some(path) => Some(read_certs("REDIS_CA_FILE", path)?),
            None => None,
        };
        let client_pem = match (&client_cert_file, &client_key_file) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(err(
                    "REDIS_CLIENT_KEY_FILE",
                    "required when REDIS_CLIENT_CERT_FILE is set",
                ))
            }
            (None, Some(_)) => {
                return Err(err(
                    "REDIS_CLIENT_CERT_FILE",
                    "required when REDIS_CLIENT_KEY_FILE is set",
                ))
            }
            (Some(cert), Some(key)) => {
                let cert = read_certs("REDIS_CLIENT_CERT_FILE", cert)?;
                let bytes = read("REDIS_CLIENT_KEY_FILE", key)?;
                PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
                    err(
                        "REDIS_CLIENT_KEY_FILE",
                        format!("no PEM private key in {key:?}: {e}"),
                    )
                })?;
                Some((cert, bytes))
            }
        };
        Ok(Self {
            ca_file,
            client_cert_file,
            client_key_file,
            ca_pem,
            client_pem,
        })
    }

    pub fn is_set(&self) -> bool {
        self.ca_pem.is_some() || self.client_pem.is_some()
    }
}

fn read(var: &'static str, path: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| err(var, format!("cannot read {path:?}: {e}")))
}

/// The file's bytes, once they are known to hold at least one PEM certificate.
fn read_certs(var: &'static str, path: &str) -> Result<Vec<u8>, ConfigError> {
    let bytes = read(var, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(var, format!("invalid PEM in {path:?}: {e}")))?;
    if certs.is_empty() {
        return Err(err(var, format!("{path:?} holds no PEM CERTIFICATE block")));
    }
    Ok(bytes)
}

/// Everything `Redis::connect` needs to reach the deployment's Redis.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    pub topology: RedisTopology,
    pub tls: RedisTls,
    /// Bound on every call (REDIS_TIMEOUT_MS).
    pub timeout: Duration,
    /// Replicas that must acknowledge a revocation (REDIS_WAIT_REPLICAS); `None`: 1 when the
    /// master has replicas at start, else 0.
    pub wait_replicas: Option<u32>,
    pub wait_timeout: Duration,
}

impl RedisSettings {
    /// One node, no TLS files, no WAIT (tests and benchmarks).
    pub fn single(url: &str, timeout: Duration) -> Self {
        Self {
            topology: RedisTopology::Single {
                url: url.to_string(),
            },
            tls: RedisTls::default(),
            timeout,
            wait_replicas: None,
            wait_timeout: Duration::from_millis(500),
        }
    }
}

fn check_url(var: &'static str, url: &str) -> Result<(), ConfigError> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(err(var, "expected redis:// or rediss:// URLs"));
    }
    ::redis::Client::open(url)
        .map(|_| ())
        .map_err(|_| err(var, "not a valid redis:// or rediss:// URL"))
}

/// Comma-separated URLs; a comma not followed by a new `scheme://` belongs to the URL before it
/// (a password may contain one).
pub fn split_urls(value: &str) -> Vec<String> {
    let mut items: Vec<String> = Vec::new();
    for part in value.split(',') {
        match items.last_mut() {
            Some(last) if !part.contains("://") && !part.trim().is_empty() => {
                last.push(',');
                last.push_str(part);
            }
            _ => items.push(part.to_string()),
        }
    }
    items
}

/// Comma-separated URLs of one scheme.
fn url_list(var: &'static str, raw: &str) -> Result<Vec<String>, ConfigError> {
    let urls: Vec<String> = split_urls(raw)
        .iter()
        .map(|u| u.trim())
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err(err(
            var,
            "expected comma-separated redis:// or rediss:// URLs",
        ));
    }
    for url in &urls {
        check_url(var, url)?;
    }
    let tls = urls.iter().filter(|u| u.starts_with("rediss://")).count();
    if tls != 0 && tls != urls.len() {
        return Err(err(var, "mixes redis:// and rediss:// URLs"));
    }
    Ok(urls)
}

/// Exactly one of REDIS_URL, REDIS_SENTINEL_URLS, REDIS_CLUSTER_URLS (or none: in-process).
pub fn topology(
    url: Option<String>,
    sentinel_urls: Option<String>,
    sentinel_master: Option<String>,
    cluster_urls: Option<String>,
) -> Result<Option<RedisTopology>, ConfigError> {
    let set: Vec<&str> = [
        ("REDIS_URL", url.is_some()),
        ("REDIS_SENTINEL_URLS", sentinel_urls.is_some()),
        ("REDIS_CLUSTER_URLS", cluster_urls.is_some()),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(name, _)| *name)
    .collect();
    if set.len() > 1 {
        return Err(err(
            set[1],
            format!(
                "set together with {}: set exactly one of REDIS_URL, REDIS_SENTINEL_URLS and \
                 REDIS_CLUSTER_URLS",
                set[0]
            ),
        ));
    }
    if sentinel_master.is_some() && sentinel_urls.is_none() {
        return Err(err(
            "REDIS_SENTINEL_MASTER",
            "only meaningful with REDIS_SENTINEL_URLS",
        ));
    }
    if let Some(url) = url {
        check_url("REDIS_URL", &url)?;
        return Ok(Some(RedisTopology::Single { url }));
    }
    if let Some(raw) = sentinel_urls {
        let urls = url_list("REDIS_SENTINEL_URLS", &raw)?;
        let master = sentinel_master
            .map(|m| m.trim().to_string())
            .ok_or_else(|| {
                err(
                    "REDIS_SENTINEL_MASTER",
                    "required with REDIS_SENTINEL_URLS (the master's name in the sentinels' \
                     configuration)",
                )
            })?;
        return Ok(Some(RedisTopology::Sentinel { urls, master }));
    }
    if let Some(raw) = cluster_urls {
        let urls = url_list("REDIS_CLUSTER_URLS", &raw)?;
        return Ok(Some(RedisTopology::Cluster { urls }));
    }
    Ok(None)
}

/// The TLS files only make sense with rediss://; a forgotten `s` must not silently drop them.
pub fn check_tls_files(
    topology: Option<&RedisTopology>,
    tls: &RedisTls,
) -> Result<(), ConfigError> {
    if !tls.is_set() || topology.is_some_and(RedisTopology::is_tls) {
        return Ok(());
    }
    let var = if tls.ca_file.is_some() {
        "REDIS_CA_FILE"
    } else {
        "REDIS_CLIENT_CERT_FILE"
    };
    Err(err(
        var,
        match topology {
            Some(t) => format!("set, but {} is not a rediss:// URL", t.var()),
            None => "set, but no Redis is configured".to_string(),
        },
    ))
}
