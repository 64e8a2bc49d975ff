//! The CNCF distribution registry (`docker-registry serve`, v2.8) as the origin, with filesystem
//! storage in a temp dir and optionally htpasswd (bcrypt) basic auth, or Bearer token auth
//! against a [`TokenIssuer`] whose JWTs it verifies itself, or over HTTPS with a given
//! certificate (`http.tls`).

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use testkit::{RegistryAuth, RegistryConfig};

use super::{free_port, log_tail, require_tool, run_ok, READY_TIMEOUT};

/// The registry's `auth: token:` settings: where clients get tokens and whose tokens it trusts.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    pub realm: String,
    pub service: String,
    pub issuer: String,
    /// PEM certificate whose key signs the tokens.
    pub root_cert: PathBuf,
}

pub struct Registry {
    child: Option<Child>,
    port: u16,
    creds: Option<(String, String)>,
    token: Option<TokenAuth>,
    /// Serve HTTPS with this PEM certificate chain and key (files in `dir`).
    tls: bool,
    dir: TempDir,
}

impl Registry {
    /// An anonymous, read-write registry on a fresh loopback port.
    pub fn start() -> Registry {
        Self::launch(None, None).expect("starting docker-registry")
    }

    /// A registry that demands HTTP basic auth (`401` with a `Basic` challenge otherwise).
    pub fn start_with_auth(user: &str, pass: &str) -> Registry {
        Self::launch(Some((user.to_owned(), pass.to_owned())), None)
            .expect("starting docker-registry with htpasswd auth")
    }

    /// A registry that demands a Bearer token from `token.realm` (`401` with a `Bearer`
    /// challenge otherwise). `user:pass` are what clients give the token issuer.
    pub fn start_with_token_auth(user: &str, pass: &str, token: TokenAuth) -> Registry {
        Self::launch(Some((user.to_owned(), pass.to_owned())), Some(token))
            .expect("starting docker-registry with token auth")
    }

    /// An anonymous, read-write registry serving HTTPS with `cert_pem` (the chain) and
    /// `key_pem`; `url()` is then `https://127.0.0.1:PORT`.
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> Registry {
        Self::try_launch(None, None, Some((cert_pem, key_pem)))
            .expect("starting docker-registry with TLS")
    }

    fn launch(creds: Option<(String, String)>, token: Option<TokenAuth>) -> Result<Registry> {
        Self::try_launch(creds, token, None)
    }

