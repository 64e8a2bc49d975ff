//! The two ACR actions (product cr, version 2018-12-01) and the choice between their domains:
//! `GetInstanceVpcEndpoint` gives the VPC domains and the VPCs linked to them,
//! `ListInstanceEndpoint` every endpoint, the internet one among them. A node in a linked VPC
//! uses the VPC domains; any other node (an edge pool in a data centre) the internet domains.

use crate::credentials::Credentials;
use crate::error::{Error, Result};
use crate::openapi::OpenApi;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const VERSION: &str = "2018-12-01";

/// `cr.<region>.aliyuncs.com`, the regional endpoint the SDKs use.
pub fn default_endpoint(region: &str) -> String {
    format!("https://cr.{region}.aliyuncs.com")
}

/// What `GetInstanceVpcEndpoint` says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VpcEndpoint {
    pub domains: Vec<String>,
    /// `(VpcId, Status)` of each linked VPC.
    pub linked_vpcs: Vec<(String, String)>,
}

/// One entry of `ListInstanceEndpoint`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Endpoint {
    pub endpoint_type: String,
    pub enable: bool,
    /// `(Domain, Type)`; type `SYSTEM` or `USER`.
    pub domains: Vec<(String, String)>,
}

/// The domains poolcast uses for one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceEndpoints {
    pub instance_id: String,
    pub region: String,
    /// The VPC whose linked endpoint the domains are; empty: the internet endpoint.
    pub vpc_id: String,
    /// Reachable from here; the first is the one fetched from.
    pub domains: Vec<String>,
    /// The instance's other domains: images may name them, and they are fetched through
    /// `domains[0]`.
    pub aliases: Vec<String>,
}

fn str_of<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v.get(key).and_then(|x| x.as_str()).unwrap_or("")
}

fn list<'a>(v: &'a serde_json::Value, key: &str) -> &'a [serde_json::Value] {
    v.get(key)
        .and_then(|x| x.as_array())
        .map_or(&[], Vec::as_slice)
}

/// A registry host: DNS labels, lowercased; `None` for anything else.
fn host(text: &str) -> Option<String> {
    let h = text.trim().to_ascii_lowercase();
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    ok.then_some(h)
}

pub fn parse_vpc_endpoint(v: &serde_json::Value) -> VpcEndpoint {
    VpcEndpoint {
        domains: list(v, "Domains")
            .iter()
            .filter_map(|d| d.as_str().and_then(host))
            .collect(),
        linked_vpcs: list(v, "LinkedVpcs")
            .iter()
            .map(|l| {
                (
                    str_of(l, "VpcId").to_string(),
                    str_of(l, "Status").to_string(),
                )
            })
            .collect(),
    }
}

pub fn parse_endpoints(v: &serde_json::Value) -> Vec<Endpoint> {
    list(v, "Endpoints")
        .iter()
        .map(|e| Endpoint {
            endpoint_type: str_of(e, "EndpointType").to_string(),
            enable: e.get("Enable").and_then(|x| x.as_bool()).unwrap_or(false),
            domains: list(e, "Domains")
                .iter()
                .filter_map(|d| Some((host(str_of(d, "Domain"))?, str_of(d, "Type").to_string())))
                .collect(),
        })
        .collect()
}

/// The domains to use from a node in `vpc_id` (or in no VPC), and the rest as aliases.
pub fn choose(
    instance_id: &str,
    region: &str,
    vpc_id: Option<&str>,
    vpc: &VpcEndpoint,
    endpoints: &[Endpoint],
) -> Result<InstanceEndpoints> {
    let linked = vpc_id.filter(|id| {
        vpc.linked_vpcs.iter().any(|(v, status)| {
            v == id && (status.is_empty() || status.eq_ignore_ascii_case("RUNNING"))
        })
    });
    let internet: Vec<String> = {
        let mut d: Vec<&(String, String)> = endpoints
            .iter()
            .filter(|e| e.enable && e.endpoint_type.eq_ignore_ascii_case("internet"))
            .flat_map(|e| &e.domains)
            .collect();
        // System domains first: a user domain may lack a certificate for the name.
        d.sort_by_key(|(_, kind)| !kind.eq_ignore_ascii_case("SYSTEM"));
        d.into_iter().map(|(name, _)| name.clone()).collect()
    };
    let (domains, used_vpc) = match linked {
        Some(id) if !vpc.domains.is_empty() => (vpc.domains.clone(), id.to_string()),
        _ if !internet.is_empty() => (internet, String::new()),
        _ => {
            let why = match vpc_id {
                Some(id) => format!("VPC {id} is not linked to its VPC endpoint (linked: {}) and its internet endpoint is off", 
                    if vpc.linked_vpcs.is_empty() { "none".to_string() } else { vpc.linked_vpcs.iter().map(|(v, s)| format!("{v} {s}")).collect::<Vec<_>>().join(", ") }),
                None => "this node is in no known VPC (set vpcId) and the instance's internet endpoint is off".to_string(),
            };
            return Err(Error::NoDomain {
                instance: instance_id.to_string(),
                message: format!("{why}; link the VPC (Configure a VPC ACL) or enable access over the internet in the ACR console"),
            });
        }
    };
    let mut aliases = Vec::new();
    for d in vpc.domains.iter().chain(
        endpoints
            .iter()
            .flat_map(|e| e.domains.iter().map(|(d, _)| d)),
    ) {
        if !domains.contains(d) && !aliases.contains(d) {
            aliases.push(d.clone());
        }
    }
    Ok(InstanceEndpoints {
        instance_id: instance_id.to_string(),
        region: region.to_string(),
        vpc_id: used_vpc,
        domains,
        aliases,
    })
}

