//! toolmesh's end-to-end harness: real Envoy, real upstream MCP servers, real official clients.
//!
//! The pieces, each killed or cleaned up on drop (also when a test panics, in which case the
//! logs of every process guard are printed):
//! - [`tools`]: finds Envoy, the venv Python, the TypeScript SDK, the filter's wasm; skips loudly
//!   (or fails under `CI=true`) when one is missing, with [`require!`];
//! - [`process`]: [`process::ChildProcess`] (any process, log capture, `wait_for_line`) and
//!   [`process::free_port`];
//! - [`envoy`]: [`envoy::Envoy`] (start on free ports, wait for `/ready`, admin stats helpers);
//! - [`config`]: the static Envoy config for tests ([`config::static_envoy_config`]);
//! - [`policy`]: hand-written policy snapshots with the test server's definitions
//!   ([`policy::test_server_member`]);
//! - [`control_plane`]: the toolmesh control plane in-process, and Envoy from the shipped
//!   bootstrap (everything over xDS);
//! - [`gateway`]: both set up for a test — MCP servers registered, virtual servers created,
//!   Envoy in sync ([`gateway::Gateway::builder`]);
//! - [`clients`]: the official Python and TypeScript clients as subprocesses, and the test
//!   server as a process.
//!
//! Upstream servers in-process come from [`toolmesh_test_servers`] (re-exported as
//! [`test_servers`]).

pub mod clients;
pub mod config;
pub mod conformance;
pub mod control_plane;
pub mod envoy;
pub mod gateway;
pub mod policy;
pub mod process;
pub mod tools;

pub use toolmesh_test_servers as test_servers;

pub use clients::{python_client, results, spawn_test_server_process, ts_client};
pub use config::{FilterConfig, static_envoy_config};
pub use envoy::{Envoy, EnvoyConfig};
pub use process::{ChildProcess, free_port};
