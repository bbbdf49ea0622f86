//! Foundation: the official MCP clients reach a real rmcp upstream through a real, bare Envoy
//! (no toolmesh filter). This proves the harness and the Envoy settings MCP needs (streaming SSE
//! unbuffered, no route timeout) before any toolmesh logic is involved.

use serde_json::{Value, json};
use toolmesh_e2e::clients::{assert_progress_streamed, progress_times};
use toolmesh_e2e::test_servers::{TOOL_COUNT, TestServerConfig, spawn};
use toolmesh_e2e::{Envoy, python_client, require, results, tools, ts_client};

fn ok_result(doc: &Value, i: usize) -> &Value {
    let r = &results(doc)[i];
    assert_eq!(
        r["ok"], true,
        "operation {i} failed: {r:#}\nwhole output: {doc:#}"
    );
    &r["result"]
}

/// Python SDK, both connection modes: `legacy` (initialize + session) and the SDK default
/// `auto` (probes `server/discover`, here answered by rmcp with protocol 2026-07-28).
#[tokio::test]
async fn python_client_lists_and_calls_through_bare_envoy() {
    let envoy_bin = require!(tools::envoy());
    require!(tools::python());
    let server = spawn(TestServerConfig::default()).await.unwrap();
    let envoy = Envoy::start_static(&envoy_bin, &[("up", server.addr())], None)
        .await
        .unwrap();
    let url = format!("{}/mcp", envoy.listener_url());
    let ops = json!([
        {"op": "list_tools"},
        {"op": "call_tool", "name": "add", "arguments": {"a": 20, "b": 22}},
    ]);

    for (mode, protocol) in [("legacy", "2025-11-25"), ("auto", "2026-07-28")] {
        let doc = python_client(&url, &ops, &["--mode", mode]).await.unwrap();
        assert_eq!(doc["connected"], true, "{mode}: {doc:#}");
        assert_eq!(doc["protocol_version"], protocol, "{mode}: {doc:#}");
        assert_eq!(doc["server_info"]["name"], "toolmesh-test-server");

        let listed = ok_result(&doc, 0);
        let tools = listed["tools"].as_array().unwrap();
        assert!(tools.len() >= 25, "{mode}: only {} tools", tools.len());
        assert_eq!(tools.len(), TOOL_COUNT);
        assert!(
            listed["pages"].as_u64().unwrap() >= 3,
            "{mode}: paged by 10"
        );
        assert!(tools.iter().any(|t| t["name"] == "add"));

        let called = ok_result(&doc, 1);
        assert_eq!(called["structuredContent"], json!({"sum": 42}), "{mode}");
        assert_ne!(called["isError"], true);
    }

    // It really went through Envoy: Envoy counted upstream requests, and the upstream saw
    // Envoy's request id on every request.
    let upstream_rq = envoy.stat("cluster.up.upstream_rq_total").await.unwrap();
    assert!(
        upstream_rq >= 8,
        "cluster.up.upstream_rq_total = {upstream_rq}"
    );
    let requests = server.requests();
    assert!(!requests.is_empty());
    assert!(
        requests.iter().all(|r| r.header("x-request-id").is_some()),
        "a request bypassed Envoy"
    );
    assert_eq!(
        server.calls().iter().filter(|c| *c == "add").count(),
        2,
        "one add per mode"
    );
    assert!(
        envoy
            .stats_prometheus()
            .await
            .contains("envoy_cluster_upstream_rq_total{envoy_cluster_name=\"up\"}")
    );
}

/// `slow` sends a progress notification every 400 ms; through Envoy they must reach the client
/// as they happen (SSE is streamed, not buffered until the response ends).
#[tokio::test]
async fn progress_notifications_stream_through_bare_envoy() {
    let envoy_bin = require!(tools::envoy());
    require!(tools::python());
    let server = spawn(TestServerConfig::default()).await.unwrap();
    let envoy = Envoy::start_static(&envoy_bin, &[("up", server.addr())], None)
        .await
        .unwrap();
    let url = format!("{}/mcp", envoy.listener_url());
    let ops = json!([
        {"op": "call_tool", "name": "slow", "arguments": {"steps": 5, "interval_ms": 400}},
    ]);

    for mode in ["legacy", "auto"] {
        let doc = python_client(&url, &ops, &["--mode", mode]).await.unwrap();
        assert_eq!(doc["connected"], true, "{mode}: {doc:#}");
        let call = &results(&doc)[0];
        assert_eq!(call["ok"], true, "{mode}: {doc:#}");
        let progress = call["progress"].as_array().unwrap();
        let steps: Vec<f64> = progress
            .iter()
            .map(|p| p["progress"].as_f64().unwrap())
            .collect();
        assert_eq!(steps, vec![1.0, 2.0, 3.0, 4.0, 5.0], "{mode}: {doc:#}");

        let times = progress_times(&call["progress"], "t_s");
        assert_progress_streamed(&times, call["elapsed_s"].as_f64(), mode);
    }
}

/// The TypeScript SDK client through the same bare Envoy, against the test server started as a
/// separate process (the harness's `spawn_test_server_process`).
#[tokio::test]
async fn typescript_client_through_bare_envoy_to_a_server_process() {
    let envoy_bin = require!(tools::envoy());
    require!(tools::node_modules());
    let (_server, upstream_url) = toolmesh_e2e::spawn_test_server_process(&["--page-size", "7"])
        .await
        .unwrap();
    let upstream: std::net::SocketAddr = upstream_url
        .trim_start_matches("http://")
        .trim_end_matches("/mcp")
        .parse()
        .unwrap();
    let envoy = Envoy::start_static(&envoy_bin, &[("up", upstream)], None)
        .await
        .unwrap();
    let url = format!("{}/mcp", envoy.listener_url());
    let doc = ts_client(
        &url,
        &json!([
            {"op": "list_tools"},
            {"op": "call_tool", "name": "add", "arguments": {"a": 1, "b": 2}},
            {"op": "call_tool", "name": "fail"},
        ]),
        &[],
    )
    .await
    .unwrap();
    let r = results(&doc);
    assert_eq!(r[0]["ok"], true, "{doc:#}");
    assert_eq!(r[0]["value"]["items"].as_array().unwrap().len(), TOOL_COUNT);
    assert_eq!(r[0]["value"]["pages"], 4, "25 tools by 7");
    assert_eq!(r[1]["value"]["structuredContent"]["sum"], 3, "{doc:#}");
    assert_eq!(r[2]["value"]["isError"], true, "{doc:#}");

    // The test-only endpoint of the server process saw the calls (through Envoy).
    let calls: Vec<String> = reqwest_get_json(&upstream_url.replace("/mcp", "/_test/calls")).await;
    assert_eq!(calls, vec!["add", "fail"]);
}

async fn reqwest_get_json<T: serde::de::DeserializeOwned>(url: &str) -> T {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}
