//! Image references as container runtimes read them (the distribution `reference` rules): the
//! registry host, the repository path and the tag and/or digest. A reference without a registry
//! host is Docker Hub's (`nginx` is `docker.io/library/nginx`). Only what parses cleanly is
//! rewritten; anything else is left for the runtime to judge.

/// A parsed reference, normalised: `domain` lowercased (`index.docker.io` is `docker.io`),
/// Docker Hub's official images under `library/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub domain: String,
    pub path: String,
    /// `:tag`, `@digest`, `:tag@digest`, or empty (the runtime's `latest`).
    pub tail: String,
}

const DOCKER_HUB: &str = "docker.io";

impl ImageRef {
    pub fn parse(image: &str) -> Option<ImageRef> {
        if image.is_empty() || image.len() > 4096 || image.bytes().any(|b| !b.is_ascii_graphic()) {
            return None;
        }
        let (name_tag, digest) = match image.split_once('@') {
            Some((n, d)) if valid_digest(d) => (n, Some(d)),
            Some(_) => return None,
            None => (image, None),
        };
        // A tag is what follows the last `:` after the last `/` (a `:` before it is a port).
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&name_tag[..at], Some(&name_tag[at + 1..]))
            }
            None => (name_tag, None),
        };
        if tag.is_some_and(|t| !valid_tag(t)) {
            return None;
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first.to_ascii_lowercase(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let domain = if domain == "index.docker.io" {
            DOCKER_HUB.to_string()
        } else {
            domain
        };
        if !valid_path(&path) || !valid_domain(&domain) {
            return None;
        }
        let path = if domain == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let mut tail = String::new();
        if let Some(t) = tag {
            tail.push(':');
            tail.push_str(t);
        }
        if let Some(d) = digest {
            tail.push('@');
            tail.push_str(d);
        }
        Some(ImageRef { domain, path, tail })
    }

    /// The same image under another registry host.
    pub fn with_domain(&self, domain: &str) -> String {
        format!("{domain}/{}{}", self.path, self.tail)
    }
}

fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `algorithm:encoded`, e.g. `sha256:` and 64 hex digits.
fn valid_digest(digest: &str) -> bool {
    let Some((alg, enc)) = digest.split_once(':') else {
        return false;
    };
    !alg.is_empty()
        && alg.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'+' | b'.' | b'_' | b'-')
        })
        && enc.len() >= 32
        && enc
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'=' | b'_' | b'-'))
}

/// Repository path components: lowercase alphanumerics with `.`, `_`, `-` inside.
fn valid_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 255
        && path.split('/').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|x| {
                    x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'.' | b'_' | b'-')
                })
        })
}

fn valid_domain(domain: &str) -> bool {
    let host = match domain.rsplit_once(':') {
        Some((h, port)) if port.parse::<u16>().is_ok() => h,
        Some(_) => return false,
        None => domain,
    };
    !host.is_empty()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:4c1b3e5ee2e3c1ab0c5d1d2f48ea0b6f3e8f0b1c2d3e4f5a6b7c8d9e0f1a2b3c";

    fn parts(image: &str) -> (String, String, String) {
        let r = ImageRef::parse(image).unwrap_or_else(|| panic!("{image} parses"));
        (r.domain, r.path, r.tail)
    }

    fn p(d: &str, path: &str, tail: &str) -> (String, String, String) {
        (d.into(), path.into(), tail.into())
    }

    #[test]
    fn references_split_as_runtimes_read_them() {
        assert_eq!(
            parts("test-registry-vpc.cn-hangzhou.cr.aliyuncs.com/docker-builder/nginx:latest"),
            p(
                "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com",
                "docker-builder/nginx",
                ":latest"
            )
        );
        assert_eq!(parts("nginx"), p("docker.io", "library/nginx", ""));
        assert_eq!(
            parts("nginx:1.25"),
            p("docker.io", "library/nginx", ":1.25")
        );
        assert_eq!(
            parts("bitnami/redis:7"),
            p("docker.io", "bitnami/redis", ":7")
        );
        assert_eq!(
            parts("index.docker.io/library/busybox"),
            p("docker.io", "library/busybox", "")
        );
        assert_eq!(
            parts("10.0.0.5:5000/team/app:v2"),
            p("10.0.0.5:5000", "team/app", ":v2")
        );
        assert_eq!(parts("localhost/app"), p("localhost", "app", ""));
        assert_eq!(
            parts(&format!("10.0.0.5:5000/team/app@{DIGEST}")),
            p("10.0.0.5:5000", "team/app", &format!("@{DIGEST}"))
        );
        assert_eq!(
            parts(&format!("nginx:1.25@{DIGEST}")),
            p("docker.io", "library/nginx", &format!(":1.25@{DIGEST}"))
        );
        assert_eq!(
            parts("Harbor.Example.com/a/b:c"),
            p("harbor.example.com", "a/b", ":c")
        );
        let r = ImageRef::parse("harbor.example.com/a/b:c").expect("parses");
        assert_eq!(r.with_domain("x.local:65001"), "x.local:65001/a/b:c");
    }

    #[test]
    fn malformed_references_are_not_parsed() {
        for image in [
            "",
            "nginx:",
            "nginx@sha256:short",
            "nginx@",
            "Upper/Case",
            "a b",
            "host:port/x",
            "registry.example.com/",
            "registry.example.com//x",
            "x:tag:more",
            "-x/y",
        ] {
            assert_eq!(ImageRef::parse(image), None, "{image}");
        }
    }
}
