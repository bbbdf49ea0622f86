//! Tool usage across the fleet: which tools are called, how often, how fast, and which are dead.
//!
//! Every Envoy pushes its stats to the control plane's metrics service (same gRPC port as ADS,
//! see `toolmesh_xds::server`) every few seconds. Push, not scraping each Envoy's admin port:
//! it works across hosts and NAT without exposing the admin interface (which can stop Envoy),
//! needs no list of Envoys to scrape, and — with counters sent as deltas — makes exact sums
//! across Envoys and restarts a plain addition, where scraped cumulative counters would need
//! per-Envoy state and restart detection to avoid double counting.
//!
//! The pipeline: [`toolmesh_xds::server::MetricsReport`] (one Envoy flush, reduced to
//! toolmesh's stats) → [`ingest::batch_from_report`] (pure: the increments per tool, per
//! virtual server and per caller token for the minute it arrived) → [`UsageStore::ingest`] (one additive upsert per
//! row, one transaction per flush) → minute rows → hour rows after
//! `TOOLMESH_USAGE_MINUTE_RETENTION` → deleted after `TOOLMESH_USAGE_RETENTION`
//! ([`spawn_maintenance`]). Queries sum rows and compute percentiles from the summed latency
//! buckets ([`report`]).
//!
//! Exactness: each message is applied once, in one transaction, and Envoy never resends one, so
//! nothing is counted twice. A flush that cannot be delivered (no control plane reachable at
//! that moment) or stored (database down) is lost and logged; an Envoy that is killed loses at
//! most what it counted since its last flush (`stats_flush_interval`, 5 s in the shipped
//! bootstrap).
//!
//! Per token: the filter counts `toolmesh.caller.<vs>.<token id>.*` only for the callers the
//! policy lists ([`crate::tokens::callers`], bounded per virtual server), and those counters and
//! the `latency_ms` histogram (kept and summed like a tool's) go through the same pipeline into
//! `token_usage`; a call is in the tool rows and, when its token is listed, also in its token's
//! row.

pub mod ingest;
pub mod report;
pub mod rollup;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::mpsc;
use toolmesh_xds::server::MetricsReport;

pub use store::{TokenTotals, UsageStore, WindowFilter};

/// Why a usage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// The database failed.
    #[error("usage database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The catalog could not be read.
    #[error(transparent)]
    Catalog(#[from] crate::store::StoreError),
}

/// How long usage is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageSettings {
    /// Minute rows older than this are compacted into hour rows.
    pub minute_retention: chrono::Duration,
    /// Rows older than this are deleted.
    pub retention: chrono::Duration,
    /// How often compaction and retention run.
    pub maintenance_interval: Duration,
}

