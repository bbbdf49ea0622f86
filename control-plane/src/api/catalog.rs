//! `/v1/catalog/version` and `/v1/policy`: what the gateway is (or will be) told.
//!
//! The policy endpoint is a debugging aid: it shows exactly the snapshot compiled from the
//! current catalog, the same JSON the xDS layer hands to the Envoy filter, except for the
//! session key's secret, which is replaced by [`REDACTED`] (its id is shown).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::{ApiError, ErrorBody};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/catalog/version", get(version))
        .route("/policy", get(policy))
}

/// The catalog version.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CatalogVersion {
    /// Bumped by every change; never decreases.
    pub version: i64,
}

/// The current catalog version.
#[utoipa::path(get, path = "/v1/catalog/version", tag = "meta",
    responses((status = 200, body = CatalogVersion), (status = 401, body = ErrorBody)))]
pub(super) async fn version(
    State(state): State<AppState>,
) -> Result<Json<CatalogVersion>, ApiError> {
    Ok(Json(CatalogVersion {
        version: state.store.catalog_version().await?,
    }))
}

/// What `/v1/policy` shows instead of the session key's secret.
pub const REDACTED: &str = "<redacted>";

/// The policy snapshot compiled from the current catalog (the filter's configuration; the
/// session key's secret redacted).
#[utoipa::path(get, path = "/v1/policy", tag = "meta",
    responses((status = 200, description = "toolmesh_proto::PolicySnapshot", body = Object), (status = 401, body = ErrorBody)))]
pub(super) async fn policy(
    State(state): State<AppState>,
) -> Result<Json<toolmesh_proto::PolicySnapshot>, ApiError> {
    let model = crate::policy::gateway_model_with(&state.store, &state.settings.policy).await?;
    let mut policy = model.policy;
    policy.sessions.keys = vec![toolmesh_proto::SessionKey {
        secret: REDACTED.into(),
        ..state.key.session_key()
    }];
    Ok(Json(policy))
}
