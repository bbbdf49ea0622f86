//! Mapping rmcp's errors onto [`DiscoveryError`]: was the server unreachable, or did it answer
//! badly?
//!
//! rmcp wraps transport failures in several layers (`ClientInitializeError` →
//! `DynamicTransportError` → the worker's error → `StreamableHttpError` → `reqwest::Error` →
//! `io::Error`). The only distinction the control plane needs is "could not reach it"
//! (health `down`, retry later) versus "reached something that is not a working MCP server"
//! (an operator must fix the URL or the server), so we walk the source chain looking for a
//! connection-level cause and call everything else a protocol error, keeping the whole chain
//! as the human-readable reason.

use std::error::Error as StdError;

use rmcp::service::{ClientInitializeError, ServiceError};
use rmcp::transport::DynamicTransportError;
use rmcp::transport::streamable_http_client::StreamableHttpError;

use crate::DiscoveryError;
use crate::legacy_sse::LegacySseError;

/// The next error in a chain. rmcp's wrappers are looked through: `DynamicTransportError`
/// (its message is a type name) and `StreamableHttpError::Client` (which does not expose the
/// reqwest error as its source, hiding "connection refused").
fn next_cause<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a (dyn StdError + 'static)> {
    if let Some(StreamableHttpError::Client(inner)) =
        error.downcast_ref::<StreamableHttpError<reqwest::Error>>()
    {
        return Some(inner);
    }
    error.source()
}

/// Whether an error's own message is noise to leave out of the reason.
fn is_wrapper(error: &(dyn StdError + 'static)) -> bool {
    error.is::<DynamicTransportError>()
        || matches!(
            error.downcast_ref::<StreamableHttpError<reqwest::Error>>(),
            Some(StreamableHttpError::Client(_))
        )
}

/// Every message in an error's source chain, joined (rmcp's top-level messages are often just
/// "Transport send error").
pub(crate) fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(error);
    while let Some(e) = current {
        if !is_wrapper(e) {
            let text = e.to_string();
            if !parts.iter().any(|p| p.contains(&text)) {
                parts.push(text);
            }
        }
        current = next_cause(e);
    }
    parts.join(": ")
}

/// Whether a connection-level failure (refused, reset, DNS, TLS handshake) is in the chain.
fn is_connect_failure(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(re) = e.downcast_ref::<reqwest::Error>()
            && re.is_connect()
        {
            return true;
        }
        if let Some(LegacySseError::Connect(_)) = e.downcast_ref::<LegacySseError>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::NotConnected
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
                    | std::io::ErrorKind::AddrNotAvailable
            )
        {
            return true;
        }
        current = next_cause(e);
    }
    false
}

/// Classifies a transport-level error from anywhere in rmcp.
pub(crate) fn from_transport_error(url: &str, error: &(dyn StdError + 'static)) -> DiscoveryError {
    let reason = chain(error);
    if is_connect_failure(error) {
        DiscoveryError::Connect {
            url: url.to_owned(),
            reason,
        }
    } else {
        DiscoveryError::Protocol(reason)
    }
}

/// Classifies a failed handshake.
pub(crate) fn from_init_error(url: &str, error: &ClientInitializeError) -> DiscoveryError {
    match error {
        ClientInitializeError::JsonRpcError(data) => DiscoveryError::Protocol(format!(
            "initialize was rejected: {} (code {})",
            data.message, data.code.0
        )),
        // `ClientInitializeError` does not expose the transport error as its `source()`.
        ClientInitializeError::TransportError { error, context } => {
            match from_transport_error(url, error) {
                DiscoveryError::Connect { url, reason } => DiscoveryError::Connect {
                    url,
                    reason: format!("{context}: {reason}"),
                },
                DiscoveryError::Protocol(reason) => {
                    DiscoveryError::Protocol(format!("{context}: {reason}"))
                }
                other => other,
            }
        }
        other => {
            let reason = chain(other);
            if is_connect_failure(other) {
                DiscoveryError::Connect {
                    url: url.to_owned(),
                    reason,
                }
            } else {
                DiscoveryError::Protocol(format!("handshake failed: {reason}"))
            }
        }
    }
}

/// Classifies a failed list request.
pub(crate) fn from_service_error(url: &str, method: &str, error: &ServiceError) -> DiscoveryError {
    match error {
        ServiceError::McpError(data) => DiscoveryError::Protocol(format!(
            "{method} failed: {} (code {})",
            data.message, data.code.0
        )),
        ServiceError::Timeout { timeout } => DiscoveryError::Timeout(*timeout),
        ServiceError::TransportSend(inner) => match from_transport_error(url, inner) {
            DiscoveryError::Connect { reason, .. } => DiscoveryError::Connect {
                url: url.to_owned(),
                reason: format!("{method}: {reason}"),
            },
            DiscoveryError::Protocol(reason) => {
                DiscoveryError::Protocol(format!("{method}: {reason}"))
            }
            other => other,
        },
        ServiceError::TransportClosed => DiscoveryError::Protocol(format!(
            "{method}: the connection closed before the server answered"
        )),
        other => DiscoveryError::Protocol(format!("{method}: {}", chain(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn refused_io_error_in_the_chain_is_a_connect_failure() {
        let error = Outer(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        match from_transport_error("http://x", &error) {
            DiscoveryError::Connect { url, reason } => {
                assert_eq!(url, "http://x");
                assert!(reason.starts_with("outer: "), "{reason}");
            }
            other => panic!("expected Connect, got {other:?}"),
        }
    }

    #[test]
    fn other_errors_are_protocol_errors() {
        let error = Outer(std::io::Error::other("garbage"));
        assert_eq!(
            from_transport_error("http://x", &error),
            DiscoveryError::Protocol("outer: garbage".into())
        );
    }
}
