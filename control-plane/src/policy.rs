//! Compiling the catalog into what the gateway enforces.
//!
//! This is the one conversion from the catalog model to the wire contract of `toolmesh-proto`:
//! only enabled items that the upstream still offers are exposed, under the name
//! [`crate::naming`] gives them (`expose_as`, the upstream name, or `{mcp_server}__{name}` when
//! members collide); each MCP server becomes the Envoy cluster `mcp_<name>`, and the member's
//! `path` is the URL path of the server's MCP endpoint; a member carries its server's discovered
//! capabilities and stateless protocol versions (`modern_versions`: the filter speaks 2026-07-28 on
//! a virtual server only when every member lists it). [`gateway_model`] adds what the xDS layer needs
//! besides the policy: the upstream endpoints for clusters, and the accepted definitions that a
//! virtual server exposes (for answering lists from the catalog).

use std::collections::BTreeMap;

use serde::Serialize;
use toolmesh_proto::{
    Member, NamedItem, PolicySnapshot, ResourceItem, ResourceTemplateItem, VirtualServer,
};

use crate::store::{CatalogDump, ItemKind, McpServerRecord, Store, StoreError, Transport};

/// An upstream MCP server as a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamEndpoint {
    /// The MCP server's catalog name.
    pub mcp_server: String,
    /// The Envoy cluster name (`mcp_<name>`).
    pub cluster: String,
    /// The MCP endpoint URL.
    pub url: String,
    /// The transport the upstream speaks.
    pub transport: Transport,
    /// The upstream's credential headers, still sealed (opened only by the publisher, for the
    /// Envoy routes); never serialized.
    #[serde(skip)]
    pub sealed_credentials: Option<Vec<u8>>,
}

/// What one virtual server exposes, with the accepted definitions renamed as exposed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ExposedCatalog {
    /// Tool definitions (`name` is the exposed name).
    pub tools: Vec<serde_json::Value>,
    /// Prompt definitions (`name` is the exposed name).
    pub prompts: Vec<serde_json::Value>,
    /// Resource definitions.
    pub resources: Vec<serde_json::Value>,
    /// Resource template definitions.
    pub resource_templates: Vec<serde_json::Value>,
}

/// Everything the gateway needs at one catalog version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GatewayModel {
    /// The catalog version the model was read at.
    pub version: u64,
    /// The filter's policy.
    pub policy: PolicySnapshot,
    /// Every registered MCP server, as a cluster.
    pub upstreams: Vec<UpstreamEndpoint>,
    /// Per virtual server (by name): the exposed definitions.
    pub exposed: BTreeMap<String, ExposedCatalog>,
    /// When this model goes stale without a catalog change (a listed caller's token expires);
    /// the publisher compiles again then.
    #[serde(skip)]
    pub refresh_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The Envoy cluster name of an MCP server.
pub fn cluster_name(mcp_server: &str) -> String {
    format!("mcp_{mcp_server}")
}

/// The HTTP path of an MCP endpoint URL (`/` when the URL has none).
pub fn upstream_path(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) if u.path().starts_with('/') => u.path().to_string(),
        _ => "/".to_string(),
    }
}

/// `host[:port]` of an MCP endpoint URL (empty when the URL has no host).
pub fn upstream_authority(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            _ => String::new(),
        },
        Err(_) => String::new(),
    }
}

/// A catalog JSON object as the snapshot carries it (an item definition or a server's
/// capabilities; anything but an object is dropped).
fn definition(def: &serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    def.as_object().cloned().unwrap_or_default()
}

