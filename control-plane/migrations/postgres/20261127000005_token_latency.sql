-- Per-token latency (Postgres). Keep in step with migrations/sqlite.
--
-- The filter's toolmesh.caller.<vs>.<token id>.latency_ms histogram, kept like tool_usage's
-- latency: sample count, sum (ms) and samples per bucket. lat_bNN counts samples in
-- (bound NN-1, bound NN] ms with the bounds 0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500,
-- 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000; lat_b19 is above. Rows written
-- before this migration have no samples (0).

ALTER TABLE token_usage ADD COLUMN latency_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_usage ADD COLUMN latency_sum_ms DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE token_usage ADD COLUMN lat_b00 BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_usage ADD COLUMN lat_b01 BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_usage ADD COLUMN lat_b02 BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_usage ADD COLUMN lat_b03 BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_usage ADD COLUMN lat_b04 BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_usage ADD COLUMN lat_b05 BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_usage ADD COLUMN lat_b06 BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_usage ADD COLUMN lat_b07 BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_usage ADD COLUMN lat_b08 BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_usage ADD COLUMN lat_b09 BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_usage ADD COLUMN lat_b10 BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_usage ADD COLUMN lat_b11 BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_usage ADD COLUMN lat_b12 BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_usage ADD COLUMN lat_b13 BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_usage ADD COLUMN lat_b14 BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_usage ADD COLUMN lat_b15 BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_usage ADD COLUMN lat_b16 BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_usage ADD COLUMN lat_b17 BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_usage ADD COLUMN lat_b18 BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_usage ADD COLUMN lat_b19 BIGINT NOT NULL DEFAULT 0;
