//! Where sessions live when they are in Redis: REDIS_URL (one node) or REDIS_CLUSTER_URLS (the
//! seed nodes of a Redis Cluster). Exactly one of them, or neither (in-process sessions).
use super::ConfigError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTopology {
    Single {
        url: String,
    },
    /// Seed nodes: any reachable one is enough to learn the cluster's slot map.
    Cluster {
        urls: Vec<String>,
    },
}

fn err(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
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

/// REDIS_CLUSTER_URLS: comma-separated redis:// or rediss:// URLs of some of the cluster's nodes
/// (or one configuration endpoint), all with the same scheme and credentials.
pub fn parse_cluster_urls(value: &str) -> Result<Vec<String>, ConfigError> {
    const VAR: &str = "REDIS_CLUSTER_URLS";
    let urls: Vec<String> = split_urls(value)
        .iter()
        .map(|u| u.trim())
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err(err(
            VAR,
            "expected comma-separated redis:// or rediss:// URLs",
        ));
    }
    for url in &urls {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(err(VAR, "every seed must be a redis:// or rediss:// URL"));
        }
        redis::Client::open(url.as_str())
            .map_err(|_| err(VAR, "not a valid redis:// or rediss:// URL"))?;
    }
    let scheme = |u: &String| u.split_once("://").map(|(s, _)| s.to_string());
    if urls.iter().any(|u| scheme(u) != scheme(&urls[0])) {
        return Err(err(
            VAR,
            "every seed must use the same scheme (redis:// or rediss://)",
        ));
    }
    Ok(urls)
}

/// The one topology, or `None` for in-process sessions; both set is an error.
pub fn choose(
    url: Option<String>,
    cluster_urls: Option<Vec<String>>,
) -> Result<Option<RedisTopology>, ConfigError> {
    match (url, cluster_urls) {
        (Some(_), Some(_)) => Err(err(
            "REDIS_CLUSTER_URLS",
            "set either REDIS_URL (one node) or REDIS_CLUSTER_URLS (a cluster), not both",
        )),
        (Some(url), None) => Ok(Some(RedisTopology::Single { url })),
        (None, Some(urls)) => Ok(Some(RedisTopology::Cluster { urls })),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_seeds_are_checked() {
        assert_eq!(
            parse_cluster_urls(" redis://a:7000, redis://b:7001 ,").unwrap(),
            vec!["redis://a:7000", "redis://b:7001"]
        );
        for bad in ["", " , ", "a:7000", "http://a", "redis://a,rediss://b"] {
            let e = parse_cluster_urls(bad).unwrap_err();
            assert_eq!(e.var, "REDIS_CLUSTER_URLS", "{bad}");
        }
    }

    #[test]
    fn exactly_one_topology() {
        let seeds = Some(vec!["redis://a".to_string()]);
        assert!(choose(Some("redis://x".into()), seeds.clone()).is_err());
        assert!(matches!(
            choose(None, seeds),
            Ok(Some(RedisTopology::Cluster { .. }))
        ));
        assert_eq!(choose(None, None).unwrap(), None);
    }
}
