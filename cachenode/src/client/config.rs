//! [`AzConfig`]: which AZ cache nodes to ask and how long to wait.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::error::AzError;

/// Settings of the AZ cache tier ([`AzTier`](super::AzTier)).
///
/// Deserializable (TOML, JSON); missing fields take their defaults:
///
/// ```toml
/// nodes = ["http://10.1.0.5:8420", "http://10.1.0.6:8420"]
/// timeout_ms = 5000          # the most one get may take, all nodes included
/// hedge_after_ms = 50        # ask the second choice if the first is this slow
/// connect_timeout_ms = 500   # the most one TCP connect may take
/// http2 = false              # h2c (HTTP/2, prior knowledge) instead of HTTP/1.1
/// mode = "replicated"        # or "erasure": 4+1 stripes on 5 nodes (needs >= 5 nodes)
/// fleet_token_file = "/etc/imagefs/fleet-token"  # erasure: what stripe writes carry
/// max_fills_in_flight = 64   # erasure: objects being written behind reads at once
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AzConfig {
    /// Base URLs of the cache nodes (`http://host:port`, no path). Every
    /// instance in the AZ must list the same nodes (in any order) so that
    /// they agree on which node owns which chunk.
    pub nodes: Vec<String>,
    /// The most one get (or contains) may take, failovers and hedges
    /// included, in milliseconds. Large enough for a 4 MiB object from a
    /// node that has to ask the origin first.
    pub timeout_ms: u64,
    /// How long the first choice may stay silent before the same request
    /// goes to the second choice (a hedge), in milliseconds. About the
    /// 95th-percentile latency of a node hit.
    pub hedge_after_ms: u64,
    /// The most one TCP connect may take, in milliseconds: a node that is
    /// down is passed over after this long at worst.
    pub connect_timeout_ms: u64,
    /// Speak HTTP/2 without TLS (h2c, prior knowledge) instead of
    /// HTTP/1.1. Nodes answer both on the same port. HTTP/1.1 is the
    /// default: on loopback a warm 512 KiB get measured faster with it
    /// (the `lazy_read` benchmark prints both).
    pub http2: bool,
    /// How chunks are kept on the nodes.
    pub mode: AzMode,
    /// Erasure mode: the file with the fleet token that stripe writes
    /// carry; without it, the `IMAGEFS_FLEET_TOKEN` environment variable.
    /// Never logged.
    pub fleet_token_file: Option<PathBuf>,
    /// Erasure mode: objects whose stripes are being written behind reads
    /// (fills after a miss, repairs) at once; one more is skipped
    /// (counted) rather than queued.
    pub max_fills_in_flight: usize,
}

/// How the AZ tier keeps chunks on its nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum AzMode {
    /// Each chunk whole on its rendezvous owner; a get hedges to the
    /// second choice after `hedge_after_ms` and fails over. Nodes fill
    /// themselves from the origin. Works with any number of nodes.
    #[default]
    Replicated,
    /// Each chunk as 4 data stripes and 1 XOR parity stripe on its top 5
    /// nodes by rendezvous hashing; a get asks all 5 and rebuilds from
    /// the first 4. The client fills the stripes after a miss (with the
    /// fleet token). Needs at least 5 nodes.
    Erasure,
}

impl Default for AzConfig {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            timeout_ms: 5_000,
            hedge_after_ms: 50,
            connect_timeout_ms: 500,
            http2: false,
            mode: AzMode::Replicated,
            fleet_token_file: None,
            max_fills_in_flight: 64,
        }
    }
}

