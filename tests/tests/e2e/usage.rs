//! Tool usage across the fleet (issue 8), with real pieces only: the control plane in-process
//! (REST API, store, ADS + metrics service), two Envoys started from the shipped
//! `envoy/bootstrap.yaml` (which streams their stats to the control plane every 5 s), the
//! toolmesh filter, and an rmcp upstream.
//!
//! Both Envoys get the same MCP listener port from xDS and share it (Envoy listeners use
//! `SO_REUSEPORT`), so the kernel spreads new connections over them; each call uses a fresh
//! connection, and each Envoy's own admin stats say how many calls it served.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use toolmesh_e2e::control_plane::ControlPlane;
use toolmesh_e2e::gateway::Gateway;
use toolmesh_e2e::test_servers::{TestServerConfig, spawn};
use toolmesh_e2e::{Envoy, tools};

/// Usage lags calls by one flush interval (5 s) plus storing; generous for a loaded machine.
const REPORT_TIMEOUT: Duration = Duration::from_secs(90);

const ECHO_CALLS: &str = "wasmcustom.toolmesh.tool.demo.everything.echo.calls";

/// One `tools/call` of `echo` on a new connection; panics unless the upstream answered.
async fn call_echo(url: &str, i: usize) {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let body = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": format!("hello {i}")}}});
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .body(body.to_string())
        .send()
        .await
        .expect("tools/call through Envoy");
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(
        status == 200 && v.get("result").is_some(),
        "echo call {i}: {status} {v}"
    );
}

/// Calls to `echo` counted by one Envoy since it started (its own admin stat).
async fn served(envoy: &Envoy) -> u64 {
    envoy.stat(ECHO_CALLS).await.unwrap_or(0)
}

async fn usage_tools(cp: &ControlPlane) -> Value {
    cp.ok(Method::GET, "/v1/usage/tools?since=1h", None)
        .await
        .unwrap()
}

fn echo_row(usage: &Value) -> Option<&Value> {
    usage["items"]
        .as_array()?
        .iter()
        .find(|i| i["virtual_server"] == "demo" && i["tool"] == "echo")
}

fn echo_calls(usage: &Value) -> u64 {
    echo_row(usage)
        .and_then(|r| r["calls"].as_u64())
        .unwrap_or(0)
}

