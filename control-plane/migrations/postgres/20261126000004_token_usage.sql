-- Per-token usage roll-ups (Postgres). Keep in step with migrations/sqlite.
--
-- Filled like tool_usage (same flushes, same minute/hour compaction and retention) from the
-- filter's toolmesh.caller.<vs>.<token id>.{calls,errors,denied} counters, which exist only for
-- the tokens the policy lists on a virtual server (--caller-stats-limit per virtual server), so
-- the table grows with issued tokens, not with what clients send. `token` is the token id (JWT
-- jti), not a foreign key: usage outlives revoked tokens until it ages out.
-- last_seen: Unix seconds of the latest Envoy flush that reported activity in this bucket.

CREATE TABLE token_usage (
    virtual_server TEXT NOT NULL,
    token TEXT NOT NULL,
    resolution_s BIGINT NOT NULL CHECK (resolution_s IN (60, 3600)),
    bucket_start BIGINT NOT NULL,
    calls BIGINT NOT NULL DEFAULT 0,
    errors BIGINT NOT NULL DEFAULT 0,
    denied BIGINT NOT NULL DEFAULT 0,
    last_seen BIGINT,
    PRIMARY KEY (virtual_server, token, resolution_s, bucket_start)
);
CREATE INDEX token_usage_bucket ON token_usage (bucket_start);
CREATE INDEX token_usage_token ON token_usage (token);
