//! The wire contract between the toolmesh control plane and the toolmesh Envoy filter.
//!
//! The control plane compiles its catalog (MCP servers, virtual servers, tokens) into one
//! [`PolicySnapshot`] and hands it to Envoy as the wasm plugin's configuration (a
//! `google.protobuf.StringValue` holding this JSON, delivered by ECDS). The filter parses it once
//! in `on_configure`, validates it with [`PolicySnapshot::validate`], and indexes it for lookups.
//!
//! Why JSON rather than protobuf: the plugin configuration reaches the wasm VM as raw bytes, the
//! filter already carries `serde_json` to parse MCP bodies, and a JSON snapshot is readable in
//! Envoy's `/config_dump`. The schema is versioned by [`SCHEMA_VERSION`]; a filter refuses a
//! snapshot of a schema it does not know, so Envoy NACKs it and keeps the last good one.
//!
//! The serialized form is pinned by a golden test (`tests/golden.rs`).

use serde::{Deserialize, Serialize};

/// The snapshot schema this crate reads and writes.
///
/// 2: item definitions, member capabilities and authority, session keys, list page size and
/// allowed hosts (the filter answers `initialize` and the lists itself and seals sessions).
/// 3: each member's stateless protocol versions ([`Member::modern_versions`]); the filter speaks
/// protocol 2026-07-28 on a virtual server whose members all do.
pub const SCHEMA_VERSION: u32 = 3;

/// The stateless ("modern") MCP protocol revisions the filter speaks, newest first: requests
/// carry their protocol version and client capabilities in `params._meta`; there is no
/// `initialize` and no session.
pub const MODERN_PROTOCOL_VERSIONS: &[&str] = &["2026-07-28"];

/// Default cap on a buffered JSON-RPC request body (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: u32 = 1024 * 1024;

/// Default number of items on one page of a list the filter answers (`tools/list`, ...).
pub const DEFAULT_LIST_PAGE_SIZE: u32 = 100;

/// Default time the filter gives a member MCP server to open its session (`initialize` and
/// `notifications/initialized`) when a client initializes.
pub const DEFAULT_MEMBER_TIMEOUT_MS: u32 = 5_000;

/// Everything the filter needs to enforce the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySnapshot {
    /// Must equal [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The catalog version this snapshot was compiled from (opaque; echoed in logs and stats).
    pub catalog_version: String,
    /// Limits that apply to every virtual server.
    #[serde(default)]
    pub limits: Limits,
    /// The virtual servers, served at `/servers/{name}/mcp`.
    #[serde(default)]
    pub virtual_servers: Vec<VirtualServer>,
    /// Token ids (JWT `jti`) that are revoked before their expiry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_token_ids: Vec<String>,
    /// Token checks. Absent: the filter checks no tokens (a deployment without Envoy's
    /// `jwt_authn` in front of the filter); the control plane always sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Auth>,
    /// How the filter seals the `Mcp-Session-Id` it gives clients. Required when there are
    /// virtual servers.
    #[serde(default)]
    pub sessions: Sessions,
}

/// The keys that seal session ids, and how member sessions are opened.
///
/// A session id the filter mints carries the virtual server, the caller and each member's own
/// upstream session id, MAC'd with the first key; any key in the list verifies. To rotate: add
/// the new key first, keep the old one after it until old sessions no longer matter, then drop
/// it. Every Envoy gets the same keys, so any replica serves any session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sessions {
    /// Keys, newest (sealing) first.
    #[serde(default)]
    pub keys: Vec<SessionKey>,
    /// How long the filter waits for each member to open its session on `initialize`, and for
    /// each step of the session a stateless call to a handshake-only member runs in.
    #[serde(default = "default_member_timeout_ms")]
    pub member_timeout_ms: u32,
}

fn default_member_timeout_ms() -> u32 {
    DEFAULT_MEMBER_TIMEOUT_MS
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            member_timeout_ms: DEFAULT_MEMBER_TIMEOUT_MS,
        }
    }
}

/// One session-sealing key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionKey {
    /// Short id written into every session id sealed with this key (1-16 of `A-Za-z0-9`).
    pub id: String,
    /// The secret: base64url without padding, at least 32 bytes once decoded.
    pub secret: String,
}

