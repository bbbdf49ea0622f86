//! `cargo xtask bench`: what the toolmesh filter costs, measured against bare Envoy in one run.
//!
//! Three Envoys run on loopback: an upstream that answers every `tools/call` with a fixed
//! JSON-RPC result (`direct_response`, so it is never the bottleneck), a bare gateway that only
//! proxies, and a gateway with the toolmesh filter enforcing a policy. `wrk` sends the same
//! `tools/call` through each gateway, alternating between them round by round, at concurrency 1
//! and 32. For each cell we report the median over rounds of req/s, p50 and p99 latency, the
//! gateway's CPU per request (user+system time from `/proc` divided by requests) and its RSS, and
//! the filter/bare ratios. The machines are shared and noisy: these are measurements to compare
//! in one run, never assertions.
//!
//! A second part measures the control plane → Envoy path (`tests/src/bin/toolmesh-xds-bench.rs`):
//! REST write → enforcement on an open connection over 50 changes, and the build and push of a
//! 10,000-tool catalog.
//!
//! `--callgrind` instead counts the instructions Envoy executes per request under valgrind
//! (repeatable within ~1%, unlike wall-clock time on these machines): the same upstream and
//! gateways, 200 warm-up requests, then `--requests N` (default 500) counted ones, one at a
//! time on one keep-alive connection, for bare Envoy and each `--wasm PATH` (default: the
//! filter just built), split into wasm JIT code and Envoy's own.
//!
//! Options: `--duration SECS` (default 5), `--rounds N` (default 3), `--filter-only`, `--xds-only`,
//! `--callgrind [--requests N] [--wasm PATH]...`.

use crate::util::{build_wasm, root, sh, step};
use anyhow::{Context, Result, bail};
use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BODY: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":2,"b":3}}}"#;
const RESULT: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"5"}],"structuredContent":{"sum":5},"isError":false}}"#;

struct Envoy {
    child: Child,
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_envoy(envoy: &std::path::Path, name: &str, yaml: &str, admin: u16) -> Result<Envoy> {
    start_envoy_under(&[], envoy, name, yaml, admin, Duration::from_secs(60))
}

/// Start Envoy (one worker) with config `yaml`, run under `wrapper` (a command line the Envoy
/// command is appended to, e.g. valgrind; empty: none), and wait until its admin says ready.
fn start_envoy_under(
    wrapper: &[String],
    envoy: &std::path::Path,
    name: &str,
    yaml: &str,
    admin: u16,
    ready_within: Duration,
) -> Result<Envoy> {
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(&cfg, yaml)?;
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(envoy);
            c
        }
        None => Command::new(envoy),
    };
    let child = cmd
        .arg("-c")
        .arg(&cfg)
        .args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start Envoy ({name})"))?;
    let mut e = Envoy { child };
    let deadline = Instant::now() + ready_within;
    loop {
        let last = match crate::util::http(admin, "GET", "/ready", None, None) {
            Ok((200, _)) => return Ok(e),
            Ok((s, b)) => format!("{s} {b}"),
            Err(err) => err.to_string(),
        };
        if let Ok(Some(st)) = e.child.try_wait() {
            bail!("Envoy ({name}) exited ({st}); see target/bench/{name}.log");
        }
        if Instant::now() > deadline {
            bail!(
                "Envoy ({name}) not ready after {} s (admin :{admin} said: {last}); see target/bench/{name}.log",
                ready_within.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn admin_yaml(port: u16) -> String {
    format!("admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}\n")
}

fn upstream_yaml(admin: u16, port: u16) -> String {
    let body = serde_escape(RESULT);
    format!(
        r#"{admin}static_resources:
  listeners:
  - name: up
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: up
          route_config:
            response_headers_to_add:
            - header: {{key: content-type, value: application/json}}
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: "{body}"}}}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#,
        admin = admin_yaml(admin)
    )
}

