//! The SQL behind [`super::Store`], written once and instantiated per backend.
//!
//! Postgres and SQLite accept the same SQL here (`$n` parameters, `RETURNING`, `ON CONFLICT`,
//! `LIKE … ESCAPE`), and sqlx encodes the same Rust types into each one's column types (JSONB vs
//! TEXT, TIMESTAMPTZ vs TEXT, BOOLEAN vs INTEGER). What differs is the transaction start: SQLite
//! writers use `BEGIN IMMEDIATE` so they queue on the lock instead of failing on upgrade, and
//! Postgres readers use a read-only repeatable-read snapshot so a dump is consistent. A macro
//! stamps out one concrete implementation per backend (sqlx's generic-over-database bounds are
//! far noisier than the duplication they would save).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row as _;
use sqlx::types::Json;

use super::*;

const SERVER_COLS: &str = "s.id, s.name, s.url, s.transport, s.description, s.credential_headers, \
    s.credential_header_names, s.health_status, s.last_success_at, s.last_error, s.last_error_at, \
    s.latency_ms, s.server_info, s.capabilities, s.protocol_version, s.modern_versions, \
    s.instructions, s.created_at, s.updated_at, \
    (SELECT COUNT(*) FROM tools t WHERE t.mcp_server_id = s.id AND t.removed_upstream = FALSE) AS n_tools, \
    (SELECT COUNT(*) FROM prompts t WHERE t.mcp_server_id = s.id AND t.removed_upstream = FALSE) AS n_prompts, \
    (SELECT COUNT(*) FROM resources t WHERE t.mcp_server_id = s.id AND t.removed_upstream = FALSE) AS n_resources, \
    (SELECT COUNT(*) FROM resource_templates t WHERE t.mcp_server_id = s.id AND t.removed_upstream = FALSE) AS n_templates, \
    ((SELECT COUNT(*) FROM tools t WHERE t.mcp_server_id = s.id AND t.drifted = TRUE) + \
     (SELECT COUNT(*) FROM prompts t WHERE t.mcp_server_id = s.id AND t.drifted = TRUE) + \
     (SELECT COUNT(*) FROM resources t WHERE t.mcp_server_id = s.id AND t.drifted = TRUE) + \
     (SELECT COUNT(*) FROM resource_templates t WHERE t.mcp_server_id = s.id AND t.drifted = TRUE)) AS n_drifted";

const VS_COLS: &str = "v.id, v.name, v.description, v.anonymous, v.created_at, v.updated_at";

fn item_select(kind: ItemKind) -> String {
    format!(
        "SELECT i.id, s.name AS mcp_server, i.{key} AS item_key, i.description, i.definition, \
         i.pending_definition, i.drifted, i.enabled, i.removed_upstream, i.first_seen, i.last_seen \
         FROM {table} i JOIN mcp_servers s ON s.id = i.mcp_server_id",
        key = kind.key_column(),
        table = kind.table()
    )
}

fn member_select(kind: ItemKind) -> String {
    format!(
        "SELECT m.virtual_server_id, s.name AS mcp_server, i.{key} AS item_key, m.item_id, \
         m.expose_as, i.enabled, i.removed_upstream, i.drifted, i.definition \
         FROM virtual_server_members m \
         JOIN mcp_servers s ON s.id = m.mcp_server_id \
         JOIN {table} i ON i.id = m.item_id \
         WHERE m.kind = $1",
        key = kind.key_column(),
        table = kind.table()
    )
}

/// A value bound into a dynamically built query.
enum Bind {
    Str(String),
    Bool(bool),
    Int(i64),
}

fn unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

fn parse_id_cursor(cursor: &Option<String>) -> Result<Option<i64>, StoreError> {
    cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>().map_err(|_| StoreError::Invalid {
                field: "cursor".into(),
                message: format!("cursor: {c:?} is not a cursor returned by this list"),
            })
        })
        .transpose()
}

fn items_of(d: &toolmesh_discovery::Discovered, kind: ItemKind) -> &[Value] {
    match kind {
        ItemKind::Tool => &d.tools,
        ItemKind::Prompt => &d.prompts,
        ItemKind::Resource => &d.resources,
        ItemKind::ResourceTemplate => &d.resource_templates,
    }
}

struct ExistingItem {
    id: i64,
    definition: Value,
    pending: Option<Value>,
    drifted: bool,
    removed: bool,
}