/// How callers prove who they are: bearer JWTs signed by the control plane, verified by Envoy's
/// `jwt_authn` filter (which writes the verified payload, or why verification failed, into the
/// request's dynamic metadata), then checked by the toolmesh filter against the virtual server,
/// the caller's address and [`PolicySnapshot::revoked_token_ids`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// The JSON Web Key Set (RFC 7517) whose keys verify tokens: given to Envoy's `jwt_authn`
    /// (the filter does not read it).
    pub jwks: String,
    /// The public base URL of the MCP listener (`https://mcp.example.com`), for the
    /// `resource_metadata` URL of `WWW-Authenticate` (RFC 9728).
    pub public_url: String,
    /// Virtual servers that accept requests without a token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub anonymous_virtual_servers: Vec<String>,
}

/// The `iss` of every toolmesh token.
pub const JWT_ISSUER: &str = "toolmesh";
/// The `aud` of every toolmesh token.
pub const JWT_AUDIENCE: &str = "toolmesh";
/// The dynamic metadata namespace Envoy's `jwt_authn` writes to.
pub const JWT_METADATA_NAMESPACE: &str = "envoy.filters.http.jwt_authn";
/// The key (in [`JWT_METADATA_NAMESPACE`]) of a verified token's payload.
pub const JWT_PAYLOAD_KEY: &str = "toolmesh_payload";
/// The key (in [`JWT_METADATA_NAMESPACE`]) of why a token failed (`code`, `message`).
pub const JWT_FAILURE_KEY: &str = "toolmesh_failure";
/// Claim: the virtual servers a token opens, space-separated (`"a b"`), or `"*"` for all.
/// A string rather than an array: Envoy hands a string claim to the filter as its plain bytes.
pub const CLAIM_VIRTUAL_SERVERS: &str = "toolmesh_vs";
/// Claim: the source CIDRs a token may be used from, space-separated; absent means anywhere.
pub const CLAIM_SOURCE_CIDRS: &str = "toolmesh_cidrs";

/// Limits on what the filter accepts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest JSON-RPC request body the filter buffers and parses; larger bodies are refused.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u32,
    /// Items per page of the lists the filter answers.
    #[serde(default = "default_list_page_size")]
    pub list_page_size: u32,
    /// Host names (without port) that may appear in `Host` and `Origin` besides the loopback
    /// names (`localhost`, `127.0.0.1`, `[::1]`) and the host of `auth.public_url`: every other
    /// value is refused (DNS-rebinding protection; the upstream cannot check once Envoy rewrites
    /// `Host`). `"*"` allows any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
}

fn default_max_body_bytes() -> u32 {
    DEFAULT_MAX_BODY_BYTES
}

fn default_list_page_size() -> u32 {
    DEFAULT_LIST_PAGE_SIZE
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            list_page_size: DEFAULT_LIST_PAGE_SIZE,
            allowed_hosts: Vec::new(),
        }
    }
}

/// A curated set of tools, prompts and resources from one or many MCP servers, exposed as one
/// MCP endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualServer {
    /// URL-safe slug; the endpoint is `/servers/{name}/mcp`.
    pub name: String,
    /// The upstream MCP servers this virtual server draws from, each with what it may use.
    pub members: Vec<Member>,
    /// Token ids (`jti`) whose requests on this virtual server get their own stats
    /// (`toolmesh.caller.<vs>.<id>.*`). Listed by the control plane, so the number of stats
    /// stays bounded by the tokens it issued; a caller not listed is counted only in the
    /// virtual server's and tools' stats.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub callers: Vec<String>,
    /// Token ids that name this virtual server but were issued before it was created: they
    /// were meant for an earlier virtual server of the same name (deleted since), so they are
    /// refused here (403) though their claim names it. Tokens for all virtual servers (`*`)
    /// are not listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stale_tokens: Vec<String>,
}

/// One upstream MCP server's contribution to a virtual server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// The MCP server's catalog name (a slug); used as the `mcp_server` stats label.
    pub mcp_server: String,
    /// The Envoy cluster that reaches this MCP server.
    pub cluster: String,
    /// The HTTP path of the MCP endpoint on the upstream (for example `/mcp`).
    pub path: String,
    /// `host[:port]` of the upstream, the `:authority` of the calls the filter itself makes to
    /// it (opening and closing member sessions).
    pub authority: String,
    /// The upstream's declared `ServerCapabilities` (from discovery), merged into the virtual
    /// server's `initialize` answer.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub capabilities: serde_json::Map<String, serde_json::Value>,
    /// The stateless protocol versions (2026-07-28 and later) the upstream lists in its
    /// `server/discover` answer; empty when it speaks only the `initialize` handshake. A virtual
    /// server speaks a stateless version only when every member does: the filter forwards such
    /// requests to the owning member unchanged but for names, without a session.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modern_versions: Vec<String>,
    /// Allowed tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<NamedItem>,
    /// Allowed prompts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prompts: Vec<NamedItem>,
    /// Allowed static resources, by exact URI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ResourceItem>,
    /// Allowed resource templates (RFC 6570 level-1 `{var}` expressions); a URI that matches the
    /// template is allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_templates: Vec<ResourceTemplateItem>,
}

