//! `/v1/tokens`, `/v1/keys` and the public `/.well-known/jwks.json`: tokens scoped to virtual
//! servers, and the keys that sign them.
//!
//! A token is shown exactly once, in the answer to its creation; the store keeps only its id and
//! metadata. Revoking (`DELETE`) bumps the catalog version, so the revoked id reaches every Envoy
//! with the next policy push. The JWKS is public (like any OAuth JWKS): it holds public keys only.

use std::collections::HashSet;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, Query};
use super::mcp_servers::check_description;
use super::{AppState, ListResponse};
use crate::store::TokenRecord;
use crate::tokens::{self, ALL_VIRTUAL_SERVERS, IssueRequest, MAX_EXPIRES_IN, TokenError};

/// Most virtual servers or CIDRs in one token.
const MAX_SCOPE: usize = 1000;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/tokens", get(list).post(create))
        .route("/tokens/{id}", get(show).delete(revoke))
        .route("/keys", get(list_keys))
        .route("/keys/rotate", post(rotate))
}

/// Issue a token.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Who or what holds the token (an agent, a team); becomes the JWT `sub`.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// Virtual servers the token opens, or `["*"]` for all.
    #[schema(min_items = 1)]
    pub virtual_servers: Vec<String>,
    /// Lifetime in seconds (1 to 10 years); omitted: the token does not expire.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 315360000)]
    pub expires_in: Option<u64>,
    /// Source networks the token may be used from (`10.0.0.0/8`, `2001:db8::/32`, or one
    /// address); omitted or empty: anywhere.
    #[serde(default)]
    pub source_cidrs: Vec<String>,
    /// Free text.
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: Option<String>,
}

/// A token's metadata (never the token itself).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenView {
    /// The token id (JWT `jti`).
    pub id: String,
    /// Who or what holds it.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Virtual servers it opens, or `["*"]`.
    pub virtual_servers: Vec<String>,
    /// Source networks it may be used from (empty: anywhere).
    pub source_cidrs: Vec<String>,
    /// The signing key's id (JWT `kid`).
    pub kid: String,
    /// Issued.
    pub created_at: DateTime<Utc>,
    /// Expiry; `null` when it never expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked; `null` while valid.
    pub revoked_at: Option<DateTime<Utc>>,
    /// `active`, `expired` or `revoked`.
    pub status: String,
}

/// The answer to a creation: the token, shown only now, and its metadata.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedToken {
    /// The bearer token (a JWT). Store it now: it cannot be shown again.
    pub token: String,
    /// The metadata.
    #[serde(flatten)]
    pub meta: TokenView,
}

/// A signing key's public part.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyView {
    /// Key id (JWT `kid`).
    pub kid: String,
    /// `EdDSA` (Ed25519).
    pub algorithm: String,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// When a newer key took over signing; `null` for the active key.
    pub retired_at: Option<DateTime<Utc>>,
    /// Signs new tokens.
    pub active: bool,
}

fn view(r: TokenRecord) -> TokenView {
    let status = if r.revoked_at.is_some() {
        "revoked"
    } else if r.token.expires_at.is_some_and(|e| e <= Utc::now()) {
        "expired"
    } else {
        "active"
    };
    TokenView {
        id: r.token.id,
        name: r.token.name,
        description: r.token.description,
        virtual_servers: r.token.virtual_servers,
        source_cidrs: r.token.source_cidrs,
        kid: r.token.kid,
        created_at: r.token.created_at,
        expires_at: r.token.expires_at,
        revoked_at: r.revoked_at,
        status: status.into(),
    }
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Store(s) => s.into(),
            other => ApiError::internal(&other),
        }
    }
}

