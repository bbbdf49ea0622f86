//! The stateless MCP protocol (revision 2026-07-28, "modern"): what the filter checks and answers
//! for it.
//!
//! Why a separate path: 2026-07-28 has no `initialize` and no session. Every request carries its
//! protocol version and the client's capabilities in `params._meta`, mirrors its method (and
//! tool, prompt or resource name) in the `Mcp-Method` / `Mcp-Name` headers, and is answered on
//! its own; errors carry HTTP statuses the spec fixes (400, 404). A client selects it with the
//! `MCP-Protocol-Version` header, so the filter knows from the headers which path a request
//! takes; clients that still speak the handshake (2025-11-25 and older) are untouched.
//!
//! Every virtual server speaks it. Lists and `server/discover` are answered from the policy. A
//! call goes to the owning member: unchanged but for exposed names and without a session when
//! the member speaks 2026-07-28 itself (its `server/discover` lists it; the catalog records it);
//! to a member that speaks only the handshake, in a member session the filter opens for this
//! one request (`initialize`, `notifications/initialized`; the call without the stateless
//! envelope, [`strip_envelope`]; DELETE once the response has streamed back).
//!
//! Every function here is pure; [`crate::decide`] and [`crate::flow`] call them.

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};

use crate::decide::codes;
use crate::local::SUPPORTED_PROTOCOL_VERSIONS;
use crate::policy::{CompiledPolicy, CompiledVs};

/// `params._meta` key of the request's protocol version.
pub const PROTOCOL_VERSION_KEY: &str = "io.modelcontextprotocol/protocolVersion";
/// `params._meta` key of the client's capabilities.
pub const CLIENT_CAPABILITIES_KEY: &str = "io.modelcontextprotocol/clientCapabilities";
/// Result `_meta` key naming the server.
pub const SERVER_INFO_KEY: &str = "io.modelcontextprotocol/serverInfo";

/// Methods of the handshake protocol that 2026-07-28 removed: answered -32601 with HTTP 404
/// (the spec's "method not found"), never forwarded.
pub const REMOVED_METHODS: [&str; 5] = [
    "initialize",
    "ping",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
];

/// Does this `MCP-Protocol-Version` header select the stateless protocol?
pub fn selects_modern(protocol_version: Option<&str>) -> bool {
    protocol_version.is_some_and(|v| toolmesh_proto::MODERN_PROTOCOL_VERSIONS.contains(&v))
}

/// The HTTP status of a JSON-RPC error on the stateless protocol (the spec's table: request
/// and envelope errors 400, an unknown method 404; anything else, like a tool's own error or a
/// resource that does not exist, 200).
pub fn status_of(code: i64) -> u16 {
    match code {
        codes::PARSE_ERROR
        | codes::INVALID_REQUEST
        | codes::INVALID_PARAMS
        | codes::HEADER_MISMATCH
        | codes::MISSING_CLIENT_CAPABILITY
        | codes::UNSUPPORTED_PROTOCOL_VERSION => 400,
        codes::METHOD_NOT_FOUND => 404,
        _ => 200,
    }
}

/// A rung of the request check that failed: the JSON-RPC error to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// JSON-RPC error code.
    pub code: i64,
    /// Error message.
    pub message: String,
    /// Error `data` (JSON text), if any.
    pub data: Option<String>,
}

impl Rejection {
    fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }
}

/// The body, reading only `params._meta`'s two keys (the rest is skipped, not built: a
/// `_meta` that is not an object fails the parse).
#[derive(Deserialize)]
struct Body {
    #[serde(default)]
    params: Option<Params>,
}

#[derive(Deserialize)]
struct Params {
    #[serde(default, rename = "_meta")]
    meta: Option<Meta>,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(default, rename = "io.modelcontextprotocol/protocolVersion")]
    version: Option<Value>,
    #[serde(default, rename = "io.modelcontextprotocol/clientCapabilities")]
    capabilities: Option<IgnoredAny>,
}

