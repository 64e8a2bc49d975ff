//! Distributed registry names: the host the admission webhook writes into a pod's images so
//! that containerd sends the pull to the node's agent, and the way back, which the agent takes
//! when containerd names that host in `?ns=`.
//!
//! ```text
//!   registry (as image references name it)          distributed name (p2p.port 65001)
//!   test-registry-vpc.cn-hangzhou.cr.aliyuncs.com   test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001
//!   crpi-x.cn-hangzhou.personal.cr.aliyuncs.com     crpi-x.distributed.cn-hangzhou.personal.cr.aliyuncs.com:65001
//!   harbor.example.com                              harbor.example.com.distributed.local:65001
//!   10.0.0.5:5000                                   10.0.0.5.port-5000.distributed.local:65001
//! ```
//!
//! ACR hosts (`*.cr.aliyuncs.com`) get `.distributed` after the instance label, exactly as the
//! ACK add-on does. Any other registry gets the configurable suffix (`distributedSuffix`,
//! default `distributed.local`) appended, its port, if any, carried as a `port-N` label. Both
//! directions need only the suffix, never a list of registries, and a name maps back only if it
//! maps forth to the same name, so a registry host that merely looks like a distributed name is
//! never taken for one.
//!
//! CRI-O cannot pass `?ns=`, so its mirror location names the registry as the first component
//! of the repository path instead: the distributed name without its port, which is always a
//! valid path component (`127.0.0.1:65001/docker.io.distributed.local/library/alpine`).

/// The suffix of distributed names of registries that are not ACR instances.
pub const DEFAULT_SUFFIX: &str = "distributed.local";

const ACR_DOMAIN: &str = ".cr.aliyuncs.com";
const ACR_LABEL: &str = "distributed";
const PORT_LABEL: &str = "port-";

/// The naming in force: the generic suffix and the agent's port (`p2p.port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistributedNames {
    suffix: String,
    port: u16,
}

impl DistributedNames {
    /// Checks the suffix: DNS labels (`distributed.local`, `p2p.example.internal`).
    pub fn new(suffix: &str, port: u16) -> Result<Self, String> {
        let suffix = suffix.trim().to_ascii_lowercase();
        if suffix.is_empty() || suffix.len() > 120 || !suffix.split('.').all(valid_label) {
            return Err(format!(
                "`{suffix}` is not a DNS name like distributed.local"
            ));
        }
        if port == 0 {
            return Err("port 0 is not a port".into());
        }
        Ok(DistributedNames { suffix, port })
    }

    pub fn suffix(&self) -> &str {
        &self.suffix
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The distributed name (`host:port`) of a registry `host[:port]`; `None` for what cannot
    /// be renamed (an IPv6 literal, a malformed host, a name that already is a distributed one).
    pub fn distributed(&self, registry: &str) -> Option<String> {
        let registry = registry.to_ascii_lowercase();
        if self.registry(&registry).is_some() {
            return None;
        }
        let (host, port) = split_port(&registry)?;
        if !host.split('.').all(valid_label) {
            return None;
        }
        let renamed = match (acr_instance(host), port) {
            (Some((instance, rest)), None) => format!("{instance}.{ACR_LABEL}.{rest}"),
            (_, Some(port)) => format!("{host}.{PORT_LABEL}{port}.{}", self.suffix),
            (None, None) => format!("{host}.{}", self.suffix),
        };
        let name = format!("{renamed}:{}", self.port);
        (name.len() <= 253 && self.registry(&name).as_deref() == Some(registry.as_str()))
            .then_some(name)
    }

    /// The registry `host[:port]` a distributed name stands for, with or without the agent's
    /// port; `None` when `name` is not a distributed name.
    pub fn registry(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        let (host, _port) = split_port(&name)?;
        if host.ends_with(ACR_DOMAIN) {
            let (instance, rest) = host.split_once('.')?;
            let rest = rest.strip_prefix(ACR_LABEL)?.strip_prefix('.')?;
            let real = format!("{instance}.{rest}");
            return acr_instance(&real).is_some().then_some(real);
        }
        let base = host.strip_suffix(&self.suffix)?.strip_suffix('.')?;
        if base.is_empty() {
            return None;
        }
        match base.rsplit_once('.') {
            Some((h, label)) if label.starts_with(PORT_LABEL) => {
                let port: u16 = label[PORT_LABEL.len()..].parse().ok()?;
                (port != 0 && !h.is_empty()).then(|| format!("{h}:{port}"))
            }
            _ => Some(base.to_string()),
        }
    }
}

impl DistributedNames {
    /// The path component that names `registry` in a CRI-O mirror location: its distributed
    /// name without the port.
    pub fn path_component(&self, registry: &str) -> Option<String> {
        let name = self.distributed(registry)?;
        let (host, _port) = name.rsplit_once(':')?;
        Some(host.to_string())
    }

