//! The configuration file of each component: YAML whose keys are the Helm values keys.
//! `load` reads and parses, `validate` checks what types cannot; a failure names the key.

use crate::acr_config::AcrConfig;
use crate::defaults;
use crate::pools::{PoolGraph, PoolSpec};
use crate::units::{ByteSize, HumanDuration, Rate};
use crate::{Error, Result};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;
use url::Url;

/// One upstream registry of a mirror. Written `URL` or `NS=URL`: `NS` is the registry host that
/// containerd names in `?ns=` (by default the URL's `host[:port]`, and `docker.io` for Docker Hub).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    pub ns: String,
    pub url: Url,
}

impl FromStr for UpstreamSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (ns, url_text) = match s.split_once('=') {
            Some((ns, url)) if !ns.contains('/') => {
                (Some(ns.trim().to_ascii_lowercase()), url.trim())
            }
            _ => (None, s),
        };
        let url = Url::parse(url_text).map_err(|e| {
            format!(
                "`{s}` is not an upstream URL (expected e.g. https://registry-1.docker.io): {e}"
            )
        })?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!("`{s}`: upstream scheme must be http or https"));
        }
        let host = url
            .host_str()
            .ok_or_else(|| format!("`{s}`: upstream URL has no host"))?
            .to_ascii_lowercase();
        if url.path() != "/" && !url.path().is_empty() {
            return Err(format!(
                "`{s}`: upstream URL must not have a path (the mirror adds /v2/...)"
            ));
        }
        let ns = ns.unwrap_or_else(|| match (host.as_str(), url.port()) {
            ("registry-1.docker.io", None) => "docker.io".to_string(),
            (h, Some(p)) => format!("{h}:{p}"),
            (h, None) => h.to_string(),
        });
        if ns.is_empty() {
            return Err(format!("`{s}`: empty registry name before `=`"));
        }
        Ok(UpstreamSpec { ns, url })
    }
}

impl<'de> Deserialize<'de> for UpstreamSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for UpstreamSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!(
            "{}={}",
            self.ns,
            self.url.as_str().trim_end_matches('/')
        ))
    }
}

/// The pool mirror: an OCI pull-through cache per node pool.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorConfig {
    /// Address to listen on.
    pub listen: String,
    /// Upstream registries; the first serves requests that carry no `?ns=`.
    pub upstreams: Vec<UpstreamSpec>,
    /// Serve `?ns=HOST` for any registry host, not only the configured ones (over https).
    pub allow_any_registry: bool,
    /// Entries not used for this long are removed.
    #[serde(rename = "cacheTTL")]
    pub cache_ttl: HumanDuration,
    /// Where the cache lives on the host; empty: a folder that dies with the process.
    pub cache_host_path: String,
    /// Past this many bytes the least recently used entries go first; 0: bounded by TTL only.
    pub capacity: ByteSize,
    /// Total transfer rate of the mirror (upstream in plus clients out); 0: unlimited.
    pub ratelimit: Rate,
    /// Fetch OSS-redirected blobs through `BUCKET.oss-accelerate.aliyuncs.com`.
    pub oss_internet_accelerate: bool,
    /// How long an upstream answer "this requester may read this repository" is trusted.
    #[serde(rename = "authCacheTTL")]
    pub auth_cache_ttl: HumanDuration,
    /// How long a manifest fetched by tag is served before it is revalidated upstream.
    #[serde(rename = "manifestTTL")]
    pub manifest_ttl: HumanDuration,
    /// Time allowed to connect to an upstream.
    pub connect_timeout: HumanDuration,
    /// PEM file of CA certificates that upstream HTTPS is also trusted with, besides the public
    /// web PKI (a registry whose certificate a private CA signed); empty: the public PKI only.
    /// Read at start: a file that cannot be read or holds no certificate stops the mirror.
    #[serde(rename = "upstreamCAFile")]
    pub upstream_ca_file: String,
    /// A cached file verified longer ago than this is hashed again before its next serve, so
    /// rot that leaves length and mtime alone is caught within this time; `0s`: every serve.
    pub verify_interval: HumanDuration,
    /// ACR EE instances named by id: each becomes an upstream (every domain of the instance
    /// an `ns`, the one reachable from here the URL) once resolved, and again periodically.
    pub acr: AcrConfig,
    /// Open client connections served at once; more are answered `503` and closed.
    pub max_connections: u32,
    /// A client that takes no data for this long (it stopped reading) is cut, freeing what
    /// its response held.
    pub send_timeout: HumanDuration,
    /// Response buffers of all blob bodies together: each takes up to 3 MiB of it before its
    /// first byte, and bodies past it wait for a share.
    pub send_buffers: ByteSize,
    /// The longest one upstream request may take, body included; a fetch still running then
    /// fails and nothing of it is kept.
    pub upstream_timeout: HumanDuration,
}

