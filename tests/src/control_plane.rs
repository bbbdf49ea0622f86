//! The toolmesh control plane in the end-to-end tests: run in-process (the same `serve` the
//! binary calls) on free ports, with a temp data dir, and an Envoy started from the shipped
//! `envoy/bootstrap.yaml` that takes everything else from it over xDS.
//!
//! In-process keeps a restart cheap (the "control plane down, traffic keeps flowing" tests stop
//! and start it many times) while still exercising the real REST API, store, discovery and ADS
//! server over real sockets.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::envoy::{Envoy, EnvoyConfig};
use crate::process::free_port;
use crate::tools;

/// The admin token every test control plane uses.
pub const ADMIN_TOKEN: &str = "e2e-admin-token";

/// A change a test makes to the control plane's [`toolmesh::ServeConfig`] (a knob such as
/// the list page size), applied after the harness's own settings.
#[derive(Clone)]
pub struct ServeConfigHook(pub Arc<dyn Fn(&mut toolmesh::ServeConfig) + Send + Sync>);

impl std::fmt::Debug for ServeConfigHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServeConfigHook")
    }
}

/// Where and how to run a control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    /// Data directory (SQLite file, secret key).
    pub data_dir: PathBuf,
    /// `postgres://…` for Postgres; `None` for the embedded SQLite file.
    pub database_url: Option<String>,
    /// The xDS port (fixed so a restarted control plane is found by the same Envoys).
    pub xds_port: u16,
    /// The MCP listener port it configures in Envoy.
    pub mcp_port: u16,
    /// The filter's wasm file.
    pub wasm_path: PathBuf,
    /// Changes to the serve configuration (knobs a test wants), applied last.
    pub configure: Option<ServeConfigHook>,
}

impl ControlPlaneOptions {
    /// SQLite in `data_dir`, fresh free xDS and MCP ports.
    pub fn new(data_dir: &Path, wasm_path: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            database_url: None,
            xds_port: free_port(),
            mcp_port: free_port(),
            wasm_path: wasm_path.to_path_buf(),
            configure: None,
        }
    }
}

/// A running control plane; stopped (gracefully) by [`ControlPlane::stop`], aborted on drop.
pub struct ControlPlane {
    api: String,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ControlPlane {
    /// Start `toolmesh serve` in this process and wait until its REST API answers.
    pub async fn start(opts: &ControlPlaneOptions) -> anyhow::Result<ControlPlane> {
        let mut config = toolmesh::ServeConfig::with_data_dir(&opts.data_dir);
        config.store.database_url = opts.database_url.clone();
        config.admin_token = Some(ADMIN_TOKEN.into());
        config.secret_key = Some("11".repeat(32));
        config.api_port = 0;
        config.xds_port = opts.xds_port;
        config.mcp_port = opts.mcp_port;
        config.wasm_path = opts.wasm_path.clone();
        config.discovery_interval_secs = 0;
        config.discovery_watch = false;
        config.public_mcp_url = format!("http://127.0.0.1:{}", opts.mcp_port);
        if let Some(ServeConfigHook(configure)) = &opts.configure {
            configure(&mut config);
        }
        let state = toolmesh::build_state(&config)
            .await
            .context("building the control plane state")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            if let Err(e) = toolmesh::serve(state, listener, &config, async {
                let _ = stopped.await;
            })
            .await
            {
                eprintln!("control plane stopped with an error: {e}");
            }
        });
        let cp = ControlPlane {
            api,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            stop: Some(stop),
            task: Some(task),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = cp.http.get(format!("{}/healthz", cp.api)).send().await
                && r.status().is_success()
            {
                return Ok(cp);
            }
            if Instant::now() > deadline {
                bail!("the control plane's REST API did not answer within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stop it gracefully (closes the xDS streams; Envoys keep their last configuration).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }

    /// The REST API's base URL.
    pub fn api(&self) -> &str {
        &self.api
    }

    /// Call the admin REST API; returns the status and the JSON body (`Null` when empty).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut rq = self
            .http
            .request(method, format!("{}{path}", self.api))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            rq = rq.json(b);
        }
        let resp = rq.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, json))
    }

    /// Call and insist on a 2xx.
    pub async fn ok(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (status, json) = self.call(method.clone(), path, body).await?;
        if !(200..300).contains(&status) {
            bail!("{method} {path} answered {status}: {json}");
        }
        Ok(json)
    }

    /// Register an MCP server (discovery runs on register).
    pub async fn register(&self, name: &str, url: &str) -> anyhow::Result<Value> {
        self.ok(
            reqwest::Method::POST,
            "/v1/mcp-servers",
            Some(&serde_json::json!({"name": name, "url": url, "transport": "streamable-http"})),
        )
        .await
    }

    /// Issue a token (`POST /v1/tokens`); returns the JWT and the metadata.
    pub async fn issue_token(&self, body: &Value) -> anyhow::Result<(String, Value)> {
        let v = self
            .ok(reqwest::Method::POST, "/v1/tokens", Some(body))
            .await?;
        let jwt = v["token"]
            .as_str()
            .context("no token in the answer")?
            .to_string();
        Ok((jwt, v))
    }

    /// Wait until every connected Envoy acknowledged the current snapshot.
    pub async fn wait_envoys_in_sync(
        &self,
        envoys: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let (_, body) = self.call(reqwest::Method::GET, "/v1/envoys", None).await?;
            let items = body["items"].as_array().cloned().unwrap_or_default();
            if items.len() >= envoys && items.iter().all(|e| e["in_sync"] == true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("Envoys not in sync after {timeout:?}: {body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Start an Envoy from the shipped `envoy/bootstrap.yaml` (ports substituted the way
/// `cargo xtask up` does, node set the way `--service-node` would) and wait until it is ready,
/// which needs the control plane to have pushed the listener.
pub async fn envoy_from_bootstrap(
    envoy_bin: &Path,
    node_id: &str,
    xds_port: u16,
    mcp_port: u16,
) -> anyhow::Result<Envoy> {
    let shipped = std::fs::read_to_string(tools::workspace_root().join("envoy/bootstrap.yaml"))
        .context("reading envoy/bootstrap.yaml")?;
    let admin_port = free_port();
    let yaml = format!(
        "{}\nnode: {{id: {node_id}, cluster: toolmesh}}\n",
        shipped
            .replace("port_value: 18000", &format!("port_value: {xds_port}"))
            .replace("port_value: 9901", &format!("port_value: {admin_port}"))
    );
    let mut envoy = Envoy::spawn(
        envoy_bin,
        EnvoyConfig {
            yaml,
            listener_port: mcp_port,
            admin_port,
        },
    )?;
    envoy.wait_ready(Duration::from_secs(60)).await?;
    Ok(envoy)
}

/// The Postgres URL for database tests: `DATABASE_URL` or the default test database. `None`
/// after a loud skip notice when it is unreachable (a panic under `CI=true`).
pub fn postgres_url() -> Option<String> {
    let url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());
    let reachable = reqwest::Url::parse(&url).ok().is_some_and(|u| {
        let host = u.host_str().unwrap_or("127.0.0.1").to_string();
        let port = u.port().unwrap_or(5432);
        std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
            .ok()
            .and_then(|mut a| a.next())
            .is_some_and(|a| {
                std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok()
            })
    });
    if reachable {
        Some(url)
    } else {
        tools::missing(
            &format!("Postgres is not reachable at {url}"),
            "start Postgres or set DATABASE_URL",
        );
        None
    }
}
