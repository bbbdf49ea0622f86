//! The usage tables (`migrations/*/20261125000003_usage.sql`, `…/20261126000004_token_usage.sql`,
//! `…/20261127000005_token_latency.sql`), on Postgres or SQLite.
//!
//! `tool_usage` and `token_usage` keep latency the same way (the columns of
//! [`latency_cols`]: sample count, sum and one count per bucket), written, compacted and summed
//! by the same SQL fragments and read back by the same row reader.
//!
//! The usage store has its own small pool on the catalog's database: ingestion writes every few
//! seconds per Envoy and must not queue behind (or hold up) catalog transactions, and it needs
//! nothing from the catalog store but its migrations (run by [`crate::store::Store::connect`]).
//!
//! Every write is additive (`INSERT … ON CONFLICT DO UPDATE SET n = n + excluded.n`), so writes
//! from several control-plane replicas to the same row never lose an increment. Compaction moves
//! minute rows into hour rows and deletes them in one transaction, serialized between replicas
//! (an advisory lock on Postgres, the write lock on SQLite), so a row is never moved twice.
//! As in the catalog store, one macro stamps out the SQL per backend.

use std::str::FromStr as _;
use std::time::Duration;

use sqlx::Row as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use super::UsageError;
use super::ingest::{CallerKey, ToolKey, UsageBatch};
use super::rollup::{HOUR, LATENCY_BUCKETS, Latency, MINUTE};

/// Sums over a window for one tool of one virtual server.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolTotals {
    /// Which tool.
    pub key: ToolKey,
    /// Calls forwarded upstream.
    pub calls: u64,
    /// Failed calls.
    pub errors: u64,
    /// Refused calls naming the tool.
    pub denied: u64,
    /// Latency samples.
    pub latency: Latency,
    /// Latest `last_call_ts` (Unix seconds).
    pub last_call_ts: Option<i64>,
    /// End of the latest bucket with calls (a fallback for `last_call_ts`).
    pub last_active_end: Option<i64>,
}

/// One per-virtual-server counter summed over a window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsCounter {
    /// Virtual server.
    pub virtual_server: String,
    /// `rq` or `denied`.
    pub kind: String,
    /// Method or reason.
    pub name: String,
    /// Sum.
    pub count: u64,
}

/// Sums over a window for one token on one virtual server.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TokenTotals {
    /// Which token on which virtual server.
    pub key: CallerKey,
    /// Forwarded `tools/call`s.
    pub calls: u64,
    /// Failed calls.
    pub errors: u64,
    /// Refused requests.
    pub denied: u64,
    /// Latency samples of the token's completed calls.
    pub latency: Latency,
    /// Latest Envoy flush that reported activity (Unix seconds).
    pub last_seen: Option<i64>,
}

/// What one compaction or retention pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MaintenanceStats {
    /// Minute rows folded into hour rows.
    pub compacted_rows: u64,
    /// Rows deleted for age.
    pub deleted_rows: u64,
}

/// Which rows a query sums.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WindowFilter {
    /// Rows that end after this (Unix seconds).
    pub since: i64,
    /// Rows that start before this (Unix seconds).
    pub until: i64,
    /// Only this virtual server.
    pub virtual_server: Option<String>,
    /// Only this MCP server.
    pub mcp_server: Option<String>,
    /// Only this token id (per-token sums).
    pub token: Option<String>,
}

/// The usage tables, each compacted and expired the same way.
const TABLES: [&str; 3] = ["tool_usage", "vs_usage", "token_usage"];

fn bucket_cols() -> Vec<String> {
    (0..LATENCY_BUCKETS)
        .map(|i| format!("lat_b{i:02}"))
        .collect()
}

/// The latency columns shared by `tool_usage` and `token_usage`, in bind order:
/// `latency_count, latency_sum_ms, lat_b00, …`.
fn latency_cols() -> Vec<String> {
    let mut cols = vec!["latency_count".to_string(), "latency_sum_ms".to_string()];
    cols.extend(bucket_cols());
    cols
}

