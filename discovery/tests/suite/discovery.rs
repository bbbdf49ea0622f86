//! Discovery against real rmcp upstream servers (toolmesh-test-servers) and against servers
//! that misbehave at the TCP and HTTP level.

use std::time::{Duration, Instant};

use toolmesh_discovery::{DiscoveryError, Transport, UpstreamSpec, discover};
use toolmesh_test_servers::{
    RunningServer, TOOL_COUNT, TestServerConfig, prompt_definitions, resource_definitions,
    resource_template_definitions, spawn, tool_definitions,
};

/// Generous: the tests share two cores with the rest of the workspace's builds and tests.
const TIMEOUT: Duration = Duration::from_secs(20);

fn spec(url: String) -> UpstreamSpec {
    UpstreamSpec {
        url,
        transport: Transport::StreamableHttp,
        headers: Vec::new(),
        timeout: TIMEOUT,
    }
}

async fn server(stateful: bool, json_response: bool, page_size: usize) -> RunningServer {
    spawn(TestServerConfig {
        stateful,
        json_response,
        page_size,
        ..TestServerConfig::default()
    })
    .await
    .expect("test server starts")
}

/// Asserts the whole catalog, item by item, exactly as the server defines it.
fn assert_full_catalog(found: &toolmesh_discovery::Discovered) {
    assert_eq!(found.tools.len(), TOOL_COUNT);
    assert!(found.tools.len() >= 25);
    assert_eq!(found.tools, tool_definitions(0));
    assert_eq!(found.prompts, prompt_definitions());
    assert_eq!(found.resources, resource_definitions());
    assert_eq!(found.resource_templates, resource_template_definitions());
    assert_eq!(found.server_info["name"], "toolmesh-test-server");
    assert_eq!(found.capabilities["tools"]["listChanged"], true);
    assert_eq!(
        found.instructions.as_deref(),
        Some("An upstream MCP server for toolmesh's tests.")
    );
    assert!(found.latency > Duration::ZERO && found.latency < TIMEOUT);
}

fn count(server: &RunningServer, method: &str) -> usize {
    server
        .jsonrpc_methods()
        .iter()
        .filter(|m| m.as_str() == method)
        .count()
}

#[tokio::test]
async fn stateful_sse_server_every_page_of_every_list() {
    let upstream = server(true, false, 10).await;
    let found = discover(&spec(upstream.url())).await.expect("discovery");
    assert_full_catalog(&found);
    assert_eq!(found.protocol_version, "2025-11-25");
    // 25 tools in pages of 10: three tools/list requests, one for each small list.
    assert_eq!(count(&upstream, "tools/list"), 3);
    assert_eq!(count(&upstream, "prompts/list"), 1);
    assert_eq!(count(&upstream, "resources/list"), 1);
    assert_eq!(count(&upstream, "resources/templates/list"), 1);
    // The session was ended cleanly.
    let requests = upstream.requests();
    let session = requests
        .iter()
        .find_map(|r| r.header("mcp-session-id").map(str::to_owned))
        .expect("a stateful server issues a session id");
    assert!(
        requests
            .iter()
            .any(|r| r.method == "DELETE" && r.header("mcp-session-id") == Some(&session)),
        "no DELETE for session {session}: {:?}",
        requests.iter().map(|r| &r.method).collect::<Vec<_>>()
    );
    upstream.shutdown().await;
}

#[tokio::test]
async fn stateless_json_server_with_page_size_7() {
    let upstream = server(false, true, 7).await;
    let found = discover(&spec(upstream.url())).await.expect("discovery");
    assert_full_catalog(&found);
    // 25 tools in pages of 7: 7 + 7 + 7 + 4.
    assert_eq!(count(&upstream, "tools/list"), 4);
    upstream.shutdown().await;
}

#[tokio::test]
async fn stateless_sse_server() {
    let upstream = server(false, false, 10).await;
    let found = discover(&spec(upstream.url())).await.expect("discovery");
    assert_full_catalog(&found);
    upstream.shutdown().await;
}

#[tokio::test]
async fn operator_headers_reach_every_request() {
    let upstream = server(true, false, 10).await;
    let mut with_headers = spec(upstream.url());
    with_headers.headers = vec![
        ("Authorization".into(), "Bearer upstream-secret".into()),
        ("X-Tenant".into(), "blue".into()),
    ];
    discover(&with_headers).await.expect("discovery");
    let requests = upstream.requests();
    assert!(requests.len() >= 8, "{} requests", requests.len());
    for request in &requests {
        assert_eq!(
            request.header("authorization"),
            Some("Bearer upstream-secret"),
            "{} {:?}",
            request.method,
            request.jsonrpc_method
        );
        assert_eq!(request.header("x-tenant"), Some("blue"));
    }
    upstream.shutdown().await;
}

