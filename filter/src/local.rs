//! What the filter answers itself, from the catalog, without an upstream round trip.
//!
//! Why: a virtual server federates several upstream MCP servers, so no single upstream can
//! answer `initialize` (whose capabilities are the union of the members') or a list (whose items
//! come from every member, under exposed names). The catalog already holds each member's
//! capabilities and each allowed item's definition, so the filter answers from the snapshot:
//! lists work while every upstream is down, and show exactly the allowlist.
//!
//! This module also builds and reads the messages the filter exchanges with a member when it
//! opens the member's session ([`member_initialize_body`], [`INITIALIZED_NOTIFICATION`],
//! [`parse_member_initialize`]).
//!
//! Every function returns JSON text; the caller wraps a `result` or an error `data` into the
//! JSON-RPC response with the request's id.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use crate::lists::ListKind;
use crate::policy::{CompiledPolicy, CompiledVs};
use crate::sse::{self, SseSplitter};

/// The MCP protocol versions the gateway speaks with the `initialize` handshake, newest first
/// (the stateless ones are [`toolmesh_proto::MODERN_PROTOCOL_VERSIONS`]).
pub const SUPPORTED_PROTOCOL_VERSIONS: [&str; 4] =
    ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

/// The version answered to a client that asks for one the gateway does not speak.
pub const LATEST_PROTOCOL_VERSION: &str = "2025-11-25";

/// The `requested` version reported when `server/discover` comes without an
/// `MCP-Protocol-Version` header ([`crate::modern::unsupported_version`]).
pub const DISCOVER_DEFAULT_VERSION: &str = "2026-07-28";

/// The protocol version to answer `initialize` with: the client's if the gateway speaks it,
/// else the latest (the client then decides whether it can go on).
pub fn negotiate_version(requested: Option<&str>) -> &'static str {
    requested
        .and_then(|r| SUPPORTED_PROTOCOL_VERSIONS.iter().find(|v| **v == r))
        .copied()
        .unwrap_or(LATEST_PROTOCOL_VERSION)
}

/// The `result` object (JSON text) of `initialize` for this virtual server: the negotiated
/// version, its [`capabilities`], and `serverInfo`: the virtual server's name and the catalog
/// version.
pub fn initialize_result(policy: &CompiledPolicy, vs: &CompiledVs, version: &str) -> String {
    json!({
        "protocolVersion": version,
        "capabilities": capabilities(vs),
        "serverInfo": {"name": vs.name, "version": policy.catalog_version},
    })
    .to_string()
}

/// The virtual server's `ServerCapabilities` (answered by `initialize` and `server/discover`):
/// `tools` if it exposes a tool, `prompts` if a prompt, `resources` if a resource or template
/// (with `subscribe: true` when a member exposing resources declares it), `logging` /
/// `completions` if any member declares them.
pub fn capabilities(vs: &CompiledVs) -> Map<String, Value> {
    let mut caps = Map::new();
    if !vs.listing(ListKind::Tools).is_empty() {
        caps.insert("tools".into(), json!({}));
    }
    if !vs.listing(ListKind::Prompts).is_empty() {
        caps.insert("prompts".into(), json!({}));
    }
    if !vs.listing(ListKind::Resources).is_empty()
        || !vs.listing(ListKind::ResourceTemplates).is_empty()
    {
        let subscribe = vs
            .members
            .iter()
            .any(|m| m.subscribe && (!m.resources.is_empty() || !m.template_strings.is_empty()));
        caps.insert(
            "resources".into(),
            if subscribe {
                json!({"subscribe": true})
            } else {
                json!({})
            },
        );
    }
    if vs.members.iter().any(|m| m.logging) {
        caps.insert("logging".into(), json!({}));
    }
    if vs.members.iter().any(|m| m.completions) {
        caps.insert("completions".into(), json!({}));
    }
    caps
}

/// Why a list request cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalError {
    /// The cursor is not one this gateway issued (answer -32602 "Invalid cursor").
    InvalidCursor,
}

impl std::fmt::Display for LocalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidCursor => f.write_str("Invalid cursor"),
        }
    }
}

/// The prefix of a decoded cursor; the rest is the decimal offset of the page's first item.
const CURSOR_PREFIX: &str = "tm1:";

fn encode_cursor(offset: usize) -> String {
    URL_SAFE_NO_PAD.encode(format!("{CURSOR_PREFIX}{offset}"))
}

