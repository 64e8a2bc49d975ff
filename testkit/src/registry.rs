//! The config file of the CNCF registry (`docker-registry serve FILE`), the origin of every
//! test. Each suite starts the process its own way.

use std::path::Path;

/// Who the registry lets in.
pub enum RegistryAuth<'a> {
    Anonymous,
    /// Basic auth against an htpasswd file (bcrypt: `htpasswd -Bbn`).
    Htpasswd(&'a Path),
    /// Bearer tokens from `realm`, signed by the key of the certificate `root_cert`.
    Token {
        realm: &'a str,
        service: &'a str,
        issuer: &'a str,
        root_cert: &'a Path,
    },
}

pub struct RegistryConfig<'a> {
    /// Where the registry keeps its data.
    pub data: &'a Path,
    /// `host:port` to listen on.
    pub addr: &'a str,
    /// Log each request (at info level), for tests that count what reached the origin; else
    /// errors only.
    pub access_log: bool,
    pub auth: RegistryAuth<'a>,
    /// Serve HTTPS with this PEM certificate chain and key.
    pub tls: Option<(&'a Path, &'a Path)>,
}

impl RegistryConfig<'_> {
    /// The YAML file.
    pub fn yaml(&self) -> String {
        let auth = match &self.auth {
            RegistryAuth::Anonymous => String::new(),
            RegistryAuth::Htpasswd(path) => format!(
                "auth:\n  htpasswd:\n    realm: poolcast-test\n    path: {}\n",
                path.display()
            ),
            RegistryAuth::Token {
                realm,
                service,
                issuer,
                root_cert,
            } => format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    \
                 issuer: {issuer}\n    rootcertbundle: {}\n",
                root_cert.display()
            ),
        };
        let tls = match self.tls {
            Some((cert, key)) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        let (level, disabled) = if self.access_log {
            ("info", false)
        } else {
            ("error", true)
        };
        format!(
            "version: 0.1\n\
             log:\n  level: {level}\n  accesslog:\n    disabled: {disabled}\n\
             storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n{tls}\
             {auth}",
            data = self.data.display(),
            addr = self.addr,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_names_storage_address_auth_and_tls() {
        let config = RegistryConfig {
            data: Path::new("/d"),
            addr: "127.0.0.1:5000",
            access_log: true,
            auth: RegistryAuth::Htpasswd(Path::new("/h")),
            tls: Some((Path::new("/c.pem"), Path::new("/k.pem"))),
        }
        .yaml();
        for part in [
            "rootdirectory: /d\n",
            "addr: 127.0.0.1:5000\n  tls:\n    certificate: /c.pem\n    key: /k.pem\n",
            "htpasswd:\n    realm: poolcast-test\n    path: /h\n",
            "level: info\n  accesslog:\n    disabled: false\n",
        ] {
            assert!(config.contains(part), "{part:?} missing from:\n{config}");
        }
    }
}
