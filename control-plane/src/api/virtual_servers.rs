//! `/v1/virtual-servers`: curated MCP endpoints composed from catalog items.
//!
//! Members are chosen by reference (`{mcp_server, tool, expose_as?}`). Validation happens in two
//! steps and names the offending item either way: the shape (slugs, MCP names, exposed names by
//! the rule of [`crate::naming`]: an `expose_as` must be unique, and unaliased tools or prompts
//! that several member MCP servers offer under the same name are exposed as
//! `{mcp_server}__{name}`) here, without the database; the references (unknown MCP server or
//! item, disabled, removed upstream) in the store, inside the write transaction, so a virtual
//! server is never stored half-valid.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, Query};
use super::mcp_servers::{check_description, check_slug};
use super::{AppState, ListResponse};
use crate::naming::{NameProblem, NameRef, exposed_names};
use crate::store::{ItemKind, MemberRef, VirtualServerInput, VirtualServerRecord};

/// Most members of one kind in one virtual server.
const MAX_MEMBERS: usize = 10_000;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/virtual-servers", get(list).post(create))
        .route(
            "/virtual-servers/{name}",
            get(show).put(replace).delete(delete),
        )
}

/// A tool member.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolRef {
    /// The MCP server.
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub mcp_server: String,
    /// The tool's upstream name.
    #[schema(pattern = r"^[A-Za-z0-9_./-]{1,128}$")]
    pub tool: String,
    /// Expose it under another name (MCP naming rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[A-Za-z0-9_./-]{1,128}$")]
    pub expose_as: Option<String>,
}

/// A prompt member.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromptRef {
    /// The MCP server.
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub mcp_server: String,
    /// The prompt's upstream name.
    #[schema(pattern = r"^[A-Za-z0-9_./-]{1,128}$")]
    pub prompt: String,
    /// Expose it under another name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[A-Za-z0-9_./-]{1,128}$")]
    pub expose_as: Option<String>,
}

/// A static resource member.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceRef {
    /// The MCP server.
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub mcp_server: String,
    /// The resource URI.
    #[schema(min_length = 1)]
    pub uri: String,
}

/// A resource template member.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateRef {
    /// The MCP server.
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub mcp_server: String,
    /// The URI template.
    #[schema(min_length = 1)]
    pub uri_template: String,
}

/// Create (POST, `name` required) or replace (PUT, `name` optional and must match) a virtual
/// server. Lists omitted are empty.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VirtualServerBody {
    /// Unique slug; the MCP endpoint is `/servers/{name}/mcp`. Required on POST; on PUT optional
    /// and equal to the path's name.
    #[serde(default)]
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub name: Option<String>,
    /// Free text.
    #[serde(default)]
    #[schema(max_length = 2000)]
    pub description: Option<String>,
    /// Accept MCP requests without a token (default false: every request needs a token that
    /// lists this virtual server).
    #[serde(default)]
    pub anonymous: bool,
    /// Tools.
    #[serde(default)]
    pub tools: Vec<ToolRef>,
    /// Prompts.
    #[serde(default)]
    pub prompts: Vec<PromptRef>,
    /// Static resources.
    #[serde(default)]
    pub resources: Vec<ResourceRef>,
    /// Resource templates.
    #[serde(default)]
    pub resource_templates: Vec<TemplateRef>,
}

/// A member as shown: the reference, the exposed name, and whether the gateway serves it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberView {
    /// The MCP server.
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub mcp_server: String,
    /// Tools: the upstream name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// Prompts: the upstream name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// Resources: the URI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Templates: the URI template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri_template: Option<String>,
    /// The rename, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose_as: Option<String>,
    /// Tools and prompts: the name clients see: `expose_as`, else the upstream name, else, when
    /// another member MCP server offers the same name, `{mcp_server}__{name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_name: Option<String>,
    /// Served now: the item is enabled, still offered upstream (and its name is not taken by
    /// another member, which only a catalog written under an older rule can hold).
    pub active: bool,
    /// The upstream definition changed; the accepted one is served until accepted.
    pub drifted: bool,
}

