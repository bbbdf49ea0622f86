//! A real Envoy for one test: config in a temp dir, free ports, readiness by polling the admin
//! `/ready`, killed on drop (printing its log when the test failed), and admin helpers for stats.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::config::{FilterConfig, static_envoy_config};
use crate::process::{ChildProcess, LOG_TAIL_LINES, free_port};

/// How long [`Envoy::start`] waits for `/ready` (generous: the machine may be loaded, and V8
/// compiles the wasm at startup).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// What Envoy runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyConfig {
    /// The bootstrap (YAML or JSON).
    pub yaml: String,
    /// The MCP listener's port (for [`Envoy::listener_url`]).
    pub listener_port: u16,
    /// The admin port; also used as Envoy's `--base-id`, which makes it unique per live Envoy.
    pub admin_port: u16,
}

impl EnvoyConfig {
    /// A static config (see [`crate::config::static_envoy_config`]) on two fresh free ports.
    pub fn static_config(upstreams: &[(&str, SocketAddr)], filter: Option<&FilterConfig>) -> Self {
        let listener_port = free_port();
        let admin_port = free_port();
        EnvoyConfig {
            yaml: static_envoy_config(listener_port, admin_port, upstreams, filter),
            listener_port,
            admin_port,
        }
    }
}

/// A running Envoy. Dropping it kills Envoy; if the test is panicking, its log tail is printed
/// first and its temp dir (config + log) is kept.
pub struct Envoy {
    // Field order matters: the process is dropped (killed, log printed) before the directory.
    process: ChildProcess,
    config: EnvoyConfig,
    dir: Option<tempfile::TempDir>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Envoy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envoy")
            .field("listener_port", &self.config.listener_port)
            .field("admin_port", &self.config.admin_port)
            .field("pid", &self.process.id())
            .finish()
    }
}

impl Envoy {
    /// Starts Envoy with `config` and waits until the admin `/ready` answers 200
    /// (up to [`READY_TIMEOUT`]).
    pub async fn start(bin: &Path, config: EnvoyConfig) -> anyhow::Result<Envoy> {
        let mut envoy = Self::spawn(bin, config)?;
        envoy.wait_ready(READY_TIMEOUT).await?;
        Ok(envoy)
    }

    /// Starts Envoy with a static config for `upstreams` (`(cluster_name, address)`) and the
    /// filter if given, on free ports, and waits until it is ready.
    pub async fn start_static(
        bin: &Path,
        upstreams: &[(&str, SocketAddr)],
        filter: Option<&FilterConfig>,
    ) -> anyhow::Result<Envoy> {
        // A free port can be taken by another process between `free_port` and Envoy's bind;
        // then try again on fresh ports.
        let mut attempt = 1;
        loop {
            match Self::start(bin, EnvoyConfig::static_config(upstreams, filter)).await {
                Err(e) if attempt < 3 && format!("{e:#}").contains("Address already in use") => {
                    eprintln!("Envoy could not bind its ports (attempt {attempt}), retrying");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Starts Envoy without waiting for readiness (e.g. before its xDS server is up); call
    /// [`Envoy::wait_ready`] later.
    pub fn spawn(bin: &Path, config: EnvoyConfig) -> anyhow::Result<Envoy> {
        let dir = tempfile::Builder::new()
            .prefix("toolmesh-e2e-envoy-")
            .tempdir()
            .context("creating Envoy's temp dir")?;
        let config_path = dir.path().join("envoy.yaml");
        std::fs::write(&config_path, &config.yaml)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let mut command = Command::new(bin);
        command
            .current_dir(dir.path())
            .arg("--disable-hot-restart")
            .arg("--base-id")
            .arg(config.admin_port.to_string())
            .arg("--log-level")
            .arg("info")
            .arg("--concurrency")
            .arg("1")
            .arg("-c")
            .arg(&config_path);
        let process = ChildProcess::spawn_with_log("envoy", command, dir.path().join("envoy.log"))?;
        Ok(Envoy {
            process,
            config,
            dir: Some(dir),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .context("building the admin HTTP client")?,
        })
    }

    /// Polls the admin `/ready` until it answers 200; fails with Envoy's log if Envoy exits or
    /// `timeout` passes.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/ready", self.admin_url());
        loop {
            if let Some(status) = self.process.try_wait() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                bail!(
                    "Envoy exited ({status}) before it was ready; log:\n{}",
                    self.process.log_tail(LOG_TAIL_LINES)
                );
            }
            let last = match self.http.get(&url).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                bail!(
                    "Envoy was not ready within {timeout:?} (last /ready: {last}); log:\n{}",
                    self.process.log_tail(LOG_TAIL_LINES)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `http://127.0.0.1:ADMIN_PORT`.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.config.admin_port)
    }

    /// `http://127.0.0.1:LISTENER_PORT` (no path; append e.g. `/mcp` or `/servers/x/mcp`).
    pub fn listener_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.config.listener_port)
    }

    /// The MCP listener's port.
    pub fn listener_port(&self) -> u16 {
        self.config.listener_port
    }

    /// The admin port.
    pub fn admin_port(&self) -> u16 {
        self.config.admin_port
    }

    /// The config Envoy was started with.
    pub fn config(&self) -> &EnvoyConfig {
        &self.config
    }

    /// Envoy's temp dir (config and log).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(tempfile::TempDir::path)
    }