/// Compile the catalog into the policy snapshot.
pub fn compile_policy(dump: &CatalogDump) -> PolicySnapshot {
    let servers: BTreeMap<&str, &McpServerRecord> = dump
        .mcp_servers
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    let mut snapshot = PolicySnapshot::empty(dump.version.to_string());
    for vs in &dump.virtual_servers {
        let mut members: Vec<Member> = Vec::new();
        let names = crate::naming::served_names(&vs.name, &vs.members);
        for (m, name) in vs.members.iter().zip(names) {
            let Some(name) = name.filter(|_| m.active()) else {
                continue;
            };
            let idx = match members.iter().position(|x| x.mcp_server == m.mcp_server) {
                Some(i) => i,
                None => {
                    let server = servers.get(m.mcp_server.as_str());
                    let url = server.map_or("/", |s| s.url.as_str());
                    members.push(Member {
                        capabilities: server
                            .and_then(|s| s.health.capabilities.as_ref())
                            .map(definition)
                            .unwrap_or_default(),
                        modern_versions: server
                            .map(|s| s.health.modern_versions.clone())
                            .unwrap_or_default(),
                        ..Member::new(
                            m.mcp_server.clone(),
                            cluster_name(&m.mcp_server),
                            upstream_path(url),
                            upstream_authority(url),
                        )
                    });
                    members.len() - 1
                }
            };
            let member = &mut members[idx];
            match m.kind {
                ItemKind::Tool => member.tools.push(NamedItem {
                    definition: definition(&m.definition),
                    ..NamedItem::new(name, m.item.clone())
                }),
                ItemKind::Prompt => member.prompts.push(NamedItem {
                    definition: definition(&m.definition),
                    ..NamedItem::new(name, m.item.clone())
                }),
                ItemKind::Resource => member.resources.push(ResourceItem {
                    definition: definition(&m.definition),
                    ..ResourceItem::new(m.item.clone())
                }),
                ItemKind::ResourceTemplate => {
                    member.resource_templates.push(ResourceTemplateItem {
                        definition: definition(&m.definition),
                        ..ResourceTemplateItem::new(m.item.clone())
                    })
                }
            }
        }
        snapshot.virtual_servers.push(VirtualServer {
            name: vs.name.clone(),
            callers: Vec::new(),
            stale_tokens: Vec::new(),
            members,
        });
    }
    snapshot
}

/// The exposed definitions of each virtual server.
pub fn exposed_catalog(dump: &CatalogDump) -> BTreeMap<String, ExposedCatalog> {
    let mut out = BTreeMap::new();
    for vs in &dump.virtual_servers {
        let mut cat = ExposedCatalog::default();
        let names = crate::naming::served_names(&vs.name, &vs.members);
        for (m, name) in vs.members.iter().zip(names) {
            let Some(name) = name.filter(|_| m.active()) else {
                continue;
            };
            let mut def = m.definition.clone();
            match m.kind {
                ItemKind::Tool | ItemKind::Prompt => {
                    if let Some(obj) = def.as_object_mut() {
                        obj.insert("name".into(), name.into());
                    }
                    if m.kind == ItemKind::Tool {
                        cat.tools.push(def);
                    } else {
                        cat.prompts.push(def);
                    }
                }
                ItemKind::Resource => cat.resources.push(def),
                ItemKind::ResourceTemplate => cat.resource_templates.push(def),
            }
        }
        out.insert(vs.name.clone(), cat);
    }
    out
}

/// The public MCP URL [`gateway_model`] assumes (the `--public-mcp-url` default).
pub const DEFAULT_PUBLIC_URL: &str = "http://127.0.0.1:8080";

/// What `serve` puts into every snapshot besides the catalog (its flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySettings {
    /// Where clients reach Envoy (`auth.public_url`: the `WWW-Authenticate` resource metadata
    /// URL, and a host the filter accepts in `Host`/`Origin`).
    pub public_url: String,
    /// Items per page of the lists the filter answers (`limits.list_page_size`, at least 1).
    pub list_page_size: u32,
    /// More host names the filter accepts in `Host`/`Origin` (`limits.allowed_hosts`; `*` = any).
    pub allowed_hosts: Vec<String>,
    /// How long the filter waits for each member to open its session on `initialize`
    /// (`sessions.member_timeout_ms`, at least 1).
    pub member_timeout_ms: u32,
    /// At most this many tokens per virtual server get their own stats
    /// (`VirtualServer.callers`; see [`crate::tokens::callers`]); 0 turns per-caller stats off.
    pub caller_stats_limit: usize,
}

