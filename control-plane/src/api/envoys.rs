//! `/v1/envoys` and `/metrics`: what the Envoys connected over xDS have accepted, and the control
//! plane's own Prometheus metrics.
//!
//! An operator's first question after a change is "did every Envoy take it?": each entry shows
//! the versions an Envoy acknowledged per resource type, whether it is in sync with the current
//! snapshot, and the last rejection with Envoy's own reason.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use super::AppState;
use super::error::ErrorBody;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/envoys", get(list))
}

/// Envoys connected to this control plane's xDS server (empty when it serves none).
#[utoipa::path(get, path = "/v1/envoys", tag = "meta",
    responses((status = 200, description = "toolmesh_xds::EnvoyStatus for every connected Envoy: node_id, cluster, connected_since, acked_versions, in_sync, last_nack", body = Object),
              (status = 401, body = ErrorBody)))]
pub(super) async fn list(State(state): State<AppState>) -> impl IntoResponse {
    let envoys = state.xds.as_ref().map(|x| x.envoys()).unwrap_or_default();
    Json(serde_json::json!({ "items": envoys }))
}

/// Prometheus metrics of the control plane (xDS pushes, ACK/NACK, connected Envoys, snapshot
/// build time, catalog size). Public, like `/healthz`.
#[utoipa::path(get, path = "/metrics", tag = "meta", security(()),
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
pub(super) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let published = state
        .published
        .lock()
        .map(|p| p.clone())
        .unwrap_or_default();
    let body = match &state.xds {
        Some(xds) => crate::gateway::prometheus_text(xds, &published),
        None => String::from("# toolmesh: no xDS server in this process\n"),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