impl AzConfig {
    /// A configuration for `nodes` with the default timeouts.
    pub fn with_nodes<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> Self {
        Self {
            nodes: nodes.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// [`AzConfig::timeout_ms`] as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// [`AzConfig::hedge_after_ms`] as a duration.
    pub fn hedge_after(&self) -> Duration {
        Duration::from_millis(self.hedge_after_ms)
    }

    /// [`AzConfig::connect_timeout_ms`] as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// Checks the settings and returns the node URLs normalized (no
    /// trailing `/`).
    pub(crate) fn validated_nodes(&self) -> Result<Vec<String>, AzError> {
        for (field, value) in [
            ("timeout_ms", self.timeout_ms),
            ("hedge_after_ms", self.hedge_after_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
        ] {
            if value == 0 {
                return Err(AzError::ZeroDuration { field });
            }
        }
        if self.nodes.is_empty() {
            return Err(AzError::NoNodes);
        }
        if self.mode == AzMode::Erasure && self.nodes.len() < crate::stripe::STRIPES {
            return Err(AzError::TooFewForErasure {
                nodes: self.nodes.len(),
            });
        }
        if self.max_fills_in_flight == 0 {
            return Err(AzError::ZeroFills);
        }
        let mut nodes: Vec<String> = Vec::with_capacity(self.nodes.len());
        for given in &self.nodes {
            let url = normalize_node_url(given)?;
            if nodes.contains(&url) {
                return Err(AzError::DuplicateNode { url });
            }
            nodes.push(url);
        }
        Ok(nodes)
    }
}

/// `http://host:port` with no path, query or trailing slash.
fn normalize_node_url(given: &str) -> Result<String, AzError> {
    let bad = |problem: String| AzError::BadNodeUrl {
        url: given.to_string(),
        problem,
    };
    let url = reqwest::Url::parse(given).map_err(|e| bad(e.to_string()))?;
    if url.scheme() != "http" {
        return Err(bad(format!(
            "scheme `{}` is not supported (cache nodes speak plain http)",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host".into()));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(bad(
            "a node URL is only http://host:port, without a path".into()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("a node URL carries no credentials".into()));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_missing_fields() {
        let config: AzConfig = toml::from_str(r#"nodes = ["http://127.0.0.1:1"]"#).unwrap();
        assert_eq!(config.nodes, vec!["http://127.0.0.1:1"]);
        assert_eq!(config.timeout_ms, AzConfig::default().timeout_ms);
        let full: AzConfig = toml::from_str(
            "nodes = []\ntimeout_ms = 7\nhedge_after_ms = 3\nconnect_timeout_ms = 2\n",
        )
        .unwrap();
        assert_eq!(
            (
                full.timeout_ms,
                full.hedge_after_ms,
                full.connect_timeout_ms
            ),
            (7, 3, 2)
        );
        assert!(toml::from_str::<AzConfig>("nodez = []").is_err());
    }

    #[test]
    fn validation() {
        let ok = AzConfig::with_nodes(["http://127.0.0.1:8420/", "http://[::1]:9"]);
        assert_eq!(
            ok.validated_nodes().unwrap(),
            vec!["http://127.0.0.1:8420", "http://[::1]:9"]
        );
        assert!(matches!(
            AzConfig::with_nodes(Vec::<String>::new()).validated_nodes(),
            Err(AzError::NoNodes)
        ));
        for bad in [
            "127.0.0.1:80",
            "https://a:1",
            "http://a:1/v1",
            "http://u:p@a:1",
            "nonsense",
        ] {
            let err = AzConfig::with_nodes([bad]).validated_nodes().unwrap_err();
            assert!(
                matches!(&err, AzError::BadNodeUrl { url, .. } if url == bad),
                "{bad}: {err}"
            );
        }
        let four = AzConfig {
            mode: AzMode::Erasure,
            ..AzConfig::with_nodes(["http://a:1", "http://a:2", "http://a:3", "http://a:4"])
        };
        assert!(matches!(
            four.validated_nodes(),
            Err(AzError::TooFewForErasure { nodes: 4 })
        ));
        let parsed: AzConfig = toml::from_str("mode = \"erasure\"").unwrap();
        assert_eq!(parsed.mode, AzMode::Erasure);
        assert!(toml::from_str::<AzConfig>("mode = \"striped\"").is_err());
        assert!(matches!(
            AzConfig::with_nodes(["http://a:1", "http://a:1/"]).validated_nodes(),
            Err(AzError::DuplicateNode { .. })
        ));
        let zero = AzConfig {
            hedge_after_ms: 0,
            ..AzConfig::with_nodes(["http://a:1"])
        };
        assert!(matches!(
            zero.validated_nodes(),
            Err(AzError::ZeroDuration {
                field: "hedge_after_ms"
            })
        ));
    }
}
