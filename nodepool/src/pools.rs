//! Node pools and which pools' nodes can exchange pieces.
//!
//! Edge pools are separate networks, often with overlapping addresses, so peers pair only
//! inside one pool or across pools that config declares connected. A pool config does not
//! describe is one network whose nodes reach each other and nothing else, so P2P works
//! without any config; a pool described with `interConnectivity: false` (OpenYurt's field)
//! never pairs and is served from the mirror only.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};

/// One entry of `edgeNodePools`, as in the seeds' Helm values (`name`, `id`) plus OpenYurt's
/// `interConnectivity` and the pools this one reaches.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolSpec {
    pub id: String,
    pub name: String,
    /// Whether nodes of this pool reach each other; `false` serves the pool in source mode.
    pub inter_connectivity: bool,
    /// Ids of other pools whose nodes this pool's nodes reach (and which reach back).
    pub connected_pools: Vec<String>,
}

impl Default for PoolSpec {
    fn default() -> Self {
        PoolSpec {
            id: String::new(),
            name: String::new(),
            inter_connectivity: true,
            connected_pools: Vec::new(),
        }
    }
}

/// Which pools may pair, built once from config; answers are symmetric.
#[derive(Debug, Clone, Default)]
pub struct PoolGraph {
    /// Pools config describes: id -> whether P2P is allowed in it.
    described: HashMap<String, bool>,
    /// Declared connections, both directions, self-references left out. Entries may name
    /// pools config does not describe.
    links: HashMap<String, BTreeSet<String>>,
}

impl PoolGraph {
    pub fn new(specs: &[PoolSpec]) -> Result<PoolGraph> {
        let mut graph = PoolGraph::default();
        for spec in specs {
            if spec.id.trim().is_empty() {
                return Err(Error::Invalid {
                    key: "edgeNodePools",
                    message: format!(
                        "pool `{}` has an empty id (each pool needs its node pool id)",
                        spec.name
                    ),
                });
            }
            if graph
                .described
                .insert(spec.id.clone(), spec.inter_connectivity)
                .is_some()
            {
                return Err(Error::Invalid {
                    key: "edgeNodePools",
                    message: format!("pool id `{}` is listed twice", spec.id),
                });
            }
        }
        for spec in specs {
            for other in &spec.connected_pools {
                if other.trim().is_empty() {
                    return Err(Error::Invalid {
                        key: "edgeNodePools",
                        message: format!("pool `{}` lists an empty id in connectedPools", spec.id),
                    });
                }
                if *other == spec.id {
                    continue;
                }
                graph
                    .links
                    .entry(spec.id.clone())
                    .or_default()
                    .insert(other.clone());
                graph
                    .links
                    .entry(other.clone())
                    .or_default()
                    .insert(spec.id.clone());
            }
        }
        Ok(graph)
    }

    /// Whether peers of `pool` may use P2P at all (false: source mode only).
    pub fn p2p_allowed(&self, pool: &str) -> bool {
        self.described.get(pool).copied().unwrap_or(true)
    }

    /// Whether a peer of pool `a` may fetch pieces from a peer of pool `b` (and back).
    pub fn can_pair(&self, a: &str, b: &str) -> bool {
        if !self.p2p_allowed(a) || !self.p2p_allowed(b) {
            return false;
        }
        a == b || self.links.get(a).is_some_and(|l| l.contains(b))
    }

    /// The pools whose peers a peer of `pool` may pair with, sorted; empty in source mode.
    pub fn reachable(&self, pool: &str) -> Vec<String> {
        if !self.p2p_allowed(pool) {
            return Vec::new();
        }
        let mut out: BTreeSet<&str> = BTreeSet::new();
        out.insert(pool);
        if let Some(links) = self.links.get(pool) {
            out.extend(
                links
                    .iter()
                    .filter(|p| self.p2p_allowed(p))
                    .map(String::as_str),
            );
        }
        out.into_iter().map(str::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(id: &str, inter: bool, connected: &[&str]) -> PoolSpec {
        PoolSpec {
            id: id.into(),
            name: format!("{id}-name"),
            inter_connectivity: inter,
            connected_pools: connected.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn undescribed_pool_pairs_only_with_itself() {
        let g = PoolGraph::new(&[]).expect("valid");
        assert!(g.p2p_allowed("np-a"));
        assert!(g.can_pair("np-a", "np-a"));
        assert!(!g.can_pair("np-a", "np-b"));
        assert_eq!(g.reachable("np-a"), vec!["np-a".to_string()]);
    }

    #[test]
    fn connectivity_is_symmetric_whichever_side_declares_it() {
        let g = PoolGraph::new(&[pool("a", true, &["b"]), pool("b", true, &[])]).expect("valid");
        assert!(g.can_pair("a", "b"));
        assert!(g.can_pair("b", "a"));
        assert_eq!(g.reachable("b"), vec!["a".to_string(), "b".to_string()]);
        assert!(!g.can_pair("a", "c"));
    }

    #[test]
    fn connected_pool_may_be_described_elsewhere() {
        let g = PoolGraph::new(&[pool("a", true, &["cloud"])]).expect("valid");
        assert!(g.can_pair("cloud", "a"));
        assert_eq!(
            g.reachable("cloud"),
            vec!["a".to_string(), "cloud".to_string()]
        );
    }

    #[test]
    fn pool_without_interconnectivity_never_pairs() {
        let g =
            PoolGraph::new(&[pool("a", false, &["b"]), pool("b", true, &["a"])]).expect("valid");
        assert!(!g.p2p_allowed("a"));
        assert!(!g.can_pair("a", "a"));
        assert!(!g.can_pair("a", "b"));
        assert!(!g.can_pair("b", "a"));
        assert!(g.reachable("a").is_empty());
        assert_eq!(g.reachable("b"), vec!["b".to_string()]);
    }

    #[test]
    fn connectivity_is_not_transitive() {
        let g = PoolGraph::new(&[pool("a", true, &["b"]), pool("b", true, &["c"])]).expect("valid");
        assert!(g.can_pair("a", "b") && g.can_pair("b", "c"));
        assert!(!g.can_pair("a", "c"));
    }

    #[test]
    fn self_reference_is_ignored() {
        let g = PoolGraph::new(&[pool("a", true, &["a"])]).expect("valid");
        assert_eq!(g.reachable("a"), vec!["a".to_string()]);
    }

    #[test]
    fn duplicate_or_empty_ids_are_rejected_naming_the_key() {
        let dup =
            PoolGraph::new(&[pool("a", true, &[]), pool("a", false, &[])]).expect_err("duplicate");
        assert!(
            matches!(
                dup,
                Error::Invalid {
                    key: "edgeNodePools",
                    ..
                }
            ),
            "{dup}"
        );
        let empty = PoolGraph::new(&[pool("", true, &[])]).expect_err("empty id");
        assert!(empty.to_string().contains("edgeNodePools"), "{empty}");
        let empty_link = PoolGraph::new(&[pool("a", true, &[""])]).expect_err("empty link");
        assert!(
            empty_link.to_string().contains("connectedPools"),
            "{empty_link}"
        );
    }

    #[test]
    fn yaml_keys_are_camel_case_with_defaults() {
        let specs: Vec<PoolSpec> = crate::config::parse_yaml(
            "- id: np-1\n  name: shop-1\n  connectedPools: [np-2]\n- id: np-3\n  interConnectivity: false\n",
        )
        .expect("parses");
        assert!(specs[0].inter_connectivity);
        assert_eq!(specs[0].connected_pools, vec!["np-2".to_string()]);
        assert!(!specs[1].inter_connectivity);
        assert_eq!(specs[1].name, "");
    }
}
