//! `/v1/usage/*`: tool usage summed over every Envoy (per tool, per virtual server, per token),
//! and the tools nobody uses.
//!
//! Windows are `since` (default `24h`) to `until` (default now), each an RFC 3339 time or a
//! duration before now (`30m`, `24h`, `7d`). Rows are per minute, and per hour once older than
//! the minute retention, so a window is widened to the whole minutes (hours) it touches. How the
//! numbers are collected: `crate::usage`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::Query;
use crate::store::{ItemFilter, ItemKind, ItemRecord, PageRequest};
use crate::usage::report::{
    self, SortKey, TokenSortKey, TokenUsage, ToolUsage, UnusedReport, VirtualServerUsage,
};
use crate::usage::{Usage, UsageError, WindowFilter, rollup};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/usage/tools", get(tools))
        .route("/usage/virtual-servers", get(virtual_servers))
        .route("/usage/tokens", get(tokens))
        .route("/usage/unused", get(unused))
}

impl From<UsageError> for ApiError {
    fn from(e: UsageError) -> Self {
        match e {
            UsageError::Catalog(e) => e.into(),
            UsageError::Database(_) => ApiError::internal(&e),
        }
    }
}

/// Per-tool usage in a window.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToolUsageList {
    /// Start of the window.
    pub since: DateTime<Utc>,
    /// End of the window.
    pub until: DateTime<Utc>,
    /// One entry per (virtual server, MCP server, tool) with activity in the window.
    pub items: Vec<ToolUsage>,
}

/// Per-virtual-server usage in a window.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VirtualServerUsageList {
    /// Start of the window.
    pub since: DateTime<Utc>,
    /// End of the window.
    pub until: DateTime<Utc>,
    /// One entry per virtual server with activity in the window.
    pub items: Vec<VirtualServerUsage>,
}

/// Per-token usage in a window.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenUsageList {
    /// Start of the window.
    pub since: DateTime<Utc>,
    /// End of the window.
    pub until: DateTime<Utc>,
    /// One entry per (virtual server, token) with activity in the window.
    pub items: Vec<TokenUsage>,
}

fn usage(state: &AppState) -> Result<&Usage, ApiError> {
    state.usage.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "usage is not collected by this process",
            None,
        )
    })
}

/// `since` and `until` from the query.
fn window(q: &Query) -> Result<(DateTime<Utc>, DateTime<Utc>), ApiError> {
    let now = Utc::now();
    let parse = |field: &str, default: &str| {
        let raw = q.str(field).unwrap_or_else(|| default.to_string());
        rollup::parse_time(field, &raw, now).map_err(|e| ApiError::query(field, e.to_string()))
    };
    let since = parse("since", "24h")?;
    let until = match q.str("until") {
        Some(_) => parse("until", "0s")?,
        None => now,
    };
    if since >= until {
        return Err(ApiError::query(
            "since",
            format!("since: must be before until ({since} is not before {until})"),
        ));
    }
    Ok((since, until))
}

fn filter(
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    virtual_server: Option<String>,
    mcp_server: Option<String>,
) -> WindowFilter {
    WindowFilter {
        since: since.timestamp(),
        // A row that starts in the second `until` names still counts.
        until: until.timestamp() + 1,
        virtual_server,
        mcp_server,
        token: None,
    }
}

/// `sort` (parsed by `parse`, `default` when absent; `names` lists the accepted values) and
/// `order` (descending unless `asc`).
fn sorting<K>(
    q: &Query,
    default: K,
    parse: fn(&str) -> Option<K>,
    names: &str,
) -> Result<(K, bool), ApiError> {
    let key = match q.str("sort") {
        None => default,
        Some(s) => parse(&s).ok_or_else(|| {
            ApiError::query("sort", format!("sort: expected one of {names}, got {s:?}"))
        })?,
    };
    let descending = match q.str("order").as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(o) => {
            return Err(ApiError::query(
                "order",
                format!("order: expected asc or desc, got {o:?}"),
            ));
        }
    };
    Ok((key, descending))
}