    /// A repository whose first component is a distributed name, split into the registry it
    /// stands for and the repository on that registry; `None` for any other repository.
    pub fn split_repo<'a>(&self, repo: &'a str) -> Option<(String, &'a str)> {
        let (first, rest) = repo.split_once('/')?;
        if first.contains(':') || rest.is_empty() {
            return None;
        }
        Some((self.registry(first)?, rest))
    }
}

/// `instance.REGION...cr.aliyuncs.com` split after the instance label, when `host` is an ACR
/// registry host with a region (or `REGION.personal`) between.
fn acr_instance(host: &str) -> Option<(&str, &str)> {
    let (instance, rest) = host.split_once('.')?;
    let region = rest.strip_suffix(ACR_DOMAIN)?;
    (!region.is_empty() && region != ACR_LABEL && !region.starts_with("distributed."))
        .then_some((instance, rest))
}

/// `host[:port]` with a numeric port; `None` for IPv6 literals and junk.
fn split_port(text: &str) -> Option<(&str, Option<u16>)> {
    if text.contains('[') || text.is_empty() {
        return None;
    }
    match text.rsplit_once(':') {
        Some((host, port)) => {
            let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
            (!host.is_empty() && !host.contains(':')).then_some((host, Some(port)))
        }
        None => Some((text, None)),
    }
}

