//! Opening an rmcp client session to an upstream, for discovery and for the watcher.

use rmcp::model::{ClientCapabilities, ClientConfig, Implementation, ProtocolVersion};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, RoleClient};

use crate::errors::from_init_error;
use crate::http::{CapturingClient, header_map, http_client};
use crate::legacy_sse::LegacySseTransport;
use crate::raw::RawStore;
use crate::{DiscoveryError, Transport, UpstreamSpec};

/// Who toolmesh says it is in `initialize`. It declares no client capabilities: discovery never
/// answers sampling, elicitation or roots requests.
pub(crate) fn client_config() -> ClientConfig {
    ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("toolmesh-discovery", env!("CARGO_PKG_VERSION")),
    )
    .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
}

/// The discovery session's handler: it only identifies itself.
#[derive(Debug, Clone)]
pub(crate) struct DiscoveryClient {
    config: ClientConfig,
}

impl DiscoveryClient {
    pub(crate) fn new() -> Self {
        Self {
            config: client_config(),
        }
    }
}

impl ClientHandler for DiscoveryClient {
    fn get_info(&self) -> ClientConfig {
        self.config.clone()
    }
}

/// Connects and completes the MCP handshake: `initialize` first; if the server answers that
/// with a JSON-RPC error, once more with the `2026-07-28` `server/discover` lifecycle.
pub(crate) async fn connect<H>(
    spec: &UpstreamSpec,
    handler: H,
    raw: RawStore,
) -> Result<RunningService<RoleClient, H>, DiscoveryError>
where
    H: ClientHandler + Clone,
{
    let connect_error = |reason: String| DiscoveryError::Connect {
        url: spec.url.clone(),
        reason,
    };
    let url = url::Url::parse(&spec.url).map_err(|e| connect_error(format!("invalid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(connect_error(format!(
            "unsupported URL scheme {:?} (expected http or https)",
            url.scheme()
        )));
    }
    let headers = header_map(&spec.headers).map_err(connect_error)?;
    let http = http_client().map_err(|e| connect_error(format!("HTTP client: {e}")))?;

    let attempt = |lifecycle: ClientLifecycleMode| {
        let handler = handler.clone();
        let headers = headers.clone();
        let http = http.clone();
        let raw = raw.clone();
        let url = url.clone();
        async move {
            match spec.transport {
                Transport::StreamableHttp => {
                    let config = StreamableHttpClientTransportConfig::with_uri(spec.url.as_str())
                        .custom_headers(headers)
                        // A discovery session that lost its session id should fail, not
                        // silently start over half-way through the pages.
                        .reinit_on_expired_session(false);
                    let transport = StreamableHttpClientTransport::with_client(
                        CapturingClient::new(http, raw),
                        config,
                    );
                    handler.serve_with_lifecycle(transport, lifecycle).await
                }
                Transport::Sse => {
                    let transport = LegacySseTransport::connect(http, url, headers, raw)
                        .await
                        .map_err(|e| e.into_init_error())?;
                    handler.serve_with_lifecycle(transport, lifecycle).await
                }
            }
        }
    };

    match attempt(ClientLifecycleMode::Initialize).await {
        Ok(running) => Ok(running),
        Err(rmcp::service::ClientInitializeError::JsonRpcError(initialize_error))
            if spec.transport == Transport::StreamableHttp =>
        {
            tracing::debug!(
                url = %spec.url,
                error = %initialize_error.message,
                "initialize rejected; trying the 2026-07-28 server/discover lifecycle"
            );
            let modern = ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            };
            attempt(modern).await.map_err(|discover_error| {
                DiscoveryError::Protocol(format!(
                    "initialize was rejected ({}), and server/discover failed too: {}",
                    initialize_error.message,
                    crate::errors::chain(&discover_error)
                ))
            })
        }
        Err(error) => Err(from_init_error(&spec.url, &error)),
    }
}
