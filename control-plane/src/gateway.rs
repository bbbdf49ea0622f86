//! The bridge from the catalog to Envoy: every catalog change becomes a new xDS snapshot.
//!
//! [`spawn_publisher`] watches [`crate::AppState::catalog_version`] (bumped by REST writes and by
//! discovery, and on Postgres by other replicas through LISTEN/NOTIFY), reads the catalog at one
//! version with [`crate::gateway_model`], and publishes it to the ADS server of `toolmesh-xds`.
//! The xDS layer computes a content hash per resource type, so only the types that changed are
//! pushed, and a model that cannot be expressed keeps the last good snapshot serving. The watch
//! channel coalesces bursts: a flurry of writes yields one build of the latest version.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use toolmesh_xds::{GatewayModel, UpstreamEndpoint, XdsHandle};

use crate::crypto::{SecretKey, headers_context};
use crate::policy;
use crate::store::Store;

/// What the last publish saw, for `/metrics` and logs.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PublishedCatalog {
    /// Catalog version of the last successful publish.
    pub catalog_version: u64,
    /// Registered MCP servers (clusters).
    pub mcp_servers: usize,
    /// Virtual servers in the policy.
    pub virtual_servers: usize,
    /// Tools exposed across all virtual servers.
    pub exposed_tools: usize,
    /// Failed attempts to read or publish the catalog since start.
    pub publish_errors: u64,
}

/// Shared view of the publisher's progress.
pub type PublishedState = Arc<Mutex<PublishedCatalog>>;

/// Convert the catalog's gateway model to the xDS model, opening each upstream's sealed
/// credential headers so Envoy can set them on every request to the MCP server (by its
/// cluster), and adding the session-sealing key derived from `key`.
pub fn to_xds_model(model: &policy::GatewayModel, key: &SecretKey) -> Result<GatewayModel, String> {
    let mut upstreams = Vec::with_capacity(model.upstreams.len());
    for u in &model.upstreams {
        let request_headers = match &u.sealed_credentials {
            None => Vec::new(),
            Some(sealed) => {
                let plain = key
                    .open(&headers_context(&u.mcp_server), sealed)
                    .map_err(|e| format!("credentials of MCP server {:?}: {e}", u.mcp_server))?;
                let map: std::collections::BTreeMap<String, String> =
                    serde_json::from_slice(&plain).map_err(|e| {
                        format!("credentials of MCP server {:?}: {e}", u.mcp_server)
                    })?;
                map.into_iter().collect()
            }
        };
        upstreams.push(UpstreamEndpoint {
            mcp_server: u.mcp_server.clone(),
            cluster: u.cluster.clone(),
            url: u.url.clone(),
            request_headers,
        });
    }
    let mut policy = model.policy.clone();
    policy.sessions.keys = vec![key.session_key()];
    Ok(GatewayModel { policy, upstreams })
}

/// Read the catalog and publish it once; returns the catalog version and when the published
/// model goes stale without a catalog change (a listed caller's token expires).
pub async fn publish_once(
    store: &Store,
    xds: &XdsHandle,
    published: &PublishedState,
    settings: &policy::PolicySettings,
    key: &SecretKey,
) -> Result<(u64, Option<chrono::DateTime<chrono::Utc>>), String> {
    let model = policy::gateway_model_with(store, settings)
        .await
        .map_err(|e| format!("reading the catalog: {e}"))?;
    xds.publish(&to_xds_model(&model, key)?)
        .map_err(|e| format!("building the Envoy configuration: {e}"))?;
    let tools = model
        .policy
        .virtual_servers
        .iter()
        .flat_map(|vs| vs.members.iter())
        .map(|m| m.tools.len())
        .sum();
    if let Ok(mut p) = published.lock() {
        p.catalog_version = model.version;
        p.mcp_servers = model.upstreams.len();
        p.virtual_servers = model.policy.virtual_servers.len();
        p.exposed_tools = tools;
    }
    Ok((model.version, model.refresh_at))
}