/// The request's protocol version from `params._meta`, after the envelope checks of the spec,
/// in its order: `_meta` carries the version and the client capabilities (-32602), the
/// `MCP-Protocol-Version` header equals the version (-32020), the version is a string (-32602).
/// (`Mcp-Method` and `Mcp-Name` are checked by the caller, which knows the body's method and
/// name.)
pub fn envelope_version(body: &[u8], header_version: &str) -> Result<String, Rejection> {
    // The body already passed the JSON-RPC parser, so a failure here is `_meta` not being an
    // object.
    let meta = serde_json::from_slice::<Body>(body)
        .ok()
        .and_then(|b| b.params)
        .and_then(|p| p.meta);
    let Some(meta) = meta else {
        return Err(Rejection::new(
            codes::INVALID_PARAMS,
            format!(
                "params._meta must be an object carrying '{PROTOCOL_VERSION_KEY}' and \
                 '{CLIENT_CAPABILITIES_KEY}' (protocol 2026-07-28)"
            ),
        ));
    };
    let missing: Vec<&str> = [
        (meta.version.is_none(), PROTOCOL_VERSION_KEY),
        (meta.capabilities.is_none(), CLIENT_CAPABILITIES_KEY),
    ]
    .into_iter()
    .filter_map(|(missing, key)| missing.then_some(key))
    .collect();
    if !missing.is_empty() {
        return Err(Rejection::new(
            codes::INVALID_PARAMS,
            format!(
                "params._meta is missing the required key(s): {}",
                missing.join(", ")
            ),
        ));
    }
    match meta.version {
        Some(Value::String(v)) if v == header_version => Ok(v),
        Some(Value::String(_)) => Err(Rejection::new(
            codes::HEADER_MISMATCH,
            "MCP-Protocol-Version header does not match the request's \
             params._meta protocol version",
        )),
        _ => Err(Rejection::new(
            codes::INVALID_PARAMS,
            format!("params._meta '{PROTOCOL_VERSION_KEY}' must be a string"),
        )),
    }
}

/// The versions every virtual server speaks: the stateless ones, then the handshake ones.
pub fn supported_versions() -> Vec<&'static str> {
    toolmesh_proto::MODERN_PROTOCOL_VERSIONS
        .iter()
        .copied()
        .chain(SUPPORTED_PROTOCOL_VERSIONS)
        .collect()
}

/// -32022 for a version the gateway does not speak statelessly; `data` names what it speaks
/// (so a client that also speaks the handshake can fall back to `initialize`).
pub fn unsupported_version(requested: &str) -> Rejection {
    Rejection {
        code: codes::UNSUPPORTED_PROTOCOL_VERSION,
        message: format!("Unsupported protocol version '{requested}'"),
        data: Some(json!({"supported": supported_versions(), "requested": requested}).to_string()),
    }
}

/// The request body for a member that speaks only the handshake: `params._meta` without the
/// stateless envelope (`io.modelcontextprotocol/*` keys; `_meta` goes when nothing else is in
/// it, a progress token stays), which such a member would take for a 2026-07-28 request and
/// refuse against the session's version. `None` when the body is not a JSON object with
/// object `params` (the caller has parsed it already, so: never).
pub fn strip_envelope(body: &[u8]) -> Option<Vec<u8>> {
    let mut request: Value = serde_json::from_slice(body).ok()?;
    let params = request.get_mut("params")?.as_object_mut()?;
    if let Some(Value::Object(meta)) = params.get_mut("_meta") {
        meta.retain(|k, _| !k.starts_with("io.modelcontextprotocol/"));
        if meta.is_empty() {
            params.remove("_meta");
        }
    }
    serde_json::to_vec(&request).ok()
}

/// The most bytes of a JSON answer [`ResultTagger`] holds to tag it.
pub const MAX_JSON_HELD: usize = 16 * 1024 * 1024;

/// Tags the result of a handshake member's answer to a stateless client with
/// `resultType: "complete"` (which 2026-07-28 clients require, and handshake servers do not
/// send), leaving everything else as it is: in an event stream, the response event; a JSON
/// answer is held until complete (up to [`MAX_JSON_HELD`]; beyond, it passes untagged).
#[derive(Debug)]
pub enum ResultTagger {
    /// `text/event-stream`.
    Events(crate::sse::EventRewriter),
    /// `application/json`: the bytes so far; `None` once given up.
    Json(Option<Vec<u8>>),
}

impl ResultTagger {
    /// The bytes to pass on instead of `chunk` (`None`: pass it as it is).
    pub fn push(&mut self, chunk: &[u8], end: bool) -> Option<Vec<u8>> {
        match self {
            Self::Events(events) => events.push(chunk, end, |event| {
                if !crate::ids::contains(event, b"\"result\"") {
                    return None;
                }
                let data = crate::sse::event_data(event)?;
                let tagged = tag_result(data.as_bytes())?;
                Some(crate::sse::with_data(event, &tagged))
            }),
            Self::Json(held) => {
                let buf = held.as_mut()?;
                buf.extend_from_slice(chunk);
                if buf.len() > MAX_JSON_HELD {
                    return held.take();
                }
                if !end {
                    return Some(Vec::new());
                }
                let all = held.take().unwrap_or_default();
                Some(tag_result(&all).map_or(all, String::into_bytes))
            }
        }
    }
}

