//! The node agent's configuration: the seeds' P2P agent keys (`downloadPattern`, `ratelimit`,
//! `cache.mode`, `blocksize`, `connectTimeout`, `transferTimeout`, `proxyFsParallels`) plus
//! Tencent's separate `downloadRate`/`uploadRate` caps.

use crate::config::load_yaml;
use crate::units::{BlockSize, ByteSize, HumanDuration, Rate};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DownloadPattern {
    /// Pieces from peers of the pool (or inter-connected pools), the mirror for the rest.
    #[default]
    P2p,
    /// Everything from the mirror; no scheduler.
    Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    #[default]
    Disk,
    Memory,
}

/// `cache:` in the values: where the agent keeps blobs, and how much.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheConfig {
    pub mode: CacheMode,
    /// Bytes kept before the least recently used go; the seeds' disk default is 4 GiB.
    pub capacity: ByteSize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            mode: CacheMode::Disk,
            capacity: ByteSize(4 << 30),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    /// Where containerd reaches the agent (hostNetwork, the seeds' `p2p.port` 65001).
    pub listen: String,
    /// Where peers fetch pieces.
    pub peer_listen: String,
    /// The address peers are told to use; empty: the bound peer address (must not be 0.0.0.0).
    pub advertise: String,
    /// The pool mirror (or a registry, when no mirror runs).
    pub mirror: String,
    /// The scheduler; required for `downloadPattern: p2p`.
    pub scheduler: String,
    /// This node's name; empty: the host name. `poolcast agent` fills it from `$NODE_NAME`
    /// (its `--node` flag's variable) when that is set.
    pub node: String,
    /// The node pool id.
    pub pool: String,
    pub download_pattern: DownloadPattern,
    /// Shared secret of peer and scheduler traffic; empty: unauthenticated (warned at start).
    /// A node given it can derive every pool's key: prefer `poolKey`.
    pub secret: String,
    /// This pool's key (`nodepool::keys`), instead of `secret`: what the chart gives each
    /// pool's agents, so a node signs as its own pool only.
    pub pool_key: String,
    /// With `poolKey`: pool -> the key this pool shares with it, for each connected pool.
    pub pair_keys: std::collections::BTreeMap<String, String>,
    pub cache_host_path: String,
    #[serde(rename = "cacheTTL")]
    pub cache_ttl: HumanDuration,
    pub cache: CacheConfig,
    /// Total rate, upload plus download (MB/s as in the seeds: `512M`); 0: unlimited.
    pub ratelimit: Rate,
    /// Cap on download alone; 0: only `ratelimit` applies.
    pub download_rate: Rate,
    /// Cap on upload to peers alone; 0: only `ratelimit` applies.
    pub upload_rate: Rate,
    /// Piece size: `auto` (from each blob's size), or one size for every blob.
    pub blocksize: BlockSize,
    pub connect_timeout: HumanDuration,
    /// A piece transfer that receives no data for this long is abandoned and fetched elsewhere.
    pub transfer_timeout: HumanDuration,
    /// The longest one blob download may take, however its pieces keep trickling in; a download
    /// still running then fails, nothing of it is kept, and the next request starts afresh.
    pub download_timeout: HumanDuration,
    /// Pieces received from peers at once, across all blobs.
    pub proxy_fs_parallels: u32,
    /// The kernel send buffer of each peer upload (SO_SNDBUF); 0: the kernel's autotuning.
    /// Autotuned buffers grow to megabytes, so an upload slot frees long before its bytes
    /// have left and the node takes far more uploads than it has slots, slicing its uplink
    /// thin; a bounded buffer keeps "slot free" meaning "uplink has room".
    pub peer_send_buffer: ByteSize,
    /// How long the mirror's "this requester may read this blob" is trusted.
    #[serde(rename = "authCacheTTL")]
    pub auth_cache_ttl: HumanDuration,
    /// Suffix of the distributed names the admission webhook gives registries that are not ACR
    /// instances; containerd names them in `?ns=` and the agent maps them back.
    pub distributed_suffix: String,
    /// Open connections to the registry port (`listen`) served at once; more are answered
    /// `503` and closed.
    pub max_connections: u32,
    /// A client of the registry port that takes no data for this long is cut.
    pub send_timeout: HumanDuration,
    /// Response buffers of all blob bodies to containerd together (see the mirror's).
    pub send_buffers: ByteSize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: "0.0.0.0:65001".into(),
            peer_listen: "0.0.0.0:65002".into(),
            advertise: String::new(),
            mirror: String::new(),
            scheduler: String::new(),
            node: String::new(),
            pool: "default".into(),
            download_pattern: DownloadPattern::P2p,
            secret: String::new(),
            pool_key: String::new(),
            pair_keys: Default::default(),
            cache_host_path: String::new(),
            cache_ttl: HumanDuration(crate::defaults::CACHE_TTL),
            cache: CacheConfig::default(),
            ratelimit: Rate(512_000_000),
            download_rate: Rate(0),
            upload_rate: Rate(0),
            blocksize: BlockSize::Auto,
            connect_timeout: HumanDuration(crate::defaults::CONNECT_TIMEOUT),
            transfer_timeout: HumanDuration(Duration::from_secs(15)),
            download_timeout: HumanDuration(Duration::from_secs(3600)),
            proxy_fs_parallels: 128,
            peer_send_buffer: ByteSize(256 << 10),
            auth_cache_ttl: HumanDuration(crate::defaults::AUTH_CACHE_TTL),
            distributed_suffix: crate::distributed::DEFAULT_SUFFIX.into(),
            max_connections: 512,
            send_timeout: HumanDuration(crate::defaults::SEND_TIMEOUT),
            send_buffers: ByteSize(64 << 20),
        }
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> Error {
    Error::Invalid {
        key,
        message: message.into(),
    }
}

