//! Discovery of upstream MCP servers: what does this server offer, exactly as it says it?
//!
//! The control plane calls [`discover`] when an operator registers an MCP server, on refresh,
//! on a schedule, and whenever [`watch`] reports a `list_changed` notification. Discovery uses
//! the official Rust MCP SDK (`rmcp`) as the client: it connects over Streamable HTTP with the
//! operator's headers (credentials), runs the `initialize` handshake, reads **every page** of
//! `tools/list`, `prompts/list`, `resources/list` and `resources/templates/list` — only for the
//! capabilities the server announced, because asking for an unannounced list is a protocol
//! error some servers answer by failing the session — and ends the session with `DELETE`.
//!
//! # Why items are raw JSON
//!
//! The catalog pins tool schemas: a virtual server keeps serving the version an operator
//! accepted, and a tool whose definition changes upstream is marked as drifted. Drift detection
//! and the filter's catalog answers must compare and replay *exactly what the server sent*.
//! rmcp's typed model drops fields it does not know (for example a tool's `execution`, future
//! spec fields, vendor extensions outside `_meta`), so round-tripping through it would both
//! hide real changes and strip information agents rely on. Discovery therefore captures the raw
//! JSON-RPC result of each list page (and of `initialize`) on the wire, next to rmcp's own
//! parsing, and returns those objects untouched. rmcp still drives the protocol (handshake,
//! sessions, cursors, errors); only the payload we store bypasses its model. Should a raw page
//! ever be unavailable, the item falls back to rmcp's serialization and a warning is logged.
//! "Exactly" means JSON equality: `serde_json::Value` objects do not keep key order, so compare
//! values, never serialized bytes.
//!
//! # Failure model
//!
//! The whole discovery (connect, handshake, every page) runs under [`UpstreamSpec::timeout`]:
//! a hung server yields [`DiscoveryError::Timeout`], a refused or unresolvable address
//! [`DiscoveryError::Connect`], and anything that answers but is not an MCP server (an HTML
//! page, a JSON-RPC error to `initialize`, a looping cursor) [`DiscoveryError::Protocol`].
//! Nothing here panics on server input. Closing the session is best effort and bounded: a
//! failed `DELETE` never turns a successful discovery into an error.
//!
//! # Protocol versions
//!
//! Discovery offers `2025-11-25` in `initialize` (servers downgrade to what they speak:
//! 2025-06-18, 2025-03-26, 2024-11-05). A server that rejects `initialize` with a JSON-RPC
//! error is retried with the stateless `2026-07-28` lifecycle (`server/discover`).
//!
//! [`Discovered::modern_versions`] says which stateless versions (2026-07-28 and later) the
//! server speaks besides: from its `server/discover` answer, which discovery asks for with one
//! raw request after reading the catalog over Streamable HTTP (module `modern`). A server that
//! does not answer it, answers with an error, or takes longer than what is left of the
//! deadline has none; that never fails the discovery.
//!
//! # Transports
//!
//! [`Transport::StreamableHttp`] uses rmcp's Streamable HTTP client. rmcp 3.11 has no client
//! for the legacy HTTP+SSE transport (2024-11-05), so [`Transport::Sse`] is served by this
//! crate's own small implementation of rmcp's `Transport` trait (module `legacy_sse`): `GET`
//! the SSE endpoint, wait for the `endpoint` event, `POST` messages there, read replies from
//! the stream.
//!
//! # Watching for changes
//!
//! [`watch`] / [`watch_with`] keep a session open per upstream and report
//! `notifications/{tools,prompts,resources}/list_changed` as [`ListChanged`] values, plus
//! [`ListChanged::Resync`] after every (re)connection; the control plane answers any of them by
//! running [`discover`] again. See the `watch` module docs for its limits (stateless servers
//! have no notification stream).

mod client;
mod errors;
mod http;
mod legacy_sse;
mod modern;
mod raw;
mod watch;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rmcp::RoleClient;
use rmcp::model::{PaginatedRequestParams, ProtocolVersion};
use rmcp::service::{RunningService, ServiceError};
use serde::Serialize;
use serde_json::Value;

