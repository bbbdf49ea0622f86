//! The whole gateway for one test, set up the way an operator would: the control plane
//! in-process ([`ControlPlane`]), MCP servers registered and virtual servers created through its
//! REST API, and an Envoy started from the shipped `envoy/bootstrap.yaml` that gets everything
//! else over xDS, in sync before the test starts.
//!
//! ```ignore
//! let Some(gw) = Gateway::builder("gw-1")
//!     .mcp_server("everything", &upstream.url())
//!     .virtual_server(json!({"name": "demo", "anonymous": true,
//!         "tools": [{"mcp_server": "everything", "tool": "echo"}]}))
//!     .start()
//!     .await
//! else {
//!     return; // Envoy or the filter's wasm is missing (skip notice printed; a panic in CI)
//! };
//! let token = gw.token("agent", &["demo"]).await;
//! ```
//!
//! Setup failures panic with the reason: a test cannot go on without its gateway.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::control_plane::{
    ControlPlane, ControlPlaneOptions, ServeConfigHook, envoy_from_bootstrap,
};
use crate::envoy::Envoy;
use crate::tools;

/// How long [`GatewayBuilder::start`] and [`Gateway::wait_in_sync`] wait for Envoys to
/// acknowledge the control plane's snapshot.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// What to set up; see [`Gateway::builder`].
#[derive(Debug, Clone)]
pub struct GatewayBuilder {
    node_id: String,
    mcp_servers: Vec<Value>,
    virtual_servers: Vec<Value>,
    database_url: Option<String>,
    configure: Option<ServeConfigHook>,
    envoy: bool,
}

impl GatewayBuilder {
    /// Register a Streamable HTTP MCP server `name` at `url` (its discovery must find it up).
    pub fn mcp_server(self, name: &str, url: &str) -> Self {
        self.mcp_server_with(json!({"name": name, "url": url, "transport": "streamable-http"}))
    }

    /// Register an MCP server with this `POST /v1/mcp-servers` body (its discovery must find it
    /// up).
    pub fn mcp_server_with(mut self, body: Value) -> Self {
        self.mcp_servers.push(body);
        self
    }

    /// Create a virtual server with this `POST /v1/virtual-servers` body (after every MCP
    /// server is registered).
    pub fn virtual_server(mut self, body: Value) -> Self {
        self.virtual_servers.push(body);
        self
    }

    /// Keep the catalog in this database (`postgres://…`) instead of a temp SQLite file.
    pub fn database_url(mut self, url: &str) -> Self {
        self.database_url = Some(url.to_owned());
        self
    }

    /// Change the control plane's serve configuration (a knob), after the harness's settings.
    pub fn configure(
        mut self,
        configure: impl Fn(&mut toolmesh::ServeConfig) + Send + Sync + 'static,
    ) -> Self {
        self.configure = Some(ServeConfigHook(Arc::new(configure)));
        self
    }

    /// Start no Envoy (start some later with [`Gateway::start_envoy`]).
    pub fn without_envoy(mut self) -> Self {
        self.envoy = false;
        self
    }

    /// Starts the control plane, registers the MCP servers, creates the virtual servers, then
    /// starts Envoy (node id as given to [`Gateway::builder`]) and waits until it is in sync.
    /// `None`, after a loud skip notice, when Envoy or the filter's wasm is missing.
    pub async fn start(self) -> Option<Gateway> {
        let envoy_bin = tools::envoy()?;
        let wasm = tools::filter_wasm()?;
        let dir = tempfile::Builder::new()
            .prefix("toolmesh-e2e-gateway-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating the control plane's data dir: {e}"));
        let mut opts = ControlPlaneOptions::new(dir.path(), &wasm);
        opts.database_url = self.database_url;
        opts.configure = self.configure;
        let cp = ControlPlane::start(&opts)
            .await
            .unwrap_or_else(|e| panic!("starting the control plane: {e:#}"));
        let mut registrations = Vec::new();
        for body in &self.mcp_servers {
            let reg = cp
                .ok(Method::POST, "/v1/mcp-servers", Some(body))
                .await
                .unwrap_or_else(|e| panic!("registering {body}: {e:#}"));
            assert_eq!(
                reg["health"]["status"], "up",
                "discovery did not find the MCP server up: {reg}"
            );
            registrations.push(reg);
        }
        for body in &self.virtual_servers {
            cp.ok(Method::POST, "/v1/virtual-servers", Some(body))
                .await
                .unwrap_or_else(|e| panic!("creating the virtual server {body}: {e:#}"));
        }
        let mut gw = Gateway {
            envoy: None,
            cp: Some(cp),
            opts,
            envoy_bin,
            registrations,
            _dir: dir,
        };
        if self.envoy {
            let envoy = gw.start_envoy(&self.node_id).await;
            gw.envoy = Some(envoy);
            gw.wait_in_sync(1).await;
        }
        Some(gw)
    }
}