/// A virtual server as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VirtualServerView {
    /// Unique slug.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Where MCP clients connect.
    pub mcp_url: String,
    /// Accepts MCP requests without a token.
    pub anonymous: bool,
    /// Tools.
    pub tools: Vec<MemberView>,
    /// Prompts.
    pub prompts: Vec<MemberView>,
    /// Static resources.
    pub resources: Vec<MemberView>,
    /// Resource templates.
    pub resource_templates: Vec<MemberView>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

fn view(state: &AppState, r: VirtualServerRecord) -> VirtualServerView {
    let mut v = VirtualServerView {
        mcp_url: state.mcp_url(&r.name),
        name: r.name,
        description: r.description,
        anonymous: r.anonymous,
        tools: Vec::new(),
        prompts: Vec::new(),
        resources: Vec::new(),
        resource_templates: Vec::new(),
        created_at: r.created_at,
        updated_at: r.updated_at,
    };
    let names = crate::naming::served_names(&v.name, &r.members);
    for (m, name) in r.members.into_iter().zip(names) {
        let mut mv = MemberView {
            mcp_server: m.mcp_server.clone(),
            tool: None,
            prompt: None,
            uri: None,
            uri_template: None,
            expose_as: m.expose_as.clone(),
            exposed_name: None,
            active: m.active() && name.is_some(),
            drifted: m.drifted,
        };
        match m.kind {
            ItemKind::Tool => {
                mv.exposed_name = name;
                mv.tool = Some(m.item);
                v.tools.push(mv);
            }
            ItemKind::Prompt => {
                mv.exposed_name = name;
                mv.prompt = Some(m.item);
                v.prompts.push(mv);
            }
            ItemKind::Resource => {
                mv.uri = Some(m.item);
                v.resources.push(mv);
            }
            ItemKind::ResourceTemplate => {
                mv.uri_template = Some(m.item);
                v.resource_templates.push(mv);
            }
        }
    }
    v
}

