//! `toolmesh` binary: parses flags, sets up logging, and calls into the library.

use clap::{Parser, Subcommand, ValueEnum};
use toolmesh::cli::{ClientOpts, McpServersCmd, TokensCmd, ToolsCmd, UsageCmd, VirtualServersCmd};
use toolmesh::{ServeConfig, StoreConfig};

#[derive(Debug, Parser)]
#[command(
    name = "toolmesh",
    version,
    about = "toolmesh: an MCP gateway for Envoy — control plane and CLI"
)]
struct Cli {
    /// Log format.
    #[arg(long, env = "TOOLMESH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane (REST API, discovery).
    Serve(Box<ServeConfig>),
    /// Administer the control plane's own database (run where the catalog lives).
    Admin {
        #[command(subcommand)]
        cmd: AdminCmd,
    },
    /// Register and inspect upstream MCP servers.
    #[command(name = "mcp-servers")]
    McpServers {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        cmd: McpServersCmd,
    },
    /// Compose virtual servers.
    #[command(name = "virtual-servers")]
    VirtualServers {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        cmd: VirtualServersCmd,
    },
    /// Browse discovered tools.
    Tools {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        cmd: ToolsCmd,
    },
    /// Issue, list and revoke tokens scoped to virtual servers.
    Tokens {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        cmd: TokensCmd,
    },
    /// Tool usage across every Envoy: most called, errors, latency, unused tools.
    Usage {
        #[command(flatten)]
        client: ClientOpts,
        #[command(subcommand)]
        cmd: UsageCmd,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCmd {
    /// Replace the admin token with a new random one and print it (the old one stops working).
    ResetToken {
        #[command(flatten)]
        store: StoreConfig,
    },
}

fn init_tracing(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let serving = matches!(cli.command, Command::Serve(_) | Command::Admin { .. });
    init_tracing(
        cli.log_format,
        if serving {
            "info,sqlx=warn,tower_http=info"
        } else {
            "warn"
        },
    );
    let result: anyhow::Result<()> = match cli.command {
        Command::Serve(config) => toolmesh::run(*config, toolmesh::shutdown_signal())
            .await
            .map_err(Into::into),
        Command::Admin {
            cmd: AdminCmd::ResetToken { store },
        } => reset_token(&store).await,
        Command::McpServers { client, cmd } => toolmesh::cli::mcp_servers(&client, cmd)
            .await
            .map_err(Into::into),
        Command::VirtualServers { client, cmd } => toolmesh::cli::virtual_servers(&client, cmd)
            .await
            .map_err(Into::into),
        Command::Tools { client, cmd } => {
            toolmesh::cli::tools(&client, cmd).await.map_err(Into::into)
        }
        Command::Tokens { client, cmd } => toolmesh::cli::tokens(&client, cmd)
            .await
            .map_err(Into::into),
        Command::Usage { client, cmd } => {
            toolmesh::cli::usage(&client, cmd).await.map_err(Into::into)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn reset_token(store: &StoreConfig) -> anyhow::Result<()> {
    let s = toolmesh::open_store(store).await?;
    let token = toolmesh::admin::reset_admin_token(&s).await?;
    s.close().await;
    println!("admin token: {token}");
    eprintln!(
        "the previous admin token no longer works (running servers pick this up immediately)"
    );
    Ok(())
}
