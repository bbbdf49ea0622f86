//! Tokens scoped to virtual servers, enforced in Envoy (issue: access tokens).
//!
//! Real pieces only: the control plane in-process (REST API, store, signing keys, xDS), Envoy
//! from the shipped bootstrap with `jwt_authn` and the toolmesh filter configured over xDS, an
//! rmcp upstream that records what reaches it, and the official Python MCP client sending
//! `Authorization: Bearer …`. Forged tokens are built here by hand: `alg: none`, signed by
//! another key, a tampered payload.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use toolmesh_e2e::gateway::Gateway;
use toolmesh_e2e::test_servers::{RunningServer, TestServerConfig, spawn};
use toolmesh_e2e::{python_client, require, results, tools};

const CALL_ECHO: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}"#;

/// The RFC 9728 metadata URL a 401 of virtual server `vs` points at.
fn metadata_url(gw: &Gateway, vs: &str) -> String {
    format!(
        "http://127.0.0.1:{}/.well-known/oauth-protected-resource/servers/{vs}/mcp",
        gw.mcp_port()
    )
}

/// Upstream, control plane with three virtual servers (`team-a`, `team-b`, anonymous `open`),
/// and an Envoy in sync. `None` when Envoy, the wasm filter or Python are missing.
async fn gateway(node: &str) -> Option<(Gateway, RunningServer)> {
    require!(tools::python(), None);
    // Stateless with JSON responses: raw HTTP requests need no session.
    let upstream = spawn(TestServerConfig::stateless_json()).await.unwrap();
    // The registration's discovery finds the upstream up (checked by the builder).
    let mut builder = Gateway::builder(node).mcp_server("everything", &upstream.url());
    for (name, anonymous) in [("team-a", false), ("team-b", false), ("open", true)] {
        builder = builder.virtual_server(json!({
            "name": name,
            "anonymous": anonymous,
            "tools": [{"mcp_server": "everything", "tool": "echo"},
                      {"mcp_server": "everything", "tool": "add"}],
        }));
    }
    Some((builder.start().await?, upstream))
}

/// What a raw request got: status, `WWW-Authenticate`, JSON body.
#[derive(Debug)]
struct Answer {
    status: u16,
    www_authenticate: Option<String>,
    body: Value,
}

impl Answer {
    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or_default()
    }
    fn allowed(&self) -> bool {
        self.status == 200 && self.body.get("result").is_some()
    }
}

async fn post(client: &reqwest::Client, url: &str, bearer: Option<&str>, body: &str) -> Answer {
    let mut rq = client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .body(body.to_string());
    if let Some(t) = bearer {
        rq = rq.header("authorization", format!("Bearer {t}"));
    }
    answer(rq.send().await.expect("request through Envoy")).await
}