pub use watch::{ListChanged, WatchOptions, watch, watch_with};

use crate::client::DiscoveryClient;
use crate::raw::RawStore;

/// How toolmesh talks to an upstream MCP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// MCP Streamable HTTP (2025-03-26 and later).
    StreamableHttp,
    /// The legacy HTTP+SSE transport (2024-11-05).
    Sse,
}

/// Where and how to reach an upstream.
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    /// The MCP endpoint URL, for example `http://127.0.0.1:9000/mcp`.
    pub url: String,
    /// The transport.
    pub transport: Transport,
    /// Extra headers sent on every request (for example `Authorization`).
    pub headers: Vec<(String, String)>,
    /// Deadline for the whole discovery (connect, initialize, every page of every list, then
    /// the `server/discover` probe with what is left).
    pub timeout: Duration,
}

/// What an upstream offers. Items are the MCP JSON objects exactly as the server sent them.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovered {
    /// `serverInfo` from the initialize result.
    pub server_info: serde_json::Value,
    /// The negotiated protocol version.
    pub protocol_version: String,
    /// The server's `capabilities`.
    pub capabilities: serde_json::Value,
    /// The server's `instructions`, if any.
    pub instructions: Option<String>,
    /// Every tool, across all pages.
    pub tools: Vec<serde_json::Value>,
    /// Every prompt, across all pages.
    pub prompts: Vec<serde_json::Value>,
    /// Every resource, across all pages.
    pub resources: Vec<serde_json::Value>,
    /// Every resource template, across all pages.
    pub resource_templates: Vec<serde_json::Value>,
    /// The stateless protocol versions (2026-07-28 and later) the server lists in its
    /// `server/discover` answer, in its order; empty when it speaks only the `initialize`
    /// handshake, when it did not answer `server/discover`, and over the legacy SSE transport.
    pub modern_versions: Vec<String>,
    /// Wall time of the whole discovery (not of the `server/discover` probe).
    pub latency: Duration,
}

/// Why discovery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The server could not be reached.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL tried.
        url: String,
        /// Why.
        reason: String,
    },
    /// The deadline passed.
    #[error("discovery timed out after {0:?}")]
    Timeout(Duration),
    /// The server answered, but not as an MCP server should.
    #[error("MCP protocol error: {0}")]
    Protocol(String),
    /// Not implemented yet. (Every transport is implemented; kept for API stability.)
    #[error("discovery is not implemented yet")]
    NotImplemented,
}

/// Upper bound on pages per list: a server that keeps handing out fresh cursors is broken.
const MAX_PAGES: usize = 10_000;

/// How long a successful discovery waits for the session to close (`DELETE`) before it
/// returns anyway (the close then finishes in the background).
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Connect, initialize, and read every page of every list the server's capabilities announce.
///
/// [`Discovered::latency`] covers connect, handshake and all pages (not the final `DELETE`).
pub async fn discover(spec: &UpstreamSpec) -> Result<Discovered, DiscoveryError> {
    let start = Instant::now();
    let raw = RawStore::new();
    let mut session: Option<RunningService<RoleClient, DiscoveryClient>> = None;
    let outcome = tokio::time::timeout(spec.timeout, async {
        let client = client::connect(spec, DiscoveryClient::new(), raw.clone()).await?;
        let client = session.insert(client);
        read_catalog(&spec.url, client, &raw, start).await
    })
    .await;
    let mut result = match outcome {
        Ok(result) => result,
        Err(_elapsed) => Err(DiscoveryError::Timeout(spec.timeout)),
    };
    if let Ok(found) = &mut result
        && spec.transport == Transport::StreamableHttp
        && found.protocol_version.as_str() < ProtocolVersion::NO_INITIALIZE.as_str()
    {
        // The session used `initialize`; ask whether the server also speaks a stateless
        // version, within what is left of the deadline (a session opened with
        // `server/discover` already has the versions from its answer).
        let left = spec.timeout.saturating_sub(start.elapsed());
        found.modern_versions = modern::probe(&spec.url, &spec.headers, left).await;
    }
    if let Some(client) = session {
        let url = spec.url.clone();
        let close = async move {
            let mut client = client;
            match client.close_with_timeout(CLOSE_GRACE).await {
                Ok(Some(reason)) => tracing::debug!(%url, ?reason, "discovery session closed"),
                Ok(None) => tracing::debug!(%url, "discovery session close still running"),
                Err(error) => tracing::warn!(%url, %error, "discovery session close failed"),
            }
        };
        if matches!(result, Err(DiscoveryError::Timeout(_))) {
            // The deadline already passed: do not make the caller wait for a hung server.
            tokio::spawn(close);
        } else {
            close.await;
        }
    }
    match &result {
        Ok(found) => tracing::info!(
            url = %spec.url,
            modern_versions = ?found.modern_versions,
            tools = found.tools.len(),
            prompts = found.prompts.len(),
            resources = found.resources.len(),
            resource_templates = found.resource_templates.len(),
            latency_ms = found.latency.as_millis() as u64,
            "discovered upstream"
        ),
        Err(error) => tracing::info!(url = %spec.url, %error, "discovery failed"),
    }
    result
}