/// Publish now and after every catalog change, until aborted. A model that goes stale by
/// itself (a token with its own stats expires) is compiled again when it does.
pub fn spawn_publisher(
    store: Store,
    mut versions: tokio::sync::watch::Receiver<u64>,
    xds: XdsHandle,
    published: PublishedState,
    settings: policy::PolicySettings,
    key: Arc<SecretKey>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            versions.borrow_and_update();
            let refresh_at = match publish_once(&store, &xds, &published, &settings, &key).await {
                Ok((v, refresh_at)) => {
                    tracing::info!(catalog_version = v, "catalog published to Envoy (xDS)");
                    refresh_at
                }
                Err(e) => {
                    if let Ok(mut p) = published.lock() {
                        p.publish_errors += 1;
                    }
                    tracing::error!(error = %e, "could not publish the catalog; Envoys keep the last good configuration");
                    // Retry later even without a new change (e.g. the database was briefly down).
                    if tokio::time::timeout(Duration::from_secs(5), versions.changed())
                        .await
                        .is_ok_and(|r| r.is_err())
                    {
                        return;
                    }
                    continue;
                }
            };
            let wait = refresh_at.map(|t| {
                // A second late, so the token is expired when the model is read again.
                (t - chrono::Utc::now() + chrono::Duration::seconds(1))
                    .to_std()
                    .unwrap_or(Duration::from_secs(1))
            });
            match wait {
                Some(wait) => {
                    if let Ok(Err(_)) = tokio::time::timeout(wait, versions.changed()).await {
                        return;
                    }
                }
                None => {
                    if versions.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// Append one metric in the Prometheus text format (`# HELP`, `# TYPE`, the sample).
pub(crate) fn write_metric(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    value: impl std::fmt::Display,
) {
    out.push_str(&format!(
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
    ));
}

/// The control plane's Prometheus exposition: xDS counters, connected Envoys and catalog size.
pub fn prometheus_text(xds: &XdsHandle, published: &PublishedCatalog) -> String {
    let m = xds.metrics();
    let envoys = xds.envoys();
    let in_sync = envoys.iter().filter(|e| e.in_sync).count();
    let with_nack = envoys.iter().filter(|e| e.last_nack.is_some()).count();
    let build_s = m.last_snapshot_build.map_or(0.0, |d| d.as_secs_f64());
    let rows: [(&str, &str, &str, String); 14] = [
        (
            "toolmesh_xds_pushes_total",
            "counter",
            "xDS responses sent to Envoys",
            m.pushes.to_string(),
        ),
        (
            "toolmesh_xds_acks_total",
            "counter",
            "ACKs received from Envoys",
            m.acks.to_string(),
        ),
        (
            "toolmesh_xds_nacks_total",
            "counter",
            "NACKs (rejected configurations) received from Envoys",
            m.nacks.to_string(),
        ),
        (
            "toolmesh_xds_connected_envoys",
            "gauge",
            "ADS streams open now",
            m.connected_streams.to_string(),
        ),
        (
            "toolmesh_xds_envoys_in_sync",
            "gauge",
            "Envoys that acknowledged every type of the current snapshot",
            in_sync.to_string(),
        ),
        (
            "toolmesh_xds_envoys_with_nack",
            "gauge",
            "Envoys whose last response included a rejection",
            with_nack.to_string(),
        ),
        (
            "toolmesh_xds_snapshot_builds_total",
            "counter",
            "Snapshots built from the catalog",
            m.snapshot_builds.to_string(),
        ),
        (
            "toolmesh_xds_snapshot_build_errors_total",
            "counter",
            "Snapshot builds that failed (last good kept)",
            m.snapshot_build_errors.to_string(),
        ),
        (
            "toolmesh_xds_snapshot_build_seconds",
            "gauge",
            "Duration of the last snapshot build",
            format!("{build_s:.6}"),
        ),
        (
            "toolmesh_catalog_version",
            "gauge",
            "Catalog version of the last publish",
            published.catalog_version.to_string(),
        ),
        (
            "toolmesh_catalog_mcp_servers",
            "gauge",
            "Registered MCP servers",
            published.mcp_servers.to_string(),
        ),
        (
            "toolmesh_catalog_exposed_tools",
            "gauge",
            "Tools exposed across all virtual servers",
            published.exposed_tools.to_string(),
        ),
        (
            "toolmesh_catalog_virtual_servers",
            "gauge",
            "Virtual servers in the policy",
            published.virtual_servers.to_string(),
        ),
        (
            "toolmesh_catalog_publish_errors_total",
            "counter",
            "Failed catalog publishes",
            published.publish_errors.to_string(),
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in rows {
        write_metric(&mut out, name, kind, help, value);
    }
    out
}
