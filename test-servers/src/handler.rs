//! The MCP side of the test server: one [`ServerHandler`] implementation with a fixed, known
//! catalog (tools, prompts, resources, a template) that every toolmesh test can rely on.
//!
//! The handler is written by hand against rmcp's trait rather than with the `#[tool]` macros:
//! the tests need control the macros do not give — exact pagination with opaque cursors, a tool
//! whose description and schema change at run time (schema-drift tests), and a record of every
//! tool name the upstream was asked to call, including names it does not know.

use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, GetPromptRequestParams,
    GetPromptResponse, GetPromptResult, Implementation, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse,
    ReadResourceResult, ServerCapabilities, ServerConfig, SubscribeRequestParams,
    UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RequestContext};
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::Shared;

/// Number of `long_list_NN` filler tools; with the four real tools the server lists 25 tools.
pub const FILLER_TOOLS: usize = 21;

/// Text of the static resource `test://static/readme`.
pub const README_TEXT: &str = "# toolmesh test server\n\nAn upstream MCP server for tests.\n";

/// Base64 of the static resource `test://static/logo` (a 1x1 transparent PNG).
pub const LOGO_BASE64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII=";

/// One MCP session's handler. All sessions of a server share [`Shared`] (the recorded calls,
/// the schema variant and the open sessions' peers).
#[derive(Clone)]
pub(crate) struct TestServer {
    pub(crate) shared: Arc<Shared>,
}

/// Converts a JSON literal into an rmcp model type (many of them are `#[non_exhaustive]`,
/// and the JSON form is what the tests reason about anyway).
fn from_json<T: DeserializeOwned>(value: Value) -> Result<T, ErrorData> {
    serde_json::from_value(value)
        .map_err(|e| ErrorData::internal_error(format!("test server model error: {e}"), None))
}

/// All tools, in listing order, as JSON. `variant != 0` changes `echo` (drift tests).
pub fn tool_definitions(variant: u32) -> Vec<Value> {
    let echo = if variant == 0 {
        json!({
            "name": "echo",
            "description": "Echo the message back.",
            "inputSchema": {
                "type": "object",
                "properties": {"message": {"type": "string", "description": "Text to echo"}},
                "required": ["message"]
            }
        })
    } else {
        json!({
            "name": "echo",
            "description": format!("Echo the message back, with a prefix (variant {variant})."),
            "inputSchema": {
                "type": "object",
                "properties": {
                    "message": {"type": "string", "description": "Text to echo"},
                    "prefix": {"type": "string", "description": "Prepended to the message"}
                },
                "required": ["message", "prefix"]
            }
        })
    };
    let mut tools = vec![
        echo,
        json!({
            "name": "add",
            "description": "Add two integers.",
            "inputSchema": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"]
            },
            "outputSchema": {
                "type": "object",
                "properties": {"sum": {"type": "integer"}},
                "required": ["sum"]
            }
        }),
        json!({
            "name": "slow",
            "description": "Sleep `steps` times `interval_ms`, sending a progress notification after each step.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "steps": {"type": "integer", "minimum": 0, "default": 5},
                    "interval_ms": {"type": "integer", "minimum": 0, "default": 200}
                }
            }
        }),
        json!({
            "name": "fail",
            "description": "Always fails with a tool error (isError: true).",
            "inputSchema": {"type": "object", "properties": {}}
        }),
    ];
    for n in 1..=FILLER_TOOLS {
        tools.push(json!({
            "name": format!("long_list_{n:02}"),
            "description": format!("Filler tool {n} (makes the tool list span several pages)."),
            "inputSchema": {"type": "object", "properties": {}}
        }));
    }
    tools
}

/// The `ServerCapabilities` the server declares in `initialize`, as JSON (what discovery
/// records and a hand-written policy copies into its member).
pub fn capabilities() -> Value {
    json!({
        "tools": {"listChanged": true},
        "prompts": {"listChanged": false},
        "resources": {"subscribe": true, "listChanged": false}
    })
}

/// Prompts, as JSON.
pub fn prompt_definitions() -> Vec<Value> {
    vec![
        json!({
            "name": "greet",
            "description": "Greet someone by name.",
            "arguments": [{"name": "name", "description": "Who to greet", "required": true}]
        }),
        json!({
            "name": "summarize",
            "description": "Ask for a summary of a text.",
            "arguments": [
                {"name": "text", "description": "The text to summarize", "required": true},
                {"name": "style", "description": "e.g. brief, detailed", "required": false}
            ]
        }),
    ]
}

