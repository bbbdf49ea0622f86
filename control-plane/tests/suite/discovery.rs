//! Discovery against real upstreams: the rmcp test servers (`toolmesh-test-servers`), a server
//! that is not MCP, one that never answers, and one that is not there. Runs on SQLite and on
//! Postgres like the API suite.

use crate::common;

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use common::{TOKEN, TestApp};
use serde_json::{Value, json};
use toolmesh_test_servers::{TOOL_COUNT, TestServerConfig, spawn};

async fn register(app: &TestApp, name: &str, url: &str) -> Value {
    let (s, body) = app
        .post("/v1/mcp-servers", json!({"name": name, "url": url}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    body
}

async fn all_tools(app: &TestApp, server: &str) -> Vec<Value> {
    let (s, body) = app
        .get(&format!("/v1/tools?mcp_server={server}&limit=500"))
        .await;
    assert_eq!(s, StatusCode::OK);
    body["items"].as_array().unwrap().clone()
}

both_backends!(
    register_discovers_every_page,
    stateless_server_is_discovered_too,
    a_server_of_the_handshake_era_has_no_stateless_version,
    credentials_reach_the_upstream,
    unreachable_upstream_is_down_with_reason,
    non_mcp_upstream_is_down_with_reason,
    hanging_upstream_times_out_without_blocking,
    drift_needs_accept_before_the_gateway_sees_it,
    list_changed_triggers_rediscovery,
);

async fn register_discovers_every_page(app: &TestApp) {
    let upstream = spawn(TestServerConfig {
        page_size: 7,
        ..Default::default()
    })
    .await
    .unwrap();
    let body = register(app, "everything", &upstream.url()).await;
    assert_eq!(body["health"]["status"], "up", "{body}");
    const { assert!(TOOL_COUNT >= 25) };
    assert_eq!(body["counts"]["tools"], TOOL_COUNT as i64, "{body}");
    assert_eq!(body["counts"]["prompts"], 2);
    assert_eq!(body["counts"]["resources"], 2);
    assert_eq!(body["counts"]["resource_templates"], 1);
    assert_eq!(body["changes"]["added"], (TOOL_COUNT + 5) as i64);
    assert!(body["health"]["server_info"]["name"].is_string(), "{body}");
    assert!(body["health"]["capabilities"]["tools"].is_object());
    assert!(body["health"]["protocol_version"].is_string());
    // rmcp 3.11 servers speak the stateless revision too; discovery asked server/discover.
    assert_eq!(
        body["health"]["modern_versions"],
        json!(["2026-07-28"]),
        "{body}"
    );
    assert!(body["health"]["latency_ms"].is_number());

    let tools = all_tools(app, "everything").await;
    let names: Vec<&str> = tools.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), TOOL_COUNT);
    for n in [
        "echo",
        "add",
        "slow",
        "fail",
        "long_list_01",
        "long_list_21",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    let add = tools.iter().find(|t| t["name"] == "add").unwrap();
    assert!(
        add["definition"]["outputSchema"].is_object(),
        "raw definition kept: {add}"
    );
    // Refresh with nothing changed: same catalog, no changes.
    let (s, again) = app
        .post("/v1/mcp-servers/everything/refresh", json!({}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        again["changes"],
        json!({"added": 0, "drifted": 0, "removed": 0, "restored": 0, "skipped": 0})
    );
    upstream.shutdown().await;
}

async fn stateless_server_is_discovered_too(app: &TestApp) {
    let upstream = spawn(TestServerConfig {
        page_size: 4,
        ..TestServerConfig::stateless_json()
    })
    .await
    .unwrap();
    let body = register(app, "stateless", &upstream.url()).await;
    assert_eq!(body["health"]["status"], "up", "{body}");
    assert_eq!(body["counts"]["tools"], TOOL_COUNT as i64);
    assert_eq!(body["health"]["modern_versions"], json!(["2026-07-28"]));
    upstream.shutdown().await;
}

async fn a_server_of_the_handshake_era_has_no_stateless_version(app: &TestApp) {
    let upstream = spawn(TestServerConfig {
        handshake_only: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let body = register(app, "handshake", &upstream.url()).await;
    // It refused server/discover; that is no discovery failure.
    assert_eq!(body["health"]["status"], "up", "{body}");
    assert_eq!(body["counts"]["tools"], TOOL_COUNT as i64);
    assert_eq!(body["health"]["modern_versions"], json!([]), "{body}");
    assert!(
        upstream
            .jsonrpc_methods()
            .iter()
            .any(|m| m == "server/discover"),
        "discovery asked"
    );
    upstream.shutdown().await;
}

async fn credentials_reach_the_upstream(app: &TestApp) {
    let upstream = spawn(TestServerConfig::default()).await.unwrap();
    let (s, body) = app
        .post(
            "/v1/mcp-servers",
            json!({"name": "keyed", "url": upstream.url(), "headers": {"X-Upstream-Key": "k-123"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["health"]["status"], "up");
    let seen = |n: usize| {
        upstream
            .requests()
            .iter()
            .filter(|r| r.header("x-upstream-key") == Some("k-123"))
            .count()
            >= n
    };
    assert!(seen(1), "register sent the stored header");
    let before = upstream.requests().len();
    let (s, _) = app.post("/v1/mcp-servers/keyed/refresh", json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let after: Vec<_> = upstream.requests().into_iter().skip(before).collect();
    assert!(!after.is_empty());
    assert!(
        after
            .iter()
            .all(|r| r.header("x-upstream-key") == Some("k-123")),
        "refresh decrypted and sent the header on every request"
    );
    assert!(
        after.iter().all(|r| r.header("authorization").is_none()),
        "the admin token is never sent upstream"
    );
    upstream.shutdown().await;
}

async fn unreachable_upstream_is_down_with_reason(app: &TestApp) {
    // A port that was free a moment ago.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let body = register(app, "nowhere", &format!("http://127.0.0.1:{port}/mcp")).await;
    assert_eq!(body["health"]["status"], "down");
    let reason = body["health"]["last_error"].as_str().unwrap();
    assert!(!reason.contains("not implemented"), "{reason}");
    assert!(
        reason.contains(&port.to_string()) || reason.contains("connect"),
        "{reason}"
    );
    assert_eq!(body["counts"]["tools"], 0);
}

async fn non_mcp_upstream_is_down_with_reason(app: &TestApp) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let app = axum::Router::new().fallback(|| async {
            (
                [(axum::http::header::CONTENT_TYPE, "text/html")],
                "<html><body>Welcome to nginx!</body></html>",
            )
        });
        axum::serve(listener, app).await.ok();
    });
    let body = register(app, "webpage", &format!("http://{addr}/mcp")).await;
    assert_eq!(body["health"]["status"], "down", "{body}");
    assert!(
        body["health"]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty())
    );
    server.abort();
}

async fn hanging_upstream_times_out_without_blocking(app: &TestApp) {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let router = app.router_with_discovery_timeout(Duration::from_secs(2));
    let started = Instant::now();
    let register = app.raw_on(
        &router,
        Method::POST,
        "/v1/mcp-servers",
        Some(json!({"name": "hang", "url": format!("http://{addr}/mcp")}).to_string()),
        Some(TOKEN),
        "application/json",
    );
    // While discovery hangs, the API keeps answering.
    let other = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        let (s, _) = app.get("/v1/mcp-servers").await;
        assert_eq!(s, StatusCode::OK);
        t.elapsed()
    };
    let ((s, body), other_took) = tokio::join!(register, other);
    let took = started.elapsed();
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["health"]["status"], "down");
    assert!(
        body["health"]["last_error"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{body}"
    );
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(
        took < Duration::from_secs(10),
        "bounded by the timeout: {took:?}"
    );
    assert!(
        other_took < Duration::from_secs(2),
        "API blocked for {other_took:?}"
    );
    hold.abort();
}

async fn drift_needs_accept_before_the_gateway_sees_it(app: &TestApp) {
    let upstream = spawn(TestServerConfig::default()).await.unwrap();
    register(app, "drifty", &upstream.url()).await;
    let (s, _) = app
        .post(
            "/v1/virtual-servers",
            json!({"name": "agents", "tools": [{"mcp_server": "drifty", "tool": "echo", "expose_as": "say"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let echo_id = all_tools(app, "drifty")
        .await
        .iter()
        .find(|t| t["name"] == "echo")
        .unwrap()["id"]
        .as_i64()
        .unwrap();

    upstream.set_variant(1);
    let (s, refreshed) = app.post("/v1/mcp-servers/drifty/refresh", json!({})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(refreshed["changes"]["drifted"], 1, "{refreshed}");
    assert_eq!(refreshed["counts"]["drifted"], 1);
    let (_, echo) = app.get(&format!("/v1/tools/{echo_id}")).await;
    assert_eq!(echo["drifted"], true);
    assert_eq!(echo["definition"]["description"], "Echo the message back.");
    assert!(
        echo["pending_definition"]["description"]
            .as_str()
            .unwrap()
            .contains("variant 1"),
        "{echo}"
    );
    let (_, vs) = app.get("/v1/virtual-servers/agents").await;
    assert_eq!(vs["tools"][0]["drifted"], true);
    assert_eq!(
        vs["tools"][0]["active"], true,
        "still served, with the accepted version"
    );

    let model = toolmesh::gateway_model(&app.state.store).await.unwrap();
    let say = &model.exposed["agents"].tools[0];
    assert_eq!(say["name"], "say");
    assert_eq!(
        say["description"], "Echo the message back.",
        "the gateway keeps the accepted one"
    );
    assert_eq!(
        model.policy.virtual_servers[0].members[0].tools[0].upstream_name,
        "echo"
    );
    // The member carries what the upstream declared in `initialize` (as discovery stored it).
    let (_, server) = app.get("/v1/mcp-servers/drifty").await;
    assert!(
        server["health"]["capabilities"]["tools"].is_object(),
        "{server}"
    );
    assert_eq!(
        Value::Object(
            model.policy.virtual_servers[0].members[0]
                .capabilities
                .clone()
        ),
        server["health"]["capabilities"]
    );

    let (s, accepted) = app
        .post(&format!("/v1/tools/{echo_id}/accept"), json!({}))
        .await;
    assert_eq!(s, StatusCode::OK, "{accepted}");
    let model = toolmesh::gateway_model(&app.state.store).await.unwrap();
    let say = &model.exposed["agents"].tools[0];
    assert!(
        say["description"].as_str().unwrap().contains("variant 1"),
        "{say}"
    );
    assert_eq!(say["inputSchema"]["required"], json!(["message", "prefix"]));
    assert_eq!(say["name"], "say");

    // Back to variant 0: that is a drift again (from the newly accepted one).
    upstream.set_variant(0);
    let (_, refreshed) = app.post("/v1/mcp-servers/drifty/refresh", json!({})).await;
    assert_eq!(refreshed["changes"]["drifted"], 1);
    upstream.shutdown().await;
}

async fn list_changed_triggers_rediscovery(app: &TestApp) {
    let upstream = spawn(TestServerConfig::default()).await.unwrap();
    register(app, "watched", &upstream.url()).await;
    let watchers = toolmesh::watchers::spawn_watchers(
        app.state.store.clone(),
        app.state.key.clone(),
        Duration::from_secs(10),
    );
    let echo_id = all_tools(app, "watched")
        .await
        .iter()
        .find(|t| t["name"] == "echo")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    // No refresh call: the notification alone must bring the drift in. The server notifies only
    // sessions whose notification stream is already open, and we cannot see when the watcher's
    // is, so each attempt is a new variant (a real change each time).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut variant = 2;
    'outer: loop {
        upstream.set_variant(variant);
        let attempt_end = Instant::now() + Duration::from_secs(1);
        while Instant::now() < attempt_end {
            let (_, echo) = app.get(&format!("/v1/tools/{echo_id}")).await;
            if echo["drifted"] == true {
                assert!(
                    echo["pending_definition"]["description"]
                        .as_str()
                        .unwrap()
                        .contains("variant")
                );
                break 'outer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            Instant::now() < deadline,
            "list_changed never triggered a rediscovery"
        );
        variant += 1;
    }
    // Deleting the server stops its watcher (its session is closed).
    let (s, _) = app.delete("/v1/mcp-servers/watched").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !upstream.requests().iter().any(|r| r.method == "DELETE") {
        assert!(
            Instant::now() < deadline,
            "watcher session not closed after delete"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watchers.abort();
    upstream.shutdown().await;
}
