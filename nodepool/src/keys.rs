//! Per-pool keys, derived from the release secret. A node holds only its pool's key (and one
//! key per pool its pool is declared connected to), never the release secret: a node that is
//! taken over can sign as its own pool and nothing else. The scheduler holds the release
//! secret and derives the key of whatever pool a request names.
//!
//! ```text
//!   pool key (P)    = hex sha256("poolcast pool key v1\n" + secret + "\n" + hex sha256(P))
//!   pair key (A, B) = hex sha256("poolcast pair key v1\n" + secret + "\n"
//!                                + hex sha256(len(lo) + ":" + lo + hi)),  lo, hi = sorted A, B
//! ```
//!
//! HMAC would be the textbook choice, but the Helm chart must derive the same keys, and its
//! template functions have `sha256sum` and no HMAC. The secret is hashed with a message of fixed
//! length (a digest of the pool ids) that ends the input, so a key reveals nothing that extends
//! to another pool's key (no length extension applies), and the pair's message names both ids
//! unambiguously and in an order that does not depend on who asks.

use crate::PoolSecret;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn derive(label: &str, release: &PoolSecret, message: &str) -> PoolSecret {
    if release.is_off() {
        return PoolSecret::default();
    }
    let mut input = Vec::with_capacity(label.len() + release.key.len() + 80);
    input.extend_from_slice(label.as_bytes());
    input.push(b'\n');
    input.extend_from_slice(&release.key);
    input.push(b'\n');
    input.extend_from_slice(hex_sha256(message.as_bytes()).as_bytes());
    PoolSecret::new(hex_sha256(&input))
}

/// The key of `pool`, from the release secret (off when the secret is).
pub fn pool_key(release: &PoolSecret, pool: &str) -> PoolSecret {
    derive("poolcast pool key v1", release, pool)
}

/// The key two connected pools share, whichever of them asks.
pub fn pair_key(release: &PoolSecret, a: &str, b: &str) -> PoolSecret {
    let (lo, hi) = if a.as_bytes() <= b.as_bytes() {
        (a, b)
    } else {
        (b, a)
    };
    derive(
        "poolcast pair key v1",
        release,
        &format!("{}:{lo}{hi}", lo.len()),
    )
}

/// The keys one node was given: the release secret (everything derives from it: the scheduler,
/// `poolcast up`, a node configured with `secret`), or its pool's key and the pair keys of the
/// pools its pool is connected to (what the chart gives each agent).
#[derive(Clone, Debug, Default)]
pub struct PoolKeys {
    release: Option<PoolSecret>,
    pool: String,
    own: PoolSecret,
    pairs: BTreeMap<String, PoolSecret>,
}

impl PoolKeys {
    /// Everything, derived from the release secret, for a node of `pool`.
    pub fn from_release(release: PoolSecret, pool: &str) -> Self {
        PoolKeys {
            own: pool_key(&release, pool),
            release: Some(release),
            pool: pool.to_string(),
            pairs: BTreeMap::new(),
        }
    }

    /// Only what a node of `pool` was given: its pool's key, and pool -> pair key for each
    /// pool connected to it.
    pub fn given(pool: &str, own: PoolSecret, pairs: BTreeMap<String, PoolSecret>) -> Self {
        PoolKeys {
            release: None,
            pool: pool.to_string(),
            own,
            pairs,
        }
    }

    /// No secret at all: nothing is signed or checked.
    pub fn is_off(&self) -> bool {
        self.own.is_off()
    }

    /// The pool these keys are for.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// This node's pool key: what signs its requests to the scheduler.
    pub fn own(&self) -> &PoolSecret {
        &self.own
    }

    /// The key for traffic between a node of `my_pool` and a peer of `peer_pool`: the pool
    /// key within a pool, the pair key across connected pools. `None` when this node was not
    /// given it (the pools are not connected, or `my_pool` is not this node's).
    pub fn key_for(&self, my_pool: &str, peer_pool: &str) -> Option<PoolSecret> {
        if let Some(release) = &self.release {
            return Some(match my_pool == peer_pool {
                true => pool_key(release, my_pool),
                false => pair_key(release, my_pool, peer_pool),
            });
        }
        if my_pool != self.pool {
            return None;
        }
        if peer_pool == my_pool {
            return Some(self.own.clone());
        }
        self.pairs.get(peer_pool).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELEASE: &str = "release secret";

    /// The chart's derivation, written out as its template computes it.
    fn as_the_chart_does(label: &str, message: &str) -> String {
        let inner = hex_sha256(message.as_bytes());
        hex_sha256(format!("{label}\n{RELEASE}\n{inner}").as_bytes())
    }

    #[test]
    fn keys_are_the_charts_and_differ_per_pool() {
        let release = PoolSecret::new(RELEASE);
        let a = pool_key(&release, "np-a");
        assert_eq!(
            a,
            PoolSecret::new(as_the_chart_does("poolcast pool key v1", "np-a"))
        );
        assert_ne!(a, pool_key(&release, "np-b"));
        assert_ne!(a, pool_key(&PoolSecret::new("other"), "np-a"));
        let pair = pair_key(&release, "np-b", "np-a");
        assert_eq!(
            pair,
            pair_key(&release, "np-a", "np-b"),
            "order-independent"
        );
        assert_eq!(
            pair,
            PoolSecret::new(as_the_chart_does("poolcast pair key v1", "4:np-anp-b"))
        );
        // Ids that concatenate alike are still different pairs.
        assert_ne!(pair_key(&release, "ab", "c"), pair_key(&release, "a", "bc"));
        assert!(pool_key(&PoolSecret::default(), "np-a").is_off());
    }

    #[test]
    fn a_node_given_its_keys_has_its_pool_and_its_connections_only() {
        let release = PoolSecret::new(RELEASE);
        let pairs = BTreeMap::from([("np-b".to_string(), pair_key(&release, "np-a", "np-b"))]);
        let node = PoolKeys::given("np-a", pool_key(&release, "np-a"), pairs);
        let all = PoolKeys::from_release(release.clone(), "np-a");
        assert_eq!(node.key_for("np-a", "np-a"), all.key_for("np-a", "np-a"));
        assert_eq!(node.key_for("np-a", "np-b"), all.key_for("np-a", "np-b"));
        assert_eq!(node.key_for("np-a", "np-c"), None);
        assert_eq!(node.key_for("np-b", "np-b"), None, "another pool's key");
        assert_eq!(node.own(), &pool_key(&release, "np-a"));
        assert!(!node.is_off() && PoolKeys::default().is_off());
    }
}
