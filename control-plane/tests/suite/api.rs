//! The catalog REST API, end to end through the router, on SQLite and on Postgres.
//!
//! Every test runs twice (`<name>::sqlite`, `<name>::postgres`). Catalog items are put in place
//! with `Store::apply_discovery` and a synthetic discovery result, so these tests do not depend
//! on a live upstream; `discovery.rs` covers real discovery against the rmcp test servers.

use crate::common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use common::{TOKEN, TestApp, assert_error};
use serde_json::{Value, json};
use toolmesh::store::DiscoveryOutcome;
use toolmesh_discovery::Discovered;

const UNREACHABLE: &str = "http://127.0.0.1:1/mcp";

fn tool(name: &str, desc: &str) -> Value {
    json!({"name": name, "description": desc, "inputSchema": {"type": "object", "properties": {}}})
}

fn discovered(tools: Vec<Value>) -> DiscoveryOutcome {
    DiscoveryOutcome::Success(Box::new(Discovered {
        server_info: json!({"name": "fake", "version": "1.0"}),
        protocol_version: "2025-06-18".into(),
        capabilities: json!({"tools": {"listChanged": true}, "prompts": {}, "resources": {}}),
        instructions: Some("be nice".into()),
        tools,
        prompts: vec![
            json!({"name": "greet", "description": "Say hello", "arguments": [{"name": "name", "required": true}]}),
            json!({"name": "summarize", "description": "Summarize text"}),
        ],
        resources: vec![
            json!({"uri": "test://static/readme", "name": "readme", "mimeType": "text/plain"}),
            json!({"uri": "test://static/logo", "name": "logo"}),
        ],
        resource_templates: vec![
            json!({"uriTemplate": "test://template/{id}/data", "name": "data"}),
        ],
        modern_versions: vec![],
        latency: Duration::from_millis(7),
    }))
}

/// [`discovered`] from a server that also lists these stateless protocol versions.
fn discovered_speaking(tools: Vec<Value>, modern_versions: &[&str]) -> DiscoveryOutcome {
    let DiscoveryOutcome::Success(mut found) = discovered(tools) else {
        unreachable!("discovered() is a success")
    };
    found.modern_versions = modern_versions.iter().map(|v| v.to_string()).collect();
    DiscoveryOutcome::Success(found)
}

fn many_tools(n: usize) -> Vec<Value> {
    let mut t = vec![
        tool("echo", "Echo the message back."),
        tool("add", "Add two integers."),
    ];
    for i in 1..=n.saturating_sub(2) {
        t.push(tool(
            &format!("filler_{i:02}"),
            &format!("Filler number {i}"),
        ));
    }
    t
}

