//! The catalog store: MCP servers, what discovery found on them, and virtual servers.
//!
//! Two backends, one contract: Postgres for production and a SQLite file as the zero-setup
//! default, chosen by the URL scheme. Each backend has its own migrations folder embedded with
//! `sqlx::migrate!`. Queries are runtime-checked (`sqlx::query`, never `query!`), so building needs
//! no database and no `.sqlx/` offline data; the test suite runs every query on both backends.
//!
//! Every mutation is one transaction that first bumps the one-row `catalog_version` (on SQLite
//! that write takes the database lock up front, so concurrent writers queue instead of failing
//! with `SQLITE_BUSY`); any error rolls it all back. After a commit the new version is published
//! on a [`tokio::sync::watch`] channel; on Postgres it is also sent with `NOTIFY
//! toolmesh_catalog` so other control-plane replicas wake up.

mod sql;

use std::str::FromStr as _;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tokio::sync::watch;

/// The Postgres channel that carries catalog versions between replicas.
pub const NOTIFY_CHANNEL: &str = "toolmesh_catalog";

pub use tokens::{NewToken, SigningKeyRecord, TokenRecord};

/// Why a store operation failed. Only [`StoreError::Database`] and [`StoreError::Migrate`] are
/// server faults; the others are answers to bad requests.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named thing does not exist.
    #[error("{kind} '{name}' not found")]
    NotFound {
        /// `mcp server`, `virtual server`, `tool`, …
        kind: &'static str,
        /// Its name or id.
        name: String,
    },
    /// A unique name is taken.
    #[error("{kind} '{name}' already exists")]
    AlreadyExists {
        /// `mcp server` or `virtual server`.
        kind: &'static str,
        /// The name.
        name: String,
    },
    /// The MCP server is still a member of virtual servers.
    #[error(
        "mcp server '{mcp_server}' is used by virtual servers {virtual_servers:?}; remove it from them first or delete with ?force=true"
    )]
    InUse {
        /// The MCP server.
        mcp_server: String,
        /// The virtual servers that use it.
        virtual_servers: Vec<String>,
    },
    /// A reference in the request does not resolve; `field` names it (`tools[2].tool`) and the
    /// message starts with the item (`tools[2]: unknown tool 'x' on mcp server 'y'`).
    #[error("{message}")]
    Invalid {
        /// The offending field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The request conflicts with the current state (for example: nothing to accept).
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row holds something this build cannot read.
    #[error("corrupt catalog row: {0}")]
    Corrupt(String),
}

/// How toolmesh talks to an MCP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Transport {
    /// MCP Streamable HTTP.
    #[serde(rename = "streamable-http")]
    StreamableHttp,
    /// Legacy HTTP+SSE.
    #[serde(rename = "sse")]
    Sse,
}

impl Transport {
    /// The stored and displayed form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StreamableHttp => "streamable-http",
            Self::Sse => "sse",
        }
    }
    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "streamable-http" => Ok(Self::StreamableHttp),
            "sse" => Ok(Self::Sse),
            other => Err(StoreError::Corrupt(format!("transport {other:?}"))),
        }
    }
}

/// Health of an MCP server as last seen by discovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// The last discovery succeeded.
    Up,
    /// The last discovery failed.
    Down,
    /// Never discovered.
    Unknown,
}

impl HealthStatus {
    /// The stored and displayed form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Unknown => "unknown",
        }
    }
    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "up" => Ok(Self::Up),
            "down" => Ok(Self::Down),
            "unknown" => Ok(Self::Unknown),
            other => Err(StoreError::Corrupt(format!("health status {other:?}"))),
        }
    }
}

/// The four kinds of discovered items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    /// A tool (`tools/list`).
    Tool,
    /// A prompt (`prompts/list`).
    Prompt,
    /// A static resource (`resources/list`).
    Resource,
    /// A resource template (`resources/templates/list`).
    ResourceTemplate,
}

