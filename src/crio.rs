//! `poolcast hosts` for CRI-O: one drop-in in `/etc/containers/registries.conf.d/` that
//! containers/image (CRI-O, podman, skopeo) reads, with a `[[registry]]` per registry and the
//! node's agent as its `[[registry.mirror]]`:
//!
//! ```text
//!   /etc/containers/registries.conf.d/poolcast.conf
//!     [[registry]]
//!     prefix = "docker.io"                            <- images named docker.io/...
//!     location = "docker.io"                          <- fallback: pulls work without poolcast
//!     [[registry.mirror]]
//!     location = "127.0.0.1:65001/docker.io.distributed.local"   <- the agent, tried first
//!     insecure = true                                 <- plain http on the node's loopback
//! ```
//!
//! containers/image sends no `?ns=`, so the mirror location carries the registry as the first
//! path component, its distributed name without the port (`nodepool::distributed`), which the
//! agent takes off again. With `--distributed` the webhook's names get entries of their own
//! (prefix the distributed name, location the registry). containers/image has no catch-all
//! entry, so `--default` writes nothing here; a `--ca` is not copied either (containers/image
//! reads `/etc/containers/certs.d/HOST/*.crt`). CRI-O reads the directory at start and on
//! SIGHUP (`systemctl reload crio`).

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use nodepool::{DistributedNames, UpstreamSpec};
use std::path::{Path, PathBuf};

/// The drop-in's name; files are read in name order, a later `prefix` replacing an earlier one.
pub const DROP_IN: &str = "poolcast.conf";

/// Which runtime `poolcast hosts` configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Runtime {
    /// containerd's `hosts.toml` files under `--config-path`.
    #[default]
    Containerd,
    /// CRI-O's drop-in under `--registries-conf-dir`.
    Crio,
    /// Whichever of the two has its socket on the node (`--containerd-socket`,
    /// `--crio-socket`), both when both have; containerd when neither has (k3s and others keep
    /// containerd's socket elsewhere). `remove` removes what poolcast wrote for either.
    Auto,
}

#[derive(Args, Clone, Debug)]
pub struct RuntimeArgs {
    /// The node's container runtime: containerd, crio, or auto (detected by socket).
    #[arg(long, env = "POOLCAST_RUNTIME", value_enum, default_value_t)]
    pub runtime: Runtime,
    /// Where CRI-O (containers/image) reads registries.conf drop-ins on the node.
    #[arg(
        long,
        env = "POOLCAST_REGISTRIES_CONF_DIR",
        default_value = "/etc/containers/registries.conf.d"
    )]
    pub registries_conf_dir: PathBuf,
    /// containerd's socket, as `--runtime auto` looks for it.
    #[arg(
        long,
        env = "POOLCAST_CONTAINERD_SOCKET",
        default_value = "/run/containerd/containerd.sock"
    )]
    pub containerd_socket: PathBuf,
    /// CRI-O's socket, as `--runtime auto` looks for it.
    #[arg(
        long,
        env = "POOLCAST_CRIO_SOCKET",
        default_value = "/run/crio/crio.sock"
    )]
    pub crio_socket: PathBuf,
}

impl Default for RuntimeArgs {
    fn default() -> Self {
        RuntimeArgs {
            runtime: Runtime::Containerd,
            registries_conf_dir: PathBuf::from("/etc/containers/registries.conf.d"),
            containerd_socket: PathBuf::from("/run/containerd/containerd.sock"),
            crio_socket: PathBuf::from("/run/crio/crio.sock"),
        }
    }
}

impl RuntimeArgs {
    /// The runtimes to write the files of: (containerd, crio).
    pub fn detect(&self) -> (bool, bool) {
        match self.runtime {
            Runtime::Containerd => (true, false),
            Runtime::Crio => (false, true),
            Runtime::Auto => {
                let crio = self.crio_socket.exists();
                (!crio || self.containerd_socket.exists(), crio)
            }
        }
    }

    /// The runtimes to remove the files of: with `auto`, both (only poolcast's files go).
    pub fn to_remove(&self) -> (bool, bool) {
        match self.runtime {
            Runtime::Auto => (true, true),
            _ => self.detect(),
        }
    }

    pub fn drop_in(&self) -> PathBuf {
        self.registries_conf_dir.join(DROP_IN)
    }
}

/// One `[[registry]]`: images named `prefix/...` go to `registry`, the agent first.
pub struct Entry<'a> {
    pub prefix: String,
    pub registry: &'a UpstreamSpec,
}

