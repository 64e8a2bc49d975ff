//! `poolcast hosts write|remove`: containerd's per-registry `hosts.toml` files, which the
//! chart's agent DaemonSet writes into the node's containerd `config_path` at start (an init
//! container) and removes when its pod stops (preStop), as Dragonfly's dfinit and Spegel do.
//!
//! Each file names the registry itself as `server`, so containerd falls back to it whenever
//! the agent fails or is gone, and the agent as the mirror host it tries first:
//!
//! ```text
//!   <config_path>/<registry>/hosts.toml
//!     server = "https://<registry>"                   <- fallback: pulls work without poolcast
//!     [host."http://127.0.0.1:65001"]                 <- the node's agent, tried first
//!       capabilities = ["pull", "resolve"]
//! ```
//!
//! With `--default` it also writes `<config_path>/_default/hosts.toml`, which containerd reads
//! for every registry that has no folder of its own: the agent first, and no `server` line, so
//! containerd's fallback is the registry the image names (`https://HOST`, Docker Hub's
//! `registry-1.docker.io` for docker.io). The agent passes `?ns=HOST` to its mirror, which serves
//! such a registry only with `allowAnyRegistry`; otherwise containerd gets a 404 and goes to the
//! registry.
//!
//! With `--distributed` it also writes one for each registry's distributed name, the host the
//! admission webhook writes into pods' images (`nodepool::distributed`): same `server`, same
//! agent, so that name needs no DNS; containerd sends it in `?ns=` and the agent maps it back.
//!
//! A `hosts.toml` that poolcast did not write (no marker line) is left alone, on write and on
//! remove: the operator's own registry setup wins.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use nodepool::UpstreamSpec;
use std::path::{Path, PathBuf};

/// First line of every file poolcast writes; only such files are replaced or removed.
const MARKER: &str = "# Written by poolcast hosts; removed by `poolcast hosts remove`.";

/// The folder containerd reads for a registry that has none of its own.
const DEFAULT_HOST: &str = "_default";

#[derive(Subcommand)]
pub enum HostsCommand {
    /// Write `<config-path>/<registry>/hosts.toml` for each registry: the agent first, the
    /// registry itself as fallback.
    Write(HostsArgs),
    /// Remove the files `write` wrote (and their folders when empty).
    Remove(HostsArgs),
}

#[derive(Args)]
pub struct HostsArgs {
    /// containerd's `config_path` on the node.
    #[arg(
        long,
        env = "POOLCAST_CONTAINERD_CONFIG_PATH",
        default_value = "/etc/containerd/certs.d"
    )]
    config_path: PathBuf,
    /// The agent's URL as containerd on the node reaches it.
    #[arg(
        long,
        env = "POOLCAST_AGENT_URL",
        default_value = "http://127.0.0.1:65001"
    )]
    agent: url::Url,
    /// A registry, `URL` or `NS=URL` as the mirror's upstreams (`docker.io=https://registry-1.docker.io`);
    /// repeat for several. NS names the folder, URL becomes `server`.
    #[arg(
        long = "registry",
        env = "POOLCAST_REGISTRIES",
        value_delimiter = ',',
        required_unless_present = "default_mirror"
    )]
    registries: Vec<UpstreamSpec>,
    /// Also write (or remove) `_default/hosts.toml`: every registry without a file of its own
    /// tries the agent first, the registry itself as fallback.
    #[arg(long = "default", env = "POOLCAST_HOSTS_DEFAULT")]
    default_mirror: bool,
    /// Also write (or remove) the files of the registries' distributed names, the hosts the
    /// admission webhook rewrites images to (with the agent URL's port, `p2p.port`).
    #[arg(long, env = "POOLCAST_HOSTS_DISTRIBUTED")]
    distributed: bool,
    /// Suffix of the distributed names of registries that are not ACR instances.
    #[arg(
        long,
        env = "POOLCAST_DISTRIBUTED_SUFFIX",
        default_value = nodepool::distributed::DEFAULT_SUFFIX
    )]
    distributed_suffix: String,
}

impl HostsArgs {
    /// Each `hosts.toml` to write or remove, with the registry it sends containerd to (None:
    /// `_default`, whose fallback is whichever registry the image names).
    fn files(&self) -> Result<Vec<(PathBuf, Option<&UpstreamSpec>)>> {
        let mut files: Vec<_> = self
            .registries
            .iter()
            .map(|r| (file_of(&self.config_path, &r.ns), Some(r)))
            .collect();
        if self.distributed {
            let port = self
                .agent
                .port_or_known_default()
                .context("--agent URL has no port")?;
            let names = nodepool::DistributedNames::new(&self.distributed_suffix, port)
                .map_err(|e| anyhow::anyhow!("--distributed-suffix: {e}"))?;
            for r in &self.registries {
                let name = names.distributed(&r.ns).with_context(|| {
                    format!("registry `{}` cannot be given a distributed name", r.ns)
                })?;
                files.push((file_of(&self.config_path, &name), Some(r)));
            }
        }
        if self.default_mirror {
            files.push((file_of(&self.config_path, DEFAULT_HOST), None));
        }
        Ok(files)
    }
}

pub fn run(command: HostsCommand) -> Result<()> {
    match command {
        HostsCommand::Write(args) => {
            for (path, r) in args.files()? {
                if write(&path, &hosts_toml(r, &args.agent))? {
                    println!("wrote {}", path.display());
                } else {
                    eprintln!(
                        "poolcast hosts: left {} alone: not written by poolcast",
                        path.display()
                    );
                }
            }
        }
        HostsCommand::Remove(args) => {
            for (path, _) in args.files()? {
                if remove(&path)? {
                    println!("removed {}", path.display());
                }
            }
        }
    }
    Ok(())
}

