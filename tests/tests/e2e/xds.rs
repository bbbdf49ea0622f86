//! Envoy configured entirely from the catalog over xDS (issue: xDS control plane).
//!
//! Real pieces only: the control plane's REST API, store, discovery and ADS server (in-process),
//! Envoy started from the shipped `envoy/bootstrap.yaml`, the toolmesh filter, rmcp upstreams
//! and the official Python MCP client.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use toolmesh_e2e::control_plane::postgres_url;
use toolmesh_e2e::gateway::Gateway;
use toolmesh_e2e::test_servers::{TestServerConfig, spawn};
use toolmesh_e2e::{python_client, require, results, tools};

const CALL_ECHO: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}"#;

/// POST one JSON-RPC message with a client that keeps one connection open.
async fn post(client: &reqwest::Client, url: &str, body: &str) -> (u16, Value) {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .body(body.to_string())
        .send()
        .await
        .expect("request through Envoy");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    // JSON or a single SSE event.
    let json = serde_json::from_str(&text).unwrap_or_else(|_| {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|v| v.get("id").is_some())
            .unwrap_or(Value::String(text.clone()))
    });
    (status, json)
}

fn is_allowed(v: &Value) -> bool {
    v.get("result").is_some()
}

fn is_refused(v: &Value) -> bool {
    v["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("echo"))
}

fn demo_vs(tools: &[(&str, Option<&str>)]) -> Value {
    json!({
        "name": "demo",
        "description": "e2e",
        // Tokens are tested in tokens.rs; these tests are about the catalog reaching Envoy.
        "anonymous": true,
        "tools": tools.iter().map(|(t, alias)| match alias {
            Some(a) => json!({"mcp_server": "everything", "tool": t, "expose_as": a}),
            None => json!({"mcp_server": "everything", "tool": t}),
        }).collect::<Vec<_>>(),
    })
}

/// REST → catalog → xDS → Envoy → filter, the Python client through it, a change enforced on an
/// open connection, and Envoy serving through a control-plane outage and restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_changes_reach_envoy_and_survive_a_control_plane_restart() {
    require!(tools::python());
    // Stateless with JSON responses, so raw HTTP requests need no session.
    let upstream = spawn(TestServerConfig::stateless_json()).await.unwrap();
    // The registration's discovery finds the upstream up (checked by the builder).
    let Some(mut gw) = Gateway::builder("gw-1")
        .mcp_server("everything", &upstream.url())
        .virtual_server(demo_vs(&[("echo", None), ("add", Some("add_numbers"))]))
        .start()
        .await
    else {
        return;
    };
    let url = gw.url("demo");

    // The official client sees exactly the virtual server's tools and can call them.
    let doc = python_client(
        &url,
        &json!([
            {"op": "list_tools"},
            {"op": "call_tool", "name": "add_numbers", "arguments": {"a": 2, "b": 3}},
            {"op": "call_tool", "name": "fail", "arguments": {}},
        ]),
        &["--mode", "legacy"],
    )
    .await
    .unwrap();
    let r = results(&doc);
    let mut names: Vec<&str> = r[0]["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["add_numbers", "echo"], "{doc:#}");
    assert_eq!(r[1]["result"]["structuredContent"]["sum"], 5, "{doc:#}");
    assert_eq!(
        r[2]["ok"], false,
        "fail is not in the virtual server: {doc:#}"
    );

    // One keep-alive connection, open before the change.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let (status, v) = post(&client, &url, CALL_ECHO).await;
    assert!(status == 200 && is_allowed(&v), "{status} {v}");
    let cx_before = gw.envoy().stat("http.toolmesh.downstream_cx_total").await;

    // Remove `echo` through REST: refused on the open connection, quickly.
    gw.cp()
        .ok(
            Method::PUT,
            "/v1/virtual-servers/demo",
            Some(&demo_vs(&[("add", Some("add_numbers"))])),
        )
        .await
        .unwrap();
    let changed = Instant::now();
    let refused_after = loop {
        let (status, v) = post(&client, &url, CALL_ECHO).await;
        assert_eq!(status, 200, "{v}");
        if is_refused(&v) {
            break changed.elapsed();
        }
        assert!(is_allowed(&v), "{v}");
        assert!(
            changed.elapsed() < Duration::from_secs(10),
            "echo still allowed 10 s after it was removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("tool removal enforced on an open connection after {refused_after:?}");
    // The issue's target is 1 s; allow a wide margin on a loaded 2-core machine.
    assert!(refused_after < Duration::from_secs(3), "{refused_after:?}");
    assert_eq!(
        gw.envoy().stat("http.toolmesh.downstream_cx_total").await,
        cx_before,
        "the change must reach the connection that was already open"
    );

    // Control plane down: Envoy keeps serving the last policy.
    gw.stop_control_plane().await;
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(30) {
        let (status, v) = post(
            &client,
            &url,
            r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"add_numbers","arguments":{"a":1,"b":1}}}"#,
        )
        .await;
        assert!(
            status == 200 && is_allowed(&v),
            "during the outage: {status} {v}"
        );
        let (_, v) = post(&client, &url, CALL_ECHO).await;
        assert!(
            is_refused(&v),
            "the last policy must keep refusing echo: {v}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Back up (same database and xDS port): Envoy resyncs and a new change applies.
    gw.restart_control_plane().await;
    gw.wait_in_sync(1).await;
    gw.cp()
        .ok(
            Method::PUT,
            "/v1/virtual-servers/demo",
            Some(&demo_vs(&[("echo", None), ("add", Some("add_numbers"))])),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = post(&client, &url, CALL_ECHO).await;
        if is_allowed(&v) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "echo not re-allowed after restart: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, envoys) = gw
        .cp()
        .ok(Method::GET, "/v1/envoys", None)
        .await
        .map(|v| ((), v))
        .unwrap();
    assert_eq!(envoys["items"][0]["node_id"], "gw-1", "{envoys}");
    let metrics = reqwest::get(format!("{}/metrics", gw.cp().api()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("toolmesh_xds_connected_envoys 1"),
        "{metrics}"
    );
    gw.stop().await;
}

/// Two control-plane replicas on one Postgres database, one Envoy on each: a change made
/// through replica A reaches the Envoy connected to replica B (LISTEN/NOTIFY).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_through_one_replica_reaches_the_envoy_of_another() {
    require!(tools::envoy());
    require!(tools::filter_wasm());
    let base = require!(postgres_url());
    // A fresh schema, so the test owns its catalog.
    let schema = format!("e2e_xds_{}", std::process::id());
    let admin = sqlx_free_admin(&base, &schema).await;
    let sep = if base.contains('?') { '&' } else { '?' };
    let db_url = format!("{base}{sep}options=-c%20search_path%3D{schema}");

    let upstream = spawn(TestServerConfig::stateless_json()).await.unwrap();
    // Both replicas run before the catalog is written, so B learns of it by notification.
    let Some(a) = Gateway::builder("gw-a")
        .database_url(&db_url)
        .without_envoy()
        .start()
        .await
    else {
        return;
    };
    let Some(b) = Gateway::builder("gw-b")
        .database_url(&db_url)
        .without_envoy()
        .start()
        .await
    else {
        return;
    };
    let cp_a = a.cp();
    let cp_b = b.cp();

    cp_a.register("everything", &upstream.url()).await.unwrap();
    cp_a.ok(
        Method::POST,
        "/v1/virtual-servers",
        Some(&demo_vs(&[("echo", None)])),
    )
    .await
    .unwrap();
    let _envoy_b = b.start_envoy("gw-b").await;
    let url_b = b.url("demo");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, v) = post(&client, &url_b, CALL_ECHO).await;
        if is_allowed(&v) {
            break;
        }
        if Instant::now() > deadline {
            let metrics = reqwest::get(format!("{}/metrics", cp_b.api()))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let version = cp_b
                .ok(Method::GET, "/v1/catalog/version", None)
                .await
                .unwrap();
            panic!(
                "Envoy B never got the catalog made through A: {v}\nreplica B: {version}\n{metrics}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Remove echo through A; Envoy B (fed by replica B) refuses it.
    cp_a.ok(
        Method::PUT,
        "/v1/virtual-servers/demo",
        Some(&json!({"name": "demo", "anonymous": true, "tools": [{"mcp_server": "everything", "tool": "add"}]})),
    )
    .await
    .unwrap();
    let changed = Instant::now();
    loop {
        let (_, v) = post(&client, &url_b, CALL_ECHO).await;
        if is_refused(&v) {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(10),
            "a change through replica A did not reach Envoy B: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "change through replica A enforced by Envoy B after {:?}",
        changed.elapsed()
    );
    a.stop().await;
    b.stop().await;
    drop(admin);
}

/// Creates the schema and drops it when dropped (also on panic).
struct SchemaGuard {
    base: String,
    schema: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let (base, schema) = (self.base.clone(), self.schema.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut c) = <sqlx::PgConnection as sqlx::Connection>::connect(&base).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .execute(&mut c)
                        .await;
                }
            });
        })
        .join();
    }
}

async fn sqlx_free_admin(base: &str, schema: &str) -> SchemaGuard {
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(base)
        .await
        .expect("connecting to Postgres");
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&mut c)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&mut c)
        .await
        .unwrap();
    SchemaGuard {
        base: base.to_string(),
        schema: schema.to_string(),
    }
}

