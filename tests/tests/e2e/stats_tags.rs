//! The `stats_tags` toolmesh ships (config::STATS_TAGS, identical to envoy/bootstrap.yaml) turn
//! metric names into the Prometheus labels we document, in a real Envoy 1.40.
//!
//! Until the filter emits its `wasmcustom.toolmesh.*` stats, this test gets Envoy to create
//! stats with the same name shapes without wasm: clusters named like toolmesh's metric prefixes
//! (`toolmesh.tool.demo.everything.add`) produce `cluster.<name>.upstream_rq_total`, and the
//! regexes are applied with `^wasmcustom\.` replaced by `^cluster\.` (Envoy's default tag
//! extractors are off so they do not interfere). The extraction and name-rewriting semantics
//! being tested (each regex sees the full name; the first group is removed, the second is the
//! value) are the same for both prefixes.

use serde_json::json;
use toolmesh_e2e::config::{STATS_TAGS, static_envoy_config_value};
use toolmesh_e2e::{Envoy, EnvoyConfig, free_port, require, tools};

#[tokio::test]
async fn stats_tags_produce_the_documented_prometheus_labels() {
    let envoy_bin = require!(tools::envoy());
    let nowhere: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let (listener_port, admin_port) = (free_port(), free_port());
    let mut config = static_envoy_config_value(
        listener_port,
        admin_port,
        &[
            ("toolmesh.tool.demo.everything.add", nowhere),
            ("toolmesh.vs.demo.rq", nowhere),
            ("toolmesh.vs.demo.denied", nowhere),
            ("toolmesh.global.denied", nowhere),
        ],
        None,
    );
    let tags: Vec<_> = STATS_TAGS
        .iter()
        .map(|(name, regex)| {
            let regex = regex.replacen(r"^wasmcustom\.", r"^cluster\.", 1);
            assert!(regex.starts_with(r"^cluster\."), "{name}: {regex}");
            json!({"tag_name": name, "regex": regex})
        })
        .collect();
    config["stats_config"] = json!({"use_all_default_tags": false, "stats_tags": tags});
    let envoy = Envoy::start(
        &envoy_bin,
        EnvoyConfig {
            yaml: config.to_string(),
            listener_port,
            admin_port,
        },
    )
    .await
    .unwrap();

    let prometheus = envoy.stats_prometheus().await;
    for expected in [
        // toolmesh.tool.<vs>.<mcp_server>.<tool>.<stat>  ->  toolmesh_tool_<stat>{...}
        r#"envoy_cluster_toolmesh_tool_upstream_rq_total{virtual_server="demo",mcp_server="everything",tool="add"} 0"#,
        // toolmesh.vs.<vs>.rq.<method>  ->  toolmesh_vs_rq{virtual_server, method}
        r#"envoy_cluster_toolmesh_vs_rq{virtual_server="demo",method="upstream_rq_total"} 0"#,
        // toolmesh.vs.<vs>.denied.<reason>  ->  toolmesh_vs_denied{virtual_server, reason}
        r#"envoy_cluster_toolmesh_vs_denied{virtual_server="demo",reason="upstream_rq_total"} 0"#,
        // toolmesh.global.denied.<reason>  ->  toolmesh_global_denied{reason}
        r#"envoy_cluster_toolmesh_global_denied{reason="upstream_rq_total"} 0"#,
    ] {
        assert!(
            prometheus.lines().any(|l| l == expected),
            "missing {expected}\nin:\n{}",
            prometheus
                .lines()
                .filter(|l| l.contains("toolmesh"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
