-- Tool usage roll-ups (SQLite). Keep in step with migrations/postgres.
--
-- Filled from the Envoys' metrics-service flushes (counters as deltas, histograms per interval),
-- one row per (virtual server, MCP server, tool, minute); rows older than
-- TOOLMESH_USAGE_MINUTE_RETENTION are compacted into hour rows (resolution_s = 3600), and rows
-- older than TOOLMESH_USAGE_RETENTION are deleted. Names are the stat name segments the filter
-- emits (the tool is the exposed name with characters outside [A-Za-z0-9_-] replaced by '_'),
-- not foreign keys: usage outlives catalog changes and is kept for removed tools until it ages out.
-- Times are Unix seconds (UTC); bucket_start is a multiple of resolution_s.

CREATE TABLE tool_usage (
    virtual_server TEXT NOT NULL,
    mcp_server TEXT NOT NULL,
    tool TEXT NOT NULL,
    resolution_s BIGINT NOT NULL CHECK (resolution_s IN (60, 3600)),
    bucket_start BIGINT NOT NULL,
    calls BIGINT NOT NULL DEFAULT 0,
    errors BIGINT NOT NULL DEFAULT 0,
    denied BIGINT NOT NULL DEFAULT 0,
    -- Latency samples (ms): count, sum, and counts per bucket. lat_bNN counts samples in
    -- (bound[NN-1], bound[NN]] with Envoy's default bounds 0.5, 1, 5, 10, 25, 50, 100, 250, 500,
    -- 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000; lat_b19 is above.
    latency_count BIGINT NOT NULL DEFAULT 0,
    latency_sum_ms REAL NOT NULL DEFAULT 0,
    lat_b00 BIGINT NOT NULL DEFAULT 0,
    lat_b01 BIGINT NOT NULL DEFAULT 0,
    lat_b02 BIGINT NOT NULL DEFAULT 0,
    lat_b03 BIGINT NOT NULL DEFAULT 0,
    lat_b04 BIGINT NOT NULL DEFAULT 0,
    lat_b05 BIGINT NOT NULL DEFAULT 0,
    lat_b06 BIGINT NOT NULL DEFAULT 0,
    lat_b07 BIGINT NOT NULL DEFAULT 0,
    lat_b08 BIGINT NOT NULL DEFAULT 0,
    lat_b09 BIGINT NOT NULL DEFAULT 0,
    lat_b10 BIGINT NOT NULL DEFAULT 0,
    lat_b11 BIGINT NOT NULL DEFAULT 0,
    lat_b12 BIGINT NOT NULL DEFAULT 0,
    lat_b13 BIGINT NOT NULL DEFAULT 0,
    lat_b14 BIGINT NOT NULL DEFAULT 0,
    lat_b15 BIGINT NOT NULL DEFAULT 0,
    lat_b16 BIGINT NOT NULL DEFAULT 0,
    lat_b17 BIGINT NOT NULL DEFAULT 0,
    lat_b18 BIGINT NOT NULL DEFAULT 0,
    lat_b19 BIGINT NOT NULL DEFAULT 0,
    -- Latest Envoy `last_call_ts` gauge (Unix seconds) seen with activity in this bucket.
    last_call_ts BIGINT,
    PRIMARY KEY (virtual_server, mcp_server, tool, resolution_s, bucket_start)
);
CREATE INDEX tool_usage_bucket ON tool_usage (bucket_start);

-- Per virtual server: requests by method (kind 'rq') and refusals by reason (kind 'denied').
CREATE TABLE vs_usage (
    virtual_server TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('rq', 'denied')),
    name TEXT NOT NULL,
    resolution_s BIGINT NOT NULL CHECK (resolution_s IN (60, 3600)),
    bucket_start BIGINT NOT NULL,
    count BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (virtual_server, kind, name, resolution_s, bucket_start)
);
CREATE INDEX vs_usage_bucket ON vs_usage (bucket_start);
