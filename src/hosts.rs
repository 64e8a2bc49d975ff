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
//! With `--ca NS=FILE` the registry's server is trusted with that PEM CA bundle: containerd
//! ignores the Docker-style `*.crt` files of a folder that has a `hosts.toml`, so the bundle is
//! copied beside it as `poolcast-ca.crt` and named by a top-level `ca`, which applies to
//! `server` (relative, so containerd resolves it in that folder whatever the folder is called
//! where this command runs; its own name so an operator's `ca.crt` is never overwritten):
//!
//! ```text
//!   <config_path>/<registry>/hosts.toml
//!     server = "https://<registry>"
//!     ca = "poolcast-ca.crt"                          <- <config_path>/<registry>/poolcast-ca.crt
//!     [host."http://127.0.0.1:65001"]
//! ```
//!
//! With `--runtime crio` (or `auto` on a CRI-O node) the same registries go into CRI-O's
//! registries.conf.d drop-in instead (`crio`).
//!
//! A `hosts.toml` that poolcast did not write (no marker line) is left alone, on write and on
//! remove: the operator's own registry setup wins.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use nodepool::UpstreamSpec;
use std::path::{Path, PathBuf};

/// First line of every file poolcast writes; only such files are replaced or removed.
pub(crate) const MARKER: &str = "# Written by poolcast hosts; removed by `poolcast hosts remove`.";

/// The folder containerd reads for a registry that has none of its own.
const DEFAULT_HOST: &str = "_default";

/// The CA bundle `--ca` copies beside a `hosts.toml`.
const CA_FILE: &str = "poolcast-ca.crt";

/// `--ca NS=FILE`: the PEM CA bundle that registry `NS`'s server certificate chains to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryCa {
    ns: String,
    file: PathBuf,
}

impl std::str::FromStr for RegistryCa {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().split_once('=') {
            Some((ns, file)) if !ns.trim().is_empty() && !file.trim().is_empty() => {
                Ok(RegistryCa {
                    ns: ns.trim().to_ascii_lowercase(),
                    file: PathBuf::from(file.trim()),
                })
            }
            _ => Err(format!(
                "`{s}`: expected NS=FILE, a registry as --registry names it and a PEM CA file"
            )),
        }
    }
}

#[derive(Subcommand)]
pub enum HostsCommand {
    /// Write `<config-path>/<registry>/hosts.toml` for each registry (with `--runtime crio`,
    /// `<registries-conf-dir>/poolcast.conf`): the agent first, the registry itself as fallback.
    Write(HostsArgs),
    /// Remove the files `write` wrote (and their folders when empty).
    Remove(HostsArgs),
}

#[derive(Args, Clone)]
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
        required_unless_present_any = ["default_mirror", "instances"]
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
    /// `NS=FILE`: trust registry NS's server with the PEM CA bundle FILE, copied beside its
    /// hosts.toml as `poolcast-ca.crt` (containerd ignores `*.crt` files once a hosts.toml
    /// exists); repeat for several. `remove` removes the copy.
    #[arg(long = "ca", env = "POOLCAST_HOSTS_CA", value_delimiter = ',')]
    cas: Vec<RegistryCa>,
    #[command(flatten)]
    acr: crate::acr::HostsAcrArgs,
    #[command(flatten)]
    runtime: crate::crio::RuntimeArgs,
    /// `write` only: keep running, resolving the `--acr-instance`s again every
    /// `--acr-refresh-interval`, writing the files of new domains and removing those of
    /// domains gone (the chart's agent pods run this beside the agent).
    #[arg(long, env = "POOLCAST_HOSTS_WATCH", requires = "instances")]
    watch: bool,
}

