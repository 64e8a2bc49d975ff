//! Talking to upstream registries: URLs for `?ns=`, credentials passed through, redirects
//! followed by hand so `Authorization` never leaves the registry's own origin, and OSS
//! transfer acceleration for blobs that upstream redirects to OSS. Upstream HTTPS trusts the
//! public web PKI and, with `upstreamCAFile`, the private CAs in that file.

use crate::error::{Error, Result, UpstreamReply};
use nodepool::UpstreamSpec;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use std::time::Duration;
use storage::reference::Digest;
use storage::request::read_limited;
use tracing::Instrument;
use url::Url;

const MAX_REDIRECTS: usize = 5;
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A registry the mirror fetches from.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// The name containerd uses in `?ns=`; part of every cache key that is not a digest.
    pub ns: String,
    pub base: Url,
    /// Listed in `upstreams`. Any other (`allowAnyRegistry`) is trusted with cached content
    /// only once it proved it holds it (see `blobs::prove`).
    pub configured: bool,
}

impl Upstream {
    pub fn from_spec(spec: &UpstreamSpec) -> Self {
        Upstream {
            ns: spec.ns.clone(),
            base: spec.url.clone(),
            configured: true,
        }
    }

    fn url(&self, path: &str) -> Url {
        let mut u = self.base.clone();
        u.set_path(path);
        u.set_query(None);
        u
    }

    pub fn ping_url(&self) -> Url {
        self.url("/v2/")
    }

    pub fn manifest_url(&self, repo: &str, reference: &str) -> Url {
        self.url(&format!("/v2/{repo}/manifests/{reference}"))
    }

    pub fn blob_url(&self, repo: &str, digest: &Digest) -> Url {
        self.url(&format!("/v2/{repo}/blobs/{digest}"))
    }
}

/// What one request sends besides method and URL: the client's headers, as raw bytes
/// (the server side and reqwest use different `http` crate versions).
#[derive(Default, Clone, Copy)]
pub struct RequestOpts<'a> {
    pub auth: Option<&'a [u8]>,
    pub accept: Option<&'a [u8]>,
}

impl<'a> RequestOpts<'a> {
    pub fn new(
        auth: Option<&'a actix_web::http::header::HeaderValue>,
        accept: Option<&'a actix_web::http::header::HeaderValue>,
    ) -> Self {
        RequestOpts {
            auth: auth.map(|h| h.as_bytes()),
            accept: accept.map(|h| h.as_bytes()),
        }
    }
}

fn header_value(bytes: &[u8], name: &str) -> Result<HeaderValue> {
    HeaderValue::from_bytes(bytes)
        .map_err(|_| Error::transfer(format!("client sent an invalid {name} header")))
}

/// CA certificates trusted for upstream HTTPS besides the public web PKI, read from the
/// `upstreamCAFile` named by `path`.
#[derive(Debug, Clone, Default)]
pub struct UpstreamRoots {
    path: String,
    certs: Vec<reqwest::Certificate>,
}

