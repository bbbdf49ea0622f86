//! The conformance server's [`ServerHandler`]: one instance per MCP session.
//!
//! Written by hand against rmcp's trait (like the other test server) because several fixtures
//! need what the macros do not give: raw JSON schemas kept verbatim (`$schema`, `$defs`),
//! elicitation schemas with every SEP-1330 enum shape, and access to the session layer for
//! `test_reconnection`.

// Logging, sampling and the logging level type are deprecated by SEP-2577 (protocol 2026-07-28),
// but they are exactly what the conformance scenarios for 2025-06-18 and 2025-11-25 test.
#![allow(deprecated)]

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CompleteRequestParams, CompleteResult,
    ContentBlock, CreateMessageRequestParams, ElicitRequestParams, GetPromptRequestParams,
    GetPromptResponse, GetPromptResult, Implementation, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult,
    LoggingMessageNotificationParam, PaginatedRequestParams, ProgressNotificationParam,
    ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult, ServerCapabilities,
    ServerConfig, SetLevelRequestParams, SubscribeRequestParams, UnsubscribeRequestParams,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::fixtures::{self, COMPLETIONS, ERROR_TEXT, IMAGE_PNG_BASE64};
use super::sessions::{ConformanceSessions, StreamId};
use super::{AUDIO_WAV_BASE64, RECONNECTION_WAIT, SERVER_NAME, SSE_RETRY};

