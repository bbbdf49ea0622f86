//! Finding the project's external tools (Envoy, the venv Python, the TypeScript SDK, the filter's
//! `.wasm`), installed by `cargo xtask setup` under `.tools/`.
//!
//! End-to-end tests must not pass silently on a machine without the tools, and must not fail
//! confusingly either. So each finder either returns the path, or:
//! - with `CI=true`: panics with a loud, clear message (a missing tool in CI is a failure);
//! - otherwise: prints `SKIPPED: <why>, run `cargo xtask setup`` to stderr and returns `None`,
//!   and the test returns early (see [`crate::require!`]).
//!
//! Each tool can be pointed at explicitly with an environment variable (the ones
//! `cargo xtask test` sets): `TOOLMESH_ENVOY_BIN`, `TOOLMESH_PYTHON`, `TOOLMESH_NODE_MODULES`,
//! `TOOLMESH_FILTER_WASM`.

use std::path::{Path, PathBuf};

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `.tools/` under the workspace root.
pub fn tools_dir() -> PathBuf {
    workspace_root().join(".tools")
}

/// Is this a CI run (`CI=true` or `CI=1`)? Then missing tools fail instead of skipping.
pub fn is_ci() -> bool {
    matches!(
        std::env::var("CI")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Ok("true") | Ok("1")
    )
}

/// Reports a missing tool: panics in CI, prints a loud skip notice otherwise.
pub fn missing(why: &str, fix: &str) {
    let message = format!("{why}; run `{fix}`");
    if is_ci() {
        panic!(
            "\n\n*** CI=true and a required tool is missing: {message}. \
             End-to-end tests may not be skipped in CI. ***\n"
        );
    }
    // Written to the real stderr, not through `eprintln!`: the test harness captures the
    // latter for passing tests, and a skip must be seen.
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {message} ***\n");
}

fn from_env(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The first `python3*` directory under `.tools/venv/lib/`.
fn venv_site_packages() -> Option<PathBuf> {
    let lib = tools_dir().join("venv/lib");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&lib)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("python3"))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|d| d.join("site-packages"))
}

/// Where the Envoy binary is expected (no skip logic): `$TOOLMESH_ENVOY_BIN`, else
/// `.tools/venv/lib/python3*/site-packages/envoy/_bin/envoy`.
pub fn envoy_path() -> Option<PathBuf> {
    from_env("TOOLMESH_ENVOY_BIN")
        .or_else(|| venv_site_packages().map(|s| s.join("envoy/_bin/envoy")))
        .filter(|p| p.is_file())
}

/// Where the venv Python is expected (no skip logic): `$TOOLMESH_PYTHON`, else
/// `.tools/venv/bin/python`.
pub fn python_path() -> Option<PathBuf> {
    from_env("TOOLMESH_PYTHON")
        .or_else(|| Some(tools_dir().join("venv/bin/python")))
        .filter(|p| p.is_file())
}

/// Where the TypeScript SDK's `node_modules` is expected (no skip logic):
/// `$TOOLMESH_NODE_MODULES`, else `.tools/node/node_modules` (must contain
/// `@modelcontextprotocol/sdk`).
pub fn node_modules_path() -> Option<PathBuf> {
    from_env("TOOLMESH_NODE_MODULES")
        .or_else(|| Some(tools_dir().join("node/node_modules")))
        .filter(|p| p.join("@modelcontextprotocol/sdk").is_dir())
}

/// Where the filter's wasm build is expected (no skip logic): `$TOOLMESH_FILTER_WASM`, else
/// `target/wasm32-wasip1/wasm-release/toolmesh_filter.wasm`.
pub fn filter_wasm_path() -> Option<PathBuf> {
    from_env("TOOLMESH_FILTER_WASM")
        .or_else(|| {
            Some(workspace_root().join("target/wasm32-wasip1/wasm-release/toolmesh_filter.wasm"))
        })
        .filter(|p| p.is_file())
}

/// The Envoy binary, or `None` after a loud skip notice (panics in CI).
pub fn envoy() -> Option<PathBuf> {
    let found = envoy_path();
    if found.is_none() {
        missing(
            "Envoy not found (TOOLMESH_ENVOY_BIN or .tools/venv/lib/python3*/site-packages/envoy/_bin/envoy)",
            "cargo xtask setup",
        );
    }
    found
}

/// The venv Python with the official `mcp` SDK, or `None` after a loud skip notice.
pub fn python() -> Option<PathBuf> {
    let found = python_path();
    if found.is_none() {
        missing(
            "the Python MCP SDK venv was not found (TOOLMESH_PYTHON or .tools/venv/bin/python)",
            "cargo xtask setup",
        );
    }
    found
}

/// `node_modules` with the TypeScript MCP SDK, or `None` after a loud skip notice.
pub fn node_modules() -> Option<PathBuf> {
    let found = node_modules_path();
    if found.is_none() {
        missing(
            "the TypeScript MCP SDK was not found (TOOLMESH_NODE_MODULES or .tools/node/node_modules)",
            "cargo xtask setup",
        );
    }
    found
}

/// The filter's `.wasm`, or `None` after a loud skip notice.
pub fn filter_wasm() -> Option<PathBuf> {
    let found = filter_wasm_path();
    if found.is_none() {
        missing(
            "the filter's wasm build was not found (TOOLMESH_FILTER_WASM or target/wasm32-wasip1/wasm-release/toolmesh_filter.wasm)",
            "cargo xtask wasm",
        );
    }
    found
}

/// Unwraps an `Option` from a tool finder, or returns from the enclosing test (the finder has
/// already printed the skip notice, or panicked in CI).
///
/// ```ignore
/// let envoy_bin = toolmesh_e2e::require!(toolmesh_e2e::tools::envoy());
/// // in a test returning anyhow::Result<()>:
/// let python = toolmesh_e2e::require!(toolmesh_e2e::tools::python(), Ok(()));
/// ```
#[macro_export]
macro_rules! require {
    ($found:expr) => {
        match $found {
            Some(found) => found,
            None => return,
        }
    };
    ($found:expr, $ret:expr) => {
        match $found {
            Some(found) => found,
            None => return $ret,
        }
    };
}