fn serde_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn gateway_yaml(admin: u16, port: u16, upstream: u16, wasm: Option<&std::path::Path>) -> String {
    let (filter, route_match) = match wasm {
        Some(path) => {
            let policy = r#"{"schema_version": 3,"catalog_version":"bench","sessions":{"keys":[{"id":"bench","secret":"dG9vbG1lc2gtdGVzdC1zZXNzaW9uLWtleS0zMi1ieXRlcyEhIQ"}]},"virtual_servers":[{"name":"bench","members":[{"mcp_server":"upstream","cluster":"mcp_upstream","path":"/mcp","authority":"127.0.0.1","tools":[{"name":"add","upstream_name":"add"},{"name":"echo","upstream_name":"echo"}]}]}]}"#;
            (
                format!(
                    r#"          - name: toolmesh
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: toolmesh
                root_id: toolmesh
                failure_policy: FAIL_RELOAD
                allow_on_headers_stop_iteration: true
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: "{}"
                vm_config:
                  vm_id: toolmesh
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: "{}"}}}}
"#,
                    serde_escape(policy),
                    path.display()
                ),
                r#"{prefix: "/", headers: [{name: x-toolmesh-cluster, string_match: {exact: mcp_upstream}}]}"#,
            )
        }
        None => (String::new(), r#"{prefix: "/"}"#),
    };
    format!(
        r#"{admin}static_resources:
  listeners:
  - name: gw
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gw
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {route_match}
                route: {{cluster: mcp_upstream, timeout: 0s}}
          http_filters:
{filter}          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: mcp_upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: mcp_upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}
"#,
        admin = admin_yaml(admin)
    )
}

/// CPU time (user + system) of a process in microseconds.
fn cpu_us(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(ticks * 1_000_000 / 100) // CLK_TCK is 100 on Linux
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[derive(Clone, Copy, Default)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_rq: f64,
}

fn parse_latency(v: &str) -> f64 {
    let v = v.trim();
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

fn wrk(port: u16, conns: u32, secs: u32, gw_pid: u32) -> Result<Sample> {
    let script = root().join("target/bench/tools_call.lua");
    let cpu0 = cpu_us(gw_pid)?;
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{conns}"),
            &format!("-d{secs}s"),
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(format!("http://127.0.0.1:{port}/servers/bench/mcp"))
        .output()
        .context("cannot run wrk")?;
    let cpu1 = cpu_us(gw_pid)?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("Non-2xx") {
        bail!("wrk saw non-2xx responses:\n{text}");
    }
    let mut s = Sample::default();
    let mut requests = 0f64;
    for line in text.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            s.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = l.strip_prefix("50%") {
            s.p50_ms = parse_latency(v);
        } else if let Some(v) = l.strip_prefix("99%") {
            s.p99_ms = parse_latency(v);
        } else if l.contains("requests in") {
            requests = l
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
        }
    }
    if requests == 0.0 {
        bail!("wrk reported no requests:\n{text}");
    }
    s.cpu_us_per_rq = (cpu1 - cpu0) as f64 / requests;
    Ok(s)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn arg(args: &[String], flag: &str, default: u32) -> Result<u32> {
    match args.iter().position(|a| a == flag) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{flag} needs a number")),
        None => Ok(default),
    }
}

fn ensure_wrk() -> Result<()> {
    if Command::new("wrk").arg("--version").output().is_ok() {
        return Ok(());
    }
    step("installing wrk (Debian package) for the benchmark");
    sh(Command::new("apt-get").args(["install", "-y", "-q", "wrk"]))
        .context("wrk is needed for the benchmark; install it (Debian/Ubuntu: apt-get install wrk)")
}

/// Run the benchmarks and print (and save) the tables.
pub fn run(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "--callgrind") {
        return callgrind(args);
    }
    let only_xds = args.iter().any(|a| a == "--xds-only");
    let only_filter = args.iter().any(|a| a == "--filter-only");
    let mut report = String::new();
    if !only_xds {
        report.push_str(&filter_bench(args)?);
    }
    if !only_filter {
        report.push('\n');
        report.push_str(&xds_bench()?);
    }
    println!("\n{report}");
    std::fs::create_dir_all(root().join("target/bench"))?;
    std::fs::write(root().join("target/bench/latest.md"), &report)?;
    eprintln!("(saved to target/bench/latest.md)");
    Ok(())
}