/// Severity ranks of the MCP log levels, lowest first (RFC 5424 order).
const LEVELS: &[&str] = &[
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

fn level_rank(level: &str) -> u8 {
    LEVELS
        .iter()
        .position(|l| *l == level)
        .and_then(|p| u8::try_from(p).ok())
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Converts a JSON literal into an rmcp model type (most are `#[non_exhaustive]`, and the JSON
/// form is what the scenarios check).
fn from_json<T: DeserializeOwned>(value: Value) -> Result<T, ErrorData> {
    serde_json::from_value(value).map_err(|e| {
        ErrorData::internal_error(format!("conformance server model error: {e}"), None)
    })
}

/// [`from_json`] for a result: tagged `resultType: "complete"` like rmcp's own constructors do
/// (required at protocol 2026-07-28; rmcp strips it for older peers).
fn result_json<T: DeserializeOwned>(mut value: Value) -> Result<T, ErrorData> {
    if let Some(o) = value.as_object_mut() {
        o.insert("resultType".into(), json!("complete"));
    }
    from_json(value)
}

fn text_result(text: impl Into<String>) -> CallToolResult {
    CallToolResult::success(vec![ContentBlock::text(text)])
}

/// One session's handler.
pub(crate) struct ConformanceServer {
    sessions: Arc<ConformanceSessions>,
    /// The lowest level `notifications/message` are sent at (`logging/setLevel`).
    min_level: AtomicU8,
    /// URIs the client subscribed to.
    subscriptions: Mutex<BTreeSet<String>>,
}

impl ConformanceServer {
    pub(crate) fn new(sessions: Arc<ConformanceSessions>) -> Self {
        Self {
            sessions,
            min_level: AtomicU8::new(0),
            subscriptions: Mutex::default(),
        }
    }

    async fn log(&self, context: &RequestContext<RoleServer>, level: &str, message: &str) {
        if level_rank(level) < self.min_level.load(Ordering::SeqCst) {
            return;
        }
        let param: Result<LoggingMessageNotificationParam, _> = from_json(json!({
            "level": level, "logger": SERVER_NAME, "data": message
        }));
        match param {
            Ok(param) => {
                if let Err(e) = context.peer.notify_logging_message(param).await {
                    tracing::warn!(error = %e, "could not send a log notification");
                }
            }
            Err(e) => tracing::warn!(error = ?e, "bad log notification"),
        }
    }

    async fn with_logging(
        &self,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        for (i, message) in [
            "Tool execution started",
            "Tool processing data",
            "Tool execution completed",
        ]
        .into_iter()
        .enumerate()
        {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            self.log(context, "info", message).await;
        }
        Ok(text_result("Tool with logging executed successfully"))
    }

    async fn with_progress(
        &self,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let token = context.meta.get_progress_token();
        for (i, progress) in [0.0, 50.0, 100.0].into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if let Some(token) = &token {
                let param = ProgressNotificationParam::new(token.clone(), progress)
                    .with_total(100.0)
                    .with_message(format!("Completed step {progress} of 100"));
                if let Err(e) = context.peer.notify_progress(param).await {
                    tracing::warn!(error = %e, "could not send a progress notification");
                }
            }
        }
        Ok(text_result(match token {
            Some(token) => format!("Progress reported for token {}", json!(token)),
            None => "Done (no progress token given)".to_owned(),
        }))
    }

    async fn sampling(
        &self,
        args: &serde_json::Map<String, Value>,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let prompt = args
            .get("prompt")
            .and_then(Value::as_str)
            .ok_or_else(|| ErrorData::invalid_params("`prompt` is required", None))?;
        let params: CreateMessageRequestParams = from_json(json!({
            "messages": [{"role": "user", "content": {"type": "text", "text": prompt}}],
            "maxTokens": 100
        }))?;
        Ok(match context.peer.create_message(params).await {
            Ok(result) => {
                let result = serde_json::to_value(result).unwrap_or_default();
                let text = match &result["content"] {
                    Value::Array(blocks) => blocks
                        .iter()
                        .filter_map(|b| b["text"].as_str())
                        .collect::<Vec<_>>()
                        .join(" "),
                    block => block["text"].as_str().unwrap_or_default().to_owned(),
                };
                text_result(format!("LLM response: {text}"))
            }
            Err(e) => {
                CallToolResult::error(vec![ContentBlock::text(format!("Sampling failed: {e}"))])
            }
        })
    }

    async fn elicit(
        &self,
        message: &str,
        schema: Value,
        done: &str,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let params: ElicitRequestParams = from_json(json!({
            "mode": "form", "message": message, "requestedSchema": schema
        }))?;
        Ok(match context.peer.create_elicitation(params).await {
            Ok(result) => {
                let result = serde_json::to_value(result).unwrap_or_default();
                text_result(format!(
                    "{done}: action={}, content={}",
                    result["action"].as_str().unwrap_or_default(),
                    result.get("content").cloned().unwrap_or_else(|| json!({}))
                ))
            }
            Err(e) => {
                CallToolResult::error(vec![ContentBlock::text(format!("Elicitation failed: {e}"))])
            }
        })
    }

    /// SEP-1699: close this request's SSE stream (after a priming event with `retry`), wait
    /// until the client resumed it with `GET` + `Last-Event-ID`, then answer on the resumed
    /// stream.
    async fn reconnection(
        &self,
        context: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let session_id = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|parts| parts.headers.get("mcp-session-id"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let stream = context.extensions.get::<StreamId>().copied();
        let (Some(session_id), Some(StreamId(stream))) = (session_id, stream) else {
            return Ok(CallToolResult::error(vec![ContentBlock::text(
                "test_reconnection needs a session and an SSE stream",
            )]));
        };
        let Some(handle) = self.sessions.handle(&session_id).await else {
            return Err(ErrorData::internal_error("session not found", None));
        };
        let signal = self.sessions.resume_signal(&session_id);
        let resumed = signal.notified();
        tokio::pin!(resumed);
        resumed.as_mut().enable();
        handle
            .close_sse_stream(stream, Some(SSE_RETRY))
            .await
            .map_err(|e| ErrorData::internal_error(format!("closing the stream: {e}"), None))?;
        tracing::debug!(%session_id, stream, "closed the SSE stream, waiting for the resume");
        if tokio::time::timeout(RECONNECTION_WAIT, resumed)
            .await
            .is_err()
        {
            tracing::warn!(%session_id, "the client did not resume the stream");
        }
        Ok(text_result(
            "Reconnection test completed successfully: the client resumed the stream.",
        ))
    }
}

impl ServerHandler for ConformanceServer {
    fn get_info(&self) -> ServerConfig {
        let capabilities: ServerCapabilities =
            serde_json::from_value(fixtures::capabilities()).unwrap_or_default();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new(SERVER_NAME, env!("CARGO_PKG_VERSION")))
            .with_instructions("Fixtures for the official MCP conformance suite.")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        result_json(json!({"tools": fixtures::tool_definitions()}))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        let result = match request.name.as_ref() {
            "test_simple_text" => text_result("This is a simple text response for testing."),
            "test_image_content" => result_json(json!({"content": [
                {"type": "image", "data": IMAGE_PNG_BASE64, "mimeType": "image/png"}
            ]}))?,
            "test_audio_content" => result_json(json!({"content": [
                {"type": "audio", "data": AUDIO_WAV_BASE64, "mimeType": "audio/wav"}
            ]}))?,
            "test_embedded_resource" => result_json(json!({"content": [
                {"type": "resource", "resource": {
                    "uri": "test://embedded-resource",
                    "mimeType": "text/plain",
                    "text": "This is an embedded resource content."
                }}
            ]}))?,
            "test_multiple_content_types" => result_json(json!({"content": [
                {"type": "text", "text": "Multiple content types test:"},
                {"type": "image", "data": IMAGE_PNG_BASE64, "mimeType": "image/png"},
                {"type": "resource", "resource": {
                    "uri": "test://mixed-content-resource",
                    "mimeType": "application/json",
                    "text": json!({"test": "data", "value": 123}).to_string()
                }}
            ]}))?,
            "test_tool_with_logging" => self.with_logging(&context).await?,
            "test_tool_with_progress" => self.with_progress(&context).await?,
            "test_error_handling" => CallToolResult::error(vec![ContentBlock::text(ERROR_TEXT)]),
            "test_sampling" => self.sampling(&args, &context).await?,
            "test_elicitation" => {
                let message = args
                    .get("message")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ErrorData::invalid_params("`message` is required", None))?;
                self.elicit(
                    message,
                    fixtures::elicitation_schema(),
                    "User response",
                    &context,
                )
                .await?
            }
            "test_elicitation_sep1034_defaults" => {
                self.elicit(
                    "Please review and update the form fields with defaults",
                    fixtures::sep1034_schema(),
                    "Elicitation completed",
                    &context,
                )
                .await?
            }
            "test_elicitation_sep1330_enums" => {
                self.elicit(
                    "Please choose from the enum fields",
                    fixtures::sep1330_schema(),
                    "Elicitation completed",
                    &context,
                )
                .await?
            }
            "json_schema_2020_12_tool" => text_result(format!(
                "json_schema_2020_12_tool called with {}",
                Value::Object(args)
            )),
            "test_reconnection" => self.reconnection(&context).await?,
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
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        result_json(json!({"prompts": fixtures::prompt_definitions()}))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        let arg = |name: &str| {
            args.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| {
                    ErrorData::invalid_params(format!("argument `{name}` is required"), None)
                })
        };
        let (description, messages) = match request.name.as_str() {
            "test_simple_prompt" => (
                "A simple prompt",
                json!([{"role": "user", "content": {"type": "text", "text": "This is a simple prompt for testing."}}]),
            ),
            "test_prompt_with_arguments" => {
                let (arg1, arg2) = (arg("arg1")?, arg("arg2")?);
                (
                    "A prompt with arguments",
                    json!([{"role": "user", "content": {"type": "text",
                        "text": format!("Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")}}]),
                )
            }
            "test_prompt_with_embedded_resource" => {
                let uri = arg("resourceUri")?;
                (
                    "A prompt with an embedded resource",
                    json!([
                        {"role": "user", "content": {"type": "resource", "resource": {
                            "uri": uri, "mimeType": "text/plain",
                            "text": "Embedded resource content for testing."
                        }}},
                        {"role": "user", "content": {"type": "text", "text": "Please process the embedded resource above."}}
                    ]),
                )
            }
            "test_prompt_with_image" => (
                "A prompt with an image",
                json!([
                    {"role": "user", "content": {"type": "image", "data": IMAGE_PNG_BASE64, "mimeType": "image/png"}},
                    {"role": "user", "content": {"type": "text", "text": "Please analyze the image above."}}
                ]),
            ),
            other => {
                return Err(ErrorData::invalid_params(
                    format!("unknown prompt: {other}"),
                    None,
                ));
            }
        };
        let result: GetPromptResult =
            result_json(json!({"description": description, "messages": messages}))?;
        Ok(result.into())
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let request = serde_json::to_value(request).unwrap_or_default();
        let reference = &request["ref"];
        let prefix = request["argument"]["value"].as_str().unwrap_or_default();
        let candidates: Vec<String> = match (
            reference["type"].as_str(),
            reference["name"].as_str(),
            reference["uri"].as_str(),
        ) {
            (Some("ref/prompt"), Some("test_prompt_with_arguments"), _) => {
                COMPLETIONS.iter().map(|s| (*s).to_owned()).collect()
            }
            (Some("ref/resource"), _, Some("test://template/{id}/data")) => {
                ["1", "2", "3", "123"].map(str::to_owned).to_vec()
            }
            _ => {
                return Err(ErrorData::invalid_params(
                    format!("nothing to complete for {reference}"),
                    None,
                ));
            }
        };
        let values: Vec<String> = candidates
            .into_iter()
            .filter(|c| c.starts_with(prefix))
            .collect();
        result_json(
            json!({"completion": {"values": values, "total": values.len(), "hasMore": false}}),
        )
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let level = serde_json::to_value(request.level).unwrap_or_default();
        self.min_level.store(
            level_rank(level.as_str().unwrap_or("debug")),
            Ordering::SeqCst,
        );
        Ok(())
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        result_json(json!({"resources": fixtures::resource_definitions()}))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        result_json(json!({"resourceTemplates": fixtures::resource_template_definitions()}))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let contents = fixtures::read_resource(&request.uri).ok_or_else(|| {
            ErrorData::resource_not_found(
                format!("no resource {}", request.uri),
                Some(json!({"uri": request.uri})),
            )
        })?;
        let result: ReadResourceResult = result_json(json!({"contents": [contents]}))?;
        Ok(result.into())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        if fixtures::read_resource(&request.uri).is_none() {
            return Err(ErrorData::resource_not_found(
                format!("no resource {}", request.uri),
                Some(json!({"uri": request.uri})),
            ));
        }
        lock(&self.subscriptions).insert(request.uri);
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        lock(&self.subscriptions).remove(&request.uri);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// rmcp's typed elicitation schema must carry every field the SEP-1034/1330 scenarios check.
    #[test]
    fn elicitation_schemas_survive_rmcps_types() {
        for schema in [
            fixtures::elicitation_schema(),
            fixtures::sep1034_schema(),
            fixtures::sep1330_schema(),
        ] {
            let params: ElicitRequestParams = from_json(json!({
                "mode": "form", "message": "m", "requestedSchema": schema
            }))
            .unwrap_or_else(|e| panic!("{e:?}"));
            let back = serde_json::to_value(params).unwrap_or_default();
            assert_eq!(
                back["requestedSchema"]["properties"], schema["properties"],
                "rmcp changed the schema"
            );
        }
    }

    #[test]
    fn levels_are_ordered() {
        assert!(level_rank("debug") < level_rank("info"));
        assert!(level_rank("error") < level_rank("emergency"));
    }
}
