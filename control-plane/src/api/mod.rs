//! The REST API: `/v1` (admin token required), `/healthz` and `/openapi.json` (public).
//!
//! `router(state)` is the whole HTTP surface, so tests drive it with `oneshot` and `run` serves
//! it. Cross-cutting concerns are tower layers composed here: the admin-token check on `/v1`,
//! request tracing, and a body limit. Each resource lives in its own module.

pub mod catalog;
pub mod envoys;
pub mod error;
pub mod extract;
pub mod items;
pub mod mcp_servers;
pub mod tokens;
pub mod usage;
pub mod virtual_servers;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::sync::watch;
use utoipa::OpenApi as _;

use crate::crypto::SecretKey;
use crate::store::Store;
use error::ApiError;

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Settings the handlers need.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Base URL where Envoy serves MCP (`http://127.0.0.1:8080`).
    pub public_mcp_url: String,
    /// Deadline for one discovery.
    pub discovery_timeout: Duration,
    /// What the policy gets besides the catalog (`/v1/policy` shows it as the publisher
    /// pushes it).
    pub policy: crate::policy::PolicySettings,
}

/// The envelope of every list: a page of items and the cursor of the next page.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ListResponse<T> {
    /// This page.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Shared state of the API.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The catalog.
    pub store: Store,
    /// Seals upstream credentials.
    pub key: Arc<SecretKey>,
    /// Settings.
    pub settings: Arc<ApiSettings>,
    /// The catalog version; changes after every committed change (from any replica on
    /// Postgres). The xDS wiring subscribes here.
    pub catalog_version: watch::Receiver<u64>,
    /// The xDS server, when this process serves one (`/v1/envoys`, `/metrics`).
    pub xds: Option<toolmesh_xds::XdsHandle>,
    /// What the catalog publisher last pushed.
    pub published: crate::gateway::PublishedState,
    /// Tool usage roll-ups (`/v1/usage`), when this process keeps them.
    pub usage: Option<crate::usage::Usage>,
}

impl AppState {
    /// State over a store.
    pub fn new(store: Store, key: SecretKey, settings: ApiSettings) -> Self {
        let catalog_version = store.subscribe();
        Self {
            store,
            key: Arc::new(key),
            settings: Arc::new(settings),
            catalog_version,
            xds: None,
            published: Default::default(),
            usage: None,
        }
    }

    /// The same state, answering `/v1/usage` from these roll-ups.
    pub fn with_usage(mut self, usage: crate::usage::Usage) -> Self {
        self.usage = Some(usage);
        self
    }

    /// The same state, reporting on an xDS server.
    pub fn with_xds(mut self, xds: toolmesh_xds::XdsHandle) -> Self {
        self.xds = Some(xds);
        self
    }

    /// The MCP endpoint of a virtual server.
    pub fn mcp_url(&self, virtual_server: &str) -> String {
        format!(
            "{}/servers/{virtual_server}/mcp",
            self.settings.public_mcp_url.trim_end_matches('/')
        )
    }
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    let v1 = Router::new()
        .merge(mcp_servers::router())
        .merge(items::router())
        .merge(virtual_servers::router())
        .merge(catalog::router())
        .merge(envoys::router())
        .merge(tokens::router())
        .merge(usage::router())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(healthz))
        .route("/.well-known/jwks.json", get(tokens::jwks))
        .route("/openapi.json", get(openapi_json))
        .route("/metrics", get(usage::metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// The admin-token check on `/v1`.
async fn require_admin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_string())
        });
    let Some(token) = presented else {
        return ApiError::unauthorized(
            "missing admin token: send 'Authorization: Bearer <token>' (printed at first start; `toolmesh admin reset-token` makes a new one)",
        )
        .into_response();
    };
    match crate::admin::verify(&state.store, &token).await {
        Ok(true) => next.run(req).await,
        Ok(false) => ApiError::unauthorized("invalid admin token").into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// Liveness and database reachability.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Healthz {
    /// `ok` or `unavailable`.
    pub status: String,
    /// `postgres` or `sqlite`.
    pub database: String,
}

/// Health check (public).
#[utoipa::path(get, path = "/healthz", tag = "meta", security(()),
    responses((status = 200, body = Healthz), (status = 503, body = Healthz)))]
async fn healthz(State(state): State<AppState>) -> Response {
    let database = state.store.backend_name().to_string();
    match state.store.catalog_version().await {
        Ok(_) => axum::Json(Healthz {
            status: "ok".into(),
            database,
        })
        .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(Healthz {
                    status: "unavailable".into(),
                    database,
                }),
            )
                .into_response()
        }
    }
}

/// The OpenAPI 3 document (public).
#[utoipa::path(get, path = "/openapi.json", tag = "meta", security(()),
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
async fn openapi_json() -> Response {
    axum::Json(ApiDoc::openapi()).into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint; see /openapi.json",
        None,
    )
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The OpenAPI document, generated from the handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "toolmesh control plane", description = "Catalog of MCP servers, their tools, prompts and resources, and the virtual servers composed from them. Every /v1 route needs the admin bearer token."),
    modifiers(&BearerAuth),
    security(("admin_token" = [])),
    paths(
        healthz, openapi_json,
        mcp_servers::register, mcp_servers::list, mcp_servers::show, mcp_servers::replace,
        mcp_servers::delete, mcp_servers::refresh,
        items::list_tools, items::show_tool, items::patch_tool, items::accept_tool,
        items::list_prompts, items::show_prompt, items::patch_prompt, items::accept_prompt,
        items::list_resources, items::show_resource, items::patch_resource, items::accept_resource,
        items::list_resource_templates, items::show_resource_template,
        items::patch_resource_template, items::accept_resource_template,
        virtual_servers::create, virtual_servers::list, virtual_servers::show,
        virtual_servers::replace, virtual_servers::delete,
        catalog::version, catalog::policy, envoys::list, envoys::metrics,
        tokens::create, tokens::list, tokens::show, tokens::revoke, tokens::list_keys,
        tokens::rotate, tokens::jwks,
        usage::tools, usage::virtual_servers, usage::tokens, usage::unused,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    tags(
        (name = "mcp-servers", description = "Upstream MCP servers and their discovery"),
        (name = "catalog", description = "Discovered tools, prompts, resources and templates"),
        (name = "virtual-servers", description = "Curated MCP endpoints"),
        (name = "tokens", description = "Tokens scoped to virtual servers, and their signing keys"),
        (name = "usage", description = "Tool usage summed over every Envoy (per tool, virtual server and token), and unused tools"),
        (name = "meta", description = "Health, OpenAPI, catalog version, compiled policy"),
    )
)]
pub struct ApiDoc;