impl Default for MirrorConfig {
    fn default() -> Self {
        MirrorConfig {
            listen: "0.0.0.0:5000".into(),
            upstreams: Vec::new(),
            allow_any_registry: false,
            cache_ttl: HumanDuration(defaults::CACHE_TTL),
            cache_host_path: String::new(),
            capacity: ByteSize(0),
            ratelimit: Rate(0),
            oss_internet_accelerate: false,
            auth_cache_ttl: HumanDuration(defaults::AUTH_CACHE_TTL),
            manifest_ttl: HumanDuration(Duration::from_secs(30)),
            connect_timeout: HumanDuration(defaults::CONNECT_TIMEOUT),
            upstream_ca_file: String::new(),
            verify_interval: HumanDuration(defaults::VERIFY_INTERVAL),
            acr: AcrConfig::default(),
            max_connections: 4096,
            send_timeout: HumanDuration(defaults::SEND_TIMEOUT),
            send_buffers: ByteSize(256 << 20),
            upstream_timeout: HumanDuration(Duration::from_secs(3600)),
        }
    }
}

/// Reads a YAML config file; an empty file gives the defaults.
pub(crate) fn load_yaml<T: for<'de> Deserialize<'de> + Default>(path: &Path) -> Result<T> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: display.clone(),
        source,
    })?;
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    parse_yaml(&text).map_err(|message| Error::Parse {
        path: display,
        message,
    })
}

/// Parses YAML, naming the key that failed: "key `cacheTTL`: `forever` is not a duration".
pub(crate) fn parse_yaml<T: for<'de> Deserialize<'de>>(
    text: &str,
) -> std::result::Result<T, String> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            inner
        } else {
            format!("key `{path}`: {inner}")
        }
    })
}

impl MirrorConfig {
    pub fn load(path: &Path) -> Result<Self> {
        load_yaml(path)
    }

    pub fn validate(&self) -> Result<()> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(Error::Invalid {
                key: "listen",
                message: format!("`{}` is not an address like 0.0.0.0:5000", self.listen),
            });
        }
        if self.upstreams.is_empty() && !self.allow_any_registry && !self.acr.is_enabled() {
            return Err(Error::Invalid {
                key: "upstreams",
                message:
                    "at least one upstream registry is needed (or acr.instances, or set allowAnyRegistry)"
                        .into(),
            });
        }
        self.acr.validate()?;
        let mut seen = std::collections::HashSet::new();
        for u in &self.upstreams {
            if !seen.insert(u.ns.as_str()) {
                return Err(Error::Invalid {
                    key: "upstreams",
                    message: format!("registry `{}` is listed twice", u.ns),
                });
            }
        }
        if self.cache_ttl.0.is_zero() {
            return Err(Error::Invalid {
                key: "cacheTTL",
                message: "must be longer than 0s".into(),
            });
        }
        for (key, d) in [
            ("connectTimeout", self.connect_timeout),
            ("sendTimeout", self.send_timeout),
            ("upstreamTimeout", self.upstream_timeout),
        ] {
            if d.0.is_zero() {
                return Err(Error::Invalid {
                    key,
                    message: "must be longer than 0s".into(),
                });
            }
        }
        if self.max_connections == 0 {
            return Err(Error::Invalid {
                key: "maxConnections",
                message: "must be at least 1".into(),
            });
        }
        if self.send_buffers.0 < defaults::MIN_SEND_BUFFERS {
            return Err(Error::Invalid {
                key: "sendBuffers",
                message: format!("{} is below 3MiB, one blob body's share", self.send_buffers),
            });
        }
        if self.ratelimit.0 != 0 && self.ratelimit.0 < 64 * 1024 {
            return Err(Error::Invalid {
                key: "ratelimit",
                message: format!("{} is below 64KiB/s; use 0 for unlimited", self.ratelimit),
            });
        }
        Ok(())
    }
}