/// The offset in a cursor [`encode_cursor`] made; `None` for anything else.
fn decode_cursor(cursor: &str) -> Option<usize> {
    if cursor.len() > 64 {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(cursor.as_bytes()).ok()?;
    let digits = std::str::from_utf8(&raw)
        .ok()?
        .strip_prefix(CURSOR_PREFIX)?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    canonical.then(|| digits.parse().ok()).flatten()
}

/// The `result` object (JSON text) of one page of a list (`{"tools":[...],"nextCursor":"..."}`).
///
/// Items are the catalog definitions in member order, then snapshot order, `limits.
/// list_page_size` per page; `nextCursor` (opaque) is absent on the last page. A cursor this
/// gateway did not issue is [`LocalError::InvalidCursor`]; one past the end (the catalog shrank
/// between pages) gives an empty last page.
pub fn list_result(
    policy: &CompiledPolicy,
    vs: &CompiledVs,
    kind: ListKind,
    cursor: Option<&str>,
) -> Result<String, LocalError> {
    let items = vs.listing(kind);
    let start = match cursor {
        None => 0,
        Some(c) => decode_cursor(c).ok_or(LocalError::InvalidCursor)?,
    };
    let page = policy.list_page_size.max(1);
    let end = start.saturating_add(page).min(items.len());
    let slice = items.get(start..end).unwrap_or_default();
    let mut out = String::with_capacity(slice.iter().map(|s| s.len() + 1).sum::<usize>() + 64);
    out.push_str("{\"");
    out.push_str(kind.key());
    out.push_str("\":[");
    for (i, item) in slice.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item);
    }
    out.push(']');
    if end < items.len() {
        out.push_str(",\"nextCursor\":\"");
        out.push_str(&encode_cursor(end));
        out.push('"');
    }
    out.push('}');
    Ok(out)
}

/// Body of the `initialize` request the filter sends a member (id 1, clientInfo {name:
/// "toolmesh", version: crate version}, capabilities {}).
pub fn member_initialize_body(version: &str) -> Vec<u8> {
    json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": {},
            "clientInfo": {"name": "toolmesh", "version": env!("CARGO_PKG_VERSION")},
        },
    })
    .to_string()
    .into_bytes()
}

/// The notification the filter sends a member once its `initialize` succeeded.
pub const INITIALIZED_NOTIFICATION: &[u8] =
    br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

/// The longest SSE event [`parse_member_initialize`] reads.
const MAX_EVENT: usize = 1024 * 1024;

/// The negotiated protocolVersion from a member's initialize response (JSON body, or SSE: the
/// first `data:` event that is a JSON-RPC response); Err(why) on an error response or garbage.
///
/// The version becomes an `MCP-Protocol-Version` header, so it must be 1-64 visible ASCII
/// characters.
pub fn parse_member_initialize(content_type: Option<&str>, body: &[u8]) -> Result<String, String> {
    let response = member_response(content_type, body, MAX_EVENT)?;
    if let Some(error) = response.get("error") {
        let code = error.get("code").and_then(Value::as_i64).unwrap_or(0);
        let message = error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let message: String = message.chars().take(200).collect();
        return Err(format!("initialize failed: {code} {message}"));
    }
    let version = response
        .get("result")
        .and_then(|r| r.get("protocolVersion"))
        .and_then(Value::as_str)
        .ok_or("the initialize result has no protocolVersion")?;
    if version.is_empty() || version.len() > 64 || !version.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the initialize result's protocolVersion is not a version".into());
    }
    Ok(version.to_owned())
}

/// The JSON-RPC response in a member's answer: the body itself (JSON), or the first `data:`
/// event of an event stream that is one (events up to `max_event` bytes); Err(why) otherwise.
fn member_response(
    content_type: Option<&str>,
    body: &[u8],
    max_event: usize,
) -> Result<Value, String> {
    let essence = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase());
    if essence.as_deref() == Some("text/event-stream") {
        let mut splitter = SseSplitter::new(max_event);
        let mut events = splitter.push(body);
        events.push(splitter.finish());
        return events
            .iter()
            .filter_map(|e| sse::event_data(e))
            .filter_map(|d| serde_json::from_str::<Value>(&d).ok())
            .find(is_response)
            .ok_or_else(|| "the event stream has no JSON-RPC response".to_string());
    }
    let response = serde_json::from_slice::<Value>(body)
        .map_err(|e| format!("the answer is not JSON: {e}"))?;
    if is_response(&response) {
        Ok(response)
    } else {
        Err("the answer is not a JSON-RPC response".into())
    }
}

