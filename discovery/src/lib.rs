//! Discovery of upstream MCP servers (stub: the API is fixed, the implementation is in progress).

use std::time::Duration;

/// How toolmesh talks to an upstream MCP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// MCP Streamable HTTP (2025-03-26 and later).
    StreamableHttp,
    /// The legacy HTTP+SSE transport (2024-11-05).
    Sse,
}

/// Where and how to reach an upstream.
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    /// The MCP endpoint URL, for example `http://127.0.0.1:9000/mcp`.
    pub url: String,
    /// The transport.
    pub transport: Transport,
    /// Extra headers sent on every request (for example `Authorization`).
    pub headers: Vec<(String, String)>,
    /// Deadline for the whole discovery (connect, initialize, every page of every list).
    pub timeout: Duration,
}

/// What an upstream offers. Items are the MCP JSON objects exactly as the server sent them.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovered {
    /// `serverInfo` from the initialize result.
    pub server_info: serde_json::Value,
    /// The negotiated protocol version.
    pub protocol_version: String,
    /// The server's `capabilities`.
    pub capabilities: serde_json::Value,
    /// The server's `instructions`, if any.
    pub instructions: Option<String>,
    /// Every tool, across all pages.
    pub tools: Vec<serde_json::Value>,
    /// Every prompt, across all pages.
    pub prompts: Vec<serde_json::Value>,
    /// Every resource, across all pages.
    pub resources: Vec<serde_json::Value>,
    /// Every resource template, across all pages.
    pub resource_templates: Vec<serde_json::Value>,
    /// Wall time of the whole discovery.
    pub latency: Duration,
}

/// Why discovery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The server could not be reached.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL tried.
        url: String,
        /// Why.
        reason: String,
    },
    /// The deadline passed.
    #[error("discovery timed out after {0:?}")]
    Timeout(Duration),
    /// The server answered, but not as an MCP server should.
    #[error("MCP protocol error: {0}")]
    Protocol(String),
    /// Not implemented yet.
    #[error("discovery is not implemented yet")]
    NotImplemented,
}

/// Connect, initialize, and read every page of every list the server's capabilities announce.
pub async fn discover(spec: &UpstreamSpec) -> Result<Discovered, DiscoveryError> {
    let _ = spec;
    Err(DiscoveryError::NotImplemented)
}
