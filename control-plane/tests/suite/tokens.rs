//! Tokens and signing keys through the REST API, on SQLite and on Postgres.
//!
//! What Envoy and the filter do with the tokens is tested end to end in `tests/tests/e2e/tokens.rs`;
//! here: what is issued (a JWT that verifies against the published JWKS, with the claims the
//! filter reads), what is stored (never the token), validation naming the field, revocation
//! reaching the policy, key rotation and the JWKS, and that a token never opens `/v1`.

use crate::common;

use axum::http::{Method, StatusCode};
use common::{TestApp, assert_error};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

async fn vs(app: &TestApp, name: &str, anonymous: bool) {
    let (s, v) = app
        .post(
            "/v1/virtual-servers",
            json!({"name": name, "anonymous": anonymous}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["anonymous"], anonymous, "{v}");
}

async fn issue(app: &TestApp, body: Value) -> Value {
    let (s, v) = app.post("/v1/tokens", body).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

async fn public_jwks(app: &TestApp) -> Value {
    let (s, jwks) = app
        .raw(
            Method::GET,
            "/.well-known/jwks.json",
            None,
            None,
            "application/json",
        )
        .await;
    assert_eq!(s, StatusCode::OK, "the JWKS is public: {jwks}");
    jwks
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

/// Verify `jwt` against the JWKS like Envoy would: key by `kid`, EdDSA, issuer and audience.
fn verify(jwt: &str, jwks: &Value) -> Value {
    let header = jsonwebtoken::decode_header(jwt).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    let kid = header.kid.expect("kid");
    let jwk = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .unwrap_or_else(|| panic!("kid {kid} not in {jwks}"));
    assert_eq!(
        (&jwk["kty"], &jwk["crv"], &jwk["alg"]),
        (&json!("OKP"), &json!("Ed25519"), &json!("EdDSA"))
    );
    let key = DecodingKey::from_ed_components(jwk["x"].as_str().unwrap()).unwrap();
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_issuer(&["toolmesh"]);
    v.set_audience(&["toolmesh"]);
    v.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(jwt, &key, &v)
        .unwrap_or_else(|e| panic!("{jwt} does not verify: {e}"))
        .claims
}

async fn policy(app: &TestApp) -> Value {
    let (s, p) = app.get("/v1/policy").await;
    assert_eq!(s, StatusCode::OK, "{p}");
    p
}

async fn issued_token_verifies_and_is_never_stored(app: &TestApp) {
    vs(app, "team-a", false).await;
    vs(app, "team-b", false).await;
    let v_before = app.version().await;
    let created = issue(
        app,
        json!({"name": "agent one", "virtual_servers": ["team-a", "team-b"], "expires_in": 3600,
               "source_cidrs": ["10.1.2.3/8", "127.0.0.1", "2001:db8::1/32"], "description": "ci"}),
    )
    .await;
    assert!(
        app.version().await > v_before,
        "issuing is a catalog change: the token joins its virtual servers' callers"
    );
    let jwt = created["token"].as_str().unwrap();
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("tok_"), "{created}");
    assert_eq!(created["status"], "active");
    assert_eq!(
        created["source_cidrs"],
        json!(["10.0.0.0/8", "127.0.0.1/32", "2001:db8::/32"])
    );
    assert!(created["revoked_at"].is_null());

    let claims = verify(jwt, &public_jwks(app).await);
    assert_eq!(claims["jti"], id);
    assert_eq!(claims["sub"], "agent one");
    assert_eq!(claims["toolmesh_vs"], "team-a team-b");
    assert_eq!(
        claims["toolmesh_cidrs"],
        "10.0.0.0/8 127.0.0.1/32 2001:db8::/32"
    );
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert_eq!(exp - iat, 3600);
    let expires_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(created["expires_at"].clone()).unwrap();
    assert_eq!(expires_at.timestamp(), exp);

    // No expiry and every virtual server.
    let forever = issue(app, json!({"name": "ops", "virtual_servers": ["*"]})).await;
    let c = verify(forever["token"].as_str().unwrap(), &public_jwks(app).await);
    assert_eq!(c["toolmesh_vs"], "*");
    assert!(
        c.get("exp").is_none() && c.get("toolmesh_cidrs").is_none(),
        "{c}"
    );
    assert!(forever["expires_at"].is_null());

    // Metadata only, from now on.
    let (s, shown) = app.get(&format!("/v1/tokens/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(shown.get("token").is_none(), "{shown}");
    assert_eq!(shown["name"], "agent one");
    assert_eq!(shown["virtual_servers"], json!(["team-a", "team-b"]));
    let (_, list) = app.get("/v1/tokens").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    assert!(!list.to_string().contains(jwt));
    let signature = jwt.rsplit('.').next().unwrap();
    if app.backend == "sqlite" {
        let path = app.db_url.trim_start_matches("sqlite://");
        let path = path.split('?').next().unwrap();
        for file in [path.to_string(), format!("{path}-wal")] {
            if let Ok(bytes) = std::fs::read(&file) {
                assert!(
                    !bytes
                        .windows(signature.len())
                        .any(|w| w == signature.as_bytes()),
                    "the token is in {file}"
                );
            }
        }
    }
}

async fn validation_names_the_field(app: &TestApp) {
    vs(app, "team-a", false).await;
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"name": "x", "virtual_servers": ["team-a", "nope"]}),
            "virtual_servers[1]",
        ),
        (
            json!({"name": "x", "virtual_servers": ["Bad Name"]}),
            "virtual_servers[0]",
        ),
        (
            json!({"name": "x", "virtual_servers": ["team-a", "*"]}),
            "virtual_servers[1]",
        ),
        (
            json!({"name": "x", "virtual_servers": ["team-a", "team-a"]}),
            "virtual_servers[1]",
        ),
        (
            json!({"name": "x", "virtual_servers": []}),
            "virtual_servers",
        ),
        (json!({"name": "x"}), "virtual_servers"),
        (
            json!({"name": "x", "virtual_servers": ["team-a"], "source_cidrs": ["10.0.0.0/8", "10.0.0.0/33"]}),
            "source_cidrs[1]",
        ),
        (
            json!({"name": "x", "virtual_servers": ["team-a"], "source_cidrs": ["example.com"]}),
            "source_cidrs[0]",
        ),
        (
            json!({"name": "x", "virtual_servers": ["team-a"], "expires_in": 0}),
            "expires_in",
        ),
        (
            json!({"name": "x", "virtual_servers": ["team-a"], "expires_in": -5}),
            "expires_in",
        ),
        (
            json!({"name": "x", "virtual_servers": ["team-a"], "expires_in": 999_999_999_999u64}),
            "expires_in",
        ),
        (json!({"name": " ", "virtual_servers": ["team-a"]}), "name"),
        (
            json!({"name": "x", "virtual_servers": ["team-a"], "scope": "all"}),
            "scope",
        ),
    ];
    for (body, field) in cases {
        let got = app.post("/v1/tokens", body.clone()).await;
        assert_error(&got, StatusCode::UNPROCESSABLE_ENTITY, Some(field));
        eprintln!("{body} -> {}", got.1["error"]["message"]);
    }
    let (_, list) = app.get("/v1/tokens").await;
    assert_eq!(
        list["items"],
        json!([]),
        "nothing stored by failed requests"
    );
}

