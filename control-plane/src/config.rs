//! Configuration of `toolmesh serve`: flags with `TOOLMESH_*` environment variables.
//!
//! Every knob has a flag and an environment variable so the same binary runs from a shell, from
//! `cargo xtask up` and from a container without a config file. Defaults are the ports in
//! ARCHITECTURE.md and a SQLite file under `.toolmesh/`, so `toolmesh serve` works with nothing set.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Where the catalog lives: shared by `serve` and the offline admin commands.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreConfig {
    /// Directory for the SQLite catalog and the generated secret key.
    #[arg(long, env = "TOOLMESH_DATA_DIR", default_value = ".toolmesh")]
    pub data_dir: PathBuf,
    /// Catalog database: `postgres://…` or `sqlite://…`. Default: a SQLite file in the data dir.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
}

impl StoreConfig {
    /// The database URL to use: the configured one or `sqlite://<data dir>/toolmesh.db?mode=rwc`.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) if !url.trim().is_empty() => url.clone(),
            _ => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("toolmesh.db").display()
            ),
        }
    }
}

/// Everything `toolmesh serve` can be told.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Where the catalog lives.
    #[command(flatten)]
    pub store: StoreConfig,
    /// Address the REST API binds to.
    #[arg(long, env = "TOOLMESH_API_BIND", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub api_bind: IpAddr,
    /// Port of the REST API (`/v1`, `/openapi.json`, `/healthz`). 0 picks a free port.
    #[arg(long, env = "TOOLMESH_API_PORT", default_value_t = 8081)]
    pub api_port: u16,
    /// Admin bearer token for `/v1`. Without it, the first start generates one and prints it once.
    #[arg(long, env = "TOOLMESH_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Key that encrypts upstream credentials at rest: 32 bytes as 64 hex characters or base64.
    #[arg(long, env = "TOOLMESH_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// File holding the secret key (same format). Without a key or file, one is generated into
    /// `<data dir>/secret.key`.
    #[arg(long, env = "TOOLMESH_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// How often every MCP server is rediscovered, in seconds (0 turns the schedule off).
    #[arg(long, env = "TOOLMESH_DISCOVERY_INTERVAL", default_value_t = 300)]
    pub discovery_interval_secs: u64,
    /// Deadline for one discovery of one MCP server, in seconds.
    #[arg(long, env = "TOOLMESH_DISCOVERY_TIMEOUT", default_value_t = 10)]
    pub discovery_timeout_secs: u64,
    /// Keep a session open to every MCP server and rediscover when it sends `list_changed`.
    #[arg(long, env = "TOOLMESH_DISCOVERY_WATCH", default_value_t = true, action = clap::ArgAction::Set)]
    pub discovery_watch: bool,
    /// Base URL where Envoy serves MCP; each virtual server's endpoint is shown under it.
    #[arg(
        long,
        env = "TOOLMESH_PUBLIC_MCP_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub public_mcp_url: String,
    /// Port of the xDS (ADS, gRPC) server Envoys connect to. 0 picks a free port.
    #[arg(long, env = "TOOLMESH_XDS_PORT", default_value_t = 18000)]
    pub xds_port: u16,
    /// Address the xDS server binds to.
    #[arg(long, env = "TOOLMESH_XDS_BIND", default_value_t = IpAddr::V4(Ipv4Addr::LOCALHOST))]
    pub xds_bind: IpAddr,
    /// Port of the MCP listener the control plane configures in Envoy.
    #[arg(long, env = "TOOLMESH_MCP_PORT", default_value_t = 8080)]
    pub mcp_port: u16,
    /// Address of the MCP listener the control plane configures in Envoy (an IP address).
    #[arg(long, env = "TOOLMESH_LISTENER_ADDRESS", default_value = "127.0.0.1")]
    pub listener_address: String,
    /// Path of the toolmesh filter (`toolmesh_filter.wasm`) as Envoy sees it; Envoy loads it.
    #[arg(
        long,
        env = "TOOLMESH_WASM_PATH",
        default_value = "target/wasm32-wasip1/wasm-release/toolmesh_filter.wasm"
    )]
    pub wasm_path: PathBuf,
    /// Envoy closes an MCP stream with no traffic in either direction for this many seconds
    /// (the GET notification stream can be quiet for long; there is no route timeout).
    #[arg(long, env = "TOOLMESH_STREAM_IDLE_TIMEOUT", default_value_t = 600)]
    pub stream_idle_timeout_secs: u64,
    /// CA bundle (PEM, as Envoy sees it) that verifies `https` MCP servers.
    #[arg(
        long,
        env = "TOOLMESH_UPSTREAM_CA_FILE",
        default_value = "/etc/ssl/certs/ca-certificates.crt"
    )]
    pub upstream_ca_file: PathBuf,
    /// Envoy's access log of the MCP listener: `stdout` (one JSON object per request on Envoy's
    /// standard output: time, method, path, status, duration, upstream cluster, the filter's
    /// `<virtual server> <method> <mcp_server>/<tool> <outcome>`, caller token id) or `off`.
    #[arg(long, env = "TOOLMESH_ACCESS_LOG", default_value = "stdout")]
    pub access_log: toolmesh_xds::AccessLog,
    /// Items per page of the lists the filter answers itself (`tools/list`, `prompts/list`,
    /// `resources/list`, `resources/templates/list`); clients follow `nextCursor`.
    #[arg(long, env = "TOOLMESH_LIST_PAGE_SIZE", default_value_t = toolmesh_proto::DEFAULT_LIST_PAGE_SIZE,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub list_page_size: u32,
    /// Host names (comma-separated, no port) Envoy's filter accepts in `Host` and `Origin`
    /// besides localhost, 127.0.0.1, [::1] and the host of the public MCP URL; `*` accepts any
    /// (turns the DNS-rebinding check off).
    #[arg(long, env = "TOOLMESH_ALLOWED_HOSTS", value_delimiter = ',', value_parser = parse_allowed_host)]
    pub allowed_hosts: Vec<String>,
    /// How long the filter waits for each member MCP server to open its session when a client
    /// initializes a virtual server (a member slower than this is unavailable in that session),
    /// and for each step of the session a 2026-07-28 call to a handshake-only member runs in.
    #[arg(long, env = "TOOLMESH_MEMBER_TIMEOUT_MS", default_value_t = toolmesh_proto::DEFAULT_MEMBER_TIMEOUT_MS,
          value_parser = clap::value_parser!(u32).range(1..=600_000))]
    pub member_timeout_ms: u32,
    /// At most this many tokens per virtual server get their own stats
    /// (`toolmesh.caller.<vs>.<token id>.{calls,errors,denied}` in Envoy, `/v1/usage/tokens`):
    /// the newest tokens that open it and are neither revoked nor expired. Calls of other
    /// tokens are still counted in the tool and virtual-server stats. 0 turns per-caller stats
    /// off.
    #[arg(long, env = "TOOLMESH_CALLER_STATS_LIMIT", default_value_t = crate::tokens::DEFAULT_CALLER_STATS_LIMIT,
          value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub caller_stats_limit: u32,
    /// Tool usage is kept per minute this long, then compacted to hours (`48h`, `7d`, ...).
    #[arg(long, env = "TOOLMESH_USAGE_MINUTE_RETENTION", default_value = "48h", value_parser = parse_retention)]
    pub usage_minute_retention: chrono::Duration,
    /// Tool usage older than this is deleted (`30d`, `90d`, ...).
    #[arg(long, env = "TOOLMESH_USAGE_RETENTION", default_value = "30d", value_parser = parse_retention)]
    pub usage_retention: chrono::Duration,
}

