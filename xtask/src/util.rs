//! Shared helpers: paths, running commands with a clear story, the wasm build.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (the parent of `xtask/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `.tools/` under the workspace root: everything setup installs lives here (git-ignored).
pub fn tools_dir() -> PathBuf {
    root().join(".tools")
}

/// Print a step header, the way every task tells the user what it is doing.
pub fn step(msg: &str) {
    eprintln!("\x1b[1m==> {msg}\x1b[0m");
}

/// Run a command in the workspace root and fail with its name if it fails.
pub fn sh(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("command failed ({status}): {shown}");
    }
    Ok(())
}

/// Run a command and capture its stdout (trimmed).
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .current_dir(root())
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!(
            "command failed ({}): {shown}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `cargo` as invoked by the user (respects `$CARGO`).
///
/// Under `CI=true` incremental compilation is off: a clean clone builds once, and the
/// incremental caches would only add about a third to the target directory's size on disk.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        cmd.env("CARGO_INCREMENTAL", "0");
    }
    cmd
}

/// Where the wasm build puts the filter.
pub fn wasm_path() -> PathBuf {
    root().join("target/wasm32-wasip1/wasm-release/toolmesh_filter.wasm")
}

/// Build the filter for Envoy and return the path of the `.wasm`.
pub fn build_wasm() -> Result<PathBuf> {
    step("building the filter (wasm32-wasip1, wasm-release profile)");
    sh(cargo().args([
        "build",
        "-p",
        "toolmesh-filter",
        "--target",
        "wasm32-wasip1",
        "--profile",
        "wasm-release",
    ]))?;
    let path = wasm_path();
    let size = std::fs::metadata(&path)
        .with_context(|| format!("the wasm build did not produce {}", path.display()))?
        .len();
    eprintln!("    {} ({} KB)", path.display(), size / 1024);
    Ok(path)
}

/// Is a TCP port on 127.0.0.1 accepting connections?
pub fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        std::time::Duration::from_millis(500),
    )
    .is_ok()
}

/// A minimal HTTP/1.1 JSON client for loopback (keeps xtask free of an HTTP stack).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\ncontent-type: application/json\r\n{auth}content-length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("not an HTTP response")?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
