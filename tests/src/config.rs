//! Static Envoy configurations for tests (before, and besides, the xDS control plane).
//!
//! [`static_envoy_config`] builds what a test needs in front of real upstreams: one listener on
//! 127.0.0.1, the toolmesh wasm filter (optional) wired exactly as verified in the research notes
//! (`allow_on_headers_stop_iteration`, `FAIL_RELOAD`, policy as a `StringValue`), the router,
//! one route per upstream cluster selected by the `x-toolmesh-cluster` header the filter sets,
//! and the settings MCP streaming needs (no route timeout, a 10-minute stream idle timeout,
//! 4 MiB buffers). The document is emitted as JSON, which Envoy's YAML loader reads as YAML.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::{Value, json};

/// The header the filter sets to pick the upstream cluster.
pub const CLUSTER_HEADER: &str = "x-toolmesh-cluster";

/// The HCM `stat_prefix` of the MCP listener (`http.toolmesh.downstream_rq_total`, ...).
pub const HTTP_STAT_PREFIX: &str = "toolmesh";

/// Envoy `stats_tags` that turn toolmesh's metric names into Prometheus labels. Kept identical
/// to `envoy/bootstrap.yaml` (a test checks). Names: `toolmesh.tool.<vs>.<mcp_server>.<tool>.<stat>`,
/// `toolmesh.vs.<vs>.rq.<method>`, `toolmesh.vs.<vs>.denied.<reason>`,
/// `toolmesh.global.denied.<reason>`, `toolmesh.caller.<vs>.<token id>.<stat>` (counters and the
/// `latency_ms` histogram); each regex sees
/// the full `wasmcustom.`-prefixed name.
pub const STATS_TAGS: &[(&str, &str)] = &[
    (
        "virtual_server",
        r"^wasmcustom\.toolmesh\.tool\.(([^.]+)\.)[^.]+\.[^.]+\.[^.]+$",
    ),
    (
        "mcp_server",
        r"^wasmcustom\.toolmesh\.tool\.[^.]+\.(([^.]+)\.)[^.]+\.[^.]+$",
    ),
    (
        "tool",
        r"^wasmcustom\.toolmesh\.tool\.[^.]+\.[^.]+\.(([^.]+)\.)[^.]+$",
    ),
    (
        "virtual_server",
        r"^wasmcustom\.toolmesh\.vs\.(([^.]+)\.)(?:rq|denied)\.[^.]+$",
    ),
    (
        "method",
        r"^wasmcustom\.toolmesh\.vs\.[^.]+\.rq(\.([^.]+))$",
    ),
    (
        "reason",
        r"^wasmcustom\.toolmesh\.(?:vs\.[^.]+|global)\.denied(\.([^.]+))$",
    ),
    (
        "virtual_server",
        r"^wasmcustom\.toolmesh\.caller\.(([^.]+)\.)[^.]+\.[^.]+$",
    ),
    (
        "token",
        r"^wasmcustom\.toolmesh\.caller\.[^.]+\.(([^.]+)\.)[^.]+$",
    ),
];

/// The toolmesh wasm filter and the policy it is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterConfig {
    /// The filter's `.wasm` (see [`crate::tools::filter_wasm`]).
    pub wasm_path: PathBuf,
    /// The plugin configuration: the policy snapshot as JSON (passed as a `StringValue`).
    pub policy_json: String,
}

/// The session-sealing key of hand-written test policies (a fixed, public test value).
pub const TEST_SESSION_KEY_SECRET: &str = "dG9vbG1lc2gtdGVzdC1zZXNzaW9uLWtleS0zMi1ieXRlcyEhIQ";

/// The `sessions` block of hand-written test policies: [`TEST_SESSION_KEY_SECRET`] as key `test`.
pub fn test_sessions() -> toolmesh_proto::Sessions {
    toolmesh_proto::Sessions {
        keys: vec![toolmesh_proto::SessionKey {
            id: "test".into(),
            secret: TEST_SESSION_KEY_SECRET.into(),
        }],
        ..Default::default()
    }
}

/// The `stats_config` block (with [`STATS_TAGS`]).
pub fn stats_config() -> Value {
    let tags: Vec<Value> = STATS_TAGS
        .iter()
        .map(|(name, regex)| json!({"tag_name": name, "regex": regex}))
        .collect();
    json!({ "stats_tags": tags })
}

/// The toolmesh wasm HTTP filter entry (as in research note 1.10, named `toolmesh`).
pub fn wasm_filter(filter: &FilterConfig) -> Value {
    json!({
        "name": "toolmesh",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": "toolmesh",
                "root_id": "toolmesh",
                "failure_policy": "FAIL_RELOAD",
                "allow_on_headers_stop_iteration": true,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": filter.policy_json
                },
                "vm_config": {
                    "vm_id": "toolmesh",
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": filter.wasm_path.to_string_lossy()}}
                }
            }
        }
    })
}

/// A STATIC, HTTP/1.1 cluster with one endpoint.
pub fn cluster(name: &str, addr: SocketAddr) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "5s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": addr.ip().to_string(),
                "port_value": addr.port()
            }}}}]}]
        }
    })
}