/// Static resources, as JSON.
pub fn resource_definitions() -> Vec<Value> {
    vec![
        json!({"uri": "test://static/readme", "name": "readme", "mimeType": "text/plain",
               "description": "A static text resource."}),
        json!({"uri": "test://static/logo", "name": "logo", "mimeType": "image/png",
               "description": "A static binary resource."}),
    ]
}

/// Resource templates, as JSON.
pub fn resource_template_definitions() -> Vec<Value> {
    vec![json!({
        "uriTemplate": "test://template/{id}/data",
        "name": "data",
        "mimeType": "application/json",
        "description": "Data for an id."
    })]
}

/// Cuts one page out of `items`. The cursor is the decimal offset of the page's first item;
/// anything else is an invalid-params error (as a real server would answer).
fn page(
    items: Vec<Value>,
    request: Option<&PaginatedRequestParams>,
    page_size: usize,
) -> Result<(Vec<Value>, Option<String>), ErrorData> {
    let start = match request.and_then(|r| r.cursor.as_deref()) {
        None => 0,
        Some(cursor) => cursor
            .parse::<usize>()
            .ok()
            .filter(|&n| n <= items.len())
            .ok_or_else(|| ErrorData::invalid_params(format!("invalid cursor {cursor:?}"), None))?,
    };
    let page_size = page_size.max(1);
    let end = (start + page_size).min(items.len());
    let next = (end < items.len()).then(|| end.to_string());
    Ok((items[start..end].to_vec(), next))
}

fn paged_result<T: DeserializeOwned>(
    key: &str,
    (items, next): (Vec<Value>, Option<String>),
) -> Result<T, ErrorData> {
    let mut result = Map::new();
    result.insert("resultType".into(), json!("complete"));
    result.insert(key.into(), Value::Array(items));
    if let Some(next) = next {
        result.insert("nextCursor".into(), json!(next));
    }
    from_json(Value::Object(result))
}

fn int_arg(args: &Map<String, Value>, name: &str) -> Result<Option<i64>, ErrorData> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| ErrorData::invalid_params(format!("`{name}` must be an integer"), None)),
    }
}

fn str_arg<'a>(args: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    args.get(name).and_then(Value::as_str)
}

impl TestServer {
    async fn slow(
        &self,
        args: &Map<String, Value>,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let steps = int_arg(args, "steps")?.unwrap_or(5).clamp(0, 10_000) as u64;
        let interval = int_arg(args, "interval_ms")?
            .unwrap_or(200)
            .clamp(0, 600_000) as u64;
        let token = context.meta.get_progress_token();
        for step in 1..=steps {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(interval)) => {}
                _ = context.ct.cancelled() => {
                    return Ok(CallToolResult::error(vec![ContentBlock::text("cancelled")]));
                }
            }
            if let Some(token) = &token {
                let param = ProgressNotificationParam::new(token.clone(), step as f64)
                    .with_total(steps as f64)
                    .with_message(format!("step {step} of {steps}"));
                if let Err(e) = context.peer.notify_progress(param).await {
                    tracing::warn!(error = %e, "could not send a progress notification");
                }
            }
        }
        Ok(CallToolResult::success(vec![ContentBlock::text(format!(
            "done after {steps} steps"
        ))]))
    }
}

/// The versions of a server built before protocol 2026-07-28
/// ([`crate::TestServerConfig::handshake_only`]).
const HANDSHAKE_VERSIONS: &[ProtocolVersion] = &[
    ProtocolVersion::V_2025_11_25,
    ProtocolVersion::V_2025_06_18,
    ProtocolVersion::V_2025_03_26,
    ProtocolVersion::V_2024_11_05,
];