async fn revocation_reaches_the_policy(app: &TestApp) {
    vs(app, "team-a", false).await;
    let t = issue(app, json!({"name": "a", "virtual_servers": ["team-a"]})).await;
    let id = t["id"].as_str().unwrap();
    let p = policy(app).await;
    assert!(p.get("revoked_token_ids").is_none(), "{p}");
    let v = app.version().await;
    let (s, revoked) = app.delete(&format!("/v1/tokens/{id}")).await;
    assert_eq!(s, StatusCode::OK, "{revoked}");
    assert_eq!(revoked["status"], "revoked");
    assert!(revoked["revoked_at"].is_string());
    assert!(
        app.version().await > v,
        "a revocation is a catalog change (pushed to Envoy)"
    );
    assert_eq!(policy(app).await["revoked_token_ids"], json!([id]));
    // Idempotent: the first revocation time stays.
    let v = app.version().await;
    let (s, again) = app.delete(&format!("/v1/tokens/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["revoked_at"], revoked["revoked_at"]);
    assert_eq!(app.version().await, v);
    assert_error(
        &app.delete("/v1/tokens/tok_nope").await,
        StatusCode::NOT_FOUND,
        None,
    );
    let (_, list) = app.get("/v1/tokens").await;
    assert_eq!(list["items"][0]["status"], "revoked");
}

async fn tokens_list_in_pages(app: &TestApp) {
    for i in 0..5 {
        issue(
            app,
            json!({"name": format!("t{i}"), "virtual_servers": ["*"]}),
        )
        .await;
    }
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/tokens?limit=2&cursor={c}"),
            None => "/v1/tokens?limit=2".to_string(),
        };
        let (s, page) = app.get(&path).await;
        assert_eq!(s, StatusCode::OK, "{page}");
        for t in page["items"].as_array().unwrap() {
            names.push(t["name"].as_str().unwrap().to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(names, ["t0", "t1", "t2", "t3", "t4"]);
    assert_error(
        &app.get("/v1/tokens?cursor=abc").await,
        StatusCode::BAD_REQUEST,
        Some("cursor"),
    );
}

async fn a_token_never_opens_the_admin_api(app: &TestApp) {
    let t = issue(app, json!({"name": "a", "virtual_servers": ["*"]})).await;
    let jwt = t["token"].as_str().unwrap();
    for path in ["/v1/tokens", "/v1/virtual-servers", "/v1/policy"] {
        let got = app
            .raw(Method::GET, path, None, Some(jwt), "application/json")
            .await;
        assert_error(&got, StatusCode::UNAUTHORIZED, None);
    }
    let got = app
        .raw(
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "escalate", "virtual_servers": ["*"]}).to_string()),
            Some(jwt),
            "application/json",
        )
        .await;
    assert_error(&got, StatusCode::UNAUTHORIZED, None);
    let got = app
        .raw(
            Method::POST,
            "/v1/keys/rotate",
            None,
            None,
            "application/json",
        )
        .await;
    assert_error(&got, StatusCode::UNAUTHORIZED, None);
}