/// The ACR client for one region.
pub struct Cr {
    api: OpenApi,
}

fn hint(region: String, credentials: String) -> impl Fn(&str) -> String {
    move |code: &str| {
        if crate::error::is_permission_code(code) {
            format!(
                " (grant {} to the RAM identity used: {credentials})",
                crate::error::ACTIONS
            )
        } else if code.eq_ignore_ascii_case("INSTANCE_NOT_EXIST") {
            format!(
                " (check the instance id, and that {region} is the instance's region: set region)"
            )
        } else {
            String::new()
        }
    }
}

impl Cr {
    pub fn new(endpoint: &str) -> Result<Self> {
        Ok(Cr {
            api: OpenApi::new(endpoint, VERSION)?,
        })
    }

    pub fn endpoint(&self) -> &str {
        self.api.endpoint()
    }

    /// Both actions for `instance_id`; `credentials` describes their source for error hints.
    pub async fn endpoints(
        &self,
        creds: &Credentials,
        instance_id: &str,
        region: &str,
        credentials: &str,
    ) -> Result<(VpcEndpoint, Vec<Endpoint>)> {
        let params: BTreeMap<String, String> = [
            ("InstanceId".to_string(), instance_id.to_string()),
            ("ModuleName".to_string(), "Registry".to_string()),
        ]
        .into();
        let subject = format!("instance {instance_id} in {region}");
        let vpc = self
            .api
            .call(
                "GetInstanceVpcEndpoint",
                &params,
                creds,
                &subject,
                hint(region.to_string(), credentials.to_string()),
            )
            .await?;
        let all = self
            .api
            .call(
                "ListInstanceEndpoint",
                &params,
                creds,
                &subject,
                hint(region.to_string(), credentials.to_string()),
            )
            .await?;
        Ok((parse_vpc_endpoint(&vpc), parse_endpoints(&all)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answers() -> (VpcEndpoint, Vec<Endpoint>) {
        let vpc = parse_vpc_endpoint(&json!({
            "Code": "success", "IsSuccess": true, "ModuleName": "Registry",
            "Domains": ["test-registry-vpc.cn-hangzhou.cr.aliyuncs.com"],
            "LinkedVpcs": [{"VpcId": "vpc-linked", "Status": "RUNNING", "VswitchId": "vsw-1"}],
        }));
        let all = parse_endpoints(&json!({
            "Code": "success", "IsSuccess": true,
            "Endpoints": [
                {"EndpointType": "internet", "Enable": true, "Status": "RUNNING",
                 "Domains": [{"Domain": "registry.example.com", "Type": "USER"},
                             {"Domain": "test-registry.cn-hangzhou.cr.aliyuncs.com", "Type": "SYSTEM"}]},
                {"EndpointType": "vpc", "Enable": true,
                 "Domains": [{"Domain": "test-registry-vpc.cn-hangzhou.cr.aliyuncs.com", "Type": "SYSTEM"}]},
            ],
        }));
        (vpc, all)
    }

    #[test]
    fn a_linked_vpc_gets_the_vpc_domain() {
        let (vpc, all) = answers();
        let e = choose("cri-a", "cn-hangzhou", Some("vpc-linked"), &vpc, &all).expect("chosen");
        assert_eq!(e.domains, ["test-registry-vpc.cn-hangzhou.cr.aliyuncs.com"]);
        assert_eq!(e.vpc_id, "vpc-linked");
        assert_eq!(
            e.aliases,
            [
                "registry.example.com",
                "test-registry.cn-hangzhou.cr.aliyuncs.com"
            ]
        );
    }

    #[test]
    fn no_vpc_or_an_unlinked_one_gets_the_internet_domains_system_first() {
        let (vpc, all) = answers();
        for vpc_id in [None, Some("vpc-other")] {
            let e = choose("cri-a", "cn-hangzhou", vpc_id, &vpc, &all).expect("chosen");
            assert_eq!(
                e.domains,
                [
                    "test-registry.cn-hangzhou.cr.aliyuncs.com",
                    "registry.example.com"
                ]
            );
            assert_eq!(e.vpc_id, "");
            assert_eq!(e.aliases, ["test-registry-vpc.cn-hangzhou.cr.aliyuncs.com"]);
        }
    }

    #[test]
    fn no_usable_endpoint_says_what_to_do() {
        let (vpc, mut all) = answers();
        all.iter_mut().for_each(|e| e.enable = false);
        let err = choose("cri-a", "cn-hangzhou", Some("vpc-other"), &vpc, &all)
            .expect_err("none")
            .to_string();
        assert!(
            err.contains("cri-a") && err.contains("vpc-other") && err.contains("vpc-linked"),
            "{err}"
        );
    }

    #[test]
    fn junk_domains_are_dropped() {
        let vpc = parse_vpc_endpoint(
            &json!({"Domains": ["ok.example", "bad host", "", 7, "-x.example"]}),
        );
        assert_eq!(vpc.domains, ["ok.example"]);
        assert!(parse_endpoints(&json!({"Endpoints": "nope"})).is_empty());
    }
}
