//! What every poolcast client and server agree on about their HTTP connections.
//!
//! A pooled keep-alive connection that the server closes while the client picks it for a new
//! request fails that request with "error sending request" before a byte is answered. actix-web
//! closes idle connections after 5 s by default and reqwest keeps them 90 s, so between an agent
//! and a peer, the mirror or the scheduler that race was lost every few seconds under load (six
//! pieces of one 16-node fan-out, each of which made its receiver drop a healthy parent). Every
//! poolcast server keeps idle connections [`SERVER_KEEP_ALIVE`], every poolcast client gives
//! them up after [`CLIENT_POOL_IDLE`], well before. The same holds for a connection that has not
//! sent its first request yet: Go's transport (skopeo, containerd) parks a dial that lost a race
//! in its idle pool, and actix's 5 s answered it `408`, which a request written at that moment
//! took as its answer. Servers give it [`SERVER_KEEP_ALIVE`] too, longer than the 90 s Go keeps
//! an idle connection; the connection cap, not a short timer, bounds what idle clients hold.

use std::time::Duration;

/// How long poolcast's servers keep an idle keep-alive connection open.
pub const SERVER_KEEP_ALIVE: Duration = Duration::from_secs(120);
/// How long poolcast's clients keep an idle pooled connection: less than [`SERVER_KEEP_ALIVE`].
pub const CLIENT_POOL_IDLE: Duration = Duration::from_secs(30);

/// An error with its causes, "error sending request: connection refused", since reqwest's own
/// message leaves out why.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);
    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn the_chain_names_every_cause_in_order() {
        let e = Layer(
            "error sending request",
            Some(Box::new(Layer("connection reset", None))),
        );
        assert_eq!(error_chain(&e), "error sending request: connection reset");
    }

    #[test]
    fn clients_let_go_of_idle_connections_before_servers_do() {
        assert!(CLIENT_POOL_IDLE < SERVER_KEEP_ALIVE);
    }
}