async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status().as_u16();
    let www_authenticate = resp
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| {
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|v| v.get("id").is_some())
            .unwrap_or(Value::String(text.clone()))
    });
    Answer {
        status,
        www_authenticate,
        body,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn segment_json(jwt: &str, i: usize) -> Value {
    let seg = jwt.split('.').nth(i).expect("JWT segment");
    serde_json::from_slice(&toolmesh::tokens::b64url_decode(seg).expect("base64url")).unwrap()
}

fn encode_json(v: &Value) -> String {
    toolmesh::tokens::b64url(v.to_string().as_bytes())
}

/// Assert a 401 with the MCP `WWW-Authenticate` header and a JSON-RPC error keeping the id.
#[track_caller]
fn assert_unauthorized(a: &Answer, gw: &Gateway, vs: &str, message_has: &str) {
    assert_eq!(a.status, 401, "{a:?}");
    let www = a.www_authenticate.as_deref().unwrap_or_default();
    assert!(
        www.starts_with("Bearer ")
            && www.contains(&format!("resource_metadata=\"{}\"", metadata_url(gw, vs))),
        "WWW-Authenticate: {www:?}"
    );
    assert_eq!(a.body["jsonrpc"], "2.0", "{a:?}");
    assert_eq!(a.body["id"], 7, "the request id is kept: {a:?}");
    assert!(
        a.message().contains(message_has),
        "message {:?} should mention {message_has:?}",
        a.message()
    );
}

#[track_caller]
fn assert_forbidden(a: &Answer, message_has: &str) {
    assert_eq!(a.status, 403, "{a:?}");
    assert_eq!(a.body["id"], 7, "the request id is kept: {a:?}");
    assert!(
        a.message().contains(message_has),
        "message {:?} should mention {message_has:?}",
        a.message()
    );
    assert!(
        a.www_authenticate
            .as_deref()
            .is_some_and(|w| w.contains("insufficient_scope")),
        "{a:?}"
    );
}

/// Valid tokens open exactly their virtual servers; every forged or misplaced token is refused
/// with a status and message a person can act on; no token reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_open_only_their_virtual_servers() {
    let Some((gw, upstream)) = gateway("tokens-1").await else {
        return;
    };
    let (token_a, meta_a) = gw
        .cp()
        .issue_token(&json!({"name": "agent-a", "virtual_servers": ["team-a"], "expires_in": 3600}))
        .await
        .unwrap();

    // The official client with the token: lists and calls.
    let doc = python_client(
        &gw.url("team-a"),
        &json!([
            {"op": "list_tools"},
            {"op": "call_tool", "name": "add", "arguments": {"a": 2, "b": 3}},
        ]),
        &[
            "--mode",
            "legacy",
            "--header",
            &format!("Authorization: Bearer {token_a}"),
        ],
    )
    .await
    .unwrap();
    let r = results(&doc);
    assert_eq!(r[0]["ok"], true, "{doc:#}");
    assert_eq!(r[1]["result"]["structuredContent"]["sum"], 5, "{doc:#}");
    // Without it, the client cannot even connect.
    let doc = python_client(
        &gw.url("team-a"),
        &json!([{"op": "list_tools"}]),
        &["--mode", "legacy"],
    )
    .await
    .unwrap();
    assert!(
        doc["connected"] == false || results(&doc)[0]["ok"] == false,
        "{doc:#}"
    );
    eprintln!("Python client without a token: {doc}");

    let c = client();
    let a = post(&c, &gw.url("team-a"), Some(&token_a), CALL_ECHO).await;
    assert!(a.allowed(), "{a:?}");

    // No token.
    let a = post(&c, &gw.url("team-a"), None, CALL_ECHO).await;
    assert_unauthorized(&a, &gw, "team-a", "no bearer token");
    assert!(
        !a.www_authenticate.as_deref().unwrap().contains("error="),
        "no error code when no token was sent (RFC 6750 3.1): {a:?}"
    );
    // Bodiless GET: refused before any body, id null.
    let resp = c
        .get(gw.url("team-a"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let a = answer(resp).await;
    assert_eq!(a.status, 401, "{a:?}");
    assert_eq!(a.body["id"], Value::Null);

    // The token of virtual server A on virtual server B.
    let a = post(&c, &gw.url("team-b"), Some(&token_a), CALL_ECHO).await;
    assert_forbidden(&a, "team-b");

    // `*` opens every virtual server.
    let (token_all, _) = gw
        .cp()
        .issue_token(&json!({"name": "ops", "virtual_servers": ["*"]}))
        .await
        .unwrap();
    for vs in ["team-a", "team-b"] {
        let a = post(&c, &gw.url(vs), Some(&token_all), CALL_ECHO).await;
        assert!(a.allowed(), "{vs}: {a:?}");
    }

    // Forgeries, all on team-a where the genuine token works.
    let header = segment_json(&token_a, 0);
    let payload = segment_json(&token_a, 1);
    let signature = token_a.split('.').nth(2).unwrap();
    let none_header = json!({"alg": "none", "typ": "JWT"});
    let alg_none = format!("{}.{}.", encode_json(&none_header), encode_json(&payload));
    let alg_none_signed = format!(
        "{}.{}.{signature}",
        encode_json(&none_header),
        encode_json(&payload)
    );
    // Algorithm confusion: HS256 under the EdDSA key's kid.
    let hs256 = format!(
        "{}.{}.{signature}",
        encode_json(&json!({"alg": "HS256", "typ": "JWT", "kid": header["kid"]})),
        encode_json(&payload)
    );
    let claims: toolmesh::tokens::Claims = serde_json::from_value(payload.clone()).unwrap();
    let (_, other_der, _) = toolmesh::tokens::generate_keypair();
    let kid = header["kid"].as_str().unwrap();
    let other_key_same_kid = toolmesh::tokens::sign(&claims, kid, &other_der).unwrap();
    let other_key_other_kid =
        toolmesh::tokens::sign(&claims, "not-a-toolmesh-key", &other_der).unwrap();
    let mut widened = payload.clone();
    widened["toolmesh_vs"] = json!("*");
    let tampered = format!(
        "{}.{}.{signature}",
        token_a.split('.').next().unwrap(),
        encode_json(&widened)
    );
    for (what, token, message_has) in [
        ("alg none", alg_none.as_str(), "not valid"),
        ("alg none with a signature", &alg_none_signed, "not valid"),
        ("alg HS256", &hs256, "signature"),
        ("another key, same kid", &other_key_same_kid, "signature"),
        ("another key", &other_key_other_kid, "signature"),
        ("tampered payload", &tampered, "signature"),
        ("not a JWT", "abc.def.ghi", "not valid"),
    ] {
        let a = post(&c, &gw.url("team-a"), Some(token), CALL_ECHO).await;
        eprintln!("{what}: {} {}", a.status, a.message());
        assert_unauthorized(&a, &gw, "team-a", message_has);
        assert!(
            a.www_authenticate
                .as_deref()
                .unwrap()
                .contains("error=\"invalid_token\""),
            "{what}: {a:?}"
        );
    }
    // The tampered token does not open team-b either.
    let a = post(&c, &gw.url("team-b"), Some(&tampered), CALL_ECHO).await;
    assert_eq!(a.status, 401, "{a:?}");

    // Source networks: the client is 127.0.0.1.
    let (far, _) = gw
        .cp()
        .issue_token(
            &json!({"name": "far", "virtual_servers": ["team-a"], "source_cidrs": ["10.0.0.0/8"]}),
        )
        .await
        .unwrap();
    let a = post(&c, &gw.url("team-a"), Some(&far), CALL_ECHO).await;
    assert_forbidden(&a, "127.0.0.1");
    let (near, _) = gw
        .cp()
        .issue_token(&json!({"name": "near", "virtual_servers": ["team-a"], "source_cidrs": ["10.0.0.0/8", "127.0.0.0/8"]}))
        .await
        .unwrap();
    let a = post(&c, &gw.url("team-a"), Some(&near), CALL_ECHO).await;
    assert!(a.allowed(), "{a:?}");

    // An anonymous virtual server needs no token (and ignores a bad one).
    let a = post(&c, &gw.url("open"), None, CALL_ECHO).await;
    assert!(a.allowed(), "{a:?}");
    let a = post(&c, &gw.url("open"), Some("abc.def.ghi"), CALL_ECHO).await;
    assert!(a.allowed(), "{a:?}");

    // The protected resource metadata the 401 points at (RFC 9728).
    let resp = c.get(metadata_url(&gw, "team-a")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["resource"], gw.url("team-a"), "{doc}");
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]), "{doc}");
    let resp = c
        .get(format!(
            "http://127.0.0.1:{}/.well-known/oauth-protected-resource/servers/nope/mcp",
            gw.mcp_port()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // A virtual-server token never opens the admin API.
    let resp = c
        .get(format!("{}/v1/tokens", gw.cp().api()))
        .bearer_auth(&token_all)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // Nothing the client sent as a bearer token ever reached the upstream.
    let seen = upstream.requests();
    assert!(seen.len() >= 5, "{} requests", seen.len());
    for r in &seen {
        assert!(
            r.header("authorization").is_none(),
            "Authorization reached the upstream: {r:?}"
        );
    }
    eprintln!(
        "token {} ok; {} upstream requests, none with Authorization",
        meta_a["id"],
        seen.len()
    );
}

/// A revoked token is refused on an already open connection within about a second; an expired
/// one once it expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_expired_tokens_stop_working() {
    let Some((gw, _upstream)) = gateway("tokens-2").await else {
        return;
    };
    let (token, meta) = gw
        .cp()
        .issue_token(&json!({"name": "soon-revoked", "virtual_servers": ["team-a"]}))
        .await
        .unwrap();
    let c = client();
    let a = post(&c, &gw.url("team-a"), Some(&token), CALL_ECHO).await;
    assert!(a.allowed(), "{a:?}");

    gw.cp()
        .ok(
            Method::DELETE,
            &format!("/v1/tokens/{}", meta["id"].as_str().unwrap()),
            None,
        )
        .await
        .unwrap();
    let revoked = Instant::now();
    let refused_after = loop {
        let a = post(&c, &gw.url("team-a"), Some(&token), CALL_ECHO).await;
        if a.status != 200 {
            assert_unauthorized(&a, &gw, "team-a", "revoked");
            break revoked.elapsed();
        }
        assert!(a.allowed(), "{a:?}");
        assert!(
            revoked.elapsed() < Duration::from_secs(10),
            "the revoked token still works after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("revocation enforced on an open connection after {refused_after:?}");
    // The issue's target is 1 s; allow a wide margin on a loaded 2-core machine.
    assert!(refused_after < Duration::from_secs(3), "{refused_after:?}");

    // Expiry: 1 s lifetime (plus Envoy's 5 s clock-skew allowance).
    let (short, _) = gw
        .cp()
        .issue_token(&json!({"name": "short", "virtual_servers": ["team-a"], "expires_in": 1}))
        .await
        .unwrap();
    let issued = Instant::now();
    let a = loop {
        let a = post(&c, &gw.url("team-a"), Some(&short), CALL_ECHO).await;
        if a.status != 200 {
            break a;
        }
        assert!(
            issued.elapsed() < Duration::from_secs(30),
            "an expired token still works after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!(
        "expired token refused {:?} after issue: {}",
        issued.elapsed(),
        a.message()
    );
    assert_unauthorized(&a, &gw, "team-a", "expired at ");
}

/// After a key rotation, tokens signed by the old key keep working and new tokens work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_keys_keep_old_tokens_valid() {
    let Some((gw, _upstream)) = gateway("tokens-3").await else {
        return;
    };
    let (old, old_meta) = gw
        .cp()
        .issue_token(&json!({"name": "old", "virtual_servers": ["team-a"]}))
        .await
        .unwrap();
    let c = client();
    assert!(
        post(&c, &gw.url("team-a"), Some(&old), CALL_ECHO)
            .await
            .allowed()
    );

    let key = gw
        .cp()
        .ok(Method::POST, "/v1/keys/rotate", None)
        .await
        .unwrap();
    gw.cp()
        .wait_envoys_in_sync(1, Duration::from_secs(30))
        .await
        .unwrap();
    let (new, new_meta) = gw
        .cp()
        .issue_token(&json!({"name": "new", "virtual_servers": ["team-a"]}))
        .await
        .unwrap();
    assert_eq!(new_meta["kid"], key["kid"]);
    assert_ne!(new_meta["kid"], old_meta["kid"]);
    // The new key reaches Envoy over ECDS: poll briefly rather than assume the push landed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let a = post(&c, &gw.url("team-a"), Some(&new), CALL_ECHO).await;
        if a.allowed() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new key's token is refused: {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = post(&c, &gw.url("team-a"), Some(&old), CALL_ECHO).await;
    assert!(a.allowed(), "the old key's token must stay valid: {a:?}");
}

/// A virtual server deleted and created again under the same name is not opened by tokens
/// issued for the deleted one: their claim names it, but they were meant for another server.
/// Tokens issued after the new one was created open it; the old token keeps its other virtual
/// servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_do_not_open_a_recreated_virtual_server_of_the_same_name() {
    let Some((gw, _upstream)) = gateway("tokens-4").await else {
        return;
    };
    let (old, _) = gw
        .cp()
        .issue_token(&json!({"name": "before", "virtual_servers": ["team-a", "team-b"]}))
        .await
        .unwrap();
    let c = client();
    assert!(
        post(&c, &gw.url("team-a"), Some(&old), CALL_ECHO)
            .await
            .allowed()
    );

    gw.cp()
        .ok(Method::DELETE, "/v1/virtual-servers/team-a", None)
        .await
        .unwrap();
    // Token issue times are whole seconds (the JWT's iat), and a token issued in the second a
    // virtual server was created is given the benefit of the doubt: let a second pass, as it
    // would between a deletion and someone reusing the name.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let body = json!({"name": "team-a", "description": "a different team's server",
        "tools": [{"mcp_server": "everything", "tool": "echo"}]});
    gw.cp()
        .ok(Method::POST, "/v1/virtual-servers", Some(&body))
        .await
        .unwrap();
    let (new, _) = gw
        .cp()
        .issue_token(&json!({"name": "after", "virtual_servers": ["team-a"]}))
        .await
        .unwrap();
    // Poll until Envoy has the new policy (the new token opens the new server).
    let start = Instant::now();
    loop {
        let a = post(&c, &gw.url("team-a"), Some(&new), CALL_ECHO).await;
        if a.allowed() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the new token never opened the new team-a: {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = post(&c, &gw.url("team-a"), Some(&old), CALL_ECHO).await;
    assert_forbidden(&a, "earlier virtual server named 'team-a'");
    assert!(
        post(&c, &gw.url("team-b"), Some(&old), CALL_ECHO)
            .await
            .allowed()
    );
}
