//! ApiVersions: exactly the APIs and versions in [`crate::codec::SUPPORTED`].

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use kafka_protocol::ResponseError;

use super::{respond, Reply};
use crate::codec::{self, Request};

fn response(error_code: i16) -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    response.error_code = error_code;
    response.api_keys = codec::SUPPORTED
        .iter()
        .map(|&(key, min, max)| {
            ApiVersion::default()
                .with_api_key(key as i16)
                .with_min_version(min)
                .with_max_version(max)
        })
        .collect();
    response
}

pub fn handle(request: &Request) -> Reply {
    // The body carries only client software name and version; nothing in
    // it changes the answer, so a body this broker cannot parse is ignored.
    respond(request, &response(0))
}

/// The answer to an ApiVersions request at a version this broker does not
/// know: UNSUPPORTED_VERSION with the supported list, encoded as v0 so any
/// client can read it (KIP-511).
pub fn unsupported_version(correlation_id: i32) -> Option<Vec<u8>> {
    codec::encode_response(
        ApiKey::ApiVersions,
        0,
        correlation_id,
        &response(ResponseError::UnsupportedVersion.code()),
    )
    .ok()
}
