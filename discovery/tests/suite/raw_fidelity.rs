//! Items are stored exactly as the server sent them, including fields rmcp's typed model does
//! not know; and a server that stalls half-way through the pages still times out.
//!
//! The rmcp test servers cannot send unknown fields (they serialize rmcp's own types), so these
//! tests use a minimal hand-written Streamable HTTP server (`crate::mini`).

use std::time::{Duration, Instant};

use serde_json::json;
use toolmesh_discovery::{DiscoveryError, discover};

use crate::mini::{Mode, mini_server, page_one, page_two, spec};

#[tokio::test]
async fn unknown_fields_survive_discovery() {
    let (url, _, task) = mini_server(Mode::Legacy).await;
    let found = discover(&spec(url, Duration::from_secs(20)))
        .await
        .expect("discovery");
    assert_eq!(found.tools, vec![page_one(), page_two()]);
    assert_eq!(found.protocol_version, "2025-06-18");
    assert_eq!(found.server_info["x-build"], "abc");
    assert_eq!(found.capabilities["experimental"], json!({"x-mini": {}}));
    // Unannounced lists are not requested (the server would answer method-not-found).
    assert!(found.prompts.is_empty() && found.resources.is_empty());
    task.abort();
}

#[tokio::test]
async fn a_server_stalling_mid_discovery_times_out() {
    let (url, _, task) = mini_server(Mode::HangOn("tools/list")).await;
    let timeout = Duration::from_secs(1);
    let start = Instant::now();
    let result = discover(&spec(url, timeout)).await;
    let elapsed = start.elapsed();
    assert_eq!(result, Err(DiscoveryError::Timeout(timeout)));
    assert!(
        elapsed < timeout + Duration::from_secs(5),
        "took {elapsed:?}"
    );
    task.abort();
}

#[tokio::test]
async fn a_2026_07_28_only_server_is_discovered_with_server_discover() {
    let (url, _, task) = mini_server(Mode::ModernOnly).await;
    let found = discover(&spec(url, Duration::from_secs(20)))
        .await
        .expect("discovery falls back to server/discover");
    assert_eq!(found.protocol_version, "2026-07-28");
    assert_eq!(found.server_info["name"], "mini-modern");
    assert_eq!(found.instructions.as_deref(), Some("modern mini"));
    assert_eq!(found.tools, vec![page_one(), page_two()]);
    task.abort();
}
