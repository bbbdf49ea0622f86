//! Rediscovery on `list_changed`: one long-lived watcher session per registered MCP server.
//!
//! MCP servers announce catalog changes with `notifications/{tools,prompts,resources}/
//! list_changed`. `toolmesh_discovery::watch` keeps a session open to an upstream and forwards
//! those (plus a `Resync` after each (re)connection, since changes made while disconnected were
//! not seen). This module keeps the set of watchers in step with the catalog — reconciled after
//! every catalog version change: new servers get a watcher, deleted ones lose it, a changed URL,
//! transport or credential restarts it — and turns each notification into a discovery whose
//! result is stored like a refresh. Notifications are coalesced and rate-limited per server so a
//! chatty or flapping upstream costs at most one discovery per [`MIN_GAP`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};
use tokio::task::JoinHandle;
use toolmesh_discovery::UpstreamSpec;

use crate::crypto::SecretKey;
use crate::discovery::{discover_record, open_headers};
use crate::store::{McpServerRecord, PageRequest, Store, Transport};

/// Least time between two watcher-triggered discoveries of one server.
pub const MIN_GAP: Duration = Duration::from_secs(5);

/// Aborts the task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a watcher was started with; a change restarts it.
fn fingerprint(rec: &McpServerRecord) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(rec.url.as_bytes());
    h.update([0]);
    h.update(rec.transport.as_str().as_bytes());
    h.update([0]);
    h.update(rec.credential_headers.as_deref().unwrap_or_default());
    h.finalize().into()
}

/// Start the supervisor; it runs until aborted (aborting it stops every watcher).
pub fn spawn_watchers(store: Store, key: Arc<SecretKey>, timeout: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut version = store.subscribe();
        let mut running: HashMap<String, ([u8; 32], AbortOnDrop)> = HashMap::new();
        loop {
            match all_servers(&store).await {
                Ok(servers) => {
                    let mut keep = HashMap::new();
                    for rec in servers {
                        let fp = fingerprint(&rec);
                        let entry = match running.remove(&rec.name) {
                            Some((old, task)) if old == fp => (old, task),
                            _ => {
                                tracing::debug!(mcp_server = %rec.name, "starting list_changed watcher");
                                let task = tokio::spawn(watch_one(
                                    store.clone(),
                                    key.clone(),
                                    rec.clone(),
                                    timeout,
                                ));
                                (fp, AbortOnDrop(task))
                            }
                        };
                        keep.insert(rec.name, entry);
                    }
                    // Whatever is left was deleted: dropping aborts it.
                    running = keep;
                }
                Err(e) => tracing::warn!(error = %e, "cannot list MCP servers for watchers"),
            }
            if version.changed().await.is_err() {
                return;
            }
        }
    })
}

async fn all_servers(store: &Store) -> Result<Vec<McpServerRecord>, crate::store::StoreError> {
    let mut out = Vec::new();
    let mut page = PageRequest {
        limit: 500,
        cursor: None,
    };
    loop {
        let p = store.list_mcp_servers(&page).await?;
        out.extend(p.items);
        match p.next_cursor {
            Some(c) => page.cursor = Some(c),
            None => return Ok(out),
        }
    }
}

async fn watch_one(store: Store, key: Arc<SecretKey>, rec: McpServerRecord, timeout: Duration) {
    let headers = match open_headers(&key, &rec) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(mcp_server = %rec.name, error = %e, "not watching: stored credentials do not open");
            return;
        }
    };
    let spec = UpstreamSpec {
        url: rec.url.clone(),
        transport: match rec.transport {
            Transport::StreamableHttp => toolmesh_discovery::Transport::StreamableHttp,
            Transport::Sse => toolmesh_discovery::Transport::Sse,
        },
        headers,
        timeout,
    };
    let (handle, mut rx) = toolmesh_discovery::watch(spec);
    let _watcher = AbortOnDrop(handle);
    let mut last: Option<tokio::time::Instant> = None;
    // The first `Resync` follows the watcher's first connection; when the server was discovered
    // a moment ago (it was just registered or refreshed) that discovery would find nothing new.
    let mut skip_resync = rec
        .health
        .last_success_at
        .is_some_and(|t| chrono::Utc::now() - t < chrono::TimeDelta::seconds(60));
    while let Some(change) = rx.recv().await {
        if std::mem::take(&mut skip_resync) && change == toolmesh_discovery::ListChanged::Resync {
            continue;
        }
        if let Some(at) = last {
            tokio::time::sleep_until(at + MIN_GAP).await;
        }
        // Coalesce whatever else arrived meanwhile into this one discovery.
        while rx.try_recv().is_ok() {}
        last = Some(tokio::time::Instant::now());
        let Ok(current) = store.get_mcp_server(&rec.name).await else {
            return; // deleted; the supervisor will drop us
        };
        tracing::info!(mcp_server = %rec.name, ?change, "upstream announced a change; rediscovering");
        let outcome = discover_record(&key, &current, timeout).await;
        if let Err(e) = store.apply_discovery(&rec.name, &outcome).await {
            tracing::debug!(mcp_server = %rec.name, error = %e, "watcher discovery not stored");
        }
    }
}
