//! `/v1/tools`, `/v1/prompts`, `/v1/resources`, `/v1/resource-templates`: the discovered
//! catalog, read-only except for enable/disable and accepting a drifted definition.
//!
//! Items are addressed by numeric id (shown in every list); ids are stable for the life of the
//! MCP server. A drifted item keeps serving its accepted definition until
//! `POST /v1/<kind>/{id}/accept` makes the upstream's current one the accepted one.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, Query, parse_id};
use super::{AppState, ListResponse};
use crate::store::{ItemFilter, ItemKind, ItemRecord};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/tools", get(list_tools))
        .route("/tools/{id}", get(show_tool).patch(patch_tool))
        .route("/tools/{id}/accept", post(accept_tool))
        .route("/prompts", get(list_prompts))
        .route("/prompts/{id}", get(show_prompt).patch(patch_prompt))
        .route("/prompts/{id}/accept", post(accept_prompt))
        .route("/resources", get(list_resources))
        .route("/resources/{id}", get(show_resource).patch(patch_resource))
        .route("/resources/{id}/accept", post(accept_resource))
        .route("/resource-templates", get(list_resource_templates))
        .route(
            "/resource-templates/{id}",
            get(show_resource_template).patch(patch_resource_template),
        )
        .route(
            "/resource-templates/{id}/accept",
            post(accept_resource_template),
        )
}

/// A discovered tool, prompt, resource or resource template.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ItemView {
    /// Stable numeric id (per kind).
    pub id: i64,
    /// `tool`, `prompt`, `resource` or `resource_template`.
    pub kind: ItemKind,
    /// The MCP server offering it.
    pub mcp_server: String,
    /// The name (tools and prompts: the key; resources and templates: their `name`).
    pub name: Option<String>,
    /// Resources: the URI (the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Resource templates: the URI template (the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_template: Option<String>,
    /// From the accepted definition.
    pub description: String,
    /// Whether virtual servers may expose it.
    pub enabled: bool,
    /// Whether the upstream's definition differs from the accepted one.
    pub drifted: bool,
    /// Whether the upstream stopped listing it.
    pub removed_upstream: bool,
    /// The accepted MCP definition (what virtual servers serve).
    pub definition: serde_json::Value,
    /// The upstream's current definition, when drifted.
    pub pending_definition: Option<serde_json::Value>,
    /// First discovered.
    pub first_seen: DateTime<Utc>,
    /// Last listed by the upstream.
    pub last_seen: DateTime<Utc>,
}

/// Enable or disable an item.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemPatch {
    /// Disabled items are not served by any virtual server and cannot be added to one.
    pub enabled: bool,
}

fn view(r: ItemRecord) -> ItemView {
    let def_name = r
        .definition
        .get("name")
        .and_then(|n| n.as_str())
        .map(str::to_string);
    let (name, uri, uri_template) = match r.kind {
        ItemKind::Tool | ItemKind::Prompt => (Some(r.key), None, None),
        ItemKind::Resource => (def_name, Some(r.key), None),
        ItemKind::ResourceTemplate => (def_name, None, Some(r.key)),
    };
    ItemView {
        id: r.id,
        kind: r.kind,
        mcp_server: r.mcp_server,
        name,
        uri,
        uri_template,
        description: r.description,
        enabled: r.enabled,
        drifted: r.drifted,
        removed_upstream: r.removed_upstream,
        definition: r.definition,
        pending_definition: r.pending_definition,
        first_seen: r.first_seen,
        last_seen: r.last_seen,
    }
}

async fn list_kind(
    state: AppState,
    kind: ItemKind,
    q: Query,
) -> Result<Json<ListResponse<ItemView>>, ApiError> {
    q.check(&[
        "mcp_server",
        "tag",
        "q",
        "enabled",
        "drifted",
        "limit",
        "cursor",
    ])?;
    let filter = ItemFilter {
        mcp_server: q.str("mcp_server"),
        tag: q.str("tag"),
        q: q.str("q"),
        enabled: q.bool("enabled")?,
        drifted: q.bool("drifted")?,
    };
    let page = state.store.list_items(kind, &filter, &q.page()?).await?;
    Ok(Json(ListResponse {
        items: page.items.into_iter().map(view).collect(),
        next_cursor: page.next_cursor,
    }))
}

async fn show_kind(state: AppState, kind: ItemKind, id: &str) -> Result<Json<ItemView>, ApiError> {
    Ok(Json(view(state.store.get_item(kind, parse_id(id)?).await?)))
}