/// Credentials registered with an MCP server are added by Envoy on the way to it, replacing the
/// client's own `Authorization` (the MCP spec forbids token passthrough).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_adds_the_upstream_credentials_from_the_catalog() {
    let upstream = spawn(TestServerConfig::stateless_json()).await.unwrap();
    let Some(gw) = Gateway::builder("gw-cred")
        .mcp_server_with(json!({
            "name": "everything",
            "url": upstream.url(),
            "transport": "streamable-http",
            "headers": {"Authorization": "Bearer upstream-secret", "X-Api-Key": "k-123"},
        }))
        .virtual_server(demo_vs(&[("echo", None)]))
        .start()
        .await
    else {
        return;
    };
    let url = gw.url("demo");
    let before = upstream.requests().len();
    let resp = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", "Bearer client-token-must-not-pass")
        .body(CALL_ECHO)
        .send()
        .await
        .unwrap();
    let body = resp.text().await.unwrap();
    assert!(body.contains("\"result\""), "{body}");
    let seen: Vec<_> = upstream.requests().into_iter().skip(before).collect();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].header("authorization"),
        Some("Bearer upstream-secret"),
        "{seen:?}"
    );
    assert_eq!(seen[0].header("x-api-key"), Some("k-123"), "{seen:?}");
    // The credentials never show in the API.
    let shown = gw
        .cp()
        .ok(Method::GET, "/v1/mcp-servers/everything", None)
        .await
        .unwrap();
    assert!(!shown.to_string().contains("upstream-secret"), "{shown}");
    // Nor in what the registration answered.
    let registered = gw.registration("everything");
    assert!(
        !registered.to_string().contains("upstream-secret"),
        "{registered}"
    );
    gw.stop().await;
}
