//! Answers from sums: per-tool and per-virtual-server views, sorting, and the unused report.
//!
//! Pure functions over [`ToolTotals`], [`VsCounter`] and a [`CatalogDump`] so the API handlers
//! only parse parameters and the logic is tested without a server. The stats name tools by
//! their exposed name as a stat segment ([`stat_segment`]); the catalog's members are mapped the
//! same way to join the two.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ingest::{ToolKey, stat_segment};
use super::rollup::Latency;
use super::store::{TokenTotals, ToolTotals, VsCounter};
use crate::store::{CatalogDump, ItemKind, ItemRecord};

/// Usage of one tool of one virtual server in a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ToolUsage {
    /// Virtual server.
    pub virtual_server: String,
    /// MCP server that owns the tool.
    pub mcp_server: String,
    /// The tool as the virtual server exposes it (as in Envoy's stats: characters outside
    /// `[A-Za-z0-9_-]` shown as `_`).
    pub tool: String,
    /// The tool's name on the MCP server, when the current catalog still exposes it.
    pub upstream_tool: Option<String>,
    /// Calls forwarded to the MCP server.
    pub calls: u64,
    /// Forwarded calls that failed (HTTP ≥ 400, JSON-RPC error, `isError`, no complete response).
    pub errors: u64,
    /// `errors / calls` (0 without calls).
    pub error_rate: f64,
    /// Refused calls naming this tool (look-alike names, `Mcp-Name` mismatch).
    pub denied: u64,
    /// Completed calls with a latency sample.
    pub latency_samples: u64,
    /// Median latency in ms (from histogram buckets; `null` without samples).
    pub p50_ms: Option<f64>,
    /// 95th percentile latency in ms.
    pub p95_ms: Option<f64>,
    /// 99th percentile latency in ms.
    pub p99_ms: Option<f64>,
    /// Mean latency in ms.
    pub mean_ms: Option<f64>,
    /// When the tool was last called in the window.
    pub last_called: Option<DateTime<Utc>>,
}

/// Usage of one virtual server in a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VirtualServerUsage {
    /// Virtual server.
    pub virtual_server: String,
    /// `tools/call` forwarded upstream (all tools).
    pub calls: u64,
    /// Failed calls.
    pub errors: u64,
    /// `errors / calls`.
    pub error_rate: f64,
    /// Requests refused by the gateway on this virtual server (every reason).
    pub denied: u64,
    /// Refusals by reason (`not_allowed`, `lookalike`, `malformed_json`, ...).
    pub denied_by_reason: BTreeMap<String, u64>,
    /// Parsed MCP requests (every method).
    pub requests: u64,
    /// Requests by method (`tools_call`, `tools_list`, `initialize`, ...).
    pub requests_by_method: BTreeMap<String, u64>,
    /// Tools with at least one call.
    pub tools_called: u64,
    /// Median call latency in ms, over all tools.
    pub p50_ms: Option<f64>,
    /// 95th percentile.
    pub p95_ms: Option<f64>,
    /// 99th percentile.
    pub p99_ms: Option<f64>,
    /// Last call to any tool.
    pub last_called: Option<DateTime<Utc>>,
}

/// Usage of one token on one virtual server in a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenUsage {
    /// Virtual server.
    pub virtual_server: String,
    /// The token id (`jti`, as in `GET /v1/tokens`).
    pub token: String,
    /// The token's name (`null` if the token is not in the catalog).
    pub token_name: Option<String>,
    /// `tools/call`s forwarded upstream.
    pub calls: u64,
    /// Forwarded calls that failed.
    pub errors: u64,
    /// `errors / calls` (0 without calls).
    pub error_rate: f64,
    /// Requests of this token the gateway refused on this virtual server (any reason).
    pub denied: u64,
    /// This token's completed calls with a latency sample.
    pub latency_samples: u64,
    /// Median latency of this token's calls in ms (from histogram buckets, as for tools;
    /// `null` without samples).
    pub p50_ms: Option<f64>,
    /// 95th percentile latency in ms.
    pub p95_ms: Option<f64>,
    /// 99th percentile latency in ms.
    pub p99_ms: Option<f64>,
    /// When an Envoy last reported activity of this token here (within one stats flush,
    /// 5 s, of the request).
    pub last_seen: Option<DateTime<Utc>>,
}

