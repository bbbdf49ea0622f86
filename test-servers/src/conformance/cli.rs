//! The command line of `mcp-conformance-server`, in the library so that other test crates can
//! ship the same server as a binary of their own.
//!
//! Prints exactly one line, `listening on http://127.0.0.1:PORT/mcp`, to stdout once it accepts
//! connections, then serves until SIGINT/SIGTERM. Logs go to stderr (`RUST_LOG`). Point the suite
//! at it with `conformance server --url http://127.0.0.1:PORT/mcp --suite all`.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use clap::Parser;

use super::spawn_on;

/// Command-line flags of `mcp-conformance-server`.
#[derive(Debug, Parser)]
#[command(
    name = "mcp-conformance-server",
    about = "An MCP server with the official conformance suite's fixtures (rmcp, Streamable HTTP)"
)]
pub struct Args {
    /// Port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
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
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), args.port);
    let server = spawn_on(addr).await?;
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
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
