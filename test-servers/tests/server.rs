//! The test server, driven by the official Rust MCP client (rmcp) over real HTTP: the catalog,
//! pagination, structured output, tool errors, progress over time, schema drift with
//! `list_changed`, request recording, stateless/JSON mode, and the `mcp-test-server` binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{
    CallToolRequestParams, ClientRequest, PaginatedRequestParams, ProgressNotificationParam,
    ReadResourceRequestParams, Request, ServerResult,
};
use rmcp::service::{NotificationContext, PeerRequestOptions, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Value, json};
use toolmesh_test_servers::{TOOL_COUNT, TestServerConfig, spawn};

/// A client that records progress notifications (with arrival time) and `list_changed`.
#[derive(Clone, Default)]
struct Recorder {
    progress: Arc<Mutex<Vec<(f64, Instant)>>>,
    list_changed: Arc<tokio::sync::Notify>,
}

impl ClientHandler for Recorder {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.progress
            .lock()
            .unwrap()
            .push((params.progress, Instant::now()));
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.list_changed.notify_one();
    }
}

async fn connect(url: &str) -> RunningService<RoleClient, Recorder> {
    // reqwest 0.13 may be built without a default TLS provider (see Cargo.toml).
    let _ = rustls::crypto::ring::default_provider().install_default();
    Recorder::default()
        .serve(StreamableHttpClientTransport::from_uri(url.to_owned()))
        .await
        .expect("rmcp client connects")
}

fn args(v: Value) -> serde_json::Map<String, Value> {
    v.as_object().cloned().expect("object")
}

