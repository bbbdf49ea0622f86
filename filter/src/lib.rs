//! toolmesh-filter: the MCP policy engine that runs inside Envoy.