/// A JSON-RPC response with its result object tagged `resultType: "complete"` (one already
/// tagged keeps its tag); `None` for anything else (errors, notifications, requests).
fn tag_result(message: &[u8]) -> Option<String> {
    let mut message: Value = serde_json::from_slice(message).ok()?;
    let object = message.as_object_mut()?;
    if object.contains_key("method") || !object.contains_key("id") {
        return None;
    }
    let Value::Object(result) = object.get_mut("result")? else {
        return None;
    };
    if result.contains_key("resultType") {
        return None;
    }
    result.insert("resultType".into(), Value::from("complete"));
    Some(message.to_string())
}

/// The `_meta` of a result the filter answers itself: the virtual server names itself.
fn result_meta(policy: &CompiledPolicy, vs: &CompiledVs) -> Value {
    json!({SERVER_INFO_KEY: {"name": vs.name, "version": policy.catalog_version}})
}

/// The `result` (JSON text) of `server/discover`: the versions the virtual server speaks, the
/// capabilities its members offer (as `initialize` would answer), caching hints (immediately
/// stale, private: a catalog change may alter it at any moment) and the server's identity.
pub fn discover_result(policy: &CompiledPolicy, vs: &CompiledVs) -> String {
    json!({
        "supportedVersions": supported_versions(),
        "capabilities": crate::local::capabilities(vs),
        "ttlMs": 0,
        "cacheScope": "private",
        "resultType": "complete",
        "_meta": result_meta(policy, vs),
    })
    .to_string()
}