impl Default for PolicySettings {
    fn default() -> Self {
        Self {
            public_url: DEFAULT_PUBLIC_URL.into(),
            list_page_size: toolmesh_proto::DEFAULT_LIST_PAGE_SIZE,
            allowed_hosts: Vec::new(),
            member_timeout_ms: toolmesh_proto::DEFAULT_MEMBER_TIMEOUT_MS,
            caller_stats_limit: crate::tokens::DEFAULT_CALLER_STATS_LIMIT as usize,
        }
    }
}

/// Read the catalog at one version and build the gateway model (with the default
/// [`PolicySettings`]; `serve` uses [`gateway_model_with`]).
pub async fn gateway_model(store: &Store) -> Result<GatewayModel, StoreError> {
    gateway_model_with(store, &PolicySettings::default()).await
}

/// Read the catalog at one version and build the gateway model under `settings` (limits,
/// member timeout, public URL). Besides the compiled policy, the snapshot carries the token
/// checks: the JWKS, anonymous virtual servers and revoked token ids, and per virtual server
/// the callers that get their own stats (read just after the catalog; issuing and revoking a
/// token always bump the version, so a later change is published again, and the model's
/// `refresh_at` says when a listed token expires). The session keys are not in it: the
/// publisher derives them from the secret key ([`crate::gateway::to_xds_model`]).
pub async fn gateway_model_with(
    store: &Store,
    settings: &PolicySettings,
) -> Result<GatewayModel, StoreError> {
    let dump = store.dump().await?;
    let mut policy = compile_policy(&dump);
    policy.limits.list_page_size = settings.list_page_size;
    policy.limits.allowed_hosts = settings.allowed_hosts.clone();
    policy.sessions.member_timeout_ms = settings.member_timeout_ms;
    policy.revoked_token_ids = crate::tokens::revoked_ids(store).await?;
    policy.auth = Some(crate::tokens::auth_policy(store, &settings.public_url).await?);
    let names: Vec<&str> = dump
        .virtual_servers
        .iter()
        .map(|v| v.name.as_str())
        .collect();
    let live = store.live_tokens(chrono::Utc::now()).await?;
    let callers = crate::tokens::callers(&names, &live, settings.caller_stats_limit);
    let created: BTreeMap<&str, chrono::DateTime<chrono::Utc>> = dump
        .virtual_servers
        .iter()
        .map(|v| (v.name.as_str(), v.created_at))
        .collect();
    for vs in &mut policy.virtual_servers {
        vs.callers = callers.of(&vs.name);
        if let Some(created_at) = created.get(vs.name.as_str()) {
            vs.stale_tokens = crate::tokens::stale_tokens(&vs.name, *created_at, &live);
        }
    }
    Ok(GatewayModel {
        version: dump.version as u64,
        policy,
        upstreams: dump
            .mcp_servers
            .iter()
            .map(|s| UpstreamEndpoint {
                mcp_server: s.name.clone(),
                cluster: cluster_name(&s.name),
                url: s.url.clone(),
                transport: s.transport,
                sealed_credentials: s.credential_headers.clone(),
            })
            .collect(),
        exposed: exposed_catalog(&dump),
        refresh_at: callers.next_expiry,
    })
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::store::{Health, HealthStatus, MemberRecord, VirtualServerRecord};

    pub(crate) fn server(name: &str, capabilities: Option<serde_json::Value>) -> McpServerRecord {
        McpServerRecord {
            id: 1,
            name: name.into(),
            url: format!("http://{name}.internal:9000/mcp"),
            transport: Transport::StreamableHttp,
            description: String::new(),
            tags: vec![],
            credential_headers: None,
            credential_header_names: vec![],
            health: Health {
                status: HealthStatus::Up,
                last_success_at: None,
                last_error: None,
                last_error_at: None,
                latency_ms: None,
                protocol_version: None,
                modern_versions: vec![],
                server_info: None,
                capabilities,
                instructions: None,
            },
            counts: Default::default(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    pub(crate) fn tool(server: &str, name: &str, expose_as: Option<&str>) -> MemberRecord {
        MemberRecord {
            kind: ItemKind::Tool,
            mcp_server: server.into(),
            item: name.into(),
            item_id: 1,
            expose_as: expose_as.map(Into::into),
            enabled: true,
            removed_upstream: false,
            drifted: false,
            definition: json!({"name": name, "inputSchema": {"type": "object"}}),
        }
    }

    pub(crate) fn dump_of(
        servers: Vec<McpServerRecord>,
        members: Vec<MemberRecord>,
    ) -> CatalogDump {
        CatalogDump {
            version: 7,
            mcp_servers: servers,
            virtual_servers: vec![VirtualServerRecord {
                id: 1,
                name: "vs".into(),
                description: String::new(),
                anonymous: false,
                members,
                created_at: Utc::now(),
                updated_at: Utc::now(),
            }],
        }
    }

    #[test]
    fn members_carry_the_discovered_capabilities() {
        let caps = json!({"tools": {"listChanged": true}, "logging": {}});
        let dump = dump_of(
            vec![
                server("a", Some(caps.clone())),
                server("b", None),
                // Not an object (a corrupt or odd row): treated as unknown.
                server("c", Some(json!("tools"))),
            ],
            vec![
                tool("a", "x", None),
                tool("b", "y", None),
                tool("c", "z", None),
            ],
        );
        let policy = compile_policy(&dump);
        let members = &policy.virtual_servers[0].members;
        assert_eq!(
            serde_json::Value::Object(members[0].capabilities.clone()),
            caps
        );
        assert!(members[1].capabilities.is_empty());
        assert!(members[2].capabilities.is_empty());
        assert_eq!(members[0].authority, "a.internal:9000");
        assert_eq!(members[0].path, "/mcp");
        // The snapshot keeps them through its JSON form.
        let back = PolicySnapshot::from_json(
            PolicySnapshot {
                sessions: toolmesh_proto::Sessions {
                    keys: vec![toolmesh_proto::SessionKey {
                        id: "k1".into(),
                        secret: "A".repeat(43),
                    }],
                    ..Default::default()
                },
                ..policy.clone()
            }
            .to_json()
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(
            back.virtual_servers[0].members[0].capabilities,
            members[0].capabilities
        );
    }

    #[test]
    fn members_carry_the_stateless_protocol_versions() {
        let mut modern = server("a", None);
        modern.health.modern_versions = vec!["2026-07-28".into()];
        let dump = dump_of(
            vec![modern, server("b", None)],
            vec![tool("a", "x", None), tool("b", "y", None)],
        );
        let policy = compile_policy(&dump);
        let members = &policy.virtual_servers[0].members;
        assert_eq!(members[0].mcp_server, "a");
        assert_eq!(members[0].modern_versions, ["2026-07-28"]);
        assert_eq!(members[1].mcp_server, "b");
        assert!(members[1].modern_versions.is_empty(), "handshake only");
        // The snapshot's JSON form (what the filter reads) keeps them.
        let json: serde_json::Value = serde_json::from_str(&policy.to_json()).unwrap();
        let members = &json["virtual_servers"][0]["members"];
        assert_eq!(members[0]["modern_versions"], json!(["2026-07-28"]));
        assert!(members[1].get("modern_versions").is_none(), "{members}");
    }

    #[test]
    fn paths_and_clusters() {
        assert_eq!(upstream_path("http://h:1/mcp"), "/mcp");
        assert_eq!(upstream_path("http://h:1"), "/");
        assert_eq!(upstream_path("https://h/a/b/mcp?x=1"), "/a/b/mcp");
        assert_eq!(cluster_name("github"), "mcp_github");
    }
}
