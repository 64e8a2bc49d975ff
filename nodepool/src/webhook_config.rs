//! The admission webhook's configuration: which registries' images it sends to the node-local
//! agent, under which names (`distributed`), and how it serves the API server (HTTPS).

use crate::acr_config::AcrConfig;
use crate::config::load_yaml;
use crate::distributed::{DistributedNames, DEFAULT_SUFFIX};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookConfig {
    /// Address to listen on (HTTPS).
    pub listen: String,
    /// Registry hosts (`host[:port]` as image references name them; the values' `registries[].host`)
    /// whose images are rewritten to the agent.
    pub registries: Vec<String>,
    /// The agent's port on every node, which rewritten images name (`p2p.port`).
    pub port: u16,
    /// Suffix of the distributed names of registries that are not ACR instances.
    pub distributed_suffix: String,
    /// PEM certificate chain served to the API server.
    pub tls_cert_file: String,
    /// PEM private key of that certificate.
    pub tls_key_file: String,
    /// PEM CA bundle that signs the API server's client certificate for webhooks (its
    /// AdmissionConfiguration kubeconfig). Set: a review over a connection without such a
    /// certificate is refused, so no pod in the cluster can forge one; empty: not checked
    /// (then keep others off the webhook's port with a NetworkPolicy).
    #[serde(rename = "clientCAFile")]
    pub client_ca_file: String,
    /// Serve plain HTTP instead: for tests and local trials only (the API server calls webhooks
    /// over HTTPS).
    pub plain_http: bool,
    /// ACR EE instances named by id: every domain of each is added to `registries` once
    /// resolved, and again periodically.
    pub acr: AcrConfig,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            listen: "0.0.0.0:8443".into(),
            registries: Vec::new(),
            port: 65001,
            distributed_suffix: DEFAULT_SUFFIX.into(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            client_ca_file: String::new(),
            plain_http: false,
            acr: AcrConfig::default(),
        }
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> Error {
    Error::Invalid {
        key,
        message: message.into(),
    }
}

impl WebhookConfig {
    pub fn load(path: &Path) -> Result<Self> {
        load_yaml(path)
    }

    pub fn validate(&self) -> Result<()> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "listen",
                format!("`{}` is not an address like 0.0.0.0:8443", self.listen),
            ));
        }
        let names = self.names()?;
        self.acr.validate()?;
        if self.registries.is_empty() && !self.acr.is_enabled() {
            return Err(invalid(
                "registries",
                "at least one registry host is needed (e.g. test-registry-vpc.cn-hangzhou.cr.aliyuncs.com)",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for r in &self.registries {
            if !seen.insert(r.to_ascii_lowercase()) {
                return Err(invalid("registries", format!("`{r}` is listed twice")));
            }
            if names.distributed(r).is_none() {
                return Err(invalid(
                    "registries",
                    format!(
                        "`{r}` is not a registry host[:port] that can be given a distributed name"
                    ),
                ));
            }
        }
        if self.plain_http && !self.client_ca_file.is_empty() {
            return Err(invalid(
                "clientCAFile",
                "needs HTTPS: a client certificate comes with TLS (unset plainHttp)",
            ));
        }
        if !self.plain_http {
            for (key, path) in [
                ("tlsCertFile", &self.tls_cert_file),
                ("tlsKeyFile", &self.tls_key_file),
            ] {
                if path.is_empty() {
                    return Err(invalid(
                        key,
                        "needed: the API server calls webhooks over HTTPS (plainHttp is for tests only)",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The naming of distributed hosts this config asks for.
    pub fn names(&self) -> Result<DistributedNames> {
        if self.port == 0 {
            return Err(invalid("port", "0 is not a port (the agent's p2p.port)"));
        }
        DistributedNames::new(&self.distributed_suffix, self.port)
            .map_err(|m| invalid("distributedSuffix", m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> std::result::Result<WebhookConfig, String> {
        let c: WebhookConfig = crate::config::parse_yaml(yaml)?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn keys_are_read_and_checked() {
        let c = check(
            "listen: 127.0.0.1:9443\nregistries: [test-registry-vpc.cn-hangzhou.cr.aliyuncs.com, docker.io]\n\
             port: 7001\ndistributedSuffix: p2p.internal\ntlsCertFile: /tls/tls.crt\ntlsKeyFile: /tls/tls.key\n",
        )
        .expect("valid");
        assert_eq!(c.port, 7001);
        assert_eq!(
            c.names()
                .expect("names")
                .distributed("docker.io")
                .as_deref(),
            Some("docker.io.p2p.internal:7001")
        );
        check("registries: [docker.io]\nplainHttp: true\n").expect("plain HTTP needs no cert");
    }

    #[test]
    fn bad_values_name_the_key() {
        let bad = |yaml: &str| check(yaml).expect_err("invalid");
        let tls = "tlsCertFile: c\ntlsKeyFile: k\n";
        assert!(bad(&format!("{tls}registries: []\n")).contains("registries"));
        assert!(bad(&format!("{tls}registries: [a.io, A.io]\n")).contains("registries"));
        assert!(bad(&format!("{tls}registries: [\"[::1]:5000\"]\n")).contains("registries"));
        assert!(bad(&format!("{tls}registries: [a.io]\nport: 0\n")).contains("port"));
        assert!(bad(&format!("{tls}registries: [a.io]\nport: 70000\n")).contains("port"));
        assert!(
            bad(&format!("{tls}registries: [a.io]\ndistributedSuffix: _x\n"))
                .contains("distributedSuffix")
        );
        assert!(bad(&format!("{tls}registries: [a.io]\nlisten: here\n")).contains("listen"));
        assert!(bad("registries: [a.io]\ntlsKeyFile: k\n").contains("tlsCertFile"));
        assert!(bad("registries: [a.io]\ntlsCertFile: c\n").contains("tlsKeyFile"));
        assert!(bad("registries: [a.io]\nplainHTTP: true\n").contains("plainHTTP"));
    }
}