macro_rules! sql_store {
    ($Store:ident, $DB:ty, $Conn:ty, $Row:ty, begin_write = $begin_write:literal,
     begin_read = $begin_read:literal, notify = $notify:literal) => {
        impl $Store {
            async fn begin_write(&self) -> Result<sqlx::Transaction<'static, $DB>, StoreError> {
                Ok(self.pool.begin_with($begin_write).await?)
            }

            /// Bump the catalog version (first statement of every API mutation: on SQLite it
            /// takes the write lock; on Postgres it serializes writers on the version row).
            async fn bump(c: &mut $Conn) -> Result<i64, StoreError> {
                let v: i64 = sqlx::query_scalar(
                    "UPDATE catalog_version SET version = version + 1 WHERE id = 1 RETURNING version",
                )
                .fetch_one(&mut *c)
                .await?;
                if !$notify.is_empty() {
                    sqlx::query($notify).bind(v.to_string()).execute(&mut *c).await?;
                }
                Ok(v)
            }

            pub(super) async fn catalog_version(&self) -> Result<i64, StoreError> {
                Ok(sqlx::query_scalar("SELECT version FROM catalog_version WHERE id = 1")
                    .fetch_one(&self.pool)
                    .await?)
            }

            pub(super) async fn get_setting(&self, key: &str) -> Result<Option<String>, StoreError> {
                Ok(sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            pub(super) async fn set_setting(
                &self,
                key: &str,
                value: &str,
                overwrite: bool,
            ) -> Result<bool, StoreError> {
                let sql = if overwrite {
                    "INSERT INTO settings (key, value, updated_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
                } else {
                    "INSERT INTO settings (key, value, updated_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (key) DO NOTHING"
                };
                let done = sqlx::query(sql)
                    .bind(key)
                    .bind(value)
                    .bind(Utc::now())
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            // ---- MCP servers ------------------------------------------------------------

            async fn server_from_row(c: &mut $Conn, row: &$Row) -> Result<McpServerRecord, StoreError> {
                let id: i64 = row.try_get("id")?;
                let tags: Vec<String> = sqlx::query_scalar(
                    "SELECT tag FROM mcp_server_tags WHERE mcp_server_id = $1 ORDER BY tag",
                )
                .bind(id)
                .fetch_all(&mut *c)
                .await?;
                let json = |col: &str| -> Result<Option<Value>, StoreError> {
                    Ok(row.try_get::<Option<Json<Value>>, _>(col)?.map(|j| j.0))
                };
                Ok(McpServerRecord {
                    id,
                    name: row.try_get("name")?,
                    url: row.try_get("url")?,
                    transport: Transport::parse(&row.try_get::<String, _>("transport")?)?,
                    description: row.try_get("description")?,
                    tags,
                    credential_headers: row.try_get("credential_headers")?,
                    credential_header_names: row
                        .try_get::<Json<Vec<String>>, _>("credential_header_names")?
                        .0,
                    health: Health {
                        status: HealthStatus::parse(&row.try_get::<String, _>("health_status")?)?,
                        last_success_at: row.try_get("last_success_at")?,
                        last_error: row.try_get("last_error")?,
                        last_error_at: row.try_get("last_error_at")?,
                        latency_ms: row.try_get("latency_ms")?,
                        protocol_version: row.try_get("protocol_version")?,
                        modern_versions: row
                            .try_get::<Json<Vec<String>>, _>("modern_versions")?
                            .0,
                        server_info: json("server_info")?,
                        capabilities: json("capabilities")?,
                        instructions: row.try_get("instructions")?,
                    },
                    counts: ItemCounts {
                        tools: row.try_get("n_tools")?,
                        prompts: row.try_get("n_prompts")?,
                        resources: row.try_get("n_resources")?,
                        resource_templates: row.try_get("n_templates")?,
                        drifted: row.try_get("n_drifted")?,
                    },
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }

            async fn server_by_name(
                c: &mut $Conn,
                name: &str,
            ) -> Result<McpServerRecord, StoreError> {
                let sql = format!("SELECT {SERVER_COLS} FROM mcp_servers s WHERE s.name = $1");
                let row = sqlx::query(&sql)
                    .bind(name)
                    .fetch_optional(&mut *c)
                    .await?
                    .ok_or_else(|| StoreError::NotFound {
                        kind: "mcp server",
                        name: name.to_string(),
                    })?;
                Self::server_from_row(c, &row).await
            }

            async fn server_id(c: &mut $Conn, name: &str) -> Result<Option<i64>, StoreError> {
                Ok(sqlx::query_scalar("SELECT id FROM mcp_servers WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&mut *c)
                    .await?)
            }

            async fn write_tags(c: &mut $Conn, id: i64, tags: &[String]) -> Result<(), StoreError> {
                sqlx::query("DELETE FROM mcp_server_tags WHERE mcp_server_id = $1")
                    .bind(id)
                    .execute(&mut *c)
                    .await?;
                let unique: std::collections::BTreeSet<&String> = tags.iter().collect();
                for tag in unique {
                    sqlx::query("INSERT INTO mcp_server_tags (mcp_server_id, tag) VALUES ($1, $2)")
                        .bind(id)
                        .bind(tag)
                        .execute(&mut *c)
                        .await?;
                }
                Ok(())
            }

            pub(super) async fn get_mcp_server(&self, name: &str) -> Result<McpServerRecord, StoreError> {
                let mut c = self.pool.acquire().await?;
                Self::server_by_name(&mut c, name).await
            }

            pub(super) async fn list_mcp_servers(
                &self,
                page: &PageRequest,
            ) -> Result<Page<McpServerRecord>, StoreError> {
                let mut c = self.pool.acquire().await?;
                let sql = if page.cursor.is_some() {
                    format!("SELECT {SERVER_COLS} FROM mcp_servers s WHERE s.name > $1 ORDER BY s.name LIMIT $2")
                } else {
                    format!("SELECT {SERVER_COLS} FROM mcp_servers s ORDER BY s.name LIMIT $1")
                };
                let mut q = sqlx::query(&sql);
                if let Some(cur) = &page.cursor {
                    q = q.bind(cur);
                }
                let rows = q.bind(i64::from(page.limit) + 1).fetch_all(&mut *c).await?;
                let mut items = Vec::with_capacity(rows.len());
                for row in rows.iter().take(page.limit as usize) {
                    items.push(Self::server_from_row(&mut c, row).await?);
                }
                let next_cursor = (rows.len() > page.limit as usize)
                    .then(|| items.last().map(|s: &McpServerRecord| s.name.clone()))
                    .flatten();
                Ok(Page { items, next_cursor })
            }

            pub(super) async fn create_mcp_server(
                &self,
                input: &McpServerInput,
                discovery: &DiscoveryOutcome,
            ) -> Result<(McpServerRecord, DiscoveryChanges, i64), StoreError> {
                let mut tx = self.begin_write().await?;
                let v = Self::bump(&mut tx).await?;
                if Self::server_id(&mut tx, &input.name).await?.is_some() {
                    return Err(StoreError::AlreadyExists {
                        kind: "mcp server",
                        name: input.name.clone(),
                    });
                }
                let (sealed, names) = match &input.credentials {
                    CredentialUpdate::Set { sealed, names } => (Some(sealed.clone()), names.clone()),
                    _ => (None, Vec::new()),
                };
                let now = Utc::now();
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO mcp_servers (name, url, transport, description, credential_headers, \
                     credential_header_names, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING id",
                )
                .bind(&input.name)
                .bind(&input.url)
                .bind(input.transport.as_str())
                .bind(&input.description)
                .bind(sealed)
                .bind(Json(names))
                .bind(now)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| {
                    if unique_violation(&e) {
                        StoreError::AlreadyExists { kind: "mcp server", name: input.name.clone() }
                    } else {
                        e.into()
                    }
                })?;
                Self::write_tags(&mut tx, id, &input.tags).await?;
                let (changes, _) = Self::apply_discovery(&mut tx, id, discovery).await?;
                tx.commit().await?;
                let rec = self.get_mcp_server(&input.name).await?;
                Ok((rec, changes, v))
            }

            pub(super) async fn replace_mcp_server(
                &self,
                input: &McpServerInput,
                discovery: Option<&DiscoveryOutcome>,
            ) -> Result<(McpServerRecord, DiscoveryChanges, i64), StoreError> {
                let mut tx = self.begin_write().await?;
                let v = Self::bump(&mut tx).await?;
                let id = Self::server_id(&mut tx, &input.name).await?.ok_or_else(|| {
                    StoreError::NotFound { kind: "mcp server", name: input.name.clone() }
                })?;
                sqlx::query(
                    "UPDATE mcp_servers SET url = $1, transport = $2, description = $3, updated_at = $4 \
                     WHERE id = $5",
                )
                .bind(&input.url)
                .bind(input.transport.as_str())
                .bind(&input.description)
                .bind(Utc::now())
                .bind(id)
                .execute(&mut *tx)
                .await?;
                match &input.credentials {
                    CredentialUpdate::Keep => {}
                    CredentialUpdate::Set { sealed, names } => {
                        sqlx::query(
                            "UPDATE mcp_servers SET credential_headers = $1, credential_header_names = $2 \
                             WHERE id = $3",
                        )
                        .bind(sealed)
                        .bind(Json(names))
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    }
                    CredentialUpdate::Clear => {
                        sqlx::query(
                            "UPDATE mcp_servers SET credential_headers = NULL, credential_header_names = $1 \
                             WHERE id = $2",
                        )
                        .bind(Json(Vec::<String>::new()))
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                Self::write_tags(&mut tx, id, &input.tags).await?;
                let changes = match discovery {
                    Some(d) => Self::apply_discovery(&mut tx, id, d).await?.0,
                    None => DiscoveryChanges::default(),
                };
                tx.commit().await?;
                let rec = self.get_mcp_server(&input.name).await?;
                Ok((rec, changes, v))
            }

            pub(super) async fn delete_mcp_server(&self, name: &str, force: bool) -> Result<i64, StoreError> {
                let mut tx = self.begin_write().await?;
                let v = Self::bump(&mut tx).await?;
                let id = Self::server_id(&mut tx, name).await?.ok_or_else(|| {
                    StoreError::NotFound { kind: "mcp server", name: name.to_string() }
                })?;
                let users: Vec<String> = sqlx::query_scalar(
                    "SELECT DISTINCT v.name FROM virtual_server_members m \
                     JOIN virtual_servers v ON v.id = m.virtual_server_id \
                     WHERE m.mcp_server_id = $1 ORDER BY v.name",
                )
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
                if !users.is_empty() && !force {
                    return Err(StoreError::InUse {
                        mcp_server: name.to_string(),
                        virtual_servers: users,
                    });
                }
                sqlx::query("DELETE FROM mcp_servers WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(v)
            }

            // ---- discovery ---------------------------------------------------------------

            pub(super) async fn apply_discovery_tx(
                &self,
                name: &str,
                outcome: &DiscoveryOutcome,
            ) -> Result<(McpServerRecord, DiscoveryChanges, Option<i64>), StoreError> {
                let mut tx = self.begin_write().await?;
                let id = Self::server_id(&mut tx, name).await?.ok_or_else(|| {
                    StoreError::NotFound { kind: "mcp server", name: name.to_string() }
                })?;
                let (changes, changed) = Self::apply_discovery(&mut tx, id, outcome).await?;
                let v = if changed { Some(Self::bump(&mut tx).await?) } else { None };
                tx.commit().await?;
                let rec = self.get_mcp_server(name).await?;
                Ok((rec, changes, v))
            }

            /// Store health and items; returns what changed and whether the catalog, the
            /// health status or what the policy takes from the server row (its capabilities and
            /// stateless protocol versions) changed (worth a new version).
            async fn apply_discovery(
                c: &mut $Conn,
                id: i64,
                outcome: &DiscoveryOutcome,
            ) -> Result<(DiscoveryChanges, bool), StoreError> {
                // A no-op write first: takes the row lock on Postgres so two discoveries of the
                // same server apply one after the other.
                let row = sqlx::query(
                    "UPDATE mcp_servers SET health_status = health_status WHERE id = $1 \
                     RETURNING health_status, capabilities, modern_versions",
                )
                .bind(id)
                .fetch_one(&mut *c)
                .await?;
                let prev: String = row.try_get("health_status")?;
                let prev_capabilities: Option<Value> =
                    row.try_get::<Option<Json<Value>>, _>("capabilities")?.map(|j| j.0);
                let prev_modern: Vec<String> =
                    row.try_get::<Json<Vec<String>>, _>("modern_versions")?.0;
                let now = Utc::now();
                match outcome {
                    DiscoveryOutcome::Failure(reason) => {
                        sqlx::query(
                            "UPDATE mcp_servers SET health_status = 'down', last_error = $1, last_error_at = $2 \
                             WHERE id = $3",
                        )
                        .bind(reason)
                        .bind(now)
                        .bind(id)
                        .execute(&mut *c)
                        .await?;
                        Ok((DiscoveryChanges::default(), prev != "down"))
                    }
                    DiscoveryOutcome::Success(d) => {
                        sqlx::query(
                            "UPDATE mcp_servers SET health_status = 'up', last_success_at = $1, latency_ms = $2, \
                             server_info = $3, capabilities = $4, protocol_version = $5, instructions = $6, \
                             modern_versions = $7 WHERE id = $8",
                        )
                        .bind(now)
                        .bind(i64::try_from(d.latency.as_millis()).unwrap_or(i64::MAX))
                        .bind(Json(&d.server_info))
                        .bind(Json(&d.capabilities))
                        .bind(&d.protocol_version)
                        .bind(&d.instructions)
                        .bind(Json(&d.modern_versions))
                        .bind(id)
                        .execute(&mut *c)
                        .await?;
                        let mut changes = DiscoveryChanges::default();
                        for kind in ItemKind::ALL {
                            Self::sync_items(c, id, kind, items_of(d, kind), now, &mut changes).await?;
                        }
                        let changed = prev != "up"
                            || changes.added + changes.drifted + changes.removed + changes.restored > 0
                            || prev_capabilities.as_ref() != Some(&d.capabilities)
                            || prev_modern != d.modern_versions;
                        Ok((changes, changed))
                    }
                }
            }

            async fn sync_items(
                c: &mut $Conn,
                server_id: i64,
                kind: ItemKind,
                items: &[Value],
                now: DateTime<Utc>,
                changes: &mut DiscoveryChanges,
            ) -> Result<(), StoreError> {
                let (table, key_col) = (kind.table(), kind.key_column());
                let rows = sqlx::query(&format!(
                    "SELECT id, {key_col} AS item_key, definition, pending_definition, drifted, removed_upstream \
                     FROM {table} WHERE mcp_server_id = $1"
                ))
                .bind(server_id)
                .fetch_all(&mut *c)
                .await?;
                let mut existing = HashMap::with_capacity(rows.len());
                for row in &rows {
                    existing.insert(
                        row.try_get::<String, _>("item_key")?,
                        ExistingItem {
                            id: row.try_get("id")?,
                            definition: row.try_get::<Json<Value>, _>("definition")?.0,
                            pending: row
                                .try_get::<Option<Json<Value>>, _>("pending_definition")?
                                .map(|j| j.0),
                            drifted: row.try_get("drifted")?,
                            removed: row.try_get("removed_upstream")?,
                        },
                    );
                }
                let mut seen: HashSet<&str> = HashSet::new();
                for item in items {
                    let Some(key) = item.get(kind.json_key()).and_then(Value::as_str) else {
                        changes.skipped += 1;
                        continue;
                    };
                    if !seen.insert(key) {
                        continue; // a duplicate in the upstream's own list: the first wins
                    }
                    match existing.get(key) {
                        None => {
                            sqlx::query(&format!(
                                "INSERT INTO {table} (mcp_server_id, {key_col}, description, definition, \
                                 first_seen, last_seen) VALUES ($1, $2, $3, $4, $5, $5)"
                            ))
                            .bind(server_id)
                            .bind(key)
                            .bind(description_of(item))
                            .bind(Json(item))
                            .bind(now)
                            .execute(&mut *c)
                            .await?;
                            changes.added += 1;
                        }
                        Some(row) if *item == row.definition => {
                            if row.drifted || row.removed {
                                changes.restored += 1;
                                sqlx::query(&format!(
                                    "UPDATE {table} SET pending_definition = NULL, drifted = FALSE, \
                                     removed_upstream = FALSE WHERE id = $1"
                                ))
                                .bind(row.id)
                                .execute(&mut *c)
                                .await?;
                            }
                        }
                        Some(row) => {
                            if row.pending.as_ref() != Some(item) || row.removed {
                                if row.removed {
                                    changes.restored += 1;
                                }
                                if row.pending.as_ref() != Some(item) {
                                    changes.drifted += 1;
                                }
                                sqlx::query(&format!(
                                    "UPDATE {table} SET pending_definition = $1, drifted = TRUE, \
                                     removed_upstream = FALSE WHERE id = $2"
                                ))
                                .bind(Json(item))
                                .bind(row.id)
                                .execute(&mut *c)
                                .await?;
                            }
                        }
                    }
                }
                for (key, row) in &existing {
                    if !row.removed && !seen.contains(key.as_str()) {
                        sqlx::query(&format!("UPDATE {table} SET removed_upstream = TRUE WHERE id = $1"))
                            .bind(row.id)
                            .execute(&mut *c)
                            .await?;
                        changes.removed += 1;
                    }
                }
                sqlx::query(&format!(
                    "UPDATE {table} SET last_seen = $1 WHERE mcp_server_id = $2 AND removed_upstream = FALSE"
                ))
                .bind(now)
                .bind(server_id)
                .execute(&mut *c)
                .await?;
                Ok(())
            }

            // ---- items --------------------------------------------------------------------

            fn item_from_row(kind: ItemKind, row: &$Row) -> Result<ItemRecord, StoreError> {
                Ok(ItemRecord {
                    id: row.try_get("id")?,
                    kind,
                    mcp_server: row.try_get("mcp_server")?,
                    key: row.try_get("item_key")?,
                    description: row.try_get("description")?,
                    definition: row.try_get::<Json<Value>, _>("definition")?.0,
                    pending_definition: row
                        .try_get::<Option<Json<Value>>, _>("pending_definition")?
                        .map(|j| j.0),
                    drifted: row.try_get("drifted")?,
                    enabled: row.try_get("enabled")?,
                    removed_upstream: row.try_get("removed_upstream")?,
                    first_seen: row.try_get("first_seen")?,
                    last_seen: row.try_get("last_seen")?,
                })
            }

            pub(super) async fn list_items(
                &self,
                kind: ItemKind,
                filter: &ItemFilter,
                page: &PageRequest,
            ) -> Result<Page<ItemRecord>, StoreError> {
                let after = parse_id_cursor(&page.cursor)?;
                let mut sql = item_select(kind);
                sql.push_str(" WHERE 1 = 1");
                let mut binds = Vec::new();
                let next = |b: Bind, binds: &mut Vec<Bind>| {
                    binds.push(b);
                    format!("${}", binds.len())
                };
                if let Some(s) = &filter.mcp_server {
                    let p = next(Bind::Str(s.clone()), &mut binds);
                    sql.push_str(&format!(" AND s.name = {p}"));
                }
                if let Some(t) = &filter.tag {
                    let p = next(Bind::Str(t.clone()), &mut binds);
                    sql.push_str(&format!(
                        " AND EXISTS (SELECT 1 FROM mcp_server_tags g WHERE g.mcp_server_id = s.id AND g.tag = {p})"
                    ));
                }
                if let Some(q) = filter.q.as_deref().filter(|q| !q.is_empty()) {
                    let p = next(Bind::Str(like_pattern(q)), &mut binds);
                    sql.push_str(&format!(
                        " AND (LOWER(i.{key}) LIKE {p} ESCAPE '\\' OR LOWER(i.description) LIKE {p} ESCAPE '\\')",
                        key = kind.key_column()
                    ));
                }
                if let Some(e) = filter.enabled {
                    let p = next(Bind::Bool(e), &mut binds);
                    sql.push_str(&format!(" AND i.enabled = {p}"));
                }
                if let Some(d) = filter.drifted {
                    let p = next(Bind::Bool(d), &mut binds);
                    sql.push_str(&format!(" AND i.drifted = {p}"));
                }
                if let Some(a) = after {
                    let p = next(Bind::Int(a), &mut binds);
                    sql.push_str(&format!(" AND i.id > {p}"));
                }
                let p = next(Bind::Int(i64::from(page.limit) + 1), &mut binds);
                sql.push_str(&format!(" ORDER BY i.id LIMIT {p}"));
                let mut q = sqlx::query(&sql);
                for b in binds {
                    q = match b {
                        Bind::Str(s) => q.bind(s),
                        Bind::Bool(v) => q.bind(v),
                        Bind::Int(v) => q.bind(v),
                    };
                }
                let rows = q.fetch_all(&self.pool).await?;
                let mut items = rows
                    .iter()
                    .map(|r| Self::item_from_row(kind, r))
                    .collect::<Result<Vec<_>, _>>()?;
                let next_cursor = if items.len() > page.limit as usize {
                    items.truncate(page.limit as usize);
                    items.last().map(|i| i.id.to_string())
                } else {
                    None
                };
                Ok(Page { items, next_cursor })
            }

            pub(super) async fn get_item(&self, kind: ItemKind, id: i64) -> Result<ItemRecord, StoreError> {
                let sql = format!("{} WHERE i.id = $1", item_select(kind));
                let row = sqlx::query(&sql)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?
                    .ok_or_else(|| StoreError::NotFound { kind: kind.human(), name: id.to_string() })?;
                Self::item_from_row(kind, &row)
            }

            pub(super) async fn set_item_enabled(
                &self,
                kind: ItemKind,
                id: i64,
                enabled: bool,
            ) -> Result<(ItemRecord, i64), StoreError> {
                let mut tx = self.begin_write().await?;
                let v = Self::bump(&mut tx).await?;
                let done = sqlx::query(&format!("UPDATE {} SET enabled = $1 WHERE id = $2", kind.table()))
                    .bind(enabled)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound { kind: kind.human(), name: id.to_string() });
                }
                tx.commit().await?;
                Ok((self.get_item(kind, id).await?, v))
            }

            pub(super) async fn accept_item(&self, kind: ItemKind, id: i64) -> Result<(ItemRecord, i64), StoreError> {
                let mut tx = self.begin_write().await?;
                let v = Self::bump(&mut tx).await?;
                let pending: Option<Option<Json<Value>>> = sqlx::query_scalar(&format!(
                    "SELECT pending_definition FROM {} WHERE id = $1",
                    kind.table()
                ))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                let pending = match pending {
                    None => return Err(StoreError::NotFound { kind: kind.human(), name: id.to_string() }),
                    Some(None) => {
                        return Err(StoreError::Conflict(format!(
                            "{} {id} has not drifted: there is no pending definition to accept",
                            kind.human()
                        )))
                    }
                    Some(Some(p)) => p.0,
                };
                sqlx::query(&format!(
                    "UPDATE {} SET definition = $1, description = $2, pending_definition = NULL, drifted = FALSE \
                     WHERE id = $3",
                    kind.table()
                ))
                .bind(Json(&pending))
                .bind(description_of(&pending))
                .bind(id)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok((self.get_item(kind, id).await?, v))
            }

            // ---- virtual servers ---------------------------------------------------------

            async fn members(
                c: &mut $Conn,
                vs_id: Option<i64>,
            ) -> Result<Vec<(i64, MemberRecord)>, StoreError> {
                let mut out = Vec::new();
                for kind in ItemKind::ALL {
                    let mut sql = member_select(kind);
                    if vs_id.is_some() {
                        sql.push_str(" AND m.virtual_server_id = $2");
                    }
                    sql.push_str(" ORDER BY m.virtual_server_id, m.position");
                    let mut q = sqlx::query(&sql).bind(kind.as_str());
                    if let Some(id) = vs_id {
                        q = q.bind(id);
                    }
                    for row in q.fetch_all(&mut *c).await? {
                        out.push((
                            row.try_get("virtual_server_id")?,
                            MemberRecord {
                                kind: ItemKind::parse(kind.as_str())?,
                                mcp_server: row.try_get("mcp_server")?,
                                item: row.try_get("item_key")?,
                                item_id: row.try_get("item_id")?,
                                expose_as: row.try_get("expose_as")?,
                                enabled: row.try_get("enabled")?,
                                removed_upstream: row.try_get("removed_upstream")?,
                                drifted: row.try_get("drifted")?,
                                definition: row.try_get::<Json<Value>, _>("definition")?.0,
                            },
                        ));
                    }
                }
                Ok(out)
            }

            fn vs_from_row(row: &$Row, members: Vec<MemberRecord>) -> Result<VirtualServerRecord, StoreError> {
                Ok(VirtualServerRecord {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    description: row.try_get("description")?,
                    anonymous: row.try_get("anonymous")?,
                    members,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }

            async fn vs_by_name(c: &mut $Conn, name: &str) -> Result<VirtualServerRecord, StoreError> {
                let row = sqlx::query(&format!("SELECT {VS_COLS} FROM virtual_servers v WHERE v.name = $1"))
                    .bind(name)
                    .fetch_optional(&mut *c)
                    .await?
                    .ok_or_else(|| StoreError::NotFound { kind: "virtual server", name: name.to_string() })?;
                let id: i64 = row.try_get("id")?;
                let members = Self::members(c, Some(id)).await?.into_iter().map(|(_, m)| m).collect();
                Self::vs_from_row(&row, members)
            }

            pub(super) async fn get_virtual_server(&self, name: &str) -> Result<VirtualServerRecord, StoreError> {
                let mut c = self.pool.acquire().await?;
                Self::vs_by_name(&mut c, name).await
            }

            pub(super) async fn list_virtual_servers(
                &self,
                page: &PageRequest,
            ) -> Result<Page<VirtualServerRecord>, StoreError> {
                let mut c = self.pool.acquire().await?;
                let sql = if page.cursor.is_some() {
                    format!("SELECT {VS_COLS} FROM virtual_servers v WHERE v.name > $1 ORDER BY v.name LIMIT $2")
                } else {
                    format!("SELECT {VS_COLS} FROM virtual_servers v ORDER BY v.name LIMIT $1")
                };
                let mut q = sqlx::query(&sql);
                if let Some(cur) = &page.cursor {
                    q = q.bind(cur);
                }
                let rows = q.bind(i64::from(page.limit) + 1).fetch_all(&mut *c).await?;
                let mut items = Vec::new();
                for row in rows.iter().take(page.limit as usize) {
                    let id: i64 = row.try_get("id")?;
                    let members = Self::members(&mut c, Some(id)).await?.into_iter().map(|(_, m)| m).collect();
                    items.push(Self::vs_from_row(row, members)?);
                }
                let next_cursor = (rows.len() > page.limit as usize)
                    .then(|| items.last().map(|v: &VirtualServerRecord| v.name.clone()))
                    .flatten();
                Ok(Page { items, next_cursor })
            }

            pub(super) async fn put_virtual_server(
                &self,
                input: &VirtualServerInput,
                replace: bool,
            ) -> Result<(VirtualServerRecord, i64), StoreError> {
                let mut tx = self.begin_write().await?;
                let v = Self::bump(&mut tx).await?;
                let now = Utc::now();
                let existing: Option<i64> = sqlx::query_scalar("SELECT id FROM virtual_servers WHERE name = $1")
                    .bind(&input.name)
                    .fetch_optional(&mut *tx)
                    .await?;
                let vs_id = match (existing, replace) {
                    (Some(_), false) => {
                        return Err(StoreError::AlreadyExists { kind: "virtual server", name: input.name.clone() })
                    }
                    (None, true) => {
                        return Err(StoreError::NotFound { kind: "virtual server", name: input.name.clone() })
                    }
                    (Some(id), true) => {
                        sqlx::query("UPDATE virtual_servers SET description = $1, updated_at = $2, anonymous = $4 WHERE id = $3")
                            .bind(&input.description)
                            .bind(now)
                            .bind(id)
                            .bind(input.anonymous)
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query("DELETE FROM virtual_server_members WHERE virtual_server_id = $1")
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                        id
                    }
                    (None, false) => sqlx::query_scalar(
                        "INSERT INTO virtual_servers (name, description, created_at, updated_at, anonymous) \
                         VALUES ($1, $2, $3, $3, $4) RETURNING id",
                    )
                    .bind(&input.name)
                    .bind(&input.description)
                    .bind(now)
                    .bind(input.anonymous)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| {
                        if unique_violation(&e) {
                            StoreError::AlreadyExists { kind: "virtual server", name: input.name.clone() }
                        } else {
                            e.into()
                        }
                    })?,
                };
                let mut server_ids: HashMap<String, Option<i64>> = HashMap::new();
                for kind in ItemKind::ALL {
                    let (field, refs) = input.members(kind);
                    for (i, r) in refs.iter().enumerate() {
                        let at = format!("{field}[{i}]");
                        let sid = match server_ids.get(&r.mcp_server) {
                            Some(s) => *s,
                            None => {
                                let s = Self::server_id(&mut tx, &r.mcp_server).await?;
                                server_ids.insert(r.mcp_server.clone(), s);
                                s
                            }
                        };
                        let Some(sid) = sid else {
                            return Err(StoreError::Invalid {
                                field: format!("{at}.mcp_server"),
                                message: format!("{at}: unknown mcp server '{}'", r.mcp_server),
                            });
                        };
                        let row = sqlx::query(&format!(
                            "SELECT id, enabled, removed_upstream FROM {} WHERE mcp_server_id = $1 AND {} = $2",
                            kind.table(),
                            kind.key_column()
                        ))
                        .bind(sid)
                        .bind(&r.item)
                        .fetch_optional(&mut *tx)
                        .await?;
                        let item_field = format!("{at}.{}", kind.ref_field());
                        let what = format!("{} '{}' on mcp server '{}'", kind.human(), r.item, r.mcp_server);
                        let Some(row) = row else {
                            return Err(StoreError::Invalid {
                                field: item_field,
                                message: format!("{at}: unknown {what}"),
                            });
                        };
                        if !row.try_get::<bool, _>("enabled")? {
                            return Err(StoreError::Invalid {
                                field: item_field,
                                message: format!("{at}: {what} is disabled"),
                            });
                        }
                        if row.try_get::<bool, _>("removed_upstream")? {
                            return Err(StoreError::Invalid {
                                field: item_field,
                                message: format!("{at}: {what} was removed upstream"),
                            });
                        }
                        sqlx::query(
                            "INSERT INTO virtual_server_members \
                             (virtual_server_id, kind, position, mcp_server_id, item_id, expose_as) \
                             VALUES ($1, $2, $3, $4, $5, $6)",
                        )
                        .bind(vs_id)
                        .bind(kind.as_str())
                        .bind(i32::try_from(i).unwrap_or(i32::MAX))
                        .bind(sid)
                        .bind(row.try_get::<i64, _>("id")?)
                        .bind(&r.expose_as)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                tx.commit().await?;
                Ok((self.get_virtual_server(&input.name).await?, v))
            }

            pub(super) async fn delete_virtual_server(&self, name: &str) -> Result<i64, StoreError> {
                let mut tx = self.begin_write().await?;
                let v = Self::bump(&mut tx).await?;
                let done = sqlx::query("DELETE FROM virtual_servers WHERE name = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound { kind: "virtual server", name: name.to_string() });
                }
                tx.commit().await?;
                Ok(v)
            }

            pub(super) async fn dump(&self) -> Result<CatalogDump, StoreError> {
                let mut tx = self.pool.begin_with($begin_read).await?;
                let version: i64 = sqlx::query_scalar("SELECT version FROM catalog_version WHERE id = 1")
                    .fetch_one(&mut *tx)
                    .await?;
                let rows = sqlx::query(&format!("SELECT {SERVER_COLS} FROM mcp_servers s ORDER BY s.name"))
                    .fetch_all(&mut *tx)
                    .await?;
                let mut mcp_servers = Vec::with_capacity(rows.len());
                for row in &rows {
                    mcp_servers.push(Self::server_from_row(&mut tx, row).await?);
                }
                let mut by_vs: HashMap<i64, Vec<MemberRecord>> = HashMap::new();
                for (vs, m) in Self::members(&mut tx, None).await? {
                    by_vs.entry(vs).or_default().push(m);
                }
                let rows = sqlx::query(&format!("SELECT {VS_COLS} FROM virtual_servers v ORDER BY v.name"))
                    .fetch_all(&mut *tx)
                    .await?;
                let mut virtual_servers = Vec::with_capacity(rows.len());
                for row in &rows {
                    let id: i64 = row.try_get("id")?;
                    virtual_servers.push(Self::vs_from_row(row, by_vs.remove(&id).unwrap_or_default())?);
                }
                tx.commit().await?;
                Ok(CatalogDump { version, mcp_servers, virtual_servers })
            }
        }
    };
}

sql_store!(
    PgStore,
    sqlx::Postgres,
    sqlx::PgConnection,
    sqlx::postgres::PgRow,
    begin_write = "BEGIN",
    begin_read = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
    notify = "SELECT pg_notify('toolmesh_catalog', $1)"
);

sql_store!(
    SqliteStore,
    sqlx::Sqlite,
    sqlx::SqliteConnection,
    sqlx::sqlite::SqliteRow,
    begin_write = "BEGIN IMMEDIATE",
    begin_read = "BEGIN",
    notify = ""
);