impl UpstreamRoots {
    /// Reads a PEM bundle. A file that cannot be read, holds no certificate or holds a bad
    /// one is an error naming the key and the path: the mirror must not start without the
    /// trust it was told to have.
    pub fn load(path: &str) -> Result<Self> {
        let fail = |message: String| Error::UpstreamCa {
            path: path.to_string(),
            message,
        };
        let pem = std::fs::read(path).map_err(|e| fail(format!("cannot be read: {e}")))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            fail(format!(
                "is not a PEM certificate bundle: {}",
                nodepool::wire::error_chain(&e)
            ))
        })?;
        if certs.is_empty() {
            return Err(fail(
                "holds no certificate (expected -----BEGIN CERTIFICATE----- blocks)".into(),
            ));
        }
        Ok(UpstreamRoots {
            path: path.to_string(),
            certs,
        })
    }

    pub fn len(&self) -> usize {
        self.certs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

pub struct UpstreamClient {
    http: reqwest::Client,
    /// Follows a public upstream's redirects to host names: connects to public addresses only.
    public_http: reqwest::Client,
    oss_accelerate: bool,
    /// Counts OSS redirects left unaccelerated because their signature covers the host.
    oss_unaccelerated: prometheus_client::metrics::counter::Counter,
    /// The longest one request may take, body included (`upstreamTimeout`).
    timeout: Duration,
}

impl UpstreamClient {
    /// `extra_roots` are trusted besides the public web PKI (empty: the public PKI only).
    pub fn new(
        connect_timeout: Duration,
        oss_accelerate: bool,
        extra_roots: &UpstreamRoots,
    ) -> Result<Self> {
        let http = Self::client(connect_timeout, extra_roots, false)?;
        let public_http = Self::client(connect_timeout, extra_roots, true)?;
        Ok(UpstreamClient {
            http,
            public_http,
            oss_accelerate,
            oss_unaccelerated: Default::default(),
            timeout: Duration::from_secs(3600),
        })
    }

    /// Every request, body included, ends within `timeout` (`upstreamTimeout`).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn client(
        connect_timeout: Duration,
        extra_roots: &UpstreamRoots,
        public_only: bool,
    ) -> Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(connect_timeout)
            .read_timeout(Duration::from_secs(60))
            .pool_idle_timeout(nodepool::wire::CLIENT_POOL_IDLE)
            .user_agent(concat!("poolcast-mirror/", env!("CARGO_PKG_VERSION")));
        for cert in &extra_roots.certs {
            builder = builder.add_root_certificate(cert.clone());
        }
        if public_only {
            builder = builder.dns_resolver(std::sync::Arc::new(crate::redirect::PublicOnly));
        }
        // The PEM parse only checks the armour; the certificates themselves are parsed here.
        builder.build().map_err(|e| {
            if extra_roots.is_empty() {
                Error::transfer(format!(
                    "building HTTP client: {}",
                    nodepool::wire::error_chain(&e)
                ))
            } else {
                Error::UpstreamCa {
                    path: extra_roots.path.clone(),
                    message: format!(
                        "not usable as CA certificates: {}",
                        nodepool::wire::error_chain(&e)
                    ),
                }
            }
        })
    }

    /// Counts into `counter` each OSS redirect that acceleration must leave alone.
    pub fn counting_unaccelerated(
        mut self,
        counter: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        self.oss_unaccelerated = counter;
        self
    }

    /// Sends a request, following redirects where `redirect` allows. `Authorization` goes
    /// only to the origin of `url`.
    pub async fn send(&self, method: Method, url: Url, opts: RequestOpts<'_>) -> Result<Response> {
        if !serve::trace::enabled() {
            return self.send_traced(method, url, opts).await;
        }
        let span = tracing::info_span!(
            "upstream",
            otel.kind = "client",
            http.request.method = %method,
            server.address = url.host_str().unwrap_or(""),
            url.path = url.path(),
        );
        self.send_traced(method, url, opts).instrument(span).await
    }

    /// `send`, with the current span's `traceparent` to the origin (not to redirect targets,
    /// which may be presigned).
    async fn send_traced(
        &self,
        method: Method,
        url: Url,
        opts: RequestOpts<'_>,
    ) -> Result<Response> {
        let origin = url.origin();
        let mut upstream = None;
        let mut route = crate::redirect::Route::Direct;
        let mut current = url;
        for _ in 0..=MAX_REDIRECTS {
            let mut headers = HeaderMap::new();
            if let Some(accept) = opts.accept {
                headers.insert(ACCEPT, header_value(accept, "Accept")?);
            }
            if let Some(auth) = opts.auth.filter(|_| current.origin() == origin) {
                let mut value = header_value(auth, "Authorization")?;
                value.set_sensitive(true);
                headers.insert(AUTHORIZATION, value);
            }
            if current.origin() == origin {
                for (name, value) in serve::trace::headers() {
                    if let Ok(value) = reqwest::header::HeaderValue::from_str(&value) {
                        headers.insert(name, value);
                    }
                }
            }
            let http = match route {
                crate::redirect::Route::Direct => &self.http,
                crate::redirect::Route::PublicOnly => &self.public_http,
            };
            let resp = http
                .request(method.clone(), current.clone())
                .headers(headers)
                .timeout(self.timeout)
                .send()
                .await
                .map_err(|e| Error::UpstreamUnreachable {
                    url: redact(&current),
                    message: nodepool::wire::error_chain(&e),
                })?;
            if !resp.status().is_redirection() || resp.status() == StatusCode::NOT_MODIFIED {
                return Ok(resp);
            }
            let Some(location) = resp.headers().get(LOCATION).and_then(|l| l.to_str().ok()) else {
                return Ok(resp);
            };
            let next = current.join(location).map_err(|e| {
                Error::transfer(format!(
                    "upstream {} redirected to an invalid location: {e}",
                    redact(&current)
                ))
            })?;
            let next = match self.oss_accelerate.then(|| oss_accelerate(&next)) {
                Some(Acceleration::Rewritten(url)) => url,
                Some(Acceleration::HostSigned) => {
                    self.oss_unaccelerated.inc();
                    tracing::info!(to = %redact(&next), "OSS URL signed with V4 over its host; fetched unaccelerated");
                    next
                }
                Some(Acceleration::NotOss) | None => next,
            };
            // The first hop is the upstream itself: what its redirects are judged against.
            let from = match upstream.take() {
                Some(from) => from,
                None => crate::redirect::Origin::of(&current).await,
            };
            route = from.check(&next).await.map_err(|why| {
                Error::transfer(format!(
                    "upstream {} redirected to {}: refused, {why}",
                    redact(&current),
                    redact(&next)
                ))
            })?;
            upstream = Some(from);
            current = next;
            tracing::debug!(to = %redact(&current), "following upstream redirect");
        }
        Err(Error::transfer(format!(
            "more than {MAX_REDIRECTS} redirects"
        )))
    }
}

