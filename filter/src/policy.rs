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

use crate::sanitize::skeleton;
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
    /// Host metric ids by stat slot (filled by the shell).
    pub metric_ids: MetricIds,
    /// Token checks, when the snapshot has them.
    pub auth: Option<crate::auth::CompiledAuth>,
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
    /// Upstream tool name → exposed names (one upstream tool may be exposed under several).
    pub tools_by_upstream: HashMap<String, Vec<String>>,
    /// Upstream prompt name → exposed names.
    pub prompts_by_upstream: HashMap<String, Vec<String>>,
    /// Allowed static resource URIs.
    pub resources: HashSet<String>,
    /// Allowed resource templates, compiled.
    pub templates: Vec<UriTemplate>,
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
        for vs in &snapshot.virtual_servers {
            if index.contains_key(&vs.name) {
                continue;
            }
            let i = virtual_servers.len();
            index.insert(vs.name.clone(), i);
            virtual_servers.push(compile_vs(vs, i, &mut tool_stats));
        }
        Self {
            catalog_version: snapshot.catalog_version.clone(),
            max_body_bytes: usize::try_from(snapshot.limits.max_body_bytes).unwrap_or(usize::MAX),
            index,
            virtual_servers,
            tool_stats,
            metric_ids: MetricIds::default(),
            auth: crate::auth::CompiledAuth::compile(snapshot),
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
        };
        u32::try_from(slot).ok()
    }

    /// The number of stat slots.
    pub fn stat_slots(&self) -> usize {
        Reason::ALL.len()
            + self.virtual_servers.len() * (MethodStat::ALL.len() + Reason::ALL.len())
            + self.tool_stats.len() * ToolMetric::ALL.len()
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
            StatKey::Tool { tool, metric } => {
                let (vs, member, exposed) = self.tool_stats.get(usize::try_from(tool).ok()?)?;
                let vs = self.virtual_servers.get(*vs)?;
                let member = vs.members.get(*member)?;
                stats::tool_metric(&vs.name, &member.mcp_server, exposed, metric)
            }
        })
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
    };
    for (mi, m) in vs.members.iter().enumerate() {
        let mut member = CompiledMember {
            mcp_server: m.mcp_server.clone(),
            cluster: Rc::from(m.cluster.as_str()),
            path: Rc::from(m.path.as_str()),
            tools_by_upstream: HashMap::new(),
            prompts_by_upstream: HashMap::new(),
            resources: HashSet::new(),
            templates: Vec::new(),
            template_strings: HashSet::new(),
        };
        for t in &m.tools {
            member
                .tools_by_upstream
                .entry(t.upstream_name.clone())
                .or_default()
                .push(t.name.clone());
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
            member
                .prompts_by_upstream
                .entry(p.upstream_name.clone())
                .or_default()
                .push(p.name.clone());
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
            out.resources.entry(r.uri.clone()).or_insert(mi);
            out.resource_skeletons
                .entry(skeleton(&r.uri))
                .or_insert_with(|| r.uri.clone());
        }
        for t in &m.resource_templates {
            let compiled = UriTemplate::parse(&t.uri_template);
            member.templates.push(compiled.clone());
            member.template_strings.insert(t.uri_template.clone());
            out.templates.push((compiled, mi));
            out.template_strings
                .entry(t.uri_template.clone())
                .or_insert(mi);
        }
        out.members.push(member);
    }
    out
}

impl CompiledVs {
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
      "schema_version": 1,
      "catalog_version": "c1",
      "limits": {"max_body_bytes": 4096},
      "virtual_servers": [
        {"name": "demo", "members": [
          {"mcp_server": "everything", "cluster": "up_everything", "path": "/mcp",
           "tools": [
             {"name": "echo", "upstream_name": "echo"},
             {"name": "add", "upstream_name": "add_numbers"},
             {"name": "sum", "upstream_name": "add_numbers"}
           ],
           "prompts": [{"name": "greet", "upstream_name": "simple_prompt"}],
           "resources": [{"uri": "test://static-text"}],
           "resource_templates": [{"uri_template": "test://template/{id}/data"}]},
          {"mcp_server": "weather", "cluster": "up_weather", "path": "/v1/mcp",
           "tools": [{"name": "forecast", "upstream_name": "get_forecast"}],
           "resources": [{"uri": "weather://stations"}]}
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
        let m0 = vs.member(0).unwrap_or_else(|| panic!("m0"));
        let mut sum_names = m0
            .tools_by_upstream
            .get("add_numbers")
            .cloned()
            .unwrap_or_default();
        sum_names.sort();
        assert_eq!(sum_names, vec!["add".to_string(), "sum".to_string()]);
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
                r#"{"schema_version":2,"catalog_version":"x"}"#,
                "schema_version 2",
            ),
            (
                r#"{"schema_version":1,"catalog_version":"x","virtual_servers":[{"name":"Bad Name","members":[]}]}"#,
                "virtual_servers[0].name",
            ),
            (
                r#"{"schema_version":1,"catalog_version":"x","limits":{"max_body_bytes":0}}"#,
                "max_body_bytes",
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
