//! Discovery against real MCP servers, linked into one test binary (`cargo test -p
//! toolmesh-discovery --test suite`) so rmcp, reqwest and tokio link once.

mod discovery;
mod legacy_sse;
mod mini;
mod modern_versions;
mod raw_fidelity;
mod watch;
