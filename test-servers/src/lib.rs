//! Upstream MCP servers for toolmesh's tests, on the official Rust SDK (`rmcp`, Streamable HTTP).
//!
//! Every toolmesh test that needs "a real MCP server behind Envoy" starts one of these, either
//! in-process with [`spawn`] or as the `mcp-test-server` binary. The catalog is fixed so tests
//! can assert on it:
//!
//! - tools: `echo` (text), `add` (integers `a`, `b`; has an `outputSchema` and returns
//!   `structuredContent {"sum": n}`), `slow` (`steps`, `interval_ms`; one
//!   `notifications/progress` per step, spread over time), `fail` (`isError: true`), and
//!   `long_list_01`..`long_list_21`, 25 tools in all, paged by [`TestServerConfig::page_size`];
//! - prompts: `greet` (`name`, required), `summarize` (`text` required, `style` optional);
//! - resources: `test://static/readme` (text), `test://static/logo` (blob) and the template
//!   `test://template/{id}/data`;
//! - capabilities: tools (`listChanged`), prompts, resources (`subscribe`).
//!
//! Because a gateway's job is largely about what does *not* reach the upstream (denied calls,
//! the client's `Authorization` header), the server records every HTTP request it receives
//! ([`RunningServer::requests`]) and every tool it was asked to call ([`RunningServer::calls`]).
//! [`RunningServer::set_variant`] changes the `echo` tool's description and schema and tells open
//! sessions `notifications/tools/list_changed`, for schema-drift tests.
//!
//! Test-only HTTP endpoints, next to `/mcp` (not recorded): `GET /_test/requests` (the recorded
//! requests as JSON), `GET /_test/calls` (the tool names as JSON), `POST /_test/variant/{n}`.

pub mod cli;
pub mod conformance;
mod handler;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{Peer, RoleServer};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use handler::{
    FILLER_TOOLS, LOGO_BASE64, README_TEXT, capabilities, prompt_definitions, resource_definitions,
    resource_template_definitions, tool_definitions,
};

/// Total number of tools the server lists (the four real tools plus the fillers).
pub const TOOL_COUNT: usize = 4 + FILLER_TOOLS;

/// Largest request body the recorder buffers (the same limit rmcp applies by default).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// How a test server behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestServerConfig {
    /// Sessions (`Mcp-Session-Id`, `initialize` handshake) for protocol versions before
    /// `2026-07-28`. When false, every request is served on its own (stateless mode).
    pub stateful: bool,
    /// Answer simple requests with `application/json` instead of an SSE stream. rmcp supports
    /// this only in stateless mode, so `stateful && json_response` is rejected by [`spawn`].
    /// (A request whose handler sends notifications, like `slow` with a progress token, still
    /// gets an SSE stream.)
    pub json_response: bool,
    /// Items per page for `tools/list`, `prompts/list`, `resources/list` and
    /// `resources/templates/list`.
    pub page_size: usize,
    /// Speak only the `initialize` handshake (2025-11-25 and older): a request at protocol
    /// 2026-07-28, `server/discover` included, gets -32022 — a server built before that revision.
    pub handshake_only: bool,
}

impl Default for TestServerConfig {
    fn default() -> Self {
        Self {
            stateful: true,
            json_response: false,
            page_size: 10,
            handshake_only: false,
        }
    }
}

impl TestServerConfig {
    /// Stateless with `application/json` answers: a raw HTTP POST needs no session and gets
    /// one JSON body back (what gateway tests that speak HTTP directly want).
    pub fn stateless_json() -> Self {
        Self {
            stateful: false,
            json_response: true,
            ..Self::default()
        }
    }
}

/// One HTTP request as the test server received it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    /// HTTP method (`POST`, `GET`, `DELETE`).
    pub method: String,
    /// Path and query as received (e.g. `/mcp`).
    pub path: String,
    /// Headers with lower-case names; repeated headers are joined with `", "`.
    pub headers: BTreeMap<String, String>,
    /// The JSON-RPC `method` of the body, if the body is a JSON-RPC request or notification
    /// (for a batch, the methods joined with `,`).
    pub jsonrpc_method: Option<String>,
    /// The body parsed as JSON, if it was JSON.
    pub body: Option<serde_json::Value>,
}

