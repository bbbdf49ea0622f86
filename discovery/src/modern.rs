//! Which stateless protocol versions (2026-07-28 and later) an upstream speaks.
//!
//! MCP 2026-07-28 has no `initialize` and no session: a server that speaks it answers
//! `server/discover` with the versions it supports. Discovery itself opens its session with
//! `initialize` whenever the server accepts it (so it reads every server the same way); a
//! server that speaks both eras would then never say that it also speaks the stateless one. So
//! after a successful discovery over Streamable HTTP, [`probe`] asks: one raw `POST` of
//! `server/discover` with the 2026-07-28 headers (`MCP-Protocol-Version`, `Mcp-Method`) and
//! the request `_meta` the revision requires, plus the operator's headers (credentials).
//!
//! The answer is `application/json` or an SSE stream (the JSON-RPC response is one of its
//! events). [`modern_versions`] keeps the `supportedVersions` that are stateless versions. A
//! server that speaks only the handshake era answers with a JSON-RPC error or an HTTP 4xx:
//! that, and anything else that goes wrong (a timeout, a malformed answer), means "no
//! stateless version", never a failed discovery; the reason is logged at debug level.

use std::time::Duration;

use futures::StreamExt as _;
use http::{HeaderMap, HeaderValue};
use rmcp::model::ProtocolVersion;
use serde_json::{Value, json};

use crate::http::{header_map, http_client, preview, sse_events};

/// The JSON-RPC id of the probe (it is the only request on its connection).
const PROBE_ID: u64 = 1;

/// The revision the probe speaks: the first stateless one (rmcp's
/// `ProtocolVersion::NO_INITIALIZE`).
const PROBE_VERSION: &str = "2026-07-28";

/// Largest answer the probe reads: a `server/discover` result is a small object.
const MAX_ANSWER: usize = 256 * 1024;

/// At most this many versions are kept (a hostile server could list thousands).
const MAX_VERSIONS: usize = 16;

/// The request body of the probe.
fn probe_body() -> Value {
    json!({
        "jsonrpc": "2.0",
        "id": PROBE_ID,
        "method": "server/discover",
        "params": {"_meta": {
            "io.modelcontextprotocol/protocolVersion": PROBE_VERSION,
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {
                "name": "toolmesh-discovery",
                "version": env!("CARGO_PKG_VERSION"),
            },
        }},
    })
}

/// Whether `version` names a stateless protocol revision: a `YYYY-MM-DD` revision no older
/// than 2026-07-28, the first without `initialize`. (The handshake revisions 2024-11-05,
/// 2025-03-26, 2025-06-18 and 2025-11-25 are all older.)
fn is_modern(version: &str) -> bool {
    let bytes = version.as_bytes();
    let date_shaped = bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            _ => b.is_ascii_digit(),
        });
    // Dates in this form order as strings; rmcp's `has_initialize` compares the same way.
    date_shaped && version >= ProtocolVersion::NO_INITIALIZE.as_str()
}

/// The stateless versions in a `server/discover` result's `supportedVersions`, in the server's
/// order, without duplicates. Errors when the result has no such list.
pub(crate) fn modern_versions(result: &Value) -> Result<Vec<String>, String> {
    let listed = result
        .get("supportedVersions")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            format!(
                "the result has no supportedVersions list: {}",
                preview(result.to_string().as_bytes())
            )
        })?;
    let mut versions: Vec<String> = Vec::new();
    for version in listed.iter().filter_map(Value::as_str) {
        if is_modern(version) && !versions.iter().any(|v| v == version) {
            if versions.len() == MAX_VERSIONS {
                break;
            }
            versions.push(version.to_owned());
        }
    }
    Ok(versions)
}

/// The `result` of the JSON-RPC response to the probe in `message`, if `message` is that
/// response. `Ok(None)`: some other message (a notification on the same stream).
fn response_result(message: &Value) -> Result<Option<&Value>, String> {
    if message.get("id") != Some(&json!(PROBE_ID)) {
        return Ok(None);
    }
    if let Some(result) = message.get("result") {
        return Ok(Some(result));
    }
    match message.get("error") {
        Some(error) => Err(format!(
            "JSON-RPC error {}: {}",
            error.get("code").unwrap_or(&Value::Null),
            error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)")
        )),
        None => Err(format!(
            "the response has neither result nor error: {}",
            preview(message.to_string().as_bytes())
        )),
    }
}

