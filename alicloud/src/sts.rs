//! STS (`sts.aliyuncs.com`, version 2015-04-01): `AssumeRoleWithOIDC` turns the pod's projected
//! service-account token into a role's temporary credentials (RRSA; anonymous: the token is
//! the proof), and `AssumeRole` turns credentials into another role's (the cross-account role
//! `rrsa.assumeRoleARN`), signed with HMAC-SHA1 signature V1 as the credentials SDKs sign it.
//! Parameters go in a POST form body, so the OIDC token never sits in a URL.

use crate::credentials::Credentials;
use crate::error::{Error, Result};
use crate::http;
use crate::sign;
use std::collections::BTreeMap;
use std::time::SystemTime;

pub const DEFAULT_ENDPOINT: &str = "https://sts.aliyuncs.com";
const VERSION: &str = "2015-04-01";

#[derive(Clone)]
pub struct Sts {
    http: reqwest::Client,
    base: String,
}

/// The STS endpoint the official SDKs pick: `ALIBABA_CLOUD_STS_REGION` names a regional one,
/// `ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED=true` its VPC form; otherwise the global one.
pub fn endpoint_from_env(env: &dyn Fn(&str) -> Option<String>) -> String {
    let vpc =
        env("ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let prefix = if vpc { "sts-vpc" } else { "sts" };
    match env("ALIBABA_CLOUD_STS_REGION").filter(|r| !r.is_empty()) {
        Some(region) => format!("https://{prefix}.{region}.aliyuncs.com"),
        None if vpc => "https://sts-vpc.aliyuncs.com".into(),
        None => DEFAULT_ENDPOINT.into(),
    }
}

fn hint<'a>(action: &'static str, role: &'a str) -> impl Fn(&str) -> String + 'a {
    move |code: &str| {
        if crate::error::is_permission_code(code)
            || code.to_ascii_lowercase().contains("assumerole")
        {
            match action {
                "AssumeRoleWithOIDC" => format!(" (the trust policy of {role} must allow this service account's oidc:sub with oidc:aud sts.aliyuncs.com; see the chart's NOTES)"),
                _ => format!(" (the role the pod assumed needs AliyunSTSAssumeRoleAccess, and {role} must trust it)"),
            }
        } else {
            String::new()
        }
    }
}

impl Sts {
    pub fn new(endpoint: &str) -> Result<Self> {
        Ok(Sts {
            http: http::client()?,
            base: endpoint.trim_end_matches('/').to_string(),
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        action: &'static str,
        role: &str,
        params: &BTreeMap<String, String>,
    ) -> Result<Credentials> {
        let url = format!("{}/", self.base);
        let resp = self
            .http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(sign::canonical_query(params))
            .send()
            .await;
        let (status, body) = http::read(action, &url, resp).await?;
        let v = http::json_answer(action, role, &url, status, &body, hint(action, role))?;
        let creds = v.get("Credentials").ok_or_else(|| Error::BadAnswer {
            what: format!("STS {action} ({role})"),
            message: "no Credentials in the answer".into(),
        })?;
        Credentials::from_sts_json(creds, SystemTime::now()).map_err(|message| Error::BadAnswer {
            what: format!("STS {action} ({role})"),
            message,
        })
    }

    fn common(
        action: &str,
        role_arn: &str,
        session: &str,
        duration: u32,
    ) -> BTreeMap<String, String> {
        [
            ("Action", action),
            ("Format", "JSON"),
            ("Version", VERSION),
            ("RoleArn", role_arn),
            ("RoleSessionName", session),
            ("DurationSeconds", &duration.to_string()),
            ("Timestamp", &sign::iso8601(SystemTime::now())),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// RRSA: the role `role_arn` of identity provider `provider_arn`, for the holder of `token`.
    pub async fn assume_role_with_oidc(
        &self,
        role_arn: &str,
        provider_arn: &str,
        token: &str,
        session: &str,
        duration: u32,
    ) -> Result<Credentials> {
        let mut params = Self::common("AssumeRoleWithOIDC", role_arn, session, duration);
        params.insert("OIDCProviderArn".into(), provider_arn.into());
        params.insert("OIDCToken".into(), token.into());
        self.call("AssumeRoleWithOIDC", role_arn, &params).await
    }

    /// `role_arn`'s credentials for the holder of `creds`, valid `duration` seconds.
    pub async fn assume_role(
        &self,
        creds: &Credentials,
        role_arn: &str,
        session: &str,
        duration: u32,
    ) -> Result<Credentials> {
        let mut params = Self::common("AssumeRole", role_arn, session, duration);
        params.insert("AccessKeyId".into(), creds.access_key_id.clone());
        params.insert("SignatureMethod".into(), "HMAC-SHA1".into());
        params.insert("SignatureVersion".into(), "1.0".into());
        params.insert("SignatureNonce".into(), sign::nonce());
        if let Some(token) = &creds.security_token {
            params.insert("SecurityToken".into(), token.clone());
        }
        let signature = sign::rpc_v1_signature("POST", &params, &creds.access_key_secret);
        params.insert("Signature".into(), signature);
        self.call("AssumeRole", role_arn, &params).await
    }
}