/// Check a creation request; errors name the field.
pub fn validate(body: CreateToken) -> Result<IssueRequest, ApiError> {
    let name = body.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return Err(ApiError::validation(
            "name",
            "name: 1-200 characters without control characters",
        ));
    }
    let description = check_description(&body.description)?;
    if body.virtual_servers.is_empty() {
        return Err(ApiError::validation(
            "virtual_servers",
            "virtual_servers: list at least one virtual server, or [\"*\"] for all",
        ));
    }
    if body.virtual_servers.len() > MAX_SCOPE {
        return Err(ApiError::validation(
            "virtual_servers",
            format!("virtual_servers: at most {MAX_SCOPE} entries"),
        ));
    }
    let mut seen = HashSet::new();
    for (i, vs) in body.virtual_servers.iter().enumerate() {
        let at = format!("virtual_servers[{i}]");
        if vs == ALL_VIRTUAL_SERVERS {
            if body.virtual_servers.len() > 1 {
                return Err(ApiError::validation(
                    at.clone(),
                    format!("{at}: \"*\" (every virtual server) must be the only entry"),
                ));
            }
        } else if !toolmesh_proto::is_slug(vs) {
            return Err(ApiError::validation(
                at.clone(),
                format!("{at}: unknown virtual server {vs:?} (not a valid name)"),
            ));
        }
        if !seen.insert(vs) {
            return Err(ApiError::validation(
                at.clone(),
                format!("{at}: '{vs}' is listed twice"),
            ));
        }
    }
    let expires_in = match body.expires_in {
        None => None,
        Some(s) if (1..=MAX_EXPIRES_IN).contains(&s) => Some(Duration::from_secs(s)),
        Some(s) => {
            return Err(ApiError::validation(
                "expires_in",
                format!(
                    "expires_in: {s} is not a lifetime from 1 to {MAX_EXPIRES_IN} seconds (omit it for a token that does not expire)"
                ),
            ));
        }
    };
    if body.source_cidrs.len() > MAX_SCOPE {
        return Err(ApiError::validation(
            "source_cidrs",
            format!("source_cidrs: at most {MAX_SCOPE} entries"),
        ));
    }
    let mut source_cidrs = Vec::with_capacity(body.source_cidrs.len());
    for (i, c) in body.source_cidrs.iter().enumerate() {
        let at = format!("source_cidrs[{i}]");
        let Some(net) = tokens::parse_cidr(c) else {
            return Err(ApiError::validation(
                at.clone(),
                format!("{at}: {c:?} is not a CIDR (10.0.0.0/8, 2001:db8::/32) or an IP address"),
            ));
        };
        if !source_cidrs.contains(&net) {
            source_cidrs.push(net);
        }
    }
    Ok(IssueRequest {
        name,
        description,
        virtual_servers: body.virtual_servers,
        source_cidrs,
        expires_in,
    })
}

/// Issue a token scoped to virtual servers. The answer is the only time the token is shown.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = CreateToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn create(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let req = validate(body)?;
    let (token, rec) = tokens::issue(&state.store, &state.key, &req).await?;
    tracing::info!(id = %rec.token.id, name = %rec.token.name, virtual_servers = ?rec.token.virtual_servers, "token issued");
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token,
            meta: view(rec),
        }),
    ))
}

/// List tokens in issue order (metadata only).
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Page size, 1-500 (default 50)"),
           ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses((status = 200, body = ListResponse<TokenView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn list(
    State(state): State<AppState>,
    q: Query,
) -> Result<Json<ListResponse<TokenView>>, ApiError> {
    q.check(&["limit", "cursor"])?;
    let page = state.store.list_tokens(&q.page()?).await?;
    Ok(Json(ListResponse {
        items: page.items.into_iter().map(view).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Show a token's metadata.
#[utoipa::path(get, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id (jti)")),
    responses((status = 200, body = TokenView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    Ok(Json(view(state.store.get_token(&id).await?)))
}

/// Revoke a token: Envoy refuses it within about a second (idempotent).
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id (jti)")),
    responses((status = 200, body = TokenView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    let rec = state.store.revoke_token(&id).await?;
    tracing::info!(id = %rec.token.id, name = %rec.token.name, "token revoked");
    Ok(Json(view(rec)))
}

/// The signing keys (public metadata).
#[utoipa::path(get, path = "/v1/keys", tag = "tokens",
    responses((status = 200, body = ListResponse<KeyView>), (status = 401, body = ErrorBody)))]
pub(super) async fn list_keys(
    State(state): State<AppState>,
) -> Result<Json<ListResponse<KeyView>>, ApiError> {
    let keys = state.store.signing_keys().await?;
    Ok(Json(ListResponse {
        items: keys
            .into_iter()
            .map(|k| KeyView {
                active: k.retired_at.is_none(),
                kid: k.kid,
                algorithm: k.algorithm,
                created_at: k.created_at,
                retired_at: k.retired_at,
            })
            .collect(),
        next_cursor: None,
    }))
}

/// Make a new signing key the active one. Tokens signed by older keys stay valid until they
/// expire (their keys stay in the JWKS while they have live tokens).
#[utoipa::path(post, path = "/v1/keys/rotate", tag = "tokens",
    responses((status = 201, body = KeyView), (status = 401, body = ErrorBody)))]
pub(super) async fn rotate(
    State(state): State<AppState>,
) -> Result<(StatusCode, Json<KeyView>), ApiError> {
    let k = tokens::rotate(&state.store, &state.key).await?;
    tracing::info!(kid = %k.kid, "token signing key rotated");
    Ok((
        StatusCode::CREATED,
        Json(KeyView {
            kid: k.kid,
            algorithm: k.algorithm,
            created_at: k.created_at,
            retired_at: None,
            active: true,
        }),
    ))
}

/// The JSON Web Key Set that verifies toolmesh tokens (public).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "tokens", security(()),
    responses((status = 200, description = "JWKS (RFC 7517)", content_type = "application/json")))]
pub(super) async fn jwks(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let set = tokens::jwks(&state.store, Utc::now()).await?;
    Ok(([(header::CACHE_CONTROL, "max-age=60")], Json(set)))
}