/// A tool a virtual server exposes that nobody called in the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UnusedTool {
    /// Virtual server.
    pub virtual_server: String,
    /// MCP server.
    pub mcp_server: String,
    /// The tool's name on the MCP server.
    pub tool: String,
    /// The name clients see.
    pub exposed_as: String,
    /// Last call ever recorded (within the retention), if any.
    pub last_called: Option<DateTime<Utc>>,
}

/// A catalog tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CatalogTool {
    /// MCP server.
    pub mcp_server: String,
    /// Tool name on it.
    pub tool: String,
    /// Its description.
    pub description: String,
    /// Whether virtual servers may expose it.
    pub enabled: bool,
}

/// Tools on different MCP servers that may do the same thing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DuplicateGroup {
    /// `same_name` (equal after lower-casing and dropping everything but letters and digits),
    /// `same_description` (equal word for word, case-insensitively) or `similar_description`
    /// (at least 80% of distinct words shared).
    pub reason: String,
    /// The tools, as `(mcp_server, tool)`.
    pub tools: Vec<ToolRef>,
    /// For `similar_description`: the share of distinct words in common (Jaccard index).
    pub similarity: Option<f64>,
}

/// A tool on an MCP server.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
pub struct ToolRef {
    /// MCP server.
    pub mcp_server: String,
    /// Tool name.
    pub tool: String,
}

/// `GET /v1/usage/unused`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UnusedReport {
    /// Start of the window.
    pub since: DateTime<Utc>,
    /// End of the window.
    pub until: DateTime<Utc>,
    /// Tools exposed by a virtual server with no call in the window.
    pub exposed_unused: Vec<UnusedTool>,
    /// Catalog tools no virtual server exposes (disabled and removed-upstream tools excluded:
    /// removed ones are gone, disabled ones are listed with `enabled: false`).
    pub not_exposed: Vec<CatalogTool>,
    /// Possible duplicates across MCP servers.
    pub possible_duplicates: Vec<DuplicateGroup>,
}

/// How to order tool rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// By calls.
    Calls,
    /// By errors.
    Errors,
    /// By denials.
    Denied,
    /// By p99 latency.
    P99,
    /// By last call.
    LastCalled,
}

impl SortKey {
    /// The accepted spellings.
    pub const NAMES: &'static str = "calls, errors, denied, p99, last_called";

    /// Parse a `sort` value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "calls" => Self::Calls,
            "errors" => Self::Errors,
            "denied" => Self::Denied,
            "p99" => Self::P99,
            "last_called" => Self::LastCalled,
            _ => return None,
        })
    }
}

/// How to order token rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSortKey {
    /// By calls.
    Calls,
    /// By errors.
    Errors,
    /// By denials.
    Denied,
    /// By p99 latency.
    P99,
    /// By last activity.
    LastSeen,
}

impl TokenSortKey {
    /// The accepted spellings.
    pub const NAMES: &'static str = "calls, errors, denied, p99, last_seen";

    /// Parse a `sort` value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "calls" => Self::Calls,
            "errors" => Self::Errors,
            "denied" => Self::Denied,
            "p99" => Self::P99,
            "last_seen" => Self::LastSeen,
            _ => return None,
        })
    }
}

/// The per-token view of sums, with each token's name from `names` (`(id, name)`).
pub fn token_usage(totals: &[TokenTotals], names: &[(String, String)]) -> Vec<TokenUsage> {
    let names: HashMap<&str, &str> = names
        .iter()
        .map(|(id, name)| (id.as_str(), name.as_str()))
        .collect();
    totals
        .iter()
        .map(|t| TokenUsage {
            virtual_server: t.key.virtual_server.clone(),
            token: t.key.token.clone(),
            token_name: names.get(t.key.token.as_str()).map(|n| (*n).to_string()),
            calls: t.calls,
            errors: t.errors,
            error_rate: ratio(t.errors, t.calls),
            denied: t.denied,
            latency_samples: t.latency.count,
            p50_ms: t.latency.percentile(0.5),
            p95_ms: t.latency.percentile(0.95),
            p99_ms: t.latency.percentile(0.99),
            last_seen: ts(t.last_seen),
        })
        .collect()
}

