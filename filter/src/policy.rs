//! The compiled, indexed form of a [`PolicySnapshot`].
//!
//! Why: the snapshot is a list-of-lists made for humans and golden tests; the data path needs
//! O(1) answers to "which member owns exposed tool `x` on virtual server `v`, and what does the
//! upstream call it". [`CompiledPolicy::compile`] validates the snapshot (the same rules the
//! control plane applies, so a bad snapshot fails `on_configure` and Envoy keeps the old one)
//! and builds those indexes once per configuration.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use toolmesh_proto::{PolicyError, PolicySnapshot};

use crate::lists::ListKind;
use crate::sanitize::skeleton;
use crate::session::SessionKeys;
use crate::stats::{self, MethodStat, MetricIds, Reason, StatKey, ToolMetric};
use crate::template::UriTemplate;

/// A policy ready for lookups.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    /// The catalog version the snapshot came from.
    pub catalog_version: String,
    /// Largest request body the filter buffers.
    pub max_body_bytes: usize,
    index: HashMap<String, usize>,
    virtual_servers: Vec<CompiledVs>,
    /// Per tool stat index ([`Item::stat`]): (virtual server, member, exposed name).
    tool_stats: Vec<(usize, usize, String)>,
    /// Per caller stat index: (virtual server, token id).
    caller_stats: Vec<(usize, String)>,
    /// (virtual server index, token id) → caller stat index.
    caller_index: HashMap<(usize, String), u32>,
    /// Host metric ids by stat slot (filled by the shell).
    pub metric_ids: MetricIds,
    /// Token checks, when the snapshot has them.
    pub auth: Option<crate::auth::CompiledAuth>,
    /// The keys that seal and open `Mcp-Session-Id`s ([`crate::session`]).
    pub sessions: SessionKeys,
    /// How long each member gets to open its session when a client initializes.
    pub member_timeout_ms: u32,
    /// Items per page of the lists the filter answers (at least 1).
    pub list_page_size: usize,
    /// `limits.allowed_hosts`, lowercased: hosts (no port) allowed in `Host` and `Origin`
    /// besides the loopback names and [`CompiledPolicy::public_host`]; `"*"` allows any.
    pub allowed_hosts: Vec<String>,
    /// The host (lowercased, no port; IPv6 in brackets) of `auth.public_url`, if any.
    pub public_host: Option<String>,
}

/// One virtual server.
#[derive(Debug, Clone)]
pub struct CompiledVs {
    /// Its slug.
    pub name: String,
    /// Its index in the policy (stat keys use it).
    pub index: usize,
    /// Its members, in snapshot order; member 0 is the primary.
    pub members: Vec<CompiledMember>,
    tools: HashMap<String, Item>,
    prompts: HashMap<String, Item>,
    resources: HashMap<String, usize>,
    templates: Vec<(UriTemplate, usize)>,
    template_strings: HashMap<String, usize>,
    tool_skeletons: HashMap<String, String>,
    prompt_skeletons: HashMap<String, String>,
    resource_skeletons: HashMap<String, String>,
    /// The list items the filter answers with, serialized once (see [`CompiledVs::listing`]).
    listing: Listing,
}

/// A virtual server's list items, each one serialized JSON object, in list order.
#[derive(Debug, Clone, Default)]
struct Listing {
    tools: Vec<String>,
    prompts: Vec<String>,
    resources: Vec<String>,
    templates: Vec<String>,
}

