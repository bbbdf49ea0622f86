//! From one Envoy flush to the rows it adds: pure parsing of a [`MetricsReport`].
//!
//! What Envoy 1.40's metrics-service sink sends, measured (not assumed): with
//! `report_counters_as_deltas: true`, a counter's value is what it counted since the previous
//! flush; a histogram's buckets are those of the flush interval only (they are interval
//! statistics whether or not counters are deltas); a gauge is its current value. So every
//! message is a self-contained increment: summing messages from any number of Envoys, and from
//! an Envoy before and after a restart, counts each call exactly once, and no per-Envoy state is
//! needed to read them. The `last_call_ts` gauge is combined with `max`.
//!
//! A stat's virtual server, MCP server, tool, method or reason come from its labels (the
//! bootstrap's `stats_tags`, sent as labels with `emit_tags_as_labels: true`) or, without tags,
//! from the segments of its full name — so an Envoy with a different bootstrap still counts.

use std::collections::BTreeMap;

use toolmesh_xds::server::MetricsReport;
use toolmesh_xds::server::prometheus::{Metric, MetricFamily};

use super::rollup::{Latency, MINUTE, bucket_start};

/// One tool of one virtual server, as named in the filter's stats.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ToolKey {
    /// Virtual server slug.
    pub virtual_server: String,
    /// MCP server slug.
    pub mcp_server: String,
    /// Exposed tool name as a stat segment (see [`stat_segment`]).
    pub tool: String,
}

/// What one flush added for one tool.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ToolDelta {
    /// Calls forwarded upstream.
    pub calls: u64,
    /// Forwarded calls that failed.
    pub errors: u64,
    /// Refused calls that named this tool.
    pub denied: u64,
    /// Latency samples of calls that completed.
    pub latency: Latency,
    /// Envoy's `last_call_ts` gauge (Unix seconds), when it was sent.
    pub last_call_ts: Option<i64>,
}

impl ToolDelta {
    /// Whether this flush saw anything happen for the tool (the gauge alone is not activity:
    /// Envoy resends it on every flush).
    pub fn has_activity(&self) -> bool {
        self.calls > 0 || self.errors > 0 || self.denied > 0 || !self.latency.is_empty()
    }
}

/// Per virtual server: `rq` (requests by method) or `denied` (refusals by reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VsKind {
    /// `toolmesh.vs.<vs>.rq.<method>`.
    Rq,
    /// `toolmesh.vs.<vs>.denied.<reason>`.
    Denied,
}

impl VsKind {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rq => "rq",
            Self::Denied => "denied",
        }
    }
}

/// One per-virtual-server counter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VsKey {
    /// Virtual server slug.
    pub virtual_server: String,
    /// Requests or refusals.
    pub kind: VsKind,
    /// Method or reason.
    pub name: String,
}

/// One caller (token) of one virtual server, as named in the filter's stats
/// (`toolmesh.caller.<vs>.<token id>.<metric>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallerKey {
    /// Virtual server slug.
    pub virtual_server: String,
    /// The token id (`jti`).
    pub token: String,
}

/// What one flush added for one caller of one virtual server.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CallerDelta {
    /// Forwarded `tools/call`s.
    pub calls: u64,
    /// Forwarded calls that failed.
    pub errors: u64,
    /// Refused requests.
    pub denied: u64,
    /// Latency samples of this caller's calls that completed
    /// (`toolmesh.caller.<vs>.<token>.latency_ms`, the same samples as the tools' histograms).
    pub latency: Latency,
}

impl CallerDelta {
    fn has_activity(&self) -> bool {
        self.calls > 0 || self.errors > 0 || self.denied > 0 || !self.latency.is_empty()
    }
}

/// Everything one flush adds, for the minute it arrived in.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct UsageBatch {
    /// Start of the minute (Unix seconds) the increments are booked in.
    pub minute: i64,
    /// When the flush arrived (Unix seconds): the `last_seen` of the callers in it.
    pub received_at: i64,
    /// Per tool, only tools with activity.
    pub tools: BTreeMap<ToolKey, ToolDelta>,
    /// Per virtual server counter, only non-zero ones.
    pub vs: BTreeMap<VsKey, u64>,
    /// Per caller of a virtual server, only callers with activity.
    pub callers: BTreeMap<CallerKey, CallerDelta>,
}

impl UsageBatch {
    /// Whether the flush added nothing.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty() && self.vs.is_empty() && self.callers.is_empty()
    }

    /// Calls in this batch (all tools).
    pub fn calls(&self) -> u64 {
        self.tools.values().map(|t| t.calls).sum()
    }
}

