//! Client side of the legacy HTTP+SSE transport (MCP 2024-11-05), which rmcp 3.11 no longer
//! ships.
//!
//! The protocol: `GET` the SSE URL; the server's first event is `endpoint`, whose data is the
//! URL (usually relative, carrying the session in its query string) to `POST` JSON-RPC
//! messages to; every reply and notification then arrives on the GET stream as a `message`
//! event. This module implements rmcp's [`Transport`] trait for it, so the rest of discovery
//! (handshake, pagination, notifications) is rmcp's, unchanged.
//!
//! The endpoint must have the SSE URL's origin: a server that points us elsewhere would
//! otherwise receive the operator's credentials.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use http::{HeaderName, HeaderValue};
use rmcp::RoleClient;
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::service::ClientInitializeError;
use rmcp::transport::{DynamicTransportError, Transport};
use serde_json::Value;
use sse_stream::{Error as SseError, Sse, SseStream};
use url::Url;

use crate::http::preview;
use crate::raw::{RawKey, RawStore};

/// Why the legacy SSE transport failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum LegacySseError {
    /// The server could not be reached.
    #[error("{0}")]
    Connect(String),
    /// The server answered, but not as a legacy SSE MCP server.
    #[error("{0}")]
    Protocol(String),
}

impl LegacySseError {
    fn from_reqwest(context: &str, error: &reqwest::Error) -> Self {
        let reason = format!("{context}: {}", crate::errors::chain(error));
        if error.is_connect() {
            Self::Connect(reason)
        } else {
            Self::Protocol(reason)
        }
    }

    /// Wraps the error as rmcp's handshake error (for failures before the handshake starts).
    pub(crate) fn into_init_error(self) -> ClientInitializeError {
        ClientInitializeError::TransportError {
            error: DynamicTransportError::new::<LegacySseTransport, RoleClient>(self),
            context: "open the SSE stream".into(),
        }
    }
}

/// An open legacy SSE session.
pub(crate) struct LegacySseTransport {
    http: reqwest::Client,
    endpoint: Arc<Url>,
    headers: Arc<HashMap<HeaderName, HeaderValue>>,
    events: Option<BoxStream<'static, Result<Sse, SseError>>>,
    raw: RawStore,
    /// Captured requests in flight: JSON text of the request id → what to record it as.
    pending: Arc<Mutex<HashMap<String, RawKey>>>,
}

impl LegacySseTransport {
    /// Opens the SSE stream and waits for the `endpoint` event.
    pub(crate) async fn connect(
        http: reqwest::Client,
        url: Url,
        headers: HashMap<HeaderName, HeaderValue>,
        raw: RawStore,
    ) -> Result<Self, LegacySseError> {
        let mut request = http
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "text/event-stream");
        for (name, value) in &headers {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .map_err(|e| LegacySseError::from_reqwest("GET the SSE stream", &e))?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if !status.is_success() || !content_type.starts_with("text/event-stream") {
            let body = response.bytes().await.unwrap_or_default();
            return Err(LegacySseError::Protocol(format!(
                "GET {url} answered HTTP {status} ({}) instead of an SSE stream: {}",
                if content_type.is_empty() {
                    "no content type"
                } else {
                    &content_type
                },
                preview(&body)
            )));
        }
        let mut events =
            SseStream::from_bytes_stream(response.bytes_stream().map_err(std::io::Error::other))
                .boxed();
        let endpoint = loop {
            match events.next().await {
                Some(Ok(event)) if event.event.as_deref() == Some("endpoint") => {
                    let data = event.data.unwrap_or_default();
                    let endpoint = url.join(data.trim()).map_err(|e| {
                        LegacySseError::Protocol(format!("invalid endpoint event {data:?}: {e}"))
                    })?;
                    if endpoint.origin() != url.origin() {
                        return Err(LegacySseError::Protocol(format!(
                            "the endpoint event points to another origin ({endpoint}); refusing to \
                             send credentials there"
                        )));
                    }
                    break endpoint;
                }
                Some(Ok(_other)) => continue,
                Some(Err(e)) => {
                    return Err(LegacySseError::Protocol(format!(
                        "reading the SSE stream: {e}"
                    )));
                }
                None => {
                    return Err(LegacySseError::Protocol(
                        "the SSE stream ended before the endpoint event".into(),
                    ));
                }
            }
        };
        tracing::debug!(%url, %endpoint, "legacy SSE session open");
        Ok(Self {
            http,
            endpoint: Arc::new(endpoint),
            headers: Arc::new(headers),
            events: Some(events),
            raw,
            pending: Arc::default(),
        })
    }
}

impl Transport<RoleClient> for LegacySseTransport {
    type Error = LegacySseError;

    fn send(
        &mut self,
        item: ClientJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let http = self.http.clone();
        let endpoint = self.endpoint.clone();
        let headers = self.headers.clone();
        let body = serde_json::to_value(&item);
        if self.raw.is_enabled()
            && let Ok(body) = &body
            && let Some(key) = RawKey::for_request(body)
            && let Some(id) = body.get("id")
        {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.to_string(), key);
        }
        async move {
            let body = body.map_err(|e| LegacySseError::Protocol(format!("encode: {e}")))?;
            let mut request = http.post(endpoint.as_str().to_owned()).json(&body);
            for (name, value) in headers.iter() {
                request = request.header(name, value);
            }
            let response = request
                .send()
                .await
                .map_err(|e| LegacySseError::from_reqwest("POST a message", &e))?;
            let status = response.status();
            if status.is_success() {
                return Ok(());
            }
            let body = response.bytes().await.unwrap_or_default();
            Err(LegacySseError::Protocol(format!(
                "POST {endpoint} answered HTTP {status}: {}",
                preview(&body)
            )))
        }
    }

    async fn receive(&mut self) -> Option<ServerJsonRpcMessage> {
        let events = self.events.as_mut()?;
        loop {
            let event = match events.next().await {
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "legacy SSE stream failed");
                    return None;
                }
                None => return None,
            };
            if !matches!(event.event.as_deref(), None | Some("message")) {
                continue;
            }
            let Some(data) = event.data.filter(|d| !d.trim().is_empty()) else {
                continue;
            };
            let value: Value = match serde_json::from_str(&data) {
                Ok(value) => value,
                Err(e) => {
                    tracing::warn!(error = %e, data = %preview(data.as_bytes()), "ignoring a non-JSON SSE message");
                    continue;
                }
            };
            if let Some(id) = value.get("id") {
                let key = self
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id.to_string());
                if let Some(key) = key {
                    self.raw.record_response(&key, &value);
                }
            }
            match serde_json::from_value::<ServerJsonRpcMessage>(value) {
                Ok(message) => return Some(message),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring an SSE message that is not JSON-RPC");
                }
            }
        }
    }

    fn close(&mut self) -> impl Future<Output = Result<(), Self::Error>> + Send {
        // Dropping the GET stream ends the legacy session (there is no DELETE in 2024-11-05).
        self.events = None;
        std::future::ready(Ok(()))
    }
}