/// One member (upstream MCP server) of a virtual server.
#[derive(Debug, Clone)]
pub struct CompiledMember {
    /// Catalog slug of the MCP server.
    pub mcp_server: String,
    /// Envoy cluster.
    pub cluster: Rc<str>,
    /// Upstream MCP endpoint path.
    pub path: Rc<str>,
    /// `host[:port]` of the upstream: the `:authority` of the filter's own calls to it.
    pub authority: Rc<str>,
    /// The stateless protocol versions of [`toolmesh_proto::MODERN_PROTOCOL_VERSIONS`] the
    /// upstream speaks ([`toolmesh_proto::Member::modern_versions`]): a stateless request at one
    /// of them is forwarded as is; at another, the filter opens a session for it
    /// ([`crate::modern`]).
    pub modern_versions: Vec<&'static str>,
    /// The upstream declares the `logging` capability.
    pub logging: bool,
    /// The upstream declares the `completions` capability.
    pub completions: bool,
    /// The upstream declares `resources.subscribe: true`.
    pub subscribe: bool,
    /// Allowed static resource URIs.
    pub resources: HashSet<String>,
    /// Allowed resource templates, as written.
    pub template_strings: HashSet<String>,
}

/// An allowed tool or prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Index of the owning member.
    pub member: usize,
    /// The name clients use.
    pub exposed: String,
    /// The name the upstream uses.
    pub upstream: String,
    /// For tools: the tool's index among the policy's tools, for [`StatKey::Tool`].
    pub stat: u32,
}

/// The answer to "may this name be used here?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<T> {
    /// Allowed: the item.
    Allowed(T),
    /// Not allowed, but it looks like this allowed exposed name.
    Lookalike(String),
    /// Not allowed.
    NotAllowed,
}