impl Default for UsageSettings {
    fn default() -> Self {
        Self {
            minute_retention: chrono::Duration::hours(48),
            retention: chrono::Duration::days(30),
            maintenance_interval: Duration::from_secs(600),
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct UsageMetrics {
    /// Flushes received from Envoys.
    pub reports: AtomicU64,
    /// Flushes that added rows.
    pub batches_stored: AtomicU64,
    /// Flushes that could not be stored (lost).
    pub store_errors: AtomicU64,
    /// Tool calls counted.
    pub calls: AtomicU64,
    /// Size of the last flush message in bytes (all of Envoy's stats).
    pub last_message_bytes: AtomicU64,
    /// Stat families in the last flush message (all of Envoy's stats).
    pub last_message_families: AtomicU64,
    /// Microseconds the last store took.
    pub last_store_micros: AtomicU64,
    /// Minute rows compacted into hours.
    pub compacted_rows: AtomicU64,
    /// Rows deleted by retention.
    pub deleted_rows: AtomicU64,
}

/// The usage feature as the API sees it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Usage {
    /// The usage tables.
    pub store: UsageStore,
    /// Retention.
    pub settings: UsageSettings,
    /// Counters.
    pub metrics: Arc<UsageMetrics>,
}

impl Usage {
    /// Over a store.
    pub fn new(store: UsageStore, settings: UsageSettings) -> Self {
        Self {
            store,
            settings,
            metrics: Arc::default(),
        }
    }

    /// Book one flush (used by the ingestion task; public for tests and embedders).
    pub async fn ingest(&self, report: &MetricsReport) -> Result<ingest::UsageBatch, UsageError> {
        let m = &self.metrics;
        m.reports.fetch_add(1, Ordering::Relaxed);
        m.last_message_bytes
            .store(report.message_bytes as u64, Ordering::Relaxed);
        m.last_message_families
            .store(report.families_total as u64, Ordering::Relaxed);
        let batch = ingest::batch_from_report(report);
        if batch.is_empty() {
            return Ok(batch);
        }
        let started = Instant::now();
        self.store.ingest(&batch).await?;
        m.last_store_micros.store(
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        m.batches_stored.fetch_add(1, Ordering::Relaxed);
        m.calls.fetch_add(batch.calls(), Ordering::Relaxed);
        Ok(batch)
    }

    /// Compact and apply retention once, as of now.
    pub async fn maintain(&self) -> Result<store::MaintenanceStats, UsageError> {
        let now = Utc::now().timestamp();
        let compacted = self
            .store
            .compact(rollup::compaction_cutoff(
                now,
                self.settings.minute_retention,
            ))
            .await?;
        let deleted = self
            .store
            .delete_before(rollup::retention_cutoff(now, self.settings.retention))
            .await?;
        self.metrics
            .compacted_rows
            .fetch_add(compacted, Ordering::Relaxed);
        self.metrics
            .deleted_rows
            .fetch_add(deleted, Ordering::Relaxed);
        Ok(store::MaintenanceStats {
            compacted_rows: compacted,
            deleted_rows: deleted,
        })
    }

    /// The counters in Prometheus text format.
    pub fn prometheus_text(&self) -> String {
        let m = &self.metrics;
        let rows: [(&str, &str, &str, &AtomicU64); 9] = [
            (
                "toolmesh_usage_reports_total",
                "counter",
                "Stats flushes received from Envoys (metrics service)",
                &m.reports,
            ),
            (
                "toolmesh_usage_batches_stored_total",
                "counter",
                "Flushes that added usage rows",
                &m.batches_stored,
            ),
            (
                "toolmesh_usage_store_errors_total",
                "counter",
                "Flushes that could not be stored (their counts are lost)",
                &m.store_errors,
            ),
            (
                "toolmesh_usage_calls_total",
                "counter",
                "Tool calls counted from Envoy flushes",
                &m.calls,
            ),
            (
                "toolmesh_usage_last_message_bytes",
                "gauge",
                "Size of the last flush message (all of Envoy's stats)",
                &m.last_message_bytes,
            ),
            (
                "toolmesh_usage_last_message_families",
                "gauge",
                "Stat families in the last flush message",
                &m.last_message_families,
            ),
            (
                "toolmesh_usage_last_store_microseconds",
                "gauge",
                "Time to store the last flush",
                &m.last_store_micros,
            ),
            (
                "toolmesh_usage_compacted_rows_total",
                "counter",
                "Minute rows compacted into hour rows",
                &m.compacted_rows,
            ),
            (
                "toolmesh_usage_deleted_rows_total",
                "counter",
                "Usage rows deleted by retention",
                &m.deleted_rows,
            ),
        ];
        let mut out = String::new();
        for (name, kind, help, v) in rows {
            crate::gateway::write_metric(&mut out, name, kind, help, v.load(Ordering::Relaxed));
        }
        out
    }
}

/// Store every report from `reports` until the channel closes. A report that cannot be stored
/// is logged and dropped (retrying could apply it twice if the commit actually happened).
pub fn spawn_ingestor(
    usage: Usage,
    mut reports: mpsc::Receiver<MetricsReport>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(report) = reports.recv().await {
            match usage.ingest(&report).await {
                Ok(batch) if !batch.is_empty() => tracing::debug!(
                    node = %report.node_id,
                    calls = batch.calls(),
                    tools = batch.tools.len(),
                    bytes = report.message_bytes,
                    "usage stored"
                ),
                Ok(_) => {}
                Err(e) => {
                    usage.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(node = %report.node_id, error = %e, "could not store an Envoy stats flush; its usage counts are lost");
                }
            }
        }
    })
}

/// Compact and apply retention now and then every `maintenance_interval`, until aborted.
pub fn spawn_maintenance(usage: Usage) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(
            usage
                .settings
                .maintenance_interval
                .max(Duration::from_secs(1)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match usage.maintain().await {
                Ok(s) if s.compacted_rows + s.deleted_rows > 0 => tracing::info!(
                    compacted_minute_rows = s.compacted_rows,
                    deleted_rows = s.deleted_rows,
                    "usage roll-up maintenance"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "usage roll-up maintenance failed; retrying later")
                }
            }
        }
    })
}