/// Sort token rows by `key` (rows without the value — no `last_seen`, no latency samples — last
/// in either order), ties by virtual server and token.
pub fn sort_tokens(rows: &mut [TokenUsage], key: TokenSortKey, descending: bool) {
    rows.sort_by(|a, b| {
        let f = |r: &TokenUsage| -> Option<f64> {
            match key {
                TokenSortKey::Calls => Some(r.calls as f64),
                TokenSortKey::Errors => Some(r.errors as f64),
                TokenSortKey::Denied => Some(r.denied as f64),
                TokenSortKey::P99 => r.p99_ms,
                TokenSortKey::LastSeen => r.last_seen.map(|t| t.timestamp() as f64),
            }
        };
        by_value(f(a), f(b), descending)
            .then_with(|| (&a.virtual_server, &a.token).cmp(&(&b.virtual_server, &b.token)))
    });
}

fn ratio(errors: u64, calls: u64) -> f64 {
    if calls == 0 {
        0.0
    } else {
        ((errors as f64 / calls as f64) * 10_000.0).round() / 10_000.0
    }
}

fn ts(secs: Option<i64>) -> Option<DateTime<Utc>> {
    secs.and_then(|s| DateTime::from_timestamp(s, 0))
}

/// `(virtual server, mcp server, tool stat segment)` → (upstream tool name, exposed name), for
/// the tool members the gateway serves (named by [`crate::naming`], as in the policy).
pub fn exposed_tools(dump: &CatalogDump) -> BTreeMap<ToolKey, (String, String)> {
    let mut out = BTreeMap::new();
    for vs in &dump.virtual_servers {
        let names = crate::naming::served_names(&vs.name, &vs.members);
        for (m, name) in vs.members.iter().zip(names) {
            let Some(name) = name.filter(|_| m.kind == ItemKind::Tool && m.active()) else {
                continue;
            };
            out.insert(
                ToolKey {
                    virtual_server: vs.name.clone(),
                    mcp_server: m.mcp_server.clone(),
                    tool: stat_segment(&name),
                },
                (m.item.clone(), name),
            );
        }
    }
    out
}

/// The per-tool view of sums.
pub fn tool_usage(totals: &[ToolTotals], dump: &CatalogDump) -> Vec<ToolUsage> {
    let exposed = exposed_tools(dump);
    totals
        .iter()
        .map(|t| ToolUsage {
            virtual_server: t.key.virtual_server.clone(),
            mcp_server: t.key.mcp_server.clone(),
            tool: t.key.tool.clone(),
            upstream_tool: exposed.get(&t.key).map(|(up, _)| up.clone()),
            calls: t.calls,
            errors: t.errors,
            error_rate: ratio(t.errors, t.calls),
            denied: t.denied,
            latency_samples: t.latency.count,
            p50_ms: t.latency.percentile(0.5),
            p95_ms: t.latency.percentile(0.95),
            p99_ms: t.latency.percentile(0.99),
            mean_ms: t.latency.mean(),
            last_called: ts(last_called(t)),
        })
        .collect()
}

fn last_called(t: &ToolTotals) -> Option<i64> {
    if t.calls == 0 && t.latency.is_empty() {
        return None;
    }
    t.last_call_ts.or(t.last_active_end)
}

/// Order two sort values: by value in the given direction, a missing value last either way.
fn by_value(x: Option<f64>, y: Option<f64>, descending: bool) -> std::cmp::Ordering {
    match (x, y) {
        (Some(x), Some(y)) => {
            let o = x.total_cmp(&y);
            if descending { o.reverse() } else { o }
        }
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    }
}