/// A tool or prompt: the name the virtual server exposes and the name the upstream knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedItem {
    /// The name clients see and call.
    pub name: String,
    /// The upstream's own name; equals `name` unless the item is renamed.
    pub upstream_name: String,
    /// The catalog's accepted definition (`Tool` or `Prompt` object as the upstream listed it);
    /// the filter lists it with `name` replaced by the exposed name.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub definition: serde_json::Map<String, serde_json::Value>,
}

impl NamedItem {
    /// An item exposed as `name`, known upstream as `upstream_name`, with no definition.
    pub fn new(name: impl Into<String>, upstream_name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            upstream_name: upstream_name.into(),
            definition: serde_json::Map::new(),
        }
    }
}

/// An allowed static resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceItem {
    /// The resource URI (exposed unchanged).
    pub uri: String,
    /// The catalog's `Resource` object.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub definition: serde_json::Map<String, serde_json::Value>,
}

impl ResourceItem {
    /// A resource with no definition.
    pub fn new(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            definition: serde_json::Map::new(),
        }
    }
}

/// An allowed resource template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceTemplateItem {
    /// The URI template, for example `test://template/{id}/data`.
    pub uri_template: String,
    /// The catalog's `ResourceTemplate` object.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub definition: serde_json::Map<String, serde_json::Value>,
}

impl ResourceTemplateItem {
    /// A template with no definition.
    pub fn new(uri_template: impl Into<String>) -> Self {
        Self {
            uri_template: uri_template.into(),
            definition: serde_json::Map::new(),
        }
    }
}

impl Member {
    /// A member with nothing allowed yet.
    pub fn new(
        mcp_server: impl Into<String>,
        cluster: impl Into<String>,
        path: impl Into<String>,
        authority: impl Into<String>,
    ) -> Self {
        Self {
            mcp_server: mcp_server.into(),
            cluster: cluster.into(),
            path: path.into(),
            authority: authority.into(),
            capabilities: serde_json::Map::new(),
            modern_versions: Vec::new(),
            tools: Vec::new(),
            prompts: Vec::new(),
            resources: Vec::new(),
            resource_templates: Vec::new(),
        }
    }
}

/// Why a snapshot was rejected. Each variant names the offending item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The bytes are not a snapshot.
    #[error("policy is not valid JSON for schema {SCHEMA_VERSION}: {0}")]
    Parse(String),
    /// The schema version is not one this build understands.
    #[error("policy schema_version {found} is not supported (this build reads {SCHEMA_VERSION})")]
    SchemaVersion {
        /// The version found in the snapshot.
        found: u32,
    },
    /// A name that must be a slug is not.
    #[error(
        "{field} {value:?} is not a valid slug (1-63 chars of a-z, 0-9, '-', '_', starting with a letter or digit)"
    )]
    BadSlug {
        /// Which field, for example `virtual_servers[2].name`.
        field: String,
        /// The value found.
        value: String,
    },
    /// A tool or prompt name is outside the MCP rules.
    #[error(
        "{field} {value:?} is not a valid MCP name (1-128 chars of A-Z, a-z, 0-9, '_', '-', '.', '/')"
    )]
    BadName {
        /// Which field.
        field: String,
        /// The value found.
        value: String,
    },
    /// Two items would be exposed under the same name in one virtual server.
    #[error("virtual server {virtual_server:?} exposes {kind} {name:?} twice")]
    Duplicate {
        /// The virtual server.
        virtual_server: String,
        /// `tool`, `prompt`, `resource`, `resource template` or `virtual server`.
        kind: &'static str,
        /// The duplicated exposed name.
        name: String,
    },
    /// A field that must not be empty is empty or malformed.
    #[error("{field}: {reason}")]
    Invalid {
        /// Which field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Is `s` a slug: 1-63 characters of `a-z0-9-_`, starting with a letter or digit.
///
/// Slugs appear in URLs (`/servers/{name}/mcp`) and in Envoy stat names, which must not contain
/// `.`.
pub fn is_slug(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

/// Make `s` safe as one segment of an Envoy stat name: every character outside
/// `[A-Za-z0-9_-]` becomes `_`.
///
/// The filter names its stats with it and the control plane maps catalog names onto the stats
/// it receives with it, so both sides of the contract use this one function.
pub fn stat_segment(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Can `s` be listed as a caller (a token id in `VirtualServer::callers`): 1-64 characters of
/// `A-Za-z0-9_-`, so it is one Envoy stat name segment.
pub fn is_caller_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Is `s` a valid MCP tool or prompt name.
///
/// The MCP specification (2025-11-25, "Tool names") says names SHOULD be 1-128 characters of
/// ASCII letters, digits, `_`, `-` and `.`; we also accept `/`, which servers use for namespaces.
pub fn is_mcp_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'/'))
}

