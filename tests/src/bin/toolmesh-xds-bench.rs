//! `cargo xtask bench --xds`: how fast a catalog change is enforced, and how long a large catalog
//! takes to build and push. Prints a Markdown report; asserts nothing (the machine is shared).
//!
//! 1. Propagation: a real control plane (SQLite), a real Envoy from `envoy/bootstrap.yaml`, the
//!    filter, an rmcp upstream. 50 times: a REST write adds or removes `echo` from a virtual
//!    server, and a client on an open keep-alive connection polls `tools/call echo` until the
//!    answer flips. Reported: p50/p90/p99/max of write → enforcement.
//! 2. Scale: a model of 10,000 tools in 1,000 virtual servers over 100 MCP servers, built into
//!    Envoy resources and pushed to a connected Envoy until it acknowledges every type.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::Method;
use serde_json::json;
use toolmesh_e2e::control_plane::{ControlPlane, ControlPlaneOptions, envoy_from_bootstrap};
use toolmesh_e2e::test_servers::{TestServerConfig, spawn};
use toolmesh_e2e::tools;
use toolmesh_proto::{Member, NamedItem, PolicySnapshot, VirtualServer};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn propagation(
    envoy_bin: &std::path::Path,
    wasm: &std::path::Path,
) -> anyhow::Result<String> {
    let upstream = spawn(TestServerConfig::stateless_json()).await?;
    let dir = tempfile::tempdir()?;
    let opts = ControlPlaneOptions::new(dir.path(), wasm);
    let cp = ControlPlane::start(&opts).await?;
    cp.register("everything", &upstream.url()).await?;
    let vs = |with_echo: bool| {
        let mut tools = vec![json!({"mcp_server": "everything", "tool": "add"})];
        if with_echo {
            tools.push(json!({"mcp_server": "everything", "tool": "echo"}));
        }
        // Anonymous: the bench measures policy propagation, not tokens.
        json!({"name": "bench", "anonymous": true, "tools": tools})
    };
    cp.ok(Method::POST, "/v1/virtual-servers", Some(&vs(true)))
        .await?;
    let _envoy = envoy_from_bootstrap(envoy_bin, "bench-1", opts.xds_port, opts.mcp_port).await?;
    cp.wait_envoys_in_sync(1, Duration::from_secs(30)).await?;
    let url = format!("http://127.0.0.1:{}/servers/bench/mcp", opts.mcp_port);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"x"}}}"#;
    let allowed = |client: reqwest::Client, url: String| async move {
        let body = client
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(call)
            .send()
            .await?
            .text()
            .await?;
        anyhow::Ok(body.contains("\"result\""))
    };
    if !allowed(client.clone(), url.clone()).await? {
        bail!("echo is not allowed at the start");
    }
    let mut samples = Vec::new();
    let mut with_echo = true;
    for _ in 0..50 {
        with_echo = !with_echo;
        let started = Instant::now();
        cp.ok(
            Method::PUT,
            "/v1/virtual-servers/bench",
            Some(&vs(with_echo)),
        )
        .await?;
        loop {
            if allowed(client.clone(), url.clone()).await? == with_echo {
                break;
            }
            if started.elapsed() > Duration::from_secs(10) {
                bail!("a change was not enforced within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    cp.stop().await;
    Ok(format!(
        "| REST write → enforced on an open connection (50 changes) | p50 {} | p90 {} | p99 {} | max {} |",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.9)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap_or(&Duration::ZERO)),
    ))
}

fn large_model() -> toolmesh_xds::GatewayModel {
    let servers = 100;
    let mut policy = PolicySnapshot::empty("bench");
    // The filter refuses virtual servers without a key to seal their sessions.
    policy.sessions = toolmesh_e2e::config::test_sessions();
    for v in 0..1000 {
        // Each virtual server: 10 tools from 2 MCP servers.
        let members = (0..2)
            .map(|m| {
                let s = (v * 2 + m) % servers;
                Member {
                    tools: (0..5)
                        .map(|t| {
                            NamedItem::new(format!("tool_{s}_{t}_{v}"), format!("tool_{t}_{v}"))
                        })
                        .collect(),
                    ..Member::new(
                        format!("srv-{s}"),
                        format!("mcp_srv-{s}"),
                        "/mcp",
                        "127.0.0.1:1",
                    )
                }
            })
            .collect();
        policy.virtual_servers.push(VirtualServer {
            name: format!("vs-{v}"),
            callers: Vec::new(),
            stale_tokens: Vec::new(),
            members,
        });
    }
    toolmesh_xds::GatewayModel {
        policy,
        upstreams: (0..servers)
            .map(|s| toolmesh_xds::UpstreamEndpoint {
                mcp_server: format!("srv-{s}"),
                cluster: format!("mcp_srv-{s}"),
                url: format!("http://127.0.0.1:{}/mcp", 20000 + s),
                request_headers: vec![],
            })
            .collect(),
    }
}

async fn scale(envoy_bin: &std::path::Path, wasm: &std::path::Path) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let xds_port = listener.local_addr()?.port();
    let mcp_port = toolmesh_e2e::free_port();
    let mut settings = toolmesh_xds::GatewaySettings::new(wasm);
    settings.listener_port = mcp_port;
    let (server, handle) = toolmesh_xds::XdsServer::new(settings);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    // Start with a small catalog so Envoy is connected and warm.
    handle
        .publish(&toolmesh_xds::GatewayModel {
            policy: PolicySnapshot::empty("warm"),
            upstreams: vec![],
        })
        .context("publishing the warm-up model")?;
    let _envoy = envoy_from_bootstrap(envoy_bin, "bench-scale", xds_port, mcp_port).await?;
    let model = large_model();
    let policy_bytes = model.policy.to_json().len();
    let started = Instant::now();
    handle
        .publish(&model)
        .context("publishing the large model")?;
    let built = started.elapsed();
    loop {
        let envoys = handle.envoys();
        if let Some(nack) = envoys.iter().find_map(|e| e.last_nack.clone()) {
            bail!("Envoy rejected the large snapshot: {nack:?}");
        }
        if envoys.iter().any(|e| e.in_sync) {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("Envoy did not acknowledge the large snapshot within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let acked = started.elapsed();
    let _ = stop.send(());
    let _ = task.await;
    Ok(format!(
        "| 10,000 tools / 1,000 virtual servers / 100 MCP servers (policy {} KB) | build {} | build + push + Envoy ACK of every type {} | | |",
        policy_bytes / 1024,
        ms(built),
        ms(acked)
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let envoy_bin = tools::envoy_path().context("Envoy not found: run `cargo xtask setup`")?;
    let wasm =
        tools::filter_wasm_path().context("filter wasm not found: run `cargo xtask wasm`")?;
    let a = propagation(&envoy_bin, &wasm).await?;
    let b = scale(&envoy_bin, &wasm).await?;
    println!("| control plane → Envoy | | | | |\n|---|---|---|---|---|\n{a}\n{b}");
    Ok(())
}