impl ServerHandler for TestServer {
    fn get_info(&self) -> ServerConfig {
        let capabilities: ServerCapabilities =
            serde_json::from_value(capabilities()).unwrap_or_default();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new(
                "toolmesh-test-server",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions("An upstream MCP server for toolmesh's tests.")
    }

    fn supported_protocol_versions(&self) -> std::borrow::Cow<'static, [ProtocolVersion]> {
        if self.shared.config.handshake_only {
            std::borrow::Cow::Borrowed(HANDSHAKE_VERSIONS)
        } else {
            std::borrow::Cow::Borrowed(ProtocolVersion::KNOWN_VERSIONS)
        }
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        self.shared.add_peer(context.peer);
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let tools = tool_definitions(self.shared.variant());
        paged_result(
            "tools",
            page(tools, request.as_ref(), self.shared.config.page_size)?,
        )
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        self.shared.record_call(&name);
        let args = request.arguments.unwrap_or_default();
        let result = match name.as_str() {
            "echo" => {
                let message = str_arg(&args, "message")
                    .ok_or_else(|| ErrorData::invalid_params("`message` is required", None))?;
                let text = match (self.shared.variant(), str_arg(&args, "prefix")) {
                    (v, Some(prefix)) if v != 0 => format!("{prefix}{message}"),
                    _ => message.to_owned(),
                };
                CallToolResult::success(vec![ContentBlock::text(text)])
            }
            "add" => {
                let a = int_arg(&args, "a")?
                    .ok_or_else(|| ErrorData::invalid_params("`a` is required", None))?;
                let b = int_arg(&args, "b")?
                    .ok_or_else(|| ErrorData::invalid_params("`b` is required", None))?;
                let sum = a
                    .checked_add(b)
                    .ok_or_else(|| ErrorData::invalid_params("sum overflows", None))?;
                CallToolResult::structured(json!({ "sum": sum }))
            }
            "slow" => self.slow(&args, &context).await?,
            "fail" => CallToolResult::error(vec![ContentBlock::text("the fail tool always fails")]),
            filler if filler.starts_with("long_list_") && self.knows_tool(filler) => {
                CallToolResult::success(vec![ContentBlock::text(format!("{filler} called"))])
            }
            other => {
                return Err(ErrorData::invalid_params(
                    format!("unknown tool: {other}"),
                    None,
                ));
            }
        };
        Ok(result.into())
    }

    async fn list_prompts(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        paged_result(
            "prompts",
            page(
                prompt_definitions(),
                request.as_ref(),
                self.shared.config.page_size,
            )?,
        )
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        let (description, text) = match request.name.as_str() {
            "greet" => {
                let name = str_arg(&args, "name").ok_or_else(|| {
                    ErrorData::invalid_params("argument `name` is required", None)
                })?;
                ("A greeting", format!("Hello, {name}!"))
            }
            "summarize" => {
                let text = str_arg(&args, "text").ok_or_else(|| {
                    ErrorData::invalid_params("argument `text` is required", None)
                })?;
                let style = str_arg(&args, "style").unwrap_or("brief");
                ("A summary request", format!("Summarize ({style}): {text}"))
            }
            other => {
                return Err(ErrorData::invalid_params(
                    format!("unknown prompt: {other}"),
                    None,
                ));
            }
        };
        let result: GetPromptResult = from_json(json!({
            "resultType": "complete",
            "description": description,
            "messages": [{"role": "user", "content": {"type": "text", "text": text}}]
        }))?;
        Ok(result.into())
    }

    async fn list_resources(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        paged_result(
            "resources",
            page(
                resource_definitions(),
                request.as_ref(),
                self.shared.config.page_size,
            )?,
        )
    }

    async fn list_resource_templates(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        paged_result(
            "resourceTemplates",
            page(
                resource_template_definitions(),
                request.as_ref(),
                self.shared.config.page_size,
            )?,
        )
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let uri = request.uri;
        let contents = match uri.as_str() {
            "test://static/readme" => {
                json!({"uri": uri, "mimeType": "text/plain", "text": README_TEXT})
            }
            "test://static/logo" => {
                json!({"uri": uri, "mimeType": "image/png", "blob": LOGO_BASE64})
            }
            _ => match uri
                .strip_prefix("test://template/")
                .and_then(|rest| rest.strip_suffix("/data"))
                .filter(|id| !id.is_empty() && !id.contains('/'))
            {
                Some(id) => json!({
                    "uri": uri,
                    "mimeType": "application/json",
                    "text": json!({"id": id}).to_string()
                }),
                None => {
                    return Err(ErrorData::resource_not_found(
                        format!("no resource {uri}"),
                        Some(json!({"uri": uri})),
                    ));
                }
            },
        };
        let result: ReadResourceResult =
            from_json(json!({"resultType": "complete", "contents": [contents]}))?;
        Ok(result.into())
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        tracing::debug!(uri = %request.uri, "subscribe");
        Ok(())
    }

    #[allow(deprecated)]
    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        tracing::debug!(uri = %request.uri, "unsubscribe");
        Ok(())
    }
}

impl TestServer {
    fn knows_tool(&self, name: &str) -> bool {
        tool_definitions(0)
            .iter()
            .any(|t| t.get("name").and_then(Value::as_str) == Some(name))
    }
}
