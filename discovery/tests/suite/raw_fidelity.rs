//! Items are stored exactly as the server sent them, including fields rmcp's typed model does
//! not know; and a server that stalls half-way through the pages still times out.
//!
//! The rmcp test servers cannot send unknown fields (they serialize rmcp's own types), so these
//! tests use a minimal hand-written Streamable HTTP server (stateless, JSON responses).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use toolmesh_discovery::{DiscoveryError, Transport, UpstreamSpec, discover};

fn page_one() -> Value {
    json!({
        "name": "t1",
        "inputSchema": {"type": "object", "properties": {"q": {"type": "string"}},
                        "additionalProperties": false},
        "execution": {"taskSupport": "optional"},
        "x-vendor": {"team": "search", "cost": 3}
    })
}

fn page_two() -> Value {
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
enum Mode {
    /// Speaks 2025-06-18 (initialize handshake).
    Legacy,
    /// Speaks only 2026-07-28: rejects `initialize`, answers `server/discover`.
    ModernOnly,
    /// Like `Legacy`, but never answers this method.
    HangOn(&'static str),
}

/// Answers one JSON-RPC message the way a tiny MCP server would. `None`: hang forever.
fn answer(message: &Value, mode: Mode) -> Option<(u16, Value)> {
    let method = message["method"].as_str().unwrap_or_default();
    if matches!(mode, Mode::HangOn(m) if m == method) {
        return None;
    }
    let id = message["id"].clone();
    let modern = matches!(mode, Mode::ModernOnly);
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

async fn serve_connection(mut socket: TcpStream, mode: Mode) {
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

/// Starts the mini server; returns its URL, a request counter and the accept task.
async fn mini_server(mode: Mode) -> (String, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    let task = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_connection(socket, mode));
        }
    });
    (url, connections, task)
}

fn spec(url: String, timeout: Duration) -> UpstreamSpec {
    UpstreamSpec {
        url,
        transport: Transport::StreamableHttp,
        headers: Vec::new(),
        timeout,
    }
}

#[tokio::test]
async fn unknown_fields_survive_discovery() {
    let (url, _, task) = mini_server(Mode::Legacy).await;
    let found = discover(&spec(url, Duration::from_secs(20)))
        .await
        .expect("discovery");
    assert_eq!(found.tools, vec![page_one(), page_two()]);
    assert_eq!(found.protocol_version, "2025-06-18");
    assert_eq!(found.server_info["x-build"], "abc");
    assert_eq!(found.capabilities["experimental"], json!({"x-mini": {}}));
    // Unannounced lists are not requested (the server would answer method-not-found).
    assert!(found.prompts.is_empty() && found.resources.is_empty());
    task.abort();
}

#[tokio::test]
async fn a_server_stalling_mid_discovery_times_out() {
    let (url, _, task) = mini_server(Mode::HangOn("tools/list")).await;
    let timeout = Duration::from_secs(1);
    let start = Instant::now();
    let result = discover(&spec(url, timeout)).await;
    let elapsed = start.elapsed();
    assert_eq!(result, Err(DiscoveryError::Timeout(timeout)));
    assert!(
        elapsed < timeout + Duration::from_secs(5),
        "took {elapsed:?}"
    );
    task.abort();
}

#[tokio::test]
async fn a_2026_07_28_only_server_is_discovered_with_server_discover() {
    let (url, _, task) = mini_server(Mode::ModernOnly).await;
    let found = discover(&spec(url, Duration::from_secs(20)))
        .await
        .expect("discovery falls back to server/discover");
    assert_eq!(found.protocol_version, "2026-07-28");
    assert_eq!(found.server_info["name"], "mini-modern");
    assert_eq!(found.instructions.as_deref(), Some("modern mini"));
    assert_eq!(found.tools, vec![page_one(), page_two()]);
    task.abort();
}
