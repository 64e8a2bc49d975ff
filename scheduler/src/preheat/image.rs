//! What preheat pulls: image references, and a registry client that resolves them to blobs and
//! reads blobs through a poolcast registry port (the mirror's, or an agent's), the upstream
//! registry named by `?ns=` as containerd names it.
//!
//! Credentials work as in a pull: the request goes without them first; on the `401` the
//! mirror relays from upstream, `Basic` is answered with the user's credentials and `Bearer`
//! with a token from the challenge's realm (asked with them, or anonymously). Nothing is read
//! that upstream refused the user.

use crate::error::{Error, Result};
use base64::Engine;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Largest manifest read (as the mirror's bound).
const MAX_MANIFEST: usize = 4 << 20;
/// Most platform manifests followed in one index, and most blobs one image may have.
const MAX_PLATFORMS: usize = 64;
pub const MAX_BLOBS: usize = 10_000;

const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// `[registry/]repository[:tag][@digest]`, Docker's short names expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// The registry host, as `?ns=` names it (`docker.io` for Docker Hub).
    pub registry: String,
    pub repository: String,
    /// A tag, or `sha256:...`.
    pub reference: String,
}

impl ImageRef {
    pub fn parse(text: &str) -> Result<ImageRef> {
        let bad = |message: &str| Error::ImageRef {
            image: text.chars().take(200).collect(),
            message: message.into(),
        };
        if text.is_empty() || text.len() > 512 || text.chars().any(|c| c.is_whitespace()) {
            return Err(bad("expected REGISTRY/REPOSITORY:TAG or @sha256:DIGEST"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((r, d)) => (r, Some(d)),
            None => (text, None),
        };
        let (first, remainder) = rest.split_once('/').unwrap_or(("", rest));
        let explicit = first.contains('.') || first.contains(':') || first == "localhost";
        let (registry, path) = if explicit {
            (first.to_string(), remainder.to_string())
        } else {
            ("docker.io".to_string(), rest.to_string())
        };
        let (path, tag) = match path.rsplit_once(':') {
            Some((p, t)) if !t.contains('/') => (p.to_string(), Some(t.to_string())),
            _ => (path, None),
        };
        let repository = if registry == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let name_ok = !repository.is_empty()
            && repository.split('/').all(|c| {
                !c.is_empty()
                    && c.chars().all(|ch| {
                        ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch)
                    })
            });
        if !name_ok {
            return Err(bad("the repository name is not a valid OCI name"));
        }
        let reference = match (digest, tag) {
            (Some(d), _) => {
                if !is_digest(d) {
                    return Err(bad("the digest is not sha256:<64 lowercase hex>"));
                }
                d.to_string()
            }
            (None, Some(t)) => {
                let ok = !t.is_empty()
                    && t.len() <= 128
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
                if !ok {
                    return Err(bad("the tag is not a valid OCI tag"));
                }
                t
            }
            (None, None) => "latest".to_string(),
        };
        Ok(ImageRef {
            registry,
            repository,
            reference,
        })
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.reference.starts_with("sha256:") {
            '@'
        } else {
            ':'
        };
        write!(
            f,
            "{}/{}{sep}{}",
            self.registry, self.repository, self.reference
        )
    }
}

pub fn is_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A user name and password for one registry, as in a docker/skopeo auth file.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

/// A blob of an image, with the size its manifest gives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobRef {
    pub digest: String,
    pub size: u64,
}

/// The platform manifests of an image (every one unless a platform was asked for) and the
/// blobs they name, each once.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub image: ImageRef,
    pub blobs: Vec<BlobRef>,
}

impl Resolved {
    pub fn bytes(&self) -> u64 {
        self.blobs
            .iter()
            .map(|b| b.size)
            .fold(0, u64::saturating_add)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

impl Platform {
    /// `os/arch` matches any variant; `os/arch/variant` only that one.
    fn matches(&self, wanted: &str) -> bool {
        let mut parts = wanted.split('/');
        let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
        os == Some(self.os.as_str())
            && arch == Some(self.architecture.as_str())
            && variant.is_none_or(|v| self.variant.as_deref() == Some(v))
    }
}

/// Reads images through one poolcast registry port, as one user.
#[derive(Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    base: Url,
    credentials: Option<Credentials>,
    /// What upstream accepted last (Basic or a Bearer token), sent first from then on.
    authorization: Option<HeaderValue>,
}

impl RegistryClient {
    /// `base`: `http://HOST:PORT` of a mirror or an agent.
    pub fn new(
        http: reqwest::Client,
        base: &str,
        credentials: Option<Credentials>,
    ) -> Result<RegistryClient> {
        let base = Url::parse(base).map_err(|e| Error::Url {
            url: base.chars().take(200).collect(),
            message: e.to_string(),
        })?;
        Ok(RegistryClient {
            http,
            base,
            credentials,
            authorization: None,
        })
    }

    pub fn base(&self) -> &Url {
        &self.base
    }