/// Sort tool rows; `None` values (no latency, never called) go last in either order, ties by
/// name.
pub fn sort_tools(rows: &mut [ToolUsage], key: SortKey, descending: bool) {
    rows.sort_by(|a, b| {
        let name = (&a.virtual_server, &a.mcp_server, &a.tool).cmp(&(
            &b.virtual_server,
            &b.mcp_server,
            &b.tool,
        ));
        let by = |x, y| by_value(x, y, descending);
        let f = |r: &ToolUsage| -> Option<f64> {
            match key {
                SortKey::Calls => Some(r.calls as f64),
                SortKey::Errors => Some(r.errors as f64),
                SortKey::Denied => Some(r.denied as f64),
                SortKey::P99 => r.p99_ms,
                SortKey::LastCalled => r.last_called.map(|t| t.timestamp() as f64),
            }
        };
        by(f(a), f(b)).then(name)
    });
}

/// The per-virtual-server view: tool sums merged, plus request and refusal counters.
pub fn virtual_server_usage(
    totals: &[ToolTotals],
    counters: &[VsCounter],
) -> Vec<VirtualServerUsage> {
    #[derive(Default)]
    struct Acc {
        calls: u64,
        errors: u64,
        tools_called: u64,
        latency: Latency,
        last: Option<i64>,
        denied: BTreeMap<String, u64>,
        requests: BTreeMap<String, u64>,
    }
    let mut by_vs: BTreeMap<String, Acc> = BTreeMap::new();
    for t in totals {
        let a = by_vs.entry(t.key.virtual_server.clone()).or_default();
        a.calls += t.calls;
        a.errors += t.errors;
        a.tools_called += u64::from(t.calls > 0);
        a.latency.merge(&t.latency);
        a.last = a.last.max(last_called(t));
    }
    for c in counters {
        let a = by_vs.entry(c.virtual_server.clone()).or_default();
        let map = if c.kind == "denied" {
            &mut a.denied
        } else {
            &mut a.requests
        };
        *map.entry(c.name.clone()).or_default() += c.count;
    }
    by_vs
        .into_iter()
        .map(|(name, a)| VirtualServerUsage {
            virtual_server: name,
            calls: a.calls,
            errors: a.errors,
            error_rate: ratio(a.errors, a.calls),
            denied: a.denied.values().sum(),
            denied_by_reason: a.denied,
            requests: a.requests.values().sum(),
            requests_by_method: a.requests,
            tools_called: a.tools_called,
            p50_ms: a.latency.percentile(0.5),
            p95_ms: a.latency.percentile(0.95),
            p99_ms: a.latency.percentile(0.99),
            last_called: ts(a.last),
        })
        .collect()
}

/// The unused report. `window` are the sums in the window, `ever` the sums over everything
/// retained (for `last_called`), `tools` every catalog tool.
pub fn unused_report(
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    window: &[ToolTotals],
    ever: &[ToolTotals],
    dump: &CatalogDump,
    tools: &[ItemRecord],
) -> UnusedReport {
    let called: BTreeSet<&ToolKey> = window
        .iter()
        .filter(|t| t.calls > 0)
        .map(|t| &t.key)
        .collect();
    let last: HashMap<&ToolKey, Option<i64>> =
        ever.iter().map(|t| (&t.key, last_called(t))).collect();
    let exposed = exposed_tools(dump);
    let exposed_unused = exposed
        .iter()
        .filter(|(k, _)| !called.contains(k))
        .map(|(k, (upstream, exposed_as))| UnusedTool {
            virtual_server: k.virtual_server.clone(),
            mcp_server: k.mcp_server.clone(),
            tool: upstream.clone(),
            exposed_as: exposed_as.clone(),
            last_called: ts(last.get(k).copied().flatten()),
        })
        .collect();
    let in_some_vs: BTreeSet<(&str, &str)> = dump
        .virtual_servers
        .iter()
        .flat_map(|vs| vs.members.iter())
        .filter(|m| m.kind == ItemKind::Tool && m.active())
        .map(|m| (m.mcp_server.as_str(), m.item.as_str()))
        .collect();
    let live: Vec<&ItemRecord> = tools.iter().filter(|t| !t.removed_upstream).collect();
    let not_exposed = live
        .iter()
        .filter(|t| !in_some_vs.contains(&(t.mcp_server.as_str(), t.key.as_str())))
        .map(|t| CatalogTool {
            mcp_server: t.mcp_server.clone(),
            tool: t.key.clone(),
            description: t.description.clone(),
            enabled: t.enabled,
        })
        .collect();
    let refs: Vec<(ToolRef, &str)> = live
        .iter()
        .map(|t| {
            (
                ToolRef {
                    mcp_server: t.mcp_server.clone(),
                    tool: t.key.clone(),
                },
                t.description.as_str(),
            )
        })
        .collect();
    UnusedReport {
        since,
        until,
        exposed_unused,
        not_exposed,
        possible_duplicates: possible_duplicates(&refs),
    }
}