/// The filter's way of turning a name into one stat segment (one function for both sides).
pub use toolmesh_proto::stat_segment;

/// Book one flush: the increments of every toolmesh stat in it, in the minute it arrived.
pub fn batch_from_report(report: &MetricsReport) -> UsageBatch {
    let mut batch = UsageBatch {
        minute: bucket_start(report.received_at.timestamp(), MINUTE),
        received_at: report.received_at.timestamp(),
        ..Default::default()
    };
    for family in &report.families {
        add_family(&mut batch, family);
    }
    batch.tools.retain(|_, d| d.has_activity());
    batch.vs.retain(|_, n| *n > 0);
    batch.callers.retain(|_, d| d.has_activity());
    batch
}

fn add_family(batch: &mut UsageBatch, family: &MetricFamily) {
    let name = family.name.as_deref().unwrap_or_default();
    let rest = name.strip_prefix("wasmcustom.").unwrap_or(name);
    let Some(rest) = rest.strip_prefix("toolmesh.") else {
        return;
    };
    let segments: Vec<&str> = rest.split('.').filter(|s| !s.is_empty()).collect();
    for metric in &family.metric {
        let labels: BTreeMap<&str, &str> = metric
            .label
            .iter()
            .filter_map(|l| Some((l.name.as_deref()?, l.value.as_deref()?)))
            .collect();
        match segments.first() {
            Some(&"tool") => add_tool_metric(batch, &segments[1..], &labels, metric),
            Some(&"vs") => add_vs_metric(batch, &segments[1..], &labels, metric),
            Some(&"caller") => add_caller_metric(batch, &segments[1..], &labels, metric),
            _ => {}
        }
    }
}

/// `tool.<vs>.<mcp_server>.<tool>.<stat>`: each of the three names comes from its label when
/// tagged, otherwise from the next name segment.
fn add_tool_metric(
    batch: &mut UsageBatch,
    segments: &[&str],
    labels: &BTreeMap<&str, &str>,
    metric: &Metric,
) {
    let Some((stat, [virtual_server, mcp_server, tool])) =
        named_parts(segments, labels, ["virtual_server", "mcp_server", "tool"])
    else {
        return;
    };
    let key = ToolKey {
        virtual_server,
        mcp_server,
        tool,
    };
    let counter = || counter_value(metric);
    match stat {
        "calls" => add_count(batch, key, counter(), |d| &mut d.calls),
        "errors" => add_count(batch, key, counter(), |d| &mut d.errors),
        "denied" => add_count(batch, key, counter(), |d| &mut d.denied),
        "latency_ms" => {
            if let Some(latency) = histogram_latency(metric) {
                batch.tools.entry(key).or_default().latency.merge(&latency);
            }
        }
        "last_call_ts" => {
            let ts = metric.gauge.as_ref().and_then(|g| g.value).unwrap_or(0.0);
            if ts >= 1.0 && ts.is_finite() {
                let d = batch.tools.entry(key).or_default();
                d.last_call_ts = d.last_call_ts.max(Some(ts as i64));
            }
        }
        _ => {}
    }
}

fn add_count(
    batch: &mut UsageBatch,
    key: ToolKey,
    n: u64,
    field: impl Fn(&mut ToolDelta) -> &mut u64,
) {
    if n > 0 {
        *field(batch.tools.entry(key).or_default()) += n;
    }
}

/// `vs.<vs>.rq.<method>` / `vs.<vs>.denied.<reason>`.
fn add_vs_metric(
    batch: &mut UsageBatch,
    segments: &[&str],
    labels: &BTreeMap<&str, &str>,
    metric: &Metric,
) {
    let mut rest = segments.iter();
    let virtual_server = match labels.get("virtual_server") {
        Some(v) => (*v).to_string(),
        None => match rest.next() {
            Some(s) => (*s).to_string(),
            None => return,
        },
    };
    let (kind, label) = match rest.next() {
        Some(&"rq") => (VsKind::Rq, "method"),
        Some(&"denied") => (VsKind::Denied, "reason"),
        _ => return,
    };
    let name = match labels.get(label) {
        Some(v) => (*v).to_string(),
        None => match rest.next() {
            Some(s) => (*s).to_string(),
            None => return,
        },
    };
    if rest.next().is_some() {
        return;
    }
    let n = counter_value(metric);
    if n > 0 {
        *batch
            .vs
            .entry(VsKey {
                virtual_server,
                kind,
                name,
            })
            .or_default() += n;
    }
}