impl CompiledPolicy {
    /// Parse, validate and compile a snapshot from its JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, PolicyError> {
        Ok(Self::compile(&PolicySnapshot::from_json(bytes)?))
    }

    /// Compile a snapshot. Call [`PolicySnapshot::validate`] first (`from_json` does); an
    /// unvalidated snapshot still compiles (first duplicate wins) but may not mean what it says.
    pub fn compile(snapshot: &PolicySnapshot) -> Self {
        let mut index = HashMap::new();
        let mut virtual_servers = Vec::with_capacity(snapshot.virtual_servers.len());
        let mut tool_stats = Vec::new();
        let mut caller_stats = Vec::new();
        let mut caller_index = HashMap::new();
        for vs in &snapshot.virtual_servers {
            if index.contains_key(&vs.name) {
                continue;
            }
            let i = virtual_servers.len();
            index.insert(vs.name.clone(), i);
            virtual_servers.push(compile_vs(vs, i, &mut tool_stats));
            for c in &vs.callers {
                if let Ok(n) = u32::try_from(caller_stats.len())
                    && !caller_index.contains_key(&(i, c.clone()))
                {
                    caller_index.insert((i, c.clone()), n);
                    caller_stats.push((i, c.clone()));
                }
            }
        }
        Self {
            catalog_version: snapshot.catalog_version.clone(),
            max_body_bytes: usize::try_from(snapshot.limits.max_body_bytes).unwrap_or(usize::MAX),
            index,
            virtual_servers,
            tool_stats,
            caller_stats,
            caller_index,
            metric_ids: MetricIds::default(),
            auth: crate::auth::CompiledAuth::compile(snapshot),
            sessions: SessionKeys::from_proto(&snapshot.sessions),
            member_timeout_ms: snapshot.sessions.member_timeout_ms,
            list_page_size: usize::try_from(snapshot.limits.list_page_size)
                .unwrap_or(usize::MAX)
                .max(1),
            allowed_hosts: snapshot
                .limits
                .allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
            public_host: snapshot.auth.as_ref().and_then(|a| url_host(&a.public_url)),
        }
    }

    /// The virtual server at `index` (see [`CompiledVs::index`]).
    pub fn virtual_server_at(&self, index: usize) -> Option<&CompiledVs> {
        self.virtual_servers.get(index)
    }

    /// The dense slot of a stat (0..[`CompiledPolicy::stat_slots`]); `None` if the key does
    /// not belong to this policy.
    pub fn stat_slot(&self, key: StatKey) -> Option<u32> {
        const GLOBAL: usize = Reason::ALL.len();
        const PER_VS: usize = MethodStat::ALL.len() + Reason::ALL.len();
        const PER_TOOL: usize = ToolMetric::ALL.len();
        const PER_CALLER: usize = ToolMetric::ALL.len();
        let tools_end =
            GLOBAL + self.virtual_servers.len() * PER_VS + self.tool_stats.len() * PER_TOOL;
        let slot = match key {
            StatKey::GlobalDenied(r) => r as usize,
            StatKey::VsRq { vs, method } => {
                let vs = usize::try_from(vs)
                    .ok()
                    .filter(|&v| v < self.virtual_servers.len())?;
                GLOBAL + vs * PER_VS + method as usize
            }
            StatKey::VsDenied { vs, reason } => {
                let vs = usize::try_from(vs)
                    .ok()
                    .filter(|&v| v < self.virtual_servers.len())?;
                GLOBAL + vs * PER_VS + MethodStat::ALL.len() + reason as usize
            }
            StatKey::Tool { tool, metric } => {
                let tool = usize::try_from(tool)
                    .ok()
                    .filter(|&t| t < self.tool_stats.len())?;
                GLOBAL + self.virtual_servers.len() * PER_VS + tool * PER_TOOL + metric as usize
            }
            StatKey::Caller { caller, metric } => {
                let caller = usize::try_from(caller)
                    .ok()
                    .filter(|&c| c < self.caller_stats.len())?;
                tools_end + caller * PER_CALLER + metric as usize
            }
        };
        u32::try_from(slot).ok()
    }

    /// The number of stat slots.
    pub fn stat_slots(&self) -> usize {
        Reason::ALL.len()
            + self.virtual_servers.len() * (MethodStat::ALL.len() + Reason::ALL.len())
            + self.tool_stats.len() * ToolMetric::ALL.len()
            + self.caller_stats.len() * ToolMetric::ALL.len()
    }

    /// The Envoy stat name of `key` (see [`crate::stats`]); `None` if the key does not belong
    /// to this policy.
    pub fn stat_name(&self, key: StatKey) -> Option<String> {
        let vs_name = |vs: u32| {
            usize::try_from(vs)
                .ok()
                .and_then(|v| self.virtual_servers.get(v))
                .map(|v| v.name.as_str())
        };
        Some(match key {
            StatKey::GlobalDenied(r) => stats::global_denied(r),
            StatKey::VsRq { vs, method } => stats::vs_rq(vs_name(vs)?, method),
            StatKey::VsDenied { vs, reason } => stats::vs_denied(vs_name(vs)?, reason),
            StatKey::Caller { caller, metric } => {
                let (vs, id) = self.caller_stats.get(usize::try_from(caller).ok()?)?;
                stats::caller_metric(&self.virtual_servers.get(*vs)?.name, id, metric)
            }
            StatKey::Tool { tool, metric } => {
                let (vs, member, exposed) = self.tool_stats.get(usize::try_from(tool).ok()?)?;
                let vs = self.virtual_servers.get(*vs)?;
                let member = vs.members.get(*member)?;
                stats::tool_metric(&vs.name, &member.mcp_server, exposed, metric)
            }
        })
    }

    /// The caller stat index of token `id` on virtual server `vs`, if the policy lists it.
    pub fn caller_stat(&self, vs: usize, id: &str) -> Option<u32> {
        if self.caller_stats.is_empty() {
            return None;
        }
        self.caller_index.get(&(vs, id.to_owned())).copied()
    }

    /// The owning MCP server and exposed name of the tool with stat index `stat`
    /// ([`Item::stat`]).
    pub fn tool_identity(&self, stat: u32) -> Option<(&str, &str)> {
        let (vs, member, exposed) = self.tool_stats.get(usize::try_from(stat).ok()?)?;
        let member = self.virtual_servers.get(*vs)?.members.get(*member)?;
        Some((member.mcp_server.as_str(), exposed.as_str()))
    }

    /// The virtual server named `name`.
    pub fn virtual_server(&self, name: &str) -> Option<&CompiledVs> {
        self.index
            .get(name)
            .and_then(|&i| self.virtual_servers.get(i))
    }

    /// All virtual servers, in snapshot order.
    pub fn virtual_servers(&self) -> &[CompiledVs] {
        &self.virtual_servers
    }
}

