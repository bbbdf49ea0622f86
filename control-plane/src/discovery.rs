//! Running discovery against upstream MCP servers: on register, on refresh and on a schedule.
//!
//! Discovery talks to someone else's server, so it is fenced in: it runs in its own task (a
//! panic in the MCP client becomes a `down` health with a reason, never a 500), under the
//! configured deadline plus a small grace period (so a client that ignores its own deadline
//! still cannot block an API request), and its result is stored in one transaction afterwards —
//! never while a database transaction is open.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use toolmesh_discovery::{UpstreamSpec, discover};

use crate::crypto::{SecretKey, headers_context};
use crate::store::{DiscoveryOutcome, McpServerRecord, PageRequest, Store, Transport};

/// Grace on top of the discovery deadline before the call is abandoned.
const GRACE: Duration = Duration::from_secs(2);

/// Discover `url` with `headers`, within `timeout`; every failure becomes a reason string.
pub async fn discover_upstream(
    url: &str,
    transport: Transport,
    headers: Vec<(String, String)>,
    timeout: Duration,
) -> DiscoveryOutcome {
    let spec = UpstreamSpec {
        url: url.to_string(),
        transport: match transport {
            Transport::StreamableHttp => toolmesh_discovery::Transport::StreamableHttp,
            Transport::Sse => toolmesh_discovery::Transport::Sse,
        },
        headers,
        timeout,
    };
    let task = tokio::spawn(async move { discover(&spec).await });
    let abort = task.abort_handle();
    let outcome = match tokio::time::timeout(timeout + GRACE, task).await {
        Ok(Ok(Ok(d))) => DiscoveryOutcome::Success(Box::new(d)),
        Ok(Ok(Err(e))) => DiscoveryOutcome::Failure(e.to_string()),
        Ok(Err(join)) => DiscoveryOutcome::Failure(format!("discovery crashed: {join}")),
        Err(_) => {
            abort.abort();
            DiscoveryOutcome::Failure(format!("discovery timed out after {timeout:?}"))
        }
    };
    match &outcome {
        DiscoveryOutcome::Success(d) => tracing::info!(
            %url, tools = d.tools.len(), prompts = d.prompts.len(), resources = d.resources.len(),
            resource_templates = d.resource_templates.len(), latency_ms = d.latency.as_millis() as u64,
            "discovered MCP server"
        ),
        DiscoveryOutcome::Failure(reason) => {
            tracing::warn!(%url, %reason, "discovery of MCP server failed")
        }
    }
    outcome
}

/// Open an MCP server's stored credential headers.
pub fn open_headers(
    key: &SecretKey,
    rec: &McpServerRecord,
) -> Result<Vec<(String, String)>, crate::crypto::CryptoError> {
    let Some(sealed) = &rec.credential_headers else {
        return Ok(Vec::new());
    };
    let plain = key.open(&headers_context(&rec.name), sealed)?;
    let map: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&plain).map_err(|_| crate::crypto::CryptoError::Open)?;
    Ok(map.into_iter().collect())
}

/// Discover a stored MCP server (with its decrypted headers).
pub async fn discover_record(
    key: &SecretKey,
    rec: &McpServerRecord,
    timeout: Duration,
) -> DiscoveryOutcome {
    match open_headers(key, rec) {
        Ok(headers) => discover_upstream(&rec.url, rec.transport, headers, timeout).await,
        Err(e) => DiscoveryOutcome::Failure(format!("stored credentials: {e}")),
    }
}

/// Rediscover every MCP server every `interval`, a few at a time. Runs until aborted.
pub fn spawn_scheduler(
    store: Store,
    key: Arc<SecretKey>,
    interval: Duration,
    timeout: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate; register already discovered
        loop {
            ticker.tick().await;
            if let Err(e) = refresh_all(&store, &key, timeout).await {
                tracing::warn!(error = %e, "scheduled discovery could not list MCP servers");
            }
        }
    })
}

/// Rediscover every MCP server once.
pub async fn refresh_all(
    store: &Store,
    key: &SecretKey,
    timeout: Duration,
) -> Result<(), crate::store::StoreError> {
    let mut servers = Vec::new();
    let mut page = PageRequest {
        limit: 500,
        cursor: None,
    };
    loop {
        let p = store.list_mcp_servers(&page).await?;
        servers.extend(p.items);
        match p.next_cursor {
            Some(c) => page.cursor = Some(c),
            None => break,
        }
    }
    futures::stream::iter(servers)
        .map(|rec| async move {
            let outcome = discover_record(key, &rec, timeout).await;
            if let Err(e) = store.apply_discovery(&rec.name, &outcome).await {
                // The server may have been deleted meanwhile.
                tracing::debug!(mcp_server = %rec.name, error = %e, "discovery result not stored");
            }
        })
        .buffer_unordered(4)
        .collect::<Vec<()>>()
        .await;
    Ok(())
}