/// One `--allowed-hosts` entry: `*`, a host name, an IPv4 address or a bracketed IPv6 address,
/// without port; lower-cased (host names are case-insensitive).
pub fn parse_allowed_host(v: &str) -> Result<String, String> {
    let h = v.trim().to_ascii_lowercase();
    let bracketed_v6 = h.starts_with('[')
        && h.ends_with(']')
        && h[1..h.len() - 1].parse::<std::net::Ipv6Addr>().is_ok();
    let name_ok = !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if h == "*" || bracketed_v6 || name_ok {
        Ok(h)
    } else if h.contains(':') && !h.starts_with('[') {
        Err(format!(
            "{v:?}: give host names without a port (IPv6 addresses in brackets)"
        ))
    } else {
        Err(format!(
            "{v:?} is not a host name (letters, digits, '-', '.'), an IP address or *"
        ))
    }
}

/// A retention such as `48h` or `30d` (units `s`, `m`, `h`, `d`, `w`).
fn parse_retention(v: &str) -> Result<chrono::Duration, String> {
    crate::usage::rollup::parse_duration(v).map_err(|e| format!("expected e.g. 48h or 30d{e}"))
}

impl ServeConfig {
    /// Defaults for everything, with the given data directory (for tests and embedding).
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            store: StoreConfig {
                data_dir: data_dir.into(),
                database_url: None,
            },
            api_bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            api_port: 8081,
            admin_token: None,
            secret_key: None,
            secret_key_file: None,
            discovery_interval_secs: 300,
            discovery_timeout_secs: 10,
            discovery_watch: true,
            public_mcp_url: "http://127.0.0.1:8080".into(),
            xds_port: 18000,
            xds_bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            mcp_port: 8080,
            listener_address: "127.0.0.1".into(),
            wasm_path: PathBuf::from("target/wasm32-wasip1/wasm-release/toolmesh_filter.wasm"),
            stream_idle_timeout_secs: 600,
            upstream_ca_file: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
            access_log: toolmesh_xds::AccessLog::Stdout,
            list_page_size: toolmesh_proto::DEFAULT_LIST_PAGE_SIZE,
            allowed_hosts: Vec::new(),
            member_timeout_ms: toolmesh_proto::DEFAULT_MEMBER_TIMEOUT_MS,
            caller_stats_limit: crate::tokens::DEFAULT_CALLER_STATS_LIMIT,
            usage_minute_retention: chrono::Duration::hours(48),
            usage_retention: chrono::Duration::days(30),
        }
    }

    /// What the publisher puts into every policy snapshot besides the catalog.
    pub fn policy_settings(&self) -> crate::policy::PolicySettings {
        crate::policy::PolicySettings {
            public_url: self.public_mcp_url.clone(),
            list_page_size: self.list_page_size.max(1),
            allowed_hosts: self.allowed_hosts.clone(),
            member_timeout_ms: self.member_timeout_ms.max(1),
            caller_stats_limit: self.caller_stats_limit as usize,
        }
    }

    /// The REST API's socket address.
    pub fn api_addr(&self) -> SocketAddr {
        SocketAddr::new(self.api_bind, self.api_port)
    }

    /// The xDS server's socket address.
    pub fn xds_addr(&self) -> SocketAddr {
        SocketAddr::new(self.xds_bind, self.xds_port)
    }

    /// How the control plane configures Envoy.
    pub fn gateway_settings(&self) -> toolmesh_xds::GatewaySettings {
        toolmesh_xds::GatewaySettings {
            listener_address: self.listener_address.clone(),
            listener_port: self.mcp_port,
            wasm_path: self.wasm_path.clone(),
            stream_idle_timeout: Duration::from_secs(self.stream_idle_timeout_secs.max(1)),
            upstream_ca_file: self.upstream_ca_file.clone(),
            access_log: self.access_log,
            ..toolmesh_xds::GatewaySettings::default()
        }
    }

    /// Retention of tool usage roll-ups.
    pub fn usage_settings(&self) -> crate::usage::UsageSettings {
        crate::usage::UsageSettings {
            minute_retention: self.usage_minute_retention,
            retention: self.usage_retention,
            ..Default::default()
        }
    }

    /// The discovery deadline.
    pub fn discovery_timeout(&self) -> Duration {
        Duration::from_secs(self.discovery_timeout_secs.max(1))
    }

    /// The discovery schedule, if any.
    pub fn discovery_interval(&self) -> Option<Duration> {
        (self.discovery_interval_secs > 0)
            .then(|| Duration::from_secs(self.discovery_interval_secs))
    }
}
