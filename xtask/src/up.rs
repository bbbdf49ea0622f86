//! `cargo xtask up`: run toolmesh on this machine — the control plane on its embedded SQLite
//! default (or Postgres when `DATABASE_URL` says so), Envoy configured by it over xDS, and the
//! filter — and stop everything cleanly on Ctrl-C or SIGTERM.
//!
//! Unless `--no-demo` is given and while the catalog has no MCP server, it also starts the demo
//! MCP server (the rmcp test server) and registers it with a virtual server `demo`, so that a
//! fresh clone serves MCP at once.

use crate::setup;
use crate::util::{build_wasm, cargo, http, root, sh, step};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

/// Ports and settings, from flags or `TOOLMESH_*` environment variables.
struct UpConfig {
    mcp_port: u16,
    api_port: u16,
    envoy_admin_port: u16,
    xds_port: u16,
    demo: bool,
}

fn port_setting(args: &[String], flag: &str, env: &str, default: u16) -> Result<u16> {
    let from_flag = args
        .iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1).cloned());
    match from_flag.or_else(|| std::env::var(env).ok()) {
        Some(v) => v
            .parse()
            .with_context(|| format!("{flag} / {env} must be a port number, got {v:?}")),
        None => Ok(default),
    }
}

impl UpConfig {
    fn from_args(args: &[String]) -> Result<Self> {
        let known = [
            "--mcp-port",
            "--api-port",
            "--envoy-admin-port",
            "--xds-port",
            "--no-demo",
        ];
        let mut i = 0;
        while let Some(a) = args.get(i) {
            if !known.contains(&a.as_str()) {
                bail!("unknown option {a:?} (known: {})", known.join(", "));
            }
            i += if a == "--no-demo" { 1 } else { 2 };
        }
        Ok(Self {
            mcp_port: port_setting(args, "--mcp-port", "TOOLMESH_MCP_PORT", 8080)?,
            api_port: port_setting(args, "--api-port", "TOOLMESH_API_PORT", 8081)?,
            envoy_admin_port: port_setting(
                args,
                "--envoy-admin-port",
                "TOOLMESH_ENVOY_ADMIN_PORT",
                9901,
            )?,
            xds_port: port_setting(args, "--xds-port", "TOOLMESH_XDS_PORT", 18000)?,
            demo: !args.iter().any(|a| a == "--no-demo"),
        })
    }
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    eprintln!("    stopped {}", self.name);
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            eprintln!("    killed {}", self.name);
        }
    }
}

/// Copy a child's output to ours, prefixed, and send each line to `lines`.
fn pump(name: &'static str, out: impl Read + Send + 'static, lines: Option<mpsc::Sender<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            eprintln!("[{name}] {line}");
            if let Some(tx) = &lines {
                let _ = tx.send(line);
            }
        }
    });
}