impl ItemKind {
    /// All kinds, in display order.
    pub const ALL: [ItemKind; 4] = [
        Self::Tool,
        Self::Prompt,
        Self::Resource,
        Self::ResourceTemplate,
    ];
    /// The table holding this kind.
    pub fn table(self) -> &'static str {
        match self {
            Self::Tool => "tools",
            Self::Prompt => "prompts",
            Self::Resource => "resources",
            Self::ResourceTemplate => "resource_templates",
        }
    }
    /// The column holding the item's key (unique per MCP server).
    pub fn key_column(self) -> &'static str {
        match self {
            Self::Tool | Self::Prompt => "name",
            Self::Resource => "uri",
            Self::ResourceTemplate => "uri_template",
        }
    }
    /// The MCP JSON field holding the key.
    pub fn json_key(self) -> &'static str {
        match self {
            Self::Tool | Self::Prompt => "name",
            Self::Resource => "uri",
            Self::ResourceTemplate => "uriTemplate",
        }
    }
    /// The stored `virtual_server_members.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tool => "tool",
            Self::Prompt => "prompt",
            Self::Resource => "resource",
            Self::ResourceTemplate => "resource_template",
        }
    }
    /// The field of a virtual-server member that names this kind of item.
    pub fn ref_field(self) -> &'static str {
        match self {
            Self::Tool => "tool",
            Self::Prompt => "prompt",
            Self::Resource => "uri",
            Self::ResourceTemplate => "uri_template",
        }
    }
    /// Human name for messages.
    pub fn human(self) -> &'static str {
        match self {
            Self::Tool => "tool",
            Self::Prompt => "prompt",
            Self::Resource => "resource",
            Self::ResourceTemplate => "resource template",
        }
    }
    fn parse(s: &str) -> Result<Self, StoreError> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| StoreError::Corrupt(format!("member kind {s:?}")))
    }
}

/// What the last discovery saw, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// `up`, `down` or `unknown`.
    pub status: HealthStatus,
    /// When discovery last succeeded.
    pub last_success_at: Option<DateTime<Utc>>,
    /// Why discovery last failed.
    pub last_error: Option<String>,
    /// When discovery last failed.
    pub last_error_at: Option<DateTime<Utc>>,
    /// Wall time of the last successful discovery.
    pub latency_ms: Option<i64>,
    /// The negotiated MCP protocol version.
    pub protocol_version: Option<String>,
    /// The stateless MCP protocol versions (2026-07-28 and later) the server listed in its
    /// `server/discover` answer at the last successful discovery; empty when it speaks only the
    /// `initialize` handshake (or over the legacy SSE transport). A virtual server speaks a
    /// stateless version only when all its MCP servers do.
    #[serde(default)]
    pub modern_versions: Vec<String>,
    /// The server's `serverInfo`.
    pub server_info: Option<serde_json::Value>,
    /// The server's `capabilities`.
    pub capabilities: Option<serde_json::Value>,
    /// The server's `instructions`.
    pub instructions: Option<String>,
}

/// How many items an MCP server has in the catalog (not counting those removed upstream).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ItemCounts {
    /// Tools.
    pub tools: i64,
    /// Prompts.
    pub prompts: i64,
    /// Static resources.
    pub resources: i64,
    /// Resource templates.
    pub resource_templates: i64,
    /// Items whose upstream definition differs from the accepted one.
    pub drifted: i64,
}

/// A registered MCP server as stored.
#[derive(Debug, Clone)]
pub struct McpServerRecord {
    /// Row id.
    pub id: i64,
    /// Unique slug.
    pub name: String,
    /// MCP endpoint URL.
    pub url: String,
    /// Transport.
    pub transport: Transport,
    /// Free text.
    pub description: String,
    /// Tags (slugs), sorted.
    pub tags: Vec<String>,
    /// Sealed credential headers, if any (see `crypto`).
    pub credential_headers: Option<Vec<u8>>,
    /// Names of the credential headers.
    pub credential_header_names: Vec<String>,
    /// Health.
    pub health: Health,
    /// Item counts.
    pub counts: ItemCounts,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed by the API.
    pub updated_at: DateTime<Utc>,
}

