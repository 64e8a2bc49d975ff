//! Where the OpenAPI credentials come from, in the official SDKs' order and with their
//! environment names (the first source that is configured and answers is kept):
//!
//! 1. an AccessKey: `ALIBABA_CLOUD_ACCESS_KEY_ID`, `ALIBABA_CLOUD_ACCESS_KEY_SECRET` (and
//!    `ALIBABA_CLOUD_SECURITY_TOKEN` if temporary), from a Secret;
//! 2. RRSA: `ALIBABA_CLOUD_ROLE_ARN`, `ALIBABA_CLOUD_OIDC_PROVIDER_ARN` and
//!    `ALIBABA_CLOUD_OIDC_TOKEN_FILE` (the projected service-account token, audience
//!    `sts.aliyuncs.com`), traded at STS with `AssumeRoleWithOIDC`;
//! 3. the ECS metadata server: the worker RAM role, or the role `controller.ramRole` names
//!    (or `ALIBABA_CLOUD_ECS_METADATA`), unless `ALIBABA_CLOUD_ECS_METADATA_DISABLED=true`.
//!
//! With `assumeRoleARN`, whatever the chain gave is then traded with `AssumeRole` for that role,
//! for `expireDuration` seconds (RRSA's cross-account case). Temporary credentials are renewed
//! before they expire: 15 minutes before, as the SDKs do, or half their life when that is
//! shorter. A secret never appears in `Debug` output, logs or errors.

use crate::error::{Error, Result};
use crate::metadata::Metadata;
use crate::sts::Sts;
use std::time::{Duration, SystemTime};
use tokio::sync::Mutex;

/// How long before expiry temporary credentials are renewed, at most.
const RENEW_BEFORE: Duration = Duration::from_secs(15 * 60);
/// `DurationSeconds` of the RRSA session (the SDKs' default).
const OIDC_DURATION: u32 = 3600;

#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub access_key_secret: String,
    pub security_token: Option<String>,
    /// `None`: a long-term AccessKey.
    pub expiration: Option<SystemTime>,
    obtained: SystemTime,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"<redacted>")
            .field(
                "security_token",
                &self.security_token.as_ref().map(|_| "<redacted>"),
            )
            .field("expiration", &self.expiration.map(crate::sign::iso8601))
            .finish()
    }
}

impl Credentials {
    pub fn access_key(id: &str, secret: &str, token: Option<String>) -> Self {
        Credentials {
            access_key_id: id.to_string(),
            access_key_secret: secret.to_string(),
            security_token: token.filter(|t| !t.is_empty()),
            expiration: None,
            obtained: SystemTime::now(),
        }
    }

    /// `{AccessKeyId, AccessKeySecret, SecurityToken, Expiration}` as STS and the metadata
    /// server give them.
    pub fn from_sts_json(v: &serde_json::Value, now: SystemTime) -> Result<Self, String> {
        let field = |name: &str| -> Result<String, String> {
            v.get(name)
                .and_then(|x| x.as_str())
                .filter(|x| !x.is_empty())
                .map(str::to_string)
                .ok_or_else(|| format!("no {name}"))
        };
        let expiration = field("Expiration")?;
        let expiration = humantime::parse_rfc3339(&expiration)
            .map_err(|e| format!("Expiration `{expiration}`: {e}"))?;
        Ok(Credentials {
            access_key_id: field("AccessKeyId")?,
            access_key_secret: field("AccessKeySecret")?,
            security_token: Some(field("SecurityToken")?),
            expiration: Some(expiration),
            obtained: now,
        })
    }

    /// Still good at `now`, with the renewal margin to spare.
    pub fn fresh_at(&self, now: SystemTime) -> bool {
        let Some(expiration) = self.expiration else {
            return true;
        };
        let life = expiration.duration_since(self.obtained).unwrap_or_default();
        let margin = RENEW_BEFORE.min(life / 2);
        now + margin < expiration
    }
}

/// One source of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    AccessKey,
    Oidc {
        role_arn: String,
        provider_arn: String,
        token_file: String,
        session: String,
    },
    EcsRole {
        role: String,
    },
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::AccessKey => "AccessKey (ALIBABA_CLOUD_ACCESS_KEY_ID)".into(),
            Source::Oidc { role_arn, .. } => format!("RRSA role {role_arn} (AssumeRoleWithOIDC)"),
            Source::EcsRole { role } if role.is_empty() => {
                "the ECS instance's RAM role (metadata server)".into()
            }
            Source::EcsRole { role } => format!("RAM role {role} (metadata server)"),
        }
    }
}

/// What the chain is built from besides the environment.
pub struct ChainSettings<'a> {
    /// `controller.ramRole`: the role the metadata server is asked for.
    pub ram_role: &'a str,
    /// `rrsa.assumeRoleARN`, with `rrsa.expireDuration` seconds.
    pub assume_role: Option<(&'a str, u32)>,
}