async fn rotation_keeps_old_tokens_verifiable(app: &TestApp) {
    let jwks0 = public_jwks(app).await;
    assert_eq!(kids(&jwks0).len(), 1, "one key from the first start");
    let old = issue(app, json!({"name": "old", "virtual_servers": ["*"]})).await;
    let old_kid = old["kid"].as_str().unwrap().to_string();
    assert_eq!(kids(&jwks0), std::slice::from_ref(&old_kid));

    let v = app.version().await;
    let (s, k) = app.post("/v1/keys/rotate", json!({})).await;
    assert_eq!(s, StatusCode::CREATED, "{k}");
    assert!(app.version().await > v, "a new key is pushed to Envoy");
    let new_kid = k["kid"].as_str().unwrap().to_string();
    assert_ne!(new_kid, old_kid);
    let new = issue(app, json!({"name": "new", "virtual_servers": ["*"]})).await;
    assert_eq!(new["kid"], new_kid.as_str(), "new tokens use the new key");

    let jwks = public_jwks(app).await;
    let mut both = kids(&jwks);
    both.sort();
    let mut want = vec![old_kid.clone(), new_kid.clone()];
    want.sort();
    assert_eq!(both, want, "the old key stays while its token is live");
    verify(old["token"].as_str().unwrap(), &jwks);
    verify(new["token"].as_str().unwrap(), &jwks);
    let pjwks: Value =
        serde_json::from_str(policy(app).await["auth"]["jwks"].as_str().unwrap()).unwrap();
    assert_eq!(pjwks, jwks, "Envoy gets the same JWKS");

    let (_, keys) = app.get("/v1/keys").await;
    let active: Vec<&Value> = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["active"] == true)
        .collect();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["kid"], new_kid.as_str());

    // Its only token revoked: the old key leaves the JWKS.
    app.delete(&format!("/v1/tokens/{}", old["id"].as_str().unwrap()))
        .await;
    assert_eq!(kids(&public_jwks(app).await), [new_kid]);
}