/// Turns a non-success answer into an error that relays upstream's status and challenge.
pub async fn refusal(resp: Response) -> UpstreamReply {
    let status = resp.status().as_u16();
    let header = |name| {
        resp.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let www_authenticate = header(WWW_AUTHENTICATE);
    let content_type = header(reqwest::header::CONTENT_TYPE);
    let body = read_limited(resp, MAX_ERROR_BODY).await.unwrap_or_default();
    UpstreamReply {
        status,
        www_authenticate,
        content_type,
        body: body.into(),
    }
}

/// What OSS transfer acceleration does with a redirect.
#[derive(Debug, PartialEq, Eq)]
pub enum Acceleration {
    /// `BUCKET.oss-REGION.aliyuncs.com` became `BUCKET.oss-accelerate.aliyuncs.com`.
    Rewritten(Url),
    /// An OSS internet URL whose V4 signature covers its host: rewriting would void it.
    HostSigned,
    /// Not an OSS internet URL: another host, an `-internal` one (the registry was reached in
    /// a VPC, where acceleration, an internet path, has nothing to offer), or already accelerated.
    NotOss,
}

/// `BUCKET.oss-REGION.aliyuncs.com` -> `BUCKET.oss-accelerate.aliyuncs.com`, port, path and
/// query kept. OSS V1 presigned URLs do not sign the host; a V4 URL that names `host` among
/// `x-oss-additional-headers` does, and is left alone.
pub fn oss_accelerate(url: &Url) -> Acceleration {
    let Some(host) = url.host_str() else {
        return Acceleration::NotOss;
    };
    let Some((bucket, endpoint)) = host
        .strip_suffix(".aliyuncs.com")
        .and_then(|rest| rest.split_once('.'))
    else {
        return Acceleration::NotOss;
    };
    if bucket.is_empty()
        || !endpoint.starts_with("oss-")
        || endpoint.contains('.')
        || endpoint.ends_with("-internal")
        || endpoint == "oss-accelerate"
    {
        return Acceleration::NotOss;
    }
    let signs_host = url.query_pairs().any(|(k, v)| {
        k.eq_ignore_ascii_case("x-oss-additional-headers")
            && v.split(';').any(|h| h.trim().eq_ignore_ascii_case("host"))
    });
    if signs_host {
        return Acceleration::HostSigned;
    }
    let mut out = url.clone();
    match out.set_host(Some(&format!("{bucket}.oss-accelerate.aliyuncs.com"))) {
        Ok(()) => Acceleration::Rewritten(out),
        Err(_) => Acceleration::NotOss,
    }
}

/// The accelerated URL, when acceleration applies.
pub fn oss_accelerated(url: &Url) -> Option<Url> {
    match oss_accelerate(url) {
        Acceleration::Rewritten(u) => Some(u),
        _ => None,
    }
}

/// A URL fit for logs: no query (presigned URLs carry signatures), no userinfo.
pub fn redact(url: &Url) -> String {
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "{}://{}{port}{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.path()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oss_hosts_are_rewritten_to_the_accelerate_endpoint() {
        let u = Url::parse("https://acr-bucket.oss-cn-hangzhou.aliyuncs.com:8443/docker/blob?OSSAccessKeyId=x&Expires=1&Signature=y")
            .expect("url");
        let a = oss_accelerated(&u).expect("rewritten");
        assert_eq!(a.host_str(), Some("acr-bucket.oss-accelerate.aliyuncs.com"));
        assert_eq!(a.query(), u.query());
        assert_eq!(a.path(), u.path());
        assert_eq!(a.port(), Some(8443));
        let internal =
            Url::parse("https://b.oss-cn-hangzhou-internal.aliyuncs.com/x").expect("url");
        assert_eq!(
            oss_accelerate(&internal),
            Acceleration::NotOss,
            "a VPC path stays"
        );
        let plain = Url::parse("https://b.oss-cn-beijing.aliyuncs.com/x").expect("url");
        assert!(oss_accelerated(&plain).is_some());
    }

    #[test]
    fn v4_urls_that_sign_the_host_and_other_hosts_are_left_alone() {
        let v4 = Url::parse("https://b.oss-cn-hangzhou.aliyuncs.com/x?x-oss-signature-version=OSS4-HMAC-SHA256&x-oss-additional-headers=host;range")
            .expect("url");
        assert_eq!(oss_accelerate(&v4), Acceleration::HostSigned);
        let v4_unsigned = Url::parse("https://b.oss-cn-hangzhou.aliyuncs.com/x?x-oss-signature-version=OSS4-HMAC-SHA256&x-oss-additional-headers=range")
            .expect("url");
        assert!(oss_accelerated(&v4_unsigned).is_some());
        for other in [
            "https://registry-1.docker.io/v2/",
            "https://b.oss-accelerate.aliyuncs.com/x",
            "https://cr.cn-hangzhou.aliyuncs.com/x",
            "https://evil.com/b.oss-cn-hangzhou.aliyuncs.com",
        ] {
            assert!(
                oss_accelerated(&Url::parse(other).expect("url")).is_none(),
                "{other}"
            );
        }
    }

    #[test]
    fn an_unusable_ca_file_is_an_error_naming_the_key_and_the_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("missing.pem");
        let missing = missing.to_str().expect("utf-8 path");
        let err = UpstreamRoots::load(missing)
            .expect_err("missing file")
            .to_string();
        assert!(
            err.starts_with(&format!("upstreamCAFile {missing}: cannot be read")),
            "{err}"
        );

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").expect("write");
        let empty = empty.to_str().expect("utf-8 path");
        let err = UpstreamRoots::load(empty)
            .expect_err("no certificate")
            .to_string();
        assert!(
            err.contains("upstreamCAFile") && err.contains("holds no certificate"),
            "{err}"
        );

        // Valid armour around bytes that are not a certificate: refused when the client is built.
        let bogus = dir.path().join("bogus.pem");
        std::fs::write(
            &bogus,
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let bogus = bogus.to_str().expect("utf-8 path");
        let err = match UpstreamRoots::load(bogus) {
            Err(e) => e.to_string(),
            Ok(roots) => UpstreamClient::new(Duration::from_secs(1), false, &roots)
                .err()
                .expect("a bogus certificate is refused")
                .to_string(),
        };
        assert!(
            err.starts_with(&format!("upstreamCAFile {bogus}: ")),
            "{err}"
        );

        let bad_base64 = dir.path().join("bad.pem");
        std::fs::write(
            &bad_base64,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let bad_base64 = bad_base64.to_str().expect("utf-8 path");
        let err = UpstreamRoots::load(bad_base64)
            .expect_err("bad PEM")
            .to_string();
        assert!(
            err.starts_with(&format!("upstreamCAFile {bad_base64}: ")),
            "{err}"
        );
    }

    #[test]
    fn upstream_urls_are_built_from_validated_parts() {
        let up = Upstream {
            ns: "docker.io".into(),
            base: Url::parse("https://registry-1.docker.io").expect("url"),
            configured: true,
        };
        assert_eq!(
            up.manifest_url("library/alpine", "3.20").as_str(),
            "https://registry-1.docker.io/v2/library/alpine/manifests/3.20"
        );
        assert_eq!(up.ping_url().as_str(), "https://registry-1.docker.io/v2/");
    }
}