/// The scheduler: one per group of inter-connected node pools. Its state is soft, so these
/// are all its settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Address to listen on.
    pub listen: String,
    /// The node pools, which of them reach which, and which are served in source mode only.
    pub edge_node_pools: Vec<PoolSpec>,
    /// Shared secret that signs agents' requests; empty: requests are not checked.
    pub secret: String,
    /// Peers not heard from (any request) for this long are dropped.
    #[serde(rename = "peerTTL")]
    pub peer_ttl: HumanDuration,
    /// How long a first-holder lease of fresh pieces lasts before it is handed out again (the
    /// agents' `transferTimeout`).
    pub source_assign_timeout: HumanDuration,
    /// Most members one join answer names: a node keeps a connection to each, so this bounds
    /// its connections however large the pool (1 to 1,000).
    pub max_neighbors: u32,
    /// Keys only the removed v1 API (per-piece announces and parents) read: accepted, so a
    /// config written for it still starts, and ignored; [`SchedulerConfig::retired_keys`]
    /// names them for a warning.
    #[serde(skip_serializing)]
    pub max_parents: Option<IgnoredAny>,
    #[serde(skip_serializing)]
    pub announce_interval: Option<IgnoredAny>,
    #[serde(skip_serializing)]
    pub source_pieces_in_flight: Option<IgnoredAny>,
    /// Serve the read-only dashboard at `/` and its JSON under `/api/`. Off by default: it
    /// shows node names and addresses and the images being preheated to anyone who reaches
    /// the port.
    pub dashboard: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            listen: "0.0.0.0:65003".into(),
            edge_node_pools: Vec::new(),
            secret: String::new(),
            peer_ttl: HumanDuration(Duration::from_secs(30)),
            source_assign_timeout: HumanDuration(Duration::from_secs(15)),
            max_neighbors: 40,
            max_parents: None,
            announce_interval: None,
            source_pieces_in_flight: None,
            dashboard: false,
        }
    }
}

impl SchedulerConfig {
    pub fn load(path: &Path) -> Result<Self> {
        load_yaml(path)
    }

    /// The retired keys this config sets (see `max_parents`), as written in YAML.
    pub fn retired_keys(&self) -> Vec<&'static str> {
        [
            ("maxParents", self.max_parents.is_some()),
            ("announceInterval", self.announce_interval.is_some()),
            (
                "sourcePiecesInFlight",
                self.source_pieces_in_flight.is_some(),
            ),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect()
    }

    /// `secret` as what checks agents' requests (off when empty).
    pub fn pool_secret(&self) -> crate::PoolSecret {
        crate::PoolSecret::new(self.secret.as_bytes())
    }