async fn patch_kind(
    state: AppState,
    kind: ItemKind,
    id: &str,
    body: ItemPatch,
) -> Result<Json<ItemView>, ApiError> {
    let id = parse_id(id)?;
    Ok(Json(view(
        state.store.set_item_enabled(kind, id, body.enabled).await?,
    )))
}

async fn accept_kind(
    state: AppState,
    kind: ItemKind,
    id: &str,
) -> Result<Json<ItemView>, ApiError> {
    let id = parse_id(id)?;
    Ok(Json(view(state.store.accept_item(kind, id).await?)))
}

/// Stamp out the four handlers of one kind (utoipa needs one annotated fn per path).
macro_rules! item_handlers {
    ($kind:expr, $what:literal, $list:ident, $show:ident, $patch:ident, $accept:ident,
     $path:literal, $one:literal, $acc:literal) => {
        #[doc = concat!("List ", $what, "s, filtered by MCP server, tag (of the MCP server), search text, enabled, drifted.")]
        #[utoipa::path(get, path = $path, tag = "catalog",
            params(
                ("mcp_server" = Option<String>, Query, description = "Only this MCP server's items"),
                ("tag" = Option<String>, Query, description = "Only items of MCP servers with this tag"),
                ("q" = Option<String>, Query, description = "Case-insensitive substring of the name/URI or description"),
                ("enabled" = Option<bool>, Query, description = "Only enabled (true) or disabled (false)"),
                ("drifted" = Option<bool>, Query, description = "Only drifted (true) or not (false)"),
                ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Page size, 1-500 (default 50)"),
                ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
            responses((status = 200, body = ListResponse<ItemView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
        pub(super) async fn $list(
            State(state): State<AppState>,
            q: Query,
        ) -> Result<Json<ListResponse<ItemView>>, ApiError> {
            list_kind(state, $kind, q).await
        }

        #[doc = concat!("Show one ", $what, " by id.")]
        #[utoipa::path(get, path = $one, tag = "catalog",
            params(("id" = i64, Path, description = "Numeric id")),
            responses((status = 200, body = ItemView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
        pub(super) async fn $show(
            State(state): State<AppState>,
            Path(id): Path<String>,
        ) -> Result<Json<ItemView>, ApiError> {
            show_kind(state, $kind, &id).await
        }

        #[doc = concat!("Enable or disable a ", $what, ".")]
        #[utoipa::path(patch, path = $one, tag = "catalog", request_body = ItemPatch,
            params(("id" = i64, Path, description = "Numeric id")),
            responses((status = 200, body = ItemView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
                      (status = 404, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
        pub(super) async fn $patch(
            State(state): State<AppState>,
            Path(id): Path<String>,
            ApiJson(body): ApiJson<ItemPatch>,
        ) -> Result<Json<ItemView>, ApiError> {
            patch_kind(state, $kind, &id, body).await
        }

        #[doc = concat!("Accept a drifted ", $what, "'s current upstream definition.")]
        #[utoipa::path(post, path = $acc, tag = "catalog",
            params(("id" = i64, Path, description = "Numeric id")),
            responses((status = 200, body = ItemView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
                      (status = 409, description = "Not drifted: nothing to accept", body = ErrorBody)))]
        pub(super) async fn $accept(
            State(state): State<AppState>,
            Path(id): Path<String>,
        ) -> Result<Json<ItemView>, ApiError> {
            accept_kind(state, $kind, &id).await
        }
    };
}

item_handlers!(
    ItemKind::Tool,
    "tool",
    list_tools,
    show_tool,
    patch_tool,
    accept_tool,
    "/v1/tools",
    "/v1/tools/{id}",
    "/v1/tools/{id}/accept"
);
item_handlers!(
    ItemKind::Prompt,
    "prompt",
    list_prompts,
    show_prompt,
    patch_prompt,
    accept_prompt,
    "/v1/prompts",
    "/v1/prompts/{id}",
    "/v1/prompts/{id}/accept"
);
item_handlers!(
    ItemKind::Resource,
    "resource",
    list_resources,
    show_resource,
    patch_resource,
    accept_resource,
    "/v1/resources",
    "/v1/resources/{id}",
    "/v1/resources/{id}/accept"
);
item_handlers!(
    ItemKind::ResourceTemplate,
    "resource template",
    list_resource_templates,
    show_resource_template,
    patch_resource_template,
    accept_resource_template,
    "/v1/resource-templates",
    "/v1/resource-templates/{id}",
    "/v1/resource-templates/{id}/accept"
);