/// `caller.<vs>.<token>.<metric>`: the virtual server and token come from their labels
/// (`virtual_server`, `token`) when tagged, otherwise from the name segments.
fn add_caller_metric(
    batch: &mut UsageBatch,
    segments: &[&str],
    labels: &BTreeMap<&str, &str>,
    metric: &Metric,
) {
    let Some((stat, [virtual_server, token])) =
        named_parts(segments, labels, ["virtual_server", "token"])
    else {
        return;
    };
    let key = CallerKey {
        virtual_server,
        token,
    };
    let field: fn(&mut CallerDelta) -> &mut u64 = match stat {
        "calls" => |d| &mut d.calls,
        "errors" => |d| &mut d.errors,
        "denied" => |d| &mut d.denied,
        "latency_ms" => {
            if let Some(latency) = histogram_latency(metric) {
                batch
                    .callers
                    .entry(key)
                    .or_default()
                    .latency
                    .merge(&latency);
            }
            return;
        }
        _ => return,
    };
    let n = counter_value(metric);
    if n > 0 {
        *field(batch.callers.entry(key).or_default()) += n;
    }
}

/// The samples of a `latency_ms` histogram (per tool or per caller; Envoy's buckets of one
/// flush interval). `None` for a metric without a histogram or without samples.
fn histogram_latency(metric: &Metric) -> Option<Latency> {
    let h = metric.histogram.as_ref()?;
    let buckets: Vec<(f64, u64)> = h
        .bucket
        .iter()
        .filter_map(|b| Some((b.upper_bound?, b.cumulative_count?)))
        .collect();
    let latency = Latency::from_cumulative(
        h.sample_count.unwrap_or(0),
        h.sample_sum.unwrap_or(0.0),
        &buckets,
    );
    (!latency.is_empty()).then_some(latency)
}

/// `<name>…<stat>`: the last segment is the stat; each of `names` comes from its label when
/// tagged, otherwise from the next of the other segments. `None` when a name is missing or
/// segments are left over (not a stat this build understands).
fn named_parts<'a, const N: usize>(
    segments: &[&'a str],
    labels: &BTreeMap<&str, &str>,
    names: [&str; N],
) -> Option<(&'a str, [String; N])> {
    let (stat, rest) = segments.split_last()?;
    let mut rest = rest.iter();
    let mut out: [String; N] = std::array::from_fn(|_| String::new());
    for (slot, label) in out.iter_mut().zip(names) {
        *slot = match labels.get(label) {
            Some(v) => (*v).to_string(),
            None => (*rest.next()?).to_string(),
        };
    }
    rest.next().is_none().then_some((*stat, out))
}

/// A counter's value as a count (0 for a metric without one).
fn counter_value(metric: &Metric) -> u64 {
    metric
        .counter
        .as_ref()
        .and_then(|c| c.value)
        .map_or(0, count)
}