#[tokio::test]
async fn transport_managed_headers_are_refused_before_connecting() {
    let mut bad = spec("http://127.0.0.1:9/mcp".into());
    bad.headers = vec![("Mcp-Session-Id".into(), "forged".into())];
    match discover(&bad).await {
        Err(DiscoveryError::Connect { reason, .. }) => {
            assert!(reason.contains("managed by the MCP transport"), "{reason}")
        }
        other => panic!("expected Connect, got {other:?}"),
    }
}

#[tokio::test]
async fn refused_port_is_a_connect_error_within_the_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let start = Instant::now();
    let result = discover(&spec(format!("http://127.0.0.1:{port}/mcp"))).await;
    assert!(start.elapsed() < TIMEOUT, "took {:?}", start.elapsed());
    match result {
        Err(DiscoveryError::Connect { url, reason }) => {
            assert_eq!(url, format!("http://127.0.0.1:{port}/mcp"));
            assert!(reason.to_lowercase().contains("refused"), "{reason}");
        }
        other => panic!("expected Connect, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    // Accepts connections (the kernel completes the handshake) and never reads or writes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let timeout = Duration::from_secs(1);
    let mut hung = spec(format!("http://{addr}/mcp"));
    hung.timeout = timeout;
    let start = Instant::now();
    let result = discover(&hung).await;
    let elapsed = start.elapsed();
    assert_eq!(result, Err(DiscoveryError::Timeout(timeout)));
    assert!(elapsed >= timeout, "returned early: {elapsed:?}");
    assert!(
        elapsed < timeout + Duration::from_secs(5),
        "took {elapsed:?}"
    );
    hold.abort();
}

/// Serves every HTTP request on `addr` with the same canned response, then closes.
async fn canned_http_server(
    status: &'static str,
    content_type: &'static str,
    body: &'static str,
) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Read the request head (the body, if any, is ignored).
                let mut buf = vec![0u8; 64 * 1024];
                let mut read = 0;
                while read < buf.len() {
                    match socket.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read += n,
                    }
                    if buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    (format!("http://{addr}/mcp"), task)
}

#[tokio::test]
async fn an_html_page_is_a_protocol_error() {
    let (url, task) = canned_http_server(
        "200 OK",
        "text/html; charset=utf-8",
        "<!doctype html><html><body>Welcome to nginx!</body></html>",
    )
    .await;
    match discover(&spec(url)).await {
        Err(DiscoveryError::Protocol(reason)) => {
            assert!(reason.contains("text/html"), "{reason}")
        }
        other => panic!("expected Protocol, got {other:?}"),
    }
    task.abort();
}

#[tokio::test]
async fn broken_json_is_a_protocol_error() {
    let (url, task) = canned_http_server(
        "200 OK",
        "application/json",
        "{\"jsonrpc\": \"2.0\", \"id\"",
    )
    .await;
    assert!(
        matches!(discover(&spec(url)).await, Err(DiscoveryError::Protocol(_))),
        "expected Protocol"
    );
    task.abort();
}

#[tokio::test]
async fn a_404_page_is_a_protocol_error() {
    let (url, task) = canned_http_server("404 Not Found", "text/plain", "no such path").await;
    match discover(&spec(url)).await {
        Err(DiscoveryError::Protocol(reason)) => {
            assert!(reason.contains("404"), "{reason}")
        }
        other => panic!("expected Protocol, got {other:?}"),
    }
    task.abort();
}

#[tokio::test]
async fn a_changed_tool_is_rediscovered_exactly() {
    let upstream = server(true, false, 10).await;
    let before = discover(&spec(upstream.url())).await.expect("discovery");
    upstream.set_variant(3);
    let after = discover(&spec(upstream.url())).await.expect("discovery");
    let echo = |found: &toolmesh_discovery::Discovered| {
        found
            .tools
            .iter()
            .find(|t| t["name"] == "echo")
            .cloned()
            .expect("echo is listed")
    };
    assert_ne!(echo(&before), echo(&after));
    assert_eq!(echo(&after), tool_definitions(3)[0]);
    assert_eq!(after.tools.len(), before.tools.len());
    upstream.shutdown().await;
}
