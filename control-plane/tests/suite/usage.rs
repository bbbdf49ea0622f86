//! Tool usage: Envoy flushes stored as roll-ups and answered by `/v1/usage/*`, on SQLite and on
//! Postgres.
//!
//! Flushes are built as the metrics service receives them (`MetricsReport` with Prometheus
//! families named and labelled like Envoy 1.40 sends the filter's stats), so these tests cover
//! everything after the gRPC stream; `tests/tests/e2e/usage.rs` in the e2e crate drives real Envoys.

use crate::common;

use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use common::{TestApp, assert_error};
use serde_json::{Value, json};
use toolmesh::store::DiscoveryOutcome;
use toolmesh::usage::rollup::LATENCY_BOUNDS_MS;
use toolmesh_discovery::Discovered;
use toolmesh_xds::server::MetricsReport;
use toolmesh_xds::server::prometheus::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily,
};

/// What one Envoy counted for one tool in one flush.
#[derive(Clone, Copy, Default)]
struct Flush {
    calls: u64,
    errors: u64,
    denied: u64,
    /// Latency samples per bucket index.
    latency: [u64; 20],
    last_call_ts: i64,
}

fn labels(vs: &str, server: &str, tool: &str) -> Vec<LabelPair> {
    [
        ("virtual_server", vs),
        ("mcp_server", server),
        ("tool", tool),
    ]
    .iter()
    .map(|(k, v)| LabelPair {
        name: Some((*k).into()),
        value: Some((*v).into()),
    })
    .collect()
}

fn family(name: &str, metric: Metric) -> MetricFamily {
    MetricFamily {
        name: Some(format!("wasmcustom.toolmesh.tool.{name}")),
        metric: vec![metric],
        ..Default::default()
    }
}

