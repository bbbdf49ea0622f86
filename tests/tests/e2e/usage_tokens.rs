//! Per-token usage and the access log (issue 7 item 4, issue 8), with real pieces only: the
//! control plane in-process (REST API, store, tokens, ADS + metrics service), Envoy from the
//! shipped `envoy/bootstrap.yaml` (its `stats_tags` and metrics-service sink), the toolmesh
//! filter, an rmcp upstream, and the official Python MCP client sending each token.
//!
//! Two tokens open one virtual server; the control plane lists both as its callers, so the
//! filter counts `toolmesh.caller.demo.<token id>.*` for each. What a user sees: the calls, a
//! refusal and p50/p95/p99 latency per token in `/v1/usage/tokens` (with the token names), a
//! `token` label in Envoy's `/stats/prometheus` (also on the `latency_ms` histogram), and JSON access-log lines on Envoy's stdout naming the virtual server,
//! the tool and the outcome (the filter's `toolmesh` value) and the caller (its token id).

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};
use toolmesh_e2e::gateway::Gateway;
use toolmesh_e2e::test_servers::{TestServerConfig, spawn};
use toolmesh_e2e::{Envoy, python_client, require, results, tools};

/// Usage lags calls by one flush interval (5 s) plus storing; generous for a loaded machine.
const REPORT_TIMEOUT: Duration = Duration::from_secs(90);