/// Asks `url` for its `server/discover` answer and returns the `result` object.
async fn server_discover(url: &str, headers: &[(String, String)]) -> Result<Value, String> {
    let mut request_headers = HeaderMap::new();
    for (name, value) in header_map(headers)? {
        request_headers.insert(name, value);
    }
    for (name, value) in [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", PROBE_VERSION),
        ("mcp-method", "server/discover"),
    ] {
        request_headers.insert(name, HeaderValue::from_static(value));
    }
    let http = http_client().map_err(|e| format!("HTTP client: {e}"))?;
    let response = http
        .post(url)
        .headers(request_headers)
        .body(probe_body().to_string())
        .send()
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    match content_type.as_str() {
        "application/json" => {
            let mut body = Vec::new();
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| format!("reading the answer: {e}"))?;
                if body.len() + chunk.len() > MAX_ANSWER {
                    return Err(format!("the answer exceeds {MAX_ANSWER} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            let message: Value = serde_json::from_slice(&body)
                .map_err(|e| format!("the answer is not JSON ({e}): {}", preview(&body)))?;
            match response_result(&message)? {
                Some(result) => Ok(result.clone()),
                None => Err(format!(
                    "the answer is not the response to the probe: {}",
                    preview(&body)
                )),
            }
        }
        "text/event-stream" => {
            let mut events = sse_events(response.bytes_stream(), MAX_ANSWER);
            while let Some(event) = events.next().await {
                let event = event.map_err(|e| format!("reading the event stream: {e}"))?;
                let Some(data) = event.data.as_deref() else {
                    continue;
                };
                // Priming events carry no JSON; other messages are not the response.
                let Ok(message) = serde_json::from_str::<Value>(data) else {
                    continue;
                };
                if let Some(result) = response_result(&message)? {
                    return Ok(result.clone());
                }
            }
            Err("the event stream ended without the response".into())
        }
        other => Err(format!("unexpected content type {other:?}")),
    }
}

/// The stateless protocol versions the upstream at `url` lists in its `server/discover`
/// answer, asked with the operator's `headers` within `deadline`. Empty when it does not
/// answer `server/discover` (a server of the handshake era) or anything goes wrong.
pub(crate) async fn probe(
    url: &str,
    headers: &[(String, String)],
    deadline: Duration,
) -> Vec<String> {
    let outcome = match tokio::time::timeout(deadline, server_discover(url, headers)).await {
        Ok(Ok(result)) => modern_versions(&result),
        Ok(Err(reason)) => Err(reason),
        Err(_elapsed) => Err(format!("no answer within {deadline:?}")),
    };
    match outcome {
        Ok(versions) => {
            tracing::debug!(%url, ?versions, "server/discover answered");
            versions
        }
        Err(reason) => {
            tracing::debug!(%url, %reason, "no stateless protocol version (server/discover)");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_stateless_versions_once_each() {
        let result = json!({"supportedVersions": [
            "2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28",
            "2026-07-28", "2027-01-15", "latest", "2026-7-28", 7, "2026-07-28x"
        ]});
        assert_eq!(
            modern_versions(&result).unwrap(),
            ["2026-07-28", "2027-01-15"]
        );
        let legacy = json!({"supportedVersions": ["2025-06-18", "2025-11-25"]});
        assert!(modern_versions(&legacy).unwrap().is_empty());
    }

    #[test]
    fn a_result_without_supported_versions_is_an_error() {
        let error = modern_versions(&json!({"capabilities": {}})).unwrap_err();
        assert!(error.contains("supportedVersions"), "{error}");
        assert!(modern_versions(&json!({"supportedVersions": "2026-07-28"})).is_err());
    }

    #[test]
    fn the_version_list_is_bounded() {
        let many: Vec<String> = (0..100).map(|d| format!("2030-01-{d:02}")).collect();
        let kept = modern_versions(&json!({"supportedVersions": many})).unwrap();
        assert_eq!(kept.len(), MAX_VERSIONS);
        assert_eq!(kept[0], "2030-01-00");
    }

    #[test]
    fn only_the_response_to_the_probe_counts() {
        let note = json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {}});
        assert_eq!(response_result(&note), Ok(None));
        let other = json!({"jsonrpc": "2.0", "id": 2, "result": {}});
        assert_eq!(response_result(&other), Ok(None));
        let answer = json!({"jsonrpc": "2.0", "id": 1, "result": {"supportedVersions": []}});
        assert_eq!(
            response_result(&answer),
            Ok(Some(&json!({"supportedVersions": []})))
        );
        let error = json!({"jsonrpc": "2.0", "id": 1,
                           "error": {"code": -32601, "message": "Method not found"}});
        let reason = response_result(&error).unwrap_err();
        assert!(
            reason.contains("-32601") && reason.contains("Method not found"),
            "{reason}"
        );
    }

    #[test]
    fn the_probe_speaks_the_first_stateless_revision() {
        assert_eq!(PROBE_VERSION, ProtocolVersion::NO_INITIALIZE.as_str());
        assert!(is_modern(PROBE_VERSION));
        for handshake in ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"] {
            assert!(!is_modern(handshake), "{handshake}");
        }
    }

    #[test]
    fn the_probe_carries_the_request_meta() {
        let body = probe_body();
        assert_eq!(body["method"], "server/discover");
        let meta = &body["params"]["_meta"];
        assert_eq!(
            meta["io.modelcontextprotocol/protocolVersion"],
            "2026-07-28"
        );
        assert_eq!(
            meta["io.modelcontextprotocol/clientCapabilities"],
            json!({})
        );
        assert_eq!(
            meta["io.modelcontextprotocol/clientInfo"]["name"],
            "toolmesh-discovery"
        );
    }
}