fn compile_vs(
    vs: &toolmesh_proto::VirtualServer,
    index: usize,
    tool_stats: &mut Vec<(usize, usize, String)>,
) -> CompiledVs {
    let mut out = CompiledVs {
        name: vs.name.clone(),
        index,
        members: Vec::with_capacity(vs.members.len()),
        tools: HashMap::new(),
        prompts: HashMap::new(),
        resources: HashMap::new(),
        templates: Vec::new(),
        template_strings: HashMap::new(),
        tool_skeletons: HashMap::new(),
        prompt_skeletons: HashMap::new(),
        resource_skeletons: HashMap::new(),
        listing: Listing::default(),
    };
    for (mi, m) in vs.members.iter().enumerate() {
        let mut member = CompiledMember {
            mcp_server: m.mcp_server.clone(),
            cluster: Rc::from(m.cluster.as_str()),
            path: Rc::from(m.path.as_str()),
            authority: Rc::from(m.authority.as_str()),
            modern_versions: toolmesh_proto::MODERN_PROTOCOL_VERSIONS
                .iter()
                .copied()
                .filter(|v| m.modern_versions.iter().any(|mv| mv == v))
                .collect(),
            logging: m.capabilities.contains_key("logging"),
            completions: m.capabilities.contains_key("completions"),
            subscribe: m
                .capabilities
                .get("resources")
                .and_then(|r| r.get("subscribe"))
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
            resources: HashSet::new(),
            template_strings: HashSet::new(),
        };
        for t in &m.tools {
            if !out.tools.contains_key(&t.name) {
                out.listing.tools.push(render_item(
                    &t.definition,
                    "name",
                    &t.name,
                    ListKind::Tools,
                ));
            }
            out.tools.entry(t.name.clone()).or_insert_with(|| {
                let stat = u32::try_from(tool_stats.len()).unwrap_or(u32::MAX);
                tool_stats.push((index, mi, t.name.clone()));
                Item {
                    member: mi,
                    exposed: t.name.clone(),
                    upstream: t.upstream_name.clone(),
                    stat,
                }
            });
            out.tool_skeletons
                .entry(skeleton(&t.name))
                .or_insert_with(|| t.name.clone());
        }
        for p in &m.prompts {
            if !out.prompts.contains_key(&p.name) {
                out.listing.prompts.push(render_item(
                    &p.definition,
                    "name",
                    &p.name,
                    ListKind::Prompts,
                ));
            }
            out.prompts.entry(p.name.clone()).or_insert_with(|| Item {
                member: mi,
                exposed: p.name.clone(),
                upstream: p.upstream_name.clone(),
                stat: u32::MAX,
            });
            out.prompt_skeletons
                .entry(skeleton(&p.name))
                .or_insert_with(|| p.name.clone());
        }
        for r in &m.resources {
            member.resources.insert(r.uri.clone());
            if !out.resources.contains_key(&r.uri) {
                out.listing.resources.push(render_item(
                    &r.definition,
                    "uri",
                    &r.uri,
                    ListKind::Resources,
                ));
            }
            out.resources.entry(r.uri.clone()).or_insert(mi);
            out.resource_skeletons
                .entry(skeleton(&r.uri))
                .or_insert_with(|| r.uri.clone());
        }
        for t in &m.resource_templates {
            let compiled = UriTemplate::parse(&t.uri_template);
            member.template_strings.insert(t.uri_template.clone());
            if !out.template_strings.contains_key(&t.uri_template) {
                out.listing.templates.push(render_item(
                    &t.definition,
                    "uriTemplate",
                    &t.uri_template,
                    ListKind::ResourceTemplates,
                ));
            }
            out.templates.push((compiled, mi));
            out.template_strings
                .entry(t.uri_template.clone())
                .or_insert(mi);
        }
        out.members.push(member);
    }
    out
}