/// How long to wait for Envoy to get a new policy, or to write its access log.
const ENVOY_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the Python client on `url` with `token` as bearer; returns its results.
async fn as_token(url: &str, token: &str, ops: Value) -> Vec<Value> {
    let doc = python_client(
        url,
        &ops,
        &[
            "--mode",
            "legacy",
            "--header",
            &format!("Authorization: Bearer {token}"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(doc["connected"], true, "{doc:#}");
    results(&doc).clone()
}

fn echo(i: usize) -> Value {
    json!({"op": "call_tool", "name": "echo", "arguments": {"message": format!("hello {i}")}})
}

/// Polls Envoy's `/config_dump` until the filter's policy lists every id in `ids` as a caller.
async fn wait_for_callers_in_envoy(envoy: &Envoy, ids: &[&str]) {
    let deadline = Instant::now() + ENVOY_TIMEOUT;
    loop {
        let dump = envoy.admin_get("/config_dump").await.unwrap_or_default();
        if ids.iter().all(|id| dump.contains(id)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Envoy's policy does not list the callers {ids:?} after {ENVOY_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn token_row<'a>(usage: &'a Value, token: &str) -> Option<&'a Value> {
    usage["items"]
        .as_array()?
        .iter()
        .find(|i| i["virtual_server"] == "demo" && i["token"] == token)
}

fn count(usage: &Value, token: &str, field: &str) -> u64 {
    token_row(usage, token)
        .and_then(|r| r[field].as_u64())
        .unwrap_or(0)
}

/// Polls `/v1/usage/tokens` until both tokens show what was done (fails if a count ever goes
/// beyond it).
async fn wait_for_token_usage(gw: &Gateway, want: &[(&str, &str, u64)]) -> Value {
    let deadline = Instant::now() + REPORT_TIMEOUT;
    loop {
        let usage = gw
            .cp()
            .ok(
                Method::GET,
                "/v1/usage/tokens?since=1h&virtual_server=demo",
                None,
            )
            .await
            .unwrap();
        let mut done = true;
        for (token, field, n) in want {
            let got = count(&usage, token, field);
            assert!(got <= *n, "{token} {field}: {got} > {n}: {usage:#}");
            done &= got == *n;
        }
        if done {
            return usage;
        }
        assert!(
            Instant::now() < deadline,
            "usage per token after {REPORT_TIMEOUT:?} is not {want:?}: {usage:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The JSON lines of Envoy's access log (its stdout, in the process log) that match `pred`,
/// polled until there is one (Envoy writes the access log asynchronously).
async fn wait_for_access_log(envoy: &Envoy, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + ENVOY_TIMEOUT;
    loop {
        let log = envoy.log();
        let found = log
            .lines()
            .filter(|l| l.trim_start().starts_with('{'))
            .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
            .find(|v| pred(v));
        if let Some(line) = found {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no access-log line with {what} after {ENVOY_TIMEOUT:?}; JSON lines:\n{}",
            log.lines()
                .filter(|l| l.trim_start().starts_with('{'))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tokens_are_counted_apart_labelled_in_prometheus_and_logged() {
    require!(tools::python());
    let upstream = spawn(TestServerConfig::stateless_json()).await.unwrap();
    let Some(gw) = Gateway::builder("gw-1")
        .mcp_server("everything", &upstream.url())
        .virtual_server(json!({"name": "demo",
            "tools": [{"mcp_server": "everything", "tool": "echo"}]}))
        .start()
        .await
    else {
        return;
    };
    let (jwt_a, a) = gw
        .cp()
        .issue_token(&json!({"name": "agent-a", "virtual_servers": ["demo"]}))
        .await
        .unwrap();
    let (jwt_b, b) = gw
        .cp()
        .issue_token(&json!({"name": "agent-b", "virtual_servers": ["*"]}))
        .await
        .unwrap();
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    // Issuing publishes the callers; Envoy counts per token once it has them.
    let policy = gw.cp().ok(Method::GET, "/v1/policy", None).await.unwrap();
    assert_eq!(
        policy["virtual_servers"][0]["callers"],
        json!([a, b]),
        "{policy:#}"
    );
    wait_for_callers_in_envoy(gw.envoy(), &[a, b]).await;

    let url = gw.url("demo");
    // agent-a: three calls.
    let r = as_token(&url, &jwt_a, json!([echo(1), echo(2), echo(3)])).await;
    assert!(r.iter().all(|r| r["ok"] == true), "{r:#?}");
    // agent-b: one call, and one refused (`add` is not exposed by demo).
    let r = as_token(
        &url,
        &jwt_b,
        json!([echo(4), {"op": "call_tool", "name": "add", "arguments": {"a": 1, "b": 2}}]),
    )
    .await;
    assert_eq!(r[0]["ok"], true, "{r:#?}");
    assert_eq!(r[1]["ok"], false, "{r:#?}");
    assert_eq!(r[1]["error"]["code"], -32602, "{r:#?}");

    // /v1/usage/tokens: each token's own numbers, with its name.
    let usage =
        wait_for_token_usage(&gw, &[(a, "calls", 3), (b, "calls", 1), (b, "denied", 1)]).await;
    let row_a = token_row(&usage, a).unwrap();
    assert_eq!(row_a["token_name"], "agent-a", "{usage:#}");
    assert_eq!((&row_a["errors"], &row_a["denied"]), (&json!(0), &json!(0)));
    assert!(row_a["last_seen"].is_string(), "{row_a}");
    assert_eq!(token_row(&usage, b).unwrap()["token_name"], "agent-b");
    // Most calls first.
    assert_eq!(usage["items"][0]["token"], a, "{usage:#}");

    // Latency per token, from the per-caller histogram: one sample per forwarded call (the
    // refusal has none). Histograms may arrive a flush after the counters.
    let usage = wait_for_token_usage(
        &gw,
        &[
            (a, "calls", 3),
            (b, "calls", 1),
            (b, "denied", 1),
            (a, "latency_samples", 3),
            (b, "latency_samples", 1),
        ],
    )
    .await;
    for token in [a, b] {
        let row = token_row(&usage, token).unwrap();
        let p = |f: &str| {
            row[f]
                .as_f64()
                .unwrap_or_else(|| panic!("{token} {f} is not a number: {row}"))
        };
        let (p50, p95, p99) = (p("p50_ms"), p("p95_ms"), p("p99_ms"));
        assert!(
            0.0 < p50 && p50 <= p95 && p95 <= p99 && p99 <= 10_000.0,
            "{token}: p50 {p50}, p95 {p95}, p99 {p99}: {row}"
        );
    }

    // Envoy's /stats/prometheus: the token is a label (from the shipped stats_tags).
    let prometheus = gw.envoy().stats_prometheus().await;
    let sample = |metric: &str, token: &str| -> Option<String> {
        prometheus
            .lines()
            .find(|l| {
                l.starts_with(&format!("{metric}{{"))
                    && l.contains(&format!("token=\"{token}\""))
                    && l.contains("virtual_server=\"demo\"")
            })
            .map(str::to_owned)
    };
    let caller_lines = || {
        prometheus
            .lines()
            .filter(|l| l.contains("caller"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let line = sample("toolmesh_caller_calls", a)
        .unwrap_or_else(|| panic!("no toolmesh_caller_calls for {a}:\n{}", caller_lines()));
    assert!(line.ends_with(" 3"), "{line}");
    let line = sample("toolmesh_caller_denied", b)
        .unwrap_or_else(|| panic!("no toolmesh_caller_denied for {b}:\n{}", caller_lines()));
    assert!(line.ends_with(" 1"), "{line}");
    let line = sample("toolmesh_caller_latency_ms_count", a).unwrap_or_else(|| {
        panic!(
            "no toolmesh_caller_latency_ms_count for {a}:\n{}",
            caller_lines()
        )
    });
    assert!(line.ends_with(" 3"), "{line}");

    // Envoy's access log (its stdout): JSON with the filter's `<virtual server> <method>
    // <mcp_server>/<tool> <outcome>` and the caller's token id.
    let facts = |v: &Value| -> Vec<String> {
        v["toolmesh"]
            .as_str()
            .unwrap_or_default()
            .split(' ')
            .map(str::to_owned)
            .collect()
    };
    let ok = wait_for_access_log(gw.envoy(), "agent-a's echo call", |v| {
        v["caller"] == a && facts(v).get(2).is_some_and(|t| t == "everything/echo")
    })
    .await;
    eprintln!("access log line: {ok}");
    assert_eq!(
        facts(&ok),
        ["demo", "tools_call", "everything/echo", "ok"],
        "{ok}"
    );
    assert_eq!(ok["response_code"], 200, "{ok}");
    assert_eq!(ok["method"], "POST", "{ok}");
    assert_eq!(ok["upstream_cluster"], "mcp_everything", "{ok}");
    assert!(ok["start_time"].is_string(), "{ok}");
    assert!(ok["duration_ms"].is_u64(), "{ok}");
    let denied = wait_for_access_log(gw.envoy(), "agent-b's refused call", |v| {
        v["caller"] == b && facts(v).get(3).is_some_and(|o| o.starts_with("denied."))
    })
    .await;
    assert_eq!(
        facts(&denied),
        ["demo", "tools_call", "-", "denied.not_allowed"],
        "{denied}"
    );

    gw.stop().await;
}
