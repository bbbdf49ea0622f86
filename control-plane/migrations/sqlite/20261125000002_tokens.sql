-- Tokens scoped to virtual servers (SQLite). Keep in step with migrations/postgres.

-- Ed25519 keys that sign tokens. The private key is sealed with the secret key (src/crypto.rs),
-- bound to its kid. The newest key that is not retired signs new tokens.
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    algorithm TEXT NOT NULL CHECK (algorithm IN ('EdDSA')),
    -- The raw 32-byte public key, base64url without padding (the JWK `x`).
    public_key TEXT NOT NULL,
    private_key_sealed BLOB NOT NULL,
    created_at TEXT NOT NULL,
    retired_at TEXT
);

-- Issued tokens: only the id (JWT `jti`) and metadata, never the token itself.
CREATE TABLE tokens (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    -- JSON array of virtual-server names, or ["*"].
    virtual_servers TEXT NOT NULL,
    -- JSON array of CIDRs; empty means any source address.
    source_cidrs TEXT NOT NULL DEFAULT '[]',
    kid TEXT NOT NULL REFERENCES signing_keys (kid),
    created_at TEXT NOT NULL,
    expires_at TEXT,
    revoked_at TEXT
);
CREATE INDEX tokens_revoked ON tokens (revoked_at);
CREATE INDEX tokens_kid ON tokens (kid);

-- A virtual server that accepts requests without a token.
ALTER TABLE virtual_servers ADD COLUMN anonymous BOOLEAN NOT NULL DEFAULT FALSE;