struct State {
    /// Index in `sources` of the source that answered first; kept, as the SDKs keep it.
    picked: Option<usize>,
    base: Option<Credentials>,
    assumed: Option<Credentials>,
}

pub struct Chain {
    sources: Vec<Source>,
    access_key: Option<Credentials>,
    assume_role: Option<(String, u32)>,
    session: String,
    sts: Sts,
    metadata: Metadata,
    state: Mutex<State>,
}

impl Chain {
    /// The sources the environment configures, in order. `env` reads one variable (tests
    /// pass their own).
    pub fn from_env(
        env: &dyn Fn(&str) -> Option<String>,
        settings: &ChainSettings<'_>,
        sts: Sts,
        metadata: Metadata,
    ) -> Chain {
        let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let mut sources = Vec::new();
        let mut access_key = None;
        if let (Some(id), Some(secret)) = (
            var("ALIBABA_CLOUD_ACCESS_KEY_ID"),
            var("ALIBABA_CLOUD_ACCESS_KEY_SECRET"),
        ) {
            access_key = Some(Credentials::access_key(
                id.trim(),
                secret.trim(),
                var("ALIBABA_CLOUD_SECURITY_TOKEN"),
            ));
            sources.push(Source::AccessKey);
        }
        let session = var("ALIBABA_CLOUD_ROLE_SESSION_NAME")
            .unwrap_or_else(|| format!("poolcast-{}", nodepool::unix_now()));
        if let (Some(role_arn), Some(provider_arn), Some(token_file)) = (
            var("ALIBABA_CLOUD_ROLE_ARN"),
            var("ALIBABA_CLOUD_OIDC_PROVIDER_ARN"),
            var("ALIBABA_CLOUD_OIDC_TOKEN_FILE"),
        ) {
            sources.push(Source::Oidc {
                role_arn,
                provider_arn,
                token_file,
                session: session.clone(),
            });
        }
        let disabled = var("ALIBABA_CLOUD_ECS_METADATA_DISABLED")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if !disabled {
            let role = if settings.ram_role.is_empty() {
                var("ALIBABA_CLOUD_ECS_METADATA").unwrap_or_default()
            } else {
                settings.ram_role.to_string()
            };
            sources.push(Source::EcsRole { role });
        }
        Chain {
            sources,
            access_key,
            assume_role: settings
                .assume_role
                .filter(|(arn, _)| !arn.is_empty())
                .map(|(arn, d)| (arn.to_string(), d)),
            session,
            sts,
            metadata,
            state: Mutex::new(State {
                picked: None,
                base: None,
                assumed: None,
            }),
        }
    }

    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// What the chain uses (or would try), for logs: no secret, only kinds and role names.
    pub fn describe(&self) -> String {
        let base: Vec<String> = self.sources.iter().map(Source::describe).collect();
        let base = if base.is_empty() {
            "none".to_string()
        } else {
            base.join(", then ")
        };
        match &self.assume_role {
            Some((arn, d)) => format!("{base}; then AssumeRole {arn} for {d}s"),
            None => base,
        }
    }

    async fn fetch(&self, source: &Source) -> Result<Credentials> {
        match source {
            Source::AccessKey => self
                .access_key
                .clone()
                .ok_or_else(|| Error::NoCredentials("AccessKey not set".into())),
            Source::Oidc {
                role_arn,
                provider_arn,
                token_file,
                session,
            } => {
                // Read on every renewal: the kubelet rotates the projected token.
                let token = tokio::fs::read_to_string(token_file).await.map_err(|e| {
                    Error::Setting(format!(
                        "ALIBABA_CLOUD_OIDC_TOKEN_FILE {token_file}: cannot be read ({e}); is the projected service-account token mounted?"
                    ))
                })?;
                self.sts
                    .assume_role_with_oidc(
                        role_arn,
                        provider_arn,
                        token.trim(),
                        session,
                        OIDC_DURATION,
                    )
                    .await
            }
            Source::EcsRole { role } => self.metadata.role_credentials(role).await,
        }
    }

