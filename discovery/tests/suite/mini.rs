//! A minimal hand-written Streamable HTTP MCP server (stateless, JSON responses) for what the
//! rmcp test servers cannot do: send fields rmcp's model does not know, speak only one
//! protocol era, refuse `server/discover`, stall on one method.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use toolmesh_discovery::{Transport, UpstreamSpec};

/// The JSON-RPC methods the mini server received, in order.
pub(crate) type Methods = Arc<Mutex<Vec<String>>>;

pub(crate) fn page_one() -> Value {
    json!({
        "name": "t1",
        "inputSchema": {"type": "object", "properties": {"q": {"type": "string"}},
                        "additionalProperties": false},
        "execution": {"taskSupport": "optional"},
        "x-vendor": {"team": "search", "cost": 3}
    })
}

pub(crate) fn page_two() -> Value {
    json!({
        "name": "t2",
        "title": "Second",
        "inputSchema": {"$schema": "https://json-schema.org/draft/2020-12/schema",
                        "type": "object", "$defs": {"id": {"type": "integer"}}},
        "annotations": {"readOnlyHint": true, "futureHint": 5}
    })
}

/// How the mini server behaves.
#[derive(Clone, Copy)]
pub(crate) enum Mode {
    /// Speaks 2025-06-18 (initialize handshake).
    Legacy,
    /// Speaks only 2026-07-28: rejects `initialize`, answers `server/discover`.
    ModernOnly,
    /// Like `Legacy`, but never answers this method.
    HangOn(&'static str),
    /// Like `Legacy`, but refuses `server/discover` with HTTP 400 and a JSON-RPC error, as a
    /// server of the handshake era that checks `MCP-Protocol-Version` does.
    RejectDiscover,
}

/// Answers one JSON-RPC message the way a tiny MCP server would. `None`: hang forever.
fn answer(message: &Value, mode: Mode) -> Option<(u16, Value)> {
    let method = message["method"].as_str().unwrap_or_default();
    if matches!(mode, Mode::HangOn(m) if m == method) {
        return None;
    }
    let id = message["id"].clone();
    let modern = matches!(mode, Mode::ModernOnly);
    if method == "server/discover" && matches!(mode, Mode::RejectDiscover) {
        return Some((
            400,
            json!({"jsonrpc": "2.0", "id": id,
                   "error": {"code": -32600, "message": "Bad Request: Unsupported protocol version"}}),
        ));
    }
    let result = match method {
        "initialize" if modern => {
            return Some((
                200,
                json!({"jsonrpc": "2.0", "id": id,
                       "error": {"code": -32601, "message": "initialize is not supported"}}),
            ));
        }
        "server/discover" if modern => json!({
            "resultType": "complete",
            "supportedVersions": ["2026-07-28"],
            "capabilities": {"tools": {}},
            "instructions": "modern mini",
            "ttlMs": 0,
            "cacheScope": "private",
            "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "mini-modern", "version": "2"}}
        }),
        "initialize" => json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {"tools": {"listChanged": false}, "experimental": {"x-mini": {}}},
            "serverInfo": {"name": "mini", "version": "0.0.1", "x-build": "abc"}
        }),
        "tools/list" => match message["params"]["cursor"].as_str() {
            None => json!({"resultType": "complete", "tools": [page_one()], "nextCursor": "p2"}),
            Some("p2") => json!({"resultType": "complete", "tools": [page_two()]}),
            Some(_) => {
                return Some((
                    200,
                    json!({"jsonrpc": "2.0", "id": id,
                           "error": {"code": -32602, "message": "bad cursor"}}),
                ));
            }
        },
        _ if id.is_null() => return Some((202, Value::Null)), // a notification
        _ => {
            return Some((
                200,
                json!({"jsonrpc": "2.0", "id": id,
                       "error": {"code": -32601, "message": "method not found"}}),
            ));
        }
    };
    Some((200, json!({"jsonrpc": "2.0", "id": id, "result": result})))
}

async fn serve_connection(mut socket: TcpStream, mode: Mode, methods: Methods) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // Read one request: head, then content-length bytes of body.
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < head_end + length {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Value =
            serde_json::from_slice(&buf[head_end..head_end + length]).unwrap_or(Value::Null);
        buf.drain(..head_end + length);
        if let Some(method) = body["method"].as_str() {
            methods
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(method.to_owned());
        }
        let response = match answer(&body, mode) {
            None => {
                // Hold the connection open without answering.
                std::future::pending::<()>().await;
                return;
            }
            Some((202, _)) => "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n".to_owned(),
            Some((status, value)) => {
                let text = value.to_string();
                format!(
                    "HTTP/1.1 {status} OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                    text.len()
                )
            }
        };
        if socket.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Starts the mini server; returns its URL, the methods it receives and the accept task.
pub(crate) async fn mini_server(mode: Mode) -> (String, Methods, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let methods = Methods::default();
    let log = methods.clone();
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve_connection(socket, mode, log.clone()));
        }
    });
    (url, methods, task)
}

/// The methods received so far.
pub(crate) fn received(methods: &Methods) -> Vec<String> {
    methods
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

pub(crate) fn spec(url: String, timeout: Duration) -> UpstreamSpec {
    UpstreamSpec {
        url,
        transport: Transport::StreamableHttp,
        headers: Vec::new(),
        timeout,
    }
}
