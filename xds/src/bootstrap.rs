//! The Envoy bootstrap: the only file an Envoy needs to join a toolmesh gateway.
//!
//! It holds the node identity, the admin interface (loopback only: it can stop Envoy), one static
//! cluster that reaches the control plane over HTTP/2 (gRPC needs it; without it Envoy logs
//! `upstream_cx_protocol_error` and never connects), and `dynamic_resources` that take listeners
//! and clusters from ADS. Everything else (routes, the filter and its policy) follows from those.
//! Optionally it adds `stats_tags` that turn toolmesh's per-tool stat names into Prometheus
//! labels (each regex sees the full `wasmcustom.`-prefixed name; the first capture group is
//! removed from the name and the second is the label value).
//!
//! It also points Envoy's `envoy.stat_sinks.metrics_service` at the same control-plane cluster
//! ([`stats_sink_yaml`]): every [`STATS_FLUSH_INTERVAL_S`] seconds Envoy pushes its stats there
//! (counters as deltas, tags as labels), which is how the control plane counts tool usage across
//! every Envoy. A control plane that does not serve the metrics service answers `UNIMPLEMENTED`
//! and Envoy carries on.

/// The `stats_config.stats_tags` list that labels the filter's stats: identical to the one in
/// `envoy/bootstrap.yaml` and `envoy/bootstrap-compose.yaml` (a test compares them). The
/// `token` label of `toolmesh.caller.*` (the `calls`, `errors`, `denied` counters and the
/// `latency_ms` histogram) is bounded by the callers the policy lists.
pub const STATS_TAGS_YAML: &str = r#"  stats_tags:
  - tag_name: virtual_server
    regex: '^wasmcustom\.toolmesh\.tool\.(([^.]+)\.)[^.]+\.[^.]+\.[^.]+$'
  - tag_name: mcp_server
    regex: '^wasmcustom\.toolmesh\.tool\.[^.]+\.(([^.]+)\.)[^.]+\.[^.]+$'
  - tag_name: tool
    regex: '^wasmcustom\.toolmesh\.tool\.[^.]+\.[^.]+\.(([^.]+)\.)[^.]+$'
  - tag_name: virtual_server
    regex: '^wasmcustom\.toolmesh\.vs\.(([^.]+)\.)(?:rq|denied)\.[^.]+$'
  - tag_name: method
    regex: '^wasmcustom\.toolmesh\.vs\.[^.]+\.rq(\.([^.]+))$'
  - tag_name: reason
    regex: '^wasmcustom\.toolmesh\.(?:vs\.[^.]+|global)\.denied(\.([^.]+))$'
  - tag_name: virtual_server
    regex: '^wasmcustom\.toolmesh\.caller\.(([^.]+)\.)[^.]+\.[^.]+$'
  - tag_name: token
    regex: '^wasmcustom\.toolmesh\.caller\.[^.]+\.(([^.]+)\.)[^.]+$'
"#;

/// How often Envoy flushes its stats to the sinks, in seconds (the bootstrap's
/// `stats_flush_interval`). Usage numbers lag by at most this much, and an Envoy killed without
/// a final flush loses at most this much.
pub const STATS_FLUSH_INTERVAL_S: u32 = 5;

/// The top-level `stats_flush_interval` and `stats_sinks` that stream Envoy's stats to the
/// control plane's metrics service over the gRPC cluster `cluster` (the xDS cluster).
///
/// - `report_counters_as_deltas`: each flush carries what happened since the previous one, so
///   the control plane sums deltas from any number of Envoys and restarts without double
///   counting;
/// - `emit_tags_as_labels`: the `stats_tags` become labels (`virtual_server`, `mcp_server`,
///   `tool`, ...) and the family name is the tag-extracted one (`wasmcustom.toolmesh.tool.calls`);
/// - `histogram_emit_mode: HISTOGRAM`: bucket counts only (the per-interval summaries cannot be
///   merged across Envoys, and leaving them out halves the histogram part of each message).
pub fn stats_sink_yaml(cluster: &str) -> String {
    format!(
        r#"stats_flush_interval: {STATS_FLUSH_INTERVAL_S}s
stats_sinks:
- name: envoy.stat_sinks.metrics_service
  typed_config:
    "@type": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig
    transport_api_version: V3
    report_counters_as_deltas: true
    emit_tags_as_labels: true
    histogram_emit_mode: HISTOGRAM
    grpc_service:
      envoy_grpc: {{ cluster_name: {cluster} }}
"#,
        cluster = yaml_str(cluster)
    )
}