fn valid_label(label: &str) -> bool {
    let b = label.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> DistributedNames {
        DistributedNames::new(DEFAULT_SUFFIX, 65001).expect("valid")
    }

    #[test]
    fn acr_hosts_get_distributed_after_the_instance_as_in_the_seeds() {
        let n = names();
        assert_eq!(
            n.distributed("test-registry-vpc.cn-hangzhou.cr.aliyuncs.com")
                .as_deref(),
            Some("test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001")
        );
        assert_eq!(
            n.distributed("test-registry.cn-hangzhou.cr.aliyuncs.com")
                .as_deref(),
            Some("test-registry.distributed.cn-hangzhou.cr.aliyuncs.com:65001")
        );
        assert_eq!(
            n.distributed("crpi-abc123-vpc.cn-hangzhou.personal.cr.aliyuncs.com")
                .as_deref(),
            Some("crpi-abc123-vpc.distributed.cn-hangzhou.personal.cr.aliyuncs.com:65001")
        );
        // The seeds' port follows p2p.port.
        let other = DistributedNames::new(DEFAULT_SUFFIX, 7001).expect("valid");
        assert_eq!(
            other
                .distributed("Test-Registry-VPC.cn-hangzhou.cr.aliyuncs.com")
                .as_deref(),
            Some("test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:7001")
        );
    }

    #[test]
    fn acr_names_map_back_with_or_without_the_port() {
        let n = names();
        for name in [
            "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:65001",
            "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com",
            "TEST-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:7001",
        ] {
            assert_eq!(
                n.registry(name).as_deref(),
                Some("test-registry-vpc.cn-hangzhou.cr.aliyuncs.com"),
                "{name}"
            );
        }
        assert_eq!(
            n.registry("crpi-x.distributed.cn-hangzhou.personal.cr.aliyuncs.com:65001")
                .as_deref(),
            Some("crpi-x.cn-hangzhou.personal.cr.aliyuncs.com")
        );
        // Real registries are not distributed names.
        assert_eq!(
            n.registry("test-registry-vpc.cn-hangzhou.cr.aliyuncs.com"),
            None
        );
        assert_eq!(n.registry("distributed.cr.aliyuncs.com"), None);
        assert_eq!(n.registry("x.distributed.cr.aliyuncs.com"), None);
    }

    #[test]
    fn other_registries_get_the_suffix_and_keep_their_port() {
        let n = names();
        let cases = [
            ("docker.io", "docker.io.distributed.local:65001"),
            (
                "harbor.example.com",
                "harbor.example.com.distributed.local:65001",
            ),
            (
                "10.0.0.5:5000",
                "10.0.0.5.port-5000.distributed.local:65001",
            ),
            (
                "localhost:5000",
                "localhost.port-5000.distributed.local:65001",
            ),
            (
                "registry.port-5.example.com",
                "registry.port-5.example.com.distributed.local:65001",
            ),
            // An ACR host with an explicit port is not the ACR form.
            (
                "x.cn-hangzhou.cr.aliyuncs.com:443",
                "x.cn-hangzhou.cr.aliyuncs.com.port-443.distributed.local:65001",
            ),
        ];
        for (registry, name) in cases {
            assert_eq!(n.distributed(registry).as_deref(), Some(name), "{registry}");
            assert_eq!(n.registry(name).as_deref(), Some(registry), "{name}");
        }
        let custom = DistributedNames::new("P2P.Example.Internal", 65001).expect("valid");
        assert_eq!(
            custom.distributed("harbor.example.com").as_deref(),
            Some("harbor.example.com.p2p.example.internal:65001")
        );
        assert_eq!(
            custom
                .registry("harbor.example.com.p2p.example.internal:65001")
                .as_deref(),
            Some("harbor.example.com")
        );
        assert_eq!(
            custom.registry("harbor.example.com.distributed.local:65001"),
            None
        );
    }

    #[test]
    fn what_cannot_be_renamed_is_left_alone() {
        let n = names();
        for registry in [
            "[::1]:5000",
            "bad_host.example.com",
            "",
            "host:0",
            "host:99999",
            "-x.example.com",
            // Already distributed: renaming twice would never map back.
            "docker.io.distributed.local:65001",
            "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com",
        ] {
            assert_eq!(n.distributed(registry), None, "{registry}");
        }
        assert_eq!(n.registry("distributed.local"), None);
        assert_eq!(n.registry(".distributed.local"), None);
        assert_eq!(n.registry("harbor.example.com"), None);
        assert_eq!(n.registry("x.port-0.distributed.local"), None);
        assert_eq!(n.registry("x.port-99999.distributed.local"), None);
    }

    #[test]
    fn bad_suffixes_are_rejected() {
        for suffix in ["", ".local", "a..b", "under_score.local", "-x.local"] {
            assert!(DistributedNames::new(suffix, 65001).is_err(), "{suffix}");
        }
        assert!(DistributedNames::new("distributed.local", 0).is_err());
    }

    #[test]
    fn a_repository_path_names_its_registry_by_distributed_name_for_crio() {
        let n = names();
        for registry in [
            "docker.io",
            "10.0.0.5:5000",
            "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com",
        ] {
            let first = n.path_component(registry).expect("renamed");
            assert!(!first.contains(':'), "{first}");
            let repo = format!("{first}/library/alpine");
            assert_eq!(
                n.split_repo(&repo),
                Some((registry.to_string(), "library/alpine")),
                "{repo}"
            );
        }
        // Ordinary repositories, including ones whose first component has dots, are left alone.
        assert_eq!(n.split_repo("library/alpine"), None);
        assert_eq!(n.split_repo("my.org/app"), None);
        assert_eq!(n.split_repo("docker.io.distributed.local"), None);
        assert_eq!(n.split_repo("docker.io.distributed.local:65001/app"), None);
    }
}