/// What to do with an MCP server's stored credentials on replace.
#[derive(Debug, Clone)]
pub enum CredentialUpdate {
    /// Leave them as they are.
    Keep,
    /// Replace them with this sealed blob and these header names.
    Set {
        /// The sealed header map.
        sealed: Vec<u8>,
        /// Header names, for display.
        names: Vec<String>,
    },
    /// Remove them.
    Clear,
}

/// The fields of an MCP server the API sets.
#[derive(Debug, Clone)]
pub struct McpServerInput {
    /// Unique slug.
    pub name: String,
    /// MCP endpoint URL.
    pub url: String,
    /// Transport.
    pub transport: Transport,
    /// Free text.
    pub description: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Credentials.
    pub credentials: CredentialUpdate,
}

/// The result of one discovery attempt, ready to store.
#[derive(Debug, Clone)]
pub enum DiscoveryOutcome {
    /// The server answered.
    Success(Box<toolmesh_discovery::Discovered>),
    /// It did not; the reason is stored as `last_error`.
    Failure(String),
}

/// What applying a discovery changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DiscoveryChanges {
    /// Items seen for the first time (accepted as they are).
    pub added: i64,
    /// Items whose upstream definition now differs from the accepted one (newly drifted).
    pub drifted: i64,
    /// Items that vanished upstream (marked removed, kept).
    pub removed: i64,
    /// Items that came back after being removed, or whose drift went away.
    pub restored: i64,
    /// Items skipped because they lack their key field (`name`, `uri`, `uriTemplate`).
    pub skipped: i64,
}

/// A discovered item as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemRecord {
    /// Row id (unique per kind).
    pub id: i64,
    /// Which kind.
    pub kind: ItemKind,
    /// The MCP server's name.
    pub mcp_server: String,
    /// Name, URI or URI template.
    pub key: String,
    /// Description from the accepted definition.
    pub description: String,
    /// The accepted MCP definition.
    pub definition: serde_json::Value,
    /// The upstream's current definition when it differs.
    pub pending_definition: Option<serde_json::Value>,
    /// Whether the upstream definition differs from the accepted one.
    pub drifted: bool,
    /// Whether virtual servers may expose it.
    pub enabled: bool,
    /// Whether the upstream stopped listing it.
    pub removed_upstream: bool,
    /// First discovered.
    pub first_seen: DateTime<Utc>,
    /// Last listed by the upstream.
    pub last_seen: DateTime<Utc>,
}

/// Filters for item lists.
#[derive(Debug, Clone, Default)]
pub struct ItemFilter {
    /// Only items of this MCP server.
    pub mcp_server: Option<String>,
    /// Only items of MCP servers with this tag.
    pub tag: Option<String>,
    /// Case-insensitive substring of the key or description.
    pub q: Option<String>,
    /// Only enabled (true) or disabled (false) items.
    pub enabled: Option<bool>,
    /// Only drifted (true) or undrifted (false) items.
    pub drifted: Option<bool>,
}

/// A page request: at most `limit` items after `cursor`.
#[derive(Debug, Clone)]
pub struct PageRequest {
    /// Page size.
    pub limit: u32,
    /// Opaque cursor from the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// One page of results.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Cursor of the next page, if there is one.
    pub next_cursor: Option<String>,
}

/// A reference to an item, by MCP server and key, optionally renamed.
#[derive(Debug, Clone)]
pub struct MemberRef {
    /// The MCP server's name.
    pub mcp_server: String,
    /// Name, URI or URI template.
    pub item: String,
    /// Exposed name (tools and prompts only).
    pub expose_as: Option<String>,
}

/// A virtual server as the API sets it.
#[derive(Debug, Clone, Default)]
pub struct VirtualServerInput {
    /// Unique slug.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Accept MCP requests without a token.
    pub anonymous: bool,
    /// Tools.
    pub tools: Vec<MemberRef>,
    /// Prompts.
    pub prompts: Vec<MemberRef>,
    /// Static resources.
    pub resources: Vec<MemberRef>,
    /// Resource templates.
    pub resource_templates: Vec<MemberRef>,
}