/// An Envoy bootstrap (YAML) that takes everything else from the toolmesh control plane.
///
/// - `node_id`, `node_cluster`: the node identity (ADS requires both; `--service-node` /
///   `--service-cluster` on Envoy's command line override them, so one file serves many Envoys).
/// - `xds_addr`: `host:port` of the control plane's xDS port (an IP literal gives a `STATIC`
///   cluster, a name a `STRICT_DNS` one; `[v6]:port` works).
/// - `admin_port`: Envoy's admin interface, bound to 127.0.0.1.
/// - `stats_tags`: include [`STATS_TAGS_YAML`].
pub fn bootstrap_yaml(
    node_id: &str,
    node_cluster: &str,
    xds_addr: &str,
    admin_port: u16,
    stats_tags: bool,
) -> String {
    let (host, port) = split_addr(xds_addr);
    let discovery = if host.parse::<std::net::IpAddr>().is_ok() {
        "STATIC"
    } else {
        "STRICT_DNS"
    };
    let mut yaml = format!(
        r#"# Envoy bootstrap for a toolmesh gateway: everything else comes from the control plane (ADS).
node:
  id: {node_id}
  cluster: {node_cluster}
admin:
  address:
    socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
    - envoy_grpc: {{ cluster_name: xds_cluster }}
  cds_config: {{ ads: {{}}, resource_api_version: V3 }}
  lds_config: {{ ads: {{}}, resource_api_version: V3 }}
static_resources:
  clusters:
  - name: xds_cluster
    type: {discovery}
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options:
            connection_keepalive: {{ interval: 30s, timeout: 10s }}
    load_assignment:
      cluster_name: xds_cluster
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: {host}, port_value: {port} }}
"#,
        node_id = yaml_str(node_id),
        node_cluster = yaml_str(node_cluster),
        host = yaml_str(host),
    );
    yaml.push_str(&stats_sink_yaml("xds_cluster"));
    if stats_tags {
        yaml.push_str("stats_config:\n");
        yaml.push_str(STATS_TAGS_YAML);
    }
    yaml
}

/// `host:port` → (host, port); a missing or bad port means the default xDS port 18000.
fn split_addr(addr: &str) -> (&str, u16) {
    const DEFAULT_PORT: u16 = 18000;
    if let Some(rest) = addr.strip_prefix('[') {
        let (host, after) = rest.split_once(']').unwrap_or((rest, ""));
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return (host, port.unwrap_or(DEFAULT_PORT));
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().unwrap_or(DEFAULT_PORT)),
        _ => (addr, DEFAULT_PORT),
    }
}

/// A YAML single-quoted scalar (safe for any string).
fn yaml_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_points_at_the_control_plane() {
        let y = bootstrap_yaml("gw-1", "toolmesh", "127.0.0.1:18000", 9901, false);
        assert!(y.contains("id: 'gw-1'"));
        assert!(y.contains("cluster: 'toolmesh'"));
        assert!(y.contains("set_node_on_first_message_only: true"));
        assert!(y.contains("socket_address: { address: '127.0.0.1', port_value: 18000 }"));
        assert!(y.contains("type: STATIC"));
        assert!(y.contains("http2_protocol_options"));
        assert!(y.contains("socket_address: { address: 127.0.0.1, port_value: 9901 }"));
        assert!(!y.contains("stats_tags"));
        assert!(y.contains("envoy.stat_sinks.metrics_service"));
        assert!(y.contains("cluster_name: 'xds_cluster'"));
        assert!(y.contains("report_counters_as_deltas: true"));
        assert!(y.contains("stats_flush_interval: 5s"));

        let y = bootstrap_yaml("it's", "c", "toolmesh:18001", 9902, true);
        assert!(y.contains("id: 'it''s'"));
        assert!(y.contains("type: STRICT_DNS"));
        assert!(y.contains("address: 'toolmesh', port_value: 18001"));
        assert!(y.ends_with(STATS_TAGS_YAML));
    }

    /// The `stats_tags` lines of a bootstrap file, trimmed.
    fn stats_tags_of(yaml: &str) -> Vec<String> {
        let start = yaml.find("  stats_tags:").unwrap_or(yaml.len());
        yaml[start..]
            .lines()
            .take_while(|l| l.starts_with("  "))
            .map(|l| l.trim().to_string())
            .collect()
    }

    #[test]
    fn stats_tags_match_the_shipped_bootstraps() {
        let ours = stats_tags_of(STATS_TAGS_YAML);
        assert!(ours.len() > 10, "{ours:?}");
        assert!(ours.iter().any(|l| l == "- tag_name: token"));
        for file in ["bootstrap.yaml", "bootstrap-compose.yaml"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../envoy")
                .join(file);
            let shipped = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(stats_tags_of(&shipped), ours, "envoy/{file} drifted");
        }
    }

    #[test]
    fn addresses_split_with_defaults() {
        assert_eq!(split_addr("127.0.0.1:1"), ("127.0.0.1", 1));
        assert_eq!(split_addr("[::1]:2"), ("::1", 2));
        assert_eq!(split_addr("cp"), ("cp", 18000));
        assert_eq!(split_addr("::1"), ("::1", 18000));
    }
}
