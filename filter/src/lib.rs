//! toolmesh-filter: the MCP policy engine that runs inside Envoy.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod decide;
pub mod flow;
pub mod jsonrpc;
pub mod lists;
pub mod outcome;
pub mod policy;
pub mod sanitize;
pub mod sse;
pub mod stats;
pub mod template;

#[cfg(target_arch = "wasm32")]
mod shell;