/// One list item as the filter lists it: the catalog definition with `key` (`name`, `uri` or
/// `uriTemplate`) set to `value` (the exposed name, the URI or template as allowed), and the
/// fields the MCP schema requires filled in when the definition lacks them (`inputSchema` of a
/// tool; `name` of a resource or template, which defaults to its URI or template).
fn render_item(
    definition: &serde_json::Map<String, serde_json::Value>,
    key: &str,
    value: &str,
    kind: ListKind,
) -> String {
    use serde_json::Value;
    let mut item = definition.clone();
    item.insert(key.to_owned(), Value::String(value.to_owned()));
    match kind {
        ListKind::Tools => {
            if !item.get("inputSchema").is_some_and(Value::is_object) {
                let mut schema = serde_json::Map::new();
                schema.insert("type".into(), Value::String("object".into()));
                item.insert("inputSchema".into(), Value::Object(schema));
            }
        }
        ListKind::Prompts => {}
        ListKind::Resources | ListKind::ResourceTemplates => {
            if !item.get("name").is_some_and(Value::is_string) {
                item.insert("name".into(), Value::String(value.to_owned()));
            }
        }
    }
    // Serializing a map of JSON values cannot fail.
    serde_json::to_string(&item).unwrap_or_default()
}

/// The host of a URL (`https://user@Host.Example:8443/x` → `host.example`), lowercased, IPv6
/// in brackets; `None` when there is none.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = if authority.starts_with('[') {
        let end = authority.find(']')?;
        authority.get(..=end)?
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

impl CompiledVs {
    /// The serialized items (JSON objects) of list `kind`, in list order: member order, then
    /// item order in the snapshot; tools and prompts under their exposed names.
    pub fn listing(&self, kind: ListKind) -> &[String] {
        match kind {
            ListKind::Tools => &self.listing.tools,
            ListKind::Prompts => &self.listing.prompts,
            ListKind::Resources => &self.listing.resources,
            ListKind::ResourceTemplates => &self.listing.templates,
        }
    }

    /// The primary member (the first), which receives every request that names nothing.
    pub fn primary(&self) -> Option<&CompiledMember> {
        self.members.first()
    }

    /// Member `i`.
    pub fn member(&self, i: usize) -> Option<&CompiledMember> {
        self.members.get(i)
    }

    /// Look up an exposed tool name.
    pub fn tool(&self, name: &str) -> Lookup<&Item> {
        lookup_named(&self.tools, &self.tool_skeletons, name)
    }

    /// Look up an exposed prompt name.
    pub fn prompt(&self, name: &str) -> Lookup<&Item> {
        lookup_named(&self.prompts, &self.prompt_skeletons, name)
    }

    /// Look up a resource URI: an allowed static resource, or a URI matching an allowed
    /// template (first member in order wins). Returns the owning member.
    pub fn resource(&self, uri: &str) -> Lookup<usize> {
        if let Some(&m) = self.resources.get(uri) {
            return Lookup::Allowed(m);
        }
        if let Some((_, m)) = self.templates.iter().find(|(t, _)| t.matches(uri)) {
            return Lookup::Allowed(*m);
        }
        match self.resource_skeletons.get(&skeleton(uri)) {
            Some(allowed) => Lookup::Lookalike(allowed.clone()),
            None => Lookup::NotAllowed,
        }
    }

    /// Look up the `uri` of a `completion/complete` `ref/resource`: an allowed template as
    /// written, an allowed static resource, or a URI matching an allowed template.
    pub fn resource_ref(&self, uri: &str) -> Lookup<usize> {
        match self.template_strings.get(uri) {
            Some(&m) => Lookup::Allowed(m),
            None => self.resource(uri),
        }
    }