/// Check the shape of a body and turn it into the store's input.
pub fn validate(name: String, body: VirtualServerBody) -> Result<VirtualServerInput, ApiError> {
    check_slug("name", &name)?;
    let description = check_description(&body.description)?;
    let named = |field: &'static str,
                 item_field: &'static str,
                 kind: &str,
                 refs: Vec<(String, String, Option<String>)>|
     -> Result<Vec<MemberRef>, ApiError> {
        if refs.len() > MAX_MEMBERS {
            return Err(ApiError::validation(
                field,
                format!("{field}: at most {MAX_MEMBERS} entries"),
            ));
        }
        let mut out = Vec::with_capacity(refs.len());
        for (i, (mcp_server, item, expose_as)) in refs.into_iter().enumerate() {
            let at = format!("{field}[{i}]");
            check_slug(&format!("{at}.mcp_server"), &mcp_server)
                .map_err(|_| unknown_server(&at, &mcp_server))?;
            if !toolmesh_proto::is_mcp_name(&item) {
                return Err(ApiError::validation(
                    format!("{at}.{item_field}"),
                    format!(
                        "{at}: {kind} name {item:?} is outside the MCP naming rules (1-128 characters of A-Z, a-z, 0-9, '_', '-', '.', '/') and cannot be routed"
                    ),
                ));
            }
            if let Some(e) = &expose_as
                && !toolmesh_proto::is_mcp_name(e)
            {
                return Err(ApiError::validation(
                    format!("{at}.expose_as"),
                    format!(
                        "{at}: expose_as {e:?} is outside the MCP naming rules (1-128 characters of A-Z, a-z, 0-9, '_', '-', '.', '/')"
                    ),
                ));
            }
            out.push(MemberRef {
                mcp_server,
                item,
                expose_as,
            });
        }
        check_exposed_names(field, item_field, kind, &out)?;
        Ok(out)
    };
    let by_uri = |field: &'static str,
                  item_field: &'static str,
                  refs: Vec<(String, String)>|
     -> Result<Vec<MemberRef>, ApiError> {
        if refs.len() > MAX_MEMBERS {
            return Err(ApiError::validation(
                field,
                format!("{field}: at most {MAX_MEMBERS} entries"),
            ));
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::with_capacity(refs.len());
        for (i, (mcp_server, item)) in refs.into_iter().enumerate() {
            let at = format!("{field}[{i}]");
            check_slug(&format!("{at}.mcp_server"), &mcp_server)
                .map_err(|_| unknown_server(&at, &mcp_server))?;
            if item.is_empty() {
                return Err(ApiError::validation(
                    format!("{at}.{item_field}"),
                    format!("{at}: {item_field} must not be empty"),
                ));
            }
            if let Some(first) = seen.insert(item.clone(), i) {
                return Err(ApiError::validation(
                    format!("{at}.{item_field}"),
                    format!("{at}: duplicate {item_field} '{item}' (also {field}[{first}])"),
                ));
            }
            out.push(MemberRef {
                mcp_server,
                item,
                expose_as: None,
            });
        }
        Ok(out)
    };
    Ok(VirtualServerInput {
        name,
        description,
        anonymous: body.anonymous,
        tools: named(
            "tools",
            "tool",
            "tool",
            body.tools
                .into_iter()
                .map(|t| (t.mcp_server, t.tool, t.expose_as))
                .collect(),
        )?,
        prompts: named(
            "prompts",
            "prompt",
            "prompt",
            body.prompts
                .into_iter()
                .map(|t| (t.mcp_server, t.prompt, t.expose_as))
                .collect(),
        )?,
        resources: by_uri(
            "resources",
            "uri",
            body.resources
                .into_iter()
                .map(|r| (r.mcp_server, r.uri))
                .collect(),
        )?,
        resource_templates: by_uri(
            "resource_templates",
            "uri_template",
            body.resource_templates
                .into_iter()
                .map(|r| (r.mcp_server, r.uri_template))
                .collect(),
        )?,
    })
}

/// Refuse a member list whose exposed names [`crate::naming`] cannot give (an `expose_as` taken
/// twice or equal to another member's name, the same item twice without a rename, a qualified
/// name outside the MCP rules), naming the member and its field.
fn check_exposed_names(
    field: &str,
    item_field: &str,
    kind: &str,
    refs: &[MemberRef],
) -> Result<(), ApiError> {
    let named: Vec<NameRef<'_>> = refs
        .iter()
        .map(|r| NameRef {
            mcp_server: &r.mcp_server,
            item: &r.item,
            expose_as: r.expose_as.as_deref(),
        })
        .collect();
    for (i, name) in exposed_names(&named).into_iter().enumerate() {
        let problem = match name {
            Ok(_) => continue,
            Err(p) => p,
        };
        let r = &refs[i];
        return Err(match problem {
            NameProblem::Taken { name, by, by_alias } => {
                // Blame an alias (the member that chose the name) over a derived name, the later
                // member over the earlier one.
                let (at, other) = if by_alias && r.expose_as.is_none() {
                    (by, i)
                } else {
                    (i, by)
                };
                let f = if refs[at].expose_as.is_some() {
                    "expose_as"
                } else {
                    item_field
                };
                ApiError::validation(
                    format!("{field}[{at}].{f}"),
                    format!(
                        "{field}[{at}]: duplicate exposed {kind} name '{name}' (also {field}[{other}]); use expose_as to rename one"
                    ),
                )
            }
            NameProblem::Invalid { name, qualified } => {
                let at = format!("{field}[{i}]");
                let (f, why) = if qualified {
                    (
                        item_field,
                        format!(
                            "{kind} '{}' of mcp server '{}' is also offered by another member, so it would be exposed as {name:?}",
                            r.item, r.mcp_server
                        ),
                    )
                } else if r.expose_as.is_some() {
                    ("expose_as", format!("expose_as {name:?}"))
                } else {
                    (item_field, format!("{kind} name {name:?}"))
                };
                ApiError::validation(
                    format!("{at}.{f}"),
                    format!(
                        "{at}: {why}, which is outside the MCP naming rules (1-128 characters of A-Z, a-z, 0-9, '_', '-', '.', '/'); use expose_as to name it"
                    ),
                )
            }
        });
    }
    Ok(())
}

fn unknown_server(at: &str, name: &str) -> ApiError {
    ApiError::validation(
        format!("{at}.mcp_server"),
        format!("{at}: unknown mcp server '{name}'"),
    )
}

/// The POST body: like [`VirtualServerBody`] with `name` required (schema only).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CreateVirtualServer {
    /// Unique slug; the MCP endpoint is `/servers/{name}/mcp`.
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    name: String,
    /// Free text.
    #[schema(max_length = 2000)]
    description: Option<String>,
    /// Accept MCP requests without a token (default false).
    anonymous: Option<bool>,
    /// Tools.
    tools: Option<Vec<ToolRef>>,
    /// Prompts.
    prompts: Option<Vec<PromptRef>>,
    /// Static resources.
    resources: Option<Vec<ResourceRef>>,
    /// Resource templates.
    resource_templates: Option<Vec<TemplateRef>>,
}