/// A counter value as a count (Envoy sends whole numbers as doubles).
fn count(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v.round() as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone as _, Utc};
    use toolmesh_xds::server::prometheus::{
        Bucket, Counter, Gauge, Histogram, LabelPair, MetricType,
    };

    use crate::usage::rollup::LATENCY_BOUNDS_MS;

    fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
        pairs
            .iter()
            .map(|(k, v)| LabelPair {
                name: Some((*k).into()),
                value: Some((*v).into()),
            })
            .collect()
    }

    fn counter(name: &str, l: &[(&str, &str)], v: f64) -> MetricFamily {
        MetricFamily {
            name: Some(name.into()),
            r#type: Some(MetricType::Counter as i32),
            metric: vec![Metric {
                label: labels(l),
                counter: Some(Counter {
                    value: Some(v),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn gauge(name: &str, l: &[(&str, &str)], v: f64) -> MetricFamily {
        MetricFamily {
            name: Some(name.into()),
            r#type: Some(MetricType::Gauge as i32),
            metric: vec![Metric {
                label: labels(l),
                gauge: Some(Gauge { value: Some(v) }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// Samples per bucket → Envoy's histogram message.
    fn histogram(name: &str, l: &[(&str, &str)], per_bucket: &[u64], sum: f64) -> MetricFamily {
        let mut acc = 0;
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .zip(per_bucket.iter().chain(std::iter::repeat(&0)))
            .map(|(b, n)| {
                acc += n;
                Bucket {
                    cumulative_count: Some(acc),
                    upper_bound: Some(*b),
                    ..Default::default()
                }
            })
            .collect();
        MetricFamily {
            name: Some(name.into()),
            r#type: Some(MetricType::Histogram as i32),
            metric: vec![Metric {
                label: labels(l),
                histogram: Some(Histogram {
                    sample_count: Some(acc),
                    sample_sum: Some(sum),
                    bucket,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn report(families: Vec<MetricFamily>) -> MetricsReport {
        MetricsReport {
            stream_id: 1,
            node_id: "gw-1".into(),
            node_cluster: "toolmesh".into(),
            received_at: Utc.with_ymd_and_hms(2026, 11, 25, 12, 34, 56).unwrap(),
            uptime_s: Some(10.0),
            families,
            message_bytes: 0,
            families_total: 0,
        }
    }

    const ECHO: [(&str, &str); 3] = [
        ("virtual_server", "demo"),
        ("mcp_server", "everything"),
        ("tool", "echo"),
    ];

    fn echo_key() -> ToolKey {
        ToolKey {
            virtual_server: "demo".into(),
            mcp_server: "everything".into(),
            tool: "echo".into(),
        }
    }

    #[test]
    fn tagged_stats_become_one_tool_delta() {
        let b = batch_from_report(&report(vec![
            counter("wasmcustom.toolmesh.tool.calls", &ECHO, 5.0),
            counter("wasmcustom.toolmesh.tool.errors", &ECHO, 1.0),
            counter("wasmcustom.toolmesh.tool.denied", &ECHO, 2.0),
            histogram(
                "wasmcustom.toolmesh.tool.latency_ms",
                &ECHO,
                &[0, 3, 2],
                9.5,
            ),
            gauge(
                "wasmcustom.toolmesh.tool.last_call_ts",
                &ECHO,
                1_795_641_000.0,
            ),
        ]));
        assert_eq!(
            b.minute,
            Utc.with_ymd_and_hms(2026, 11, 25, 12, 34, 0)
                .unwrap()
                .timestamp()
        );
        let d = &b.tools[&echo_key()];
        assert_eq!((d.calls, d.errors, d.denied), (5, 1, 2));
        assert_eq!(d.latency.count, 5);
        assert_eq!(&d.latency.buckets[..3], &[0, 3, 2]);
        assert_eq!(d.last_call_ts, Some(1_795_641_000));
        assert_eq!(b.calls(), 5);
    }

    #[test]
    fn untagged_full_names_parse_the_same() {
        let b = batch_from_report(&report(vec![
            counter(
                "wasmcustom.toolmesh.tool.demo.everything.echo.calls",
                &[],
                3.0,
            ),
            counter("toolmesh.vs.demo.rq.tools_call", &[], 4.0),
            counter("wasmcustom.toolmesh.vs.demo.denied.not_allowed", &[], 1.0),
        ]));
        assert_eq!(b.tools[&echo_key()].calls, 3);
        let rq = VsKey {
            virtual_server: "demo".into(),
            kind: VsKind::Rq,
            name: "tools_call".into(),
        };
        assert_eq!(b.vs[&rq], 4);
        let denied = VsKey {
            virtual_server: "demo".into(),
            kind: VsKind::Denied,
            name: "not_allowed".into(),
        };
        assert_eq!(b.vs[&denied], 1);
    }

    #[test]
    fn partly_tagged_names_fill_the_rest_from_segments() {
        // Only virtual_server tagged (an operator's own stats_tags).
        let b = batch_from_report(&report(vec![counter(
            "wasmcustom.toolmesh.tool.everything.echo.calls",
            &[("virtual_server", "demo")],
            2.0,
        )]));
        assert_eq!(b.tools[&echo_key()].calls, 2);
        // Tagged vs stats, including a trailing dot left by tag extraction.
        let b = batch_from_report(&report(vec![
            counter(
                "wasmcustom.toolmesh.vs.rq.",
                &[("virtual_server", "demo"), ("method", "tools_list")],
                1.0,
            ),
            counter(
                "wasmcustom.toolmesh.vs.denied",
                &[("virtual_server", "rq"), ("reason", "batch")],
                6.0,
            ),
        ]));
        assert_eq!(b.vs.len(), 2);
        assert_eq!(
            b.vs[&VsKey {
                virtual_server: "rq".into(),
                kind: VsKind::Denied,
                name: "batch".into()
            }],
            6
        );
    }

    #[test]
    fn zeros_gauges_alone_and_foreign_stats_add_nothing() {
        let b = batch_from_report(&report(vec![
            counter("wasmcustom.toolmesh.tool.calls", &ECHO, 0.0),
            histogram("wasmcustom.toolmesh.tool.latency_ms", &ECHO, &[], 0.0),
            // Resent every flush: not activity by itself.
            gauge(
                "wasmcustom.toolmesh.tool.last_call_ts",
                &ECHO,
                1_795_641_000.0,
            ),
            counter(
                "wasmcustom.toolmesh.global.denied",
                &[("reason", "bad_path")],
                3.0,
            ),
            counter("wasmcustom.toolmesh.tool.x.y.calls", &[], 3.0),
            counter("wasmcustom.toolmesh.tool.a.b.c.d.calls", &[], 3.0),
            counter("http.downstream_rq_total", &[], 9.0),
            counter("wasmcustom.toolmesh.tool.calls", &ECHO, f64::NAN),
            counter("wasmcustom.toolmesh.tool.calls", &ECHO, -4.0),
        ]));
        assert!(b.is_empty(), "{b:?}");
    }

    #[test]
    fn several_envoys_and_flushes_add_up() {
        let one = batch_from_report(&report(vec![counter(
            "wasmcustom.toolmesh.tool.calls",
            &ECHO,
            2.0,
        )]));
        let two = batch_from_report(&report(vec![
            counter("wasmcustom.toolmesh.tool.calls", &ECHO, 3.0),
            counter("wasmcustom.toolmesh.tool.calls", &ECHO, 4.0),
        ]));
        assert_eq!(one.calls() + two.calls(), 9);
    }

    #[test]
    fn caller_stats_tagged_or_not_become_one_caller_delta() {
        let tagged = [("virtual_server", "demo"), ("token", "tok_1")];
        let b = batch_from_report(&report(vec![
            counter("wasmcustom.toolmesh.caller.calls", &tagged, 4.0),
            counter("wasmcustom.toolmesh.caller.errors", &tagged, 1.0),
            counter("wasmcustom.toolmesh.caller.denied", &tagged, 2.0),
            counter("wasmcustom.toolmesh.caller.demo.tok_2.calls", &[], 3.0),
            // Zeros (every flush resends every counter) and unknown shapes add nothing.
            counter("wasmcustom.toolmesh.caller.demo.tok_3.calls", &[], 0.0),
            counter("wasmcustom.toolmesh.caller.demo.calls", &[], 5.0),
            counter("wasmcustom.toolmesh.caller.a.b.c.calls", &[], 5.0),
            counter("wasmcustom.toolmesh.caller.demo.tok_4.latency", &[], 5.0),
        ]));
        let key = |t: &str| CallerKey {
            virtual_server: "demo".into(),
            token: t.into(),
        };
        assert_eq!(
            b.callers[&key("tok_1")],
            CallerDelta {
                calls: 4,
                errors: 1,
                denied: 2,
                latency: Latency::default(),
            }
        );
        assert_eq!(b.callers[&key("tok_2")].calls, 3);
        assert_eq!(b.callers.len(), 2, "{b:?}");
        assert_eq!(b.received_at, report(vec![]).received_at.timestamp());
        assert!(!b.is_empty());
        // Caller calls are also in the tool stats: not counted again in `calls()`.
        assert_eq!(b.calls(), 0);
    }

    #[test]
    fn caller_latency_histograms_tagged_or_not_become_caller_latency() {
        let tagged = [("virtual_server", "demo"), ("token", "tok_1")];
        let b = batch_from_report(&report(vec![
            histogram(
                "wasmcustom.toolmesh.caller.latency_ms",
                &tagged,
                &[0, 3, 2],
                9.5,
            ),
            histogram(
                "wasmcustom.toolmesh.caller.demo.tok_1.latency_ms",
                &[],
                &[1],
                0.25,
            ),
            // A histogram alone is activity; an empty one is not.
            histogram(
                "wasmcustom.toolmesh.caller.demo.tok_2.latency_ms",
                &[],
                &[],
                0.0,
            ),
            // Per-caller samples are not tool samples.
            histogram("wasmcustom.toolmesh.tool.latency_ms", &ECHO, &[0, 1], 1.0),
        ]));
        let d = &b.callers[&CallerKey {
            virtual_server: "demo".into(),
            token: "tok_1".into(),
        }];
        assert_eq!((d.calls, d.errors, d.denied), (0, 0, 0));
        assert_eq!(d.latency.count, 6);
        assert_eq!(&d.latency.buckets[..3], &[1, 3, 2]);
        assert_eq!(d.latency.sum_ms, 9.75);
        assert_eq!(b.callers.len(), 1, "{b:?}");
        assert_eq!(b.tools[&echo_key()].latency.count, 1);
    }

    #[test]
    fn stat_segments_match_the_filter() {
        assert_eq!(stat_segment("get.weather v2/é"), "get_weather_v2__");
        assert_eq!(stat_segment("ok-name_1"), "ok-name_1");
    }
}