/// containerd's file for a registry host (`host[:port]`, as image references name it).
fn file_of(config_path: &Path, host: &str) -> PathBuf {
    config_path.join(host).join("hosts.toml")
}

/// The file for `registry`; for `_default` (None) without `server`, so that containerd falls
/// back to the registry the image names.
fn hosts_toml(registry: Option<&UpstreamSpec>, agent: &url::Url) -> String {
    let server = registry
        .map(|r| format!("server = \"{}\"\n\n", r.url.as_str().trim_end_matches('/')))
        .unwrap_or_default();
    format!(
        "{MARKER}\n{server}[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        agent.as_str().trim_end_matches('/'),
    )
}

fn ours(path: &Path) -> Result<Option<bool>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.starts_with(MARKER))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes `text` to `path` through a temporary file (containerd never reads half a file);
/// false when a file poolcast did not write is in the way.
fn write(path: &Path, text: &str) -> Result<bool> {
    if ours(path)? == Some(false) {
        return Ok(false);
    }
    let dir = path.parent().context("hosts.toml has a folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(".hosts.toml.poolcast");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

fn remove(path: &Path) -> Result<bool> {
    if ours(path)? != Some(true) {
        return Ok(false);
    }
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    if let Some(dir) = path.parent() {
        // Only an empty folder goes; a CA or client cert the operator put beside it stays.
        let _ = std::fs::remove_dir(dir);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn writes_replaces_and_removes_only_its_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let hub: UpstreamSpec = "docker.io=https://registry-1.docker.io".parse().unwrap();
        let agent: url::Url = "http://127.0.0.1:65001".parse().unwrap();
        let path = file_of(dir.path(), &hub.ns);
        assert!(write(&path, &hosts_toml(Some(&hub), &agent)).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("server = \"https://registry-1.docker.io\"\n"),
            "{text}"
        );
        assert!(text.contains("[host.\"http://127.0.0.1:65001\"]"), "{text}");
        assert!(
            write(&path, &hosts_toml(Some(&hub), &agent)).unwrap(),
            "its own file is replaced"
        );
        assert!(remove(&path).unwrap());
        assert!(!path.parent().unwrap().exists(), "empty folder removed");
        assert!(!remove(&path).unwrap(), "removing twice is fine");

        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "server = \"https://mine\"\n").unwrap();
        assert!(!write(&path, &hosts_toml(Some(&hub), &agent)).unwrap());
        assert!(!remove(&path).unwrap());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "server = \"https://mine\"\n"
        );
    }

    #[test]
    fn distributed_names_send_containerd_to_the_same_agent_and_registry() {
        let dir = tempfile::tempdir().unwrap();
        let args = || HostsArgs {
            config_path: dir.path().to_path_buf(),
            agent: "http://127.0.0.1:7001".parse().unwrap(),
            registries: vec![
                "https://test-registry-vpc.cn-hangzhou.cr.aliyuncs.com"
                    .parse()
                    .unwrap(),
                "10.0.0.5:5000=http://10.0.0.5:5000".parse().unwrap(),
            ],
            distributed: true,
            distributed_suffix: "distributed.local".into(),
            default_mirror: false,
        };
        run(HostsCommand::Write(args())).unwrap();
        let read = |host: &str| std::fs::read_to_string(file_of(dir.path(), host)).unwrap();
        for host in [
            "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com",
            "test-registry-vpc.distributed.cn-hangzhou.cr.aliyuncs.com:7001",
        ] {
            let text = read(host);
            assert!(
                text.contains("server = \"https://test-registry-vpc.cn-hangzhou.cr.aliyuncs.com\""),
                "{host}: {text}"
            );
            assert!(text.contains("[host.\"http://127.0.0.1:7001\"]"), "{text}");
        }
        let text = read("10.0.0.5.port-5000.distributed.local:7001");
        assert!(text.contains("server = \"http://10.0.0.5:5000\""), "{text}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);

        run(HostsCommand::Remove(args())).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn the_default_file_sends_every_other_registry_to_the_agent_without_a_server() {
        let dir = tempfile::tempdir().unwrap();
        let args = |registries: Vec<UpstreamSpec>| HostsArgs {
            config_path: dir.path().to_path_buf(),
            agent: "http://127.0.0.1:65001".parse().unwrap(),
            registries,
            distributed: false,
            distributed_suffix: "distributed.local".into(),
            default_mirror: true,
        };
        run(HostsCommand::Write(args(Vec::new()))).unwrap();
        let text = std::fs::read_to_string(file_of(dir.path(), "_default")).unwrap();
        assert_eq!(
            text,
            format!("{MARKER}\n[host.\"http://127.0.0.1:65001\"]\n  capabilities = [\"pull\", \"resolve\"]\n")
        );
        // No `server`: containerd's fallback is the registry the image names, whichever it is.
        assert!(!text.contains("server"), "{text}");

        // Beside listed registries, which keep their own files and servers.
        let hub: UpstreamSpec = "docker.io=https://registry-1.docker.io".parse().unwrap();
        run(HostsCommand::Write(args(vec![hub.clone()]))).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        run(HostsCommand::Remove(args(vec![hub]))).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
