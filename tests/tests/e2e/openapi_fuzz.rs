//! The REST API's OpenAPI document, fuzzed by schemathesis (from PyPI): thousands of generated
//! requests, valid and invalid, against a real control plane (SQLite) — and none may get a 5xx.
//! A 5xx means a request reached a bug instead of a clear 4xx naming the field.

use std::time::Duration;

use toolmesh_e2e::control_plane::{ADMIN_TOKEN, ControlPlane, ControlPlaneOptions};
use toolmesh_e2e::test_servers::{TestServerConfig, spawn};
use toolmesh_e2e::{require, tools};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_generated_request_gets_a_server_error() {
    let python = require!(tools::python());
    let st = python.with_file_name("st");
    if !st.exists() {
        tools::missing(
            "schemathesis (`st`) is not in .tools/venv",
            "cargo xtask setup",
        );
        return;
    }
    let upstream = spawn(TestServerConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts = ControlPlaneOptions::new(dir.path(), &dir.path().join("unused.wasm"));
    let cp = ControlPlane::start(&opts).await.unwrap();
    cp.register("everything", &upstream.url()).await.unwrap();

    let out = tokio::time::timeout(
        Duration::from_secs(600),
        tokio::process::Command::new(&st)
            .args(["run", &format!("{}/openapi.json", cp.api())])
            .args(["--checks", "not_a_server_error"])
            .args(["--max-examples", "25", "--workers", "2", "--no-color"])
            .args(["--request-timeout", "30"])
            .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
            .env("SCHEMATHESIS_HOOKS", "")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("schemathesis finished within 10 minutes")
    .expect("running schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tail: Vec<&str> = stdout.lines().rev().take(40).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    eprintln!("{}", tail.join("\n"));
    assert!(
        out.status.success(),
        "schemathesis found server errors:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cp.stop().await;
}
