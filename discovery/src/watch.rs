//! Watching an upstream for `list_changed` notifications.
//!
//! MCP servers announce catalog changes with `notifications/tools/list_changed` (and the
//! prompts and resources equivalents) on an open session. The control plane wants to re-run
//! [`crate::discover`] when that happens instead of waiting for the next scheduled refresh, so
//! [`watch`] keeps one long-lived session per upstream: rmcp opens the standalone `GET`
//! notification stream after `initialize`, and the handler below forwards the notifications.
//!
//! Sessions die (server restart, network blip, idle timeouts in proxies), and a dead session is
//! silent, so the watcher pings the server every [`WatchOptions::ping_interval`] and
//! reconnects with exponential backoff when a ping fails or the transport closes. Because
//! notifications sent while no session was open are lost, every successful (re)connection is
//! reported as [`ListChanged::Resync`]: the caller should run discovery again.
//!
//! Limits: a stateless server (no `Mcp-Session-Id`) has no notification stream, and a server
//! that does not announce `listChanged` may never send one; the watcher then only reports
//! `Resync` after reconnections and the scheduled refresh does the rest.

use std::time::Duration;

use rmcp::model::{ClientConfig, ClientRequest, PingRequest};
use rmcp::service::{NotificationContext, RunningService};
use rmcp::{ClientHandler, RoleClient};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::UpstreamSpec;
use crate::client::{client_config, connect};
use crate::raw::RawStore;

/// A change an upstream announced (or may have made unobserved).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListChanged {
    /// `notifications/tools/list_changed`.
    Tools,
    /// `notifications/prompts/list_changed`.
    Prompts,
    /// `notifications/resources/list_changed` (resources and resource templates).
    Resources,
    /// A session was (re)opened; changes made while none was open were not observed.
    /// Sent after every successful connection, the first one included.
    Resync,
}

/// Tuning for [`watch_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOptions {
    /// How often the open session is checked with `ping`.
    pub ping_interval: Duration,
    /// First delay before reconnecting after a failure.
    pub min_backoff: Duration,
    /// Longest delay between reconnection attempts.
    pub max_backoff: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(30),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Buffered notifications. When the receiver lags, further notifications are dropped: any
/// pending message already makes the caller re-run a full discovery, which sees every change.
const CHANNEL_CAPACITY: usize = 16;

/// The watcher's client handler: forwards list-changed notifications.
#[derive(Clone)]
struct WatchClient {
    config: ClientConfig,
    tx: mpsc::Sender<ListChanged>,
}

impl WatchClient {
    fn forward(&self, change: ListChanged) {
        match self.tx.try_send(change) {
            Ok(()) => tracing::debug!(?change, "upstream list changed"),
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!(?change, "watch channel full; change coalesced")
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

impl ClientHandler for WatchClient {
    fn get_info(&self) -> ClientConfig {
        self.config.clone()
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.forward(ListChanged::Tools);
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.forward(ListChanged::Prompts);
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.forward(ListChanged::Resources);
    }
}

/// Watches `spec` with [`WatchOptions::default`]. See [`watch_with`].
pub fn watch(spec: UpstreamSpec) -> (JoinHandle<()>, mpsc::Receiver<ListChanged>) {
    watch_with(spec, WatchOptions::default())
}

/// Keeps a session open to `spec` (reconnecting with backoff) and forwards its list-changed
/// notifications. `spec.timeout` bounds each connection attempt and each ping.
///
/// The watcher stops when the returned handle is aborted or the receiver is dropped; either
/// way its session is closed (with `DELETE`, in the background). Must be called inside a
/// tokio runtime.
pub fn watch_with(
    spec: UpstreamSpec,
    options: WatchOptions,
) -> (JoinHandle<()>, mpsc::Receiver<ListChanged>) {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let handle = tokio::spawn(run(spec, options, tx));
    (handle, rx)
}

async fn run(spec: UpstreamSpec, options: WatchOptions, tx: mpsc::Sender<ListChanged>) {
    let handler = WatchClient {
        config: client_config(),
        tx: tx.clone(),
    };
    let mut backoff = options.min_backoff;
    loop {
        let attempt = tokio::select! {
            attempt = tokio::time::timeout(
                spec.timeout,
                connect(&spec, handler.clone(), RawStore::disabled()),
            ) => attempt,
            () = tx.closed() => return,
        };
        match attempt {
            Ok(Ok(session)) => {
                tracing::info!(url = %spec.url, "watching upstream for list changes");
                backoff = options.min_backoff;
                handler.forward(ListChanged::Resync);
                let keep_going = supervise(&spec, &options, &tx, &session).await;
                close_in_background(session);
                if !keep_going {
                    return;
                }
                tracing::info!(url = %spec.url, "watch session lost; reconnecting");
            }
            Ok(Err(error)) => {
                tracing::warn!(url = %spec.url, %error, retry_in = ?backoff, "watch connect failed")
            }
            Err(_) => tracing::warn!(
                url = %spec.url,
                timeout = ?spec.timeout,
                retry_in = ?backoff,
                "watch connect timed out"
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = tx.closed() => return,
        }
        backoff = (backoff * 2).min(options.max_backoff);
    }
}

/// Holds the session until it fails (returns true: reconnect) or the receiver is gone
/// (returns false: stop).
async fn supervise(
    spec: &UpstreamSpec,
    options: &WatchOptions,
    tx: &mpsc::Sender<ListChanged>,
    session: &RunningService<RoleClient, WatchClient>,
) -> bool {
    loop {
        tokio::select! {
            () = tokio::time::sleep(options.ping_interval) => {}
            () = tx.closed() => return false,
        }
        if session.is_closed() || session.peer().is_transport_closed() {
            return true;
        }
        let ping = session
            .peer()
            .send_request(ClientRequest::PingRequest(PingRequest::default()));
        match tokio::time::timeout(spec.timeout, ping).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::info!(url = %spec.url, %error, "watch ping failed");
                return true;
            }
            Err(_) => {
                tracing::info!(url = %spec.url, "watch ping timed out");
                return true;
            }
        }
    }
}

fn close_in_background(session: RunningService<RoleClient, WatchClient>) {
    tokio::spawn(async move {
        let mut session = session;
        let _ = session.close_with_timeout(Duration::from_secs(5)).await;
    });
}
