//! The control plane's integration tests, linked into one test binary (`cargo test -p toolmesh
//! --test suite`): one link of tokio, sqlx, axum and rmcp instead of one per file keeps the
//! build fast and the target directory small. Each module is one area.

// First: its `both_backends!` macro is used textually by the modules below.
#[macro_use]
mod common;

mod api;
mod cli;
mod discovery;
mod tokens;
mod usage;
