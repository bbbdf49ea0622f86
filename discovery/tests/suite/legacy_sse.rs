//! Discovery over the legacy HTTP+SSE transport, against the official Python SDK's SSE server
//! (`tests/fixtures/legacy_sse_server.py`, run with the project's venv from `cargo xtask setup`).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use toolmesh_discovery::{DiscoveryError, Transport, UpstreamSpec, discover};

const TIMEOUT: Duration = Duration::from_secs(20);

/// The Python fixture server; killed on drop (also when a test fails).
struct PythonServer {
    child: Child,
    port: u16,
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn python_server() -> PythonServer {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("../.tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask setup` (it installs the Python MCP SDK)",
        python.display()
    );
    let mut child = Command::new(python)
        .arg(root.join("tests/fixtures/legacy_sse_server.py"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start the Python fixture server");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let port = tokio::time::timeout(TIMEOUT, async {
        while let Some(line) = lines.next_line().await.expect("read fixture stdout") {
            if let Some(port) = line.strip_prefix("PORT ") {
                return port.trim().parse::<u16>().expect("a port number");
            }
        }
        panic!("the fixture server exited before listening");
    })
    .await
    .expect("the fixture server starts within the deadline");
    PythonServer { child, port }
}

fn spec(port: u16, headers: Vec<(String, String)>) -> UpstreamSpec {
    UpstreamSpec {
        url: format!("http://127.0.0.1:{port}/sse"),
        transport: Transport::Sse,
        headers,
        timeout: TIMEOUT,
    }
}

fn names(items: &[serde_json::Value], key: &str) -> Vec<String> {
    let mut names: Vec<String> = items
        .iter()
        .map(|i| i[key].as_str().unwrap_or_default().to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn discovers_a_python_sdk_sse_server() {
    let server = python_server().await;
    let auth = vec![("Authorization".into(), "Bearer legacy-secret".into())];
    let found = discover(&spec(server.port, auth))
        .await
        .expect("discovery over legacy SSE");
    assert_eq!(found.server_info["name"], "legacy-sse-fixture");
    assert_eq!(found.instructions.as_deref(), Some("Legacy SSE fixture."));
    assert_eq!(names(&found.tools, "name"), ["add", "shout"]);
    let add = found.tools.iter().find(|t| t["name"] == "add").unwrap();
    assert_eq!(add["description"], "Add two integers.");
    assert_eq!(add["inputSchema"]["properties"]["a"]["type"], "integer");
    assert_eq!(names(&found.prompts, "name"), ["hello"]);
    assert_eq!(names(&found.resources, "uri"), ["fixture://motd"]);
    assert!(found.resource_templates.is_empty());
    assert!(!found.protocol_version.is_empty());
    // The legacy transport has no stateless protocol version.
    assert!(
        found.modern_versions.is_empty(),
        "{:?}",
        found.modern_versions
    );
}

#[tokio::test]
async fn missing_credentials_are_reported_not_hung() {
    let server = python_server().await;
    match discover(&spec(server.port, Vec::new())).await {
        Err(DiscoveryError::Protocol(reason)) => assert!(reason.contains("401"), "{reason}"),
        other => panic!("expected Protocol, got {other:?}"),
    }
}

#[tokio::test]
async fn a_streamable_http_server_is_not_a_legacy_sse_server() {
    // Pointing the legacy transport at a Streamable HTTP endpoint must fail cleanly.
    let upstream = toolmesh_test_servers::spawn(Default::default())
        .await
        .expect("test server starts");
    let mut wrong = spec(0, Vec::new());
    wrong.url = upstream.url();
    assert!(
        matches!(discover(&wrong).await, Err(DiscoveryError::Protocol(_))),
        "expected Protocol"
    );
    upstream.shutdown().await;
}