/// Register `name` (unreachable, so health is down) and fill its catalog synthetically.
async fn seed(app: &TestApp, name: &str, tags: &[&str], tools: Vec<Value>) {
    let (s, body) = app
        .post(
            "/v1/mcp-servers",
            json!({"name": name, "url": format!("http://127.0.0.1:1/{name}/mcp"), "tags": tags}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    app.state
        .store
        .apply_discovery(name, &discovered(tools))
        .await
        .expect("apply discovery");
}

/// `/v1/policy` as a snapshot, checked the way the filter checks it (with a stand-in for the
/// redacted session secret, which must not be shown).
#[track_caller]
fn valid_policy(policy: &Value) -> toolmesh_proto::PolicySnapshot {
    let mut snap: toolmesh_proto::PolicySnapshot = serde_json::from_value(policy.clone()).unwrap();
    assert_eq!(snap.sessions.keys.len(), 1, "{policy}");
    assert_eq!(snap.sessions.keys[0].secret, "<redacted>");
    assert!(!snap.sessions.keys[0].id.is_empty());
    snap.sessions.keys[0].secret = "A".repeat(43);
    // The test app runs with the defaults of `serve`.
    assert_eq!(snap.limits.list_page_size, 100);
    assert!(snap.limits.allowed_hosts.is_empty());
    assert_eq!(snap.sessions.member_timeout_ms, 5000);
    snap.validate().expect("valid snapshot");
    snap
}

async fn tool_id(app: &TestApp, server: &str, name: &str) -> i64 {
    let (s, body) = app
        .get(&format!("/v1/tools?mcp_server={server}&q={name}&limit=500"))
        .await;
    assert_eq!(s, StatusCode::OK);
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("tool {name} on {server} in {body}"))["id"]
        .as_i64()
        .unwrap()
}

both_backends!(
    auth_is_required_on_v1_only,
    migrations_run_from_empty_and_rerun,
    register_unreachable_is_201_with_health_down,
    mcp_server_crud,
    mcp_server_validation_names_fields,
    malformed_bodies_and_queries_are_4xx,
    credentials_are_encrypted_and_never_returned,
    items_list_filter_paginate_enable,
    drift_is_kept_until_accepted_and_removed_items_are_marked,
    virtual_server_crud_and_mcp_url,
    virtual_server_validation_names_items,
    colliding_names_are_qualified_by_mcp_server,
    name_conflicts_are_refused_naming_the_field,
    stored_name_conflicts_never_reach_the_snapshot,
    failed_requests_change_nothing,
    delete_in_use_mcp_server_needs_force,
    policy_is_compiled_from_enabled_accepted_items,
    stateless_versions_are_stored_shown_and_reach_the_policy,
    pagination_of_mcp_and_virtual_servers,
    version_channel_follows_changes,
    openapi_document_lists_every_route,
);

async fn auth_is_required_on_v1_only(app: &TestApp) {
    for path in [
        "/v1/mcp-servers",
        "/v1/tools",
        "/v1/catalog/version",
        "/v1/policy",
    ] {
        let none = app.raw(Method::GET, path, None, None, "").await;
        assert_error(&none, StatusCode::UNAUTHORIZED, None);
        let wrong = app.raw(Method::GET, path, None, Some("nope"), "").await;
        assert_error(&wrong, StatusCode::UNAUTHORIZED, None);
        let ok = app.raw(Method::GET, path, None, Some(TOKEN), "").await;
        assert_eq!(ok.0, StatusCode::OK, "{path}: {}", ok.1);
    }
    // Writes are guarded too, before the body is even looked at.
    let w = app
        .raw(
            Method::POST,
            "/v1/mcp-servers",
            Some("{}".into()),
            None,
            "application/json",
        )
        .await;
    assert_error(&w, StatusCode::UNAUTHORIZED, None);
    let h = app.raw(Method::GET, "/healthz", None, None, "").await;
    assert_eq!(h.0, StatusCode::OK);
    assert_eq!(h.1["database"], app.backend);
    let o = app.raw(Method::GET, "/openapi.json", None, None, "").await;
    assert_eq!(o.0, StatusCode::OK);
    assert!(o.1["openapi"].as_str().unwrap().starts_with('3'));
    // Unknown routes and methods answer JSON errors.
    assert_error(&app.get("/v1/nope").await, StatusCode::NOT_FOUND, None);
    assert_error(
        &app.raw(Method::DELETE, "/healthz", None, None, "").await,
        StatusCode::METHOD_NOT_ALLOWED,
        None,
    );
    // Only the token's hash is stored.
    let stored = app
        .state
        .store
        .get_setting(toolmesh::admin::ADMIN_TOKEN_KEY)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(stored, TOKEN);
    assert_eq!(stored, toolmesh::admin::token_hash(TOKEN));
    // A reset takes effect at once: the old token stops working.
    let new = toolmesh::admin::reset_admin_token(&app.state.store)
        .await
        .unwrap();
    let old = app
        .raw(Method::GET, "/v1/tools", None, Some(TOKEN), "")
        .await;
    assert_error(&old, StatusCode::UNAUTHORIZED, None);
    let ok = app
        .raw(Method::GET, "/v1/tools", None, Some(&new), "")
        .await;
    assert_eq!(ok.0, StatusCode::OK);
}

async fn migrations_run_from_empty_and_rerun(app: &TestApp) {
    // The app started from an empty database; run the migrations again, and connect anew.
    app.state.store.migrate().await.expect("re-run migrations");
    seed(app, "m1", &[], many_tools(3)).await;
    let again = toolmesh::Store::connect(&app.db_url)
        .await
        .expect("reconnect");
    again
        .migrate()
        .await
        .expect("re-run on a second connection");
    assert_eq!(
        again.catalog_version().await.unwrap(),
        app.version().await,
        "same catalog"
    );
    assert_eq!(again.get_mcp_server("m1").await.unwrap().counts.tools, 3);
    again.close().await;
}

async fn register_unreachable_is_201_with_health_down(app: &TestApp) {
    let started = std::time::Instant::now();
    let (s, body) = app
        .post(
            "/v1/mcp-servers",
            json!({"name": "gone", "url": UNREACHABLE}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["health"]["status"], "down");
    assert!(
        body["health"]["last_error"]
            .as_str()
            .is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    assert!(body["health"]["last_error_at"].is_string());
    assert!(started.elapsed() < Duration::from_secs(15));
    // Refresh of a down server is a 200 with the reason, not a 500.
    let (s, body) = app.post("/v1/mcp-servers/gone/refresh", json!({})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["health"]["status"], "down");
    assert_error(
        &app.post("/v1/mcp-servers/nope/refresh", json!({})).await,
        StatusCode::NOT_FOUND,
        None,
    );
}

async fn mcp_server_crud(app: &TestApp) {
    let (s, created) = app
        .post(
            "/v1/mcp-servers",
            json!({"name": "docs", "url": UNREACHABLE, "transport": "sse",
                   "description": "Docs search", "tags": ["prod", "search"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["transport"], "sse");
    assert_eq!(created["tags"], json!(["prod", "search"]));
    assert_eq!(created["cluster"], "mcp_docs");
    assert_eq!(created["has_credentials"], false);

    let (s, one) = app.get("/v1/mcp-servers/docs").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(one["description"], "Docs search");
    let (s, list) = app.get("/v1/mcp-servers").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert!(list["next_cursor"].is_null());

    let (s, replaced) = app
        .put(
            "/v1/mcp-servers/docs",
            json!({"url": "http://127.0.0.1:2/mcp", "description": "new", "tags": ["dev"]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{replaced}");
    assert_eq!(replaced["url"], "http://127.0.0.1:2/mcp");
    assert_eq!(replaced["transport"], "streamable-http");
    assert_eq!(replaced["tags"], json!(["dev"]));
    assert!(replaced["changes"].is_object(), "URL change rediscovers");
    assert_error(
        &app.put(
            "/v1/mcp-servers/docs",
            json!({"name": "other", "url": UNREACHABLE}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("name"),
    );
    assert_error(
        &app.put("/v1/mcp-servers/nope", json!({"url": UNREACHABLE}))
            .await,
        StatusCode::NOT_FOUND,
        None,
    );

    let (s, _) = app.delete("/v1/mcp-servers/docs").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_error(
        &app.get("/v1/mcp-servers/docs").await,
        StatusCode::NOT_FOUND,
        None,
    );
    assert_error(
        &app.delete("/v1/mcp-servers/docs").await,
        StatusCode::NOT_FOUND,
        None,
    );
}

async fn mcp_server_validation_names_fields(app: &TestApp) {
    let cases = [
        (json!({"name": "Bad Name", "url": UNREACHABLE}), "name"),
        (json!({"name": "", "url": UNREACHABLE}), "name"),
        (json!({"name": "ok", "url": "not a url"}), "url"),
        (json!({"name": "ok", "url": "ftp://h/mcp"}), "url"),
        (json!({"name": "ok", "url": "http://u:p@h/mcp"}), "url"),
        (
            json!({"name": "ok", "url": UNREACHABLE, "tags": ["ok", "NOT OK"]}),
            "tags[1]",
        ),
        (
            json!({"name": "ok", "url": UNREACHABLE, "headers": {"Host": "x"}}),
            "headers.Host",
        ),
        (
            json!({"name": "ok", "url": UNREACHABLE, "headers": {"bad header": "x"}}),
            "headers.bad header",
        ),
        (
            json!({"name": "ok", "url": UNREACHABLE, "headers": {"x-key": "a\nb"}}),
            "headers.x-key",
        ),
        (
            json!({"name": "ok", "url": UNREACHABLE, "description": "x".repeat(2001)}),
            "description",
        ),
    ];
    for (body, field) in cases {
        let got = app.post("/v1/mcp-servers", body.clone()).await;
        assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, Some(field));
    }
    // Serde-level problems name the field too.
    let cases = [
        (json!({"url": UNREACHABLE}), "name"),
        (
            json!({"name": "ok", "url": UNREACHABLE, "transport": "stdio"}),
            "transport",
        ),
        (
            json!({"name": "ok", "url": UNREACHABLE, "tags": "prod"}),
            "tags",
        ),
        (
            json!({"name": "ok", "url": UNREACHABLE, "colour": "red"}),
            "colour",
        ),
        (json!({"name": "ok", "url": 5}), "url"),
    ];
    for (body, field) in cases {
        let got = app.post("/v1/mcp-servers", body.clone()).await;
        assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, Some(field));
    }
    let (s, _) = app
        .post(
            "/v1/mcp-servers",
            json!({"name": "dup", "url": UNREACHABLE}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_error(
        &app.post(
            "/v1/mcp-servers",
            json!({"name": "dup", "url": UNREACHABLE}),
        )
        .await,
        StatusCode::CONFLICT,
        Some("name"),
    );
}

async fn malformed_bodies_and_queries_are_4xx(app: &TestApp) {
    let bad_json = app
        .raw(
            Method::POST,
            "/v1/mcp-servers",
            Some("{\"name\": ".into()),
            Some(TOKEN),
            "application/json",
        )
        .await;
    assert_error(&bad_json, StatusCode::BAD_REQUEST, None);
    assert_eq!(bad_json.1["error"]["code"], "invalid_json");
    let trailing = app
        .raw(
            Method::POST,
            "/v1/mcp-servers",
            Some(format!("{} x", json!({"name": "t", "url": UNREACHABLE}))),
            Some(TOKEN),
            "application/json",
        )
        .await;
    assert_eq!(trailing.0, StatusCode::BAD_REQUEST);
    let wrong_type = app
        .raw(
            Method::POST,
            "/v1/mcp-servers",
            Some("name=x".into()),
            Some(TOKEN),
            "application/x-www-form-urlencoded",
        )
        .await;
    assert_error(
        &wrong_type,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        Some("content-type"),
    );
    let no_body = app
        .raw(Method::POST, "/v1/virtual-servers", None, Some(TOKEN), "")
        .await;
    assert_eq!(no_body.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let array = app.post("/v1/virtual-servers", json!([1, 2])).await;
    assert_eq!(array.0, StatusCode::UNPROCESSABLE_ENTITY);
    let huge = app
        .raw(
            Method::POST,
            "/v1/mcp-servers",
            Some(format!("\"{}\"", "x".repeat(5 * 1024 * 1024))),
            Some(TOKEN),
            "application/json",
        )
        .await;
    assert_eq!(huge.0, StatusCode::PAYLOAD_TOO_LARGE);

    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("enabled=maybe", "enabled"),
        ("drifted=1", "drifted"),
        ("cursor=abc", "cursor"),
        ("colour=red", "colour"),
    ] {
        let got = app.get(&format!("/v1/tools?{q}")).await;
        assert_error(&got, StatusCode::BAD_REQUEST, Some(field));
    }
    assert_error(
        &app.get("/v1/mcp-servers?page=2").await,
        StatusCode::BAD_REQUEST,
        Some("page"),
    );
    assert_error(&app.get("/v1/tools/abc").await, StatusCode::NOT_FOUND, None);
    assert_error(
        &app.get("/v1/tools/999999").await,
        StatusCode::NOT_FOUND,
        None,
    );
    assert_error(
        &app.patch("/v1/tools/999999", json!({"enabled": false}))
            .await,
        StatusCode::NOT_FOUND,
        None,
    );
    seed(app, "q", &[], many_tools(2)).await;
    let id = tool_id(app, "q", "echo").await;
    assert_error(
        &app.patch(&format!("/v1/tools/{id}"), json!({"enabled": "no"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("enabled"),
    );
    assert_error(
        &app.patch(&format!("/v1/tools/{id}"), json!({})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("enabled"),
    );
}

async fn credentials_are_encrypted_and_never_returned(app: &TestApp) {
    let secret = "Bearer s3cret-upstream-value";
    let (s, body) = app
        .post(
            "/v1/mcp-servers",
            json!({"name": "gh", "url": UNREACHABLE,
                   "headers": {"Authorization": secret, "X-Api-Key": "k3y-value"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert_eq!(body["has_credentials"], true);
    assert_eq!(
        body["credential_header_names"],
        json!(["authorization", "x-api-key"])
    );
    for text in [
        body.to_string(),
        app.get("/v1/mcp-servers/gh").await.1.to_string(),
        app.get("/v1/mcp-servers").await.1.to_string(),
        app.post("/v1/mcp-servers/gh/refresh", json!({}))
            .await
            .1
            .to_string(),
    ] {
        assert!(
            !text.contains("s3cret") && !text.contains("k3y-value"),
            "{text}"
        );
    }
    let raw = app.raw_credentials("gh").await.expect("stored");
    assert!(!raw.windows(6).any(|w| w == b"s3cret"), "stored in clear");
    assert!(
        !raw.windows(9).any(|w| w == b"k3y-value"),
        "stored in clear"
    );
    // It opens with the key, bound to this server's name.
    let rec = app.state.store.get_mcp_server("gh").await.unwrap();
    let headers = toolmesh::discovery::open_headers(&app.state.key, &rec).unwrap();
    assert_eq!(
        headers,
        vec![
            ("authorization".to_string(), secret.to_string()),
            ("x-api-key".to_string(), "k3y-value".to_string())
        ]
    );
    // PUT without headers keeps them; `{}` clears them.
    let (_, kept) = app
        .put(
            "/v1/mcp-servers/gh",
            json!({"url": UNREACHABLE, "description": "d"}),
        )
        .await;
    assert_eq!(kept["has_credentials"], true);
    let (_, cleared) = app
        .put(
            "/v1/mcp-servers/gh",
            json!({"url": UNREACHABLE, "headers": {}}),
        )
        .await;
    assert_eq!(cleared["has_credentials"], false);
    assert_eq!(cleared["credential_header_names"], json!([]));
    assert!(app.raw_credentials("gh").await.is_none());
}

async fn items_list_filter_paginate_enable(app: &TestApp) {
    seed(app, "alpha", &["prod"], many_tools(30)).await;
    seed(app, "beta", &["dev"], many_tools(3)).await;
    let (_, server) = app.get("/v1/mcp-servers/alpha").await;
    assert_eq!(server["health"]["status"], "up");
    assert_eq!(server["health"]["protocol_version"], "2025-06-18");
    assert_eq!(server["health"]["latency_ms"], 7);
    assert_eq!(
        server["counts"],
        json!({"tools": 30, "prompts": 2, "resources": 2, "resource_templates": 1, "drifted": 0})
    );

    // Pages of 12 over 30 alpha tools: 12 + 12 + 6, no repeats.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/v1/tools?mcp_server=alpha&limit=12".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (s, page) = app.get(&path).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        pages += 1;
        for t in page["items"].as_array().unwrap() {
            assert_eq!(t["mcp_server"], "alpha");
            seen.push(t["name"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 30);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 30);

    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                format!(
                    "{}/{}",
                    t["mcp_server"].as_str().unwrap(),
                    t["name"].as_str().unwrap()
                )
            })
            .collect()
    };
    let (_, by_tag) = app.get("/v1/tools?tag=dev").await;
    assert_eq!(
        names(&by_tag),
        vec!["beta/echo", "beta/add", "beta/filler_01"]
    );
    let (_, by_q) = app.get("/v1/tools?q=INTEGERS").await;
    assert_eq!(names(&by_q), vec!["alpha/add", "beta/add"]);
    let (_, by_q) = app.get("/v1/tools?q=filler_2").await;
    assert_eq!(
        by_q["items"].as_array().unwrap().len(),
        9,
        "filler_20..filler_28 (underscore is literal)"
    );
    let (_, none) = app.get("/v1/tools?q=%25").await;
    assert_eq!(none["items"].as_array().unwrap().len(), 0, "% is literal");

    let id = tool_id(app, "beta", "add").await;
    let (s, off) = app
        .patch(&format!("/v1/tools/{id}"), json!({"enabled": false}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(off["enabled"], false);
    let (_, disabled) = app.get("/v1/tools?enabled=false").await;
    assert_eq!(names(&disabled), vec!["beta/add"]);
    let (_, one) = app.get(&format!("/v1/tools/{id}")).await;
    assert_eq!(one["enabled"], false);
    assert_eq!(one["definition"]["description"], "Add two integers.");

    let (_, prompts) = app.get("/v1/prompts?mcp_server=alpha").await;
    assert_eq!(names(&prompts), vec!["alpha/greet", "alpha/summarize"]);
    let (_, resources) = app.get("/v1/resources?mcp_server=alpha").await;
    let r = &resources["items"][0];
    assert_eq!(r["uri"], "test://static/readme");
    assert_eq!(r["name"], "readme");
    let (_, templates) = app.get("/v1/resource-templates?mcp_server=alpha").await;
    assert_eq!(
        templates["items"][0]["uri_template"],
        "test://template/{id}/data"
    );
    let rid = r["id"].as_i64().unwrap();
    let (s, r) = app
        .patch(&format!("/v1/resources/{rid}"), json!({"enabled": false}))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["enabled"], false);
}

async fn drift_is_kept_until_accepted_and_removed_items_are_marked(app: &TestApp) {
    seed(app, "up", &[], many_tools(5)).await;
    let id = tool_id(app, "up", "echo").await;
    let v0 = app.version().await;
    // Same definitions again: nothing changes, no new version.
    app.state
        .store
        .apply_discovery("up", &discovered(many_tools(5)))
        .await
        .unwrap();
    assert_eq!(
        app.version().await,
        v0,
        "an unchanged discovery does not bump the version"
    );

    // echo changes, filler_03 vanishes.
    let mut next = many_tools(4);
    next[0] = tool("echo", "Echo, now with a prefix.");
    let (_, changes) = app
        .state
        .store
        .apply_discovery("up", &discovered(next.clone()))
        .await
        .unwrap();
    assert_eq!((changes.drifted, changes.removed, changes.added), (1, 1, 0));
    assert!(app.version().await > v0);
    let (_, echo) = app.get(&format!("/v1/tools/{id}")).await;
    assert_eq!(echo["drifted"], true);
    assert_eq!(
        echo["definition"]["description"], "Echo the message back.",
        "accepted kept"
    );
    assert_eq!(
        echo["pending_definition"]["description"],
        "Echo, now with a prefix."
    );
    let (_, drifted) = app.get("/v1/tools?drifted=true").await;
    assert_eq!(drifted["items"].as_array().unwrap().len(), 1);
    let (_, gone) = app.get("/v1/tools?mcp_server=up&q=filler_03").await;
    assert_eq!(gone["items"][0]["removed_upstream"], true, "{gone}");
    let (_, server) = app.get("/v1/mcp-servers/up").await;
    assert_eq!(server["counts"]["tools"], 4);
    assert_eq!(server["counts"]["drifted"], 1);

    let (s, accepted) = app.post(&format!("/v1/tools/{id}/accept"), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{accepted}");
    assert_eq!(accepted["drifted"], false);
    assert_eq!(
        accepted["definition"]["description"],
        "Echo, now with a prefix."
    );
    assert_eq!(accepted["description"], "Echo, now with a prefix.");
    assert!(accepted["pending_definition"].is_null());
    assert_error(
        &app.post(&format!("/v1/tools/{id}/accept"), json!({})).await,
        StatusCode::CONFLICT,
        None,
    );

    // filler_03 comes back: restored, same id.
    let (_, changes) = app
        .state
        .store
        .apply_discovery(
            "up",
            &discovered({
                let mut t = next.clone();
                t.push(tool("filler_03", "Filler number 3"));
                t
            }),
        )
        .await
        .unwrap();
    assert_eq!(changes.restored, 1);
    let (_, back) = app.get("/v1/tools?mcp_server=up&q=filler_03").await;
    assert_eq!(back["items"][0]["removed_upstream"], false);
    assert_eq!(back["items"][0]["id"], gone["items"][0]["id"]);

    // A failed discovery keeps the catalog and records the reason.
    let (rec, _) = app
        .state
        .store
        .apply_discovery(
            "up",
            &DiscoveryOutcome::Failure("connection refused".into()),
        )
        .await
        .unwrap();
    assert_eq!(rec.health.last_error.as_deref(), Some("connection refused"));
    assert_eq!(rec.counts.tools, 5);
}

async fn virtual_server_crud_and_mcp_url(app: &TestApp) {
    seed(app, "s1", &[], many_tools(4)).await;
    seed(app, "s2", &[], many_tools(4)).await;
    let body = json!({
        "name": "team-a",
        "description": "Agents of team A",
        "tools": [
            {"mcp_server": "s1", "tool": "echo"},
            {"mcp_server": "s2", "tool": "echo", "expose_as": "echo2"},
            {"mcp_server": "s2", "tool": "add"}
        ],
        "prompts": [{"mcp_server": "s1", "prompt": "greet", "expose_as": "hello"}],
        "resources": [{"mcp_server": "s1", "uri": "test://static/readme"}],
        "resource_templates": [{"mcp_server": "s2", "uri_template": "test://template/{id}/data"}]
    });
    let (s, vs) = app.post("/v1/virtual-servers", body.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{vs}");
    assert_eq!(vs["mcp_url"], "http://mcp.example:8080/servers/team-a/mcp");
    assert_eq!(vs["tools"][1]["exposed_name"], "echo2");
    assert_eq!(vs["tools"][1]["tool"], "echo");
    assert_eq!(vs["tools"][2]["exposed_name"], "add");
    assert_eq!(vs["prompts"][0]["exposed_name"], "hello");
    assert_eq!(vs["resources"][0]["uri"], "test://static/readme");
    assert_eq!(
        vs["resource_templates"][0]["uri_template"],
        "test://template/{id}/data"
    );
    assert!(
        vs["tools"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["active"] == true)
    );
    assert_error(
        &app.post("/v1/virtual-servers", body).await,
        StatusCode::CONFLICT,
        Some("name"),
    );

    let (s, got) = app.get("/v1/virtual-servers/team-a").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got["tools"], vs["tools"]);
    let (s, replaced) = app
        .put(
            "/v1/virtual-servers/team-a",
            json!({"tools": [{"mcp_server": "s1", "tool": "add"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{replaced}");
    assert_eq!(replaced["tools"].as_array().unwrap().len(), 1);
    assert_eq!(replaced["prompts"], json!([]));
    assert_eq!(replaced["description"], "");
    assert_error(
        &app.put("/v1/virtual-servers/nope", json!({})).await,
        StatusCode::NOT_FOUND,
        None,
    );
    assert_error(
        &app.put("/v1/virtual-servers/team-a", json!({"name": "team-b"}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("name"),
    );
    let (s, _) = app.delete("/v1/virtual-servers/team-a").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_error(
        &app.get("/v1/virtual-servers/team-a").await,
        StatusCode::NOT_FOUND,
        None,
    );
    assert_error(
        &app.delete("/v1/virtual-servers/team-a").await,
        StatusCode::NOT_FOUND,
        None,
    );
}

async fn virtual_server_validation_names_items(app: &TestApp) {
    seed(app, "y", &[], many_tools(3)).await;
    let off = tool_id(app, "y", "add").await;
    app.patch(&format!("/v1/tools/{off}"), json!({"enabled": false}))
        .await;
    let echo = json!({"mcp_server": "y", "tool": "echo"});
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"name": "v", "tools": [echo, echo, {"mcp_server": "y", "tool": "x"}]}),
            "tools[1].tool",
            "tools[1]: duplicate exposed tool name 'echo' (also tools[0])",
        ),
        (
            json!({"name": "v", "tools": [echo, {"mcp_server": "y", "tool": "filler_01"}, {"mcp_server": "y", "tool": "x"}]}),
            "tools[2].tool",
            "tools[2]: unknown tool 'x' on mcp server 'y'",
        ),
        (
            json!({"name": "v", "tools": [{"mcp_server": "nope", "tool": "echo"}]}),
            "tools[0].mcp_server",
            "tools[0]: unknown mcp server 'nope'",
        ),
        (
            json!({"name": "v", "tools": [{"mcp_server": "y", "tool": "add"}]}),
            "tools[0].tool",
            "tools[0]: tool 'add' on mcp server 'y' is disabled",
        ),
        (
            json!({"name": "v", "tools": [{"mcp_server": "y", "tool": "echo", "expose_as": "bad name!"}]}),
            "tools[0].expose_as",
            "tools[0]: expose_as \"bad name!\"",
        ),
        (
            json!({"name": "v", "tools": [echo, {"mcp_server": "y", "tool": "filler_01", "expose_as": "echo"}]}),
            "tools[1].expose_as",
            "duplicate exposed tool name 'echo'",
        ),
        (
            json!({"name": "v", "tools": [{"mcp_server": "y", "tool": "has space"}]}),
            "tools[0].tool",
            "outside the MCP naming rules",
        ),
        (
            json!({"name": "v", "prompts": [{"mcp_server": "y", "prompt": "nope"}]}),
            "prompts[0].prompt",
            "prompts[0]: unknown prompt 'nope' on mcp server 'y'",
        ),
        (
            json!({"name": "v", "resources": [{"mcp_server": "y", "uri": "test://nope"}]}),
            "resources[0].uri",
            "resources[0]: unknown resource 'test://nope' on mcp server 'y'",
        ),
        (
            json!({"name": "v", "resources": [{"mcp_server": "y", "uri": "test://static/logo"}, {"mcp_server": "y", "uri": "test://static/logo"}]}),
            "resources[1].uri",
            "duplicate uri",
        ),
        (
            json!({"name": "v", "resource_templates": [{"mcp_server": "y", "uri_template": "x/{a}"}]}),
            "resource_templates[0].uri_template",
            "unknown resource template",
        ),
        (
            json!({"name": "V!", "tools": []}),
            "name",
            "not a valid name",
        ),
        (json!({"tools": []}), "name", "name"),
        (
            json!({"name": "v", "tools": [{"mcp_server": "y"}]}),
            "tools[0].tool",
            "missing field",
        ),
        (
            json!({"name": "v", "tools": [{"mcp_server": "y", "tool": "echo", "rename": "z"}]}),
            "tools[0].rename",
            "unknown field",
        ),
    ];
    for (body, field, needle) in cases {
        let got = app.post("/v1/virtual-servers", body.clone()).await;
        assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, Some(field));
        let msg = got.1["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "{msg:?} should contain {needle:?} (body {body})"
        );
    }
    assert_eq!(app.get("/v1/virtual-servers").await.1["items"], json!([]));
}

/// Exposed names of one kind in a virtual server view, in order (`-` when not exposed).
fn exposed(vs: &Value, kind: &str) -> Vec<String> {
    vs[kind]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["exposed_name"].as_str().unwrap_or("-").to_string())
        .collect()
}

/// `(exposed name, upstream name)` of one kind of every member of the first virtual server.
fn snapshot_names(snap: &toolmesh_proto::PolicySnapshot, prompts: bool) -> Vec<(String, String)> {
    snap.virtual_servers[0]
        .members
        .iter()
        .flat_map(|m| if prompts { &m.prompts } else { &m.tools })
        .map(|t| (t.name.clone(), t.upstream_name.clone()))
        .collect()
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

async fn colliding_names_are_qualified_by_mcp_server(app: &TestApp) {
    seed(app, "alpha", &[], many_tools(4)).await;
    seed(app, "beta", &[], many_tools(4)).await;
    let (s, vs) = app
        .post(
            "/v1/virtual-servers",
            json!({"name": "mix",
            "tools": [
                {"mcp_server": "alpha", "tool": "echo"},
                {"mcp_server": "beta", "tool": "echo"},
                {"mcp_server": "alpha", "tool": "add"},
                {"mcp_server": "beta", "tool": "add", "expose_as": "add2"},
                {"mcp_server": "beta", "tool": "filler_01"}
            ],
            "prompts": [
                {"mcp_server": "alpha", "prompt": "greet"},
                {"mcp_server": "beta", "prompt": "greet"},
                {"mcp_server": "beta", "prompt": "summarize"}
            ]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{vs}");
    // Only the colliding names are qualified; an aliased item does not collide.
    assert_eq!(
        exposed(&vs, "tools"),
        ["alpha__echo", "beta__echo", "add", "add2", "filler_01"]
    );
    assert_eq!(
        exposed(&vs, "prompts"),
        ["alpha__greet", "beta__greet", "summarize"]
    );
    assert_eq!(vs["tools"][0]["tool"], "echo");
    assert!(vs["tools"][0].get("expose_as").is_none(), "{vs}");
    let (_, shown) = app.get("/v1/virtual-servers/mix").await;
    assert_eq!(shown["tools"], vs["tools"]);
    let (_, listed) = app.get("/v1/virtual-servers").await;
    assert_eq!(listed["items"][0]["tools"], vs["tools"]);

    // The snapshot maps each exposed name back to its upstream name, on the right member.
    let (_, policy) = app.get("/v1/policy").await;
    let snap = valid_policy(&policy);
    let members = &snap.virtual_servers[0].members;
    assert_eq!(
        members
            .iter()
            .map(|m| m.mcp_server.as_str())
            .collect::<Vec<_>>(),
        ["alpha", "beta"]
    );
    assert_eq!(
        snapshot_names(&snap, false),
        pairs(&[
            ("alpha__echo", "echo"),
            ("add", "add"),
            ("beta__echo", "echo"),
            ("add2", "add"),
            ("filler_01", "filler_01")
        ])
    );
    assert_eq!(
        snapshot_names(&snap, true),
        pairs(&[
            ("alpha__greet", "greet"),
            ("beta__greet", "greet"),
            ("summarize", "summarize")
        ])
    );
    // The definitions listed to clients carry the exposed name.
    let def = &members[1].tools[0].definition;
    assert_eq!(def["name"], "echo", "the catalog definition is upstream's");
    let model = toolmesh::gateway_model(&app.state.store).await.unwrap();
    let names: Vec<&str> = model.exposed["mix"]
        .tools
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["alpha__echo", "beta__echo", "add", "add2", "filler_01"]
    );
    assert_eq!(
        model.exposed["mix"].tools[1]["description"],
        "Echo the message back."
    );
    // Usage names tools the same way.
    let (s, unused) = app.get("/v1/usage/unused?since=7d").await;
    assert_eq!(s, StatusCode::OK, "{unused}");
    let mut seen: Vec<String> = unused["exposed_unused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| format!("{}:{}>{}", u["mcp_server"], u["tool"], u["exposed_as"]))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            r#""alpha":"add">"add""#,
            r#""alpha":"echo">"alpha__echo""#,
            r#""beta":"add">"add2""#,
            r#""beta":"echo">"beta__echo""#,
            r#""beta":"filler_01">"filler_01""#,
        ]
    );

    // Names depend on the members only: disabling beta's echo keeps alpha's qualified name
    // (a client's tool never changes name because another one was switched off).
    let beta_echo = tool_id(app, "beta", "echo").await;
    app.patch(&format!("/v1/tools/{beta_echo}"), json!({"enabled": false}))
        .await;
    let (_, vs) = app.get("/v1/virtual-servers/mix").await;
    assert_eq!(exposed(&vs, "tools")[..2], ["alpha__echo", "beta__echo"]);
    assert_eq!(vs["tools"][1]["active"], false);
    let snap = valid_policy(&app.get("/v1/policy").await.1);
    assert_eq!(
        snapshot_names(&snap, false),
        pairs(&[
            ("alpha__echo", "echo"),
            ("add", "add"),
            ("add2", "add"),
            ("filler_01", "filler_01")
        ])
    );

    // Without the other member, the plain name is back.
    let (s, vs) = app
        .put(
            "/v1/virtual-servers/mix",
            json!({"tools": [{"mcp_server": "alpha", "tool": "echo"}, {"mcp_server": "beta", "tool": "add"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{vs}");
    assert_eq!(exposed(&vs, "tools"), ["echo", "add"]);
}

async fn name_conflicts_are_refused_naming_the_field(app: &TestApp) {
    seed(app, "alpha", &[], many_tools(4)).await;
    seed(app, "beta", &[], many_tools(4)).await;
    let long = "t".repeat(125);
    seed(app, "long-a", &[], vec![tool(&long, "A long name.")]).await;
    seed(app, "long-b", &[], vec![tool(&long, "A long name.")]).await;
    let t = |server: &str, tool: &str| json!({"mcp_server": server, "tool": tool});
    let ta = |server: &str, tool: &str, alias: &str| json!({"mcp_server": server, "tool": tool, "expose_as": alias});
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            // An alias equal to a qualified name (wherever the alias is).
            json!([
                t("alpha", "echo"),
                t("beta", "echo"),
                ta("alpha", "add", "beta__echo")
            ]),
            "tools[2].expose_as",
            "tools[2]: duplicate exposed tool name 'beta__echo' (also tools[1])",
        ),
        (
            json!([
                ta("alpha", "add", "alpha__echo"),
                t("alpha", "echo"),
                t("beta", "echo")
            ]),
            "tools[0].expose_as",
            "tools[0]: duplicate exposed tool name 'alpha__echo' (also tools[1])",
        ),
        (
            // An alias equal to another member's plain name.
            json!([t("alpha", "add"), ta("beta", "echo", "add")]),
            "tools[1].expose_as",
            "duplicate exposed tool name 'add'",
        ),
        (
            json!([ta("alpha", "echo", "same"), ta("beta", "add", "same")]),
            "tools[1].expose_as",
            "tools[1]: duplicate exposed tool name 'same' (also tools[0])",
        ),
        (
            // The same item twice is not a collision between members.
            json!([t("beta", "add"), t("beta", "add")]),
            "tools[1].tool",
            "tools[1]: duplicate exposed tool name 'add' (also tools[0])",
        ),
        (
            // Qualifying would break the MCP naming rules: name the member.
            json!([t("long-a", &long), t("long-b", &long)]),
            "tools[0].tool",
            "tools[0]: tool",
        ),
    ];
    for (tools, field, needle) in cases {
        let body = json!({"name": "v", "tools": tools});
        let got = app.post("/v1/virtual-servers", body.clone()).await;
        assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, Some(field));
        let msg = got.1["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "{msg:?} should contain {needle:?} (body {body})"
        );
    }
    let got = app
        .post(
            "/v1/virtual-servers",
            json!({"name": "v", "tools": [t("long-a", &long), t("long-b", &long)]}),
        )
        .await;
    let msg = got.1["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("mcp server 'long-a'") && msg.contains(&format!("long-a__{long}")),
        "{msg}"
    );
    // Prompts follow the same rule, on their own (a tool and a prompt may share a name).
    let got = app
        .post(
            "/v1/virtual-servers",
            json!({"name": "v", "prompts": [
                {"mcp_server": "alpha", "prompt": "summarize", "expose_as": "greet"},
                {"mcp_server": "beta", "prompt": "greet", "expose_as": "greet"}]}),
        )
        .await;
    assert_error(
        &got,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("prompts[1].expose_as"),
    );
    let (s, ok) = app
        .post(
            "/v1/virtual-servers",
            json!({"name": "v", "tools": [t("alpha", "echo")], "prompts": [
                {"mcp_server": "alpha", "prompt": "greet", "expose_as": "echo"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{ok}");
    // Only the last request was stored.
    let (_, list) = app.get("/v1/virtual-servers").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

async fn stored_name_conflicts_never_reach_the_snapshot(app: &TestApp) {
    seed(app, "alpha", &[], many_tools(4)).await;
    seed(app, "beta", &[], many_tools(4)).await;
    let (s, vs) = app
        .post(
            "/v1/virtual-servers",
            json!({"name": "old", "tools": [
                {"mcp_server": "alpha", "tool": "echo"},
                {"mcp_server": "beta", "tool": "echo"},
                {"mcp_server": "alpha", "tool": "add", "expose_as": "plus"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{vs}");
    // A catalog written under another rule (or by hand) gives the alias a name that another
    // member also gets: the alias keeps it, the other member is left out of the gateway rather
    // than making a snapshot every filter would refuse.
    let n = app
        .exec_sql(
            "UPDATE virtual_server_members SET expose_as = 'beta__echo' WHERE expose_as = 'plus'",
        )
        .await;
    assert_eq!(n, 1);
    let snap = valid_policy(&app.get("/v1/policy").await.1);
    assert_eq!(
        snapshot_names(&snap, false),
        pairs(&[("alpha__echo", "echo"), ("beta__echo", "add")])
    );
    let (_, vs) = app.get("/v1/virtual-servers/old").await;
    assert_eq!(exposed(&vs, "tools"), ["alpha__echo", "-", "beta__echo"]);
    assert_eq!(vs["tools"][1]["active"], false);
    assert_eq!(vs["tools"][2]["active"], true);
    let model = toolmesh::gateway_model(&app.state.store).await.unwrap();
    assert_eq!(model.exposed["old"].tools.len(), 2);
    // What the publisher pushes is accepted by the xDS layer (it validates like the filter).
    let xds_model = toolmesh::gateway::to_xds_model(&model, &app.state.key).unwrap();
    xds_model.policy.validate().expect("the filter accepts it");
}

async fn failed_requests_change_nothing(app: &TestApp) {
    seed(app, "t", &[], many_tools(3)).await;
    let v0 = app.version().await;
    // The member check fails after the virtual server row was inserted: all rolled back.
    let got = app
        .post(
            "/v1/virtual-servers",
            json!({"name": "half", "tools": [
            {"mcp_server": "t", "tool": "echo"}, {"mcp_server": "t", "tool": "missing"}]}),
        )
        .await;
    assert_eq!(got.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.version().await, v0);
    assert_error(
        &app.get("/v1/virtual-servers/half").await,
        StatusCode::NOT_FOUND,
        None,
    );
    // A replace that fails keeps the old members.
    app.post(
        "/v1/virtual-servers",
        json!({"name": "keep", "tools": [{"mcp_server": "t", "tool": "echo"}]}),
    )
    .await;
    let v1 = app.version().await;
    assert_eq!(v1, v0 + 1);
    let got = app
        .put("/v1/virtual-servers/keep", json!({"tools": [{"mcp_server": "t", "tool": "add"}, {"mcp_server": "zz", "tool": "a"}]}))
        .await;
    assert_eq!(got.0, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(app.version().await, v1);
    let (_, keep) = app.get("/v1/virtual-servers/keep").await;
    assert_eq!(keep["tools"][0]["tool"], "echo");
    // Conflicts and not-founds change nothing either.
    app.post("/v1/mcp-servers", json!({"name": "t", "url": UNREACHABLE}))
        .await;
    app.delete("/v1/mcp-servers/t").await;
    app.delete("/v1/virtual-servers/none").await;
    app.post("/v1/tools/1/accept", json!({})).await;
    assert_eq!(app.version().await, v1);
    // Successful writes bump it.
    let id = tool_id(app, "t", "add").await;
    app.patch(&format!("/v1/tools/{id}"), json!({"enabled": false}))
        .await;
    assert_eq!(app.version().await, v1 + 1);
    let (_, v) = app.get("/v1/catalog/version").await;
    assert_eq!(v["version"], v1 + 1);
}

async fn delete_in_use_mcp_server_needs_force(app: &TestApp) {
    seed(app, "used", &[], many_tools(2)).await;
    seed(app, "other", &[], many_tools(2)).await;
    app.post(
        "/v1/virtual-servers",
        json!({"name": "vs", "tools": [
        {"mcp_server": "used", "tool": "echo"}, {"mcp_server": "other", "tool": "add"}]}),
    )
    .await;
    let got = app.delete("/v1/mcp-servers/used").await;
    assert_error(&got, StatusCode::CONFLICT, None);
    assert!(got.1["error"]["message"].as_str().unwrap().contains("vs"));
    assert_eq!(app.get("/v1/mcp-servers/used").await.0, StatusCode::OK);
    assert_error(
        &app.delete("/v1/mcp-servers/used?force=yes").await,
        StatusCode::BAD_REQUEST,
        Some("force"),
    );
    let (s, _) = app.delete("/v1/mcp-servers/used?force=true").await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, vs) = app.get("/v1/virtual-servers/vs").await;
    assert_eq!(vs["tools"].as_array().unwrap().len(), 1);
    assert_eq!(vs["tools"][0]["mcp_server"], "other");
    let (_, tools) = app.get("/v1/tools?mcp_server=used").await;
    assert_eq!(tools["items"], json!([]));
}

async fn policy_is_compiled_from_enabled_accepted_items(app: &TestApp) {
    seed(app, "p1", &[], many_tools(3)).await;
    seed(app, "p2", &[], many_tools(3)).await;
    app.put(
        "/v1/mcp-servers/p2",
        json!({"url": "http://127.0.0.1:1/deep/path/mcp?x=1"}),
    )
    .await;
    app.state
        .store
        .apply_discovery("p2", &discovered(many_tools(3)))
        .await
        .unwrap();
    let (s, _) = app.post("/v1/virtual-servers", json!({"name": "pol",
        "tools": [{"mcp_server": "p1", "tool": "echo"}, {"mcp_server": "p2", "tool": "echo", "expose_as": "p2.echo"},
                  {"mcp_server": "p1", "tool": "add"}],
        "prompts": [{"mcp_server": "p2", "prompt": "greet"}],
        "resources": [{"mcp_server": "p1", "uri": "test://static/readme"}],
        "resource_templates": [{"mcp_server": "p1", "uri_template": "test://template/{id}/data"}]})).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, policy) = app.get("/v1/policy").await;
    assert_eq!(s, StatusCode::OK);
    let snap = valid_policy(&policy);
    assert_eq!(snap.catalog_version, app.version().await.to_string());
    let vs = &snap.virtual_servers[0];
    assert_eq!(vs.name, "pol");
    assert_eq!(vs.members.len(), 2);
    let m1 = &vs.members[0];
    assert_eq!(
        (
            m1.mcp_server.as_str(),
            m1.cluster.as_str(),
            m1.path.as_str()
        ),
        ("p1", "mcp_p1", "/p1/mcp")
    );
    assert_eq!(
        m1.tools.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["echo", "add"]
    );
    assert_eq!(m1.resources[0].uri, "test://static/readme");
    assert_eq!(
        m1.resource_templates[0].uri_template,
        "test://template/{id}/data"
    );
    let m2 = &vs.members[1];
    assert_eq!(m2.path, "/deep/path/mcp");
    assert_eq!(
        (
            m2.tools[0].name.as_str(),
            m2.tools[0].upstream_name.as_str()
        ),
        ("p2.echo", "echo")
    );
    assert_eq!(m2.prompts[0].name, "greet");

    // Disable p1/add and remove p1/echo upstream: both leave the policy, the members stay.
    let add = tool_id(app, "p1", "add").await;
    app.patch(&format!("/v1/tools/{add}"), json!({"enabled": false}))
        .await;
    let mut rest = many_tools(3);
    rest.remove(0);
    app.state
        .store
        .apply_discovery("p1", &discovered(rest))
        .await
        .unwrap();
    let model = toolmesh::gateway_model(&app.state.store).await.unwrap();
    toolmesh::gateway::to_xds_model(&model, &app.state.key)
        .unwrap()
        .policy
        .validate()
        .unwrap();
    let members = &model.policy.virtual_servers[0].members;
    let p1 = members
        .iter()
        .find(|m| m.mcp_server == "p1")
        .expect("p1 still has resources");
    assert!(p1.tools.is_empty(), "{p1:?}");
    assert_eq!(p1.resources.len(), 1);
    let (_, vs) = app.get("/v1/virtual-servers/pol").await;
    assert_eq!(vs["tools"][0]["active"], false);
    assert_eq!(vs["tools"][2]["active"], false);
    assert_eq!(model.upstreams.len(), 2);
    assert_eq!(model.upstreams[1].cluster, "mcp_p2");
    assert_eq!(
        model.upstreams[1].url,
        "http://127.0.0.1:1/deep/path/mcp?x=1"
    );
    let exposed = &model.exposed["pol"];
    assert_eq!(exposed.tools[0]["name"], "p2.echo");
    assert_eq!(exposed.tools[0]["description"], "Echo the message back.");
}

/// The policy's members for the MCP server `name` in virtual server `vs`, from `/v1/policy`.
async fn policy_member(app: &TestApp, vs: &str, name: &str) -> toolmesh_proto::Member {
    let (s, policy) = app.get("/v1/policy").await;
    assert_eq!(s, StatusCode::OK, "{policy}");
    valid_policy(&policy)
        .virtual_servers
        .into_iter()
        .find(|v| v.name == vs)
        .and_then(|v| v.members.into_iter().find(|m| m.mcp_server == name))
        .unwrap_or_else(|| panic!("no member {name} in {vs}: {policy}"))
}

async fn stateless_versions_are_stored_shown_and_reach_the_policy(app: &TestApp) {
    // A server of the handshake era: none.
    seed(app, "old", &[], many_tools(2)).await;
    let (_, server) = app.get("/v1/mcp-servers/old").await;
    assert_eq!(server["health"]["modern_versions"], json!([]), "{server}");
    let (s, body) = app
        .post(
            "/v1/virtual-servers",
            json!({"name": "mv", "tools": [{"mcp_server": "old", "tool": "echo"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    assert!(
        policy_member(app, "mv", "old")
            .await
            .modern_versions
            .is_empty()
    );

    // The upstream now speaks 2026-07-28 too: stored, shown, in a new policy version.
    let v0 = app.version().await;
    app.state
        .store
        .apply_discovery("old", &discovered_speaking(many_tools(2), &["2026-07-28"]))
        .await
        .unwrap();
    let v1 = app.version().await;
    assert!(v1 > v0, "a new stateless version is a catalog change");
    let (_, server) = app.get("/v1/mcp-servers/old").await;
    assert_eq!(server["health"]["modern_versions"], json!(["2026-07-28"]));
    assert_eq!(server["health"]["protocol_version"], "2025-06-18");
    let (_, list) = app.get("/v1/mcp-servers").await;
    assert_eq!(
        list["items"][0]["health"]["modern_versions"],
        json!(["2026-07-28"]),
        "{list}"
    );
    assert_eq!(
        policy_member(app, "mv", "old").await.modern_versions,
        ["2026-07-28"]
    );

    // The same answer again changes nothing.
    app.state
        .store
        .apply_discovery("old", &discovered_speaking(many_tools(2), &["2026-07-28"]))
        .await
        .unwrap();
    assert_eq!(app.version().await, v1);

    // A failed discovery keeps what the last successful one saw (like protocol_version).
    app.state
        .store
        .apply_discovery(
            "old",
            &DiscoveryOutcome::Failure("connection refused".into()),
        )
        .await
        .unwrap();
    let (_, server) = app.get("/v1/mcp-servers/old").await;
    assert_eq!(server["health"]["status"], "down");
    assert_eq!(server["health"]["modern_versions"], json!(["2026-07-28"]));

    // Back to the handshake only (a downgrade): gone from the row and the policy.
    let v2 = app.version().await;
    app.state
        .store
        .apply_discovery("old", &discovered(many_tools(2)))
        .await
        .unwrap();
    assert!(app.version().await > v2);
    let (_, server) = app.get("/v1/mcp-servers/old").await;
    assert_eq!(server["health"]["modern_versions"], json!([]));
    assert!(
        policy_member(app, "mv", "old")
            .await
            .modern_versions
            .is_empty()
    );

    // The OpenAPI schema documents the field.
    let (_, doc) = app.raw(Method::GET, "/openapi.json", None, None, "").await;
    let field = &doc["components"]["schemas"]["Health"]["properties"]["modern_versions"];
    assert_eq!(field["type"], "array", "{field}");
    assert_eq!(field["items"]["type"], "string", "{field}");
}

async fn pagination_of_mcp_and_virtual_servers(app: &TestApp) {
    for i in 0..7 {
        app.post(
            "/v1/mcp-servers",
            json!({"name": format!("srv-{i}"), "url": UNREACHABLE}),
        )
        .await;
        app.post("/v1/virtual-servers", json!({"name": format!("vs-{i}")}))
            .await;
    }
    for base in ["/v1/mcp-servers", "/v1/virtual-servers"] {
        let mut names = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("{base}?limit=3&cursor={c}"),
                None => format!("{base}?limit=3"),
            };
            let (s, page) = app.get(&path).await;
            assert_eq!(s, StatusCode::OK);
            assert!(page["items"].as_array().unwrap().len() <= 3);
            names.extend(
                page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x["name"].as_str().unwrap().to_string()),
            );
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(names.len(), 7, "{base}: {names:?}");
    }
}

async fn version_channel_follows_changes(app: &TestApp) {
    let mut rx = app.state.catalog_version.clone();
    let before = *rx.borrow_and_update();
    app.post("/v1/mcp-servers", json!({"name": "w", "url": UNREACHABLE}))
        .await;
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("change seen")
        .unwrap();
    assert!(*rx.borrow() > before);
    assert_eq!(*rx.borrow() as i64, app.version().await);
}

async fn openapi_document_lists_every_route(app: &TestApp) {
    let (_, doc) = app.raw(Method::GET, "/openapi.json", None, None, "").await;
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/v1/mcp-servers",
        "/v1/mcp-servers/{name}",
        "/v1/mcp-servers/{name}/refresh",
        "/v1/tools",
        "/v1/tools/{id}",
        "/v1/tools/{id}/accept",
        "/v1/prompts",
        "/v1/resources",
        "/v1/resource-templates/{id}",
        "/v1/virtual-servers",
        "/v1/virtual-servers/{name}",
        "/v1/catalog/version",
        "/v1/policy",
        "/healthz",
        "/openapi.json",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["securitySchemes"]["admin_token"].is_object());
}