impl VirtualServerInput {
    /// The member list of one kind, with the request field it came from.
    pub fn members(&self, kind: ItemKind) -> (&'static str, &[MemberRef]) {
        match kind {
            ItemKind::Tool => ("tools", &self.tools),
            ItemKind::Prompt => ("prompts", &self.prompts),
            ItemKind::Resource => ("resources", &self.resources),
            ItemKind::ResourceTemplate => ("resource_templates", &self.resource_templates),
        }
    }
}

/// One member of a stored virtual server, resolved against the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberRecord {
    /// Which kind.
    pub kind: ItemKind,
    /// The MCP server's name.
    pub mcp_server: String,
    /// The upstream key (name, URI or template).
    pub item: String,
    /// The item's id.
    pub item_id: i64,
    /// Exposed name override (the name clients see comes from [`crate::naming::member_names`]).
    pub expose_as: Option<String>,
    /// The item is enabled.
    pub enabled: bool,
    /// The item vanished upstream.
    pub removed_upstream: bool,
    /// The item's upstream definition has drifted (the accepted one is still served).
    pub drifted: bool,
    /// The accepted definition.
    pub definition: serde_json::Value,
}

impl MemberRecord {
    /// Served by the gateway: enabled and still offered upstream.
    pub fn active(&self) -> bool {
        self.enabled && !self.removed_upstream
    }
}

/// A virtual server as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualServerRecord {
    /// Row id.
    pub id: i64,
    /// Unique slug.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Accept MCP requests without a token.
    pub anonymous: bool,
    /// Members in request order, tools first, then prompts, resources, templates.
    pub members: Vec<MemberRecord>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// A consistent read of everything the gateway needs, at one catalog version.
#[derive(Debug, Clone)]
pub struct CatalogDump {
    /// The catalog version read in the same transaction.
    pub version: i64,
    /// Every MCP server.
    pub mcp_servers: Vec<McpServerRecord>,
    /// Every virtual server with its members.
    pub virtual_servers: Vec<VirtualServerRecord>,
}

/// The Postgres backend.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

/// The SQLite backend.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