/// Reads the handshake result and every announced list.
async fn read_catalog(
    url: &str,
    client: &RunningService<RoleClient, DiscoveryClient>,
    raw: &RawStore,
    start: Instant,
) -> Result<Discovered, DiscoveryError> {
    let info = client.peer_info().ok_or_else(|| {
        DiscoveryError::Protocol("the session has no server info after the handshake".into())
    })?;
    let handshake = raw
        .take("initialize", None)
        .or_else(|| raw.take("server/discover", None))
        .unwrap_or(Value::Null);
    let server_info = match handshake.get("serverInfo") {
        Some(value) => value.clone(),
        None => to_json(&info.server_info),
    };
    let capabilities = match handshake.get("capabilities") {
        Some(value) if value.is_object() => value.clone(),
        _ => to_json(&info.capabilities),
    };
    let instructions = match handshake.get("instructions") {
        Some(Value::String(text)) => Some(text.clone()),
        _ => info.instructions.clone(),
    };
    // Only a `server/discover` answer lists versions.
    let modern_versions = if handshake.get("supportedVersions").is_some() {
        modern::modern_versions(&handshake).unwrap_or_default()
    } else {
        Vec::new()
    };
    let announced = |name: &str| capabilities.get(name).is_some_and(|v| !v.is_null());
    let peer = client.peer();

    let tools = if announced("tools") {
        list_all(url, raw, "tools/list", "tools", |cursor| async move {
            let page = peer.list_tools(Some(page_params(cursor))).await?;
            Ok((page.tools, page.next_cursor))
        })
        .await?
    } else {
        Vec::new()
    };
    let prompts = if announced("prompts") {
        list_all(url, raw, "prompts/list", "prompts", |cursor| async move {
            let page = peer.list_prompts(Some(page_params(cursor))).await?;
            Ok((page.prompts, page.next_cursor))
        })
        .await?
    } else {
        Vec::new()
    };
    let (resources, resource_templates) = if announced("resources") {
        let resources = list_all(
            url,
            raw,
            "resources/list",
            "resources",
            |cursor| async move {
                let page = peer.list_resources(Some(page_params(cursor))).await?;
                Ok((page.resources, page.next_cursor))
            },
        )
        .await?;
        let templates = list_all(
            url,
            raw,
            "resources/templates/list",
            "resourceTemplates",
            |cursor| async move {
                let page = peer
                    .list_resource_templates(Some(page_params(cursor)))
                    .await?;
                Ok((page.resource_templates, page.next_cursor))
            },
        )
        .await?;
        (resources, templates)
    } else {
        (Vec::new(), Vec::new())
    };

    Ok(Discovered {
        server_info,
        protocol_version: info.protocol_version.to_string(),
        capabilities,
        instructions,
        tools,
        prompts,
        resources,
        resource_templates,
        modern_versions,
        latency: start.elapsed(),
    })
}

fn page_params(cursor: Option<String>) -> PaginatedRequestParams {
    PaginatedRequestParams::default().with_cursor(cursor)
}