#[tokio::test]
async fn tools_are_paged_and_add_returns_structured_content() {
    let server = spawn(TestServerConfig::default()).await.unwrap();
    let client = connect(&server.url()).await;

    // Page by page: 10 + 10 + 5, with opaque cursors.
    let mut cursor = None;
    let mut pages = Vec::new();
    loop {
        let page = client
            .list_tools(Some(PaginatedRequestParams::default().with_cursor(cursor)))
            .await
            .unwrap();
        pages.push(page.tools.len());
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(pages, vec![10, 10, TOOL_COUNT - 20]);
    let all = client.list_all_tools().await.unwrap();
    assert_eq!(all.len(), TOOL_COUNT);
    let add = all.iter().find(|t| t.name == "add").unwrap();
    assert!(add.output_schema.is_some(), "add declares an outputSchema");

    let result = client
        .call_tool(CallToolRequestParams::new("add").with_arguments(args(json!({"a": 2, "b": 40}))))
        .await
        .unwrap();
    assert_eq!(result.structured_content, Some(json!({"sum": 42})));
    assert_eq!(result.is_error, Some(false));

    let fail = client
        .call_tool(CallToolRequestParams::new("fail"))
        .await
        .unwrap();
    assert_eq!(fail.is_error, Some(true));

    let unknown = client.call_tool(CallToolRequestParams::new("nope")).await;
    assert!(unknown.is_err(), "unknown tool is a JSON-RPC error");
    assert_eq!(server.calls(), vec!["add", "fail", "nope"]);

    client.cancel().await.unwrap();
    server.shutdown().await;
}

#[tokio::test]
async fn bad_cursor_is_invalid_params() {
    let server = spawn(TestServerConfig {
        page_size: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = connect(&server.url()).await;
    let page = client.list_tools(None).await.unwrap();
    assert_eq!(page.tools.len(), 3);
    let bad = client
        .list_tools(Some(
            PaginatedRequestParams::default().with_cursor(Some("garbage".into())),
        ))
        .await;
    assert!(bad.is_err());
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn slow_sends_progress_spread_over_time() {
    let server = spawn(TestServerConfig::default()).await.unwrap();
    let client = connect(&server.url()).await;
    let started = Instant::now();
    let handle = client
        .send_cancellable_request(
            ClientRequest::CallToolRequest(Request::new(
                CallToolRequestParams::new("slow")
                    .with_arguments(args(json!({"steps": 4, "interval_ms": 250}))),
            )),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    let response = handle.await_response().await.unwrap();
    let finished = Instant::now();
    assert!(matches!(response, ServerResult::CallToolResult(_)));
    let progress = client.service().progress.lock().unwrap().clone();
    assert_eq!(
        progress.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![1.0, 2.0, 3.0, 4.0]
    );
    // The first notification arrives well before the result: they are streamed, not batched.
    let first = progress[0].1.duration_since(started);
    let total = finished.duration_since(started);
    assert!(total >= Duration::from_millis(1000), "total {total:?}");
    assert!(
        finished.duration_since(progress[0].1) >= Duration::from_millis(500),
        "first progress at {first:?}, result at {total:?}"
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn variant_changes_echo_and_notifies_open_sessions() {
    let server = spawn(TestServerConfig::default()).await.unwrap();
    let client = connect(&server.url()).await;
    let before = client.list_all_tools().await.unwrap();
    let echo = before.iter().find(|t| t.name == "echo").unwrap().clone();

    // Give the client's standalone GET stream a moment to open: poll the recorded requests.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.requests().iter().any(|r| r.method == "GET") {
        assert!(
            Instant::now() < deadline,
            "client never opened its GET stream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.set_variant(1);
    tokio::time::timeout(
        Duration::from_secs(10),
        client.service().list_changed.notified(),
    )
    .await
    .expect("notifications/tools/list_changed arrives");

    let after = client.list_all_tools().await.unwrap();
    let echo2 = after.iter().find(|t| t.name == "echo").unwrap();
    assert_ne!(echo.description, echo2.description);
    assert_ne!(echo.input_schema, echo2.input_schema);
    let result = client
        .call_tool(
            CallToolRequestParams::new("echo")
                .with_arguments(args(json!({"message": "hi", "prefix": ">> "}))),
        )
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(&result.content).unwrap()[0]["text"],
        ">> hi"
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn requests_are_recorded_with_headers_and_methods() {
    let server = spawn(TestServerConfig::default()).await.unwrap();
    let client = connect(&server.url()).await;
    client
        .read_resource(ReadResourceRequestParams::new("test://template/9/data"))
        .await
        .unwrap();
    let requests = server.requests();
    let init = requests
        .iter()
        .find(|r| r.jsonrpc_method.as_deref() == Some("initialize"))
        .expect("initialize recorded");
    assert_eq!(init.method, "POST");
    assert_eq!(init.path, "/mcp");
    assert!(init.header("Content-Type").is_some());
    let read = requests
        .iter()
        .find(|r| r.jsonrpc_method.as_deref() == Some("resources/read"))
        .expect("resources/read recorded");
    assert!(
        read.header("mcp-session-id").is_some(),
        "stateful session id"
    );
    assert_eq!(
        read.body.as_ref().unwrap()["params"]["uri"],
        "test://template/9/data"
    );
    assert!(
        server
            .jsonrpc_methods()
            .contains(&"resources/read".to_owned())
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn stateless_json_mode_serves_without_sessions() {
    let server = spawn(TestServerConfig {
        stateful: false,
        json_response: true,
        page_size: 100,
        handshake_only: false,
    })
    .await
    .unwrap();
    let client = connect(&server.url()).await;
    let page = client.list_tools(None).await.unwrap();
    assert_eq!(page.tools.len(), TOOL_COUNT);
    assert!(page.next_cursor.is_none());
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.header("mcp-session-id").is_none()),
        "no session ids in stateless mode"
    );
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn stateful_json_response_is_rejected() {
    let err = spawn(TestServerConfig {
        stateful: true,
        json_response: true,
        page_size: 10,
        handshake_only: false,
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("stateless"), "{err}");
}

/// Kills the child on drop, so a failing assertion does not leak the process.
struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn binary_prints_its_url_and_serves_test_endpoints() {
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_mcp-test-server"))
            .args(["--port", "0", "--page-size", "5"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .unwrap()
    .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:") && url.ends_with("/mcp"));

    let client = connect(&url).await;
    let page = client.list_tools(None).await.unwrap();
    assert_eq!(page.tools.len(), 5);
    client
        .call_tool(CallToolRequestParams::new("add").with_arguments(args(json!({"a": 1, "b": 2}))))
        .await
        .unwrap();
    client.cancel().await.unwrap();

    let base = url.trim_end_matches("/mcp");
    let http = reqwest::Client::new();
    let recorded: Vec<toolmesh_test_servers::RecordedRequest> = http
        .get(format!("{base}/_test/requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        recorded
            .iter()
            .any(|r| r.jsonrpc_method.as_deref() == Some("tools/call"))
    );
    let calls: Vec<String> = http
        .get(format!("{base}/_test/calls"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(calls, vec!["add"]);
    let status = http
        .post(format!("{base}/_test/variant/2"))
        .send()
        .await
        .unwrap()
        .status();
    assert!(status.is_success());
}

/// POSTs a protocol 2026-07-28 `server/discover` and returns (HTTP status, JSON body).
async fn discover(url: &str) -> (u16, Value) {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}}}});
    let response = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "server/discover")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    // JSON, or SSE whose last `data:` line is the response.
    let json = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .rfind(|d| !d.trim().is_empty())
        .unwrap_or(&text)
        .trim()
        .to_owned();
    (
        status,
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

#[tokio::test]
async fn handshake_only_servers_refuse_protocol_2026_07_28() {
    for handshake_only in [false, true] {
        let server = spawn(TestServerConfig {
            stateful: false,
            json_response: true,
            page_size: 10,
            handshake_only,
        })
        .await
        .unwrap();
        let (status, v) = discover(&server.url()).await;
        if handshake_only {
            assert_eq!(v["error"]["code"], -32022, "{status} {v}");
            let supported = v["error"]["data"]["supported"].as_array().unwrap();
            assert!(!supported.contains(&json!("2026-07-28")), "{v}");
        } else {
            assert_eq!(status, 200, "{v}");
            assert!(
                v["result"]["supportedVersions"]
                    .as_array()
                    .unwrap()
                    .contains(&json!("2026-07-28")),
                "{v}"
            );
        }
        // The handshake works either way.
        let client = connect(&server.url()).await;
        assert_eq!(client.list_tools(None).await.unwrap().tools.len(), 10);
        client.cancel().await.unwrap();
        server.shutdown().await;
    }
}