#[derive(Debug, Clone)]
enum Backend {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

/// The catalog store: one of the backends plus the version channel.
#[derive(Debug, Clone)]
pub struct Store {
    backend: Backend,
    version_tx: watch::Sender<u64>,
}

/// Run `$body` with `$s` bound to whichever backend store this is.
macro_rules! dispatch {
    ($self:ident, $s:ident => $body:expr) => {
        match &$self.backend {
            Backend::Postgres($s) => $body,
            Backend::Sqlite($s) => $body,
        }
    };
}

// After `dispatch!`, which it uses.
mod tokens;

impl Store {
    /// Connect to `url` (`postgres://…` or `sqlite://…`), run migrations, and start the version
    /// channel (and, on Postgres, the `LISTEN` task that feeds it from other replicas).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let backend = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let opts = PgConnectOptions::from_str(url)?;
            let pool = PgPoolOptions::new()
                .max_connections(10)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await?;
            sqlx::migrate!("migrations/postgres").run(&pool).await?;
            Backend::Postgres(PgStore { pool })
        } else {
            let opts = SqliteConnectOptions::from_str(url)?
                .journal_mode(SqliteJournalMode::Wal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10));
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await?;
            sqlx::migrate!("migrations/sqlite").run(&pool).await?;
            Backend::Sqlite(SqliteStore { pool })
        };
        let mut store = Self {
            backend,
            version_tx: watch::Sender::new(0),
        };
        let v = store.catalog_version().await?;
        store.version_tx = watch::Sender::new(v as u64);
        if let Backend::Postgres(pg) = &store.backend {
            pg.spawn_listener(store.version_tx.clone());
        }
        Ok(store)
    }

    /// Run migrations again (they are idempotent; used by tests and `serve` restarts).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Postgres(s) => sqlx::migrate!("migrations/postgres").run(&s.pool).await?,
            Backend::Sqlite(s) => sqlx::migrate!("migrations/sqlite").run(&s.pool).await?,
        }
        Ok(())
    }

    /// `postgres` or `sqlite`.
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::Postgres(_) => "postgres",
            Backend::Sqlite(_) => "sqlite",
        }
    }

    /// Subscribe to catalog version changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version_tx.subscribe()
    }

    fn publish(&self, version: i64) {
        let v = version as u64;
        self.version_tx.send_if_modified(|cur| {
            if v > *cur {
                *cur = v;
                true
            } else {
                false
            }
        });
    }

    /// Close the pool.
    pub async fn close(&self) {
        dispatch!(self, s => s.pool.close().await)
    }

    /// The current catalog version.
    pub async fn catalog_version(&self) -> Result<i64, StoreError> {
        dispatch!(self, s => s.catalog_version().await)
    }

    /// Read a setting.
    pub async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => s.get_setting(key).await)
    }

    /// Write a setting (does not change the catalog version).
    pub async fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.set_setting(key, value, true).await.map(|_| ()))
    }

    /// Write a setting unless it exists; returns whether it was written.
    pub async fn set_setting_if_absent(&self, key: &str, value: &str) -> Result<bool, StoreError> {
        dispatch!(self, s => s.set_setting(key, value, false).await)
    }

    /// Register an MCP server together with its first discovery, in one transaction.
    pub async fn create_mcp_server(
        &self,
        input: &McpServerInput,
        discovery: &DiscoveryOutcome,
    ) -> Result<(McpServerRecord, DiscoveryChanges), StoreError> {
        let (rec, changes, v) = dispatch!(self, s => s.create_mcp_server(input, discovery).await)?;
        self.publish(v);
        Ok((rec, changes))
    }

    /// Replace an MCP server's settings (and apply a discovery, if one ran).
    pub async fn replace_mcp_server(
        &self,
        input: &McpServerInput,
        discovery: Option<&DiscoveryOutcome>,
    ) -> Result<(McpServerRecord, DiscoveryChanges), StoreError> {
        let (rec, changes, v) = dispatch!(self, s => s.replace_mcp_server(input, discovery).await)?;
        self.publish(v);
        Ok((rec, changes))
    }

    /// Delete an MCP server; refused while virtual servers use it unless `force`.
    pub async fn delete_mcp_server(&self, name: &str, force: bool) -> Result<(), StoreError> {
        let v = dispatch!(self, s => s.delete_mcp_server(name, force).await)?;
        self.publish(v);
        Ok(())
    }

    /// One MCP server.
    pub async fn get_mcp_server(&self, name: &str) -> Result<McpServerRecord, StoreError> {
        dispatch!(self, s => s.get_mcp_server(name).await)
    }

    /// MCP servers by name.
    pub async fn list_mcp_servers(
        &self,
        page: &PageRequest,
    ) -> Result<Page<McpServerRecord>, StoreError> {
        dispatch!(self, s => s.list_mcp_servers(page).await)
    }

    /// Store a discovery result for an existing MCP server (the version is bumped only when the
    /// catalog or the health status changed).
    pub async fn apply_discovery(
        &self,
        name: &str,
        outcome: &DiscoveryOutcome,
    ) -> Result<(McpServerRecord, DiscoveryChanges), StoreError> {
        let (rec, changes, v) = dispatch!(self, s => s.apply_discovery_tx(name, outcome).await)?;
        if let Some(v) = v {
            self.publish(v);
        }
        Ok((rec, changes))
    }

    /// Items of one kind.
    pub async fn list_items(
        &self,
        kind: ItemKind,
        filter: &ItemFilter,
        page: &PageRequest,
    ) -> Result<Page<ItemRecord>, StoreError> {
        dispatch!(self, s => s.list_items(kind, filter, page).await)
    }

    /// One item by id.
    pub async fn get_item(&self, kind: ItemKind, id: i64) -> Result<ItemRecord, StoreError> {
        dispatch!(self, s => s.get_item(kind, id).await)
    }

    /// Enable or disable an item.
    pub async fn set_item_enabled(
        &self,
        kind: ItemKind,
        id: i64,
        enabled: bool,
    ) -> Result<ItemRecord, StoreError> {
        let (rec, v) = dispatch!(self, s => s.set_item_enabled(kind, id, enabled).await)?;
        self.publish(v);
        Ok(rec)
    }

    /// Accept an item's pending upstream definition.
    pub async fn accept_item(&self, kind: ItemKind, id: i64) -> Result<ItemRecord, StoreError> {
        let (rec, v) = dispatch!(self, s => s.accept_item(kind, id).await)?;
        self.publish(v);
        Ok(rec)
    }

    /// Create a virtual server; references are resolved in the same transaction.
    pub async fn create_virtual_server(
        &self,
        input: &VirtualServerInput,
    ) -> Result<VirtualServerRecord, StoreError> {
        let (rec, v) = dispatch!(self, s => s.put_virtual_server(input, false).await)?;
        self.publish(v);
        Ok(rec)
    }

    /// Replace a virtual server's description and members.
    pub async fn replace_virtual_server(
        &self,
        input: &VirtualServerInput,
    ) -> Result<VirtualServerRecord, StoreError> {
        let (rec, v) = dispatch!(self, s => s.put_virtual_server(input, true).await)?;
        self.publish(v);
        Ok(rec)
    }

    /// Delete a virtual server.
    pub async fn delete_virtual_server(&self, name: &str) -> Result<(), StoreError> {
        let v = dispatch!(self, s => s.delete_virtual_server(name).await)?;
        self.publish(v);
        Ok(())
    }

    /// One virtual server.
    pub async fn get_virtual_server(&self, name: &str) -> Result<VirtualServerRecord, StoreError> {
        dispatch!(self, s => s.get_virtual_server(name).await)
    }

    /// Virtual servers by name.
    pub async fn list_virtual_servers(
        &self,
        page: &PageRequest,
    ) -> Result<Page<VirtualServerRecord>, StoreError> {
        dispatch!(self, s => s.list_virtual_servers(page).await)
    }

    /// Everything the gateway needs, read at one version.
    pub async fn dump(&self) -> Result<CatalogDump, StoreError> {
        dispatch!(self, s => s.dump().await)
    }
}

