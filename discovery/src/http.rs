//! The HTTP side of discovery: a reqwest client, and an rmcp `StreamableHttpClient` that
//! captures raw list results.
//!
//! rmcp's Streamable HTTP transport is generic over the HTTP client. [`CapturingClient`] hands
//! everything to rmcp's reqwest implementation except the few requests whose results
//! discovery stores (`initialize`, the four lists): those it sends itself so it can keep the
//! response body as the server wrote it (see [`crate::raw`]), and hands rmcp the same message
//! parsed, as a JSON body or as an SSE stream, just like the stock client would.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Once};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use http::{HeaderName, HeaderValue};
use reqwest::StatusCode;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::transport::streamable_http_client::{
    AuthRequiredError, HttpStatusError, InsufficientScopeError, StreamableHttpClient,
    StreamableHttpError, StreamableHttpPostResponse, StreamableHttpResponseLimits,
};
use serde_json::Value;
use sse_stream::{Error as SseError, Sse, SseStream};

use crate::raw::{RawKey, RawStore};

/// Header names the MCP transport manages itself; operators may not override them.
pub(crate) const RESERVED_HEADERS: &[&str] = &[
    "accept",
    "content-type",
    "content-length",
    "host",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

const SESSION_HEADER: &str = "mcp-session-id";

/// Largest error body kept for a diagnostic message.
const MAX_ERROR_PREFIX: usize = 4 * 1024;

/// Installs rustls' ring provider as the process default, once. reqwest is built without a
/// provider of its own (no aws-lc C build); without a process default it would panic on the
/// first `Client::build`.
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another component installed a provider first: fine, reqwest uses that.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The reqwest client used for upstreams.
///
/// No idle pooling (rmcp's choice too: a half-read SSE body makes a pooled connection stall),
/// and only same-origin 307/308 redirects are followed: they keep the method and body, and a
/// cross-origin redirect would replay the operator's credentials to another host.
pub(crate) fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    install_crypto_provider();
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        let keeps_body = matches!(
            attempt.status(),
            StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
        );
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if keeps_body && same_origin && attempt.previous().len() <= 10 {
            attempt.follow()
        } else {
            attempt.stop()
        }
    });
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .redirect(policy)
        .build()
}

/// Converts the operator's headers, rejecting invalid and transport-managed ones.
pub(crate) fn header_map(
    headers: &[(String, String)],
) -> Result<HashMap<HeaderName, HeaderValue>, String> {
    let mut map = HashMap::new();
    for (name, value) in headers {
        let header = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        if RESERVED_HEADERS.contains(&header.as_str()) {
            return Err(format!(
                "header {name:?} is managed by the MCP transport and cannot be set"
            ));
        }
        let mut value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("invalid value for header {name:?}"))?;
        if matches!(
            header.as_str(),
            "authorization" | "cookie" | "proxy-authorization"
        ) || header.as_str().contains("key")
            || header.as_str().contains("token")
        {
            value.set_sensitive(true);
        }
        map.insert(header, value);
    }
    Ok(map)
}

/// rmcp Streamable HTTP client that captures the raw results of discovery requests.
#[derive(Clone)]
pub(crate) struct CapturingClient {
    http: reqwest::Client,
    raw: RawStore,
}

impl CapturingClient {
    pub(crate) fn new(http: reqwest::Client, raw: RawStore) -> Self {
        Self { http, raw }
    }

