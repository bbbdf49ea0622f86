//! The ADS server: one tonic service, state of the world, every Envoy gets the same snapshot.
//!
//! [`XdsServer::new`] returns the server and an [`XdsHandle`]. The control plane publishes models
//! through the handle; each connected stream runs one task that owns a
//! [`StreamTracker`], reads Envoy's requests and watches the
//! current snapshot. A new snapshot pushes only the types whose version changed, in the order
//! CDS → ECDS → LDS → RDS. The handle also reports every connected Envoy (what it accepted, what
//! it last rejected and why) and counters for Prometheus.
//!
//! Delta xDS is not offered: one small snapshot per gateway makes state of the world cheap, and
//! Envoy only uses delta when the bootstrap asks for it (`api_type: DELTA_GRPC`). A delta stream
//! is refused with `UNIMPLEMENTED` and a message saying so.
//!
//! The same gRPC port can also serve Envoy's metrics service
//! (`envoy.service.metrics.v3.MetricsService`, the `envoy.stat_sinks.metrics_service` sink), so an
//! Envoy needs one cluster for both config and stats. [`XdsServer::with_metrics_sink`] turns it
//! on: each flush becomes one [`MetricsReport`] on the given channel, reduced to toolmesh's own
//! stats (Envoy sends every stat on every flush; the rest is dropped on receipt) plus Envoy's
//! `server.uptime`, and tagged with the node that opened the stream (Envoy names itself only in
//! the first message). What the numbers mean is the receiver's business.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::metrics::v3::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use envoy_types::pb::envoy::service::metrics::v3::{StreamMetricsMessage, StreamMetricsResponse};
use envoy_types::pb::io::prometheus::client::MetricFamily;
use prost::Message as _;

/// The Prometheus data model Envoy's metrics service uses ([`MetricsReport::families`]),
/// re-exported so receivers need no `envoy-types` dependency of their own.
pub use envoy_types::pb::io::prometheus::client as prometheus;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::model::{GatewayModel, GatewaySettings};
use crate::resources::{BuildError, ResourceType, Snapshot, build_snapshot};
use crate::tracker::{Event, Nack, StreamTracker};

/// Largest request Envoy may send (a NACK carries a dump of the rejected resource).
const MAX_REQUEST_BYTES: usize = 64 * 1024 * 1024;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The gRPC transport failed.
    #[error("xDS transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// One connected Envoy, as `GET /v1/envoys` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EnvoyStatus {
    /// This server's id for the ADS stream (unique per process).
    pub stream_id: u64,
    /// `node.id` from the bootstrap (empty until the first request arrives).
    pub node_id: String,
    /// `node.cluster` from the bootstrap.
    pub cluster: String,
    /// When the stream opened.
    pub connected_since: DateTime<Utc>,
    /// The version Envoy acknowledged, per type.
    pub acked_versions: BTreeMap<ResourceType, String>,
    /// Whether every type of the current snapshot is acknowledged.
    pub in_sync: bool,
    /// The most recent rejection on this stream, with Envoy's reason.
    pub last_nack: Option<Nack>,
}

/// Counters for the control plane's Prometheus endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct XdsMetrics {
    /// Responses sent to Envoys (all types).
    pub pushes: u64,
    /// ACKs received.
    pub acks: u64,
    /// NACKs received.
    pub nacks: u64,
    /// ADS streams open now.
    pub connected_streams: u64,
    /// Snapshots built by [`XdsHandle::publish`] (successful or not).
    pub snapshot_builds: u64,
    /// Builds that failed (the previous snapshot stayed).
    pub snapshot_build_errors: u64,
    /// How long the last build took.
    pub last_snapshot_build: Option<Duration>,
    /// Metrics-service streams open now.
    pub metrics_streams: u64,
    /// Metrics-service messages received (one per Envoy flush).
    pub metrics_messages: u64,
    /// Their total encoded size in bytes (before dropping the stats toolmesh does not use).
    pub metrics_bytes: u64,
    /// Reports dropped because the receiver was gone.
    pub metrics_dropped: u64,
}

/// Stat families a [`MetricsReport`] keeps: the filter's stats (`wasmcustom.` is Envoy's prefix
/// for stats defined by a wasm plugin; plain `toolmesh.` covers a sink that strips it).
pub const METRICS_PREFIXES: [&str; 2] = ["wasmcustom.toolmesh.", "toolmesh."];