    fn url(&self, image: &ImageRef, kind: &str, reference: &str) -> Url {
        let mut url = self.base.clone();
        url.set_path(&format!("/v2/{}/{kind}/{reference}", image.repository));
        url.set_query(Some(&format!("ns={}", image.registry)));
        url
    }

    /// A GET that answers upstream's challenge once, as a pull would.
    async fn get(&mut self, url: &Url, accept: Option<&str>) -> Result<reqwest::Response> {
        let send = |auth: Option<&HeaderValue>| {
            let mut req = self.http.get(url.clone());
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(a) = auth {
                req = req.header(AUTHORIZATION, a.clone());
            }
            req.send()
        };
        let unreachable = |e: reqwest::Error| Error::Fetch {
            url: url.to_string(),
            message: nodepool::wire::error_chain(&e),
        };
        let resp = send(self.authorization.as_ref())
            .await
            .map_err(unreachable)?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let Some(auth) = self.answer(&challenge).await? else {
            return Err(Error::Refused {
                url: url.to_string(),
                status: 401,
            });
        };
        let resp = send(Some(&auth)).await.map_err(unreachable)?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(Error::Refused {
                url: url.to_string(),
                status: 401,
            });
        }
        self.authorization = Some(auth);
        Ok(resp)
    }

    /// The `Authorization` that answers `challenge`, or `None` when there is nothing to try.
    async fn answer(&self, challenge: &str) -> Result<Option<HeaderValue>> {
        let basic = self.credentials.as_ref().map(|c| {
            let raw = format!("{}:{}", c.username, c.password);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        });
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        let value = if scheme.eq_ignore_ascii_case("basic") {
            basic
        } else if scheme.eq_ignore_ascii_case("bearer") {
            Some(format!("Bearer {}", self.token(params, basic).await?))
        } else {
            None
        };
        Ok(value.and_then(|v| HeaderValue::from_str(&v).ok()))
    }

    /// A token from the challenge's realm, asked with the user's credentials when there are any.
    async fn token(&self, params: &str, basic: Option<String>) -> Result<String> {
        let param = |name: &str| challenge_param(params, name);
        let realm = param("realm").unwrap_or_default();
        let mut url = Url::parse(&realm).map_err(|e| Error::Fetch {
            url: realm.chars().take(200).collect(),
            message: format!("token realm: {e}"),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::Fetch {
                url: realm,
                message: "token realm must be http or https".into(),
            });
        }
        {
            let mut q = url.query_pairs_mut();
            for name in ["service", "scope"] {
                if let Some(v) = param(name) {
                    q.append_pair(name, &v);
                }
            }
        }
        let mut req = self.http.get(url.clone());
        if let Some(b) = basic {
            req = req.header(AUTHORIZATION, b);
        }
        let fail = |message: String| Error::Fetch {
            url: url.to_string(),
            message,
        };
        let resp = req
            .send()
            .await
            .map_err(|e| fail(nodepool::wire::error_chain(&e)))?;
        if matches!(resp.status().as_u16(), 401 | 403) {
            return Err(Error::Refused {
                url: url.to_string(),
                status: resp.status().as_u16(),
            });
        }
        if !resp.status().is_success() {
            return Err(fail(format!("token server answered {}", resp.status())));
        }
        let body = read_limited(resp, 64 << 10).await.map_err(fail)?;
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = serde_json::from_slice(&body).map_err(|e| fail(e.to_string()))?;
        t.token
            .or(t.access_token)
            .ok_or_else(|| fail("token server sent no token".into()))
    }

    async fn manifest(&mut self, image: &ImageRef, reference: &str) -> Result<Manifest> {
        let url = self.url(image, "manifests", reference);
        let resp = self.get(&url, Some(MANIFEST_TYPES)).await?;
        check_status(&url, image, &resp)?;
        let body = read_limited(resp, MAX_MANIFEST)
            .await
            .map_err(|message| Error::Fetch {
                url: url.to_string(),
                message,
            })?;
        serde_json::from_slice(&body).map_err(|e| Error::Fetch {
            url: url.to_string(),
            message: format!("not a manifest: {e}"),
        })
    }