/// Control plane → Envoy: REST write → enforcement latency, and a 10k-tool snapshot push.
fn xds_bench() -> Result<String> {
    let tools = crate::setup::run()?;
    let wasm = build_wasm()?;
    step("control plane → Envoy: 50 REST changes, and 10,000 tools / 1,000 virtual servers");
    let mut cmd = crate::util::cargo();
    cmd.args([
        "run",
        "--quiet",
        "-p",
        "toolmesh-e2e",
        "--bin",
        "toolmesh-xds-bench",
    ])
    .env("TOOLMESH_FILTER_WASM", &wasm);
    for (k, v) in tools.env() {
        cmd.env(k, v);
    }
    let out = crate::util::output(&mut cmd)?;
    Ok(format!(
        "{out}\n\nControl plane in the dev profile, in-process with SQLite; one Envoy 1.40; the same machine.\n"
    ))
}

/// The filter against bare Envoy.
fn filter_bench(args: &[String]) -> Result<String> {
    let secs = arg(args, "--duration", 5)?;
    let rounds = arg(args, "--rounds", 3)?;
    let tools = crate::setup::run()?;
    ensure_wrk()?;
    let wasm = build_wasm()?;
    std::fs::create_dir_all(root().join("target/bench"))?;
    std::fs::write(
        root().join("target/bench/tools_call.lua"),
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{BODY}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.headers[\"Accept\"] = \"application/json, text/event-stream\"\n"
        ),
    )?;

    step(
        "starting the upstream, the bare gateway and the filter gateway (Envoy 1.40, 1 worker each)",
    );
    let (up_port, up_admin) = (free_port()?, free_port()?);
    let _upstream = start_envoy(
        &tools.envoy,
        "upstream",
        &upstream_yaml(up_admin, up_port),
        up_admin,
    )?;
    let (bare_port, bare_admin) = (free_port()?, free_port()?);
    let bare = start_envoy(
        &tools.envoy,
        "bare",
        &gateway_yaml(bare_admin, bare_port, up_port, None),
        bare_admin,
    )?;
    let (filt_port, filt_admin) = (free_port()?, free_port()?);
    let filt = start_envoy(
        &tools.envoy,
        "filter",
        &gateway_yaml(filt_admin, filt_port, up_port, Some(&wasm)),
        filt_admin,
    )?;

    // The filter gateway must really allow and forward the call (not deny it).
    check_call(filt_port)?;
    check_call(bare_port)?;

    let variants = [
        ("bare Envoy", &bare, bare_port),
        ("Envoy + toolmesh", &filt, filt_port),
    ];
    let mut report = String::new();
    let _ = writeln!(
        report,
        "| variant | conns | req/s | p50 | p99 | gateway CPU µs/req | gateway RSS |\n|---|---|---|---|---|---|---|"
    );
    let mut results = Vec::new();
    for conns in [1u32, 32] {
        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(), Vec::new()];
        for round in 0..rounds {
            for (i, (name, envoy, port)) in variants.iter().enumerate() {
                eprintln!(
                    "    round {}/{rounds}: {name}, {conns} conns, {secs} s",
                    round + 1
                );
                // warm-up
                wrk(*port, conns, 1, envoy.child.id())?;
                samples[i].push(wrk(*port, conns, secs, envoy.child.id())?);
            }
        }
        let mut med = Vec::new();
        for (i, (name, envoy, _)) in variants.iter().enumerate() {
            let s = &samples[i];
            let m = Sample {
                rps: median(s.iter().map(|x| x.rps).collect()),
                p50_ms: median(s.iter().map(|x| x.p50_ms).collect()),
                p99_ms: median(s.iter().map(|x| x.p99_ms).collect()),
                cpu_us_per_rq: median(s.iter().map(|x| x.cpu_us_per_rq).collect()),
            };
            let _ = writeln!(
                report,
                "| {name} | {conns} | {:.0} | {:.3} ms | {:.3} ms | {:.1} | {:.1} MiB |",
                m.rps,
                m.p50_ms,
                m.p99_ms,
                m.cpu_us_per_rq,
                rss_mib(envoy.child.id())
            );
            med.push(m);
        }
        results.push((conns, med));
    }
    let _ = writeln!(report);
    for (conns, med) in &results {
        if let [b, f] = med.as_slice() {
            let _ = writeln!(
                report,
                "- concurrency {conns}: throughput {:.1}% of bare Envoy; added CPU {:+.1} µs/request; p50 {:+.3} ms",
                100.0 * f.rps / b.rps,
                f.cpu_us_per_rq - b.cpu_us_per_rq,
                f.p50_ms - b.p50_ms
            );
        }
    }
    let _ = writeln!(
        report,
        "\n{rounds} rounds × {secs} s per cell, alternating variants, medians; wrk -t1, one Envoy worker each, all on the same machine."
    );
    Ok(report)
}