/// Above this many tools with descriptions, only exact description matches are looked for
/// (the similarity check compares every pair).
pub const MAX_PAIRWISE_TOOLS: usize = 2_000;

/// Similar descriptions share at least this share of their distinct words.
pub const SIMILARITY: f64 = 0.8;

/// Descriptions with fewer words are not compared ("Echo", "Adds numbers").
pub const MIN_DESCRIPTION_WORDS: usize = 3;

fn name_key(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

fn words(description: &str) -> Vec<String> {
    description
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// Groups of tools on different MCP servers with the same name, the same description, or a
/// similar description.
pub fn possible_duplicates(tools: &[(ToolRef, &str)]) -> Vec<DuplicateGroup> {
    let mut out = Vec::new();
    let mut grouped: BTreeSet<(ToolRef, ToolRef)> = BTreeSet::new();
    let mut by_name: BTreeMap<String, Vec<ToolRef>> = BTreeMap::new();
    let mut by_text: BTreeMap<Vec<String>, Vec<ToolRef>> = BTreeMap::new();
    let mut described: Vec<(&ToolRef, BTreeSet<String>)> = Vec::new();
    for (t, description) in tools {
        let key = name_key(&t.tool);
        if !key.is_empty() {
            by_name.entry(key).or_default().push(t.clone());
        }
        let w = words(description);
        if w.len() >= MIN_DESCRIPTION_WORDS {
            described.push((t, w.iter().cloned().collect()));
            by_text.entry(w).or_default().push(t.clone());
        }
    }
    for (_, mut members) in by_name {
        members.sort();
        emit(&mut out, &mut grouped, "same_name", members, None);
    }
    for (_, mut members) in by_text {
        members.sort();
        emit(&mut out, &mut grouped, "same_description", members, None);
    }
    let mut similar = Vec::new();
    if described.len() <= MAX_PAIRWISE_TOOLS {
        for (i, (a, wa)) in described.iter().enumerate() {
            for (b, wb) in &described[i + 1..] {
                if a.mcp_server == b.mcp_server {
                    continue;
                }
                let pair = if a < b {
                    ((*a).clone(), (*b).clone())
                } else {
                    ((*b).clone(), (*a).clone())
                };
                if grouped.contains(&pair) {
                    continue;
                }
                let common = wa.intersection(wb).count();
                let union = wa.union(wb).count();
                let sim = common as f64 / union.max(1) as f64;
                if sim >= SIMILARITY {
                    let (x, y) = pair;
                    similar.push((x, y, sim));
                }
            }
        }
    }
    for (x, y, sim) in similar {
        let sim = (sim * 100.0).round() / 100.0;
        emit(
            &mut out,
            &mut grouped,
            "similar_description",
            vec![x, y],
            Some(sim),
        );
    }
    out
}

/// Record a group if its tools span at least two MCP servers.
fn emit(
    out: &mut Vec<DuplicateGroup>,
    grouped: &mut BTreeSet<(ToolRef, ToolRef)>,
    reason: &str,
    members: Vec<ToolRef>,
    similarity: Option<f64>,
) {
    let servers: BTreeSet<&str> = members.iter().map(|t| t.mcp_server.as_str()).collect();
    if servers.len() < 2 {
        return;
    }
    for a in &members {
        for b in &members {
            if a < b {
                grouped.insert((a.clone(), b.clone()));
            }
        }
    }
    out.push(DuplicateGroup {
        reason: reason.into(),
        tools: members,
        similarity,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemberRecord, VirtualServerRecord};

    fn r(server: &str, tool: &str) -> ToolRef {
        ToolRef {
            mcp_server: server.into(),
            tool: tool.into(),
        }
    }

    #[test]
    fn duplicates_by_name_and_description_across_servers_only() {
        let tools = [
            (
                r("github", "search_issues"),
                "Search issues in a repository by text.",
            ),
            (r("gitlab", "searchIssues"), "Find issues in a project."),
            (r("jira", "find"), "Search issues in a repository by text!"),
            (
                r("jira", "find_v2"),
                "Search issues in a repository by text",
            ),
            (
                r("docs", "lookup"),
                "Look up a page in the docs by its title",
            ),
            (
                r("wiki", "lookup_page"),
                "Look up a page in the wiki by its title",
            ),
            (r("a", "echo"), "Echo"),
            (r("b", "echo2"), "Echo"),
        ];
        let groups = possible_duplicates(&tools);
        let find = |reason: &str| -> Vec<Vec<ToolRef>> {
            groups
                .iter()
                .filter(|g| g.reason == reason)
                .map(|g| g.tools.clone())
                .collect()
        };
        assert_eq!(
            find("same_name"),
            vec![vec![
                r("github", "search_issues"),
                r("gitlab", "searchIssues")
            ]]
        );
        assert_eq!(
            find("same_description"),
            vec![vec![
                r("github", "search_issues"),
                r("jira", "find"),
                r("jira", "find_v2")
            ]]
        );
        let similar = find("similar_description");
        assert_eq!(
            similar,
            vec![vec![r("docs", "lookup"), r("wiki", "lookup_page")]],
            "{groups:#?}"
        );
        // Short descriptions are never compared; same server is never a duplicate.
        assert!(!groups.iter().any(|g| g.tools.contains(&r("a", "echo"))));
    }

    fn dump() -> CatalogDump {
        let member =
            |server: &str, tool: &str, expose_as: Option<&str>, enabled: bool| MemberRecord {
                kind: ItemKind::Tool,
                mcp_server: server.into(),
                item: tool.into(),
                item_id: 1,
                expose_as: expose_as.map(Into::into),
                enabled,
                removed_upstream: false,
                drifted: false,
                definition: serde_json::json!({}),
            };
        CatalogDump {
            version: 1,
            mcp_servers: vec![],
            virtual_servers: vec![VirtualServerRecord {
                id: 1,
                name: "demo".into(),
                description: String::new(),
                anonymous: false,
                members: vec![
                    member("everything", "echo", None, true),
                    member("everything", "add", Some("add.numbers"), true),
                    member("everything", "off", None, false),
                ],
                created_at: Utc::now(),
                updated_at: Utc::now(),
            }],
        }
    }

    fn totals(tool: &str, calls: u64, last: Option<i64>) -> ToolTotals {
        ToolTotals {
            key: ToolKey {
                virtual_server: "demo".into(),
                mcp_server: "everything".into(),
                tool: tool.into(),
            },
            calls,
            last_call_ts: last,
            last_active_end: Some(1_000),
            ..Default::default()
        }
    }

    #[test]
    fn colliding_tools_join_on_their_qualified_name() {
        let mut d = dump();
        let mut other = d.virtual_servers[0].members[0].clone();
        other.mcp_server = "second".into();
        d.virtual_servers[0].members.push(other);
        let exposed = exposed_tools(&d);
        let key = |server: &str, tool: &str| ToolKey {
            virtual_server: "demo".into(),
            mcp_server: server.into(),
            tool: tool.into(),
        };
        assert_eq!(
            exposed.get(&key("everything", "everything__echo")),
            Some(&("echo".to_string(), "everything__echo".to_string()))
        );
        assert_eq!(
            exposed.get(&key("second", "second__echo")),
            Some(&("echo".to_string(), "second__echo".to_string()))
        );
        assert!(!exposed.contains_key(&key("everything", "echo")));
    }

    #[test]
    fn renamed_tools_join_on_their_stat_segment() {
        let rows = tool_usage(
            &[totals("add_numbers", 3, Some(500)), totals("gone", 1, None)],
            &dump(),
        );
        assert_eq!(rows[0].upstream_tool.as_deref(), Some("add"));
        assert_eq!(rows[0].last_called.map(|t| t.timestamp()), Some(500));
        assert_eq!(rows[1].upstream_tool, None);
        // No gauge: the end of the last bucket with calls.
        assert_eq!(rows[1].last_called.map(|t| t.timestamp()), Some(1_000));
    }

    #[test]
    fn unused_lists_exposed_tools_without_calls_and_unexposed_ones() {
        let now = Utc::now();
        let window = [totals("echo", 0, None), totals("add_numbers", 2, Some(900))];
        let ever = [
            totals("echo", 5, Some(100)),
            totals("add_numbers", 2, Some(900)),
        ];
        let item = |tool: &str, removed: bool| ItemRecord {
            id: 1,
            kind: ItemKind::Tool,
            mcp_server: "everything".into(),
            key: tool.into(),
            description: String::new(),
            definition: serde_json::json!({}),
            pending_definition: None,
            drifted: false,
            enabled: true,
            removed_upstream: removed,
            first_seen: now,
            last_seen: now,
        };
        let tools = [
            item("echo", false),
            item("add", false),
            item("fail", false),
            item("off", false),
            item("old", true),
        ];
        let rep = unused_report(now, now, &window, &ever, &dump(), &tools);
        assert_eq!(rep.exposed_unused.len(), 1, "{rep:#?}");
        assert_eq!(rep.exposed_unused[0].tool, "echo");
        assert_eq!(
            rep.exposed_unused[0].last_called.map(|t| t.timestamp()),
            Some(100)
        );
        let not: Vec<&str> = rep.not_exposed.iter().map(|t| t.tool.as_str()).collect();
        // A disabled member does not count as exposed; removed tools are gone.
        assert_eq!(not, ["fail", "off"]);
    }

    #[test]
    fn sorting_puts_missing_values_last() {
        let mk = |tool: &str, calls: u64, p99: Option<f64>| ToolUsage {
            virtual_server: "v".into(),
            mcp_server: "m".into(),
            tool: tool.into(),
            upstream_tool: None,
            calls,
            errors: 0,
            error_rate: 0.0,
            denied: 0,
            latency_samples: 0,
            p50_ms: None,
            p95_ms: None,
            p99_ms: p99,
            mean_ms: None,
            last_called: None,
        };
        let mut rows = vec![
            mk("a", 1, None),
            mk("b", 5, Some(3.0)),
            mk("c", 3, Some(9.0)),
        ];
        sort_tools(&mut rows, SortKey::Calls, true);
        assert_eq!(
            rows.iter().map(|r| r.tool.as_str()).collect::<Vec<_>>(),
            ["b", "c", "a"]
        );
        sort_tools(&mut rows, SortKey::Calls, false);
        assert_eq!(
            rows.iter().map(|r| r.tool.as_str()).collect::<Vec<_>>(),
            ["a", "c", "b"]
        );
        sort_tools(&mut rows, SortKey::P99, true);
        assert_eq!(
            rows.iter().map(|r| r.tool.as_str()).collect::<Vec<_>>(),
            ["c", "b", "a"]
        );
        sort_tools(&mut rows, SortKey::P99, false);
        assert_eq!(
            rows.iter().map(|r| r.tool.as_str()).collect::<Vec<_>>(),
            ["b", "c", "a"]
        );
        assert_eq!(SortKey::parse("p99"), Some(SortKey::P99));
        assert_eq!(SortKey::parse("p98"), None);
    }

    #[test]
    fn token_rows_carry_names_and_sort() {
        let t = |vs: &str, token: &str, calls: u64, denied: u64, last: Option<i64>| TokenTotals {
            key: crate::usage::ingest::CallerKey {
                virtual_server: vs.into(),
                token: token.into(),
            },
            calls,
            errors: calls / 2,
            denied,
            latency: Latency::default(),
            last_seen: last,
        };
        let names = [("tok_a".to_string(), "agent a".to_string())];
        let mut slow = t("v", "tok_gone", 1, 3, Some(90));
        slow.latency.count = 2;
        slow.latency.buckets[6] = 2; // (50, 100] ms
        let mut fast = t("v", "tok_a", 4, 0, Some(50));
        fast.latency.count = 4;
        fast.latency.buckets[1] = 4; // (0.5, 1] ms
        let mut rows = token_usage(&[fast, slow, t("w", "tok_a", 0, 1, None)], &names);
        assert_eq!(
            (rows[0].latency_samples, rows[0].p50_ms, rows[0].p99_ms),
            (4, Some(0.75), Some(1.0))
        );
        assert_eq!(rows[1].p50_ms, Some(75.0));
        assert_eq!((rows[2].latency_samples, rows[2].p99_ms), (0, None));
        assert_eq!(rows[0].token_name.as_deref(), Some("agent a"));
        assert_eq!(rows[0].error_rate, 0.5);
        assert_eq!(rows[1].token_name, None);
        assert_eq!(rows[0].last_seen.map(|t| t.timestamp()), Some(50));
        let order = |rows: &[TokenUsage]| -> Vec<String> {
            rows.iter()
                .map(|r| format!("{}/{}", r.virtual_server, r.token))
                .collect()
        };
        sort_tokens(&mut rows, TokenSortKey::Calls, true);
        assert_eq!(order(&rows), ["v/tok_a", "v/tok_gone", "w/tok_a"]);
        sort_tokens(&mut rows, TokenSortKey::Denied, true);
        assert_eq!(order(&rows), ["v/tok_gone", "w/tok_a", "v/tok_a"]);
        sort_tokens(&mut rows, TokenSortKey::LastSeen, false);
        assert_eq!(order(&rows), ["v/tok_a", "v/tok_gone", "w/tok_a"]);
        sort_tokens(&mut rows, TokenSortKey::LastSeen, true);
        assert_eq!(order(&rows), ["v/tok_gone", "v/tok_a", "w/tok_a"]);
        sort_tokens(&mut rows, TokenSortKey::P99, false);
        assert_eq!(order(&rows), ["v/tok_a", "v/tok_gone", "w/tok_a"]);
        assert_eq!(TokenSortKey::parse("p99"), Some(TokenSortKey::P99));
        assert_eq!(TokenSortKey::parse("p50"), None);
    }

    #[test]
    fn virtual_server_view_merges_tools_and_counters() {
        let mut a = totals("echo", 4, Some(10));
        a.errors = 1;
        a.latency.count = 4;
        a.latency.buckets[1] = 4;
        let b = totals("add_numbers", 0, None);
        let counters = [
            VsCounter {
                virtual_server: "demo".into(),
                kind: "denied".into(),
                name: "not_allowed".into(),
                count: 2,
            },
            VsCounter {
                virtual_server: "demo".into(),
                kind: "rq".into(),
                name: "tools_call".into(),
                count: 6,
            },
            VsCounter {
                virtual_server: "other".into(),
                kind: "rq".into(),
                name: "tools_list".into(),
                count: 1,
            },
        ];
        let v = virtual_server_usage(&[a, b], &counters);
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].calls, v[0].errors, v[0].denied, v[0].requests),
            (4, 1, 2, 6)
        );
        assert_eq!(v[0].error_rate, 0.25);
        assert_eq!(v[0].tools_called, 1);
        assert_eq!(v[0].p50_ms, Some(0.75));
        assert_eq!(v[0].last_called.map(|t| t.timestamp()), Some(10));
        assert_eq!(v[1].virtual_server, "other");
        assert_eq!(v[1].requests_by_method["tools_list"], 1);
    }
}