/// Envoy's own uptime gauge, kept so a receiver can tell a restarted Envoy from a reconnect.
pub const UPTIME_STAT: &str = "server.uptime";

/// One flush of one Envoy's stats, as received on the metrics service.
#[derive(Debug, Clone)]
pub struct MetricsReport {
    /// This server's id for the metrics stream (unique per process; a new stream per Envoy
    /// process or reconnect).
    pub stream_id: u64,
    /// `node.id` of the Envoy (from the stream's first message; empty if it never said).
    pub node_id: String,
    /// `node.cluster` of the Envoy.
    pub node_cluster: String,
    /// When this message arrived.
    pub received_at: DateTime<Utc>,
    /// Envoy's `server.uptime` gauge in seconds, when the message carried it.
    pub uptime_s: Option<f64>,
    /// The families whose name starts with one of [`METRICS_PREFIXES`], as Envoy sent them.
    pub families: Vec<MetricFamily>,
    /// Encoded size of the whole message in bytes.
    pub message_bytes: usize,
    /// How many families the whole message had.
    pub families_total: usize,
}

/// Reduce one metrics-service message to what toolmesh keeps.
pub fn reduce_metrics_message(
    msg: StreamMetricsMessage,
    stream_id: u64,
    node_id: &str,
    node_cluster: &str,
    received_at: DateTime<Utc>,
) -> MetricsReport {
    let message_bytes = msg.encoded_len();
    let families_total = msg.envoy_metrics.len();
    let mut uptime_s = None;
    let mut families = Vec::new();
    for family in msg.envoy_metrics {
        let name = family.name.as_deref().unwrap_or_default();
        if name == UPTIME_STAT {
            uptime_s = family
                .metric
                .first()
                .and_then(|m| m.gauge.as_ref())
                .and_then(|g| g.value);
        } else if METRICS_PREFIXES.iter().any(|p| name.starts_with(p)) {
            families.push(family);
        }
    }
    MetricsReport {
        stream_id,
        node_id: node_id.to_string(),
        node_cluster: node_cluster.to_string(),
        received_at,
        uptime_s,
        families,
        message_bytes,
        families_total,
    }
}

#[derive(Debug, Default)]
struct Counters {
    pushes: AtomicU64,
    acks: AtomicU64,
    nacks: AtomicU64,
    connected: AtomicU64,
    builds: AtomicU64,
    build_errors: AtomicU64,
    /// Nanoseconds + 1 (0 = never built).
    last_build_nanos: AtomicU64,
    metrics_streams: AtomicU64,
    metrics_messages: AtomicU64,
    metrics_bytes: AtomicU64,
    metrics_dropped: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    settings: GatewaySettings,
    snapshot: watch::Sender<Option<Arc<Snapshot>>>,
    shutdown: watch::Sender<bool>,
    streams: Mutex<BTreeMap<u64, EnvoyStatus>>,
    next_stream: AtomicU64,
    counters: Counters,
}

impl Shared {
    fn streams(&self) -> MutexGuard<'_, BTreeMap<u64, EnvoyStatus>> {
        // A poisoned map only means a panic elsewhere mid-update; the data is still usable.
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The ADS gRPC server. Serve it once with [`XdsServer::serve`].
#[derive(Debug)]
pub struct XdsServer {
    shared: Arc<Shared>,
    metrics_sink: Option<mpsc::Sender<MetricsReport>>,
}

/// Publishes models to, and reports on, a running [`XdsServer`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct XdsHandle {
    shared: Arc<Shared>,
}

impl XdsServer {
    /// A server with no snapshot yet (Envoys that connect wait until the first publish).
    pub fn new(settings: GatewaySettings) -> (XdsServer, XdsHandle) {
        let shared = Arc::new(Shared {
            settings,
            snapshot: watch::channel(None).0,
            shutdown: watch::channel(false).0,
            streams: Mutex::new(BTreeMap::new()),
            next_stream: AtomicU64::new(1),
            counters: Counters::default(),
        });
        (
            XdsServer {
                shared: shared.clone(),
                metrics_sink: None,
            },
            XdsHandle { shared },
        )
    }

    /// Also serve Envoy's metrics service on the same port: every message Envoy streams becomes
    /// a [`MetricsReport`] sent to `sink` (a full channel slows the stream down; Envoy does not
    /// retry, so nothing is counted twice). Without this, a metrics stream is refused with
    /// `UNIMPLEMENTED`.
    pub fn with_metrics_sink(mut self, sink: mpsc::Sender<MetricsReport>) -> Self {
        self.metrics_sink = Some(sink);
        self
    }