fn check_call(port: u16) -> Result<()> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "POST /servers/bench/mcp HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    if !resp.starts_with("HTTP/1.1 200") || !resp.contains("\"sum\":5") {
        bail!(
            "a tools/call through the gateway on port {port} did not reach the upstream:\n{resp}"
        );
    }
    Ok(())
}

/// `--callgrind`: instructions per request under valgrind, bare Envoy vs each filter.
fn callgrind(args: &[String]) -> Result<()> {
    let n = arg(args, "--requests", 500)?;
    let tools = crate::setup::run()?;
    let mut wasms: Vec<std::path::PathBuf> = args
        .iter()
        .zip(args.iter().skip(1))
        .filter(|(flag, _)| *flag == "--wasm")
        .map(|(_, path)| path.into())
        .collect();
    if wasms.is_empty() {
        wasms.push(build_wasm()?);
    }
    let (up_port, up_admin) = (free_port()?, free_port()?);
    let _upstream = start_envoy(
        &tools.envoy,
        "upstream",
        &upstream_yaml(up_admin, up_port),
        up_admin,
    )?;
    let mut variants: Vec<(String, Option<&std::path::Path>)> = vec![("bare Envoy".into(), None)];
    variants.extend(
        wasms
            .iter()
            .map(|w| (w.display().to_string(), Some(w.as_path()))),
    );
    let mut bare = None;
    let mut report = String::new();
    for (i, (name, wasm)) in variants.iter().enumerate() {
        step(&format!("callgrind: {name} ({n} requests)"));
        let (jit, other) =
            count_instructions(&tools.envoy, &format!("callgrind{i}"), up_port, *wasm, n)?;
        let total = jit + other;
        let base = *bare.get_or_insert(total);
        let line = format!(
            "{name}: {total:.0} instructions/request ({:+.0} vs bare; wasm JIT {jit:.0})",
            total - base
        );
        println!("{line}");
        let _ = writeln!(report, "{line}");
    }
    std::fs::write(root().join("target/bench/callgrind.md"), &report)?;
    eprintln!("(saved to target/bench/callgrind.md)");
    Ok(())
}

