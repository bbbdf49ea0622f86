-- The toolmesh catalog (SQLite). Keep in step with migrations/postgres.

-- One row: bumped by every change, so Envoys and replicas can tell what they have seen.
CREATE TABLE catalog_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO catalog_version (id, version) VALUES (1, 0);

-- Control-plane settings: the admin token's sha256, the secret key check value.
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE mcp_servers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    transport TEXT NOT NULL CHECK (transport IN ('streamable-http', 'sse')),
    description TEXT NOT NULL DEFAULT '',
    -- Sealed JSON object of header name -> value (see src/crypto.rs); NULL when none.
    credential_headers BLOB,
    -- The header names only, in clear, so the API can show them without the key.
    credential_header_names TEXT NOT NULL DEFAULT '[]',
    health_status TEXT NOT NULL DEFAULT 'unknown' CHECK (health_status IN ('up', 'down', 'unknown')),
    last_success_at TEXT,
    last_error TEXT,
    last_error_at TEXT,
    latency_ms BIGINT,
    server_info TEXT,
    capabilities TEXT,
    protocol_version TEXT,
    instructions TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE mcp_server_tags (
    mcp_server_id INTEGER NOT NULL REFERENCES mcp_servers (id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (mcp_server_id, tag)
);
CREATE INDEX mcp_server_tags_tag ON mcp_server_tags (tag);

-- Discovered items. `definition` is the accepted MCP JSON object; `pending_definition` is what
-- the upstream sends now when it differs (drifted). Items that vanish upstream are kept with
-- removed_upstream = TRUE.
CREATE TABLE tools (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mcp_server_id INTEGER NOT NULL REFERENCES mcp_servers (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    definition TEXT NOT NULL,
    pending_definition TEXT,
    drifted BOOLEAN NOT NULL DEFAULT FALSE,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    removed_upstream BOOLEAN NOT NULL DEFAULT FALSE,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    UNIQUE (mcp_server_id, name)
);

CREATE TABLE prompts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mcp_server_id INTEGER NOT NULL REFERENCES mcp_servers (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    definition TEXT NOT NULL,
    pending_definition TEXT,
    drifted BOOLEAN NOT NULL DEFAULT FALSE,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    removed_upstream BOOLEAN NOT NULL DEFAULT FALSE,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    UNIQUE (mcp_server_id, name)
);

CREATE TABLE resources (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mcp_server_id INTEGER NOT NULL REFERENCES mcp_servers (id) ON DELETE CASCADE,
    uri TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    definition TEXT NOT NULL,
    pending_definition TEXT,
    drifted BOOLEAN NOT NULL DEFAULT FALSE,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    removed_upstream BOOLEAN NOT NULL DEFAULT FALSE,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    UNIQUE (mcp_server_id, uri)
);

CREATE TABLE resource_templates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    mcp_server_id INTEGER NOT NULL REFERENCES mcp_servers (id) ON DELETE CASCADE,
    uri_template TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    definition TEXT NOT NULL,
    pending_definition TEXT,
    drifted BOOLEAN NOT NULL DEFAULT FALSE,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    removed_upstream BOOLEAN NOT NULL DEFAULT FALSE,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    UNIQUE (mcp_server_id, uri_template)
);

CREATE TABLE virtual_servers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- What a virtual server exposes. item_id points into the table named by kind; items are never
-- deleted on their own (only with their MCP server, which cascades here through mcp_server_id).
CREATE TABLE virtual_server_members (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    virtual_server_id INTEGER NOT NULL REFERENCES virtual_servers (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('tool', 'prompt', 'resource', 'resource_template')),
    position INTEGER NOT NULL,
    mcp_server_id INTEGER NOT NULL REFERENCES mcp_servers (id) ON DELETE CASCADE,
    item_id BIGINT NOT NULL,
    expose_as TEXT,
    UNIQUE (virtual_server_id, kind, position)
);
CREATE INDEX virtual_server_members_mcp_server ON virtual_server_members (mcp_server_id);
CREATE INDEX virtual_server_members_item ON virtual_server_members (kind, item_id);