/// A running gateway: control plane, and (unless built [`GatewayBuilder::without_envoy`]) one
/// Envoy. Dropping it kills Envoy and stops the control plane.
pub struct Gateway {
    // Drop order: Envoy first (its log is printed if the test failed), then the control plane,
    // then the data dir.
    envoy: Option<Envoy>,
    cp: Option<ControlPlane>,
    opts: ControlPlaneOptions,
    envoy_bin: PathBuf,
    registrations: Vec<Value>,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("envoy", &self.envoy)
            .field("api", &self.cp.as_ref().map(ControlPlane::api))
            .field("mcp_port", &self.opts.mcp_port)
            .finish()
    }
}

impl Gateway {
    /// What to set up; `node_id` is the Envoy's node id (`--service-node`).
    pub fn builder(node_id: &str) -> GatewayBuilder {
        GatewayBuilder {
            node_id: node_id.to_owned(),
            mcp_servers: Vec::new(),
            virtual_servers: Vec::new(),
            database_url: None,
            configure: None,
            envoy: true,
        }
    }

    /// The control plane. Panics while it is stopped ([`Gateway::stop_control_plane`]).
    pub fn cp(&self) -> &ControlPlane {
        self.cp
            .as_ref()
            .unwrap_or_else(|| panic!("the control plane is stopped"))
    }

    /// The Envoy started with the gateway. Panics if there is none.
    pub fn envoy(&self) -> &Envoy {
        self.envoy
            .as_ref()
            .unwrap_or_else(|| panic!("this gateway has no Envoy"))
    }

    /// The Envoy started with the gateway, mutable (to terminate it). Panics if there is none.
    pub fn envoy_mut(&mut self) -> &mut Envoy {
        self.envoy
            .as_mut()
            .unwrap_or_else(|| panic!("this gateway has no Envoy"))
    }

    /// Takes the Envoy started with the gateway (drop it to kill it).
    pub fn take_envoy(&mut self) -> Option<Envoy> {
        self.envoy.take()
    }

    /// The control plane's options (ports, data dir).
    pub fn opts(&self) -> &ControlPlaneOptions {
        &self.opts
    }

    /// The MCP listener's port (every Envoy of this control plane listens on it).
    pub fn mcp_port(&self) -> u16 {
        self.opts.mcp_port
    }

    /// `http://127.0.0.1:MCP_PORT/servers/{vs}/mcp`.
    pub fn url(&self, vs: &str) -> String {
        format!("http://127.0.0.1:{}/servers/{vs}/mcp", self.opts.mcp_port)
    }

    /// The answer to the registration of MCP server `name`. Panics if it was not registered by
    /// the builder.
    pub fn registration(&self, name: &str) -> &Value {
        self.registrations
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} was not registered: {:?}", self.registrations))
    }

    /// Starts another Envoy from the shipped bootstrap with node id `node_id` and waits until it
    /// is ready (does not wait for sync; see [`Gateway::wait_in_sync`]).
    pub async fn start_envoy(&self, node_id: &str) -> Envoy {
        envoy_from_bootstrap(
            &self.envoy_bin,
            node_id,
            self.opts.xds_port,
            self.opts.mcp_port,
        )
        .await
        .unwrap_or_else(|e| panic!("starting Envoy {node_id} from the bootstrap: {e:#}"))
    }

    /// Waits (up to [`SYNC_TIMEOUT`]) until `envoys` Envoys acknowledged the current snapshot.
    pub async fn wait_in_sync(&self, envoys: usize) {
        self.cp()
            .wait_envoys_in_sync(envoys, SYNC_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Stops the control plane gracefully (Envoys keep serving their last configuration).
    pub async fn stop_control_plane(&mut self) {
        if let Some(cp) = self.cp.take() {
            cp.stop().await;
        }
    }

    /// Starts the control plane again on the same database, data dir and ports.
    pub async fn restart_control_plane(&mut self) {
        self.stop_control_plane().await;
        let cp = ControlPlane::start(&self.opts)
            .await
            .unwrap_or_else(|e| panic!("restarting the control plane: {e:#}"));
        self.cp = Some(cp);
    }

    /// Issues a token named `name` for `virtual_servers` and returns the JWT.
    pub async fn token(&self, name: &str, virtual_servers: &[&str]) -> String {
        let (jwt, _) = self
            .cp()
            .issue_token(&json!({"name": name, "virtual_servers": virtual_servers}))
            .await
            .unwrap_or_else(|e| panic!("issuing a token for {virtual_servers:?}: {e:#}"));
        jwt
    }

    /// Stops the control plane gracefully and kills Envoy.
    pub async fn stop(mut self) {
        self.envoy.take();
        self.stop_control_plane().await;
    }
}
