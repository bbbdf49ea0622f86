//! `Discovered::modern_versions`: the stateless protocol versions (2026-07-28 and later) an
//! upstream lists in its `server/discover` answer, against real rmcp servers (which speak both
//! eras) and against servers of the handshake era that refuse `server/discover`.

use std::time::{Duration, Instant};

use serde_json::json;
use toolmesh_discovery::{DiscoveryError, Transport, UpstreamSpec, discover};
use toolmesh_test_servers::{TOOL_COUNT, TestServerConfig, spawn};

use crate::mini::{Mode, mini_server, page_one, page_two, received, spec};

const TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn rmcp_servers_list_2026_07_28_whatever_they_answer_with() {
    // Stateful with SSE answers, stateless with SSE answers, stateless with JSON answers.
    for (stateful, json_response) in [(true, false), (false, false), (false, true)] {
        let upstream = spawn(TestServerConfig {
            stateful,
            json_response,
            ..TestServerConfig::default()
        })
        .await
        .expect("test server starts");
        let found = discover(&UpstreamSpec {
            url: upstream.url(),
            transport: Transport::StreamableHttp,
            headers: Vec::new(),
            timeout: TIMEOUT,
        })
        .await
        .expect("discovery");
        let mode = format!("stateful={stateful} json={json_response}");
        // The session itself used the handshake; the catalog is unaffected by the probe.
        assert_eq!(found.protocol_version, "2025-11-25", "{mode}");
        assert_eq!(found.tools.len(), TOOL_COUNT, "{mode}");
        assert_eq!(found.modern_versions, ["2026-07-28"], "{mode}");
        upstream.shutdown().await;
    }
}

#[tokio::test]
async fn the_probe_is_one_sessionless_2026_07_28_request_with_the_operators_headers() {
    let upstream = spawn(TestServerConfig::default())
        .await
        .expect("test server starts");
    let found = discover(&UpstreamSpec {
        url: upstream.url(),
        transport: Transport::StreamableHttp,
        headers: vec![("Authorization".into(), "Bearer upstream-secret".into())],
        timeout: TIMEOUT,
    })
    .await
    .expect("discovery");
    assert_eq!(found.modern_versions, ["2026-07-28"]);
    let probes: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.jsonrpc_method.as_deref() == Some("server/discover"))
        .collect();
    assert_eq!(probes.len(), 1, "{probes:?}");
    let probe = &probes[0];
    assert_eq!(probe.method, "POST");
    assert_eq!(probe.header("mcp-protocol-version"), Some("2026-07-28"));
    assert_eq!(probe.header("mcp-method"), Some("server/discover"));
    assert_eq!(probe.header("content-type"), Some("application/json"));
    assert_eq!(
        probe.header("accept"),
        Some("application/json, text/event-stream")
    );
    assert_eq!(
        probe.header("authorization"),
        Some("Bearer upstream-secret")
    );
    assert_eq!(probe.header("mcp-session-id"), None, "no session");
    let meta = &probe.body.as_ref().expect("a JSON body")["params"]["_meta"];
    assert_eq!(
        meta["io.modelcontextprotocol/protocolVersion"],
        "2026-07-28"
    );
    assert_eq!(
        meta["io.modelcontextprotocol/clientCapabilities"],
        json!({})
    );
    assert_eq!(
        meta["io.modelcontextprotocol/clientInfo"]["name"],
        "toolmesh-discovery"
    );
    upstream.shutdown().await;
}

