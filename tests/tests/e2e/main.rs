//! The end-to-end tests, linked into one test binary (`cargo test -p toolmesh-e2e --test e2e
//! <module>::`): real Envoy, the real filter, the control plane, real MCP servers and the official
//! clients. One binary instead of one per file keeps the build fast and the target directory
//! small. Each module is one area.

mod conformance;
mod federation;
mod filter;
mod foundation;
mod openapi_fuzz;
mod stats_tags;
mod tokens;
mod usage;
mod usage_tokens;
mod xds;
