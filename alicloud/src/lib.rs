//! Alibaba Cloud as poolcast needs it: ACR Enterprise Edition instances named by id are turned
//! into their registry domains through the ACR OpenAPI (`GetInstanceVpcEndpoint`,
//! `ListInstanceEndpoint`), with requests signed as the official SDKs sign them and credentials
//! found as they find them (AccessKey, RRSA, the ECS metadata server). No official Rust SDK
//! covers this, so it is kept small, on reqwest (docs/dependencies.md).

pub mod cr;
pub mod credentials;
mod error;
mod http;
pub mod metadata;
pub mod openapi;
pub mod resolve;
pub mod sign;
pub mod sts;

pub use cr::InstanceEndpoints;
pub use credentials::{Chain, Credentials, Source};
pub use error::{ApiError, Error, Result, ACTIONS};
pub use resolve::{Resolution, Resolver, NODE_REGION_ENV};