impl HostsArgs {
    /// The `--ca` file of registry `ns`; fails on a `--ca` that names no `--registry`.
    fn ca_of(&self, ns: &str) -> Result<Option<&Path>> {
        for ca in &self.cas {
            if !self.registries.iter().any(|r| r.ns == ca.ns) {
                anyhow::bail!(
                    "--ca {}={}: `{}` is not one of the --registry hosts",
                    ca.ns,
                    ca.file.display(),
                    ca.ns
                );
            }
        }
        Ok(self
            .cas
            .iter()
            .find(|ca| ca.ns == ns)
            .map(|ca| ca.file.as_path()))
    }

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

pub async fn run(command: HostsCommand) -> Result<()> {
    match command {
        HostsCommand::Write(args) => {
            let resolver = args.acr.resolver()?;
            let mut acr = match &resolver {
                Some(r) => crate::acr::resolve_for_hosts(r).await,
                None => Vec::new(),
            };
            write_all(&args, &acr)?;
            if let (true, Some(resolver)) = (args.watch, resolver) {
                resolver
                    .watch(move |r| {
                        let now = crate::acr::specs(r);
                        let gone: Vec<UpstreamSpec> =
                            acr.iter().filter(|s| !now.contains(s)).cloned().collect();
                        let result =
                            remove_all(&args, &gone, false).and_then(|()| write_all(&args, &now));
                        match result {
                            Ok(()) => acr = now,
                            Err(e) => eprintln!("poolcast hosts: {e:#}"),
                        }
                    })
                    .await;
            }
        }
        HostsCommand::Remove(args) => {
            // No API call: the domains written for ACR instances are in the cache file.
            let acr = match args.acr.resolver()? {
                Some(resolver) => resolver.load_cache().map(|r| crate::acr::specs(&r)),
                None => None,
            };
            remove_all(&args, acr.as_deref().unwrap_or_default(), true)?;
            if let (Some(_), Some(file)) = (&acr, &args.acr.cache_file) {
                let _ = std::fs::remove_file(file);
            }
        }
    }
    Ok(())
}

/// Writes the files of the registries of `args` and of `acr`.
fn write_all(args: &HostsArgs, acr: &[UpstreamSpec]) -> Result<()> {
    let mut args = args.clone();
    args.registries.extend(acr.iter().cloned());
    let (containerd, crio) = args.runtime.detect();
    if crio {
        write_crio(&args)?;
    }
    if !containerd {
        return Ok(());
    }
    let files = args.files()?;
    // Every CA is read before anything is written: a bad one leaves containerd as it was.
    let mut pems = Vec::new();
    for (_, r) in &files {
        let ca = match r {
            Some(r) => args.ca_of(&r.ns)?,
            None => None,
        };
        pems.push(ca.map(read_ca).transpose()?);
    }
    for ((path, r), pem) in files.into_iter().zip(pems) {
        if write(
            &path,
            &hosts_toml(r, &args.agent, pem.is_some()),
            pem.as_deref(),
        )? {
            println!("wrote {}", path.display());
        } else {
            eprintln!(
                "poolcast hosts: left {} alone: not written by poolcast",
                path.display()
            );
        }
    }
    Ok(())
}

/// Removes the files of `acr` and, with `all`, those of the registries of `args` too.
fn remove_all(args: &HostsArgs, acr: &[UpstreamSpec], all: bool) -> Result<()> {
    let mut args = args.clone();
    if !all {
        args.registries.clear();
        args.default_mirror = false;
        args.cas.clear();
    }
    args.registries.extend(acr.iter().cloned());
    let (containerd, crio) = args.runtime.to_remove();
    // CRI-O's one drop-in names every registry: `write_all` rewrites it when some are gone.
    if crio && all && crate::crio::remove(&args.runtime.drop_in())? {
        println!("removed {}", args.runtime.drop_in().display());
    }
    if !containerd {
        return Ok(());
    }
    for (path, r) in args.files()? {
        if let Some(r) = r {
            args.ca_of(&r.ns)?;
        }
        if remove(&path)? {
            println!("removed {}", path.display());
        }
    }
    Ok(())
}

/// CRI-O's drop-in for the registries of `args` (and their distributed names with
/// `--distributed`), in the agent's naming of registries in paths.
fn write_crio(args: &HostsArgs) -> Result<()> {
    let port = args
        .agent
        .port_or_known_default()
        .context("--agent URL has no port")?;
    let names = nodepool::DistributedNames::new(&args.distributed_suffix, port)
        .map_err(|e| anyhow::anyhow!("--distributed-suffix: {e}"))?;
    let mut entries: Vec<_> = args
        .registries
        .iter()
        .map(|r| crate::crio::Entry {
            prefix: r.ns.clone(),
            registry: r,
        })
        .collect();
    if args.distributed {
        for r in &args.registries {
            let prefix = names.distributed(&r.ns).with_context(|| {
                format!("registry `{}` cannot be given a distributed name", r.ns)
            })?;
            entries.push(crate::crio::Entry {
                prefix,
                registry: r,
            });
        }
    }
    if args.default_mirror {
        eprintln!("poolcast hosts: CRI-O has no entry for every registry; --default is for containerd only");
    }
    if !args.cas.is_empty() {
        eprintln!("poolcast hosts: --ca is for containerd only; CRI-O reads /etc/containers/certs.d/HOST/*.crt");
    }
    let path = args.runtime.drop_in();
    let text = crate::crio::drop_in_text(&entries, &args.agent, &names)?;
    if crate::crio::write(&path, &text)? {
        println!("wrote {}", path.display());
    } else {
        eprintln!(
            "poolcast hosts: left {} alone: not written by poolcast",
            path.display()
        );
    }
    Ok(())
}

/// containerd's file for a registry host (`host[:port]`, as image references name it).
fn file_of(config_path: &Path, host: &str) -> PathBuf {
    config_path.join(host).join("hosts.toml")
}

/// The file for `registry`; for `_default` (None) without `server`, so that containerd falls
/// back to the registry the image names. With `ca`, the server is trusted with the
/// `poolcast-ca.crt` beside the file (a top-level key, so before any table).
fn hosts_toml(registry: Option<&UpstreamSpec>, agent: &url::Url, ca: bool) -> String {
    let ca = if ca {
        format!("ca = \"{CA_FILE}\"\n")
    } else {
        String::new()
    };
    let server = registry
        .map(|r| {
            format!(
                "server = \"{}\"\n{ca}\n",
                r.url.as_str().trim_end_matches('/')
            )
        })
        .unwrap_or_default();
    format!(
        "{MARKER}\n{server}[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        agent.as_str().trim_end_matches('/'),
    )
}

pub(crate) fn ours(path: &Path) -> Result<Option<bool>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.starts_with(MARKER))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// A `--ca` file's text; fails naming the file when it cannot be read or holds no certificate
/// (containerd would log the error on every pull, and fall back to nothing).
fn read_ca(file: &Path) -> Result<String> {
    let pem = std::fs::read_to_string(file)
        .with_context(|| format!("--ca: reading {}", file.display()))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        anyhow::bail!(
            "--ca: {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            file.display()
        );
    }
    Ok(pem)
}

