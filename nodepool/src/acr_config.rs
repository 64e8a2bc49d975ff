//! The `acr` block of the mirror's and the webhook's config files: ACR Enterprise Edition
//! instances named by id, resolved to their registry domains at run time through the ACR
//! OpenAPI (the `alicloud` crate does the calls). Only names and settings live here; the
//! credentials come from the environment (`ALIBABA_CLOUD_*`), never from a config file.

use crate::units::HumanDuration;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Seconds of an `AssumeRole` session (`rrsa.expireDuration`): STS's own bounds.
pub const EXPIRE_DURATION: std::ops::RangeInclusive<u32> = 900..=43200;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct AcrConfig {
    /// Instance ids (`cri-xxx`); the values' `acrInstances`/`registryInstances`.
    pub instances: Vec<String>,
    /// Region of the instances; empty: the ECS metadata server's `region-id`, then the node's
    /// `topology.kubernetes.io/region` label (`POOLCAST_NODE_REGION`).
    pub region: String,
    /// The VPC whose endpoint to use; empty: the metadata server's `vpc-id`. Without a VPC, or
    /// when the instance has no endpoint linked to it, the instance's internet domain is used.
    pub vpc_id: String,
    /// With credentials from the chain, `AssumeRole` into this role (a role of the account that
    /// owns the instances: RRSA's cross-account case) before calling the OpenAPI.
    #[serde(rename = "assumeRoleARN")]
    pub assume_role_arn: String,
    /// `DurationSeconds` of that `AssumeRole` session (900..43200).
    pub expire_duration: u32,
    /// The RAM role the ECS metadata server hands out credentials for (`controller.ramRole`,
    /// ASK); empty: the role attached to the instance.
    pub ram_role: String,
    /// How often the domains are resolved again.
    pub refresh_interval: HumanDuration,
    /// The last good answer, kept to start with when the OpenAPI cannot be reached; empty: not
    /// kept.
    pub cache_file: String,
    /// Base URL of the ACR OpenAPI; empty: `https://cr.<region>.aliyuncs.com`.
    pub openapi_endpoint: String,
    /// Base URL of STS; empty: `https://sts.aliyuncs.com` (or as `ALIBABA_CLOUD_STS_REGION`
    /// and `ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED` say, as in the official SDKs).
    pub sts_endpoint: String,
    /// Base URL of the ECS metadata server; empty: `http://100.100.100.200`.
    pub metadata_endpoint: String,
}

impl Default for AcrConfig {
    fn default() -> Self {
        AcrConfig {
            instances: Vec::new(),
            region: String::new(),
            vpc_id: String::new(),
            assume_role_arn: String::new(),
            expire_duration: 3600,
            ram_role: String::new(),
            refresh_interval: HumanDuration(Duration::from_secs(600)),
            cache_file: String::new(),
            openapi_endpoint: String::new(),
            sts_endpoint: String::new(),
            metadata_endpoint: String::new(),
        }
    }
}

fn invalid(key: &'static str, message: String) -> Error {
    Error::Invalid { key, message }
}

/// `cri-` and lowercase letters and digits: an ACR EE instance id.
pub fn is_instance_id(id: &str) -> bool {
    id.strip_prefix("cri-").is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= 64
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}