    /// The process guard (log access, `terminate`, ...).
    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    /// The log file.
    pub fn log_path(&self) -> PathBuf {
        self.process.log_path().to_path_buf()
    }

    /// The whole log so far (stderr and the stdout access log).
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// GET an admin path (e.g. `/stats?filter=wasm`); fails on a non-2xx answer.
    pub async fn admin_get(&self, path_and_query: &str) -> anyhow::Result<String> {
        let url = format!("{}{path_and_query}", self.admin_url());
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .with_context(|| format!("GET {url}"))?;
        if !status.is_success() {
            bail!("GET {url}: {status}: {body}");
        }
        Ok(body)
    }

    /// `/stats/prometheus`. Panics (with the reason) if the admin does not answer.
    pub async fn stats_prometheus(&self) -> String {
        self.admin_get("/stats/prometheus")
            .await
            .unwrap_or_else(|e| panic!("Envoy admin /stats/prometheus failed: {e:#}"))
    }

    /// The value of the counter or gauge `name` (exact Envoy name, e.g.
    /// `cluster.up.upstream_rq_total` or `wasmcustom.toolmesh.vs.demo.rq.tools_call`), or `None`
    /// if there is no such stat (or it is a histogram). Panics if the admin does not answer.
    pub async fn stat(&self, name: &str) -> Option<u64> {
        let filter = format!("^{}$", regex_escape(name));
        let body = self
            .admin_get(&format!("/stats?filter={}", url_escape(&filter)))
            .await
            .unwrap_or_else(|e| panic!("Envoy admin /stats failed: {e:#}"));
        body.lines().find_map(|line| {
            let (stat, value) = line.split_once(": ")?;
            (stat == name).then(|| value.trim().parse().ok())?
        })
    }

    /// All counters and gauges whose name contains `needle` (`/stats?filter=`), as
    /// `(name, value)`; histograms are left out.
    pub async fn stats_matching(&self, needle: &str) -> Vec<(String, u64)> {
        let body = self
            .admin_get(&format!(
                "/stats?filter={}",
                url_escape(&regex_escape(needle))
            ))
            .await
            .unwrap_or_else(|e| panic!("Envoy admin /stats failed: {e:#}"));
        body.lines()
            .filter_map(|line| {
                let (stat, value) = line.split_once(": ")?;
                Some((stat.to_owned(), value.trim().parse().ok()?))
            })
            .collect()
    }

    /// Polls [`Envoy::stat`] until it is at least `at_least` (stats can lag a request by a few
    /// ms); returns the value, or fails after `timeout` with the last value seen.
    pub async fn wait_for_stat(
        &self,
        name: &str,
        at_least: u64,
        timeout: Duration,
    ) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.stat(name).await;
            if let Some(v) = value
                && v >= at_least
            {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                bail!("stat {name} is {value:?}, wanted >= {at_least} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `/config_dump` as JSON.
    pub async fn config_dump(&self) -> anyhow::Result<serde_json::Value> {
        let body = self.admin_get("/config_dump").await?;
        serde_json::from_str(&body).context("parsing /config_dump")
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        // The process field is dropped after this: it prints its log tail if the test is
        // failing and kills Envoy. Keep the config and log on disk in that case.
        if std::thread::panicking()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("(kept Envoy's config and log in {})", dir.keep().display());
        }
    }
}

/// Escapes regex metacharacters (Envoy's `/stats?filter=` is an RE2 regex).
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Percent-encodes a query value.
fn url_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