/// A list `result` (JSON text, an object) with what 2026-07-28 requires of list results added:
/// `resultType`, the caching hints and the server's identity.
pub fn decorate_list(result: &str, policy: &CompiledPolicy, vs: &CompiledVs) -> String {
    let Some(head) = result.trim_end().strip_suffix('}') else {
        return result.to_owned();
    };
    let meta = result_meta(policy, vs);
    let sep = if head.trim_end().ends_with('{') {
        ""
    } else {
        ","
    };
    format!(
        r#"{head}{sep}"resultType":"complete","ttlMs":0,"cacheScope":"private","_meta":{meta}}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::{modern_policy, policy};

    fn v(s: &str) -> Value {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    const META: &str = r#"{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#;

    #[test]
    fn only_stateless_versions_select_the_stateless_path() {
        assert!(selects_modern(Some("2026-07-28")));
        assert!(!selects_modern(Some("2025-11-25")));
        assert!(!selects_modern(Some("2026-07-28 ")));
        assert!(!selects_modern(None));
    }

    #[test]
    fn the_envelope_is_checked_in_the_spec_order() {
        let body = |meta: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{"_meta":{meta}}}}}"#
            )
        };
        assert_eq!(
            envelope_version(body(META).as_bytes(), "2026-07-28"),
            Ok("2026-07-28".to_owned())
        );
        let code = |b: &[u8], h: &str| envelope_version(b, h).map_err(|r| r.code);
        assert_eq!(
            code(
                br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
                "2026-07-28"
            ),
            Err(codes::INVALID_PARAMS),
            "no params"
        );
        assert_eq!(
            code(body("[]").as_bytes(), "2026-07-28"),
            Err(codes::INVALID_PARAMS),
            "_meta not an object"
        );
        let no_caps = body(r#"{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}"#);
        let r = envelope_version(no_caps.as_bytes(), "2026-07-28").unwrap_err();
        assert_eq!(r.code, codes::INVALID_PARAMS);
        assert!(r.message.contains(CLIENT_CAPABILITIES_KEY), "{}", r.message);
        assert!(!r.message.contains(PROTOCOL_VERSION_KEY), "{}", r.message);
        assert_eq!(
            code(body(META).as_bytes(), "2027-01-01"),
            Err(codes::HEADER_MISMATCH),
            "header and _meta disagree"
        );
        let number = body(
            r#"{"io.modelcontextprotocol/protocolVersion":7,"io.modelcontextprotocol/clientCapabilities":{}}"#,
        );
        assert_eq!(
            code(number.as_bytes(), "2026-07-28"),
            Err(codes::INVALID_PARAMS)
        );
    }

    #[test]
    fn statuses_follow_the_spec_table() {
        assert_eq!(status_of(codes::INVALID_PARAMS), 400);
        assert_eq!(status_of(codes::HEADER_MISMATCH), 400);
        assert_eq!(status_of(codes::UNSUPPORTED_PROTOCOL_VERSION), 400);
        assert_eq!(status_of(codes::METHOD_NOT_FOUND), 404);
        assert_eq!(status_of(codes::RESOURCE_NOT_FOUND), 200);
        assert_eq!(status_of(codes::INTERNAL_ERROR), 200);
    }

    #[test]
    fn discover_names_the_virtual_server_and_its_versions() {
        let r = unsupported_version("2099-01-01");
        assert_eq!(r.code, codes::UNSUPPORTED_PROTOCOL_VERSION);
        assert_eq!(
            v(r.data.as_deref().unwrap_or("null")),
            json!({"supported": ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26",
                                 "2024-11-05"],
                   "requested": "2099-01-01"})
        );
        // Whatever its members speak.
        for p in [policy(), modern_policy()] {
            let Some(vs) = p.virtual_server("demo") else {
                panic!("no demo")
            };
            let d = v(&discover_result(&p, vs));
            assert_eq!(
                d["supportedVersions"],
                json!([
                    "2026-07-28",
                    "2025-11-25",
                    "2025-06-18",
                    "2025-03-26",
                    "2024-11-05"
                ])
            );
            assert_eq!(d["resultType"], "complete");
            assert_eq!(d["ttlMs"], 0);
            assert_eq!(d["cacheScope"], "private");
            assert_eq!(d["_meta"][SERVER_INFO_KEY]["name"], "demo");
            assert!(d["capabilities"]["tools"].is_object(), "{d}");
        }
        let p = modern_policy();
        let Some(vs) = p.virtual_server("demo") else {
            panic!("no demo")
        };
        let speaks: Vec<_> = vs
            .members
            .iter()
            .map(|m| m.modern_versions.clone())
            .collect();
        assert_eq!(
            speaks,
            [["2026-07-28"], ["2026-07-28"]],
            "only the versions the filter knows"
        );
    }

    #[test]
    fn the_envelope_is_removed_for_handshake_members() {
        let body = |meta: Value| {
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                   "params": {"name": "a", "arguments": {"x": 1}, "_meta": meta}})
            .to_string()
        };
        let stripped =
            |b: String| v(&String::from_utf8(strip_envelope(b.as_bytes()).unwrap()).unwrap());
        let envelope = json!({PROTOCOL_VERSION_KEY: "2026-07-28", CLIENT_CAPABILITIES_KEY: {},
                              "io.modelcontextprotocol/clientInfo": {"name": "c"}});
        let out = stripped(body(envelope.clone()));
        assert_eq!(out["params"], json!({"name": "a", "arguments": {"x": 1}}));
        let mut with_token = envelope;
        with_token["progressToken"] = json!(7);
        let out = stripped(body(with_token));
        assert_eq!(out["params"]["_meta"], json!({"progressToken": 7}));
        assert_eq!(out["id"], 1);
    }

    #[test]
    fn handshake_answers_are_tagged_for_stateless_clients() {
        let progress = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"result\":1}}\n\n";
        let result = "event: message\nid: 3\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{\"content\":[]}}\n\n";
        let mut t = ResultTagger::Events(crate::sse::EventRewriter::default());
        assert_eq!(
            t.push(progress.as_bytes(), false),
            None,
            "progress untouched"
        );
        let out = String::from_utf8(t.push(result.as_bytes(), true).unwrap()).unwrap();
        assert!(out.starts_with("event: message\nid: 3\ndata: "), "{out}");
        let data = out.lines().nth(2).unwrap().strip_prefix("data: ").unwrap();
        assert_eq!(
            v(data),
            json!({"jsonrpc": "2.0", "id": 3, "result": {"content": [], "resultType": "complete"}})
        );

        let mut t = ResultTagger::Json(Some(Vec::new()));
        let body = br#"{"jsonrpc":"2.0","id":"a","result":{"content":[]}}"#;
        let (a, b) = body.split_at(20);
        assert_eq!(t.push(a, false), Some(Vec::new()), "held until complete");
        let out = t.push(b, true).unwrap();
        assert_eq!(
            v(&String::from_utf8(out).unwrap())["result"]["resultType"],
            "complete"
        );
        let error = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"no"}}"#;
        let mut t = ResultTagger::Json(Some(Vec::new()));
        assert_eq!(
            t.push(error, true).as_deref(),
            Some(&error[..]),
            "errors as they are"
        );
    }

    #[test]
    fn lists_gain_result_type_and_caching_hints() {
        let p = policy();
        let Some(vs) = p.virtual_server("demo") else {
            panic!("no demo")
        };
        let d = v(&decorate_list(r#"{"tools":[],"nextCursor":"x"}"#, &p, vs));
        assert_eq!(d["tools"], json!([]));
        assert_eq!(d["nextCursor"], "x");
        assert_eq!(d["resultType"], "complete");
        assert_eq!(d["cacheScope"], "private");
        assert_eq!(d["_meta"][SERVER_INFO_KEY]["name"], "demo");
        assert_eq!(v(&decorate_list("{}", &p, vs))["resultType"], "complete");
    }
}
