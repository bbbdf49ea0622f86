//! The command line of `mcp-test-server`, in the library so that other test crates can ship the
//! same server as a binary of their own (a binary of another package is not built for their tests).
//!
//! Prints exactly one line, `listening on http://HOST:PORT/mcp`, to stdout once it accepts
//! connections, then serves until SIGINT/SIGTERM (or until killed). Logs go to stderr (`RUST_LOG`).

use std::io::Write as _;
use std::net::SocketAddr;

use clap::Parser;

use crate::{TestServerConfig, spawn_on};

/// Command-line flags of `mcp-test-server`.
#[derive(Debug, Parser)]
#[command(
    name = "mcp-test-server",
    about = "An upstream MCP test server (rmcp, Streamable HTTP)"
)]
pub struct Args {
    /// Address to bind (loopback unless a container needs otherwise).
    #[arg(long, default_value_t = std::net::IpAddr::from([127, 0, 0, 1]))]
    pub host: std::net::IpAddr,
    /// Port (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Serve every request on its own, without sessions.
    #[arg(long)]
    pub stateless: bool,
    /// Answer with application/json instead of SSE where possible (needs --stateless).
    #[arg(long)]
    pub json_response: bool,
    /// Items per page of every list.
    #[arg(long, default_value_t = 10)]
    pub page_size: usize,
    /// Speak only the `initialize` handshake, not protocol 2026-07-28.
    #[arg(long)]
    pub handshake_only: bool,
}

/// Parses the process arguments, serves, and returns when a shutdown signal arrives.
pub async fn main() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .try_init();
    run(Args::parse()).await
}

/// Serves with `args` until a shutdown signal arrives.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = TestServerConfig {
        stateful: !args.stateless,
        json_response: args.json_response,
        page_size: args.page_size,
        handshake_only: args.handshake_only,
    };
    let server = spawn_on(config, SocketAddr::new(args.host, args.port)).await?;
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
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
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