/// The decoded length of a base64url string without padding, or `None` if it is not one.
fn base64url_len(s: &str) -> Option<usize> {
    if !s
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        || s.len() % 4 == 1
    {
        return None;
    }
    Some(s.len() * 3 / 4)
}

impl PolicySnapshot {
    /// An empty snapshot (no virtual servers: every request is refused).
    pub fn empty(catalog_version: impl Into<String>) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            catalog_version: catalog_version.into(),
            limits: Limits::default(),
            virtual_servers: Vec::new(),
            revoked_token_ids: Vec::new(),
            auth: None,
            sessions: Sessions::default(),
        }
    }

    /// Parse and validate a snapshot from its JSON bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, PolicyError> {
        // Read the schema version first so an unknown schema gets the precise error.
        #[derive(Deserialize)]
        struct Probe {
            schema_version: Option<u32>,
        }
        if let Ok(Probe {
            schema_version: Some(v),
        }) = serde_json::from_slice::<Probe>(bytes)
            && v != SCHEMA_VERSION
        {
            return Err(PolicyError::SchemaVersion { found: v });
        }
        let snapshot: Self =
            serde_json::from_slice(bytes).map_err(|e| PolicyError::Parse(e.to_string()))?;
        snapshot.validate()?;
        Ok(snapshot)
    }

    /// Serialize to the canonical JSON form.
    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings and integers cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Check every rule a filter relies on; the error names the first offending field.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.schema_version != SCHEMA_VERSION {
            return Err(PolicyError::SchemaVersion {
                found: self.schema_version,
            });
        }
        if self.limits.max_body_bytes == 0 {
            return Err(PolicyError::Invalid {
                field: "limits.max_body_bytes".into(),
                reason: "must be greater than 0".into(),
            });
        }
        if self.limits.list_page_size == 0 {
            return Err(PolicyError::Invalid {
                field: "limits.list_page_size".into(),
                reason: "must be greater than 0".into(),
            });
        }
        for (i, h) in self.limits.allowed_hosts.iter().enumerate() {
            if h.is_empty() || h.contains(['/', ' ']) {
                return Err(PolicyError::Invalid {
                    field: format!("limits.allowed_hosts[{i}]"),
                    reason: format!("{h:?} is not a host name"),
                });
            }
        }
        for (i, k) in self.sessions.keys.iter().enumerate() {
            if k.id.is_empty()
                || k.id.len() > 16
                || !k.id.bytes().all(|c| c.is_ascii_alphanumeric())
            {
                return Err(PolicyError::Invalid {
                    field: format!("sessions.keys[{i}].id"),
                    reason: "must be 1-16 characters of A-Z, a-z, 0-9".into(),
                });
            }
            if base64url_len(&k.secret).is_none_or(|n| n < 32) {
                return Err(PolicyError::Invalid {
                    field: format!("sessions.keys[{i}].secret"),
                    reason: "must be base64url without padding, at least 32 bytes decoded".into(),
                });
            }
        }
        if !self.virtual_servers.is_empty() && self.sessions.keys.is_empty() {
            return Err(PolicyError::Invalid {
                field: "sessions.keys".into(),
                reason:
                    "at least one key is needed to seal sessions when there are virtual servers"
                        .into(),
            });
        }
        if self.sessions.member_timeout_ms == 0 {
            return Err(PolicyError::Invalid {
                field: "sessions.member_timeout_ms".into(),
                reason: "must be greater than 0".into(),
            });
        }
        if let Some(auth) = &self.auth {
            if auth.public_url.is_empty() {
                return Err(PolicyError::Invalid {
                    field: "auth.public_url".into(),
                    reason: "must not be empty".into(),
                });
            }
            for (i, name) in auth.anonymous_virtual_servers.iter().enumerate() {
                if !is_slug(name) {
                    return Err(PolicyError::BadSlug {
                        field: format!("auth.anonymous_virtual_servers[{i}]"),
                        value: name.clone(),
                    });
                }
            }
        }
        let mut vs_names = std::collections::HashSet::new();
        for (i, vs) in self.virtual_servers.iter().enumerate() {
            if !is_slug(&vs.name) {
                return Err(PolicyError::BadSlug {
                    field: format!("virtual_servers[{i}].name"),
                    value: vs.name.clone(),
                });
            }
            if !vs_names.insert(vs.name.as_str()) {
                return Err(PolicyError::Duplicate {
                    virtual_server: vs.name.clone(),
                    kind: "virtual server",
                    name: vs.name.clone(),
                });
            }
            vs.validate(i)?;
            let mut seen = std::collections::HashSet::new();
            for (j, c) in vs.callers.iter().enumerate() {
                if !is_caller_id(c) || !seen.insert(c.as_str()) {
                    return Err(PolicyError::Invalid {
                        field: format!("virtual_servers[{i}].callers[{j}]"),
                        reason: format!(
                            "{c:?} must be a unique token id of 1-64 characters of A-Z, a-z, 0-9, '_', '-'"
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

impl VirtualServer {
    fn validate(&self, i: usize) -> Result<(), PolicyError> {
        use std::collections::HashSet;
        let (mut tools, mut prompts, mut resources, mut templates) = (
            HashSet::new(),
            HashSet::new(),
            HashSet::new(),
            HashSet::new(),
        );
        let mut mcp_servers = HashSet::new();
        for (j, m) in self.members.iter().enumerate() {
            let at = format!("virtual_servers[{i}].members[{j}]");
            if !is_slug(&m.mcp_server) {
                return Err(PolicyError::BadSlug {
                    field: format!("{at}.mcp_server"),
                    value: m.mcp_server.clone(),
                });
            }
            if !mcp_servers.insert(m.mcp_server.as_str()) {
                return Err(PolicyError::Invalid {
                    field: format!("{at}.mcp_server"),
                    reason: format!("{:?} is a member twice", m.mcp_server),
                });
            }
            if m.cluster.is_empty() {
                return Err(PolicyError::Invalid {
                    field: format!("{at}.cluster"),
                    reason: "must not be empty".into(),
                });
            }
            if m.authority.is_empty() || m.authority.contains(['/', ' ', '@']) {
                return Err(PolicyError::Invalid {
                    field: format!("{at}.authority"),
                    reason: format!("{:?} must be host[:port]", m.authority),
                });
            }
            if !m.path.starts_with('/') {
                return Err(PolicyError::Invalid {
                    field: format!("{at}.path"),
                    reason: format!("{:?} must start with '/'", m.path),
                });
            }
            for (kind, items, seen) in [
                ("tool", &m.tools, &mut tools),
                ("prompt", &m.prompts, &mut prompts),
            ] {
                for (k, item) in items.iter().enumerate() {
                    for (field, value) in
                        [("name", &item.name), ("upstream_name", &item.upstream_name)]
                    {
                        if !is_mcp_name(value) {
                            return Err(PolicyError::BadName {
                                field: format!("{at}.{kind}s[{k}].{field}"),
                                value: value.clone(),
                            });
                        }
                    }
                    if !seen.insert(item.name.clone()) {
                        return Err(PolicyError::Duplicate {
                            virtual_server: self.name.clone(),
                            kind,
                            name: item.name.clone(),
                        });
                    }
                }
            }
            for (k, r) in m.resources.iter().enumerate() {
                if r.uri.is_empty() {
                    return Err(PolicyError::Invalid {
                        field: format!("{at}.resources[{k}].uri"),
                        reason: "must not be empty".into(),
                    });
                }
                if !resources.insert(r.uri.clone()) {
                    return Err(PolicyError::Duplicate {
                        virtual_server: self.name.clone(),
                        kind: "resource",
                        name: r.uri.clone(),
                    });
                }
            }
            for (k, t) in m.resource_templates.iter().enumerate() {
                if t.uri_template.is_empty() {
                    return Err(PolicyError::Invalid {
                        field: format!("{at}.resource_templates[{k}].uri_template"),
                        reason: "must not be empty".into(),
                    });
                }
                if !templates.insert(t.uri_template.clone()) {
                    return Err(PolicyError::Duplicate {
                        virtual_server: self.name.clone(),
                        kind: "resource template",
                        name: t.uri_template.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}