/// `cn-hangzhou`, `ap-southeast-1`: lowercase words joined by `-`.
pub fn is_region(region: &str) -> bool {
    region.len() <= 64
        && region.contains('-')
        && region.split('-').all(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

impl AcrConfig {
    pub fn is_enabled(&self) -> bool {
        !self.instances.is_empty()
    }

    /// Checks every key; a failure names it as `acr.<key>`.
    pub fn validate(&self) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for id in &self.instances {
            if !is_instance_id(id) {
                return Err(invalid(
                    "acr.instances",
                    format!("`{id}` is not an ACR EE instance id (cri- and lowercase letters or digits, e.g. cri-abc123)"),
                ));
            }
            if !seen.insert(id) {
                return Err(invalid("acr.instances", format!("`{id}` is listed twice")));
            }
        }
        if !self.region.is_empty() && !is_region(&self.region) {
            return Err(invalid(
                "acr.region",
                format!("`{}` is not a region id like cn-hangzhou", self.region),
            ));
        }
        if !self.vpc_id.is_empty() && !self.vpc_id.starts_with("vpc-") {
            return Err(invalid(
                "acr.vpcId",
                format!("`{}` is not a VPC id like vpc-bp1...", self.vpc_id),
            ));
        }
        if !self.assume_role_arn.is_empty() && !self.assume_role_arn.starts_with("acs:ram::") {
            return Err(invalid(
                "acr.assumeRoleARN",
                format!(
                    "`{}` is not a RAM role ARN like acs:ram::123456789012:role/NAME",
                    self.assume_role_arn
                ),
            ));
        }
        if !EXPIRE_DURATION.contains(&self.expire_duration) {
            return Err(invalid(
                "acr.expireDuration",
                format!(
                    "{} seconds is outside {}..{} (STS's bounds; the role's MaxSessionDuration may be lower)",
                    self.expire_duration,
                    EXPIRE_DURATION.start(),
                    EXPIRE_DURATION.end()
                ),
            ));
        }
        if self.refresh_interval.0 < Duration::from_secs(1) {
            return Err(invalid("acr.refreshInterval", "must be at least 1s".into()));
        }
        for (key, value) in [
            ("acr.openapiEndpoint", &self.openapi_endpoint),
            ("acr.stsEndpoint", &self.sts_endpoint),
            ("acr.metadataEndpoint", &self.metadata_endpoint),
        ] {
            if value.is_empty() {
                continue;
            }
            match url::Url::parse(value) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => {
                    return Err(invalid(
                        key,
                        format!(
                        "`{value}` is not an http(s) URL like https://cr.cn-hangzhou.aliyuncs.com"
                    ),
                    ))
                }
            }
        }
        Ok(())
    }
}

/// Splits the values' comma-separated `acrInstances` (`"cri-xxx, cri-yyy"`) into ids.
pub fn split_instances(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> std::result::Result<AcrConfig, String> {
        let c: AcrConfig = crate::config::parse_yaml(yaml)?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn keys_are_read_with_their_defaults() {
        let c = check(
            "instances: [cri-abc123, cri-x9]\nregion: cn-hangzhou\nvpcId: vpc-bp1\n\
             assumeRoleARN: acs:ram::1234:role/acr\nexpireDuration: 7200\nramRole: AskRole\n\
             refreshInterval: 5m\ncacheFile: /var/lib/x.json\nopenapiEndpoint: http://127.0.0.1:9\n",
        )
        .expect("valid");
        assert_eq!(c.instances, ["cri-abc123", "cri-x9"]);
        assert_eq!(c.expire_duration, 7200);
        assert_eq!(c.refresh_interval.0, Duration::from_secs(300));
        let d = AcrConfig::default();
        assert_eq!(d.expire_duration, 3600);
        assert_eq!(d.refresh_interval.0, Duration::from_secs(600));
        assert!(!d.is_enabled());
        d.validate().expect("defaults are valid");
    }

    #[test]
    fn bad_values_name_the_key() {
        let bad = |yaml: &str| check(yaml).expect_err("invalid");
        assert!(bad("instances: [test-registry]\n").contains("acr.instances"));
        assert!(bad("instances: [cri-a, cri-a]\n").contains("twice"));
        assert!(bad("region: Hangzhou\n").contains("acr.region"));
        assert!(bad("vpcId: bp1\n").contains("acr.vpcId"));
        assert!(bad("assumeRoleARN: role/x\n").contains("acr.assumeRoleARN"));
        assert!(bad("expireDuration: 60\n").contains("acr.expireDuration"));
        assert!(bad("openapiEndpoint: cr.example\n").contains("acr.openapiEndpoint"));
        assert!(bad("stsEndpoint: ftp://x\n").contains("acr.stsEndpoint"));
        assert!(bad("assumeRoleArn: x\n").contains("assumeRoleArn"));
    }

    #[test]
    fn comma_separated_ids_are_split() {
        assert_eq!(split_instances(" cri-a, cri-b ,,"), ["cri-a", "cri-b"]);
        assert!(is_instance_id("cri-0a1b"));
        assert!(!is_instance_id("cri-"));
        assert!(!is_instance_id("cri-ABC"));
        assert!(is_region("ap-southeast-1"));
        assert!(!is_region("hangzhou"));
    }
}