    /// Sends a captured request and builds the response rmcp expects.
    async fn post_captured(
        &self,
        uri: Arc<str>,
        (body, key): (Value, RawKey),
        session_id: Option<Arc<str>>,
        auth_token: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<reqwest::Error>> {
        let mut request = self.http.post(uri.as_ref()).header(
            reqwest::header::ACCEPT,
            "application/json, text/event-stream",
        );
        if let Some(token) = auth_token {
            request = request.bearer_auth(token);
        }
        for (name, value) in custom_headers {
            // rmcp injects MCP-Protocol-Version here after the handshake.
            if RESERVED_HEADERS.contains(&name.as_str()) && name.as_str() != "mcp-protocol-version"
            {
                return Err(StreamableHttpError::ReservedHeaderConflict(
                    name.to_string(),
                ));
            }
            request = request.header(name, value);
        }
        let session_was_attached = session_id.is_some();
        if let Some(session_id) = session_id {
            request = request.header(SESSION_HEADER, session_id.as_ref());
        }
        let response = request
            .json(&body)
            .send()
            .await
            .map_err(StreamableHttpError::Client)?;
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        if let Some(challenge) = header("www-authenticate") {
            if status == StatusCode::UNAUTHORIZED {
                return Err(StreamableHttpError::AuthRequired(AuthRequiredError::new(
                    challenge,
                )));
            }
            if status == StatusCode::FORBIDDEN {
                return Err(StreamableHttpError::InsufficientScope(
                    InsufficientScopeError::new(challenge, None),
                ));
            }
        }
        if status == StatusCode::NOT_FOUND && session_was_attached {
            return Err(StreamableHttpError::SessionExpired);
        }
        let new_session = header(SESSION_HEADER);
        let content_type = header("content-type");
        let essence = content_type.as_deref().map(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
        let retry_after = header("retry-after");

        if !status.is_success() {
            let prefix = read_limited(response, MAX_ERROR_PREFIX, false).await?;
            // A JSON-RPC error body is the server's real answer (e.g. "Server not initialized").
            if let Ok(message @ ServerJsonRpcMessage::Error(_)) =
                serde_json::from_slice::<ServerJsonRpcMessage>(&prefix)
            {
                return Ok(StreamableHttpPostResponse::Json(message, new_session));
            }
            if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                return Err(HttpStatusError::new(status.as_u16(), retry_after).into());
            }
            return Err(StreamableHttpError::UnexpectedServerResponse(Cow::Owned(
                format!("HTTP {status}: {}", preview(&prefix)),
            )));
        }
        if matches!(status, StatusCode::ACCEPTED | StatusCode::NO_CONTENT) {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        match essence.as_deref() {
            Some("text/event-stream") => {
                let raw = self.raw.clone();
                let events = sse_events(response.bytes_stream(), limits.max_json_response_size)
                    .inspect_ok(move |event| {
                        if let Some(data) = &event.data
                            && let Ok(message) = serde_json::from_str::<Value>(data)
                        {
                            raw.record_response(&key, &message);
                        }
                    })
                    .boxed();
                Ok(StreamableHttpPostResponse::Sse(events, new_session))
            }
            Some("application/json") => {
                let bytes = read_limited(response, limits.max_json_response_size, true).await?;
                let value: Value = serde_json::from_slice(&bytes).map_err(|error| {
                    StreamableHttpError::UnexpectedServerResponse(Cow::Owned(format!(
                        "response is not JSON ({error}): {}",
                        preview(&bytes)
                    )))
                })?;
                self.raw.record_response(&key, &value);
                let message: ServerJsonRpcMessage = serde_json::from_value(value)?;
                Ok(StreamableHttpPostResponse::Json(message, new_session))
            }
            _ => Err(StreamableHttpError::UnexpectedContentType(content_type)),
        }
    }
}

/// Reads at most `limit` bytes of a body. With `strict`, a longer body is an error; otherwise
/// it is truncated (diagnostics only).
async fn read_limited(
    response: reqwest::Response,
    limit: usize,
    strict: bool,
) -> Result<Vec<u8>, StreamableHttpError<reqwest::Error>> {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(StreamableHttpError::Client)?;
        if body.len() + chunk.len() > limit {
            if strict {
                return Err(StreamableHttpError::ResponseBodyTooLarge { max_size: limit });
            }
            body.extend_from_slice(&chunk[..limit - body.len()]);
            break;
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Parses an SSE byte stream, failing once the response exceeds `limit` bytes in total (a list
/// page has no business being larger; without a cap a hostile server could make us buffer an
/// endless event).
pub(crate) fn sse_events<S>(bytes: S, limit: usize) -> BoxStream<'static, Result<Sse, SseError>>
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static,
{
    let mut total = 0usize;
    let bounded = bytes.map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        total = total.saturating_add(chunk.len());
        if total > limit {
            return Err(std::io::Error::other(format!(
                "SSE response exceeded {limit} bytes"
            )));
        }
        Ok(chunk)
    });
    SseStream::from_bytes_stream(bounded).boxed()
}

/// A short, printable preview of a body for error messages.
pub(crate) fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut out: String = text.chars().take(200).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    if out.is_empty() {
        out.push_str("<empty body>");
    }
    out
}

impl StreamableHttpClient for CapturingClient {
    type Error = reqwest::Error;

    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        self.post_message_with_response_limits(
            uri,
            message,
            session_id,
            auth_header,
            custom_headers,
            StreamableHttpResponseLimits::default(),
        )
        .await
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        let mut limits = StreamableHttpResponseLimits::default();
        limits.max_sse_event_size = max_sse_event_size;
        self.post_message_with_response_limits(
            uri,
            message,
            session_id,
            auth_header,
            custom_headers,
            limits,
        )
        .await
    }

    async fn post_message_with_response_limits(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        limits: StreamableHttpResponseLimits,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        if self.raw.is_enabled()
            && let Ok(body) = serde_json::to_value(&message)
            && let Some(key) = RawKey::for_request(&body)
        {
            return self
                .post_captured(
                    uri,
                    (body, key),
                    session_id,
                    auth_header,
                    custom_headers,
                    limits,
                )
                .await;
        }
        self.http
            .post_message_with_response_limits(
                uri,
                message,
                session_id,
                auth_header,
                custom_headers,
                limits,
            )
            .await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        self.http
            .delete_session(uri, session_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        self.http
            .get_stream(uri, session_id, last_event_id, auth_header, custom_headers)
            .await
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        self.http
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_map_accepts_credentials_and_rejects_transport_headers() {
        let map = header_map(&[
            ("Authorization".into(), "Bearer s3cret".into()),
            ("X-Api-Key".into(), " k ".into()),
        ])
        .unwrap();
        let auth = &map[&HeaderName::from_static("authorization")];
        assert_eq!(auth, "Bearer s3cret");
        assert!(
            auth.is_sensitive(),
            "credentials are not printed in debug output"
        );
        assert_eq!(map[&HeaderName::from_static("x-api-key")], "k");

        for reserved in ["Mcp-Session-Id", "accept", "MCP-Protocol-Version"] {
            let error = header_map(&[(reserved.into(), "x".into())]).unwrap_err();
            assert!(error.contains("managed by the MCP transport"), "{error}");
        }
        assert!(header_map(&[("bad name".into(), "x".into())]).is_err());
        assert!(header_map(&[("x-ok".into(), "line\nbreak".into())]).is_err());
    }

    #[test]
    fn preview_is_short_and_never_empty() {
        assert_eq!(preview(b""), "<empty body>");
        let long = "x".repeat(1000);
        assert!(preview(long.as_bytes()).chars().count() <= 201);
        assert_eq!(preview(b"  <html>hi</html> \n"), "<html>hi</html>");
    }

    #[tokio::test]
    async fn sse_events_are_capped() {
        let chunks: Vec<Result<Bytes, reqwest::Error>> = vec![
            Ok(Bytes::from_static(b"data: {\"a\":1}\n\n")),
            Ok(Bytes::from(vec![b'x'; 64])),
        ];
        let mut events = sse_events(futures::stream::iter(chunks), 32);
        let first = events.next().await.unwrap().unwrap();
        assert_eq!(first.data.as_deref(), Some("{\"a\":1}"));
        assert!(events.next().await.unwrap().is_err());
    }
}