async fn anonymous_virtual_servers_reach_the_policy(app: &TestApp) {
    vs(app, "open", true).await;
    vs(app, "closed", false).await;
    let p = policy(app).await;
    assert_eq!(p["auth"]["anonymous_virtual_servers"], json!(["open"]));
    assert_eq!(p["auth"]["public_url"], "http://mcp.example:8080");
    let (s, v) = app
        .put(
            "/v1/virtual-servers/open",
            json!({"description": "now closed"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["anonymous"], false, "omitted means false");
    let p = policy(app).await;
    assert!(p["auth"].get("anonymous_virtual_servers").is_none(), "{p}");
}

both_backends!(
    issued_token_verifies_and_is_never_stored,
    validation_names_the_field,
    revocation_reaches_the_policy,
    tokens_list_in_pages,
    a_token_never_opens_the_admin_api,
    rotation_keeps_old_tokens_verifiable,
    anonymous_virtual_servers_reach_the_policy,
    callers_in_the_policy_follow_issue_revoke_and_expiry,
);

/// The callers of a virtual server's per-token stats: the tokens that open it (by name or
/// `*`), not revoked, not expired, at most `--caller-stats-limit` (the newest win).
async fn callers_in_the_policy_follow_issue_revoke_and_expiry(app: &TestApp) {
    vs(app, "team-a", false).await;
    vs(app, "team-b", false).await;
    let callers = |p: &Value, vs: &str| -> Vec<String> {
        let v = p["virtual_servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == vs)
            .unwrap_or_else(|| panic!("{vs} in {p}"));
        v["callers"]
            .as_array()
            .map(|a| a.iter().map(|c| c.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let p = policy(app).await;
    assert!(callers(&p, "team-a").is_empty(), "{p}");

    let mut versions = app.state.store.subscribe();
    versions.borrow_and_update();
    let id = |t: &Value| t["id"].as_str().unwrap().to_string();
    let a = id(&issue(app, json!({"name": "a", "virtual_servers": ["team-a"]})).await);
    assert!(
        versions.has_changed().unwrap(),
        "issuing wakes the publisher"
    );
    let all = id(&issue(app, json!({"name": "all", "virtual_servers": ["*"]})).await);
    let ab = id(&issue(
        app,
        json!({"name": "ab", "virtual_servers": ["team-a", "team-b"], "expires_in": 3600}),
    )
    .await);
    let p = policy(app).await;
    // In issue order.
    assert_eq!(
        callers(&p, "team-a"),
        [a.as_str(), all.as_str(), ab.as_str()],
        "{p}"
    );
    assert_eq!(callers(&p, "team-b"), [all.as_str(), ab.as_str()], "{p}");

    // Revoked: gone at once.
    let (s, _) = app.delete(&format!("/v1/tokens/{all}")).await;
    assert_eq!(s, StatusCode::OK);
    let p = policy(app).await;
    assert_eq!(callers(&p, "team-a"), [a.as_str(), ab.as_str()]);
    assert_eq!(callers(&p, "team-b"), [ab.as_str()]);

    // Expired: gone; and the model said when to compile again.
    let model = toolmesh::gateway_model(&app.state.store).await.unwrap();
    let refresh = model.refresh_at.expect("a listed token expires");
    assert!(
        refresh > chrono::Utc::now() + chrono::Duration::minutes(59),
        "{refresh}"
    );
    let past = if app.backend == "postgres" {
        "now() - interval '1 minute'".to_string()
    } else {
        format!(
            "'{}'",
            (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339()
        )
    };
    assert_eq!(
        app.exec_sql(&format!(
            "UPDATE tokens SET expires_at = {past} WHERE id = '{ab}'"
        ))
        .await,
        1
    );
    let p = policy(app).await;
    assert_eq!(callers(&p, "team-a"), [a.as_str()]);
    assert!(callers(&p, "team-b").is_empty(), "{p}");

    // The cap keeps the newest.
    let b1 = id(&issue(app, json!({"name": "b1", "virtual_servers": ["team-a"]})).await);
    let b2 = id(&issue(app, json!({"name": "b2", "virtual_servers": ["team-a"]})).await);
    let capped = |limit: usize| toolmesh::PolicySettings {
        caller_stats_limit: limit,
        ..Default::default()
    };
    let model = toolmesh::gateway_model_with(&app.state.store, &capped(2))
        .await
        .unwrap();
    assert_eq!(
        callers(&serde_json::to_value(&model.policy).unwrap(), "team-a"),
        [b1.as_str(), b2.as_str()]
    );
    let model = toolmesh::gateway_model_with(&app.state.store, &capped(0))
        .await
        .unwrap();
    assert!(
        model
            .policy
            .virtual_servers
            .iter()
            .all(|v| v.callers.is_empty())
    );
    assert_eq!(model.refresh_at, None);
    // The snapshot with callers, as published, is one the filter accepts.
    let model = toolmesh::gateway_model(&app.state.store).await.unwrap();
    let published = toolmesh::gateway::to_xds_model(&model, &app.state.key).unwrap();
    assert_eq!(published.policy.virtual_servers[0].callers.len(), 3);
    published.policy.validate().expect("valid policy");
}

/// Run the `toolmesh` CLI; returns (success, stdout, stderr).
async fn cli(api: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_toolmesh"))
        .args(args)
        .env("TOOLMESH_API_URL", api)
        .env("TOOLMESH_ADMIN_TOKEN", common::TOKEN)
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output()
        .await
        .expect("CLI ran");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `toolmesh tokens create|list|revoke|rotate-key` against a live server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_cli_against_a_live_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = toolmesh::ServeConfig::with_data_dir(dir.path());
    config.admin_token = Some(common::TOKEN.into());
    config.api_port = 0;
    config.discovery_interval_secs = 0;
    config.discovery_watch = false;
    config.xds_port = 0;
    let state = toolmesh::build_state(&config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        toolmesh::serve(state, listener, &config, async {
            let _ = stopped.await;
        })
        .await
    });
    let (ok, out, err) = cli(&api, &["virtual-servers", "create", "team-a"]).await;
    assert!(ok, "{out}{err}");

    let (ok, out, err) = cli(
        &api,
        &[
            "tokens",
            "create",
            "ci agent",
            "--virtual-server",
            "team-a",
            "--expires-in",
            "600",
            "--source-cidr",
            "10.0.0.0/8",
        ],
    )
    .await;
    assert!(ok, "{out}{err}");
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("token: "))
        .unwrap_or_else(|| panic!("no token line: {out}"));
    assert_eq!(token.split('.').count(), 3, "{out}");
    assert!(out.contains("shown only now"), "{out}");
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap()
        .to_string();

    let (ok, out, _) = cli(&api, &["tokens", "list"]).await;
    assert!(ok);
    assert!(
        out.contains(&id) && out.contains("team-a") && out.contains("10.0.0.0/8"),
        "{out}"
    );
    assert!(out.contains("active") && !out.contains(token), "{out}");

    let (ok, out, err) = cli(&api, &["tokens", "revoke", &id]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("revoked token"), "{out}");
    let (_, out, _) = cli(&api, &["tokens", "list", "--json"]).await;
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["items"][0]["status"], "revoked", "{v}");

    let (ok, out, err) = cli(&api, &["tokens", "rotate-key"]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("new signing key"), "{out}");

    // The API's message, naming the field, and a failing exit.
    let (ok, _, err) = cli(&api, &["tokens", "create", "x", "--virtual-server", "nope"]).await;
    assert!(!ok);
    assert!(
        err.contains("virtual_servers[0]") && err.contains("unknown virtual server 'nope'"),
        "{err}"
    );
    let _ = stop.send(());
    let _ = server.await;
}
