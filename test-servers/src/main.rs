//! `mcp-test-server`: the test MCP server as a process (see [`toolmesh_test_servers::cli`]).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    toolmesh_test_servers::cli::main().await
}
