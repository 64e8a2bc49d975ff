//! The CNCF distribution registry (`docker-registry serve`, v2.8) as the origin, with filesystem
//! storage in a temp dir and optionally htpasswd (bcrypt) basic auth.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use super::{free_port, log_tail, require_tool, run_ok, READY_TIMEOUT};

pub struct Registry {
    child: Option<Child>,
    port: u16,
    creds: Option<(String, String)>,
    dir: TempDir,
}

impl Registry {
    /// An anonymous, read-write registry on a fresh loopback port.
    pub fn start() -> Registry {
        Self::launch(None).expect("starting docker-registry")
    }

    /// A registry that demands HTTP basic auth (`401` with a `Basic` challenge otherwise).
    pub fn start_with_auth(user: &str, pass: &str) -> Registry {
        Self::launch(Some((user.to_owned(), pass.to_owned())))
            .expect("starting docker-registry with htpasswd auth")
    }

    fn launch(creds: Option<(String, String)>) -> Result<Registry> {
        require_tool("docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("poolcast-registry-")
            .tempdir()?;
        if let Some((user, pass)) = &creds {
            require_tool("htpasswd");
            // -B: bcrypt, the only hash distribution's htpasswd accepts.
            let out = run_ok(
                Command::new("htpasswd").args(["-Bbn", user, pass]),
                Duration::from_secs(30),
            )?;
            fs::write(dir.path().join("htpasswd"), out.stdout)?;
        }
        // The registry cannot report a port it chose, so pick one and retry if someone else
        // grabbed it between our probe and its bind.
        let mut reg = Registry {
            child: None,
            port: 0,
            creds,
            dir,
        };
        let mut last_err = None;
        for _ in 0..5 {
            reg.port = free_port();
            match reg.spawn() {
                Ok(()) => return Ok(reg),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("registry never started")))
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.yml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    fn spawn(&mut self) -> Result<()> {
        let root = self.dir.path();
        let auth = if self.creds.is_some() {
            format!(
                "auth:\n  htpasswd:\n    realm: poolcast-test\n    path: {}\n",
                root.join("htpasswd").display()
            )
        } else {
            String::new()
        };
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n\
             {auth}",
            data = root.join("data").display(),
            port = self.port,
        );
        fs::write(self.config_path(), config)?;
        let log = fs::File::create(self.log_path())?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning docker-registry")?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + READY_TIMEOUT;
        let want = if self.creds.is_some() { 401 } else { 200 };
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "docker-registry exited ({status}) before answering; log:\n{}",
                        log_tail(&self.log_path(), 4000)
                    );
                }
            }
            if let Ok(resp) = client.get(format!("{}/v2/", self.url())).send() {
                if resp.status().as_u16() == want {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!(
                    "docker-registry on port {} did not answer /v2/ with {want} within \
                     {READY_TIMEOUT:?}; log:\n{}",
                    self.port,
                    log_tail(&self.log_path(), 4000)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    pub fn creds(&self) -> Option<(&str, &str)> {
        self.creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// How many `method` requests for a path containing `fragment` the registry's access log
    /// shows (e.g. `("GET", "/blobs/")`): origin traffic counted at the origin, which no
    /// restart of the mirror resets.
    pub fn requests_seen(&self, method: &str, fragment: &str) -> usize {
        let needle = format!("\"{method} /v2/");
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                l.find(&needle).is_some_and(|i| {
                    let request = &l[i..];
                    request
                        .split_whitespace()
                        .nth(1)
                        .is_some_and(|path| path.contains(fragment))
                })
            })
            .count()
    }

    /// Stops the registry (to prove that something is served without it). Its data stays.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts a stopped registry again on the same port with the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn().expect("restarting docker-registry");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- docker-registry log ({}) ---\n{}",
                self.host(),
                log_tail(&self.log_path(), 8000)
            );
        }
    }
}