    /// Credentials good for a call now: the cached ones, or renewed ones.
    pub async fn get(&self) -> Result<Credentials> {
        let now = SystemTime::now();
        let mut state = self.state.lock().await;
        let base = match (&state.base, state.picked) {
            (Some(c), _) if c.fresh_at(now) => c.clone(),
            (_, Some(i)) => {
                let c = self.fetch(&self.sources[i]).await?;
                tracing::info!(source = %self.sources[i].describe(), expires = ?c.expiration.map(crate::sign::iso8601), "Alibaba Cloud credentials renewed");
                state.assumed = None;
                c
            }
            (_, None) => {
                let mut reasons = Vec::new();
                let mut found = None;
                for (i, source) in self.sources.iter().enumerate() {
                    match self.fetch(source).await {
                        Ok(c) => {
                            found = Some((i, c));
                            break;
                        }
                        Err(e) => reasons.push(format!("{}: {e}", source.describe())),
                    }
                }
                let Some((i, c)) = found else {
                    if reasons.is_empty() {
                        reasons.push("no source is configured (set ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET, or RRSA's ALIBABA_CLOUD_ROLE_ARN, ALIBABA_CLOUD_OIDC_PROVIDER_ARN and ALIBABA_CLOUD_OIDC_TOKEN_FILE, or run on ECS with a RAM role)".into());
                    }
                    return Err(Error::NoCredentials(reasons.join("; ")));
                };
                tracing::info!(source = %self.sources[i].describe(), "Alibaba Cloud credentials found");
                state.picked = Some(i);
                state.assumed = None;
                c
            }
        };
        state.base = Some(base.clone());
        let Some((arn, duration)) = &self.assume_role else {
            return Ok(base);
        };
        if let Some(c) = state.assumed.as_ref().filter(|c| c.fresh_at(now)) {
            return Ok(c.clone());
        }
        let assumed = self
            .sts
            .assume_role(&base, arn, &self.session, *duration)
            .await?;
        tracing::info!(role = %arn, expires = ?assumed.expiration.map(crate::sign::iso8601), "assumed the cross-account role");
        state.assumed = Some(assumed.clone());
        Ok(assumed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn chain(vars: &[(&str, &str)], ram_role: &str) -> Chain {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |k: &str| vars.get(k).cloned();
        Chain::from_env(
            &env,
            &ChainSettings {
                ram_role,
                assume_role: None,
            },
            Sts::new("http://127.0.0.1:9").expect("sts"),
            Metadata::new("http://127.0.0.1:9", false).expect("metadata"),
        )
    }

    #[test]
    fn sources_follow_the_sdk_order() {
        let all = [
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "id"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "secret"),
            ("ALIBABA_CLOUD_ROLE_ARN", "acs:ram::1:role/a"),
            (
                "ALIBABA_CLOUD_OIDC_PROVIDER_ARN",
                "acs:ram::1:oidc-provider/p",
            ),
            ("ALIBABA_CLOUD_OIDC_TOKEN_FILE", "/t"),
        ];
        let c = chain(&all, "");
        assert!(matches!(
            c.sources(),
            [
                Source::AccessKey,
                Source::Oidc { .. },
                Source::EcsRole { .. }
            ]
        ));
        // A half-set AccessKey or OIDC triple is not a source.
        let c = chain(&all[1..4], "AskRole");
        assert_eq!(
            c.sources(),
            [Source::EcsRole {
                role: "AskRole".into()
            }]
        );
        let c = chain(&[("ALIBABA_CLOUD_ECS_METADATA_DISABLED", "true")], "");
        assert!(c.sources().is_empty());
        let c = chain(&[("ALIBABA_CLOUD_ECS_METADATA", "worker")], "");
        assert_eq!(
            c.sources(),
            [Source::EcsRole {
                role: "worker".into()
            }]
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let c = Credentials::access_key("LTAIid", "s3cr3t", Some("tok3n".into()));
        let shown = format!("{c:?}");
        assert!(shown.contains("LTAIid"));
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("tok3n"),
            "{shown}"
        );
    }

    #[test]
    fn temporary_credentials_are_renewed_before_they_expire() {
        let now = SystemTime::now();
        let v = serde_json::json!({
            "AccessKeyId": "STS.id", "AccessKeySecret": "s", "SecurityToken": "t",
            "Expiration": crate::sign::iso8601(now + Duration::from_secs(3600)),
        });
        let c = Credentials::from_sts_json(&v, now).expect("parses");
        assert!(c.fresh_at(now + Duration::from_secs(44 * 60)));
        assert!(!c.fresh_at(now + Duration::from_secs(46 * 60)));
        // Short-lived: renewed at half their life.
        let v = serde_json::json!({
            "AccessKeyId": "STS.id", "AccessKeySecret": "s", "SecurityToken": "t",
            "Expiration": crate::sign::iso8601(now + Duration::from_secs(10)),
        });
        let c = Credentials::from_sts_json(&v, now).expect("parses");
        assert!(c.fresh_at(now + Duration::from_secs(3)));
        assert!(!c.fresh_at(now + Duration::from_secs(6)));
        assert!(
            Credentials::access_key("a", "b", None).fresh_at(now + Duration::from_secs(1 << 30))
        );
        let err = Credentials::from_sts_json(&serde_json::json!({"AccessKeyId": "x"}), now)
            .expect_err("incomplete");
        assert!(err.contains("no "), "{err}");
    }
}