fn check_url(key: &'static str, text: &str) -> Result<()> {
    let url =
        url::Url::parse(text).map_err(|e| invalid(key, format!("`{text}` is not a URL: {e}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(invalid(
            key,
            format!("`{text}`: scheme must be http or https"),
        ));
    }
    Ok(())
}

impl AgentConfig {
    /// How a blob of `size` bytes is cut into pieces, by `blocksize`.
    pub fn layout_for(&self, size: u64) -> Result<crate::PieceLayout, crate::LayoutError> {
        match self.blocksize {
            BlockSize::Auto => crate::PieceLayout::auto(size),
            BlockSize::Fixed(piece) => crate::PieceLayout::bounded(size, piece),
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        load_yaml(path)
    }

    /// The keys this node holds: all of them from `secret`, or `poolKey` and `pairKeys`.
    pub fn pool_keys(&self) -> crate::PoolKeys {
        if !self.secret.is_empty() {
            return crate::PoolKeys::from_release(
                crate::PoolSecret::new(self.secret.as_bytes()),
                &self.pool,
            );
        }
        let pairs = self
            .pair_keys
            .iter()
            .map(|(pool, key)| (pool.clone(), crate::PoolSecret::new(key.as_bytes())))
            .collect();
        crate::PoolKeys::given(
            &self.pool,
            crate::PoolSecret::new(self.pool_key.as_bytes()),
            pairs,
        )
    }

    pub fn validate(&self) -> Result<()> {
        for (key, addr) in [("listen", &self.listen), ("peerListen", &self.peer_listen)] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(invalid(
                    key,
                    format!("`{addr}` is not an address like 0.0.0.0:65001"),
                ));
            }
        }
        if !self.advertise.is_empty() && self.advertise.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "advertise",
                format!("`{}` is not an address like 10.0.0.5:65002", self.advertise),
            ));
        }
        if self.mirror.is_empty() {
            return Err(invalid("mirror", "the pool mirror's URL is needed"));
        }
        check_url("mirror", &self.mirror)?;
        if self.download_pattern == DownloadPattern::P2p {
            if self.scheduler.is_empty() {
                return Err(invalid("scheduler", "downloadPattern p2p needs the scheduler's URL (or use downloadPattern: source)"));
            }
            check_url("scheduler", &self.scheduler)?;
        }
        if self.pool.is_empty() || self.pool.len() > 253 {
            return Err(invalid("pool", "a node pool id is needed"));
        }
        if let BlockSize::Fixed(size) = self.blocksize {
            if crate::check_piece_size(size).is_err() {
                return Err(invalid(
                    "blocksize",
                    format!(
                        "{} is not a power of two from 64KiB to 64MiB (or write auto)",
                        ByteSize(size)
                    ),
                ));
            }
        }
        for (key, d) in [
            ("connectTimeout", self.connect_timeout.0),
            ("transferTimeout", self.transfer_timeout.0),
            ("downloadTimeout", self.download_timeout.0),
            ("cacheTTL", self.cache_ttl.0),
            ("sendTimeout", self.send_timeout.0),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be longer than 0s"));
            }
        }
        if self.max_connections == 0 {
            return Err(invalid("maxConnections", "must be at least 1"));
        }
        if self.send_buffers.0 < crate::defaults::MIN_SEND_BUFFERS {
            return Err(invalid("sendBuffers", "below 3MiB, one blob body's share"));
        }
        if !self.secret.is_empty() && !self.pool_key.is_empty() {
            return Err(invalid(
                "poolKey",
                "give `secret` or `poolKey`, not both (`secret` derives every pool's key)",
            ));
        }
        if self.pool_key.is_empty() && !self.pair_keys.is_empty() {
            return Err(invalid("pairKeys", "needs `poolKey`"));
        }
        if self.proxy_fs_parallels == 0 || self.proxy_fs_parallels > 4096 {
            return Err(invalid("proxyFsParallels", "must be between 1 and 4096"));
        }
        let buffer = self.peer_send_buffer.0;
        if buffer != 0 && !(64 << 10..=64 << 20).contains(&buffer) {
            return Err(invalid(
                "peerSendBuffer",
                format!("{buffer} bytes is outside 64KiB..64MiB; use 0 for the kernel's own"),
            ));
        }
        for (key, rate) in [
            ("ratelimit", self.ratelimit),
            ("downloadRate", self.download_rate),
            ("uploadRate", self.upload_rate),
        ] {
            if rate.0 != 0 && rate.0 < 64 * 1024 {
                return Err(invalid(
                    key,
                    format!("{rate} is below 64KiB/s; use 0 for unlimited"),
                ));
            }
        }
        self.distributed_names()?;
        Ok(())
    }

    /// How the webhook names distributed registry hosts, to map `?ns=` back (the port is the
    /// agent's own; a name maps back whatever port it carries).
    pub fn distributed_names(&self) -> Result<crate::DistributedNames> {
        crate::DistributedNames::new(&self.distributed_suffix, 65001)
            .map_err(|m| invalid("distributedSuffix", m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> std::result::Result<AgentConfig, String> {
        crate::config::parse_yaml(yaml)
    }

    #[test]
    fn seed_keys_are_read_with_seed_defaults() {
        let c = parse("mirror: http://10.0.0.2:5000\nscheduler: http://10.0.0.3:65003\ndownloadPattern: p2p\n\
                       ratelimit: 5M\ndownloadRate: 3M\nuploadRate: 2M\n\
                       cache:\n  mode: memory\n  capacity: 8GiB\nblocksize: 2MiB\n")
            .expect("parses");
        assert_eq!(c.ratelimit.0, 5_000_000);
        assert_eq!(c.download_rate.0, 3_000_000);
        assert_eq!(c.upload_rate.0, 2_000_000);
        assert_eq!(c.cache.mode, CacheMode::Memory);
        assert_eq!(c.cache.capacity.0, 8 << 30);
        assert_eq!(c.blocksize, BlockSize::Fixed(2 << 20));
        assert_eq!(c.transfer_timeout.0, Duration::from_secs(15));
        assert_eq!(c.connect_timeout.0, Duration::from_secs(5));
        assert_eq!(c.proxy_fs_parallels, 128);
        assert_eq!(c.listen, "0.0.0.0:65001");
        c.validate().expect("valid");
        // Left out, the seeds' defaults: disk, 4 GiB, 4 MiB pieces, no separate caps.
        let d = parse("mirror: http://10.0.0.2:5000\ndownloadPattern: source\n").expect("parses");
        assert_eq!(d.cache.mode, CacheMode::Disk);
        assert_eq!(d.cache.capacity.0, 4 << 30);
        assert_eq!(d.blocksize, BlockSize::Auto);
        assert_eq!((d.download_rate.0, d.upload_rate.0), (0, 0));
        assert_eq!(d.ratelimit.0, 512_000_000);
    }

    #[test]
    fn p2p_without_scheduler_and_bad_values_name_the_key() {
        let c = parse("mirror: http://m:5000\n").expect("parses");
        assert!(c
            .validate()
            .expect_err("no scheduler")
            .to_string()
            .contains("scheduler"));
        let c = parse("mirror: http://m:5000\ndownloadPattern: source\n").expect("parses");
        c.validate().expect("source mode needs no scheduler");
        let err = parse("downloadPattern: torrent\n").expect_err("rejects");
        assert!(err.starts_with("key `downloadPattern`"), "{err}");
        let c = parse("mirror: http://m:5000\ndownloadPattern: source\nblocksize: 1KiB\n")
            .expect("parses");
        assert!(c
            .validate()
            .expect_err("tiny")
            .to_string()
            .contains("blocksize"));
        let c = parse("mirror: http://m:5000\ndownloadPattern: source\ndistributedSuffix: a..b\n")
            .expect("parses");
        assert!(c
            .validate()
            .expect_err("bad suffix")
            .to_string()
            .contains("distributedSuffix"));
    }

    #[test]
    fn peer_send_buffer_is_bounded_or_left_to_the_kernel() {
        let base = "mirror: http://m:5000\ndownloadPattern: source\n";
        assert_eq!(parse(base).expect("parses").peer_send_buffer.0, 256 << 10);
        parse(&format!("{base}peerSendBuffer: 0\n"))
            .expect("parses")
            .validate()
            .expect("0 is the kernel's autotuning");
        let err = parse(&format!("{base}peerSendBuffer: 4KiB\n"))
            .expect("parses")
            .validate()
            .expect_err("too small to carry a piece");
        assert!(err.to_string().contains("peerSendBuffer"), "{err}");
    }
}