    pub fn validate(&self) -> Result<()> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(Error::Invalid {
                key: "listen",
                message: format!("`{}` is not an address like 0.0.0.0:65003", self.listen),
            });
        }
        for (key, d) in [
            ("peerTTL", self.peer_ttl),
            ("sourceAssignTimeout", self.source_assign_timeout),
        ] {
            if d.0.is_zero() {
                return Err(Error::Invalid {
                    key,
                    message: "must be longer than 0s".into(),
                });
            }
        }
        if !(1..=1000).contains(&self.max_neighbors) {
            return Err(Error::Invalid {
                key: "maxNeighbors",
                message: format!("{} is outside 1..=1000", self.max_neighbors),
            });
        }
        self.pool_graph()?;
        Ok(())
    }

    /// Which pools may pair, from `edgeNodePools`.
    pub fn pool_graph(&self) -> Result<PoolGraph> {
        PoolGraph::new(&self.edge_node_pools)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> std::result::Result<MirrorConfig, String> {
        parse_yaml(yaml)
    }

    #[test]
    fn helm_value_keys_are_read() {
        let c = parse(
            "cacheTTL: 12h\ncacheHostPath: /var/cache/poolcast\nratelimit: 5M\ncapacity: 40GiB\n\
             ossInternetAccelerate: true\nupstreams: [\"https://registry-1.docker.io\", \"harbor=http://10.0.0.5:5000\"]\n",
        )
        .expect("parses");
        assert_eq!(c.cache_ttl.0, Duration::from_secs(12 * 3600));
        assert_eq!(c.cache_host_path, "/var/cache/poolcast");
        assert_eq!(c.ratelimit.0, 5_000_000);
        assert_eq!(c.capacity.0, 40 << 30);
        assert!(c.oss_internet_accelerate);
        assert_eq!(c.upstreams[0].ns, "docker.io");
        assert_eq!(c.upstreams[1].ns, "harbor");
        assert_eq!(c.upstream_ca_file, "", "no private CA unless asked");
        c.validate().expect("valid");
        let c = parse(
            "upstreams: [\"https://harbor.example\"]\nupstreamCAFile: /etc/poolcast-ca/ca.pem\n",
        )
        .expect("parses");
        assert_eq!(c.upstream_ca_file, "/etc/poolcast-ca/ca.pem");
        let err = parse("upstreamCaFile: /x\n").expect_err("the key is spelled upstreamCAFile");
        assert!(err.contains("upstreamCaFile"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = parse("cacheTTL: forever\n").expect_err("rejects");
        assert!(err.starts_with("key `cacheTTL`"), "{err}");
        let err = parse("ratelimit: fast\n").expect_err("rejects");
        assert!(err.starts_with("key `ratelimit`"), "{err}");
        let err = parse("cacheTTLL: 1h\n").expect_err("rejects unknown keys");
        assert!(err.to_string().contains("cacheTTLL"), "{err}");
        let c = parse("upstreams: [\"http://a:5000\", \"http://a:5000\"]\n").expect("parses");
        assert!(c
            .validate()
            .expect_err("dup")
            .to_string()
            .contains("upstreams"));
        let c = parse("upstreams: [\"http://a:5000\"]\ncacheTTL: 0s\n").expect("parses");
        assert!(c
            .validate()
            .expect_err("zero")
            .to_string()
            .contains("cacheTTL"));
    }

    #[test]
    fn upstream_ns_defaults_to_host_and_port() {
        let u: UpstreamSpec = "http://127.0.0.1:5000".parse().expect("parses");
        assert_eq!(u.ns, "127.0.0.1:5000");
        assert!("ftp://x".parse::<UpstreamSpec>().is_err());
        assert!("http://x/v2".parse::<UpstreamSpec>().is_err());
    }

    #[test]
    fn scheduler_keys_are_read_with_acronyms_kept() {
        let c: SchedulerConfig = parse_yaml(
            "listen: 127.0.0.1:7000\npeerTTL: 10s\nsourceAssignTimeout: 5s\n\
             maxNeighbors: 12\nsecret: s3\nedgeNodePools:\n  - id: np-1\n    name: shop\n    \
             connectedPools: [np-2]\n  - id: np-2\n",
        )
        .expect("parses");
        assert_eq!(c.peer_ttl.0, Duration::from_secs(10));
        assert_eq!(c.source_assign_timeout.0, Duration::from_secs(5));
        assert_eq!(c.max_neighbors, 12);
        assert_eq!(c.edge_node_pools.len(), 2);
        assert!(c.retired_keys().is_empty());
        c.validate().expect("valid");
        assert!(c.pool_graph().expect("graph").can_pair("np-2", "np-1"));
        SchedulerConfig::default()
            .validate()
            .expect("defaults are valid");
    }

    #[test]
    fn bad_scheduler_values_name_the_key() {
        let bad = |yaml: &str| -> String {
            match parse_yaml::<SchedulerConfig>(yaml) {
                Ok(c) => c.validate().expect_err("invalid").to_string(),
                Err(e) => e,
            }
        };
        assert!(bad("peerTTL: 0s\n").contains("peerTTL"));
        assert!(bad("sourceAssignTimeout: 0s\n").contains("sourceAssignTimeout"));
        assert!(bad("maxNeighbors: 0\n").contains("maxNeighbors"));
        assert!(bad("maxNeighbors: 1001\n").contains("maxNeighbors"));
        assert!(bad("listen: nowhere\n").contains("listen"));
        assert!(bad("peerTtl: 5s\n").contains("peerTtl"));
        assert!(bad("edgeNodePools: [{id: a}, {id: a}]\n").contains("edgeNodePools"));
        assert!(bad("edgeNodePools: [{id: a, interconnectivity: false}]\n")
            .contains("interconnectivity"));
    }

    #[test]
    fn keys_of_the_removed_v1_scheduler_are_accepted_and_named() {
        let c: SchedulerConfig = parse_yaml(
            "maxParents: 0\nannounceInterval: never\nsourcePiecesInFlight: [4]\nmaxNeighbors: 12\n",
        )
        .expect("a config written for v1 still parses");
        c.validate()
            .expect("and is valid: whatever they say is ignored");
        assert_eq!(c.max_neighbors, 12);
        assert_eq!(
            c.retired_keys(),
            vec!["maxParents", "announceInterval", "sourcePiecesInFlight"]
        );
        let yaml = serde_yaml::to_string(&c).expect("serializes");
        assert!(!yaml.contains("maxParents"), "{yaml}");
        let err =
            parse_yaml::<SchedulerConfig>("maxParent: 4\n").expect_err("a typo is not retired");
        assert!(err.contains("maxParent"), "{err}");
    }
}
