//! Where the mirror follows an upstream's redirect. A registry redirects blob downloads to
//! storage (a CDN, OSS, S3); a hostile or compromised one, or any host named in `?ns=` under
//! `allowAnyRegistry`, could point the mirror at its own node, the cloud's metadata service or
//! cluster addresses and have the body relayed. So a redirect is followed only
//!
//! - to `https`, or to the upstream's own scheme;
//! - to a public address, or to one of the same kind as the upstream's own (a registry on the
//!   private network may send the mirror to private storage, a test registry on loopback to
//!   loopback); never to link-local (`169.254.169.254`) unless the upstream is itself there.
//!
//! A redirect to a host name, from a public upstream, goes through a client whose resolver
//! drops every address that is not public, so a name that resolves (or rebinds) to a private
//! address cannot be reached. From a private upstream the name is resolved and checked first.

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, SocketAddr};
use url::{Host, Url};

/// What kind of network an address is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    Public,
    /// RFC 1918, carrier-grade NAT (100.64/10), IPv6 unique-local.
    Private,
    Loopback,
    /// 169.254/16 and fe80::/10: cloud metadata services live here.
    LinkLocal,
    /// Unspecified, broadcast, multicast, reserved: never a place to fetch from.
    Special,
}

pub fn reach(ip: IpAddr) -> Reach {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Reach::Loopback
            } else if v4.is_link_local() {
                Reach::LinkLocal
            } else if v4.is_private() || (a == 100 && (64..128).contains(&b)) {
                Reach::Private
            } else if v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || a >= 240
            {
                Reach::Special
            } else {
                Reach::Public
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return reach(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Reach::Loopback
            } else if first & 0xffc0 == 0xfe80 {
                Reach::LinkLocal
            } else if first & 0xfe00 == 0xfc00 {
                Reach::Private
            } else if v6.is_unspecified() || v6.is_multicast() {
                Reach::Special
            } else {
                Reach::Public
            }
        }
    }
}

/// The upstream a chain of redirects started from.
#[derive(Debug, Clone)]
pub struct Origin {
    scheme: String,
    reach: Reach,
}

/// How to send a request to a redirect's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// With the mirror's usual client.
    Direct,
    /// With the client that connects to public addresses only.
    PublicOnly,
}

async fn resolve(host: &str, port: u16) -> Vec<IpAddr> {
    match tokio::net::lookup_host((host, port)).await {
        Ok(addrs) => addrs.map(|a| a.ip()).collect(),
        Err(_) => Vec::new(),
    }
}

fn host_ip(url: &Url) -> Option<IpAddr> {
    match url.host()? {
        Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        Host::Domain(_) => None,
    }
}

impl Origin {
    /// The upstream at `url`: its scheme, and the kind of network it is on (a name that
    /// resolves to a private address is private).
    pub async fn of(url: &Url) -> Origin {
        let reach = match (host_ip(url), url.host_str()) {
            (Some(ip), _) => reach(ip),
            (None, Some(host)) => {
                let port = url.port_or_known_default().unwrap_or(443);
                resolve(host, port)
                    .await
                    .into_iter()
                    .map(reach)
                    .find(|r| *r != Reach::Public)
                    .unwrap_or(Reach::Public)
            }
            (None, None) => Reach::Special,
        };
        Origin {
            scheme: url.scheme().to_string(),
            reach,
        }
    }

    fn allows(&self, r: Reach) -> bool {
        r == Reach::Public || (r == self.reach && r != Reach::Special)
    }

    /// Whether a redirect to `target` may be followed, and how; the error says why not.
    pub async fn check(&self, target: &Url) -> Result<Route, String> {
        if target.scheme() != "https" && target.scheme() != self.scheme {
            return Err(format!(
                "scheme `{}` (only https, or the upstream's own {})",
                target.scheme(),
                self.scheme
            ));
        }
        if let Some(ip) = host_ip(target) {
            let r = reach(ip);
            return if self.allows(r) {
                Ok(Route::Direct)
            } else {
                Err(format!("{ip} is a {r:?} address"))
            };
        }
        let Some(host) = target.host_str() else {
            return Err("no host".into());
        };
        if self.reach == Reach::Public {
            return Ok(Route::PublicOnly);
        }
        let port = target.port_or_known_default().unwrap_or(443);
        let ips = resolve(host, port).await;
        match ips.iter().find(|ip| !self.allows(reach(**ip))) {
            _ if ips.is_empty() => Err(format!("{host} does not resolve")),
            Some(ip) => Err(format!(
                "{host} resolves to {ip}, a {:?} address",
                reach(*ip)
            )),
            None => Ok(Route::Direct),
        }
    }
}

/// A resolver that keeps only public addresses, for the client that follows redirects of a
/// public upstream to host names.
pub struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let public: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| reach(a.ip()) == Reach::Public)
                .collect();
            if public.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).expect("url")
    }

    #[test]
    fn addresses_are_sorted_by_the_network_they_are_on() {
        let r = |s: &str| reach(s.parse().expect("ip"));
        assert_eq!(r("8.8.8.8"), Reach::Public);
        assert_eq!(r("10.1.2.3"), Reach::Private);
        assert_eq!(r("172.16.0.1"), Reach::Private);
        assert_eq!(r("192.168.1.1"), Reach::Private);
        assert_eq!(r("100.100.100.200"), Reach::Private);
        assert_eq!(r("127.0.0.2"), Reach::Loopback);
        assert_eq!(r("169.254.169.254"), Reach::LinkLocal);
        assert_eq!(r("0.0.0.0"), Reach::Special);
        assert_eq!(r("224.0.0.1"), Reach::Special);
        assert_eq!(r("::1"), Reach::Loopback);
        assert_eq!(r("::ffff:127.0.0.1"), Reach::Loopback);
        assert_eq!(r("fe80::1"), Reach::LinkLocal);
        assert_eq!(r("fd00::1"), Reach::Private);
        assert_eq!(r("2606:4700::1111"), Reach::Public);
    }

    #[tokio::test]
    async fn a_public_upstream_may_send_the_mirror_only_to_public_https() {
        let origin = Origin::of(&url("https://93.184.216.34/v2/")).await;
        assert_eq!(
            origin.check(&url("https://1.1.1.1/blob")).await,
            Ok(Route::Direct)
        );
        assert_eq!(
            origin.check(&url("https://cdn.example/blob")).await,
            Ok(Route::PublicOnly)
        );
        for bad in [
            "http://1.1.1.1/blob",
            "file:///etc/passwd",
            "https://127.0.0.1/",
            "https://10.0.0.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/",
            "https://0.0.0.0/",
        ] {
            assert!(origin.check(&url(bad)).await.is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_private_upstream_may_use_its_own_network_but_not_loopback_or_metadata() {
        let origin = Origin::of(&url("http://10.0.0.5:5000/v2/")).await;
        assert_eq!(
            origin.check(&url("http://10.0.0.9:9000/bucket/x")).await,
            Ok(Route::Direct)
        );
        assert!(origin.check(&url("http://127.0.0.1:9000/x")).await.is_err());
        assert!(origin
            .check(&url("http://169.254.169.254/latest/meta-data"))
            .await
            .is_err());
        let loopback = Origin::of(&url("http://127.0.0.1:5000/v2/")).await;
        assert_eq!(
            loopback.check(&url("http://127.0.0.1:6000/x")).await,
            Ok(Route::Direct)
        );
        assert!(loopback.check(&url("http://10.0.0.9/x")).await.is_err());
    }
}