#[tokio::test]
async fn an_rmcp_server_of_the_handshake_era_lists_none() {
    // Stateful (SSE answers) and stateless (JSON answers): server/discover gets -32022.
    for config in [
        TestServerConfig {
            handshake_only: true,
            ..TestServerConfig::default()
        },
        TestServerConfig {
            handshake_only: true,
            ..TestServerConfig::stateless_json()
        },
    ] {
        let upstream = spawn(config.clone()).await.expect("test server starts");
        let found = discover(&UpstreamSpec {
            url: upstream.url(),
            transport: Transport::StreamableHttp,
            headers: Vec::new(),
            timeout: TIMEOUT,
        })
        .await
        .expect("discovery");
        assert_eq!(found.tools.len(), TOOL_COUNT, "{config:?}");
        assert!(
            found.modern_versions.is_empty(),
            "{config:?}: {:?}",
            found.modern_versions
        );
        // It was asked.
        assert_eq!(
            upstream
                .jsonrpc_methods()
                .iter()
                .filter(|m| *m == "server/discover")
                .count(),
            1,
            "{config:?}"
        );
        upstream.shutdown().await;
    }
}

#[tokio::test]
async fn a_json_rpc_error_to_server_discover_means_none() {
    let (url, methods, task) = mini_server(Mode::Legacy).await;
    let found = discover(&spec(url, TIMEOUT)).await.expect("discovery");
    assert_eq!(found.tools, vec![page_one(), page_two()]);
    assert!(
        found.modern_versions.is_empty(),
        "{:?}",
        found.modern_versions
    );
    // It was asked (and answered "method not found").
    let methods = received(&methods);
    assert_eq!(
        methods.iter().filter(|m| *m == "server/discover").count(),
        1,
        "{methods:?}"
    );
    task.abort();
}

#[tokio::test]
async fn an_http_400_to_server_discover_means_none() {
    let (url, methods, task) = mini_server(Mode::RejectDiscover).await;
    let found = discover(&spec(url, TIMEOUT)).await.expect("discovery");
    assert_eq!(found.protocol_version, "2025-06-18");
    assert_eq!(found.tools, vec![page_one(), page_two()]);
    assert!(
        found.modern_versions.is_empty(),
        "{:?}",
        found.modern_versions
    );
    assert!(received(&methods).iter().any(|m| m == "server/discover"));
    task.abort();
}

#[tokio::test]
async fn a_server_that_never_answers_server_discover_is_still_discovered_in_time() {
    let (url, _, task) = mini_server(Mode::HangOn("server/discover")).await;
    let timeout = Duration::from_secs(2);
    let start = Instant::now();
    let result = discover(&spec(url, timeout)).await;
    let elapsed = start.elapsed();
    match result {
        Ok(found) => {
            assert_eq!(found.tools, vec![page_one(), page_two()]);
            assert!(
                found.modern_versions.is_empty(),
                "{:?}",
                found.modern_versions
            );
        }
        Err(error) => panic!("a hung probe failed the discovery: {error:?}"),
    }
    // The probe waits for what is left of the deadline, no longer (plus the session close).
    assert!(
        elapsed < timeout + Duration::from_secs(3),
        "took {elapsed:?}"
    );
    task.abort();
}

#[tokio::test]
async fn a_stateless_only_server_lists_the_versions_of_its_handshake() {
    let (url, methods, task) = mini_server(Mode::ModernOnly).await;
    let found = discover(&spec(url, TIMEOUT)).await.expect("discovery");
    assert_eq!(found.protocol_version, "2026-07-28");
    assert_eq!(found.modern_versions, ["2026-07-28"]);
    // The session's own server/discover answered; no second probe.
    let methods = received(&methods);
    assert_eq!(
        methods.iter().filter(|m| *m == "server/discover").count(),
        1,
        "{methods:?}"
    );
    task.abort();
}

#[tokio::test]
async fn a_failed_discovery_does_not_probe() {
    let (url, methods, task) = mini_server(Mode::HangOn("tools/list")).await;
    let result = discover(&spec(url, Duration::from_secs(1))).await;
    assert!(
        matches!(result, Err(DiscoveryError::Timeout(_))),
        "{result:?}"
    );
    assert!(
        !received(&methods).iter().any(|m| m == "server/discover"),
        "{:?}",
        received(&methods)
    );
    task.abort();
}
