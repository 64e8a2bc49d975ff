//! A private containerd (1.6) per test, driven with `ctr`: its own root, state and socket in a
//! temp dir, CRI off, and a `hosts.toml` directory that points it at a registry or a mirror.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use super::{log_tail, require_root, require_tool, run_ok, CLIENT_TIMEOUT, READY_TIMEOUT};

/// Where containerd sends a pull for a registry host (the `hosts.toml` it finds for it).
pub enum Hosts<'a> {
    /// `server = "http://<registry>"` only: straight to the registry.
    Direct,
    /// Try these mirror URLs first (`capabilities = ["pull", "resolve"]`), then the registry.
    /// containerd adds `?ns=<registry>` to requests it sends to a mirror.
    Mirrors(&'a [&'a str]),
}

pub struct Containerd {
    child: Option<Child>,
    dir: TempDir,
}

impl Containerd {
    pub fn start() -> Containerd {
        require_tool("containerd");
        require_tool("ctr");
        require_root("containerd");
        let dir = tempfile::Builder::new()
            .prefix("poolcast-ctrd-")
            .tempdir()
            .expect("temp dir for containerd");
        let mut ctrd = Containerd { child: None, dir };
        ctrd.spawn().expect("starting containerd");
        ctrd
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn socket(&self) -> PathBuf {
        self.path("containerd.sock")
    }

    fn log_path(&self) -> PathBuf {
        self.path("containerd.log")
    }

    pub fn hosts_dir(&self) -> PathBuf {
        self.path("hosts")
    }

    fn spawn(&mut self) -> Result<()> {
        let d = |name: &str| self.path(name).display().to_string();
        // Only what a pull needs: no CRI, and no snapshotters that probe kernel modules or
        // special filesystems. opt points into the temp dir so nothing lands in /opt.
        let config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
            root = d("root"),
            state = d("state"),
            sock = d("containerd.sock"),
            opt = d("opt"),
        );
        fs::write(self.path("config.toml"), config)?;
        fs::create_dir_all(self.hosts_dir())?;
        let log = fs::File::create(self.log_path())?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.path("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning containerd")?;
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "containerd exited ({status}); log:\n{}",
                    log_tail(&self.log_path(), 4000)
                );
            }
            if self.socket().exists() && self.ctr(&["version"]).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "containerd not ready within {READY_TIMEOUT:?}; log:\n{}",
                    log_tail(&self.log_path(), 4000)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `ctr --address SOCK ARGS...`, returning stdout; errors carry ctr's stderr.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let out = run_ok(
            Command::new("ctr")
                .arg("--address")
                .arg(self.socket())
                .args(args),
            CLIENT_TIMEOUT,
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes `hosts/<registry_host>/hosts.toml` for `hosts`.
    pub fn write_hosts(&self, registry_host: &str, hosts: &Hosts) -> Result<PathBuf> {
        let dir = self.hosts_dir().join(registry_host);
        fs::create_dir_all(&dir)?;
        let mut toml = format!("server = \"http://{registry_host}\"\n");
        if let Hosts::Mirrors(urls) = hosts {
            for url in *urls {
                toml.push_str(&format!(
                    "\n[host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
                ));
            }
        }
        let path = dir.join("hosts.toml");
        fs::write(&path, toml)?;
        Ok(path)
    }

    /// Pulls `<registry_host>/<image_ref>` (`image_ref` is `repo:tag`) through `mirror_url` and
    /// returns the pulled image's manifest digest.
    pub fn pull_via_mirror(
        &self,
        image_ref: &str,
        registry_host: &str,
        mirror_url: &str,
    ) -> String {
        self.pull(
            image_ref,
            registry_host,
            &Hosts::Mirrors(&[mirror_url]),
            None,
        )
        .unwrap_or_else(|e| panic!("ctr pull of {image_ref} via {mirror_url}: {e:#}"))
    }

    /// Pulls `<registry_host>/<image_ref>` straight from the registry.
    pub fn pull_direct(&self, image_ref: &str, registry_host: &str) -> String {
        self.pull(image_ref, registry_host, &Hosts::Direct, None)
            .unwrap_or_else(|e| panic!("ctr pull of {image_ref} from {registry_host}: {e:#}"))
    }

    /// `ctr images pull --plain-http --hosts-dir ...`, then the digest containerd recorded.
    pub fn pull(
        &self,
        image_ref: &str,
        registry_host: &str,
        hosts: &Hosts,
        creds: Option<(&str, &str)>,
    ) -> Result<String> {
        self.write_hosts(registry_host, hosts)?;
        let full = format!("{registry_host}/{image_ref}");
        let hosts_dir = self.hosts_dir();
        let hosts_dir = hosts_dir.to_str().context("utf-8 hosts dir")?;
        let user = creds.map(|(u, p)| format!("{u}:{p}"));
        let mut args = vec![
            "images",
            "pull",
            "--plain-http",
            "--hosts-dir",
            hosts_dir,
            "--snapshotter",
            SNAPSHOTTER,
        ];
        if let Some(user) = &user {
            args.extend(["--user", user.as_str()]);
        }
        args.push(&full);
        self.ctr(&args)?;
        self.image_digest(&full)
    }

    /// The target digest of image `full_ref` as `ctr images ls` reports it.
    pub fn image_digest(&self, full_ref: &str) -> Result<String> {
        let listing = self.ctr(&["images", "ls"])?;
        // REF  TYPE  DIGEST  SIZE  PLATFORMS  LABELS
        listing
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.first() == Some(&full_ref))
            .and_then(|cols| cols.get(2).map(|d| d.to_string()))
            .with_context(|| format!("{full_ref} not in `ctr images ls`:\n{listing}"))
    }

    pub fn log(&self) -> String {
        log_tail(&self.log_path(), 8000)
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }
}

/// `native` copies layers instead of mounting them: slower, but it unpacks anywhere, including
/// containers where overlay mounts are not allowed.
const SNAPSHOTTER: &str = "native";

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- containerd log ({}) ---\n{}",
                self.root().display(),
                self.log()
            );
        }
    }
}