impl RecordedRequest {
    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// State shared by every session of one server.
pub(crate) struct Shared {
    config: TestServerConfig,
    variant: AtomicU32,
    calls: Mutex<Vec<String>>,
    requests: Recorded,
    peers: Mutex<Vec<Peer<RoleServer>>>,
}

/// Locks a mutex, recovering the data if a panicking test thread poisoned it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn variant(&self) -> u32 {
        self.variant.load(Ordering::SeqCst)
    }

    pub(crate) fn record_call(&self, name: &str) {
        lock(&self.calls).push(name.to_owned());
    }

    pub(crate) fn add_peer(&self, peer: Peer<RoleServer>) {
        lock(&self.peers).push(peer);
    }

    /// Sets the variant and notifies every open session (in the background).
    fn set_variant(self: &Arc<Self>, variant: u32) {
        let old = self.variant.swap(variant, Ordering::SeqCst);
        if old == variant {
            return;
        }
        let peers: Vec<_> = {
            let mut peers = lock(&self.peers);
            peers.retain(|p| !p.is_transport_closed());
            peers.clone()
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("set_variant outside a tokio runtime: no list_changed sent");
            return;
        };
        runtime.spawn(async move {
            for peer in peers {
                if let Err(e) = peer.notify_tool_list_changed().await {
                    tracing::debug!(error = %e, "could not notify a session of list_changed");
                }
            }
        });
    }
}

/// A test server running in this process. Dropping it stops it (like [`RunningServer::shutdown`],
/// without waiting).
pub struct RunningServer {
    serving: Serving,
    shared: Arc<Shared>,
}