/// Calls, errors, denials, latency percentiles and last call per tool, summed over every Envoy.
#[utoipa::path(get, path = "/v1/usage/tools", tag = "usage",
    params(
        ("since" = Option<String>, Query, description = "Start: RFC 3339 or a duration before now (`30m`, `24h`, `7d`); default `24h`"),
        ("until" = Option<String>, Query, description = "End: RFC 3339 or a duration before now; default now"),
        ("virtual_server" = Option<String>, Query, description = "Only this virtual server"),
        ("mcp_server" = Option<String>, Query, description = "Only this MCP server"),
        ("sort" = Option<String>, Query, description = "`calls` (default), `errors`, `denied`, `p99` or `last_called`"),
        ("order" = Option<String>, Query, description = "`desc` (default) or `asc`; entries without a value (no latency, never called) come last")),
    responses((status = 200, body = ToolUsageList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn tools(
    State(state): State<AppState>,
    q: Query,
) -> Result<Json<ToolUsageList>, ApiError> {
    q.check(&[
        "since",
        "until",
        "virtual_server",
        "mcp_server",
        "sort",
        "order",
    ])?;
    let (since, until) = window(&q)?;
    let (sort, descending) = sorting(&q, SortKey::Calls, SortKey::parse, SortKey::NAMES)?;
    let usage = usage(&state)?;
    let totals = usage
        .store
        .tool_totals(&filter(
            since,
            until,
            q.str("virtual_server"),
            q.str("mcp_server"),
        ))
        .await?;
    let dump = state.store.dump().await?;
    let mut items = report::tool_usage(&totals, &dump);
    report::sort_tools(&mut items, sort, descending);
    Ok(Json(ToolUsageList {
        since,
        until,
        items,
    }))
}

/// The same per virtual server, with requests by method and refusals by reason.
#[utoipa::path(get, path = "/v1/usage/virtual-servers", tag = "usage",
    params(
        ("since" = Option<String>, Query, description = "Start: RFC 3339 or a duration before now; default `24h`"),
        ("until" = Option<String>, Query, description = "End: RFC 3339 or a duration before now; default now"),
        ("virtual_server" = Option<String>, Query, description = "Only this virtual server")),
    responses((status = 200, body = VirtualServerUsageList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn virtual_servers(
    State(state): State<AppState>,
    q: Query,
) -> Result<Json<VirtualServerUsageList>, ApiError> {
    q.check(&["since", "until", "virtual_server"])?;
    let (since, until) = window(&q)?;
    let usage = usage(&state)?;
    let w = filter(since, until, q.str("virtual_server"), None);
    let totals = usage.store.tool_totals(&w).await?;
    let counters = usage.store.vs_totals(&w).await?;
    let mut items = report::virtual_server_usage(&totals, &counters);
    items.sort_by(|a, b| {
        b.calls
            .cmp(&a.calls)
            .then_with(|| a.virtual_server.cmp(&b.virtual_server))
    });
    Ok(Json(VirtualServerUsageList {
        since,
        until,
        items,
    }))
}

/// The same per token and virtual server: calls, errors, refusals and p50/p95/p99 latency of
/// each caller, with the token's name. Only tokens the policy lists as callers of the virtual server are counted
/// (`--caller-stats-limit` per virtual server, the newest live tokens); calls of other tokens are
/// in the per-tool and per-virtual-server numbers only.
#[utoipa::path(get, path = "/v1/usage/tokens", tag = "usage",
    params(
        ("since" = Option<String>, Query, description = "Start: RFC 3339 or a duration before now (`30m`, `24h`, `7d`); default `24h`"),
        ("until" = Option<String>, Query, description = "End: RFC 3339 or a duration before now; default now"),
        ("virtual_server" = Option<String>, Query, description = "Only this virtual server"),
        ("token" = Option<String>, Query, description = "Only this token id (`tok_…`, as in `GET /v1/tokens`)"),
        ("sort" = Option<String>, Query, description = "`calls` (default), `errors`, `denied`, `p99` or `last_seen`"),
        ("order" = Option<String>, Query, description = "`desc` (default) or `asc`; entries without a value come last")),
    responses((status = 200, body = TokenUsageList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn tokens(
    State(state): State<AppState>,
    q: Query,
) -> Result<Json<TokenUsageList>, ApiError> {
    q.check(&["since", "until", "virtual_server", "token", "sort", "order"])?;
    let (since, until) = window(&q)?;
    let (sort, descending) = sorting(
        &q,
        TokenSortKey::Calls,
        TokenSortKey::parse,
        TokenSortKey::NAMES,
    )?;
    let usage = usage(&state)?;
    let totals = usage
        .store
        .token_totals(&WindowFilter {
            token: q.str("token"),
            ..filter(since, until, q.str("virtual_server"), None)
        })
        .await?;
    let names = state.store.token_names().await?;
    let mut items = report::token_usage(&totals, &names);
    report::sort_tokens(&mut items, sort, descending);
    Ok(Json(TokenUsageList {
        since,
        until,
        items,
    }))
}

/// Tools exposed by a virtual server but not called in the window, tools no virtual server
/// exposes, and possible duplicates across MCP servers.
#[utoipa::path(get, path = "/v1/usage/unused", tag = "usage",
    params(
        ("since" = Option<String>, Query, description = "Start: RFC 3339 or a duration before now; default `24h`"),
        ("until" = Option<String>, Query, description = "End: RFC 3339 or a duration before now; default now")),
    responses((status = 200, body = UnusedReport), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(super) async fn unused(
    State(state): State<AppState>,
    q: Query,
) -> Result<Json<UnusedReport>, ApiError> {
    q.check(&["since", "until"])?;
    let (since, until) = window(&q)?;
    let usage = usage(&state)?;
    let window = usage
        .store
        .tool_totals(&filter(since, until, None, None))
        .await?;
    let ever = usage
        .store
        .tool_totals(&WindowFilter {
            since: i64::MIN / 2,
            until: i64::MAX / 2,
            ..Default::default()
        })
        .await?;
    let dump = state.store.dump().await?;
    let tools = all_tools(&state).await?;
    Ok(Json(report::unused_report(
        since, until, &window, &ever, &dump, &tools,
    )))
}

async fn all_tools(state: &AppState) -> Result<Vec<ItemRecord>, ApiError> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = state
            .store
            .list_items(
                ItemKind::Tool,
                &ItemFilter::default(),
                &PageRequest { limit: 500, cursor },
            )
            .await?;
        out.extend(page.items);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}

/// `/metrics`: the control plane's xDS and catalog metrics (`envoys::metrics`) followed by the
/// usage ingestion counters.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    let usage = state.usage.as_ref().map(Usage::prometheus_text);
    let base = super::envoys::metrics(State(state)).await.into_response();
    let Some(extra) = usage else {
        return base;
    };
    let (mut parts, body) = base.into_parts();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    match axum::body::to_bytes(body, 16 * 1024 * 1024).await {
        Ok(bytes) => {
            let mut text = String::from_utf8_lossy(&bytes).into_owned();
            text.push_str(&extra);
            Response::from_parts(parts, axum::body::Body::from(text))
        }
        Err(e) => ApiError::internal(&e).into_response(),
    }
}