/// Writes `to` through a temporary file in its folder, so containerd never reads half a file.
fn replace(dir: &Path, to: &Path, text: &str) -> Result<()> {
    let tmp = dir.join(".poolcast.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, to).with_context(|| format!("writing {}", to.display()))
}

/// Writes `text` to `path` and `ca` beside it (the CA first: the file that names it must not
/// come before it; without `ca`, a copy left from an earlier write goes after); false when a file poolcast did not write is in the way.
fn write(path: &Path, text: &str, ca: Option<&str>) -> Result<bool> {
    if ours(path)? == Some(false) {
        return Ok(false);
    }
    let dir = path.parent().context("hosts.toml has a folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    match ca {
        Some(pem) => {
            replace(dir, &dir.join(CA_FILE), pem)?;
            replace(dir, path, text)?;
        }
        None => {
            replace(dir, path, text)?;
            remove_ca(dir)?;
        }
    }
    Ok(true)
}

/// Removes the `poolcast-ca.crt` of a folder, if there is one.
fn remove_ca(dir: &Path) -> Result<()> {
    let ca = dir.join(CA_FILE);
    match std::fs::remove_file(&ca) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", ca.display())),
    }
}

fn remove(path: &Path) -> Result<bool> {
    if ours(path)? != Some(true) {
        return Ok(false);
    }
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    if let Some(dir) = path.parent() {
        remove_ca(dir)?;
    }
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

    fn run_now(command: HostsCommand) -> Result<()> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(command))
    }

    #[test]
    fn writes_replaces_and_removes_only_its_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let hub: UpstreamSpec = "docker.io=https://registry-1.docker.io".parse().unwrap();
        let agent: url::Url = "http://127.0.0.1:65001".parse().unwrap();
        let path = file_of(dir.path(), &hub.ns);
        assert!(write(&path, &hosts_toml(Some(&hub), &agent, false), None).unwrap());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("server = \"https://registry-1.docker.io\"\n"),
            "{text}"
        );
        assert!(text.contains("[host.\"http://127.0.0.1:65001\"]"), "{text}");
        assert!(
            write(&path, &hosts_toml(Some(&hub), &agent, false), None).unwrap(),
            "its own file is replaced"
        );
        assert!(remove(&path).unwrap());
        assert!(!path.parent().unwrap().exists(), "empty folder removed");
        assert!(!remove(&path).unwrap(), "removing twice is fine");

        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "server = \"https://mine\"\n").unwrap();
        assert!(!write(&path, &hosts_toml(Some(&hub), &agent, false), None).unwrap());
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
            cas: Vec::new(),
            acr: Default::default(),
            runtime: Default::default(),
            watch: false,
        };
        run_now(HostsCommand::Write(args())).unwrap();
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

        run_now(HostsCommand::Remove(args())).unwrap();
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
            cas: Vec::new(),
            acr: Default::default(),
            runtime: Default::default(),
            watch: false,
        };
        run_now(HostsCommand::Write(args(Vec::new()))).unwrap();
        let text = std::fs::read_to_string(file_of(dir.path(), "_default")).unwrap();
        assert_eq!(
            text,
            format!("{MARKER}\n[host.\"http://127.0.0.1:65001\"]\n  capabilities = [\"pull\", \"resolve\"]\n")
        );
        // No `server`: containerd's fallback is the registry the image names, whichever it is.
        assert!(!text.contains("server"), "{text}");

        // Beside listed registries, which keep their own files and servers.
        let hub: UpstreamSpec = "docker.io=https://registry-1.docker.io".parse().unwrap();
        run_now(HostsCommand::Write(args(vec![hub.clone()]))).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
        run_now(HostsCommand::Remove(args(vec![hub]))).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_registry_with_a_ca_has_it_beside_its_file_for_its_server_and_removed_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let ca_file = dir.path().join("harbor-ca.pem");
        std::fs::write(&ca_file, pem).unwrap();
        let config_path = dir.path().join("certs.d");
        let args = |cas: &[&str]| HostsArgs {
            config_path: config_path.clone(),
            agent: "http://127.0.0.1:65001".parse().unwrap(),
            registries: vec![
                "harbor.example:8443=https://harbor.example:8443"
                    .parse()
                    .unwrap(),
                "docker.io=https://registry-1.docker.io".parse().unwrap(),
            ],
            distributed: true,
            distributed_suffix: "distributed.local".into(),
            default_mirror: false,
            cas: cas.iter().map(|c| c.parse().unwrap()).collect(),
            acr: Default::default(),
            runtime: Default::default(),
            watch: false,
        };
        let ca_arg = format!("harbor.example:8443={}", ca_file.display());
        run_now(HostsCommand::Write(args(&[&ca_arg]))).unwrap();

        // The registry's own name and its distributed name both reach its server with the CA.
        for host in [
            "harbor.example:8443",
            "harbor.example.port-8443.distributed.local:65001",
        ] {
            let folder = config_path.join(host);
            let text = std::fs::read_to_string(folder.join("hosts.toml")).unwrap();
            assert_eq!(
                text,
                format!(
                    "{MARKER}\nserver = \"https://harbor.example:8443\"\nca = \"poolcast-ca.crt\"\n\n\
                     [host.\"http://127.0.0.1:65001\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
                ),
                "{host}"
            );
            assert_eq!(
                std::fs::read_to_string(folder.join(CA_FILE)).unwrap(),
                pem,
                "{host}"
            );
        }
        // A registry without --ca has neither.
        let hub = config_path.join("docker.io");
        assert!(!std::fs::read_to_string(hub.join("hosts.toml"))
            .unwrap()
            .contains("ca ="));
        assert!(!hub.join(CA_FILE).exists());

        // Written again without --ca: the copy goes, and the file no longer names it.
        run_now(HostsCommand::Write(args(&[]))).unwrap();
        let harbor = config_path.join("harbor.example:8443");
        assert!(!harbor.join(CA_FILE).exists());
        assert!(!std::fs::read_to_string(harbor.join("hosts.toml"))
            .unwrap()
            .contains("ca ="));

        // remove takes the CA with the file, and the emptied folders.
        run_now(HostsCommand::Write(args(&[&ca_arg]))).unwrap();
        run_now(HostsCommand::Remove(args(&[&ca_arg]))).unwrap();
        assert_eq!(std::fs::read_dir(&config_path).unwrap().count(), 0);
    }

    #[test]
    fn a_ca_that_cannot_be_used_fails_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("certs.d");
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello\n").unwrap();
        let args = |ca: String| HostsArgs {
            config_path: config_path.clone(),
            agent: "http://127.0.0.1:65001".parse().unwrap(),
            registries: vec!["harbor.example=https://harbor.example".parse().unwrap()],
            distributed: false,
            distributed_suffix: "distributed.local".into(),
            default_mirror: false,
            cas: vec![ca.parse().unwrap()],
            acr: Default::default(),
            runtime: Default::default(),
            watch: false,
        };
        let cases = [
            (
                format!("harbor.example={}", not_pem.display()),
                "holds no PEM certificate",
            ),
            (
                format!(
                    "harbor.example={}",
                    dir.path().join("missing.pem").display()
                ),
                "missing.pem",
            ),
            (
                format!("other.example={}", not_pem.display()),
                "not one of the --registry hosts",
            ),
        ];
        for (ca, expected) in cases {
            let err = format!(
                "{:#}",
                run_now(HostsCommand::Write(args(ca.clone()))).unwrap_err()
            );
            assert!(err.contains(expected), "{ca}: {err}");
            assert!(!config_path.exists(), "{ca}: something was written");
        }
        assert!("no-equals".parse::<RegistryCa>().is_err());
        assert!("ns=".parse::<RegistryCa>().is_err());
    }
}
