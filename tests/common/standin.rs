//! The Alibaba Cloud stand-in (`tests/alicloud/standin.py`): the ACR OpenAPI, STS and the ECS
//! metadata server on one loopback port, checking every signature with the official SDK's code.
//! Its Python packages come from `scripts/test.sh`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use serde_json::Value;

use super::READY_TIMEOUT;

pub const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/alicloud/standin.py");
pub const SDK_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/alicloud/sdk_client.py");

/// Every variable of the credential chain: cleared for each child, so the machine's own never
/// leak into a test (and no test ever talks to a real endpoint).
pub const CHAIN_VARS: &[&str] = &[
    "ALIBABA_CLOUD_ACCESS_KEY_ID",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
    "ALIBABA_CLOUD_SECURITY_TOKEN",
    "ALIBABA_CLOUD_ROLE_ARN",
    "ALIBABA_CLOUD_OIDC_PROVIDER_ARN",
    "ALIBABA_CLOUD_OIDC_TOKEN_FILE",
    "ALIBABA_CLOUD_ROLE_SESSION_NAME",
    "ALIBABA_CLOUD_ECS_METADATA",
    "ALIBABA_CLOUD_ECS_METADATA_DISABLED",
    "ALIBABA_CLOUD_IMDSV1_DISABLED",
    "ALIBABA_CLOUD_STS_REGION",
    "ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED",
    "POOLCAST_NODE_REGION",
];

pub struct StandIn {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl StandIn {
    /// Starts the stand-in with `state` (see the script's doc) and waits until it listens.
    pub fn start(state: Value) -> StandIn {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.json");
        std::fs::write(&path, state.to_string()).expect("writing the stand-in's state");
        let mut child = Command::new("python3")
            .arg(SCRIPT)
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the stand-in (scripts/test.sh installs its packages)");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("standin listening ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("the Alibaba Cloud stand-in did not start: are alibabacloud-tea-openapi and alibabacloud-cr20181201 installed? (scripts/test.sh installs them)");
            }
        };
        StandIn {
            child,
            url,
            _dir: dir,
        }
    }

    /// Merges `patch` into the stand-in's state.
    pub fn control(&self, patch: Value) {
        let resp = reqwest::blocking::Client::new()
            .post(format!("{}/_control", self.url))
            .body(patch.to_string())
            .send()
            .expect("stand-in control");
        assert!(resp.status().is_success());
    }

    /// Every request the stand-in saw.
    pub fn log(&self) -> Vec<Value> {
        reqwest::blocking::get(format!("{}/_log", self.url))
            .and_then(|r| r.json())
            .expect("stand-in log")
    }

    /// The OpenAPI and STS calls seen, as `(action, code)`.
    pub fn calls(&self) -> Vec<(String, String)> {
        self.log()
            .iter()
            .filter(|e| e["kind"] == "openapi")
            .map(|e| {
                (
                    e["action"].as_str().unwrap_or("").to_string(),
                    e["code"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
