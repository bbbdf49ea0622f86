//! `/v1/mcp-servers`: register, inspect, replace, delete and refresh upstream MCP servers.
//!
//! Register and replace run discovery *before* the write transaction (bounded by the discovery
//! timeout), then store the server and what was found in one transaction: an unreachable server
//! is stored with health `down` and the reason, and the request still succeeds.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, Query};
use super::{AppState, ListResponse};
use crate::crypto::headers_context;
use crate::discovery::{discover_record, discover_upstream, open_headers};
use crate::store::{
    CredentialUpdate, DiscoveryChanges, Health, ItemCounts, McpServerInput, McpServerRecord,
    Transport,
};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/mcp-servers", post(register).get(list))
        .route("/mcp-servers/{name}", get(show).put(replace).delete(delete))
        .route("/mcp-servers/{name}/refresh", post(refresh))
}

/// Register an MCP server.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterMcpServer {
    /// Unique slug (1-63 of a-z, 0-9, '-', '_').
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub name: String,
    /// The MCP endpoint URL (`http` or `https`), for example `http://10.0.0.5:9000/mcp`.
    #[schema(pattern = r"^https?://[^\s/?#@]+(/[^\s#]*)?$")]
    pub url: String,
    /// `streamable-http` (default) or `sse`.
    #[serde(default)]
    pub transport: Option<Transport>,
    /// Headers sent to the upstream (credentials). Stored encrypted, never returned.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// Free text.
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    /// Tags (slugs), usable as a filter on the catalog views.
    #[serde(default)]
    #[schema(inline, value_type = Option<Vec<SlugString>>)]
    pub tags: Option<Vec<String>>,
}

/// Replace an MCP server's settings. `headers` omitted keeps the stored credentials; `{}`
/// removes them.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplaceMcpServer {
    /// Optional; must equal the name in the path (renaming is not supported).
    #[serde(default)]
    pub name: Option<String>,
    /// The MCP endpoint URL.
    #[schema(pattern = r"^https?://[^\s/?#@]+(/[^\s#]*)?$")]
    pub url: String,
    /// `streamable-http` (default) or `sse`.
    #[serde(default)]
    pub transport: Option<Transport>,
    /// New credential headers; omit to keep the stored ones, `{}` to remove them.
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
    /// Free text.
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    /// Tags.
    #[serde(default)]
    #[schema(inline, value_type = Option<Vec<SlugString>>)]
    pub tags: Option<Vec<String>>,
}

/// A slug: 1-63 of a-z, 0-9, '-', '_', starting with a letter or digit (schema only).
#[derive(utoipa::ToSchema)]
#[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
#[allow(dead_code)]
pub struct SlugString(String);

/// An MCP server as the API shows it (credentials are never included).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct McpServerView {
    /// Unique slug.
    pub name: String,
    /// The MCP endpoint URL.
    pub url: String,
    /// Transport.
    pub transport: Transport,
    /// Free text.
    pub description: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Whether credential headers are stored.
    pub has_credentials: bool,
    /// Names of the stored credential headers (values are never returned).
    pub credential_header_names: Vec<String>,
    /// What the last discovery saw.
    pub health: Health,
    /// Items in the catalog (not counting those removed upstream).
    pub counts: ItemCounts,
    /// The Envoy cluster that reaches it.
    pub cluster: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed through the API.
    pub updated_at: DateTime<Utc>,
    /// What the discovery run by this request changed (register, replace, refresh only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<DiscoveryChanges>,
}

fn view(rec: McpServerRecord, changes: Option<DiscoveryChanges>) -> McpServerView {
    McpServerView {
        cluster: crate::policy::cluster_name(&rec.name),
        has_credentials: rec.credential_headers.is_some(),
        name: rec.name,
        url: rec.url,
        transport: rec.transport,
        description: rec.description,
        tags: rec.tags,
        credential_header_names: rec.credential_header_names,
        health: rec.health,
        counts: rec.counts,
        created_at: rec.created_at,
        updated_at: rec.updated_at,
        changes,
    }
}

/// Headers toolmesh must control itself on the way to an upstream.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "accept",
    "connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

pub(super) fn check_slug(field: &str, value: &str) -> Result<(), ApiError> {
    if toolmesh_proto::is_slug(value) {
        Ok(())
    } else {
        Err(ApiError::validation(
            field,
            format!(
                "{field}: {value:?} is not a valid name: use 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
            ),
        ))
    }
}