/// A `latency_ms` histogram as Envoy sends it (cumulative per bound; every sample counted as
/// 1 ms in the sum) from samples per bucket index.
fn latency_histogram(label: Vec<LabelPair>, per_bucket: &[u64; 20]) -> Metric {
    let mut acc = 0;
    let bucket = LATENCY_BOUNDS_MS
        .iter()
        .enumerate()
        .map(|(i, b)| {
            acc += per_bucket[i];
            Bucket {
                cumulative_count: Some(acc),
                upper_bound: Some(*b),
                ..Default::default()
            }
        })
        .collect();
    let total: u64 = per_bucket.iter().sum();
    Metric {
        label,
        histogram: Some(Histogram {
            sample_count: Some(total),
            sample_sum: Some(total as f64),
            bucket,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn tool_families(vs: &str, server: &str, tool: &str, f: &Flush) -> Vec<MetricFamily> {
    let l = labels(vs, server, tool);
    let counter = |v: u64| Metric {
        label: l.clone(),
        counter: Some(Counter {
            value: Some(v as f64),
            ..Default::default()
        }),
        ..Default::default()
    };
    vec![
        family("calls", counter(f.calls)),
        family("errors", counter(f.errors)),
        family("denied", counter(f.denied)),
        family("latency_ms", latency_histogram(l.clone(), &f.latency)),
        family(
            "last_call_ts",
            Metric {
                label: l.clone(),
                gauge: Some(Gauge {
                    value: Some(f.last_call_ts as f64),
                }),
                ..Default::default()
            },
        ),
    ]
}

fn vs_counter(vs: &str, kind: &str, label: &str, name: &str, n: u64) -> MetricFamily {
    MetricFamily {
        name: Some(format!("wasmcustom.toolmesh.vs.{kind}")),
        metric: vec![Metric {
            label: vec![
                LabelPair {
                    name: Some("virtual_server".into()),
                    value: Some(vs.into()),
                },
                LabelPair {
                    name: Some(label.into()),
                    value: Some(name.into()),
                },
            ],
            counter: Some(Counter {
                value: Some(n as f64),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn caller_labels(vs: &str, token: &str) -> Vec<LabelPair> {
    [("virtual_server", vs), ("token", token)]
        .iter()
        .map(|(k, v)| LabelPair {
            name: Some((*k).into()),
            value: Some((*v).into()),
        })
        .collect()
}

/// `wasmcustom.toolmesh.caller.latency_ms` as Envoy sends it with the shipped `stats_tags`.
fn caller_latency(vs: &str, token: &str, per_bucket: &[u64; 20]) -> MetricFamily {
    MetricFamily {
        name: Some("wasmcustom.toolmesh.caller.latency_ms".into()),
        metric: vec![latency_histogram(caller_labels(vs, token), per_bucket)],
        ..Default::default()
    }
}

/// `wasmcustom.toolmesh.caller.<metric>` as Envoy sends it with the shipped `stats_tags`.
fn caller_counter(vs: &str, token: &str, metric: &str, n: u64) -> MetricFamily {
    MetricFamily {
        name: Some(format!("wasmcustom.toolmesh.caller.{metric}")),
        metric: vec![Metric {
            label: caller_labels(vs, token),
            counter: Some(Counter {
                value: Some(n as f64),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A caller's three counters in one flush.
fn caller_families(
    vs: &str,
    token: &str,
    calls: u64,
    errors: u64,
    denied: u64,
) -> Vec<MetricFamily> {
    vec![
        caller_counter(vs, token, "calls", calls),
        caller_counter(vs, token, "errors", errors),
        caller_counter(vs, token, "denied", denied),
    ]
}

fn report(node: &str, at: DateTime<Utc>, families: Vec<MetricFamily>) -> MetricsReport {
    MetricsReport {
        stream_id: 1,
        node_id: node.into(),
        node_cluster: "toolmesh".into(),
        received_at: at,
        uptime_s: Some(30.0),
        families,
        message_bytes: 1234,
        families_total: 80,
    }
}

async fn ingest(app: &TestApp, r: MetricsReport) {
    app.state
        .usage
        .as_ref()
        .expect("usage is on")
        .ingest(&r)
        .await
        .expect("ingest");
}

fn item<'a>(body: &'a Value, vs: &str, tool: &str) -> &'a Value {
    body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("items in {body}"))
        .iter()
        .find(|i| i["virtual_server"] == vs && i["tool"] == tool)
        .unwrap_or_else(|| panic!("{vs}/{tool} in {body}"))
}

fn tool(name: &str, desc: &str) -> Value {
    json!({"name": name, "description": desc, "inputSchema": {"type": "object", "properties": {}}})
}

/// Register `name` (unreachable) and give it `tools` through a synthetic discovery.
async fn seed(app: &TestApp, name: &str, tools: Vec<Value>) {
    let (s, body) = app
        .post(
            "/v1/mcp-servers",
            json!({"name": name, "url": format!("http://127.0.0.1:1/{name}/mcp")}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let outcome = DiscoveryOutcome::Success(Box::new(Discovered {
        server_info: json!({"name": name, "version": "1"}),
        protocol_version: "2025-06-18".into(),
        capabilities: json!({"tools": {}}),
        instructions: None,
        tools,
        prompts: vec![],
        resources: vec![],
        resource_templates: vec![],
        modern_versions: vec![],
        latency: Duration::from_millis(1),
    }));
    app.state
        .store
        .apply_discovery(name, &outcome)
        .await
        .expect("apply discovery");
}

both_backends!(
    flushes_from_several_envoys_add_up_exactly,
    windows_filters_and_sorting,
    bad_parameters_name_the_field,
    old_minutes_compact_into_hours_and_expire,
    concurrent_flushes_lose_no_increment,
    unused_tools_and_possible_duplicates,
    usage_per_token_and_virtual_server,
    token_latency_percentiles_from_caller_histograms,
);

fn token_row<'a>(body: &'a Value, vs: &str, token: &str) -> &'a Value {
    body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("items in {body}"))
        .iter()
        .find(|i| i["virtual_server"] == vs && i["token"] == token)
        .unwrap_or_else(|| panic!("{vs}/{token} in {body}"))
}

async fn usage_per_token_and_virtual_server(app: &TestApp) {
    for vs in ["demo", "other"] {
        let (s, body) = app.post("/v1/virtual-servers", json!({"name": vs})).await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
    }
    let mut ids = Vec::new();
    for name in ["agent-a", "agent-b"] {
        let (s, t) = app
            .post(
                "/v1/tokens",
                json!({"name": name, "virtual_servers": ["*"]}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{t}");
        ids.push(t["id"].as_str().unwrap().to_string());
    }
    let (a, b) = (ids[0].as_str(), ids[1].as_str());
    let now = Utc::now();
    let early = now - chrono::Duration::minutes(3);
    // Two Envoys; a's calls on both (deltas add up), b refused twice; a flush with zeros adds
    // nothing; an Envoy without stats_tags sends the full names.
    let mut f1 = caller_families("demo", a, 3, 1, 0);
    f1.extend(caller_families("demo", b, 0, 0, 2));
    ingest(app, report("gw-1", early, f1)).await;
    ingest(
        app,
        report("gw-2", now, caller_families("demo", a, 2, 0, 0)),
    )
    .await;
    ingest(
        app,
        report("gw-2", now, caller_families("demo", b, 0, 0, 0)),
    )
    .await;
    ingest(
        app,
        report(
            "gw-3",
            now,
            vec![MetricFamily {
                name: Some(format!("wasmcustom.toolmesh.caller.other.{b}.calls")),
                metric: vec![Metric {
                    counter: Some(Counter {
                        value: Some(7.0),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        ),
    )
    .await;
    // A token the catalog does not know (issued by another control plane, or long deleted).
    ingest(
        app,
        report("gw-1", now, caller_families("demo", "tok_unknown", 1, 0, 0)),
    )
    .await;

    let (s, body) = app.get("/v1/usage/tokens?since=1h").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let row = token_row(&body, "demo", a);
    assert_eq!(
        (&row["calls"], &row["errors"], &row["denied"]),
        (&json!(5), &json!(1), &json!(0)),
        "{body}"
    );
    assert_eq!(row["token_name"], "agent-a");
    assert_eq!(row["error_rate"], 0.2);
    // Last seen: the latest flush with activity (gw-2's, not the zeros after it).
    assert_eq!(
        row["last_seen"].as_str().unwrap(),
        DateTime::from_timestamp(now.timestamp(), 0)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let row = token_row(&body, "demo", b);
    assert_eq!((&row["calls"], &row["denied"]), (&json!(0), &json!(2)));
    assert_eq!(
        row["last_seen"].as_str().unwrap(),
        DateTime::from_timestamp(early.timestamp(), 0)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    assert_eq!(token_row(&body, "other", b)["calls"], 7);
    assert_eq!(
        token_row(&body, "demo", "tok_unknown")["token_name"],
        Value::Null
    );
    let order = |body: &Value| -> Vec<String> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                format!(
                    "{}/{}",
                    i["virtual_server"].as_str().unwrap(),
                    i["token_name"].as_str().unwrap_or("?")
                )
            })
            .collect()
    };
    // Most calls first by default.
    assert_eq!(
        order(&body),
        ["other/agent-b", "demo/agent-a", "demo/?", "demo/agent-b"]
    );

    // Filters and sorting.
    let (_, body) = app
        .get("/v1/usage/tokens?virtual_server=demo&sort=denied")
        .await;
    // The others tie at 0 (then by token id).
    assert_eq!(order(&body)[0], "demo/agent-b", "{body}");
    assert_eq!(order(&body).len(), 3, "{body}");
    let (_, body) = app.get(&format!("/v1/usage/tokens?token={b}")).await;
    assert_eq!(order(&body), ["other/agent-b", "demo/agent-b"]);
    let (_, body) = app
        .get("/v1/usage/tokens?virtual_server=demo&sort=last_seen&order=asc")
        .await;
    assert_eq!(order(&body)[0], "demo/agent-b", "{body}");
    let (_, body) = app.get("/v1/usage/tokens?since=1h&until=2m").await;
    assert_eq!(
        order(&body),
        ["demo/agent-a", "demo/agent-b"],
        "only gw-1's early flush"
    );
    for (path, field) in [
        ("/v1/usage/tokens?sort=p50", "sort"),
        ("/v1/usage/tokens?order=up", "order"),
        ("/v1/usage/tokens?since=later", "since"),
        ("/v1/usage/tokens?mcp_server=x", "mcp_server"),
    ] {
        assert_error(&app.get(path).await, StatusCode::BAD_REQUEST, Some(field));
    }

    // Compaction keeps the sums: three days ago in two minutes of one hour, then maintenance.
    let usage = app.state.usage.clone().expect("usage");
    let base = DateTime::from_timestamp((now.timestamp() - 3 * 86_400) / 3_600 * 3_600, 0).unwrap();
    for minute in [5, 50] {
        ingest(
            app,
            report(
                "gw-1",
                base + chrono::Duration::minutes(minute),
                caller_families("demo", a, 10, 0, 1),
            ),
        )
        .await;
    }
    let (_, before) = app.get("/v1/usage/tokens?since=4d").await;
    assert_eq!(token_row(&before, "demo", a)["calls"], 25);
    let stats = usage.maintain().await.expect("maintain");
    assert_eq!(stats.compacted_rows, 2, "{stats:?}");
    let (_, after) = app.get("/v1/usage/tokens?since=4d").await;
    assert_eq!(before["items"], after["items"]);
    let (_, old) = app.get("/v1/usage/tokens?since=4d&until=2d").await;
    assert_eq!(
        (
            &token_row(&old, "demo", a)["calls"],
            &token_row(&old, "demo", a)["denied"]
        ),
        (&json!(20), &json!(2))
    );
    assert_eq!(
        token_row(&old, "demo", a)["last_seen"].as_str().unwrap(),
        (base + chrono::Duration::minutes(50)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
}

/// `toolmesh.caller.<vs>.<token>.latency_ms` → `p50_ms`/`p95_ms`/`p99_ms` and `latency_samples`
/// per token, summed across Envoys, kept by compaction, sortable by p99.
async fn token_latency_percentiles_from_caller_histograms(app: &TestApp) {
    let now = Utc::now();
    // tok_fast: 8 samples in (0.5, 1] ms from gw-1 and 2 more from gw-2 (untagged names).
    let mut fast = [0; 20];
    fast[1] = 8;
    let mut f1 = caller_families("demo", "tok_fast", 8, 0, 0);
    f1.push(caller_latency("demo", "tok_fast", &fast));
    // tok_slow: 10 samples in (50, 100] ms.
    let mut slow = [0; 20];
    slow[6] = 10;
    f1.extend(caller_families("demo", "tok_slow", 10, 1, 0));
    f1.push(caller_latency("demo", "tok_slow", &slow));
    // tok_refused: refusals only, so no samples.
    f1.extend(caller_families("demo", "tok_refused", 0, 0, 3));
    ingest(app, report("gw-1", now, f1)).await;
    let mut more = [0; 20];
    more[1] = 2;
    let f2 = latency_histogram(vec![], &more);
    ingest(
        app,
        report(
            "gw-2",
            now,
            vec![MetricFamily {
                name: Some("wasmcustom.toolmesh.caller.demo.tok_fast.latency_ms".into()),
                metric: vec![f2],
                ..Default::default()
            }],
        ),
    )
    .await;

    let (s, body) = app.get("/v1/usage/tokens?since=1h").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let row = token_row(&body, "demo", "tok_fast");
    assert_eq!(row["calls"], 8, "{body}");
    assert_eq!(row["latency_samples"], 10, "{body}");
    assert_eq!(
        (&row["p50_ms"], &row["p95_ms"], &row["p99_ms"]),
        (&json!(0.75), &json!(0.98), &json!(1.0)),
        "{body}"
    );
    let row = token_row(&body, "demo", "tok_slow");
    assert_eq!(row["latency_samples"], 10, "{body}");
    assert_eq!(
        (&row["p50_ms"], &row["p99_ms"]),
        (&json!(75.0), &json!(99.5)),
        "{body}"
    );
    let row = token_row(&body, "demo", "tok_refused");
    assert_eq!(row["denied"], 3, "{body}");
    assert_eq!(row["latency_samples"], 0, "{body}");
    assert_eq!(
        (&row["p50_ms"], &row["p95_ms"], &row["p99_ms"]),
        (&Value::Null, &Value::Null, &Value::Null),
        "{body}"
    );
    let order = |body: &Value| -> Vec<String> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["token"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, body) = app.get("/v1/usage/tokens?sort=p99").await;
    assert_eq!(order(&body), ["tok_slow", "tok_fast", "tok_refused"]);
    let (_, body) = app.get("/v1/usage/tokens?sort=p99&order=asc").await;
    assert_eq!(order(&body), ["tok_fast", "tok_slow", "tok_refused"]);

    // Compacted into an hour row, the buckets (and so the percentiles) stay the same.
    let usage = app.state.usage.clone().expect("usage");
    let base = DateTime::from_timestamp((now.timestamp() - 3 * 86_400) / 3_600 * 3_600, 0).unwrap();
    for minute in [5, 50] {
        ingest(
            app,
            report(
                "gw-1",
                base + chrono::Duration::minutes(minute),
                vec![caller_latency("old", "tok_fast", &slow)],
            ),
        )
        .await;
    }
    let (_, before) = app.get("/v1/usage/tokens?since=4d&until=2d").await;
    let stats = usage.maintain().await.expect("maintain");
    assert_eq!(stats.compacted_rows, 2, "{stats:?}");
    let (_, after) = app.get("/v1/usage/tokens?since=4d&until=2d").await;
    assert_eq!(before["items"], after["items"]);
    let row = token_row(&after, "old", "tok_fast");
    assert_eq!(
        (&row["latency_samples"], &row["p50_ms"], &row["calls"]),
        (&json!(20), &json!(75.0), &json!(0)),
        "{after}"
    );
}

async fn flushes_from_several_envoys_add_up_exactly(app: &TestApp) {
    let now = Utc::now();
    let mut lat = [0; 20];
    lat[1] = 3; // 3 samples in (0.5, 1] ms
    let a = Flush {
        calls: 3,
        errors: 1,
        denied: 2,
        latency: lat,
        last_call_ts: now.timestamp() - 5,
    };
    let mut lat = [0; 20];
    lat[6] = 4; // 4 samples in (50, 100] ms
    let b = Flush {
        calls: 4,
        latency: lat,
        last_call_ts: now.timestamp() - 2,
        ..Default::default()
    };
    // Two Envoys, two flushes each (the second after a restart: deltas again).
    for (node, f) in [("gw-1", a), ("gw-2", b), ("gw-1", a), ("gw-2", b)] {
        let mut fams = tool_families("demo", "everything", "echo", &f);
        fams.push(vs_counter(
            "demo",
            "rq",
            "method",
            "tools_call",
            f.calls + f.denied,
        ));
        fams.push(vs_counter(
            "demo",
            "denied",
            "reason",
            "lookalike",
            f.denied,
        ));
        ingest(app, report(node, now, fams)).await;
    }
    // A flush with nothing new (zeros and the resent gauge) adds nothing.
    ingest(
        app,
        report(
            "gw-1",
            now,
            tool_families(
                "demo",
                "everything",
                "echo",
                &Flush {
                    last_call_ts: now.timestamp() - 5,
                    ..Default::default()
                },
            ),
        ),
    )
    .await;

    let (s, body) = app.get("/v1/usage/tools?since=1h").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let echo = item(&body, "demo", "echo");
    assert_eq!(echo["calls"], 14, "{body}");
    assert_eq!(echo["errors"], 2);
    assert_eq!(echo["denied"], 4);
    assert_eq!(echo["error_rate"], 0.1429);
    assert_eq!(echo["latency_samples"], 14);
    // 6 samples ≤ 1 ms, 8 in (50, 100]: the median is in the slow bucket, p99 near 100 ms.
    assert!(echo["p50_ms"].as_f64().unwrap() > 50.0, "{echo}");
    assert!(echo["p99_ms"].as_f64().unwrap() > 95.0, "{echo}");
    assert_eq!(
        echo["last_called"].as_str().unwrap(),
        DateTime::from_timestamp(now.timestamp() - 2, 0)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    assert_eq!(echo["upstream_tool"], Value::Null, "not in the catalog");

    let (s, body) = app.get("/v1/usage/virtual-servers").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let demo = &body["items"][0];
    assert_eq!(demo["virtual_server"], "demo");
    assert_eq!(demo["calls"], 14);
    assert_eq!(demo["requests"], 18);
    assert_eq!(demo["denied"], 4);
    assert_eq!(demo["denied_by_reason"]["lookalike"], 4);
    assert_eq!(demo["tools_called"], 1);

    let (_, metrics) = app
        .raw(axum::http::Method::GET, "/metrics", None, None, "")
        .await;
    let text = metrics.as_str().unwrap_or_default();
    assert!(text.contains("toolmesh_usage_calls_total 14"), "{text}");
    assert!(text.contains("toolmesh_usage_reports_total 5"), "{text}");
}

async fn windows_filters_and_sorting(app: &TestApp) {
    let now = Utc::now();
    let flush = |calls: u64, errors: u64, slow: bool| {
        let mut latency = [0; 20];
        latency[if slow { 9 } else { 2 }] = calls;
        Flush {
            calls,
            errors,
            latency,
            last_call_ts: now.timestamp(),
            ..Default::default()
        }
    };
    let mut fams = tool_families("a", "s1", "fast", &flush(10, 0, false));
    fams.extend(tool_families("a", "s1", "slow", &flush(2, 2, true)));
    fams.extend(tool_families("b", "s2", "other", &flush(5, 1, false)));
    ingest(app, report("gw", now, fams)).await;
    // Three hours ago: outside `since=1h`, inside `since=4h`.
    ingest(
        app,
        report(
            "gw",
            now - chrono::Duration::hours(3),
            tool_families("a", "s1", "old", &flush(7, 0, false)),
        ),
    )
    .await;

    let names = |body: &Value| -> Vec<String> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["tool"].as_str().unwrap().to_string())
            .collect()
    };
    let (_, body) = app.get("/v1/usage/tools?since=1h").await;
    assert_eq!(names(&body), ["fast", "other", "slow"], "{body}");
    let (_, body) = app.get("/v1/usage/tools?since=4h").await;
    assert_eq!(names(&body), ["fast", "old", "other", "slow"], "{body}");
    let (_, body) = app.get("/v1/usage/tools?since=4h&until=2h").await;
    assert_eq!(names(&body), ["old"], "{body}");
    let since = (now - chrono::Duration::minutes(10)).to_rfc3339();
    let (s, body) = app
        .get(&format!(
            "/v1/usage/tools?since={}&virtual_server=a",
            urlencode(&since)
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(names(&body), ["fast", "slow"]);
    let (_, body) = app.get("/v1/usage/tools?since=1h&mcp_server=s2").await;
    assert_eq!(names(&body), ["other"]);
    let (_, body) = app.get("/v1/usage/tools?since=1h&sort=errors").await;
    assert_eq!(names(&body), ["slow", "other", "fast"]);
    let (_, body) = app
        .get("/v1/usage/tools?since=1h&sort=p99&order=desc")
        .await;
    assert_eq!(names(&body)[0], "slow");
    let (_, body) = app
        .get("/v1/usage/tools?since=1h&sort=calls&order=asc")
        .await;
    assert_eq!(names(&body), ["slow", "other", "fast"]);
    let (_, body) = app.get("/v1/usage/virtual-servers?since=4h").await;
    let vs: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["virtual_server"].as_str().unwrap())
        .collect();
    assert_eq!(vs, ["a", "b"], "most calls first: {body}");
    assert_eq!(body["items"][0]["calls"], 19);
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

async fn bad_parameters_name_the_field(app: &TestApp) {
    for (path, field) in [
        ("/v1/usage/tools?since=yesterday", "since"),
        ("/v1/usage/tools?since=5y", "since"),
        ("/v1/usage/tools?until=soon", "until"),
        ("/v1/usage/tools?since=1h&until=2h", "since"),
        ("/v1/usage/tools?sort=latency", "sort"),
        ("/v1/usage/tools?order=up", "order"),
        ("/v1/usage/tools?limit=3", "limit"),
        ("/v1/usage/virtual-servers?sort=calls", "sort"),
        ("/v1/usage/unused?since=7", "since"),
    ] {
        assert_error(&app.get(path).await, StatusCode::BAD_REQUEST, Some(field));
    }
    let (s, _) = app
        .raw(axum::http::Method::GET, "/v1/usage/tools", None, None, "")
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

async fn old_minutes_compact_into_hours_and_expire(app: &TestApp) {
    let usage = app.state.usage.clone().expect("usage");
    let now = Utc::now();
    let f = |calls: u64| {
        let mut latency = [0; 20];
        latency[3] = calls;
        Flush {
            calls,
            latency,
            last_call_ts: 0,
            ..Default::default()
        }
    };
    // Three days ago, in three different minutes of one hour (compacted: older than 48 h).
    let base = DateTime::from_timestamp((now.timestamp() - 3 * 86_400) / 3_600 * 3_600, 0).unwrap();
    for (minute, calls) in [(1, 2), (17, 3), (59, 4)] {
        ingest(
            app,
            report(
                "gw",
                base + chrono::Duration::minutes(minute),
                tool_families("demo", "s", "t", &f(calls)),
            ),
        )
        .await;
    }
    // 40 days ago (expired) and now (kept as minutes).
    ingest(
        app,
        report(
            "gw",
            now - chrono::Duration::days(40),
            tool_families("demo", "s", "t", &f(100)),
        ),
    )
    .await;
    ingest(
        app,
        report("gw", now, tool_families("demo", "s", "t", &f(1))),
    )
    .await;
    assert_eq!(usage.store.row_count().await.unwrap(), (5, 0));

    let (_, before) = app.get("/v1/usage/tools?since=4d").await;
    let stats = usage.maintain().await.expect("maintain");
    // The 40-day-old minute is compacted too, then deleted with its hour.
    assert_eq!(stats.compacted_rows, 4, "{stats:?}");
    assert_eq!(stats.deleted_rows, 1, "{stats:?}");
    assert_eq!(usage.store.row_count().await.unwrap(), (1, 1));
    // Nothing changes for a window that covers whole hours.
    let (_, after) = app.get("/v1/usage/tools?since=4d").await;
    assert_eq!(item(&after, "demo", "t")["calls"], 10);
    assert_eq!(item(&before, "demo", "t"), item(&after, "demo", "t"));
    // Running it again moves nothing twice.
    let stats = usage.maintain().await.expect("maintain");
    assert_eq!((stats.compacted_rows, stats.deleted_rows), (0, 0));
    let (_, again) = app.get("/v1/usage/tools?since=4d").await;
    assert_eq!(item(&again, "demo", "t")["calls"], 10);
    // More minutes of an hour that was already compacted (a late flush) add to the hour row.
    ingest(
        app,
        report(
            "gw",
            base + chrono::Duration::minutes(30),
            tool_families("demo", "s", "t", &f(5)),
        ),
    )
    .await;
    usage.maintain().await.expect("maintain");
    assert_eq!(usage.store.row_count().await.unwrap(), (1, 1));
    let (_, late) = app.get("/v1/usage/tools?since=4d").await;
    assert_eq!(item(&late, "demo", "t")["calls"], 15);
    assert_eq!(item(&late, "demo", "t")["latency_samples"], 15);
}

async fn concurrent_flushes_lose_no_increment(app: &TestApp) {
    let now = Utc::now();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let usage = app.state.usage.clone().expect("usage");
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let mut latency = [0; 20];
                latency[4] = 1;
                let f = Flush {
                    calls: 1,
                    latency,
                    last_call_ts: now.timestamp(),
                    ..Default::default()
                };
                let mut fams = tool_families("demo", "s", "t", &f);
                fams.extend(tool_families("demo", "s", &format!("t{i}"), &f));
                usage
                    .ingest(&report(&format!("gw-{i}"), now, fams))
                    .await
                    .expect("ingest");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (_, body) = app.get("/v1/usage/tools").await;
    assert_eq!(item(&body, "demo", "t")["calls"], 80, "{body}");
    assert_eq!(item(&body, "demo", "t")["latency_samples"], 80);
    assert_eq!(item(&body, "demo", "t3")["calls"], 10);
}

async fn unused_tools_and_possible_duplicates(app: &TestApp) {
    seed(
        app,
        "github",
        vec![
            tool("search_issues", "Search issues in a repository by text."),
            tool("get.file", "Read one file from a repository."),
            tool("admin_only", "Dangerous."),
        ],
    )
    .await;
    seed(
        app,
        "gitlab",
        vec![
            tool("searchIssues", "Find issues in a project."),
            tool("read_file", "Read one file from a repository!"),
        ],
    )
    .await;
    let (s, body) = app
        .post(
            "/v1/virtual-servers",
            json!({"name": "dev", "tools": [
                {"mcp_server": "github", "tool": "search_issues"},
                {"mcp_server": "github", "tool": "get.file", "expose_as": "gh.get.file"},
                {"mcp_server": "gitlab", "tool": "searchIssues"},
            ]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");

    let unused = |body: &Value| -> Vec<String> {
        body["exposed_unused"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| {
                format!(
                    "{}/{}/{}",
                    u["virtual_server"].as_str().unwrap(),
                    u["mcp_server"].as_str().unwrap(),
                    u["exposed_as"].as_str().unwrap()
                )
            })
            .collect()
    };
    let (s, body) = app.get("/v1/usage/unused?since=7d").await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(
        unused(&body),
        [
            "dev/github/gh.get.file",
            "dev/github/search_issues",
            "dev/gitlab/searchIssues"
        ]
    );
    let not: Vec<&str> = body["not_exposed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tool"].as_str().unwrap())
        .collect();
    assert_eq!(not, ["admin_only", "read_file"], "{body}");
    let dups = body["possible_duplicates"].as_array().unwrap();
    assert!(
        dups.iter().any(|g| g["reason"] == "same_name"
            && g["tools"] == json!([{"mcp_server": "github", "tool": "search_issues"}, {"mcp_server": "gitlab", "tool": "searchIssues"}])),
        "{body}"
    );
    assert!(
        dups.iter().any(|g| g["reason"] == "same_description"
            && g["tools"] == json!([{"mcp_server": "github", "tool": "get.file"}, {"mcp_server": "gitlab", "tool": "read_file"}])),
        "{body}"
    );

    // A call to the renamed tool (its stat segment is gh_get_file) takes it off the list.
    let now = Utc::now();
    ingest(
        app,
        report(
            "gw",
            now,
            tool_families(
                "dev",
                "github",
                "gh_get_file",
                &Flush {
                    calls: 1,
                    last_call_ts: now.timestamp(),
                    ..Default::default()
                },
            ),
        ),
    )
    .await;
    let (_, body) = app.get("/v1/usage/unused?since=7d").await;
    assert_eq!(
        unused(&body),
        ["dev/github/search_issues", "dev/gitlab/searchIssues"]
    );
    let (_, tools) = app.get("/v1/usage/tools").await;
    assert_eq!(
        item(&tools, "dev", "gh_get_file")["upstream_tool"],
        "get.file"
    );
}

/// `toolmesh usage tools|virtual-servers|unused` against a live API (the binary, as a user runs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_prints_usage_and_unused() {
    let app = TestApp::sqlite().await;
    seed(
        &app,
        "everything",
        vec![
            tool("echo", "Echo the message back to the caller."),
            tool("add", "Add two integers."),
        ],
    )
    .await;
    let (s, body) = app
        .post(
            "/v1/virtual-servers",
            json!({"name": "demo", "tools": [{"mcp_server": "everything", "tool": "echo"}, {"mcp_server": "everything", "tool": "add"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let now = Utc::now();
    let mut latency = [0; 20];
    latency[2] = 4;
    ingest(
        &app,
        report(
            "gw",
            now,
            tool_families(
                "demo",
                "everything",
                "echo",
                &Flush {
                    calls: 4,
                    errors: 1,
                    latency,
                    last_call_ts: now.timestamp(),
                    ..Default::default()
                },
            ),
        ),
    )
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let router = app.router.clone();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolmesh"))
            .args(args)
            .args(["--api-url", &api, "--token", common::TOKEN])
            .output()
            .expect("run toolmesh");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let tools = run(&["usage", "tools", "--since", "1h"]);
    let line = tools
        .lines()
        .find(|l| l.starts_with("demo"))
        .unwrap_or_else(|| panic!("{tools}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        &cols[..6],
        ["demo", "everything", "echo", "4", "1", "0"],
        "{tools}"
    );
    let json: Value =
        serde_json::from_str(&run(&["usage", "tools", "--json", "--sort", "errors"])).unwrap();
    assert_eq!(json["items"][0]["calls"], 4);
    let vs = run(&["usage", "virtual-servers"]);
    assert!(vs.lines().any(|l| l.starts_with("demo")), "{vs}");
    // Per token.
    let (s, t) = app
        .post(
            "/v1/tokens",
            json!({"name": "cli-agent", "virtual_servers": ["demo"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let token = t["id"].as_str().unwrap();
    ingest(
        &app,
        report("gw", now, caller_families("demo", token, 4, 1, 2)),
    )
    .await;
    let tokens = run(&[
        "usage",
        "tokens",
        "--since",
        "1h",
        "--virtual-server",
        "demo",
    ]);
    let line = tokens
        .lines()
        .find(|l| l.starts_with("demo"))
        .unwrap_or_else(|| panic!("{tokens}"));
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        &cols[..6],
        ["demo", token, "cli-agent", "4", "1", "2"],
        "{tokens}"
    );
    let json: Value = serde_json::from_str(&run(&[
        "usage",
        "tokens",
        "--json",
        "--token-id",
        token,
        "--sort",
        "denied",
    ]))
    .unwrap();
    assert_eq!(json["items"][0]["token_name"], "cli-agent", "{json}");
    assert_eq!(json["items"].as_array().unwrap().len(), 1);
    let unused = run(&["usage", "unused", "--since", "7d"]);
    assert!(unused.contains("Exposed but not called"), "{unused}");
    assert!(
        unused
            .lines()
            .any(|l| l.starts_with("demo") && l.contains(" add ")),
        "{unused}"
    );
    assert!(
        !unused
            .lines()
            .any(|l| l.starts_with("demo") && l.contains(" echo ")),
        "{unused}"
    );
    let json: Value = serde_json::from_str(&run(&["usage", "unused", "--json"])).unwrap();
    assert_eq!(json["exposed_unused"][0]["tool"], "add");
    // A bad window is the API's 400, named.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolmesh"))
        .args([
            "usage",
            "tools",
            "--since",
            "yesterday",
            "--api-url",
            &api,
            "--token",
            common::TOKEN,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("since"),
        "{out:?}"
    );
    server.abort();
}
