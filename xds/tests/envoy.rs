//! The ADS server driving a real Envoy 1.40: every resource type is accepted, traffic flows by the
//! routing contract, a policy change reaches an open connection, rejections are recorded with
//! Envoy's reason while the last good config keeps serving, Envoy survives the control plane
//! going away and resyncs when it returns, and upstream credentials reach the upstream on routed
//! requests and on the filter's own `dispatch_http_call`s.
//!
//! Envoy: `$TOOLMESH_ENVOY_BIN`, else `.tools/venv/.../envoy/_bin/envoy` (installed by
//! `cargo xtask setup`). Missing Envoy skips the tests loudly, or fails them when `CI=true`.
//!
//! The wiring test runs a tiny stand-in filter (`fixtures/echo_policy_filter.rs`, built here with
//! `rustc`) so it does not depend on the real filter; `real_filter_accepts_the_policy` runs the
//! real `toolmesh_filter.wasm` once it exists.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use prost::{Message, Name};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use toolmesh_proto::{Member, NamedItem, PolicySnapshot, VirtualServer};
use toolmesh_xds::{
    GatewayModel, GatewaySettings, ResourceType, Snapshot, UpstreamEndpoint, XdsHandle, XdsServer,
    bootstrap_yaml,
};

const TIMEOUT: Duration = Duration::from_secs(60);

// === harness ===

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The Envoy binary, or `None` (after saying so) when the test should be skipped.
fn envoy_bin() -> Option<PathBuf> {
    let path = std::env::var_os("TOOLMESH_ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            workspace_root().join(".tools/venv/lib/python3.11/site-packages/envoy/_bin/envoy")
        });
    if path.is_file() {
        return Some(path);
    }
    let msg = format!(
        "Envoy not found at {} (set TOOLMESH_ENVOY_BIN or run `cargo xtask setup`)",
        path.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "toolmesh_xds=info".into()),
        )
        .with_test_writer()
        .try_init();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// Poll `f` until it yields `Some`, or fail with `what` after [`TIMEOUT`].
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > TIMEOUT {
            bail!("timed out after {TIMEOUT:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running Envoy; killed on drop (also when a test fails).
struct Envoy {
    child: Child,
    admin: u16,
    log: PathBuf,
}

impl Envoy {
    fn start(bin: &Path, dir: &Path, xds: SocketAddr, node: &str) -> Result<Self> {
        let admin = free_port();
        let bootstrap = dir.join(format!("{node}.yaml"));
        std::fs::write(
            &bootstrap,
            bootstrap_yaml(node, "toolmesh-test", &xds.to_string(), admin, true),
        )?;
        let log = dir.join(format!("{node}.log"));
        // Unique per process and per Envoy, so parallel test binaries never collide.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 16;
        let base_id = std::process::id() % 100_000 * 16 + n;
        let child = Command::new(bin)
            .args(["-c"])
            .arg(&bootstrap)
            .args(["--disable-hot-restart", "--concurrency", "1", "-l", "info"])
            .args(["--base-id", &base_id.to_string()])
            .arg("--log-path")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Self { child, admin, log })
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<_> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    async fn stat(&self, http: &reqwest::Client, name: &str) -> Option<u64> {
        let url = format!("http://127.0.0.1:{}/stats?filter=^{name}$", self.admin);
        let body = http.get(url).send().await.ok()?.text().await.ok()?;
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A control plane on a port: the server task and its shutdown trigger.
struct ControlPlane {
    handle: XdsHandle,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl ControlPlane {
    async fn start(settings: GatewaySettings, addr: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (server, handle) = XdsServer::new(settings);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = server.serve(listener, shutdown).await {
                panic!("xds server failed: {e}");
            }
        });
        Ok(Self {
            handle,
            addr,
            stop: Some(stop),
            task,
        })
    }

    /// Stop serving and wait until the server returned (all streams closed).
    async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(TIMEOUT, &mut self.task)
            .await
            .context("xds server did not shut down")??;
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Wait until exactly one Envoy is connected and has acknowledged every type of the current
/// snapshot; return its acked versions.
async fn wait_in_sync(cp: &XdsHandle, envoy: &Envoy) -> Result<BTreeMap<ResourceType, String>> {
    eventually("Envoy to ACK every resource type", || async {
        let envoys = cp.envoys();
        match envoys.as_slice() {
            [e] if e.in_sync => Some(e.acked_versions.clone()),
            _ => None,
        }
    })
    .await
    .with_context(|| {
        format!(
            "envoys: {:#?}\nEnvoy log:\n{}",
            cp.envoys(),
            envoy.log_tail()
        )
    })
}

/// One request as the upstream saw it.
#[derive(Debug, Clone, PartialEq)]
struct SeenRequest {
    host: String,
    path: String,
    /// `Authorization`, if any.
    authorization: Option<String>,
    /// `X-Api-Key`, if any.
    api_key: Option<String>,
}

/// What the upstream saw, in order.
type Seen = Arc<Mutex<Vec<SeenRequest>>>;

/// A tiny upstream MCP-ish server: answers any POST with a JSON-RPC result.
async fn start_upstream() -> Result<(SocketAddr, Seen)> {
    use axum::http::HeaderMap;
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().fallback(
        move |headers: HeaderMap, uri: axum::http::Uri, body: String| {
            let s = s.clone();
            async move {
                let get = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_string)
                };
                s.lock().unwrap().push(SeenRequest {
                    host: get("host").unwrap_or_default(),
                    path: uri.path().to_string(),
                    authorization: get("authorization"),
                    api_key: get("x-api-key"),
                });
                let id = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("id").cloned())
                    .unwrap_or(serde_json::Value::Null);
                axum::Json(serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {"ok": true}}))
            }
        },
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, seen))
}