    /// The blobs of `image`: of every platform in an index, or only `platform`'s (`os/arch`).
    pub async fn resolve(&mut self, image: &ImageRef, platform: Option<&str>) -> Result<Resolved> {
        let top = self.manifest(image, &image.reference).await?;
        let is_index = top.manifests.is_some()
            || top
                .media_type
                .as_deref()
                .is_some_and(|m| m.contains("index") || m.contains("list"));
        let mut blobs = BTreeSet::new();
        if is_index {
            let chosen: Vec<Descriptor> = top
                .manifests
                .unwrap_or_default()
                .into_iter()
                .filter(|d| match (platform, &d.platform) {
                    (None, _) => true,
                    (Some(want), Some(p)) => p.matches(want),
                    (Some(_), None) => false,
                })
                .take(MAX_PLATFORMS)
                .collect();
            if chosen.is_empty() {
                return Err(Error::ImageRef {
                    image: image.to_string(),
                    message: format!("no manifest for platform {}", platform.unwrap_or("(any)")),
                });
            }
            for d in chosen {
                if !is_digest(&d.digest) {
                    continue;
                }
                let m = self.manifest(image, &d.digest).await?;
                collect(&mut blobs, m);
            }
        } else {
            collect(&mut blobs, top);
        }
        if blobs.len() > MAX_BLOBS {
            return Err(Error::ImageRef {
                image: image.to_string(),
                message: format!("more than {MAX_BLOBS} blobs"),
            });
        }
        Ok(Resolved {
            image: image.clone(),
            blobs: blobs.into_iter().collect(),
        })
    }

    /// Reads one blob to the end, calling `progress` with each chunk's length; returns the
    /// bytes read. The body is not kept: reading it is what warms the cache behind the port.
    pub async fn read_blob(
        &mut self,
        image: &ImageRef,
        digest: &str,
        mut progress: impl FnMut(u64),
    ) -> Result<u64> {
        let url = self.url(image, "blobs", digest);
        let resp = self.get(&url, None).await?;
        check_status(&url, image, &resp)?;
        let mut resp = resp;
        let mut total = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| Error::Fetch {
            url: url.to_string(),
            message: nodepool::wire::error_chain(&e),
        })? {
            total += chunk.len() as u64;
            progress(chunk.len() as u64);
        }
        Ok(total)
    }
}

fn collect(blobs: &mut BTreeSet<BlobRef>, m: Manifest) {
    for d in m.config.into_iter().chain(m.layers) {
        if is_digest(&d.digest) {
            blobs.insert(BlobRef {
                digest: d.digest,
                size: d.size,
            });
        }
    }
}

fn check_status(url: &Url, image: &ImageRef, resp: &reqwest::Response) -> Result<()> {
    match resp.status() {
        s if s.is_success() => Ok(()),
        StatusCode::NOT_FOUND => Err(Error::ManifestUnknown {
            image: image.to_string(),
        }),
        s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => Err(Error::Refused {
            url: url.to_string(),
            status: s.as_u16(),
        }),
        s => Err(Error::Fetch {
            url: url.to_string(),
            message: format!("answered {s}"),
        }),
    }
}

async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| nodepool::wire::error_chain(&e))?
    {
        if out.len() + chunk.len() > limit {
            return Err(format!("body larger than {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A `name="value"` (or bare `name=value`) parameter of a `WWW-Authenticate` challenge.
fn challenge_param(params: &str, name: &str) -> Option<String> {
    let mut rest = params;
    while !rest.is_empty() {
        rest = rest.trim_start_matches([' ', ',']);
        let (key, after) = rest.split_once('=')?;
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if key.trim().eq_ignore_ascii_case(name) {
            return Some(value.to_string());
        }
        rest = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> (String, String, String) {
        let r = ImageRef::parse(s).expect(s);
        (r.registry, r.repository, r.reference)
    }

    #[test]
    fn references_name_registry_repository_and_tag_as_docker_does() {
        let t = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
        assert_eq!(parsed("alpine"), t("docker.io", "library/alpine", "latest"));
        assert_eq!(parsed("org/app:1.2"), t("docker.io", "org/app", "1.2"));
        assert_eq!(
            parsed("127.0.0.1:5000/pool/app:v1"),
            t("127.0.0.1:5000", "pool/app", "v1")
        );
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            parsed(&format!("harbor.example.com/x/y@{d}")),
            t("harbor.example.com", "x/y", &d)
        );
        assert_eq!(parsed("localhost/app"), t("localhost", "app", "latest"));
    }

    #[test]
    fn malformed_references_are_refused_with_the_reason() {
        for bad in [
            "",
            "a b",
            "UPPER/x",
            "h.io/x@sha256:12",
            "h.io/x:bad tag",
            "h.io/",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn challenge_parameters_are_read_quoted_or_bare() {
        let p = r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope=repository:x:pull"#;
        assert_eq!(
            challenge_param(p, "realm").as_deref(),
            Some("https://auth.docker.io/token")
        );
        assert_eq!(
            challenge_param(p, "service").as_deref(),
            Some("registry.docker.io")
        );
        assert_eq!(
            challenge_param(p, "scope").as_deref(),
            Some("repository:x:pull")
        );
        assert_eq!(challenge_param(p, "missing"), None);
    }

    #[test]
    fn platforms_match_with_or_without_a_variant() {
        let p = Platform {
            os: "linux".into(),
            architecture: "arm".into(),
            variant: Some("v7".into()),
        };
        assert!(p.matches("linux/arm"));
        assert!(p.matches("linux/arm/v7"));
        assert!(!p.matches("linux/arm/v6"));
        assert!(!p.matches("linux/amd64"));
    }
}
