-- Stateless protocol versions (SQLite). Keep in step with migrations/postgres.
--
-- The stateless MCP protocol versions (2026-07-28 and later) an MCP server listed in its
-- server/discover answer at the last successful discovery, as a JSON array of strings; '[]'
-- when it speaks only the initialize handshake, and for servers not discovered since this
-- migration (the next discovery fills it in).

ALTER TABLE mcp_servers ADD COLUMN modern_versions TEXT NOT NULL DEFAULT '[]';