fn model(catalog_version: &str, upstream: SocketAddr) -> GatewayModel {
    let mut policy = PolicySnapshot::empty(catalog_version);
    // Virtual servers need a key to seal their sessions.
    policy.sessions = toolmesh_proto::Sessions {
        keys: vec![toolmesh_proto::SessionKey {
            id: "test".into(),
            secret: "A".repeat(43),
        }],
        ..Default::default()
    };
    policy.virtual_servers.push(VirtualServer {
        name: "demo".into(),
        callers: Vec::new(),
        stale_tokens: Vec::new(),
        members: vec![Member {
            tools: vec![NamedItem::new("echo", "echo")],
            ..Member::new("x", "mcp_x", "/mcp", "127.0.0.1:1")
        }],
    });
    GatewayModel {
        policy,
        upstreams: vec![
            UpstreamEndpoint {
                mcp_server: "x".into(),
                cluster: "mcp_x".into(),
                url: format!("http://{upstream}/mcp"),
                request_headers: vec![],
            },
            // Never called: proves Envoy accepts the TLS cluster config (SNI, SAN, system roots).
            UpstreamEndpoint {
                mcp_server: "remote".into(),
                cluster: "mcp_remote".into(),
                url: "https://127.0.0.2:9443/mcp".into(),
                request_headers: vec![],
            },
        ],
    }
}