    /// Serve ADS (gRPC over HTTP/2) on `listener` until `shutdown` completes; then close every
    /// stream (Envoy keeps serving its last config and reconnects later) and return.
    ///
    /// # Errors
    /// [`ServeError::Transport`] if the gRPC server fails.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        let shared = self.shared.clone();
        let signal = async move {
            shutdown.await;
            // ADS streams never end on their own; tell their tasks to finish so the graceful
            // shutdown below can complete.
            shared.shutdown.send_replace(true);
        };
        let metrics = self.metrics_sink.map(|sink| {
            MetricsServiceServer::new(Metrics {
                shared: self.shared.clone(),
                sink,
            })
            .max_decoding_message_size(MAX_REQUEST_BYTES)
        });
        let service = AggregatedDiscoveryServiceServer::new(Ads {
            shared: self.shared,
        })
        .max_decoding_message_size(MAX_REQUEST_BYTES);
        tonic::transport::Server::builder()
            // Detect Envoys that vanished without closing the connection.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(service)
            .add_optional_service(metrics)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                signal,
            )
            .await?;
        Ok(())
    }
}

impl XdsHandle {
    /// Build the resources for `model` and push what changed to every Envoy.
    ///
    /// # Errors
    /// A [`BuildError`] if the model cannot be expressed; the last good snapshot stays in place.
    pub fn publish(&self, model: &GatewayModel) -> Result<(), BuildError> {
        let started = Instant::now();
        let built = build_snapshot(model, &self.shared.settings);
        let c = &self.shared.counters;
        c.builds.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        c.last_build_nanos.store(nanos + 1, Ordering::Relaxed);
        match built {
            Ok(snapshot) => {
                self.publish_snapshot(snapshot);
                Ok(())
            }
            Err(e) => {
                c.build_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "snapshot build failed; keeping the last good snapshot");
                Err(e)
            }
        }
    }

    /// Push an already-built snapshot (for resources built or altered outside [`build_snapshot`],
    /// for example by tests that need Envoy to reject something).
    pub fn publish_snapshot(&self, snapshot: Snapshot) {
        tracing::info!(versions = ?snapshot.versions(), "publishing xDS snapshot");
        self.shared.snapshot.send_replace(Some(Arc::new(snapshot)));
    }

    /// The snapshot being served, if any.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.shared.snapshot.borrow().clone()
    }

    /// The gateway settings this server builds with.
    pub fn settings(&self) -> &GatewaySettings {
        &self.shared.settings
    }

    /// Every connected Envoy.
    pub fn envoys(&self) -> Vec<EnvoyStatus> {
        let current = self.snapshot().map(|s| s.versions());
        self.shared
            .streams()
            .values()
            .map(|s| {
                let mut s = s.clone();
                s.in_sync = current.as_ref().is_some_and(|c| *c == s.acked_versions);
                s
            })
            .collect()
    }

    /// Counters since the server was created.
    pub fn metrics(&self) -> XdsMetrics {
        let c = &self.shared.counters;
        let last = c.last_build_nanos.load(Ordering::Relaxed);
        XdsMetrics {
            pushes: c.pushes.load(Ordering::Relaxed),
            acks: c.acks.load(Ordering::Relaxed),
            nacks: c.nacks.load(Ordering::Relaxed),
            connected_streams: c.connected.load(Ordering::Relaxed),
            snapshot_builds: c.builds.load(Ordering::Relaxed),
            snapshot_build_errors: c.build_errors.load(Ordering::Relaxed),
            last_snapshot_build: (last > 0).then(|| Duration::from_nanos(last - 1)),
            metrics_streams: c.metrics_streams.load(Ordering::Relaxed),
            metrics_messages: c.metrics_messages.load(Ordering::Relaxed),
            metrics_bytes: c.metrics_bytes.load(Ordering::Relaxed),
            metrics_dropped: c.metrics_dropped.load(Ordering::Relaxed),
        }
    }
}

// === impl Ads ===

struct Ads {
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer = request.remote_addr();
        let (tx, rx) = mpsc::channel(16);
        let shared = self.shared.clone();
        tokio::spawn(run_stream(shared, request.into_inner(), tx, peer));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        Err(Status::unimplemented(
            "toolmesh serves state-of-the-world ADS only; set ads_config.api_type: GRPC \
             (not DELTA_GRPC) in the Envoy bootstrap",
        ))
    }
}

