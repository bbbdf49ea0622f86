//! Upstream MCP test servers (stub; being written).