/// Build the stand-in filter with `rustc` (fast: no dependencies).
fn build_fixture_filter(dir: &Path) -> Result<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/echo_policy_filter.rs");
    let out = dir.join("echo_policy_filter.wasm");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let status = Command::new(rustc)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "--edition",
            "2024",
            "--target",
            "wasm32-wasip1",
            "--crate-type",
            "cdylib",
        ])
        .args(["-C", "opt-level=1", "-C", "strip=debuginfo", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .context("cannot run rustc")?;
    if !status.success() {
        bail!("building {} failed: {status}", src.display());
    }
    Ok(out)
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("http client")
}

/// POST a JSON-RPC ping to the gateway; `Some((status, x-test-policy, body))` once answered.
async fn call(
    http: &reqwest::Client,
    port: u16,
    path: &str,
    cluster: Option<&str>,
) -> Option<(u16, String, String)> {
    let mut rq = http
        .post(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/json")
        .body(r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#);
    if let Some(c) = cluster {
        rq = rq.header("x-toolmesh-cluster", c);
    }
    let resp = rq.send().await.ok()?;
    let status = resp.status().as_u16();
    let policy = resp
        .headers()
        .get("x-test-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Some((status, policy, resp.text().await.ok()?))
}

/// The published snapshot with the listener's port set to 70000, which Envoy's proto validation
/// rejects (no builder produces this: it stands for "a config Envoy refuses").
fn with_listener_port(snapshot: &Snapshot, port: u32) -> Snapshot {
    let mut res = snapshot.to_resources();
    for r in res.get_mut(&ResourceType::Listener).into_iter().flatten() {
        let mut l = Listener::decode(r.resource.value.as_slice()).expect("listener");
        if let Some(address::Address::SocketAddress(sa)) =
            l.address.as_mut().and_then(|a| a.address.as_mut())
        {
            sa.port_specifier = Some(socket_address::PortSpecifier::PortValue(port));
        }
        r.resource.value = l.encode_to_vec();
        assert_eq!(r.resource.type_url, Listener::type_url());
    }
    Snapshot::from_resources(res)
}

/// Waits for the (first) Envoy's NACK of listener version `version`.
async fn listener_nack(handle: &XdsHandle, version: &str) -> Result<toolmesh_xds::Nack> {
    eventually("the LDS NACK", || async {
        handle
            .envoys()
            .remove(0)
            .last_nack
            .filter(|n| n.type_url == ResourceType::Listener.type_url() && n.version == version)
    })
    .await
}

/// The snapshot with the MCP listener's access log removed (a smaller listener).
fn without_access_log(snapshot: &Snapshot) -> Snapshot {
    let mut res = snapshot.to_resources();
    for r in res.get_mut(&ResourceType::Listener).into_iter().flatten() {
        let mut l = Listener::decode(r.resource.value.as_slice()).expect("listener");
        for f in l
            .filter_chains
            .iter_mut()
            .flat_map(|c| c.filters.iter_mut())
        {
            if let Some(filter::ConfigType::TypedConfig(any)) = f.config_type.as_mut() {
                let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("hcm");
                hcm.access_log.clear();
                any.value = hcm.encode_to_vec();
            }
        }
        r.resource.value = l.encode_to_vec();
    }
    Snapshot::from_resources(res)
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_follows_the_control_plane() -> Result<()> {
    init_tracing();
    let Some(bin) = envoy_bin() else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let wasm = build_fixture_filter(dir.path())?;
    let (upstream, seen) = start_upstream().await?;
    let listener_port = free_port();
    let settings = GatewaySettings {
        listener_port,
        ..GatewaySettings::new(&wasm)
    };
    let http = http_client();

    // --- Envoy configured from nothing but the bootstrap.
    let cp = ControlPlane::start(settings.clone(), "127.0.0.1:0".parse()?).await?;
    cp.handle.publish(&model("v1", upstream))?;
    let envoy = Envoy::start(&bin, dir.path(), cp.addr, "gw-1")?;
    let acked = wait_in_sync(&cp.handle, &envoy).await?;
    assert_eq!(acked, cp.handle.snapshot().unwrap().versions());
    let status = cp.handle.envoys().remove(0);
    assert_eq!(
        (status.node_id.as_str(), status.cluster.as_str()),
        ("gw-1", "toolmesh-test")
    );
    assert!(status.last_nack.is_none(), "{:?}", status.last_nack);

    // --- Routing contract: the cluster header picks the upstream, Host is rewritten.
    let (code, policy, body) = eventually("the listener to answer", || {
        call(&http, listener_port, "/mcp", Some("mcp_x"))
    })
    .await
    .with_context(|| envoy.log_tail())?;
    assert_eq!(code, 200, "{body}");
    assert_eq!(policy, "v1", "the ECDS policy reached the filter");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(v["id"], 7);
    assert_eq!(v["result"]["ok"], true);
    assert_eq!(
        seen.lock()
            .unwrap()
            .last()
            .map(|r| (r.host.clone(), r.path.clone())),
        Some((upstream.to_string(), "/mcp".to_string()))
    );

    // No (or an unknown) cluster header: the JSON-RPC 404, and the upstream is not called.
    let before = seen.lock().unwrap().len();
    for cluster in [None, Some("xds_cluster"), Some("nope")] {
        let (code, _, body) = call(&http, listener_port, "/servers/demo/mcp", cluster)
            .await
            .context("no answer")?;
        assert_eq!(code, 404, "{cluster:?}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body)?;
        assert_eq!(v["error"]["code"], -32601, "{body}");
    }
    // Escaped slashes never reach the filter or an upstream.
    let (code, _, _) = call(
        &http,
        listener_port,
        "/servers/a%2F..%2Fb/mcp",
        Some("mcp_x"),
    )
    .await
    .context("no answer")?;
    assert_eq!(code, 400);
    assert_eq!(seen.lock().unwrap().len(), before);

    // --- A policy change reaches an already-open connection through ECDS alone.
    let v1 = cp.handle.snapshot().unwrap().versions();
    let pushes_before = cp.handle.metrics().pushes;
    cp.handle.publish(&model("v2", upstream))?;
    let v2 = cp.handle.snapshot().unwrap().versions();
    for ty in ResourceType::PUSH_ORDER {
        assert_eq!(
            v1[&ty] != v2[&ty],
            ty == ResourceType::ExtensionConfig,
            "{ty}"
        );
    }
    eventually("the new policy on the open connection", || async {
        let (code, policy, _) = call(&http, listener_port, "/mcp", Some("mcp_x")).await?;
        (code == 200 && policy == "v2").then_some(())
    })
    .await?;
    let acked = wait_in_sync(&cp.handle, &envoy).await?;
    assert_eq!(acked, v2);
    assert_eq!(
        cp.handle.metrics().pushes - pushes_before,
        1,
        "only the ECDS resource was pushed"
    );

    // --- NACK 1: the filter refuses the policy. Envoy's reason is recorded, v2 keeps serving.
    let nacks_before = cp.handle.metrics().nacks;
    cp.handle.publish(&model("reject-me", upstream))?;
    let rejected = cp.handle.snapshot().unwrap().versions();
    let nack = eventually("the ECDS NACK", || async {
        cp.handle.envoys().remove(0).last_nack
    })
    .await?;
    assert_eq!(nack.type_url, ResourceType::ExtensionConfig.type_url());
    assert_eq!(nack.version, rejected[&ResourceType::ExtensionConfig]);
    assert!(nack.message.contains("Wasm"), "reason: {}", nack.message);
    let status = cp.handle.envoys().remove(0);
    assert_eq!(
        status.acked_versions, v2,
        "the last good versions stay acked"
    );
    assert!(!status.in_sync);
    assert!(cp.handle.metrics().nacks > nacks_before);
    let (code, policy, _) = call(&http, listener_port, "/mcp", Some("mcp_x"))
        .await
        .context("no answer")?;
    assert_eq!((code, policy.as_str()), (200, "v2"));

    // --- NACK 2: a listener Envoy's proto validation refuses. Envoy puts the reason after a
    // dump of the resource and cuts its message at 4 KiB: the MCP listener with its access log
    // is longer, so the reason never arrives and the NACK says where it is.
    cp.handle.publish(&model("v2", upstream))?;
    wait_in_sync(&cp.handle, &envoy).await?;
    let good = cp.handle.snapshot().unwrap();
    let bad = with_listener_port(&good, 70000);
    cp.handle.publish_snapshot(bad.clone());
    let nack = listener_nack(&cp.handle, &bad.get(ResourceType::Listener).version).await?;
    assert!(
        nack.message.contains("\"toolmesh_mcp\"")
            && nack.message.contains("cut its message at 4 KiB")
            && nack.message.contains("Envoy's log"),
        "reason: {}",
        nack.message
    );
    // A smaller listener (no access log): the reason is the end of Envoy's message, not the
    // proto dump in front of it.
    let bad = with_listener_port(&without_access_log(&good), 70000);
    cp.handle.publish_snapshot(bad.clone());
    let nack = listener_nack(&cp.handle, &bad.get(ResourceType::Listener).version).await?;
    assert!(
        nack.message
            .starts_with("Proto constraint validation failed")
            && nack.message.contains("65535"),
        "reason: {}",
        nack.message
    );
    assert_eq!(cp.handle.envoys().remove(0).acked_versions, v2);
    let (code, _, _) = call(&http, listener_port, "/mcp", Some("mcp_x"))
        .await
        .context("no answer")?;
    assert_eq!(code, 200, "the last good listener keeps serving");
    // Publishing the good model again converges.
    cp.handle.publish(&model("v2", upstream))?;
    assert_eq!(wait_in_sync(&cp.handle, &envoy).await?, v2);

    // --- The control plane goes away: Envoy keeps serving the last config.
    let xds_addr = cp.addr;
    cp.stop().await?;
    eventually("Envoy to notice the control plane is gone", || async {
        (envoy.stat(&http, "control_plane.connected_state").await? == 0).then_some(())
    })
    .await?;
    let (code, policy, _) = call(&http, listener_port, "/mcp", Some("mcp_x"))
        .await
        .context("no answer while the control plane is down")?;
    assert_eq!((code, policy.as_str()), (200, "v2"));

    // --- A restarted control plane (fresh state, same address) resyncs Envoy.
    let cp = ControlPlane::start(settings, xds_addr).await?;
    cp.handle.publish(&model("v3", upstream))?;
    wait_in_sync(&cp.handle, &envoy).await?;
    eventually("the restarted control plane's policy", || async {
        let (code, policy, _) = call(&http, listener_port, "/mcp", Some("mcp_x")).await?;
        (code == 200 && policy == "v3").then_some(())
    })
    .await?;
    assert!(cp.handle.envoys()[0].last_nack.is_none());
    cp.stop().await?;
    Ok(())
}

/// The real filter (helper A's `toolmesh-filter`) loads the policy this crate builds. Skipped
/// (loudly) until the filter is a proxy-wasm module.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_filter_accepts_the_policy() -> Result<()> {
    init_tracing();
    let Some(bin) = envoy_bin() else {
        return Ok(());
    };
    let wasm = workspace_root().join("target/wasm32-wasip1/wasm-release/toolmesh_filter.wasm");
    if !wasm.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let _ = Command::new(cargo)
            .current_dir(workspace_root())
            .args([
                "build",
                "-p",
                "toolmesh-filter",
                "--target",
                "wasm32-wasip1",
            ])
            .args(["--profile", "wasm-release"])
            .status();
    }
    let is_proxy_wasm = std::fs::read(&wasm)
        .map(|b| b.windows(17).any(|w| w == b"proxy_abi_version"))
        .unwrap_or(false);
    if !is_proxy_wasm {
        eprintln!(
            "SKIPPED: {} is missing or not a proxy-wasm module yet \
             (cargo build -p toolmesh-filter --target wasm32-wasip1 --profile wasm-release)",
            wasm.display()
        );
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (upstream, seen) = start_upstream().await?;
    let listener_port = free_port();
    let settings = GatewaySettings {
        listener_port,
        ..GatewaySettings::new(&wasm)
    };
    let http = http_client();
    let cp = ControlPlane::start(settings, "127.0.0.1:0".parse()?).await?;
    cp.handle.publish(&model("v1", upstream))?;
    let envoy = Envoy::start(&bin, dir.path(), cp.addr, "gw-real")?;
    wait_in_sync(&cp.handle, &envoy).await?;
    assert!(cp.handle.envoys()[0].last_nack.is_none());

    // The filter strips client-sent x-toolmesh-* headers: a forged cluster header on a path that
    // is no virtual server must not reach the upstream.
    eventually("the listener to answer", || async {
        let (code, _, _) = call(&http, listener_port, "/not-a-server", Some("mcp_x")).await?;
        Some(code)
    })
    .await?;
    assert!(
        seen.lock().unwrap().is_empty(),
        "forged x-toolmesh-cluster reached the upstream"
    );
    cp.stop().await?;
    Ok(())
}

/// An upstream's credentials are set by its cluster, so they reach it on routed requests (where
/// they replace the client's `Authorization`) and on calls the filter makes itself with
/// `dispatch_http_call`, which never pass through the route table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_credentials_reach_routed_and_filter_made_calls() -> Result<()> {
    init_tracing();
    let Some(bin) = envoy_bin() else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let wasm = build_fixture_filter(dir.path())?;
    let (upstream, seen) = start_upstream().await?;
    let listener_port = free_port();
    let settings = GatewaySettings {
        listener_port,
        ..GatewaySettings::new(&wasm)
    };
    let http = http_client();
    let mut m = model("v1", upstream);
    m.upstreams[0].request_headers = vec![
        ("Authorization".into(), "Bearer upstream-secret".into()),
        ("X-Api-Key".into(), "k1".into()),
    ];
    let cp = ControlPlane::start(settings, "127.0.0.1:0".parse()?).await?;
    cp.handle.publish(&m)?;
    let envoy = Envoy::start(&bin, dir.path(), cp.addr, "gw-creds")?;
    wait_in_sync(&cp.handle, &envoy).await?;

    // Routed: the client's token is replaced by the upstream's credential.
    let (code, _, body) = eventually("the listener to answer", || async {
        let resp = http
            .post(format!("http://127.0.0.1:{listener_port}/mcp"))
            .header("content-type", "application/json")
            .header("x-toolmesh-cluster", "mcp_x")
            .header("authorization", "Bearer client-token")
            .header("x-api-key", "client-key")
            .body(r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#)
            .send()
            .await
            .ok()?;
        Some((resp.status().as_u16(), (), resp.text().await.ok()?))
    })
    .await
    .with_context(|| envoy.log_tail())?;
    assert_eq!(code, 200, "{body}");
    let routed = seen.lock().unwrap().last().cloned().context("no request")?;
    assert_eq!(
        (
            routed.authorization.as_deref(),
            routed.api_key.as_deref(),
            routed.path.as_str()
        ),
        (Some("Bearer upstream-secret"), Some("k1"), "/mcp"),
        "{routed:?}"
    );

    // The filter's own call to the cluster (no route involved) carries them too.
    let before = seen.lock().unwrap().len();
    let resp = http
        .post(format!("http://127.0.0.1:{listener_port}/servers/demo/mcp"))
        .header("x-test-dispatch", "mcp_x")
        .header("x-test-authority", "member.example:9000")
        .header("authorization", "Bearer client-token")
        .body("{}")
        .send()
        .await?;
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    assert_eq!(
        (status, text.as_str()),
        (200, "dispatched 200"),
        "{}",
        envoy.log_tail()
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), before + 1, "{seen:?}");
    let direct = seen.last().cloned().context("no request")?;
    assert_eq!(
        direct,
        SeenRequest {
            host: "member.example:9000".into(),
            path: "/mcp".into(),
            authorization: Some("Bearer upstream-secret".into()),
            api_key: Some("k1".into()),
        }
    );
    cp.stop().await?;
    Ok(())
}