/// The drop-in's text: the marker line, then one `[[registry]]` per entry.
pub fn drop_in_text(
    entries: &[Entry<'_>],
    agent: &url::Url,
    names: &DistributedNames,
) -> Result<String> {
    let agent_host = agent.host_str().context("--agent URL has no host")?;
    let agent_host = match agent.port() {
        Some(port) => format!("{agent_host}:{port}"),
        None => agent_host.to_string(),
    };
    let agent_insecure = agent.scheme() == "http";
    let mut text = format!(
        "{}\n# CRI-O tries the node's poolcast agent first and each registry itself after it.\n",
        crate::hosts::MARKER
    );
    for entry in entries {
        let r = entry.registry;
        let component = names.path_component(&r.ns).with_context(|| {
            format!(
                "registry `{}` cannot be named in a CRI-O mirror location",
                r.ns
            )
        })?;
        text.push_str(&format!(
            "\n[[registry]]\nprefix = \"{}\"\nlocation = \"{}\"\ninsecure = {}\n\n\
             [[registry.mirror]]\nlocation = \"{agent_host}/{component}\"\ninsecure = {agent_insecure}\n",
            entry.prefix,
            location(r)?,
            r.url.scheme() == "http",
        ));
    }
    Ok(text)
}

/// Where containers/image finds a registry: `host[:port][/path]` of its URL, except Docker
/// Hub, which it knows as `docker.io` (and then looks up credentials by that name).
fn location(r: &UpstreamSpec) -> Result<String> {
    if r.ns == "docker.io" {
        return Ok("docker.io".into());
    }
    let host = r
        .url
        .host_str()
        .with_context(|| format!("registry {} has no host", r.url))?;
    let mut location = match r.url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    location.push_str(r.url.path().trim_end_matches('/'));
    Ok(location)
}

/// Writes the drop-in through a temporary file, so CRI-O never reads half of it; false when
/// a file poolcast did not write is in the way.
pub fn write(path: &Path, text: &str) -> Result<bool> {
    if crate::hosts::ours(path)? == Some(false) {
        return Ok(false);
    }
    let dir = path.parent().context("the drop-in has a folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(".poolcast.conf.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

/// Removes the drop-in if poolcast wrote it (the folder stays: it is the runtime's own).
pub fn remove(path: &Path) -> Result<bool> {
    if crate::hosts::ours(path)? != Some(true) {
        return Ok(false);
    }
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn each_registry_gets_the_agent_as_mirror_with_its_name_in_the_path() {
        let hub: UpstreamSpec = "docker.io=https://registry-1.docker.io".parse().unwrap();
        let local: UpstreamSpec = "10.0.0.5:5000=http://10.0.0.5:5000".parse().unwrap();
        let names = DistributedNames::new("distributed.local", 65001).unwrap();
        let entries = [
            Entry {
                prefix: "docker.io".into(),
                registry: &hub,
            },
            Entry {
                prefix: "10.0.0.5:5000".into(),
                registry: &local,
            },
        ];
        let agent = "http://127.0.0.1:65001".parse().unwrap();
        let text = drop_in_text(&entries, &agent, &names).unwrap();
        assert!(text.starts_with(crate::hosts::MARKER), "{text}");
        assert!(text.contains(
            "[[registry]]\nprefix = \"docker.io\"\nlocation = \"docker.io\"\ninsecure = false\n\n\
             [[registry.mirror]]\nlocation = \"127.0.0.1:65001/docker.io.distributed.local\"\ninsecure = true\n"
        ), "{text}");
        assert!(text.contains(
            "prefix = \"10.0.0.5:5000\"\nlocation = \"10.0.0.5:5000\"\ninsecure = true\n\n\
             [[registry.mirror]]\nlocation = \"127.0.0.1:65001/10.0.0.5.port-5000.distributed.local\"\n"
        ), "{text}");
        // What the agent makes of the path containers/image sends.
        let repo = "10.0.0.5.port-5000.distributed.local/team/app";
        assert_eq!(
            names.split_repo(repo),
            Some(("10.0.0.5:5000".into(), "team/app"))
        );
    }

    #[test]
    fn auto_picks_the_runtime_whose_socket_is_there_and_containerd_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let args = RuntimeArgs {
            runtime: Runtime::Auto,
            registries_conf_dir: dir.path().join("registries.conf.d"),
            containerd_socket: dir.path().join("containerd.sock"),
            crio_socket: dir.path().join("crio.sock"),
        };
        assert_eq!(args.detect(), (true, false));
        std::fs::write(&args.crio_socket, "").unwrap();
        assert_eq!(args.detect(), (false, true));
        std::fs::write(&args.containerd_socket, "").unwrap();
        assert_eq!(args.detect(), (true, true));
        assert_eq!(args.to_remove(), (true, true));
        let crio = RuntimeArgs {
            runtime: Runtime::Crio,
            ..args
        };
        assert_eq!(crio.to_remove(), (false, true));
    }

    #[test]
    fn only_its_own_drop_in_is_replaced_or_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DROP_IN);
        let text = format!("{}\n", crate::hosts::MARKER);
        assert!(write(&path, &text).unwrap());
        assert!(write(&path, &text).unwrap());
        assert!(remove(&path).unwrap());
        assert!(!remove(&path).unwrap());
        std::fs::write(&path, "[[registry]]\n").unwrap();
        assert!(!write(&path, &text).unwrap());
        assert!(!remove(&path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "[[registry]]\n");
    }
}