/// Drop guard: whatever ends the stream task, the stream leaves the registry and the gauge.
struct StreamGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.shared
            .counters
            .connected
            .fetch_sub(1, Ordering::Relaxed);
        self.shared.streams().remove(&self.id);
    }
}

async fn run_stream(
    shared: Arc<Shared>,
    mut inbound: Streaming<DiscoveryRequest>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    peer: Option<std::net::SocketAddr>,
) {
    let id = shared.next_stream.fetch_add(1, Ordering::Relaxed);
    shared.counters.connected.fetch_add(1, Ordering::Relaxed);
    shared.streams().insert(
        id,
        EnvoyStatus {
            stream_id: id,
            node_id: String::new(),
            cluster: String::new(),
            connected_since: Utc::now(),
            acked_versions: BTreeMap::new(),
            in_sync: false,
            last_nack: None,
        },
    );
    let _guard = StreamGuard {
        shared: shared.clone(),
        id,
    };
    let mut snapshots = shared.snapshot.subscribe();
    let mut shutdown = shared.shutdown.subscribe();
    let mut tracker = StreamTracker::new();
    tracing::info!(stream = id, ?peer, "ADS stream opened");

    loop {
        let outgoing: Vec<DiscoveryResponse> = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => {
                tracing::info!(stream = id, "closing ADS stream: control plane shutting down");
                break;
            }
            _ = tx.closed() => break,
            msg = inbound.message() => match msg {
                Ok(Some(req)) => {
                    let outcome = tracker.on_request(&req, Utc::now());
                    record(&shared, id, &tracker, &outcome.event, &req);
                    let snapshot = snapshots.borrow().clone();
                    match (outcome.respond, outcome.ty, snapshot) {
                        (true, Some(ty), Some(snap)) => tracker.response(ty, &snap).into_iter().collect(),
                        _ => Vec::new(),
                    }
                }
                Ok(None) => {
                    tracing::info!(stream = id, "ADS stream closed by Envoy");
                    break;
                }
                Err(status) => {
                    log_stream_error(id, &status);
                    break;
                }
            },
            changed = snapshots.changed() => {
                if changed.is_err() {
                    break;
                }
                let snapshot = snapshots.borrow_and_update().clone();
                snapshot.map(|s| tracker.changed(&s)).unwrap_or_default()
            }
        };
        for resp in outgoing {
            tracing::debug!(
                stream = id,
                type_url = %resp.type_url,
                version = %resp.version_info,
                nonce = %resp.nonce,
                resources = resp.resources.len(),
                "sending"
            );
            if tx.send(Ok(resp)).await.is_err() {
                return;
            }
            shared.counters.pushes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// === impl Metrics ===

struct Metrics {
    shared: Arc<Shared>,
    sink: mpsc::Sender<MetricsReport>,
}

/// Drop guard for the metrics-stream gauge.
struct MetricsStreamGuard(Arc<Shared>);

impl Drop for MetricsStreamGuard {
    fn drop(&mut self) {
        self.0
            .counters
            .metrics_streams
            .fetch_sub(1, Ordering::Relaxed);
    }
}

#[tonic::async_trait]
impl MetricsService for Metrics {
    async fn stream_metrics(
        &self,
        request: Request<Streaming<StreamMetricsMessage>>,
    ) -> Result<Response<StreamMetricsResponse>, Status> {
        let shared = self.shared.clone();
        let id = shared.next_stream.fetch_add(1, Ordering::Relaxed);
        let c = &shared.counters;
        c.metrics_streams.fetch_add(1, Ordering::Relaxed);
        let _guard = MetricsStreamGuard(shared.clone());
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let mut shutdown = shared.shutdown.subscribe();
        let (mut node_id, mut node_cluster) = (String::new(), String::new());
        tracing::info!(stream = id, ?peer, "metrics stream opened");
        loop {
            let msg = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                msg = inbound.message() => msg,
            };
            let msg = match msg {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(status) => {
                    tracing::info!(stream = id, node = %node_id, reason = %status.message(), "metrics stream ended");
                    break;
                }
            };
            if let Some(node) = msg.identifier.as_ref().and_then(|i| i.node.as_ref()) {
                node_id = node.id.clone();
                node_cluster = node.cluster.clone();
            }
            let report = reduce_metrics_message(msg, id, &node_id, &node_cluster, Utc::now());
            c.metrics_messages.fetch_add(1, Ordering::Relaxed);
            c.metrics_bytes
                .fetch_add(report.message_bytes as u64, Ordering::Relaxed);
            tracing::debug!(
                stream = id,
                node = %node_id,
                bytes = report.message_bytes,
                families = report.families_total,
                kept = report.families.len(),
                "metrics received"
            );
            if self.sink.send(report).await.is_err() {
                c.metrics_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        tracing::info!(stream = id, node = %node_id, "metrics stream closed");
        Ok(Response::new(StreamMetricsResponse {}))
    }
}

fn record(
    shared: &Shared,
    id: u64,
    tracker: &StreamTracker,
    event: &Event,
    req: &DiscoveryRequest,
) {
    let node = tracker.node().cloned().unwrap_or_default();
    match event {
        Event::Ack { version } => {
            shared.counters.acks.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(stream = id, node = %node.id, type_url = %req.type_url, %version, "ACK");
        }
        Event::Nack(nack) => {
            shared.counters.nacks.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                stream = id,
                node = %node.id,
                type_url = %nack.type_url,
                rejected_version = %nack.version,
                kept_version = %req.version_info,
                reason = %nack.message,
                "NACK: Envoy rejected the config and keeps its last good one"
            );
        }
        Event::Subscribe => tracing::debug!(
            stream = id,
            node = %node.id,
            type_url = %req.type_url,
            names = ?req.resource_names,
            version = %req.version_info,
            "subscribe"
        ),
        Event::Stale => {
            tracing::debug!(stream = id, nonce = %req.response_nonce, "stale request ignored")
        }
        Event::Unsupported => tracing::warn!(
            stream = id,
            node = %node.id,
            type_url = %req.type_url,
            "request for a resource type toolmesh does not serve; ignored"
        ),
    }
    if let Some(status) = shared.streams().get_mut(&id) {
        status.node_id = node.id;
        status.cluster = node.cluster;
        status.acked_versions = tracker.acked_versions();
        status.last_nack = tracker.last_nack().cloned();
    }
}

fn log_stream_error(id: u64, status: &Status) {
    let msg = status.message().to_ascii_lowercase();
    // Envoy shutting down or restarting shows up as a broken pipe / reset: a normal disconnect.
    let normal = status.code() == tonic::Code::Cancelled
        || [
            "broken pipe",
            "connection reset",
            "stream no longer needed",
            "error reading a body",
        ]
        .iter()
        .any(|m| msg.contains(m));
    if normal {
        tracing::info!(stream = id, reason = %status.message(), "ADS stream disconnected");
    } else {
        tracing::warn!(stream = id, code = ?status.code(), reason = %status.message(), "ADS stream failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Counter, Gauge, Metric};

    fn family(name: &str, metric: Metric) -> MetricFamily {
        MetricFamily {
            name: Some(name.into()),
            metric: vec![metric],
            ..Default::default()
        }
    }

    #[test]
    fn reports_keep_toolmesh_stats_and_uptime_only() {
        let counter = Metric {
            counter: Some(Counter {
                value: Some(3.0),
                ..Default::default()
            }),
            ..Default::default()
        };
        let msg = StreamMetricsMessage {
            identifier: None,
            envoy_metrics: vec![
                family("wasmcustom.toolmesh.tool.calls", counter.clone()),
                family("toolmesh.vs.demo.rq.tools_call", counter.clone()),
                family("wasmcustom.other.thing", counter.clone()),
                family("cluster.upstream_rq_total", counter.clone()),
                family(
                    UPTIME_STAT,
                    Metric {
                        gauge: Some(Gauge { value: Some(42.0) }),
                        ..Default::default()
                    },
                ),
            ],
        };
        let bytes = msg.encoded_len();
        let at = Utc::now();
        let r = reduce_metrics_message(msg, 7, "gw-1", "toolmesh", at);
        let names: Vec<&str> = r
            .families
            .iter()
            .filter_map(|f| f.name.as_deref())
            .collect();
        assert_eq!(
            names,
            [
                "wasmcustom.toolmesh.tool.calls",
                "toolmesh.vs.demo.rq.tools_call"
            ]
        );
        assert_eq!(r.uptime_s, Some(42.0));
        assert_eq!((r.families_total, r.message_bytes), (5, bytes));
        assert_eq!(
            (r.stream_id, r.node_id.as_str(), r.received_at),
            (7, "gw-1", at)
        );
    }
}
