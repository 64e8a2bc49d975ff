//! What this node tells the scheduler about itself beyond decisions, in its heartbeat: where
//! its registry port is (preheat asks it for blobs there), where its bytes came from (the
//! dashboard's offload ratio) and which pool mirror it fetches from (the dashboard reads that
//! mirror's `/metrics` for bytes from origin).

use crate::metrics::Direction;
use crate::state::AgentState;
use scheduler::nodes::NodeNote;
use std::net::TcpListener;

/// `host:port` at which others reach the registry port: its bound address, or, bound to every
/// interface, the advertised peer host with the registry port.
pub(crate) fn registry_addr(api: &TcpListener, advertise: &str) -> Option<String> {
    let bound = api.local_addr().ok()?;
    if !bound.ip().is_unspecified() {
        return Some(bound.to_string());
    }
    let (host, _) = advertise.rsplit_once(':')?;
    Some(format!("{host}:{}", bound.port()))
}

pub(crate) fn node_note(state: &AgentState, registry: Option<&String>) -> NodeNote {
    NodeNote {
        registry: registry.cloned(),
        bytes_from_peers: state
            .metrics
            .peer_bytes
            .get_or_create(&Direction { direction: "in" })
            .get(),
        bytes_from_mirror: state.metrics.source_bytes.get(),
        // Scheme, host and port only: never a path or credentials.
        mirror: Some(state.mirror.origin().ascii_serialization()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_registry_port_is_reached_at_the_advertised_host() {
        let any = TcpListener::bind("0.0.0.0:0").expect("bind");
        let port = any.local_addr().expect("addr").port();
        assert_eq!(
            registry_addr(&any, "10.1.2.3:65002"),
            Some(format!("10.1.2.3:{port}"))
        );
        let lo = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = lo.local_addr().expect("addr").to_string();
        assert_eq!(registry_addr(&lo, "10.1.2.3:65002"), Some(addr));
    }
}