/// Poll the usage API until echo shows `want` calls (fails if it ever shows more).
async fn wait_for_echo_calls(cp: &ControlPlane, want: u64) -> Value {
    let deadline = Instant::now() + REPORT_TIMEOUT;
    loop {
        let usage = usage_tools(cp).await;
        let got = echo_calls(&usage);
        assert!(
            got <= want,
            "counted {got} echo calls, only {want} were made: {usage:#}"
        );
        if got == want {
            return usage;
        }
        assert!(
            Instant::now() < deadline,
            "usage shows {got} echo calls after {REPORT_TIMEOUT:?}, wanted {want}: {usage:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn unused_exposed(cp: &ControlPlane) -> Vec<String> {
    let v = cp
        .ok(Method::GET, "/v1/usage/unused?since=1h", None)
        .await
        .unwrap();
    v["exposed_unused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["exposed_as"].as_str().unwrap().to_string())
        .collect()
}

async fn control_plane_metric(cp: &ControlPlane, name: &str) -> Option<u64> {
    let text = reqwest::get(format!("{}/metrics", cp.api()))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} "))?.trim().parse().ok())
}

/// Calls through two Envoys are counted exactly once in `/v1/usage/tools`; a killed and
/// restarted Envoy loses nothing it had reported; an unused tool is listed in
/// `/v1/usage/unused` and leaves it after a call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_through_two_envoys_are_counted_once_and_survive_a_restart() {
    let upstream = spawn(TestServerConfig::stateless_json()).await.unwrap();
    let Some(gw) = Gateway::builder("gw-1")
        .mcp_server("everything", &upstream.url())
        .virtual_server(json!({"name": "demo", "anonymous": true, "tools": [
            {"mcp_server": "everything", "tool": "echo"},
            {"mcp_server": "everything", "tool": "add", "expose_as": "add_numbers"},
        ]}))
        .without_envoy()
        .start()
        .await
    else {
        return;
    };
    let cp = gw.cp();

    // Before any call both tools are unused.
    assert_eq!(unused_exposed(cp).await, ["add_numbers", "echo"]);

    let gw1 = gw.start_envoy("gw-1").await;
    let gw2 = gw.start_envoy("gw-2").await;
    gw.wait_in_sync(2).await;
    let url = gw.url("demo");

    // 24 calls, spread over both Envoys by the kernel.
    let first = 24;
    for i in 0..first {
        call_echo(&url, i).await;
    }
    let (a, b) = (served(&gw1).await, served(&gw2).await);
    eprintln!("calls served: gw-1 {a}, gw-2 {b}");
    assert_eq!(a + b, first as u64, "every call is counted by one Envoy");
    assert!(
        a > 0 && b > 0,
        "both Envoys served calls: gw-1 {a}, gw-2 {b}"
    );

    let usage = wait_for_echo_calls(cp, first as u64).await;
    let echo = echo_row(&usage).unwrap();
    assert_eq!(echo["errors"], 0, "{echo}");
    assert_eq!(echo["upstream_tool"], "echo", "{echo}");
    assert_eq!(
        echo["latency_samples"], first,
        "every call has one latency sample: {echo}"
    );
    assert!(echo["p99_ms"].as_f64().is_some(), "{echo}");
    assert!(echo["last_called"].is_string(), "{echo}");
    // Two more flushes from each Envoy: still exactly the calls made (no double counting).
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(echo_calls(&usage_tools(cp).await), first as u64);
    // Steady state (not an Envoy's first message, which also carries its node description).
    let bytes = control_plane_metric(cp, "toolmesh_usage_last_message_bytes").await;
    let families = control_plane_metric(cp, "toolmesh_usage_last_message_families").await;
    eprintln!(
        "metrics-service message in steady state: {bytes:?} bytes, {families:?} stat families"
    );
    assert!(bytes.is_some_and(|b| b > 0));

    // echo left `unused`; add_numbers is still there.
    assert_eq!(unused_exposed(cp).await, ["add_numbers"]);
    let vs = cp
        .ok(Method::GET, "/v1/usage/virtual-servers?since=1h", None)
        .await
        .unwrap();
    assert_eq!(vs["items"][0]["virtual_server"], "demo", "{vs}");
    assert_eq!(vs["items"][0]["calls"], first, "{vs}");
    assert!(
        vs["items"][0]["requests_by_method"]["tools_call"].as_u64() == Some(first as u64),
        "{vs}"
    );

    // Kill gw-1 (SIGKILL: no goodbye flush) after everything it counted was reported, start a
    // new gw-1, and call again: the total keeps what was reported and adds the new calls.
    drop(gw1);
    let gw1 = gw.start_envoy("gw-1").await;
    gw.wait_in_sync(2).await;
    let second = 16;
    for i in 0..second {
        call_echo(&url, first + i).await;
    }
    let (a, b2) = (served(&gw1).await, served(&gw2).await);
    eprintln!("after the restart: new gw-1 {a}, gw-2 {} more", b2 - b);
    assert_eq!(a + (b2 - b), second as u64);
    let usage = wait_for_echo_calls(cp, (first + second) as u64).await;
    assert_eq!(
        echo_row(&usage).unwrap()["latency_samples"],
        first + second,
        "{usage}"
    );

    drop((gw1, gw2));
    gw.stop().await;
}

/// What Envoy does with counts it has not flushed when it is stopped gracefully (SIGTERM):
/// measured, and only required not to double count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gracefully_stopped_envoy_never_double_counts() {
    let upstream = spawn(TestServerConfig::stateless_json()).await.unwrap();
    let Some(mut gw) = Gateway::builder("gw-1")
        .mcp_server("everything", &upstream.url())
        .virtual_server(json!({"name": "demo", "anonymous": true, "tools": [
            {"mcp_server": "everything", "tool": "echo"}]}))
        .start()
        .await
    else {
        return;
    };
    let url = gw.url("demo");
    for i in 0..5 {
        call_echo(&url, i).await;
    }
    wait_for_echo_calls(gw.cp(), 5).await;
    // Three more, then SIGTERM right away (before the next flush, most likely).
    for i in 5..8 {
        call_echo(&url, i).await;
    }
    gw.envoy_mut()
        .process()
        .terminate(Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let after = echo_calls(&usage_tools(gw.cp()).await);
    eprintln!("after SIGTERM: {after} of 8 calls counted (5 were flushed before)");
    assert!((5..=8).contains(&after), "{after}");
    gw.stop().await;
}

/// The Grafana dashboard in the repo is valid JSON and shows what it claims to.
#[test]
fn grafana_dashboard_is_valid_and_uses_the_real_metric_names() {
    let path = tools::workspace_root().join("dashboards/toolmesh.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let dash: Value = serde_json::from_str(&text).unwrap();
    assert!(dash["title"].is_string());
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 6, "{} panels", panels.len());
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    for metric in [
        "toolmesh_tool_calls",
        "toolmesh_tool_errors",
        "toolmesh_tool_denied",
        "toolmesh_tool_latency_ms_bucket",
        "toolmesh_vs_denied",
        "toolmesh_xds_connected_envoys",
        "toolmesh_xds_nacks_total",
        "toolmesh_usage_reports_total",
    ] {
        assert!(
            exprs.iter().any(|e| e.contains(metric)),
            "no panel queries {metric}"
        );
    }
    // Every panel has a unique id and a datasource variable, so the dashboard imports cleanly.
    let mut ids: Vec<i64> = panels.iter().filter_map(|p| p["id"].as_i64()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), panels.len());
    assert!(text.contains("${datasource}"));
}