pub(super) fn check_description(value: &Option<String>) -> Result<String, ApiError> {
    let d = value.clone().unwrap_or_default();
    if d.chars().count() > 2000 {
        return Err(ApiError::validation(
            "description",
            "description: at most 2000 characters",
        ));
    }
    Ok(d)
}

fn check_url(url: &str) -> Result<(), ApiError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| {
        ApiError::validation("url", format!("url: {url:?} is not a valid URL ({e})"))
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ApiError::validation(
            "url",
            format!(
                "url: scheme must be http or https, got {:?}",
                parsed.scheme()
            ),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ApiError::validation("url", "url: must name a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ApiError::validation(
            "url",
            "url: must not carry credentials; put them in `headers` (stored encrypted)",
        ));
    }
    if parsed.fragment().is_some() {
        return Err(ApiError::validation(
            "url",
            "url: must not have a #fragment",
        ));
    }
    Ok(())
}

fn check_tags(tags: &Option<Vec<String>>) -> Result<Vec<String>, ApiError> {
    let tags = tags.clone().unwrap_or_default();
    if tags.len() > 32 {
        return Err(ApiError::validation("tags", "tags: at most 32 tags"));
    }
    for (i, t) in tags.iter().enumerate() {
        check_slug(&format!("tags[{i}]"), t)?;
    }
    Ok(tags)
}

/// Validate header names and values; returns them lowercased by name.
fn check_headers(h: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ApiError> {
    if h.len() > 32 {
        return Err(ApiError::validation(
            "headers",
            "headers: at most 32 headers",
        ));
    }
    let mut out = BTreeMap::new();
    for (name, value) in h {
        let field = format!("headers.{name}");
        let lower = name.to_ascii_lowercase();
        if axum::http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
            return Err(ApiError::validation(
                field,
                format!("headers: {name:?} is not a valid HTTP header name"),
            ));
        }
        if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with(':') {
            return Err(ApiError::validation(
                field,
                format!("headers: {name:?} is set by toolmesh itself and cannot be configured"),
            ));
        }
        if axum::http::HeaderValue::from_str(value).is_err() {
            return Err(ApiError::validation(
                field,
                format!("headers: the value of {name:?} is not a valid HTTP header value"),
            ));
        }
        if out.insert(lower, value.clone()).is_some() {
            return Err(ApiError::validation(
                field,
                format!("headers: {name:?} is given twice (header names are case-insensitive)"),
            ));
        }
    }
    Ok(out)
}

fn seal(state: &AppState, name: &str, headers: &BTreeMap<String, String>) -> CredentialUpdate {
    if headers.is_empty() {
        return CredentialUpdate::Clear;
    }
    let plain = serde_json::to_vec(headers).unwrap_or_default();
    CredentialUpdate::Set {
        sealed: state.key.seal(&headers_context(name), &plain),
        names: headers.keys().cloned().collect(),
    }
}

