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
pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
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