/// Create a virtual server.
#[utoipa::path(post, path = "/v1/virtual-servers", tag = "virtual-servers", request_body = CreateVirtualServer,
    responses((status = 201, body = VirtualServerView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn create(
    State(state): State<AppState>,
    ApiJson(mut body): ApiJson<VirtualServerBody>,
) -> Result<(StatusCode, Json<VirtualServerView>), ApiError> {
    let Some(name) = body.name.take() else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            "name: missing field `name`",
            Some("name".into()),
        ));
    };
    let input = validate(name, body)?;
    let rec = state.store.create_virtual_server(&input).await?;
    Ok((StatusCode::CREATED, Json(view(&state, rec))))
}

/// List virtual servers by name.
#[utoipa::path(get, path = "/v1/virtual-servers", tag = "virtual-servers",
    params(("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Page size, 1-500 (default 50)"),
           ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page")),
    responses((status = 200, body = ListResponse<VirtualServerView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub(super) async fn list(
    State(state): State<AppState>,
    q: Query,
) -> Result<Json<ListResponse<VirtualServerView>>, ApiError> {
    q.check(&["limit", "cursor"])?;
    let page = state.store.list_virtual_servers(&q.page()?).await?;
    Ok(Json(ListResponse {
        items: page.items.into_iter().map(|r| view(&state, r)).collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Show a virtual server and its MCP endpoint URL.
#[utoipa::path(get, path = "/v1/virtual-servers/{name}", tag = "virtual-servers",
    params(("name" = String, Path, description = "Virtual server name")),
    responses((status = 200, body = VirtualServerView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn show(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<VirtualServerView>, ApiError> {
    let rec = state.store.get_virtual_server(&name).await?;
    Ok(Json(view(&state, rec)))
}

/// Replace a virtual server's description and members.
#[utoipa::path(put, path = "/v1/virtual-servers/{name}", tag = "virtual-servers", request_body = VirtualServerBody,
    params(("name" = String, Path, description = "Virtual server name")),
    responses((status = 200, body = VirtualServerView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub(super) async fn replace(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiJson(mut body): ApiJson<VirtualServerBody>,
) -> Result<Json<VirtualServerView>, ApiError> {
    if let Some(n) = body.name.take()
        && n != name
    {
        return Err(ApiError::validation(
            "name",
            format!("name: {n:?} differs from the path's {name:?}; renaming is not supported"),
        ));
    }
    // A name that cannot exist is a 404, like any other unknown virtual server.
    if !toolmesh_proto::is_slug(&name) {
        return Err(ApiError::not_found(format!(
            "virtual server '{name}' not found"
        )));
    }
    let input = validate(name, body)?;
    let rec = state.store.replace_virtual_server(&input).await?;
    Ok(Json(view(&state, rec)))
}

/// Delete a virtual server.
#[utoipa::path(delete, path = "/v1/virtual-servers/{name}", tag = "virtual-servers",
    params(("name" = String, Path, description = "Virtual server name")),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(super) async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.store.delete_virtual_server(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
