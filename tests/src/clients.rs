//! Official MCP clients as subprocesses, and the test server as a process.
//!
//! End-to-end tests judge the gateway by what real clients see, so the clients are the official
//! SDKs driven by small CLIs in `tests/clients/`: `py_client.py` (Python `mcp` 2.x) and
//! `ts_client.mjs` (TypeScript SDK). Each runs a JSON list of operations on one session and
//! prints one JSON document; see the scripts' headers for the operations and output shapes.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::process::ChildProcess;
use crate::tools;

/// How long one client run may take before it is killed.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);

/// `tests/clients/`.
pub fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients")
}

async fn run_json(mut command: tokio::process::Command, what: &str) -> anyhow::Result<Value> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let output = tokio::time::timeout(CLIENT_TIMEOUT, child.wait_with_output())
        .await
        .with_context(|| format!("{what} did not finish within {CLIENT_TIMEOUT:?}"))?
        .with_context(|| format!("waiting for {what}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
    match (
        output.status.success(),
        last.map(serde_json::from_str::<Value>),
    ) {
        (true, Some(Ok(value))) => Ok(value),
        _ => bail!(
            "{what} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
            output.status
        ),
    }
}

/// Runs `tests/clients/py_client.py URL OPS [extra_args...]` with the venv Python (official
/// `mcp` SDK) and returns its JSON document. `extra_args` are e.g. `["--mode", "legacy"]`,
/// `["--header", "Authorization: Bearer x"]`. The default mode is the SDK's own (`auto`:
/// probe `server/discover`, fall back to `initialize`).
///
/// Operation errors are data (in `results[i].error`), not an `Err`; `Err` means the client
/// could not run at all. Call [`tools::python`] first to skip when the venv is missing.
pub async fn python_client(url: &str, ops: &Value, extra_args: &[&str]) -> anyhow::Result<Value> {
    let python = tools::python_path().context(
        "the venv Python is missing (check tools::python() first; run `cargo xtask setup`)",
    )?;
    let mut command = tokio::process::Command::new(python);
    command
        .arg(clients_dir().join("py_client.py"))
        .arg(url)
        .arg(ops.to_string())
        .args(extra_args);
    run_json(command, "the Python MCP client").await
}

/// Runs `tests/clients/ts_client.mjs URL OPS [extra_args...]` with `node` (from `$TOOLMESH_NODE`
/// or `PATH`) and the TypeScript SDK from [`tools::node_modules_path`], and returns its JSON
/// document. Call [`tools::node_modules`] first to skip when the SDK is missing.
pub async fn ts_client(url: &str, ops: &Value, extra_args: &[&str]) -> anyhow::Result<Value> {
    let modules = tools::node_modules_path().context(
        "the TypeScript SDK is missing (check tools::node_modules() first; run `cargo xtask setup`)",
    )?;
    let node = std::env::var_os("TOOLMESH_NODE").unwrap_or_else(|| "node".into());
    let mut command = tokio::process::Command::new(node);
    command
        .env("TOOLMESH_NODE_MODULES", modules)
        .arg(clients_dir().join("ts_client.mjs"))
        .arg(url)
        .arg(ops.to_string())
        .args(extra_args);
    run_json(command, "the TypeScript MCP client").await
}

/// The `results` array of a client document, with a clear panic if it is missing.
pub fn results(doc: &Value) -> &Vec<Value> {
    doc["results"]
        .as_array()
        .unwrap_or_else(|| panic!("client output has no results: {doc:#}"))
}

/// Python client: the `result` of operation `i`, which must have succeeded (`what` names the
/// run in the panic message).
pub fn py_ok<'a>(doc: &'a Value, i: usize, what: &str) -> &'a Value {
    op(doc, i, what, true, "result")
}

/// Python client: the `error` of operation `i`, which must have failed.
pub fn py_err<'a>(doc: &'a Value, i: usize, what: &str) -> &'a Value {
    op(doc, i, what, false, "error")
}

/// TypeScript client: the `value` of operation `i`, which must have succeeded.
pub fn ts_ok<'a>(doc: &'a Value, i: usize, what: &str) -> &'a Value {
    op(doc, i, what, true, "value")
}

fn op<'a>(doc: &'a Value, i: usize, what: &str, ok: bool, key: &str) -> &'a Value {
    let r = results(doc)
        .get(i)
        .unwrap_or_else(|| panic!("{what}: no operation {i}: {doc:#}"));
    assert_eq!(
        r["ok"],
        ok,
        "{what}: operation {i} {}: {r:#}\n{doc:#}",
        if ok { "failed" } else { "should have failed" }
    );
    &r[key]
}

/// The `key` field (`name`, `uri`, ...) of every item of a list.
pub fn item_names(items: &Value, key: &str) -> Vec<String> {
    items
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {items:#}"))
        .iter()
        .map(|i| i[key].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The test server as a process: the `toolmesh-e2e-test-server` binary of this package (the
/// same CLI as `mcp-test-server`: `--port`, `--stateless`, `--json-response`, `--page-size`),
/// located next to the test executable unless `$TOOLMESH_TEST_SERVER_BIN` names it.
pub fn test_server_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TOOLMESH_TEST_SERVER_BIN") {
        return Ok(bin.into());
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/toolmesh-e2e-test-server
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("toolmesh-e2e-test-server"))
        .context("unexpected test executable location")?;
    if !bin.is_file() {
        bail!(
            "{} not found: it is built by `cargo test -p toolmesh-e2e`",
            bin.display()
        );
    }
    Ok(bin)
}

/// Starts the test server as a process with `args` and waits for its `listening on URL` line.
/// Returns the process guard and the MCP URL (`http://127.0.0.1:PORT/mcp`).
pub async fn spawn_test_server_process(args: &[&str]) -> anyhow::Result<(ChildProcess, String)> {
    let mut command = std::process::Command::new(test_server_bin()?);
    command.args(args);
    let mut process = ChildProcess::spawn("mcp-test-server", command)?;
    let line = process
        .wait_for_line("listening on ", Duration::from_secs(30))
        .await?;
    let url = line
        .strip_prefix("listening on ")
        .unwrap_or_default()
        .trim()
        .to_owned();
    Ok((process, url))
}

/// When the client saw each progress notification of one call (seconds), from a client's
/// `progress` list: the Python client records `t_s`, the TypeScript client `t`.
pub fn progress_times(progress: &Value, key: &str) -> Vec<f64> {
    progress
        .as_array()
        .unwrap_or_else(|| panic!("no progress list: {progress}"))
        .iter()
        .map(|p| p[key].as_f64().unwrap_or_else(|| panic!("no {key}: {p}")))
        .collect()
}

/// The five progress notifications of the test server's `slow` tool (sent ~0.4 s apart)
/// reached the client as they were sent: at least 1 s from first to last, at least 0.15 s
/// apart, and, when `result_at` (when the result arrived) is given, the first at least 1 s
/// before the result. Buffering would deliver them together at the end.
pub fn assert_progress_streamed(times: &[f64], result_at: Option<f64>, what: &str) {
    assert_eq!(times.len(), 5, "{what}: {times:?}");
    if let (Some(result_at), Some(first)) = (result_at, times.first()) {
        assert!(
            result_at - first >= 1.0,
            "{what}: first progress at {first:.2}s, result at {result_at:.2}s: buffered?"
        );
    }
    assert!(
        times[4] - times[0] >= 1.0,
        "{what}: progress arrived in a burst: {times:?}"
    );
    for pair in times.windows(2) {
        assert!(
            pair[1] - pair[0] >= 0.15,
            "{what}: progress not spread over time: {times:?}"
        );
    }
}