    /// Every allowed tool (exposed name → item), for stats and docs.
    pub fn tools(&self) -> impl Iterator<Item = &Item> {
        self.tools.values()
    }
}

fn lookup_named<'a>(
    items: &'a HashMap<String, Item>,
    skeletons: &HashMap<String, String>,
    name: &str,
) -> Lookup<&'a Item> {
    if let Some(item) = items.get(name) {
        return Lookup::Allowed(item);
    }
    match skeletons.get(&skeleton(name)) {
        Some(allowed) => Lookup::Lookalike(allowed.clone()),
        None => Lookup::NotAllowed,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A two-member policy used across the crate's tests.
    pub(crate) const POLICY: &str = r#"{
      "schema_version": 3,
      "catalog_version": "c1",
      "limits": {"max_body_bytes": 4096, "list_page_size": 3, "allowed_hosts": ["GW.Example"]},
      "sessions": {"keys": [{"id": "k1", "secret": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]},
      "virtual_servers": [
        {"name": "demo", "members": [
          {"mcp_server": "everything", "cluster": "up_everything", "path": "/mcp",
           "authority": "everything:3001",
           "capabilities": {"tools": {}, "prompts": {}, "resources": {"subscribe": true},
                            "logging": {}, "completions": {}},
           "tools": [
             {"name": "echo", "upstream_name": "echo", "definition": {"name": "echo",
              "description": "Echo", "inputSchema": {"type": "object",
              "properties": {"message": {"type": "string"}}}}},
             {"name": "add", "upstream_name": "add_numbers"},
             {"name": "sum", "upstream_name": "add_numbers"}
           ],
           "prompts": [{"name": "greet", "upstream_name": "simple_prompt"}],
           "resources": [{"uri": "test://static-text"}],
           "resource_templates": [{"uri_template": "test://template/{id}/data"}]},
          {"mcp_server": "weather", "cluster": "up_weather", "path": "/v1/mcp",
           "authority": "weather.internal",
           "capabilities": {"tools": {}, "resources": {}},
           "tools": [{"name": "forecast", "upstream_name": "get_forecast",
                      "definition": {"name": "get_forecast", "title": "Forecast",
                                     "inputSchema": {"type": "object"}}}],
           "resources": [{"uri": "weather://stations",
                          "definition": {"uri": "weather://stations", "name": "stations",
                                         "mimeType": "application/json"}}]}
        ]},
        {"name": "empty", "members": []}
      ]
    }"#;

    pub(crate) fn policy() -> CompiledPolicy {
        match CompiledPolicy::from_json(POLICY.as_bytes()) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`POLICY`] with both members of `demo` speaking protocol 2026-07-28.
    pub(crate) fn modern_policy() -> CompiledPolicy {
        let json = POLICY
            .replace(
                r#""authority": "everything:3001","#,
                r#""authority": "everything:3001", "modern_versions": ["2026-07-28"],"#,
            )
            .replace(
                r#""authority": "weather.internal","#,
                r#""authority": "weather.internal", "modern_versions": ["2026-07-28", "2099-01-01"],"#,
            );
        match CompiledPolicy::from_json(json.as_bytes()) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    fn demo(p: &CompiledPolicy) -> &CompiledVs {
        p.virtual_server("demo")
            .unwrap_or_else(|| panic!("no demo"))
    }

    #[test]
    fn compiles_and_indexes() {
        let p = policy();
        assert_eq!(p.max_body_bytes, 4096);
        assert_eq!(p.catalog_version, "c1");
        assert!(p.virtual_server("nope").is_none());
        let vs = demo(&p);
        assert_eq!(vs.primary().map(|m| &*m.cluster), Some("up_everything"));
        assert_eq!(vs.tools().count(), 4);
        // One upstream tool exposed under two names: both are allowed and map back to it.
        for exposed in ["add", "sum"] {
            match vs.tool(exposed) {
                Lookup::Allowed(item) => {
                    assert_eq!((item.member, item.upstream.as_str()), (0, "add_numbers"));
                }
                other => panic!("{exposed}: {other:?}"),
            }
        }
    }

    #[test]
    fn tool_lookups() {
        let p = policy();
        let vs = demo(&p);
        let allowed = |name: &str, member: usize, upstream: &str| match vs.tool(name) {
            Lookup::Allowed(i) => assert_eq!(
                (i.member, i.upstream.as_str()),
                (member, upstream),
                "{name}"
            ),
            other => panic!("{name}: {other:?}"),
        };
        allowed("echo", 0, "echo");
        allowed("add", 0, "add_numbers");
        allowed("forecast", 1, "get_forecast");
        let cases = [
            ("add_numbers", Lookup::NotAllowed), // upstream names are not exposed
            ("secret", Lookup::NotAllowed),
            ("ADD", Lookup::Lookalike("add".into())),
            (" echo", Lookup::Lookalike("echo".into())),
            ("еcho", Lookup::Lookalike("echo".into())),
            ("Forecast", Lookup::Lookalike("forecast".into())),
            ("", Lookup::NotAllowed),
        ];
        for (name, want) in cases {
            assert_eq!(vs.tool(name).map_item(), want, "{name:?}");
        }
    }

    #[test]
    fn prompt_and_resource_lookups() {
        let p = policy();
        let vs = demo(&p);
        assert!(matches!(vs.prompt("greet"), Lookup::Allowed(i) if i.upstream == "simple_prompt"));
        assert_eq!(vs.prompt("simple_prompt").map_item(), Lookup::NotAllowed);
        assert_eq!(
            vs.prompt("Greet").map_item(),
            Lookup::Lookalike("greet".into())
        );
        let cases = [
            ("test://static-text", Lookup::Allowed(0)),
            ("weather://stations", Lookup::Allowed(1)),
            ("test://template/42/data", Lookup::Allowed(0)),
            ("test://template/../data", Lookup::NotAllowed),
            (
                "test://Static-Text",
                Lookup::Lookalike("test://static-text".into()),
            ),
            ("test://secret", Lookup::NotAllowed),
            ("test://template/{id}/data", Lookup::NotAllowed),
        ];
        for (uri, want) in cases {
            assert_eq!(vs.resource(uri), want, "{uri}");
        }
        assert_eq!(
            vs.resource_ref("test://template/{id}/data"),
            Lookup::Allowed(0)
        );
        assert_eq!(vs.resource_ref("weather://stations"), Lookup::Allowed(1));
    }

    #[test]
    fn invalid_policies_are_refused_with_the_field() {
        let cases = [
            ("{}", "schema"),
            (
                r#"{"schema_version":4,"catalog_version":"x"}"#,
                "schema_version 4",
            ),
            (
                r#"{"schema_version": 3,"catalog_version":"x","sessions":{"keys":[{"id":"k","secret":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}]},"virtual_servers":[{"name":"Bad Name","members":[]}]}"#,
                "virtual_servers[0].name",
            ),
            (
                r#"{"schema_version": 3,"catalog_version":"x","limits":{"max_body_bytes":0}}"#,
                "max_body_bytes",
            ),
            (
                r#"{"schema_version": 3,"catalog_version":"x","virtual_servers":[{"name":"a","members":[]}]}"#,
                "sessions.keys",
            ),
            ("not json", "not valid JSON"),
        ];
        for (json, needle) in cases {
            match CompiledPolicy::from_json(json.as_bytes()) {
                Ok(_) => panic!("{json} accepted"),
                Err(e) => assert!(e.to_string().contains(needle), "{json}: {e}"),
            }
        }
    }

    #[test]
    fn federation_fields() {
        let p = policy();
        assert!(!p.sessions.is_empty());
        assert_eq!(p.member_timeout_ms, 5000);
        assert_eq!(p.list_page_size, 3);
        assert_eq!(p.allowed_hosts, vec!["gw.example".to_string()]);
        assert_eq!(p.public_host, None);
        let vs = demo(&p);
        let m0 = vs.member(0).unwrap();
        let m1 = vs.member(1).unwrap();
        assert_eq!(
            (&*m0.authority, m0.logging, m0.completions, m0.subscribe),
            ("everything:3001", true, true, true)
        );
        assert_eq!(
            (&*m1.authority, m1.logging, m1.completions, m1.subscribe),
            ("weather.internal", false, false, false)
        );
    }

    #[test]
    fn public_host_of_the_auth_url() {
        let cases = [
            ("https://MCP.Example.com", Some("mcp.example.com")),
            (
                "https://mcp.example.com:8443/base/path?x#y",
                Some("mcp.example.com"),
            ),
            ("http://user:pw@host.example/", Some("host.example")),
            ("http://[::1]:8080/", Some("[::1]")),
            ("http://[2001:DB8::1]/", Some("[2001:db8::1]")),
            ("localhost:10000", Some("localhost")),
            ("https:///nohost", None),
            ("", None),
        ];
        for (url, want) in cases {
            assert_eq!(url_host(url).as_deref(), want, "{url}");
        }
    }

    #[test]
    fn listings_are_rendered_once_in_order() {
        let p = policy();
        let vs = demo(&p);
        let parse = |kind| -> Vec<serde_json::Value> {
            vs.listing(kind)
                .iter()
                .map(|s| serde_json::from_str(s).unwrap())
                .collect()
        };
        use serde_json::json;
        assert_eq!(
            parse(ListKind::Tools),
            vec![
                json!({"name": "echo", "description": "Echo", "inputSchema": {"type": "object",
                       "properties": {"message": {"type": "string"}}}}),
                json!({"name": "add", "inputSchema": {"type": "object"}}),
                json!({"name": "sum", "inputSchema": {"type": "object"}}),
                json!({"name": "forecast", "title": "Forecast", "inputSchema": {"type": "object"}}),
            ]
        );
        assert_eq!(parse(ListKind::Prompts), vec![json!({"name": "greet"})]);
        assert_eq!(
            parse(ListKind::Resources),
            vec![
                json!({"uri": "test://static-text", "name": "test://static-text"}),
                json!({"uri": "weather://stations", "name": "stations",
                       "mimeType": "application/json"}),
            ]
        );
        assert_eq!(
            parse(ListKind::ResourceTemplates),
            vec![json!({"uriTemplate": "test://template/{id}/data",
                        "name": "test://template/{id}/data"})]
        );
        let empty = p.virtual_server("empty").unwrap();
        assert!(empty.listing(ListKind::Tools).is_empty());
    }

    #[test]
    fn rendering_fills_required_fields_and_sets_the_exposed_name() {
        let def = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
        let tool = render_item(
            &def(serde_json::json!({"name": "upstream", "inputSchema": "bad"})),
            "name",
            "exposed",
            ListKind::Tools,
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&tool).unwrap(),
            serde_json::json!({"name": "exposed", "inputSchema": {"type": "object"}})
        );
        let res = render_item(
            &def(serde_json::json!({"uri": "x://other", "name": 5})),
            "uri",
            "x://a",
            ListKind::Resources,
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&res).unwrap(),
            serde_json::json!({"uri": "x://a", "name": "x://a"})
        );
    }

    impl Lookup<&Item> {
        fn map_item(&self) -> Lookup<String> {
            match self {
                Lookup::Allowed(i) => Lookup::Allowed(i.exposed.clone()),
                Lookup::Lookalike(s) => Lookup::Lookalike(s.clone()),
                Lookup::NotAllowed => Lookup::NotAllowed,
            }
        }
    }
}