/// `$first, …` placeholders for `n` parameters.
fn params(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Additive `ON CONFLICT` assignments of `cols` in `table`.
fn additive_sets<S: AsRef<str>>(table: &str, cols: &[S]) -> Vec<String> {
    cols.iter()
        .map(|c| {
            let c = c.as_ref();
            format!("{c} = {table}.{c} + excluded.{c}")
        })
        .collect()
}

/// `SUM(col)` of each latency column (compaction into hours).
fn latency_sums() -> String {
    latency_cols()
        .iter()
        .map(|c| format!("SUM({c})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The latency columns summed over a window, each under its own name (read back by the
/// backend's `read_latency`).
fn latency_totals() -> String {
    latency_cols()
        .iter()
        .map(|c| {
            let ty = if c == "latency_sum_ms" {
                "DOUBLE PRECISION"
            } else {
                "BIGINT"
            };
            format!("CAST(SUM({c}) AS {ty}) AS {c}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Counts as stored (BIGINT is signed).
fn db_count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_db(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// A roll-up table of per-call numbers (`tool_usage`, `token_usage`): its key columns, then
/// `resolution_s, bucket_start`, the counters `calls, errors, denied`, the latency columns and
/// one "last seen" column kept as a maximum. One description, so both tables are upserted and
/// compacted by the same SQL.
struct CallTable {
    name: &'static str,
    keys: &'static [&'static str],
    last: &'static str,
}

const TOOL_USAGE: CallTable = CallTable {
    name: "tool_usage",
    keys: &["virtual_server", "mcp_server", "tool"],
    last: "last_call_ts",
};

const TOKEN_USAGE: CallTable = CallTable {
    name: "token_usage",
    keys: &["virtual_server", "token"],
    last: "last_seen",
};

impl CallTable {
    /// Every column, in bind order.
    fn columns(&self) -> String {
        format!(
            "{}, resolution_s, bucket_start, calls, errors, denied, {}, {}",
            self.keys.join(", "),
            latency_cols().join(", "),
            self.last
        )
    }

    /// Counters and latency add up; the last-seen column keeps the later value.
    fn conflict_clause(&self) -> String {
        let (t, last) = (self.name, self.last);
        let mut sets = additive_sets(t, &["calls", "errors", "denied"]);
        sets.extend(additive_sets(t, &latency_cols()));
        sets.push(format!(
            "{last} = CASE WHEN {t}.{last} IS NULL OR excluded.{last} > {t}.{last} \
             THEN excluded.{last} ELSE {t}.{last} END"
        ));
        format!(
            "ON CONFLICT ({}, resolution_s, bucket_start) DO UPDATE SET {}",
            self.keys.join(", "),
            sets.join(", ")
        )
    }

    /// Add one minute's numbers to a row.
    fn upsert_sql(&self) -> String {
        let n_params = self.keys.len() + 5 + latency_cols().len() + 1;
        format!(
            "INSERT INTO {} ({}) VALUES ({}) {}",
            self.name,
            self.columns(),
            params(1, n_params),
            self.conflict_clause()
        )
    }

    /// Fold the minute rows older than `$1` into hour rows.
    fn compact_sql(&self) -> String {
        let keys = self.keys.join(", ");
        format!(
            "INSERT INTO {t} ({cols}) \
             SELECT {keys}, {HOUR}, bucket_start - (bucket_start % {HOUR}), SUM(calls), \
             SUM(errors), SUM(denied), {sums}, MAX({last}) \
             FROM {t} WHERE resolution_s = {MINUTE} AND bucket_start < $1 \
             GROUP BY {keys}, bucket_start - (bucket_start % {HOUR}) {conflict}",
            t = self.name,
            cols = self.columns(),
            sums = latency_sums(),
            last = self.last,
            conflict = self.conflict_clause()
        )
    }
}

const VS_UPSERT: &str = "INSERT INTO vs_usage (virtual_server, kind, name, resolution_s, bucket_start, count) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (virtual_server, kind, name, resolution_s, bucket_start) \
     DO UPDATE SET count = vs_usage.count + excluded.count";

fn token_totals_sql() -> String {
    format!(
        "SELECT virtual_server, token, CAST(SUM(calls) AS BIGINT) AS calls, \
         CAST(SUM(errors) AS BIGINT) AS errors, CAST(SUM(denied) AS BIGINT) AS denied, \
         {lat}, MAX(last_seen) AS last_seen \
         FROM token_usage WHERE bucket_start + resolution_s > $1 AND bucket_start < $2 \
         AND ($3 IS NULL OR virtual_server = $3) AND ($4 IS NULL OR token = $4) \
         GROUP BY virtual_server, token",
        lat = latency_totals()
    )
}

fn vs_compact_sql() -> String {
    format!(
        "INSERT INTO vs_usage (virtual_server, kind, name, resolution_s, bucket_start, count) \
         SELECT virtual_server, kind, name, {HOUR}, bucket_start - (bucket_start % {HOUR}), SUM(count) \
         FROM vs_usage WHERE resolution_s = {MINUTE} AND bucket_start < $1 \
         GROUP BY virtual_server, kind, name, bucket_start - (bucket_start % {HOUR}) \
         ON CONFLICT (virtual_server, kind, name, resolution_s, bucket_start) \
         DO UPDATE SET count = vs_usage.count + excluded.count"
    )
}

fn tool_totals_sql() -> String {
    format!(
        "SELECT virtual_server, mcp_server, tool, \
         CAST(SUM(calls) AS BIGINT) AS calls, CAST(SUM(errors) AS BIGINT) AS errors, \
         CAST(SUM(denied) AS BIGINT) AS denied, {lat}, \
         MAX(last_call_ts) AS last_call_ts, \
         MAX(CASE WHEN calls > 0 THEN bucket_start + resolution_s END) AS last_active_end \
         FROM tool_usage \
         WHERE bucket_start + resolution_s > $1 AND bucket_start < $2 \
         AND ($3 IS NULL OR virtual_server = $3) AND ($4 IS NULL OR mcp_server = $4) \
         GROUP BY virtual_server, mcp_server, tool",
        lat = latency_totals()
    )
}

const VS_TOTALS: &str = "SELECT virtual_server, kind, name, CAST(SUM(count) AS BIGINT) AS count \
     FROM vs_usage WHERE bucket_start + resolution_s > $1 AND bucket_start < $2 \
     AND ($3 IS NULL OR virtual_server = $3) \
     GROUP BY virtual_server, kind, name";

macro_rules! usage_sql {
    ($name:ident, $Pool:ty, $Row:ty, begin_write = $begin:literal, lock = $lock:literal) => {
        mod $name {
            use super::*;

            type Query<'q> = sqlx::query::Query<
                'q,
                <$Row as sqlx::Row>::Database,
                <<$Row as sqlx::Row>::Database as sqlx::Database>::Arguments<'q>,
            >;

            /// Bind the values of [`latency_cols`], in order.
            fn bind_latency<'q>(mut q: Query<'q>, latency: &Latency) -> Query<'q> {
                q = q.bind(db_count(latency.count)).bind(latency.sum_ms);
                for n in latency.buckets {
                    q = q.bind(db_count(n));
                }
                q
            }

            /// Read the summed columns of [`latency_totals`].
            fn read_latency(row: &$Row) -> Result<Latency, UsageError> {
                let mut latency = Latency {
                    count: from_db(row.try_get("latency_count")?),
                    sum_ms: row
                        .try_get::<Option<f64>, _>("latency_sum_ms")?
                        .unwrap_or(0.0),
                    ..Default::default()
                };
                for (i, col) in bucket_cols().iter().enumerate() {
                    latency.buckets[i] = from_db(row.try_get(col.as_str())?);
                }
                Ok(latency)
            }

            pub(super) async fn ingest(pool: &$Pool, batch: &UsageBatch) -> Result<(), UsageError> {
                let mut tx = pool.begin_with($begin).await?;
                let upsert = TOOL_USAGE.upsert_sql();
                for (k, d) in &batch.tools {
                    let q = sqlx::query(&upsert)
                        .bind(&k.virtual_server)
                        .bind(&k.mcp_server)
                        .bind(&k.tool)
                        .bind(MINUTE)
                        .bind(batch.minute)
                        .bind(db_count(d.calls))
                        .bind(db_count(d.errors))
                        .bind(db_count(d.denied));
                    bind_latency(q, &d.latency)
                        .bind(d.last_call_ts)
                        .execute(&mut *tx)
                        .await?;
                }
                for (k, n) in &batch.vs {
                    sqlx::query(VS_UPSERT)
                        .bind(&k.virtual_server)
                        .bind(k.kind.as_str())
                        .bind(&k.name)
                        .bind(MINUTE)
                        .bind(batch.minute)
                        .bind(db_count(*n))
                        .execute(&mut *tx)
                        .await?;
                }
                let token_upsert = TOKEN_USAGE.upsert_sql();
                for (k, d) in &batch.callers {
                    let q = sqlx::query(&token_upsert)
                        .bind(&k.virtual_server)
                        .bind(&k.token)
                        .bind(MINUTE)
                        .bind(batch.minute)
                        .bind(db_count(d.calls))
                        .bind(db_count(d.errors))
                        .bind(db_count(d.denied));
                    bind_latency(q, &d.latency)
                        .bind(batch.received_at)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(())
            }

            pub(super) async fn token_totals(
                pool: &$Pool,
                w: &WindowFilter,
            ) -> Result<Vec<TokenTotals>, UsageError> {
                let rows: Vec<$Row> = sqlx::query(&token_totals_sql())
                    .bind(w.since)
                    .bind(w.until)
                    .bind(w.virtual_server.as_deref())
                    .bind(w.token.as_deref())
                    .fetch_all(pool)
                    .await?;
                rows.iter()
                    .map(|row| {
                        Ok(TokenTotals {
                            key: CallerKey {
                                virtual_server: row.try_get("virtual_server")?,
                                token: row.try_get("token")?,
                            },
                            calls: from_db(row.try_get("calls")?),
                            errors: from_db(row.try_get("errors")?),
                            denied: from_db(row.try_get("denied")?),
                            latency: read_latency(row)?,
                            last_seen: row.try_get("last_seen")?,
                        })
                    })
                    .collect()
            }

            pub(super) async fn tool_totals(
                pool: &$Pool,
                w: &WindowFilter,
            ) -> Result<Vec<ToolTotals>, UsageError> {
                let rows: Vec<$Row> = sqlx::query(&tool_totals_sql())
                    .bind(w.since)
                    .bind(w.until)
                    .bind(w.virtual_server.as_deref())
                    .bind(w.mcp_server.as_deref())
                    .fetch_all(pool)
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    out.push(ToolTotals {
                        key: ToolKey {
                            virtual_server: row.try_get("virtual_server")?,
                            mcp_server: row.try_get("mcp_server")?,
                            tool: row.try_get("tool")?,
                        },
                        calls: from_db(row.try_get("calls")?),
                        errors: from_db(row.try_get("errors")?),
                        denied: from_db(row.try_get("denied")?),
                        latency: read_latency(row)?,
                        last_call_ts: row.try_get("last_call_ts")?,
                        last_active_end: row.try_get("last_active_end")?,
                    });
                }
                Ok(out)
            }

            pub(super) async fn vs_totals(
                pool: &$Pool,
                w: &WindowFilter,
            ) -> Result<Vec<VsCounter>, UsageError> {
                let rows: Vec<$Row> = sqlx::query(VS_TOTALS)
                    .bind(w.since)
                    .bind(w.until)
                    .bind(w.virtual_server.as_deref())
                    .fetch_all(pool)
                    .await?;
                rows.iter()
                    .map(|row| {
                        Ok(VsCounter {
                            virtual_server: row.try_get("virtual_server")?,
                            kind: row.try_get("kind")?,
                            name: row.try_get("name")?,
                            count: from_db(row.try_get("count")?),
                        })
                    })
                    .collect()
            }

            pub(super) async fn compact(pool: &$Pool, cutoff: i64) -> Result<u64, UsageError> {
                let mut tx = pool.begin_with($begin).await?;
                if !$lock.is_empty() {
                    sqlx::query($lock).execute(&mut *tx).await?;
                }
                sqlx::query(&TOOL_USAGE.compact_sql())
                    .bind(cutoff)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&vs_compact_sql())
                    .bind(cutoff)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(&TOKEN_USAGE.compact_sql())
                    .bind(cutoff)
                    .execute(&mut *tx)
                    .await?;
                let mut moved = 0;
                for table in TABLES {
                    moved += sqlx::query(&format!(
                        "DELETE FROM {table} WHERE resolution_s = {MINUTE} AND bucket_start < $1"
                    ))
                    .bind(cutoff)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                }
                tx.commit().await?;
                Ok(moved)
            }

            pub(super) async fn delete_before(
                pool: &$Pool,
                cutoff: i64,
            ) -> Result<u64, UsageError> {
                let mut deleted = 0;
                for table in TABLES {
                    deleted += sqlx::query(&format!("DELETE FROM {table} WHERE bucket_start < $1"))
                        .bind(cutoff)
                        .execute(pool)
                        .await?
                        .rows_affected();
                }
                Ok(deleted)
            }

            pub(super) async fn row_count(pool: &$Pool) -> Result<(u64, u64), UsageError> {
                let minutes: i64 = sqlx::query_scalar(&format!(
                    "SELECT COUNT(*) FROM tool_usage WHERE resolution_s = {MINUTE}"
                ))
                .fetch_one(pool)
                .await?;
                let hours: i64 = sqlx::query_scalar(&format!(
                    "SELECT COUNT(*) FROM tool_usage WHERE resolution_s = {HOUR}"
                ))
                .fetch_one(pool)
                .await?;
                Ok((from_db(minutes), from_db(hours)))
            }
        }
    };
}

usage_sql!(
    pg,
    PgPool,
    sqlx::postgres::PgRow,
    begin_write = "BEGIN",
    lock = "SELECT pg_advisory_xact_lock(7370660003)"
);
usage_sql!(
    lite,
    SqlitePool,
    sqlx::sqlite::SqliteRow,
    begin_write = "BEGIN IMMEDIATE",
    lock = ""
);

#[derive(Debug, Clone)]
enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// The usage tables. Cheap to clone.
#[derive(Debug, Clone)]
pub struct UsageStore {
    pool: Pool,
}

macro_rules! dispatch {
    ($self:ident, $f:ident ( $($arg:expr),* )) => {
        match &$self.pool {
            Pool::Postgres(p) => pg::$f(p, $($arg),*).await,
            Pool::Sqlite(p) => lite::$f(p, $($arg),*).await,
        }
    };
}

impl UsageStore {
    /// Open a pool on the catalog database at `url` (the catalog store must have run the
    /// migrations already).
    pub async fn connect(url: &str) -> Result<Self, UsageError> {
        let pool = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(PgConnectOptions::from_str(url)?)
                    .await?,
            )
        } else {
            let opts = SqliteConnectOptions::from_str(url)?
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(Duration::from_secs(10));
            Pool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(opts)
                    .await?,
            )
        };
        Ok(Self { pool })
    }

    /// Add one flush's increments (one transaction; nothing is written for an empty batch).
    pub async fn ingest(&self, batch: &UsageBatch) -> Result<(), UsageError> {
        if batch.is_empty() {
            return Ok(());
        }
        dispatch!(self, ingest(batch))
    }

    /// Per tool sums over a window (only tools with rows in it).
    pub async fn tool_totals(&self, w: &WindowFilter) -> Result<Vec<ToolTotals>, UsageError> {
        dispatch!(self, tool_totals(w))
    }

    /// Per virtual server request and refusal counters over a window.
    pub async fn vs_totals(&self, w: &WindowFilter) -> Result<Vec<VsCounter>, UsageError> {
        dispatch!(self, vs_totals(w))
    }

    /// Per token and virtual server sums over a window (only tokens with rows in it).
    pub async fn token_totals(&self, w: &WindowFilter) -> Result<Vec<TokenTotals>, UsageError> {
        dispatch!(self, token_totals(w))
    }

    /// Fold minute rows that start before `cutoff` into hour rows; returns how many minute rows
    /// were folded.
    pub async fn compact(&self, cutoff: i64) -> Result<u64, UsageError> {
        dispatch!(self, compact(cutoff))
    }

    /// Delete rows that start before `cutoff`; returns how many.
    pub async fn delete_before(&self, cutoff: i64) -> Result<u64, UsageError> {
        dispatch!(self, delete_before(cutoff))
    }

    /// Tool rows at minute and at hour resolution.
    pub async fn row_count(&self) -> Result<(u64, u64), UsageError> {
        dispatch!(self, row_count())
    }

    /// Close the pool.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Postgres(p) => p.close().await,
            Pool::Sqlite(p) => p.close().await,
        }
    }
}
