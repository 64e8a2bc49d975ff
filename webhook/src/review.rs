//! `AdmissionReview` (admission.k8s.io/v1) as the API server sends and expects it: the request
//! fields this webhook reads, and the response with its base64 JSON Patch.

use crate::error::{Error, Result};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    pub api_version: String,
    pub kind: String,
    pub request: Option<AdmissionRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    pub operation: String,
    #[serde(default)]
    pub object: Option<Value>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    pub kind: String,
}

impl AdmissionReview {
    /// Parses a review; what is not one (bad JSON, another kind, no request) is an error.
    pub fn parse(body: &[u8]) -> Result<(Self, AdmissionRequest)> {
        let mut review: AdmissionReview =
            serde_json::from_slice(body).map_err(|e| Error::BadReview(e.to_string()))?;
        if review.kind != "AdmissionReview" || !review.api_version.starts_with("admission.k8s.io/")
        {
            return Err(Error::BadReview(format!(
                "kind `{}` apiVersion `{}` (expected AdmissionReview admission.k8s.io/v1)",
                review.kind, review.api_version
            )));
        }
        let request = review
            .request
            .take()
            .ok_or_else(|| Error::BadReview("no `request`".into()))?;
        if request.uid.is_empty() {
            return Err(Error::BadReview("`request.uid` is empty".into()));
        }
        Ok((review, request))
    }

    /// The answer: always allowed, with the patch when there is one.
    pub fn respond(&self, request: &AdmissionRequest, patch: Option<&[Value]>) -> Value {
        let mut response = Response {
            uid: request.uid.clone(),
            allowed: true,
            patch_type: None,
            patch: None,
        };
        if let Some(ops) = patch.filter(|ops| !ops.is_empty()) {
            let json = Value::Array(ops.to_vec()).to_string();
            response.patch_type = Some("JSONPatch");
            response.patch = Some(base64::engine::general_purpose::STANDARD.encode(json));
        }
        serde_json::json!({
            "apiVersion": self.api_version,
            "kind": "AdmissionReview",
            "response": response,
        })
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    uid: String,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_body_is_a_review_or_an_error_never_a_panic(body in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = AdmissionReview::parse(&body);
        }

        #[test]
        fn reviews_with_odd_fields_parse_or_are_refused(
            kind in "\\PC{0,20}",
            uid in "\\PC{0,40}",
            object in proptest::option::of("\\PC{0,64}"),
        ) {
            let body = serde_json::json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": kind,
                "request": {
                    "uid": uid,
                    "kind": {"kind": "Pod"},
                    "operation": "CREATE",
                    "object": object,
                },
            });
            if let Ok((review, request)) = AdmissionReview::parse(body.to_string().as_bytes()) {
                prop_assert_eq!(review.kind.as_str(), "AdmissionReview");
                let answer = review.respond(&request, None);
                prop_assert_eq!(&answer["response"]["allowed"], &serde_json::json!(true));
            }
        }
    }
}