/// A router served on a bound listener until cancelled: the lifecycle every server of this
/// crate shares. Dropping it stops the server without waiting.
pub(crate) struct Serving {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Serving {
    /// Serve `app` on `listener` (bound to `addr`) until `cancel` (`what` names the server in
    /// logs).
    pub(crate) fn start(
        listener: tokio::net::TcpListener,
        addr: SocketAddr,
        cancel: CancellationToken,
        app: Router,
        what: &'static str,
    ) -> Self {
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled_owned().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "{what} stopped with an error");
            }
        });
        Self {
            addr,
            cancel,
            task: Some(task),
        }
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The MCP endpoint, `http://ADDR/mcp`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// End every session and open stream and wait (up to 5 s) for the listener task.
    pub(crate) async fn stop(&mut self, what: &'static str) {
        self.cancel.cancel();
        if let Some(task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
        {
            tracing::warn!(addr = %self.addr, "{what} did not stop within 5 s");
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The JSON-RPC methods of `requests`, in order (requests without one are skipped).
fn jsonrpc_methods(requests: Vec<RecordedRequest>) -> Vec<String> {
    requests
        .into_iter()
        .filter_map(|r| r.jsonrpc_method)
        .collect()
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("addr", &self.serving.addr)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl RunningServer {
    /// The bound address (always 127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.serving.addr()
    }

    /// The MCP endpoint, `http://127.0.0.1:PORT/mcp`.
    pub fn url(&self) -> String {
        self.serving.url()
    }

    /// Switches the `echo` tool's description and input schema (`0` is the original; any other
    /// value adds a required `prefix` argument and says `variant N` in the description) and
    /// sends `notifications/tools/list_changed` to every open session (in the background; the
    /// list served changes immediately). Must be called inside a tokio runtime to notify.
    pub fn set_variant(&self, variant: u32) {
        self.shared.set_variant(variant);
    }

    /// Names of the tools the server was asked to call so far, in order, including unknown
    /// names (use it to assert that a denied call never reached the upstream).
    pub fn calls(&self) -> Vec<String> {
        lock(&self.shared.calls).clone()
    }

    /// Every HTTP request received on `/mcp` so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// The JSON-RPC methods received so far, in order (from [`Self::requests`]).
    pub fn jsonrpc_methods(&self) -> Vec<String> {
        jsonrpc_methods(self.requests())
    }

    /// Stops the server: ends every session and open stream and waits (up to 5 s) for the
    /// listener task.
    pub async fn shutdown(mut self) {
        self.serving.stop("test server").await;
    }
}

/// Starts a test server on `127.0.0.1:0`.
pub async fn spawn(config: TestServerConfig) -> anyhow::Result<RunningServer> {
    spawn_on(config, SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// Starts a test server on `addr` (port 0 picks a free port).
pub async fn spawn_on(config: TestServerConfig, addr: SocketAddr) -> anyhow::Result<RunningServer> {
    anyhow::ensure!(
        !(config.stateful && config.json_response),
        "json_response is only supported by rmcp in stateless mode (stateful: false)"
    );
    anyhow::ensure!(config.page_size > 0, "page_size must be at least 1");
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let shared = Arc::new(Shared {
        config,
        variant: AtomicU32::new(0),
        calls: Mutex::default(),
        requests: Recorded::default(),
        peers: Mutex::default(),
    });
    let cancel = CancellationToken::new();
    let app = router(shared.clone(), cancel.child_token());
    Ok(RunningServer {
        serving: Serving::start(listener, addr, cancel, app, "test server"),
        shared,
    })
}

fn router(shared: Arc<Shared>, cancel: CancellationToken) -> Router {
    let mcp_config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(shared.config.stateful)
        .with_json_response(shared.config.json_response)
        .with_cancellation_token(cancel)
        // Behind Envoy the upstream sees the gateway's Host; the gateway checks Host/Origin.
        .disable_allowed_hosts();
    let factory_shared = shared.clone();
    let mcp = StreamableHttpService::new(
        move || {
            Ok(handler::TestServer {
                shared: factory_shared.clone(),
            })
        },
        Arc::new(LocalSessionManager::default()),
        mcp_config,
    );
    Router::new()
        .route("/_test/requests", get(requests_endpoint))
        .route("/_test/calls", get(calls_endpoint))
        .route("/_test/variant/{n}", post(variant_endpoint))
        .nest_service("/mcp", mcp)
        .layer(middleware::from_fn_with_state(
            shared.requests.clone(),
            record,
        ))
        .with_state(shared)
}

async fn requests_endpoint(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(lock(&shared.requests).clone()).into_response()
}

async fn calls_endpoint(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(lock(&shared.calls).clone()).into_response()
}

async fn variant_endpoint(State(shared): State<Arc<Shared>>, Path(n): Path<u32>) -> Response {
    shared.set_variant(n);
    axum::Json(serde_json::json!({ "variant": n })).into_response()
}

/// The requests a server received.
pub(crate) type Recorded = Arc<Mutex<Vec<RecordedRequest>>>;

/// Records each request to `/mcp` (method, path, headers, JSON-RPC method, body) into
/// `requests`, then passes it on unchanged (the test servers' `/_test/` routes are not
/// recorded). Both servers of this crate use it.
pub(crate) async fn record(
    State(requests): State<Recorded>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path().starts_with("/_test/") {
        return next.run(request).await;
    }
    match describe(request).await {
        Ok((recorded, request)) => {
            lock(&requests).push(recorded);
            next.run(request).await
        }
        Err(refused) => refused,
    }
}

/// Reads `request`'s body (up to the limit rmcp applies) and describes the request; returns
/// the description and the request, rebuilt, to pass on (or the answer to a body too large).
pub(crate) async fn describe(request: Request) -> Result<(RecordedRequest, Request), Response> {
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return Err(
                (axum::http::StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response(),
            );
        }
    };
    let mut headers = BTreeMap::<String, String>::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let json: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
    let jsonrpc_method = json.as_ref().and_then(|v| match v {
        serde_json::Value::Array(batch) => {
            let methods: Vec<&str> = batch
                .iter()
                .filter_map(|m| m.get("method").and_then(|m| m.as_str()))
                .collect();
            (!methods.is_empty()).then(|| methods.join(","))
        }
        other => other
            .get("method")
            .and_then(|m| m.as_str())
            .map(str::to_owned),
    });
    let recorded = RecordedRequest {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers,
        jsonrpc_method,
        body: json,
    };
    Ok((recorded, Request::from_parts(parts, Body::from(bytes))))
}