fn to_json<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// Follows `nextCursor` until the last page, returning the raw items of every page.
async fn list_all<T, F, Fut>(
    url: &str,
    raw: &RawStore,
    method: &'static str,
    field: &'static str,
    mut fetch: F,
) -> Result<Vec<Value>, DiscoveryError>
where
    T: Serialize,
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, Option<String>), ServiceError>>,
{
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    let mut seen = HashSet::new();
    for _ in 0..MAX_PAGES {
        let (typed, next) = fetch(cursor.clone())
            .await
            .map_err(|error| errors::from_service_error(url, method, &error))?;
        match raw_page(raw, method, cursor.as_deref(), field, typed.len()) {
            Some(page) => items.extend(page),
            None => {
                tracing::warn!(
                    method,
                    "raw page not captured; storing rmcp's serialization of the items"
                );
                items.extend(typed.iter().map(to_json));
            }
        }
        match next {
            // An empty cursor is how some servers say "no more pages".
            None => return Ok(items),
            Some(next) if next.is_empty() => return Ok(items),
            Some(next) => {
                if !seen.insert(next.clone()) {
                    return Err(DiscoveryError::Protocol(format!(
                        "{method}: the server returned cursor {next:?} twice (pagination loop)"
                    )));
                }
                cursor = Some(next);
            }
        }
    }
    Err(DiscoveryError::Protocol(format!(
        "{method}: more than {MAX_PAGES} pages"
    )))
}

/// The raw items of one page, if captured and consistent with what rmcp parsed.
fn raw_page(
    raw: &RawStore,
    method: &str,
    cursor: Option<&str>,
    field: &str,
    expected: usize,
) -> Option<Vec<Value>> {
    let result = raw.take(method, cursor)?;
    let Value::Object(mut result) = result else {
        return None;
    };
    match result.remove(field) {
        Some(Value::Array(page)) if page.len() == expected => Some(page),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn list_all_follows_cursors_and_prefers_raw_items() {
        let raw = RawStore::new();
        // Page 2's raw form carries a field rmcp's model would drop.
        raw.record(
            "tools/list",
            None,
            json!({"tools": [{"name": "a"}], "nextCursor": "2"}),
        );
        raw.record(
            "tools/list",
            Some("2"),
            json!({"tools": [{"name": "b", "execution": {"taskSupport": "optional"}}]}),
        );
        let items = list_all(
            "http://test",
            &raw,
            "tools/list",
            "tools",
            |cursor| async move {
                Ok(match cursor.as_deref() {
                    None => (vec![json!({"name": "a"})], Some("2".to_owned())),
                    Some("2") => (vec![json!({"name": "b"})], None),
                    Some(other) => panic!("unexpected cursor {other}"),
                })
            },
        )
        .await
        .unwrap();
        assert_eq!(
            items,
            vec![
                json!({"name": "a"}),
                json!({"name": "b", "execution": {"taskSupport": "optional"}})
            ]
        );
    }

    #[tokio::test]
    async fn list_all_rejects_a_cursor_loop() {
        let raw = RawStore::new();
        let error = list_all(
            "http://test",
            &raw,
            "prompts/list",
            "prompts",
            |_cursor| async move { Ok((vec![json!({"name": "p"})], Some("again".to_owned()))) },
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&error, DiscoveryError::Protocol(m) if m.contains("twice")),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn list_all_treats_an_empty_cursor_as_the_end() {
        let raw = RawStore::new();
        let mut calls = 0;
        let items = list_all(
            "http://test",
            &raw,
            "resources/list",
            "resources",
            |_cursor| {
                calls += 1;
                async move { Ok((vec![json!({"uri": "x"})], Some(String::new()))) }
            },
        )
        .await
        .unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn list_all_falls_back_to_typed_items_when_raw_disagrees() {
        let raw = RawStore::new();
        // Raw page with a different length than the parsed page is not trusted.
        raw.record("tools/list", None, json!({"tools": []}));
        let items = list_all(
            "http://test",
            &raw,
            "tools/list",
            "tools",
            |_cursor| async move { Ok((vec![json!({"name": "typed"})], None)) },
        )
        .await
        .unwrap();
        assert_eq!(items, vec![json!({"name": "typed"})]);
    }
}
