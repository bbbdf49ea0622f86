//! The upstream MCP test server as a binary of this package, so that `cargo test -p toolmesh-e2e`
//! builds it for tests that need the server as a separate process (see
//! `toolmesh_e2e::clients::spawn_test_server_process`). Same CLI as `mcp-test-server`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    toolmesh_test_servers::cli::main().await
}
