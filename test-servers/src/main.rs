//! `mcp-test-server`: the test MCP server as a process, for tests that start upstreams the way
//! an operator would (and for trying toolmesh by hand).
//!
//! Prints exactly one line, `listening on http://127.0.0.1:PORT/mcp`, to stdout once it accepts
//! connections, then serves until killed. Logs go to stderr (`RUST_LOG`).

use std::io::Write as _;
use std::net::SocketAddr;

use clap::Parser;
use toolmesh_test_servers::{TestServerConfig, spawn_on};

/// Command-line flags.
#[derive(Debug, Parser)]
#[command(
    name = "mcp-test-server",
    about = "An upstream MCP test server (rmcp, Streamable HTTP)"
)]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Serve every request on its own, without sessions.
    #[arg(long)]
    stateless: bool,
    /// Answer with application/json instead of SSE where possible (needs --stateless).
    #[arg(long)]
    json_response: bool,
    /// Items per page of every list.
    #[arg(long, default_value_t = 10)]
    page_size: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let config = TestServerConfig {
        stateful: !args.stateless,
        json_response: args.json_response,
        page_size: args.page_size,
    };
    let server = spawn_on(config, SocketAddr::from(([127, 0, 0, 1], args.port))).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", server.url())?;
        out.flush()?;
    }
    shutdown_signal().await;
    server.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