/// The routes: with the filter, one route per cluster matched on [`CLUSTER_HEADER`]; without
/// it, `/` to the first cluster; in both cases a final catch-all answering 404.
pub fn routes(upstreams: &[(&str, SocketAddr)], with_filter: bool) -> Vec<Value> {
    let mut routes = Vec::new();
    if with_filter {
        for (name, _) in upstreams {
            routes.push(json!({
                "match": {"prefix": "/", "headers": [
                    {"name": CLUSTER_HEADER, "string_match": {"exact": name}}
                ]},
                "route": {"cluster": name, "timeout": "0s"}
            }));
        }
    } else if let Some((first, _)) = upstreams.first() {
        routes.push(json!({
            "match": {"prefix": "/"},
            "route": {"cluster": first, "timeout": "0s"}
        }));
    }
    routes.push(json!({
        "match": {"prefix": "/"},
        "direct_response": {"status": 404, "body": {"inline_string": "no route\n"}}
    }));
    routes
}

/// The whole static config as a JSON value, for tests that want to adjust it before starting
/// Envoy (add a filter, change a timeout). See [`static_envoy_config`].
pub fn static_envoy_config_value(
    listener_port: u16,
    admin_port: u16,
    upstreams: &[(&str, SocketAddr)],
    filter: Option<&FilterConfig>,
) -> Value {
    let mut http_filters = Vec::new();
    if let Some(filter) = filter {
        http_filters.push(wasm_filter(filter));
    }
    http_filters.push(json!({
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
    }));
    let clusters: Vec<Value> = upstreams
        .iter()
        .map(|(name, addr)| cluster(name, *addr))
        .collect();
    json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "stats_config": stats_config(),
        "static_resources": {
            "listeners": [{
                "name": "mcp",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": listener_port}},
                "per_connection_buffer_limit_bytes": 4_194_304,
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": HTTP_STAT_PREFIX,
                        "stream_idle_timeout": "600s",
                        "access_log": [{
                            "name": "envoy.access_loggers.stdout",
                            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"}
                        }],
                        "route_config": {
                            "name": "toolmesh_static",
                            "virtual_hosts": [{
                                "name": "all",
                                "domains": ["*"],
                                "routes": routes(upstreams, filter.is_some())
                            }]
                        },
                        "http_filters": http_filters
                    }
                }]}]
            }],
            "clusters": clusters
        }
    })
}

/// A static Envoy config (YAML; emitted as JSON, which is YAML) for `upstreams`
/// (`(cluster_name, address)`), with the toolmesh filter when `filter` is given, listener on
/// `127.0.0.1:listener_port` and admin on `127.0.0.1:admin_port`.
pub fn static_envoy_config(
    listener_port: u16,
    admin_port: u16,
    upstreams: &[(&str, SocketAddr)],
    filter: Option<&FilterConfig>,
) -> String {
    let value = static_envoy_config_value(listener_port, admin_port, upstreams, filter);
    serde_json::to_string_pretty(&value).unwrap_or_else(|e| panic!("serializing JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness must label metrics the way production does: every tag in
    /// `envoy/bootstrap.yaml` appears here with the same regex, in the same order.
    #[test]
    fn stats_tags_match_the_bootstrap() {
        let path = crate::tools::workspace_root().join("envoy/bootstrap.yaml");
        let Ok(bootstrap) = std::fs::read_to_string(&path) else {
            panic!("cannot read {}", path.display());
        };
        let mut found = Vec::new();
        let mut lines = bootstrap.lines().peekable();
        while let Some(line) = lines.next() {
            if let Some(name) = line.trim().strip_prefix("- tag_name:") {
                let regex_line = lines.next().unwrap_or_default().trim();
                let regex = regex_line
                    .strip_prefix("regex:")
                    .map(|r| r.trim().trim_matches('\''))
                    .unwrap_or_default();
                found.push((name.trim().to_owned(), regex.to_owned()));
            }
        }
        let ours: Vec<(String, String)> = STATS_TAGS
            .iter()
            .map(|(n, r)| ((*n).to_owned(), (*r).to_owned()))
            .collect();
        assert_eq!(found, ours, "STATS_TAGS drifted from envoy/bootstrap.yaml");
    }

    #[test]
    fn bare_config_routes_everything_to_the_first_cluster() {
        let addr: SocketAddr = "127.0.0.1:1234".parse().unwrap_or_else(|e| panic!("{e}"));
        let v = static_envoy_config_value(1, 2, &[("up", addr)], None);
        let routes = &v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["route_config"]["virtual_hosts"][0]["routes"];
        assert_eq!(routes[0]["route"]["cluster"], "up");
        assert_eq!(routes[1]["direct_response"]["status"], 404);
    }

    #[test]
    fn filter_config_routes_by_header_and_embeds_the_policy() {
        let addr: SocketAddr = "127.0.0.1:1234".parse().unwrap_or_else(|e| panic!("{e}"));
        let filter = FilterConfig {
            wasm_path: "/x/toolmesh_filter.wasm".into(),
            policy_json: r#"{"a":"it's \"quoted\""}"#.into(),
        };
        let text = static_envoy_config(1, 2, &[("a", addr), ("b", addr)], Some(&filter));
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        let hcm = &v["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(hcm["http_filters"][0]["name"], "toolmesh");
        assert_eq!(
            hcm["http_filters"][0]["typed_config"]["config"]["configuration"]["value"],
            filter.policy_json
        );
        let routes = &hcm["route_config"]["virtual_hosts"][0]["routes"];
        assert_eq!(
            routes[1]["match"]["headers"][0]["string_match"]["exact"],
            "b"
        );
        assert_eq!(routes[2]["direct_response"]["status"], 404);
    }
}
