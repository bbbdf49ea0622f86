//! Envoy xDS for toolmesh: the catalog compiled into Envoy resources, and the ADS server that
//! pushes them.
//!
//! The pipeline is `GatewayModel` (policy snapshot + upstreams) → [`build_snapshot`] (pure, in
//! [`resources`]) → [`Snapshot`] (Any-encoded resources with content-hash versions) →
//! [`XdsHandle::publish`] → every connected Envoy over one ADS stream each ([`server`]), with
//! ACK/NACK tracked per stream as plain data ([`tracker`]). [`bootstrap::bootstrap_yaml`] writes
//! the only file an Envoy needs. Verified wiring and pitfalls:
//! `shared/research/envoy-wasm-xds.md`.

pub mod bootstrap;
pub mod model;
pub mod resources;
pub mod server;
pub mod tracker;

pub use bootstrap::bootstrap_yaml;
pub use model::{AccessLog, GatewayModel, GatewaySettings, UpstreamEndpoint};
pub use resources::{BuildError, NamedResource, ResourceType, Snapshot, build_snapshot};
pub use server::{EnvoyStatus, ServeError, XdsHandle, XdsMetrics, XdsServer};
pub use tracker::Nack;