/// Register an MCP server and discover what it offers.
#[utoipa::path(post, path = "/v1/mcp-servers", tag = "mcp-servers", request_body = RegisterMcpServer,
    responses(
        (status = 201, description = "Registered; `health` tells whether discovery worked", body = McpServerView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn register(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RegisterMcpServer>,
) -> Result<(StatusCode, Json<McpServerView>), ApiError> {
    check_slug("name", &body.name)?;
    check_url(&body.url)?;
    let transport = body.transport.unwrap_or(Transport::StreamableHttp);
    let headers = check_headers(&body.headers.clone().unwrap_or_default())?;
    let input = McpServerInput {
        name: body.name.clone(),
        url: body.url.clone(),
        transport,
        description: check_description(&body.description)?,
        tags: check_tags(&body.tags)?,
        credentials: seal(&state, &body.name, &headers),
    };
    // Refuse a taken name before spending a discovery on it (the insert re-checks).
    if state.store.get_mcp_server(&input.name).await.is_ok() {
        return Err(crate::store::StoreError::AlreadyExists {
            kind: "mcp server",
            name: input.name,
        }
        .into());
    }
    let outcome = discover_upstream(
        &input.url,
        transport,
        headers.into_iter().collect(),
        state.settings.discovery_timeout,
    )
    .await;
    let (rec, changes) = state.store.create_mcp_server(&input, &outcome).await?;
    Ok((StatusCode::CREATED, Json(view(rec, Some(changes)))))
}

/// List MCP servers by name.
#[utoipa::path(get, path = "/v1/mcp-servers", tag = "mcp-servers",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Page size, 1-500 (default 50)"),
           ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses((status = 200, body = ListResponse<McpServerView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn list(
    State(state): State<AppState>,
    q: Query,
) -> Result<Json<ListResponse<McpServerView>>, ApiError> {
    q.check(&["limit", "cursor"])?;
    let page = state.store.list_mcp_servers(&q.page()?).await?;
    Ok(Json(ListResponse {
        items: page.items.into_iter().map(|r| view(r, None)).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Show one MCP server.
#[utoipa::path(get, path = "/v1/mcp-servers/{name}", tag = "mcp-servers",
    params(("name" = String, Path, description = "MCP server name")),
    responses((status = 200, body = McpServerView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn show(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<McpServerView>, ApiError> {
    Ok(Json(view(state.store.get_mcp_server(&name).await?, None)))
}

/// Replace an MCP server's settings; rediscovers when the URL, transport or headers change.
#[utoipa::path(put, path = "/v1/mcp-servers/{name}", tag = "mcp-servers", request_body = ReplaceMcpServer,
    params(("name" = String, Path, description = "MCP server name")),
    responses((status = 200, body = McpServerView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn replace(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<ReplaceMcpServer>,
) -> Result<Json<McpServerView>, ApiError> {
    let existing = state.store.get_mcp_server(&name).await?;
    if let Some(n) = &body.name
        && *n != name
    {
        return Err(ApiError::validation(
            "name",
            format!("name: {n:?} differs from the path's {name:?}; renaming is not supported"),
        ));
    }
    check_url(&body.url)?;
    let transport = body.transport.unwrap_or(Transport::StreamableHttp);
    let new_headers = body.headers.as_ref().map(check_headers).transpose()?;
    let credentials = match &new_headers {
        None => CredentialUpdate::Keep,
        Some(h) => seal(&state, &name, h),
    };
    let input = McpServerInput {
        name: name.clone(),
        url: body.url.clone(),
        transport,
        description: check_description(&body.description)?,
        tags: check_tags(&body.tags)?,
        credentials,
    };
    let rediscover =
        existing.url != input.url || existing.transport != transport || new_headers.is_some();
    let outcome = if rediscover {
        let headers = match new_headers {
            Some(h) => h.into_iter().collect(),
            None => open_headers(&state.key, &existing).map_err(|e| ApiError::internal(&e))?,
        };
        Some(
            discover_upstream(
                &input.url,
                transport,
                headers,
                state.settings.discovery_timeout,
            )
            .await,
        )
    } else {
        None
    };
    let (rec, changes) = state
        .store
        .replace_mcp_server(&input, outcome.as_ref())
        .await?;
    Ok(Json(view(rec, outcome.map(|_| changes))))
}

/// Delete an MCP server and its catalog items. Refused (409) while virtual servers use it,
/// unless `force=true`, which also removes it from those virtual servers.
#[utoipa::path(delete, path = "/v1/mcp-servers/{name}", tag = "mcp-servers",
    params(("name" = String, Path, description = "MCP server name"),
           ("force" = Option<bool>, Query, description = "Also remove it from virtual servers")),
    responses((status = 204, description = "Deleted"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(super) async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
    q: Query,
) -> Result<StatusCode, ApiError> {
    q.check(&["force"])?;
    let force = q.bool("force")?.unwrap_or(false);
    state.store.delete_mcp_server(&name, force).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Run discovery now and return the new health and counts.
#[utoipa::path(post, path = "/v1/mcp-servers/{name}/refresh", tag = "mcp-servers",
    params(("name" = String, Path, description = "MCP server name")),
    responses((status = 200, body = McpServerView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn refresh(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<McpServerView>, ApiError> {
    let rec = state.store.get_mcp_server(&name).await?;
    let outcome = discover_record(&state.key, &rec, state.settings.discovery_timeout).await;
    let (rec, changes) = state.store.apply_discovery(&name, &outcome).await?;
    Ok(Json(view(rec, Some(changes))))
}