/// Run one gateway under callgrind, send 200 warm-up and `n` counted `tools/call`s, and return
/// instructions per request as (wasm JIT code, everything else).
fn count_instructions(
    envoy: &std::path::Path,
    name: &str,
    upstream: u16,
    wasm: Option<&std::path::Path>,
    n: u32,
) -> Result<(f64, f64)> {
    let out = root().join(format!("target/bench/{name}.callgrind"));
    for old in std::fs::read_dir(root().join("target/bench"))?.filter_map(|e| e.ok()) {
        if old
            .file_name()
            .to_string_lossy()
            .starts_with(&format!("{name}.callgrind"))
        {
            let _ = std::fs::remove_file(old.path());
        }
    }
    let (port, admin) = (free_port()?, free_port()?);
    let wrapper: Vec<String> = [
        "valgrind",
        "--tool=callgrind",
        "--smc-check=all-non-file",
        "--instr-atstart=no",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([format!("--callgrind-out-file={}", out.display())])
    .collect();
    let gw = start_envoy_under(
        &wrapper,
        envoy,
        name,
        &gateway_yaml(admin, port, upstream, wasm),
        admin,
        Duration::from_secs(600),
    )?;
    let mut conn = KeepAlive::connect(port)?;
    for _ in 0..200 {
        conn.call()?;
    }
    let control = |what: &[&str]| {
        Command::new("callgrind_control")
            .args(what)
            .arg(gw.child.id().to_string())
            .output()
            .context("cannot run callgrind_control (valgrind)")
    };
    control(&["-i", "on"])?;
    for _ in 0..n {
        conn.call()?;
    }
    control(&["-i", "off"])?;
    control(&["-d"])?;
    drop(gw);
    // callgrind numbers the dumps it writes on request (`<file>.1`, ...): the newest one.
    let dir = out.parent().context("dump directory")?;
    let prefix = out
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dump = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| Some((e.metadata().ok()?, e.path())))
        .filter(|(m, _)| m.len() > 0)
        .max_by_key(|(m, _)| m.modified().ok())
        .map(|(_, p)| p)
        .with_context(|| format!("callgrind wrote no dump next to {}", out.display()))?;
    by_object(&dump, f64::from(n))
}

/// One keep-alive connection sending the benchmark's `tools/call`.
struct KeepAlive {
    stream: std::io::BufReader<std::net::TcpStream>,
    port: u16,
}

impl KeepAlive {
    fn connect(port: u16) -> Result<Self> {
        let s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Self {
            stream: std::io::BufReader::new(s),
            port,
        })
    }

    /// Send the call and read the answer (`content-length` framed), which must be the sum.
    fn call(&mut self) -> Result<()> {
        use std::io::{BufRead, Read, Write};
        // One write: a request split over several segments costs Envoy more reads.
        let request = format!(
            "POST /servers/bench/mcp HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAccept-Encoding: identity\r\nContent-Length: {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\r\n{BODY}",
            self.port,
            BODY.len()
        );
        self.stream.get_mut().write_all(request.as_bytes())?;
        let mut status = String::new();
        self.stream.read_line(&mut status)?;
        let mut length = None;
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse::<usize>().ok();
            }
        }
        let length = length.context("the gateway's answer has no content-length")?;
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body)?;
        let body = String::from_utf8_lossy(&body);
        if !status.starts_with("HTTP/1.1 200") || !body.contains("\"sum\":5") {
            bail!("unexpected answer through the gateway: {status} {body}");
        }
        Ok(())
    }
}

/// Instructions per request in a callgrind dump, as (wasm JIT code, everything else): code
/// without an object file (`???`, V8's generated code) is the wasm.
fn by_object(dump: &std::path::Path, n: f64) -> Result<(f64, f64)> {
    let out = Command::new("callgrind_annotate")
        .args(["--inclusive=no", "--threshold=100"])
        .arg(dump)
        .output()
        .context("cannot run callgrind_annotate (valgrind)")?;
    let (mut jit, mut other) = (0f64, 0f64);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `  1,234 (0.5%)  function [object]`
        let line = line.trim();
        let Some((count, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(count) = count.replace(',', "").parse::<f64>() else {
            continue;
        };
        let Some((function, object)) = rest.strip_suffix(']').and_then(|r| r.rsplit_once('['))
        else {
            continue;
        };
        if !rest.trim_start().starts_with('(') {
            continue;
        }
        if object == "???" && !function.contains("0x00000000") {
            jit += count;
        } else {
            other += count;
        }
    }
    if jit + other == 0.0 {
        bail!("no instructions in {}", dump.display());
    }
    Ok((jit / n, other / n))
}