/// A JSON-RPC response: an object with `jsonrpc: "2.0"`, an `id`, and a `result` or an `error`
/// (not both), and no `method`.
fn is_response(v: &Value) -> bool {
    let Some(o) = v.as_object() else {
        return false;
    };
    o.get("jsonrpc").and_then(Value::as_str) == Some("2.0")
        && o.contains_key("id")
        && !o.contains_key("method")
        && (o.contains_key("result") != o.contains_key("error"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::policy;

    fn v(s: &str) -> Value {
        serde_json::from_str(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn compile(json: Value) -> CompiledPolicy {
        CompiledPolicy::from_json(json.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
    }

    const KEYS: &str =
        r#"{"keys":[{"id":"k1","secret":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]}"#;

    #[test]
    fn version_negotiation() {
        for (asked, want) in [
            (Some("2025-11-25"), "2025-11-25"),
            (Some("2025-06-18"), "2025-06-18"),
            (Some("2025-03-26"), "2025-03-26"),
            (Some("2024-11-05"), "2024-11-05"),
            (Some("2026-07-28"), "2025-11-25"),
            (Some("1999-01-01"), "2025-11-25"),
            (Some(""), "2025-11-25"),
            (None, "2025-11-25"),
        ] {
            assert_eq!(negotiate_version(asked), want, "{asked:?}");
        }
    }

    #[test]
    fn initialize_merges_member_capabilities() {
        let p = policy();
        let vs = p.virtual_server("demo").unwrap();
        assert_eq!(
            v(&initialize_result(&p, vs, "2025-06-18")),
            json!({
                "protocolVersion": "2025-06-18",
                "capabilities": {"tools": {}, "prompts": {}, "resources": {"subscribe": true},
                                 "logging": {}, "completions": {}},
                "serverInfo": {"name": "demo", "version": "c1"},
            })
        );
        let empty = p.virtual_server("empty").unwrap();
        assert_eq!(
            v(&initialize_result(&p, empty, "2025-11-25")),
            json!({"protocolVersion": "2025-11-25", "capabilities": {},
                   "serverInfo": {"name": "empty", "version": "c1"}})
        );
    }

    #[test]
    fn subscribe_only_from_a_member_exposing_resources() {
        let p = compile(json!({
            "schema_version": 3, "catalog_version": "v9", "sessions": v(KEYS),
            "virtual_servers": [{"name": "mix", "members": [
                {"mcp_server": "a", "cluster": "a", "path": "/mcp", "authority": "a:1",
                 "capabilities": {"resources": {"subscribe": true}},
                 "tools": [{"name": "t", "upstream_name": "t"}]},
                {"mcp_server": "b", "cluster": "b", "path": "/mcp", "authority": "b:1",
                 "capabilities": {"resources": {"subscribe": false}, "logging": {}},
                 "resource_templates": [{"uri_template": "b://{x}"}]}
            ]}]
        }));
        let vs = p.virtual_server("mix").unwrap();
        assert_eq!(
            v(&initialize_result(&p, vs, "2025-11-25"))["capabilities"],
            json!({"tools": {}, "resources": {}, "logging": {}})
        );
    }

    fn page(p: &CompiledPolicy, kind: ListKind, cursor: Option<&str>) -> Value {
        let vs = p.virtual_server("demo").unwrap();
        v(&list_result(p, vs, kind, cursor).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn lists_page_through_every_item_in_order() {
        let p = policy(); // list_page_size 3, four tools
        let first = page(&p, ListKind::Tools, None);
        let names = |v: &Value| -> Vec<String> {
            v["tools"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(names(&first), ["echo", "add", "sum"]);
        assert_eq!(
            first["tools"][0],
            json!({"name": "echo", "description": "Echo", "inputSchema": {"type": "object",
                   "properties": {"message": {"type": "string"}}}})
        );
        let cursor = first["nextCursor"].as_str().unwrap();
        let second = page(&p, ListKind::Tools, Some(cursor));
        assert_eq!(names(&second), ["forecast"]);
        assert!(second.get("nextCursor").is_none(), "{second}");
        // Short lists have one page and no cursor.
        assert_eq!(
            page(&p, ListKind::Prompts, None),
            json!({"prompts": [{"name": "greet"}]})
        );
        assert_eq!(
            page(&p, ListKind::Resources, None)["resources"][1]["uri"],
            json!("weather://stations")
        );
        assert_eq!(
            page(&p, ListKind::ResourceTemplates, None),
            json!({"resourceTemplates": [{"uriTemplate": "test://template/{id}/data",
                                          "name": "test://template/{id}/data"}]})
        );
        let empty = p.virtual_server("empty").unwrap();
        assert_eq!(
            list_result(&p, empty, ListKind::Tools, None),
            Ok(r#"{"tools":[]}"#.into())
        );
    }

    #[test]
    fn exact_page_boundaries() {
        let tools: Vec<Value> = (0..6)
            .map(|i| json!({"name": format!("t{i}"), "upstream_name": format!("t{i}")}))
            .collect();
        let p = compile(json!({
            "schema_version": 3, "catalog_version": "v", "sessions": v(KEYS),
            "limits": {"list_page_size": 2},
            "virtual_servers": [{"name": "demo", "members": [
                {"mcp_server": "a", "cluster": "a", "path": "/mcp", "authority": "a:1",
                 "tools": tools}]}]
        }));
        let mut cursor: Option<String> = None;
        let mut seen = Vec::new();
        for _ in 0..10 {
            let got = page(&p, ListKind::Tools, cursor.as_deref());
            for t in got["tools"].as_array().unwrap() {
                seen.push(t["name"].as_str().unwrap().to_owned());
            }
            cursor = got
                .get("nextCursor")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(seen, ["t0", "t1", "t2", "t3", "t4", "t5"]);
    }

    #[test]
    fn invalid_cursors() {
        let p = policy();
        let vs = p.virtual_server("demo").unwrap();
        let enc = |s: &str| URL_SAFE_NO_PAD.encode(s);
        for bad in [
            String::new(),
            "abc".into(),
            "!!!".into(),
            "3".into(),
            enc("tm1:"),
            enc("tm1:-1"),
            enc("tm1:01"),
            enc("tm1:+3"),
            enc("tm1:3 "),
            enc("tm2:3"),
            enc("tm1:99999999999999999999999999"),
            format!("{}=", enc("tm1:3")),
            "x".repeat(10_000),
        ] {
            assert_eq!(
                list_result(&p, vs, ListKind::Tools, Some(&bad)),
                Err(LocalError::InvalidCursor),
                "{bad:?}"
            );
        }
        // Past the end: an empty last page.
        assert_eq!(
            list_result(&p, vs, ListKind::Tools, Some(&enc("tm1:50"))),
            Ok(r#"{"tools":[]}"#.into())
        );
        assert_eq!(LocalError::InvalidCursor.to_string(), "Invalid cursor");
    }

    #[test]
    fn member_messages() {
        let body = v(&String::from_utf8(member_initialize_body("2025-06-18")).unwrap());
        assert_eq!(
            body,
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "toolmesh", "version": env!("CARGO_PKG_VERSION")}}})
        );
        assert_eq!(
            serde_json::from_slice::<Value>(INITIALIZED_NOTIFICATION).unwrap(),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
        );
    }

    #[test]
    fn member_initialize_responses() {
        let ok = r#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","capabilities":{},"serverInfo":{"name":"x","version":"1"}}}"#;
        let ok_cases: Vec<(Option<&str>, String)> = vec![
            (Some("application/json"), ok.into()),
            (None, ok.into()),
            (Some("Application/JSON; charset=utf-8"), ok.into()),
            (
                Some("text/event-stream"),
                format!("event: message\ndata: {ok}\n\n"),
            ),
            (
                Some("text/event-stream; charset=utf-8"),
                format!(
                    ": hi\n\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{{}}}}\n\nid: 1\r\ndata: {ok}\r\n\r\n"
                ),
            ),
            // A stream cut after the event's data (no blank line) still counts.
            (Some("text/event-stream"), format!("data: {ok}")),
        ];
        for (ct, body) in ok_cases {
            assert_eq!(
                parse_member_initialize(ct, body.as_bytes()),
                Ok("2025-06-18".into()),
                "{ct:?} {body}"
            );
        }
        let bad: Vec<(Option<&str>, &[u8], &str)> = vec![
            (
                Some("application/json"),
                br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"Unsupported protocol version"}}"#,
                "-32602 Unsupported protocol version",
            ),
            (Some("application/json"), b"", "not JSON"),
            (Some("application/json"), b"\xff\xfe", "not JSON"),
            (Some("application/json"), b"[1]", "not a JSON-RPC response"),
            (
                Some("application/json"),
                br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
                "no protocolVersion",
            ),
            (
                Some("application/json"),
                br#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18\r\nx: y"}}"#,
                "not a version",
            ),
            (
                Some("application/json"),
                br#"{"jsonrpc":"2.0","id":1,"result":{"protocolVersion":7}}"#,
                "no protocolVersion",
            ),
            (Some("text/event-stream"), b": only a comment\n\n", "no JSON-RPC response"),
            (Some("text/event-stream"), b"data: garbage\n\n", "no JSON-RPC response"),
            (Some("text/event-stream"), b"", "no JSON-RPC response"),
        ];
        for (ct, body, needle) in bad {
            match parse_member_initialize(ct, body) {
                Ok(v) => panic!("{body:?} gave {v}"),
                Err(e) => assert!(e.contains(needle), "{body:?}: {e}"),
            }
        }
    }
}