    fn try_launch(
        creds: Option<(String, String)>,
        token: Option<TokenAuth>,
        tls: Option<(&str, &str)>,
    ) -> Result<Registry> {
        require_tool("docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("poolcast-registry-")
            .tempdir()?;
        if let Some((cert, key)) = tls {
            fs::write(dir.path().join("tls-cert.pem"), cert)?;
            fs::write(dir.path().join("tls-key.pem"), key)?;
        }
        if let (Some((user, pass)), None) = (&creds, &token) {
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
            token,
            tls: tls.is_some(),
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
        let htpasswd = root.join("htpasswd");
        let auth = match (&self.token, &self.creds) {
            (Some(t), _) => RegistryAuth::Token {
                realm: &t.realm,
                service: &t.service,
                issuer: &t.issuer,
                root_cert: &t.root_cert,
            },
            (None, Some(_)) => RegistryAuth::Htpasswd(&htpasswd),
            (None, None) => RegistryAuth::Anonymous,
        };
        let (cert, key) = (root.join("tls-cert.pem"), root.join("tls-key.pem"));
        let config = RegistryConfig {
            data: &root.join("data"),
            addr: &format!("127.0.0.1:{}", self.port),
            // `requests_seen` reads the access log.
            access_log: true,
            auth,
            tls: self.tls.then_some((cert.as_path(), key.as_path())),
        }
        .yaml();
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
        // Readiness only: whether the certificate is trusted is what the tests themselves check.
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(2))
            .danger_accept_invalid_certs(true)
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
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
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

    /// Uploads `data` as a blob of `repo` (anonymous registries only) with the distribution
    /// API's monolithic upload, for blobs skopeo would not push on their own (a 0-byte one);
    /// returns its digest.
    pub fn push_blob(&self, repo: &str, data: &[u8]) -> Result<String> {
        let digest = format!("sha256:{}", super::sha256_hex(data));
        let http = super::client();
        let started = http
            .post(format!("{}/v2/{repo}/blobs/uploads/", self.url()))
            .send()?;
        anyhow::ensure!(
            started.status() == 202,
            "upload start: {}",
            started.status()
        );
        let location = started
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .context("upload start without a Location")?;
        let mut url = reqwest::Url::parse(&self.url())?.join(location)?;
        url.query_pairs_mut().append_pair("digest", &digest);
        let done = http.put(url).body(data.to_vec()).send()?;
        anyhow::ensure!(
            done.status() == 201,
            "upload of {digest}: {}",
            done.status()
        );
        Ok(digest)
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

/// A token server for the registry's `auth: token:` flow, as Docker Hub's or Harbor's:
/// `GET /token?service=S&scope=repository:NAME:pull` with Basic `user:pass` answers
/// `{"token": JWT}` granting the requested actions; anything else gets 401. Tokens are RS256
/// JWTs signed (with the `openssl` tool) by a self-signed certificate's key, carried in `x5c`,
/// which the real registry checks against its `rootcertbundle`.
pub struct TokenIssuer {
    /// `http://127.0.0.1:PORT/token`
    pub realm: String,
    dir: TempDir,
    user: String,
    pass: String,
    issued: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

pub const TOKEN_SERVICE: &str = "poolcast-test-registry";
pub const TOKEN_ISSUER: &str = "poolcast-test-issuer";

impl TokenIssuer {
    pub fn start(user: &str, pass: &str) -> std::sync::Arc<TokenIssuer> {
        Self::launch(user, pass).expect("starting the token issuer")
    }

    fn launch(user: &str, pass: &str) -> Result<std::sync::Arc<TokenIssuer>> {
        require_tool("openssl");
        let dir = tempfile::Builder::new()
            .prefix("poolcast-token-")
            .tempdir()?;
        let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        run_ok(
            Command::new("openssl")
                .args([
                    "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                ])
                .args(["-subj", &format!("/CN={TOKEN_ISSUER}")])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
            Duration::from_secs(60),
        )?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let issuer = std::sync::Arc::new(TokenIssuer {
            realm: format!("http://{}/token", listener.local_addr()?),
            dir,
            user: user.to_owned(),
            pass: pass.to_owned(),
            issued: Default::default(),
        });
        let serving = issuer.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if let Err(e) = serving.answer(stream) {
                    eprintln!("[token issuer] {e:#}");
                }
            }
        });
        Ok(issuer)
    }

    /// What the registry needs to trust this issuer.
    pub fn auth(&self) -> TokenAuth {
        TokenAuth {
            realm: self.realm.clone(),
            service: TOKEN_SERVICE.into(),
            issuer: TOKEN_ISSUER.into(),
            root_cert: self.dir.path().join("cert.pem"),
        }
    }

    /// Every token handed out so far, oldest first.
    pub fn issued(&self) -> Vec<String> {
        self.issued.lock().expect("issued tokens").clone()
    }

    fn answer(&self, mut stream: std::net::TcpStream) -> Result<()> {
        use std::io::{BufRead, BufReader, Write};
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut authorization = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.trim_end().split_once(':') {
                if k.trim().eq_ignore_ascii_case("authorization") {
                    authorization = Some(v.trim().to_owned());
                }
            }
        }
        let url = url::Url::parse(&format!("http://issuer{target}"))?;
        let scopes: Vec<String> = url
            .query_pairs()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.into_owned())
            .collect();
        let service = url.query_pairs().find(|(k, _)| k == "service");
        let known = authorization.as_deref() == Some(&super::basic_auth(&self.user, &self.pass));
        let (status, body) = if url.path() != "/token" {
            ("404 Not Found", String::from("{}"))
        } else if !known || service.is_none_or(|(_, s)| s != TOKEN_SERVICE) {
            (
                "401 Unauthorized",
                String::from(r#"{"details":"bad credentials"}"#),
            )
        } else {
            let token = self.sign(&self.user, &scopes)?;
            self.issued
                .lock()
                .expect("issued tokens")
                .push(token.clone());
            let json =
                serde_json::json!({"token": token, "access_token": token, "expires_in": 300});
            ("200 OK", json.to_string())
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(body.as_bytes())?;
        Ok(())
    }

    /// A JWT for `subject` granting each `repository:NAME:ACTIONS` scope as asked.
    pub fn sign(&self, subject: &str, scopes: &[String]) -> Result<String> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        let cert_pem = fs::read_to_string(self.dir.path().join("cert.pem"))?;
        let der_b64: String = cert_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let access: Vec<serde_json::Value> = scopes
            .iter()
            .filter_map(|scope| {
                let mut parts = scope.splitn(3, ':');
                let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                Some(serde_json::json!({
                    "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()
                }))
            })
            .collect();
        let now = nodepool::unix_now();
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [der_b64]});
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER, "sub": subject, "aud": TOKEN_SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": format!("{now}-{}", self.issued().len()), "access": access,
        });
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = openssl_sign(&self.dir.path().join("key.pem"), input.as_bytes())?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}

/// RSASSA-PKCS1-v1_5 over SHA-256 (JWS `RS256`) with the `openssl` tool.
fn openssl_sign(key: &std::path::Path, data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning openssl dgst")?;
    child
        .stdin
        .take()
        .context("openssl stdin")?
        .write_all(data)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "openssl dgst -sign: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}