/// Run toolmesh until Ctrl-C / SIGTERM.
pub fn run(args: &[String]) -> Result<()> {
    let cfg = UpConfig::from_args(args)?;
    let tools = setup::run()?;
    let wasm = build_wasm()?;
    step("building the control plane and the demo MCP server (release)");
    sh(cargo().args([
        "build",
        "--release",
        "-p",
        "toolmesh",
        "-p",
        "toolmesh-test-servers",
    ]))?;
    for (port, what) in [
        (cfg.mcp_port, "MCP listener (TOOLMESH_MCP_PORT)"),
        (cfg.api_port, "REST API (TOOLMESH_API_PORT)"),
        (
            cfg.envoy_admin_port,
            "Envoy admin (TOOLMESH_ENVOY_ADMIN_PORT)",
        ),
        (cfg.xds_port, "xDS (TOOLMESH_XDS_PORT)"),
    ] {
        if crate::util::port_open(port) {
            bail!(
                "port {port} for the {what} is already in use; choose another with the flag or variable"
            );
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("cannot install the Ctrl-C/SIGTERM handler")?;
    }

    let data_dir = std::env::var("TOOLMESH_DATA_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root().join(".toolmesh"));
    std::fs::create_dir_all(&data_dir)?;

    step("starting the control plane: toolmesh serve");
    let mut cp = Command::new(root().join("target/release/toolmesh"));
    cp.arg("serve")
        .env("TOOLMESH_API_PORT", cfg.api_port.to_string())
        .env("TOOLMESH_XDS_PORT", cfg.xds_port.to_string())
        .env("TOOLMESH_MCP_PORT", cfg.mcp_port.to_string())
        .env("TOOLMESH_DATA_DIR", &data_dir)
        .env("TOOLMESH_WASM_PATH", &wasm)
        .env(
            "TOOLMESH_PUBLIC_MCP_URL",
            format!("http://127.0.0.1:{}", cfg.mcp_port),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut cp_child = cp.spawn().context("cannot start target/release/toolmesh")?;
    let (tx, cp_lines) = mpsc::channel();
    if let Some(out) = cp_child.stdout.take() {
        pump("toolmesh", out, Some(tx));
    }
    if let Some(err) = cp_child.stderr.take() {
        pump("toolmesh", err, None);
    }
    let mut procs = vec![Proc {
        name: "toolmesh serve",
        child: cp_child,
    }];
    wait_for(&stop, &mut procs, Duration::from_secs(60), || {
        http(cfg.api_port, "GET", "/healthz", None, None).is_ok_and(|(s, _)| s == 200)
    })
    .context("the control plane's REST API did not come up")?;
    let admin_token = std::env::var("TOOLMESH_ADMIN_TOKEN").ok().or_else(|| {
        cp_lines
            .try_iter()
            .find_map(|l| l.strip_prefix("admin token: ").map(str::to_string))
    });

    step("starting Envoy with envoy/bootstrap.yaml");
    let bootstrap = render_bootstrap(&root().join("envoy/bootstrap.yaml"), &cfg)?;
    let bootstrap_path = data_dir.join("envoy-bootstrap.yaml");
    std::fs::write(&bootstrap_path, bootstrap)?;
    let mut envoy = Command::new(&tools.envoy);
    envoy
        .args(["-c"])
        .arg(&bootstrap_path)
        .args([
            "--service-node",
            "toolmesh-local",
            "--service-cluster",
            "toolmesh",
            "--disable-hot-restart",
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut envoy_child = envoy.spawn().context("cannot start Envoy")?;
    if let Some(out) = envoy_child.stderr.take() {
        pump("envoy", out, None);
    }
    if let Some(out) = envoy_child.stdout.take() {
        pump("envoy", out, None);
    }
    procs.push(Proc {
        name: "envoy",
        child: envoy_child,
    });
    wait_for(&stop, &mut procs, Duration::from_secs(60), || {
        http(cfg.envoy_admin_port, "GET", "/ready", None, None).is_ok_and(|(s, _)| s == 200)
    })
    .context("Envoy did not become ready (is the control plane serving xDS?)")?;

    let mut demo_line = String::new();
    if cfg.demo {
        match admin_token.as_deref() {
            Some(token) => {
                if let Some(p) = start_demo(&cfg, token, &mut demo_line)? {
                    procs.push(p);
                }
            }
            None => {
                demo_line =
                    "demo: skipped (set TOOLMESH_ADMIN_TOKEN so xtask can register it)".into()
            }
        }
    }

    println!();
    println!("toolmesh is up. Ctrl-C stops everything.");
    println!(
        "  MCP (Envoy):     http://127.0.0.1:{}/servers/{{name}}/mcp",
        cfg.mcp_port
    );
    println!(
        "  REST API:        http://127.0.0.1:{}/v1  (OpenAPI: /openapi.json)",
        cfg.api_port
    );
    println!(
        "  Envoy admin:     http://127.0.0.1:{}  (stats: /stats/prometheus)",
        cfg.envoy_admin_port
    );
    println!("  xDS:             127.0.0.1:{}", cfg.xds_port);
    println!("  data:            {}", data_dir.display());
    match &admin_token {
        Some(t) => println!("  admin token:     {t}"),
        None => println!(
            "  admin token:     printed on the first start; `toolmesh admin reset-token` makes a new one"
        ),
    }
    if !demo_line.is_empty() {
        println!("  {demo_line}");
    }
    std::io::stdout().flush()?;

    loop {
        if stop.load(Ordering::SeqCst) {
            step("stopping");
            break;
        }
        for p in procs.iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                step(&format!("{} exited ({status}); stopping the rest", p.name));
                stop.store(true, Ordering::SeqCst);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Stop Envoy first (no new traffic), then the control plane, then the demo MCP server.
    for name in ["envoy", "toolmesh serve", "demo MCP server"] {
        procs.retain(|p| p.name != name);
    }
    Ok(())
}

fn wait_for(
    stop: &AtomicBool,
    procs: &mut [Proc],
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        if stop.load(Ordering::SeqCst) {
            bail!("interrupted");
        }
        for p in procs.iter_mut() {
            if let Ok(Some(status)) = p.child.try_wait() {
                bail!("{} exited early ({status}); see its log above", p.name);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out after {timeout:?}")
}

/// Substitute the configured ports into the bootstrap (the file holds the defaults).
fn render_bootstrap(path: &Path, cfg: &UpConfig) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .replace(
            "port_value: 18000",
            &format!("port_value: {}", cfg.xds_port),
        )
        .replace(
            "port_value: 9901",
            &format!("port_value: {}", cfg.envoy_admin_port),
        ))
}

/// Start the demo MCP server and register it, unless the catalog already has MCP servers.
fn start_demo(cfg: &UpConfig, token: &str, line: &mut String) -> Result<Option<Proc>> {
    let (status, body) = http(cfg.api_port, "GET", "/v1/mcp-servers", Some(token), None)?;
    if status != 200 {
        bail!("GET /v1/mcp-servers answered {status}: {body}");
    }
    if !body.contains("\"items\":[]") && !body.contains("\"items\": []") {
        *line = "demo: not started (the catalog already has MCP servers)".into();
        return Ok(None);
    }
    let mut child = Command::new(root().join("target/release/mcp-test-server"))
        .args(["--port", "0"])
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the demo MCP server")?;
    let mut first = String::new();
    if let Some(out) = child.stdout.take() {
        let mut reader = BufReader::new(out);
        reader.read_line(&mut first)?;
        std::thread::spawn(move || for _ in reader.lines() {});
    }
    let proc = Proc {
        name: "demo MCP server",
        child,
    };
    let url = first
        .trim()
        .strip_prefix("listening on ")
        .context("the demo MCP server did not say where it listens")?
        .to_string();
    let reg = format!(
        r#"{{"name":"demo","url":"{url}","transport":"streamable-http","description":"toolmesh demo server (rmcp test server)"}}"#
    );
    let (status, body) = http(
        cfg.api_port,
        "POST",
        "/v1/mcp-servers",
        Some(token),
        Some(&reg),
    )?;
    if status != 201 {
        bail!("registering the demo MCP server failed ({status}): {body}");
    }
    let vs = r#"{"name":"demo","description":"demo virtual server","tools":[{"mcp_server":"demo","tool":"echo"},{"mcp_server":"demo","tool":"add","expose_as":"add_numbers"},{"mcp_server":"demo","tool":"slow"}],"prompts":[{"mcp_server":"demo","prompt":"greet"}],"resources":[{"mcp_server":"demo","uri":"test://static/readme"}]}"#;
    let (status, body) = http(
        cfg.api_port,
        "POST",
        "/v1/virtual-servers",
        Some(token),
        Some(vs),
    )?;
    if status != 201 {
        bail!("creating the demo virtual server failed ({status}): {body}");
    }
    // Virtual servers need a token by default: make one for the demo.
    let (status, body) = http(
        cfg.api_port,
        "POST",
        "/v1/tokens",
        Some(token),
        Some(
            r#"{"name":"demo","virtual_servers":["demo"],"description":"made by cargo xtask up"}"#,
        ),
    )?;
    if status != 201 {
        bail!("creating the demo token failed ({status}): {body}");
    }
    let jwt = body
        .split("\"token\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("the token API did not return a token")?;
    *line = format!(
        "demo:            MCP server {url} → http://127.0.0.1:{port}/servers/demo/mcp (tools echo, add_numbers, slow)\n  demo token:      {jwt}\n  try:             .tools/venv/bin/python tests/clients/py_client.py http://127.0.0.1:{port}/servers/demo/mcp '[{{\"op\":\"list_tools\"}}]' --header 'Authorization: Bearer {jwt}'",
        port = cfg.mcp_port
    );
    Ok(Some(proc))
}