impl PgStore {
    /// Feed the version channel from `NOTIFY toolmesh_catalog`, re-reading the version from the
    /// table (the payload is only a wake-up) and reconnecting after errors.
    fn spawn_listener(&self, tx: watch::Sender<u64>) {
        let store = self.clone();
        tokio::spawn(async move {
            // Runs until the pool closes. (Not until `tx` has no receivers: at spawn time nobody
            // has subscribed yet, and a replica must still hear the others.)
            loop {
                match sqlx::postgres::PgListener::connect_with(&store.pool).await {
                    Ok(mut listener) => {
                        if let Err(e) = listener.listen(NOTIFY_CHANNEL).await {
                            tracing::warn!(error = %e, "LISTEN {NOTIFY_CHANNEL} failed");
                        } else {
                            loop {
                                match listener.recv().await {
                                    Ok(_) => {
                                        if let Ok(v) = store.catalog_version().await {
                                            let v = v as u64;
                                            tx.send_if_modified(|cur| {
                                                (v > *cur).then(|| *cur = v).is_some()
                                            });
                                        }
                                    }
                                    Err(e) => {
                                        tracing::warn!(error = %e, "catalog notification listener failed; reconnecting");
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => {
                        if store.pool.is_closed() {
                            return;
                        }
                        tracing::warn!(error = %e, "cannot open the catalog notification listener");
                    }
                }
                if store.pool.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
    }
}

/// Escape `%`, `_` and `\` for a `LIKE … ESCAPE '\'` pattern.
fn like_pattern(q: &str) -> String {
    let mut out = String::with_capacity(q.len() + 2);
    out.push('%');
    for c in q.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// The description of an MCP item definition (empty when absent).
fn description_of(def: &serde_json::Value) -> String {
    def.get("description")
        .and_then(|d| d.as_str())
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_pattern_escapes_wildcards() {
        assert_eq!(like_pattern("a_b%C\\"), "%a\\_b\\%c\\\\%");
    }
}
