//! `mcp-conformance-server`: the conformance fixture server as a process (see
//! [`toolmesh_test_servers::conformance::cli`]).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    toolmesh_test_servers::conformance::cli::main().await
}
