//! Pure builders: a [`GatewayModel`] plus [`GatewaySettings`] in, Envoy resources out.
//!
//! No IO happens here, so every field Envoy will see is unit-testable. The output is a
//! [`Snapshot`]: for each xDS type the `Any`-encoded resources and a version that is a content
//! hash, so the same model always yields the same versions (a restarted or second control-plane
//! replica agrees with the first, and an unchanged type is never pushed again).
//!
//! What Envoy gets, and why:
//! - **Listener `toolmesh_mcp`** with one HTTP connection manager: path normalization
//!   (`normalize_path`, `merge_slashes`, and escaped slashes (`%2F`, `%5C`) *rejected* with 400
//!   rather than unescaped-and-redirected: no legitimate MCP endpoint has one, a redirect would make
//!   clients re-POST bodies, and rejecting means `/servers/a%2F..%2Fb/mcp` can never be read as
//!   another virtual server by the filter); `request_timeout` off and a configurable
//!   `stream_idle_timeout`, because MCP calls and SSE streams are long-lived; a per-connection
//!   buffer limit big enough for the policy's body limit. HTTP filters: `jwt_authn` (when the
//!   policy has token checks), `toolmesh`, both through ECDS, then the router. An access log
//!   (unless turned off): one JSON object per request on Envoy's stdout with the filter's
//!   `<virtual server> <method> <mcp_server>/<tool> <outcome>` (its filter state) and the
//!   caller's token id from `jwt_authn`'s metadata ([`ACCESS_LOG_FORMAT`]).
//! - **ECDS `envoy.filters.http.jwt_authn`** (when `policy.auth` is set): verifies bearer tokens
//!   against the JWKS from the policy, with `allow_missing_or_failed`, so it never answers by
//!   itself: it writes the verified payload (or why verification failed) into dynamic metadata
//!   and the toolmesh filter decides, answering 401/403 as JSON-RPC with the MCP
//!   `WWW-Authenticate` header (Envoy's own 401 is plain text without `resource_metadata`).
//!   Through ECDS rather than inline in the listener so a key rotation reaches open connections
//!   at once instead of waiting for a listener drain. Tokens are read from `Authorization:
//!   Bearer` only (never the query string) and removed after verification (`forward: false`);
//!   the route table also removes `Authorization` from every request, because a failed or
//!   ignored token (anonymous virtual server) is not removed by `jwt_authn` and the MCP
//!   specification forbids passing a client's token through to an upstream.
//! - **ECDS `toolmesh`**: the Wasm plugin with the policy JSON as its configuration. ECDS rather
//!   than inline in the listener, because ECDS updates reach open connections in ~40 ms while a
//!   listener update waits for connections to drain.
//! - **RouteConfiguration `toolmesh_routes`**: the routing contract with the filter. The filter
//!   parses `/servers/{name}/mcp`, picks the member, strips client-sent `x-toolmesh-*` headers,
//!   sets `x-toolmesh-cluster` and rewrites `:path`; the route table only maps that header to a
//!   cluster (one exact-match route per known cluster, so a header can never name an arbitrary
//!   cluster such as the xDS cluster, as `cluster_header` would allow). Anything else gets a 404
//!   JSON-RPC error.
//! - **Clusters**, one per upstream: `STATIC` for IP literals, `STRICT_DNS` for names, TLS with
//!   SNI and certificate verification against a CA bundle for `https`, HTTP/1.1, outlier detection on consecutive
//!   5xx, and a TCP connect health check. An HTTP health check does not fit MCP: the endpoint is
//!   POST-only with a JSON-RPC body and GET may be 405 or an endless SSE stream. An upstream with
//!   credentials gets them from an **upstream HTTP filter** on its cluster (`header_mutation`,
//!   then the mandatory `upstream_codec`), not from its route: the filter also calls members
//!   itself (`dispatch_http_call` to the cluster, opening and closing member sessions), which
//!   bypasses the route table, and the cluster's filters run for every request to the cluster,
//!   routed or not. They run after the router built the upstream request, so after the route
//!   table removed the client's `Authorization`: the upstream's own credential always wins.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog as AccessLogConfig, access_log};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, OutlierDetection, cluster};
use envoy_types::pb::envoy::config::common::mutation_rules::v3::{
    HeaderMutation as HeaderMutationRule, header_mutation,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, AsyncDataSource, ConfigSource, DataSource,
    ExtensionConfigSource, HeaderValue, HeaderValueOption, HealthCheck, Http1ProtocolOptions,
    SocketAddress, TransportSocket, TypedExtensionConfig, address, async_data_source,
    config_source, data_source, header_value_option, health_check, socket_address,
    transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost, header_matcher, route, route_action, route_match,
};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::StdoutAccessLog;
use envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3::{
    HeaderMutation as HeaderMutationFilter, Mutations,
};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtHeader, JwtProvider, JwtRequirement, RequirementRule, jwt_provider,
    jwt_requirement, requirement_rule,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::http::upstream_codec::v3::UpstreamCodec;
use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, SubjectAltNameMatcher, UpstreamTlsContext,
    common_tls_context, subject_alt_name_matcher,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options,
};
use envoy_types::pb::envoy::extensions::wasm::v3::{
    FailurePolicy, PluginConfig, VmConfig, plugin_config,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::pb::google::protobuf::{
    Any, BoolValue, Duration as PbDuration, StringValue, Struct, UInt32Value, Value, value,
};
use prost::{Message, Name};
use sha2::{Digest, Sha256};

use crate::model::{AccessLog, GatewayModel, GatewaySettings, Host, UpstreamTarget, UrlError};

/// Name of the MCP listener.
pub const LISTENER_NAME: &str = "toolmesh_mcp";
/// Name of the route configuration (RDS) the listener uses.
pub const ROUTE_CONFIG_NAME: &str = "toolmesh_routes";
/// Name of the wasm HTTP filter and of its ECDS resource (they must be equal).
pub const FILTER_NAME: &str = "toolmesh";
/// Name of the `jwt_authn` HTTP filter and of its ECDS resource. Kept equal to the extension
/// name, which is also the dynamic metadata namespace the toolmesh filter reads.
pub const JWT_FILTER_NAME: &str = toolmesh_proto::JWT_METADATA_NAMESPACE;
/// The `jwt_authn` provider name.
pub const JWT_PROVIDER: &str = "toolmesh";
/// Clock skew `jwt_authn` allows on `exp` (its default is 60 s; the control plane and Envoy
/// normally share NTP, and an expired token should stop working promptly).
pub const JWT_CLOCK_SKEW_SECONDS: u32 = 5;
/// Header the filter sets to pick the upstream cluster.
pub const CLUSTER_HEADER: &str = "x-toolmesh-cluster";
/// The bootstrap's static cluster that reaches the control plane; no upstream may use this name.
pub const XDS_CLUSTER_NAME: &str = "xds_cluster";
/// Body of the 404 answered for a request the filter did not route.
pub const NOT_FOUND_BODY: &str = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32601,"message":"no such endpoint; MCP endpoints are /servers/{name}/mcp"}}"#;

/// The MCP listener's access log line: JSON keys and Envoy command operators. `toolmesh` is the
/// filter state the toolmesh filter sets on every request it handles: four space-separated
/// fields `<virtual server> <method> <mcp_server>/<tool> <outcome>` (`-` when absent; outcome
/// `ok`, `error`, `forwarded`, `local` or `denied.<reason>`; see `filter/README.md`). `caller`
/// is the verified token's `jti` from `jwt_authn`'s payload metadata. A missing value is `null`.
/// `path` is the request path as sent upstream (the filter rewrites `/servers/{vs}/mcp` to the
/// member's path for forwarded requests).
pub const ACCESS_LOG_FORMAT: &[(&str, &str)] = &[
    ("start_time", "%START_TIME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(:PATH)%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("duration_ms", "%DURATION%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("client", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("toolmesh", "%FILTER_STATE(wasm.toolmesh:PLAIN)%"),
    (
        "caller",
        "%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:toolmesh_payload:jti)%",
    ),
];

/// The name of Envoy's stdout access logger.
pub const STDOUT_ACCESS_LOGGER: &str = "envoy.access_loggers.stdout";

/// How long a listener waits for the ECDS resource before going active without it (then every
/// request is answered 500: fail closed).
const ECDS_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The xDS resource types toolmesh serves, in push order (CDS → ECDS → LDS → RDS: a listener
/// must never reference a filter config or a route that references a cluster Envoy lacks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum ResourceType {
    /// `envoy.config.cluster.v3.Cluster` (CDS).
    #[serde(rename = "cds")]
    Cluster,
    /// `envoy.config.core.v3.TypedExtensionConfig` (ECDS).
    #[serde(rename = "ecds")]
    ExtensionConfig,
    /// `envoy.config.listener.v3.Listener` (LDS).
    #[serde(rename = "lds")]
    Listener,
    /// `envoy.config.route.v3.RouteConfiguration` (RDS).
    #[serde(rename = "rds")]
    Route,
}

impl ResourceType {
    /// All types in push order.
    pub const PUSH_ORDER: [ResourceType; 4] = [
        ResourceType::Cluster,
        ResourceType::ExtensionConfig,
        ResourceType::Listener,
        ResourceType::Route,
    ];

    /// The type URL Envoy uses for this type.
    pub fn type_url(self) -> String {
        match self {
            ResourceType::Cluster => Cluster::type_url(),
            ResourceType::ExtensionConfig => TypedExtensionConfig::type_url(),
            ResourceType::Listener => Listener::type_url(),
            ResourceType::Route => RouteConfiguration::type_url(),
        }
    }

    /// The type for a type URL, if toolmesh serves it.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::PUSH_ORDER.into_iter().find(|t| t.type_url() == url)
    }

    /// Wildcard types: in state-of-the-world xDS an empty name list means "everything" for
    /// listeners and clusters, and "nothing" for the others.
    pub fn is_wildcard(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }

    /// Short name for logs and metrics (`cds`, `ecds`, `lds`, `rds`).
    pub fn short_name(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cds",
            ResourceType::ExtensionConfig => "ecds",
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

/// One named resource, already `Any`-encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedResource {
    /// The resource name Envoy subscribes to.
    pub name: String,
    /// The encoded resource.
    pub resource: Any,
}

/// All resources of one type, with their content-hash version.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TypeSnapshot {
    /// Hex content hash of the type URL and every (name, bytes) pair, in name order.
    pub version: String,
    /// The resources, sorted by name.
    pub resources: Vec<NamedResource>,
}

impl TypeSnapshot {
    fn new(ty: ResourceType, mut resources: Vec<NamedResource>) -> Self {
        resources.sort_by(|a, b| a.name.cmp(&b.name));
        let mut h = Sha256::new();
        h.update(ty.type_url().as_bytes());
        for r in &resources {
            for part in [r.name.as_bytes(), r.resource.value.as_slice()] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part);
            }
        }
        let version = hex::encode(&h.finalize()[..8]);
        Self { version, resources }
    }
}

/// The complete configuration for one Envoy: every type's resources and version.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Snapshot {
    types: BTreeMap<ResourceType, TypeSnapshot>,
}

impl Snapshot {
    /// A snapshot from raw resources per type (a type left out has no resources). Versions are
    /// computed from the content. Use [`build_snapshot`] for the normal path; this exists so a
    /// caller (or a test) can publish resources it built or altered itself.
    pub fn from_resources(resources: BTreeMap<ResourceType, Vec<NamedResource>>) -> Self {
        let mut resources = resources;
        let types = ResourceType::PUSH_ORDER
            .into_iter()
            .map(|ty| {
                let rs = resources.remove(&ty).unwrap_or_default();
                (ty, TypeSnapshot::new(ty, rs))
            })
            .collect();
        Self { types }
    }

    /// The resources and version of one type.
    pub fn get(&self, ty: ResourceType) -> &TypeSnapshot {
        static EMPTY: std::sync::OnceLock<TypeSnapshot> = std::sync::OnceLock::new();
        self.types
            .get(&ty)
            .unwrap_or_else(|| EMPTY.get_or_init(TypeSnapshot::default))
    }

    /// The version of every type.
    pub fn versions(&self) -> BTreeMap<ResourceType, String> {
        ResourceType::PUSH_ORDER
            .into_iter()
            .map(|ty| (ty, self.get(ty).version.clone()))
            .collect()
    }

    /// Every resource, by type (a copy that can be altered and turned back into a snapshot with
    /// [`Snapshot::from_resources`]).
    pub fn to_resources(&self) -> BTreeMap<ResourceType, Vec<NamedResource>> {
        self.types
            .iter()
            .map(|(ty, ts)| (*ty, ts.resources.clone()))
            .collect()
    }
}

/// Why a model could not be turned into Envoy resources. Each variant names what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BuildError {
    /// An upstream's URL is unusable.
    #[error("upstream {mcp_server:?} has an invalid url {url:?}: {source}")]
    UpstreamUrl {
        /// The MCP server's catalog name.
        mcp_server: String,
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        source: UrlError,
    },
    /// An upstream's cluster name is unusable.
    #[error("upstream {mcp_server:?} has an invalid cluster name {cluster:?}: {reason}")]
    BadClusterName {
        /// The MCP server's catalog name.
        mcp_server: String,
        /// The cluster name as given.
        cluster: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A credential header of an upstream cannot be sent by Envoy.
    #[error(
        "MCP server {mcp_server:?}: credential header {header:?} is not a valid HTTP header name (or is Host)"
    )]
    BadCredentialHeader {
        /// The MCP server's catalog name.
        mcp_server: String,
        /// The header name.
        header: String,
    },
    /// Two upstreams share a cluster name.
    #[error("upstreams {first:?} and {second:?} both use cluster {cluster:?}")]
    DuplicateCluster {
        /// The cluster name.
        cluster: String,
        /// The first MCP server using it.
        first: String,
        /// The second MCP server using it.
        second: String,
    },
    /// The policy snapshot fails its own validation (the filter would refuse it).
    #[error("policy snapshot is invalid: {0}")]
    Policy(#[from] toolmesh_proto::PolicyError),
    /// A virtual-server member routes to a cluster no upstream provides.
    #[error(
        "virtual server {virtual_server:?} member {mcp_server:?} uses cluster {cluster:?}, which no upstream provides"
    )]
    UnknownCluster {
        /// The virtual server.
        virtual_server: String,
        /// The member's MCP server.
        mcp_server: String,
        /// The missing cluster.
        cluster: String,
    },
    /// A gateway setting is unusable.
    #[error("gateway setting {field} is invalid: {reason}")]
    Settings {
        /// The setting.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Build every Envoy resource for `model` under `settings`.
///
/// # Errors
/// A [`BuildError`] naming the first upstream, policy item or setting that cannot be expressed.
pub fn build_snapshot(
    model: &GatewayModel,
    settings: &GatewaySettings,
) -> Result<Snapshot, BuildError> {
    let listen_ip: IpAddr =
        settings
            .listener_address
            .parse()
            .map_err(|_| BuildError::Settings {
                field: "listener_address",
                reason: format!("{:?} is not an IP address", settings.listener_address),
            })?;
    if settings.listener_port == 0 {
        return Err(BuildError::Settings {
            field: "listener_port",
            reason: "must not be 0".into(),
        });
    }
    model.policy.validate()?;

    let upstreams = parse_upstreams(model)?;
    let known: HashMap<&str, ()> = upstreams.iter().map(|u| (u.cluster.as_str(), ())).collect();
    for vs in &model.policy.virtual_servers {
        for m in &vs.members {
            if !known.contains_key(m.cluster.as_str()) {
                return Err(BuildError::UnknownCluster {
                    virtual_server: vs.name.clone(),
                    mcp_server: m.mcp_server.clone(),
                    cluster: m.cluster.clone(),
                });
            }
        }
    }

    let clusters = upstreams
        .iter()
        .map(|u| named(&u.cluster, &cluster_for(u, settings)))
        .collect();
    let mut ecds = vec![named(FILTER_NAME, &extension_config(model, settings))];
    if let Some(auth) = &model.policy.auth {
        ecds.push(named(JWT_FILTER_NAME, &jwt_extension_config(auth)));
    }
    let listeners = vec![named(
        LISTENER_NAME,
        &listener(
            listen_ip,
            model.policy.limits.max_body_bytes,
            model.policy.auth.is_some(),
            settings,
        ),
    )];
    let routes = vec![named(ROUTE_CONFIG_NAME, &route_configuration(&upstreams))];

    Ok(Snapshot::from_resources(BTreeMap::from([
        (ResourceType::Cluster, clusters),
        (ResourceType::ExtensionConfig, ecds),
        (ResourceType::Listener, listeners),
        (ResourceType::Route, routes),
    ])))
}

/// An upstream with its URL parsed.
#[derive(Debug, Clone)]
struct ParsedUpstream {
    cluster: String,
    target: UpstreamTarget,
    request_headers: Vec<(String, String)>,
}

fn parse_upstreams(model: &GatewayModel) -> Result<Vec<ParsedUpstream>, BuildError> {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    let mut out = Vec::with_capacity(model.upstreams.len());
    for u in &model.upstreams {
        let bad = |reason| BuildError::BadClusterName {
            mcp_server: u.mcp_server.clone(),
            cluster: u.cluster.clone(),
            reason,
        };
        if u.cluster.is_empty() || u.cluster.len() > 200 {
            return Err(bad("must be 1-200 characters"));
        }
        if !u
            .cluster
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        {
            // Dots would split Envoy stat names (`cluster.<name>.upstream_rq`).
            return Err(bad("only ASCII letters, digits, '_' and '-' are allowed"));
        }
        if u.cluster == XDS_CLUSTER_NAME {
            return Err(bad("reserved for the control-plane connection"));
        }
        if let Some(first) = seen.insert(&u.cluster, &u.mcp_server) {
            return Err(BuildError::DuplicateCluster {
                cluster: u.cluster.clone(),
                first: first.to_string(),
                second: u.mcp_server.clone(),
            });
        }
        let target = UpstreamTarget::parse(&u.url).map_err(|source| BuildError::UpstreamUrl {
            mcp_server: u.mcp_server.clone(),
            url: u.url.clone(),
            source,
        })?;
        for (name, _) in &u.request_headers {
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b));
            if !valid || name.starts_with(':') || name.eq_ignore_ascii_case("host") {
                return Err(BuildError::BadCredentialHeader {
                    mcp_server: u.mcp_server.clone(),
                    header: name.clone(),
                });
            }
        }
        out.push(ParsedUpstream {
            cluster: u.cluster.clone(),
            target,
            request_headers: u.request_headers.clone(),
        });
    }
    out.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    Ok(out)
}

// === helpers ===

fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn named<M: Message + Name>(name: &str, m: &M) -> NamedResource {
    NamedResource {
        name: name.to_string(),
        resource: any(m),
    }
}

fn duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn ads_source(initial_fetch_timeout: Option<Duration>) -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        resource_api_version: ApiVersion::V3 as i32,
        initial_fetch_timeout: initial_fetch_timeout.map(duration),
        ..Default::default()
    }
}

fn socket(ip: IpAddr, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

fn socket_dns(host: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: host.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

// === listener ===

fn listener(
    ip: IpAddr,
    policy_body_limit: u32,
    tokens: bool,
    settings: &GatewaySettings,
) -> Listener {
    let buffer_limit = settings.max_request_bytes.max(policy_body_limit);
    let hcm = HttpConnectionManager {
        stat_prefix: "toolmesh".into(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads_source(None)),
            route_config_name: ROUTE_CONFIG_NAME.into(),
        })),
        http_filters: http_filters(tokens),
        normalize_path: Some(BoolValue { value: true }),
        merge_slashes: true,
        path_with_escaped_slashes_action:
            http_connection_manager::PathWithEscapedSlashesAction::RejectRequest as i32,
        stream_idle_timeout: Some(duration(settings.stream_idle_timeout)),
        // 0 disables the whole-request timeout: a tools/call can legitimately run for minutes.
        request_timeout: Some(duration(Duration::ZERO)),
        // Envoy is the edge: the client address it sees is the real one (XFF from clients is
        // not trusted). Token source-CIDR checks rely on this.
        use_remote_address: Some(BoolValue { value: true }),
        access_log: access_logs(settings.access_log),
        ..Default::default()
    };
    Listener {
        name: LISTENER_NAME.into(),
        address: Some(socket(ip, settings.listener_port)),
        per_connection_buffer_limit_bytes: Some(UInt32Value {
            value: buffer_limit,
        }),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(any(&hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn access_logs(kind: AccessLog) -> Vec<AccessLogConfig> {
    match kind {
        AccessLog::Off => Vec::new(),
        AccessLog::Stdout => vec![AccessLogConfig {
            name: STDOUT_ACCESS_LOGGER.into(),
            filter: None,
            config_type: Some(access_log::ConfigType::TypedConfig(Any {
                type_url: StdoutAccessLog::type_url(),
                value: stdout_access_log_bytes(ACCESS_LOG_FORMAT),
            })),
        }],
    }
}

/// `StdoutAccessLog { log_format: { json_format: fields } }`, encoded by hand around the `Struct`: prost encodes a map in its `HashMap`'s iteration order,
/// which differs between runs, and the resource version is a hash of these bytes. Each field is
/// encoded as a one-entry `Struct`, in `fields` order; concatenated, they are one `Struct` (a
/// map's entries are a repeated field), so any protobuf parser reads the same message.
fn stdout_access_log_bytes(fields: &[(&str, &str)]) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint};
    let mut json = Vec::new();
    for (key, operator) in fields {
        Struct {
            fields: HashMap::from([(
                (*key).to_string(),
                Value {
                    kind: Some(value::Kind::StringValue((*operator).to_string())),
                },
            )]),
        }
        .encode(&mut json)
        .unwrap_or_default();
    }
    // SubstitutionFormatString: `json_format` (field 2) from the bytes above (Envoy writes the
    // properties sorted by name).
    let mut format = Vec::with_capacity(json.len() + 8);
    encode_key(2, WireType::LengthDelimited, &mut format);
    encode_varint(json.len() as u64, &mut format);
    format.extend_from_slice(&json);
    // StdoutAccessLog: `log_format` (field 1).
    let mut out = Vec::with_capacity(format.len() + 8);
    encode_key(1, WireType::LengthDelimited, &mut out);
    encode_varint(format.len() as u64, &mut out);
    out.extend_from_slice(&format);
    out
}

fn http_filters(tokens: bool) -> Vec<HttpFilter> {
    let mut filters = Vec::with_capacity(3);
    if tokens {
        // Before `toolmesh`: the policy filter reads the verified claims from dynamic metadata.
        filters.push(HttpFilter {
            name: JWT_FILTER_NAME.into(),
            config_type: Some(http_filter::ConfigType::ConfigDiscovery(
                ExtensionConfigSource {
                    config_source: Some(ads_source(Some(ECDS_INITIAL_FETCH_TIMEOUT))),
                    type_urls: vec![JwtAuthentication::type_url()],
                    ..Default::default()
                },
            )),
            ..Default::default()
        });
    }
    filters.extend([
        HttpFilter {
            name: FILTER_NAME.into(),
            config_type: Some(http_filter::ConfigType::ConfigDiscovery(
                ExtensionConfigSource {
                    config_source: Some(ads_source(Some(ECDS_INITIAL_FETCH_TIMEOUT))),
                    type_urls: vec![Wasm::type_url()],
                    ..Default::default()
                },
            )),
            ..Default::default()
        },
        HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(
                any(&Router::default()),
            )),
            ..Default::default()
        },
    ]);
    filters
}

// === ECDS: jwt_authn ===

fn jwt_extension_config(auth: &toolmesh_proto::Auth) -> TypedExtensionConfig {
    let provider = JwtProvider {
        issuer: toolmesh_proto::JWT_ISSUER.into(),
        audiences: vec![toolmesh_proto::JWT_AUDIENCE.into()],
        // Remove the token after verification: it must never reach an upstream.
        forward: false,
        // Only the Authorization header: a token in a query string ends up in logs.
        from_headers: vec![JwtHeader {
            name: "authorization".into(),
            value_prefix: "Bearer ".into(),
        }],
        payload_in_metadata: toolmesh_proto::JWT_PAYLOAD_KEY.into(),
        failed_status_in_metadata: toolmesh_proto::JWT_FAILURE_KEY.into(),
        clock_skew_seconds: JWT_CLOCK_SKEW_SECONDS,
        jwks_source_specifier: Some(jwt_provider::JwksSourceSpecifier::LocalJwks(DataSource {
            specifier: Some(data_source::Specifier::InlineString(auth.jwks.clone())),
            ..Default::default()
        })),
        ..Default::default()
    };
    let config = JwtAuthentication {
        // One entry only: prost encodes maps in iteration order (deterministic version hash).
        providers: HashMap::from([(JWT_PROVIDER.to_string(), provider)]),
        rules: vec![RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            // Verify every token, never answer: the toolmesh filter decides (and knows which
            // virtual servers are anonymous).
            requirement_type: Some(requirement_rule::RequirementType::Requires(
                JwtRequirement {
                    requires_type: Some(jwt_requirement::RequiresType::AllowMissingOrFailed(
                        Default::default(),
                    )),
                },
            )),
        }],
        ..Default::default()
    };
    TypedExtensionConfig {
        name: JWT_FILTER_NAME.into(),
        typed_config: Some(any(&config)),
    }
}

// === ECDS ===

fn extension_config(model: &GatewayModel, settings: &GatewaySettings) -> TypedExtensionConfig {
    let plugin = PluginConfig {
        name: FILTER_NAME.into(),
        root_id: FILTER_NAME.into(),
        configuration: Some(any(&StringValue {
            value: model.policy.to_json(),
        })),
        failure_policy: FailurePolicy::FailReload as i32,
        allow_on_headers_stop_iteration: Some(BoolValue { value: true }),
        vm: Some(plugin_config::Vm::VmConfig(VmConfig {
            vm_id: FILTER_NAME.into(),
            runtime: "envoy.wasm.runtime.v8".into(),
            code: Some(AsyncDataSource {
                specifier: Some(async_data_source::Specifier::Local(DataSource {
                    specifier: Some(data_source::Specifier::Filename(
                        settings.wasm_path.to_string_lossy().into_owned(),
                    )),
                    ..Default::default()
                })),
            }),
            ..Default::default()
        })),
        ..Default::default()
    };
    TypedExtensionConfig {
        name: FILTER_NAME.into(),
        typed_config: Some(any(&Wasm {
            config: Some(plugin),
        })),
    }
}

// === routes ===

fn route_configuration(upstreams: &[ParsedUpstream]) -> RouteConfiguration {
    let mut routes: Vec<Route> = upstreams
        .iter()
        .map(|u| Route {
            name: u.cluster.clone(),
            r#match: Some(RouteMatch {
                path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
                headers: vec![HeaderMatcher {
                    name: CLUSTER_HEADER.into(),
                    header_match_specifier: Some(
                        header_matcher::HeaderMatchSpecifier::StringMatch(StringMatcher {
                            match_pattern: Some(string_matcher::MatchPattern::Exact(
                                u.cluster.clone(),
                            )),
                            ..Default::default()
                        }),
                    ),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            action: Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(u.cluster.clone())),
                // 0 = no route timeout: MCP calls and SSE streams are long; the HCM's stream
                // idle timeout still reaps dead streams.
                timeout: Some(duration(Duration::ZERO)),
                host_rewrite_specifier: Some(
                    route_action::HostRewriteSpecifier::HostRewriteLiteral(u.target.host_header()),
                ),
                ..Default::default()
            })),
            // No credentials here: they are added by the cluster's upstream filter (see
            // `cluster_for`), which also covers the filter's own calls to the cluster.
            ..Default::default()
        })
        .collect();
    routes.push(Route {
        name: "not_found".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(route::Action::DirectResponse(DirectResponseAction {
            status: 404,
            body: Some(DataSource {
                specifier: Some(data_source::Specifier::InlineString(NOT_FOUND_BODY.into())),
                ..Default::default()
            }),
            ..Default::default()
        })),
        response_headers_to_add: vec![HeaderValueOption {
            header: Some(HeaderValue {
                key: "content-type".into(),
                value: "application/json".into(),
                ..Default::default()
            }),
            append_action: header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
            ..Default::default()
        }],
        ..Default::default()
    });
    RouteConfiguration {
        name: ROUTE_CONFIG_NAME.into(),
        virtual_hosts: vec![VirtualHost {
            name: "toolmesh".into(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        // The client's bearer token is for toolmesh only (MCP forbids token passthrough);
        // `jwt_authn` removes a verified one, this removes every other. The upstream's own
        // credentials are added after this, by its cluster's upstream filter.
        request_headers_to_remove: vec!["authorization".into()],
        // Route-level additions (none today) would apply after this table-level removal.
        most_specific_header_mutations_wins: true,
        // validate_clusters stays off (the RDS default): a cluster added in the same push may
        // still be warming when the route table arrives, and validation would NACK it.
        ..Default::default()
    }
}

// === clusters ===

fn cluster_for(u: &ParsedUpstream, settings: &GatewaySettings) -> Cluster {
    let t = &u.target;
    let (discovery, address) = match &t.host {
        Host::Ip(ip) => (cluster::DiscoveryType::Static, socket(*ip, t.port)),
        Host::Dns(name) => (cluster::DiscoveryType::StrictDns, socket_dns(name, t.port)),
    };
    let http = HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                            Http1ProtocolOptions::default(),
                        ),
                    ),
                },
            ),
        ),
        http_filters: upstream_http_filters(&u.request_headers),
        ..Default::default()
    };
    Cluster {
        name: u.cluster.clone(),
        connect_timeout: Some(duration(settings.upstream_connect_timeout)),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(discovery as i32)),
        dns_lookup_family: cluster::DnsLookupFamily::V4Preferred as i32,
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: u.cluster.clone(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(address),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        // One entry only: prost encodes maps in iteration order, and a single entry keeps the
        // encoding (and so the version hash) deterministic.
        typed_extension_protocol_options: HashMap::from([(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_string(),
            any(&http),
        )]),
        transport_socket: t.tls.then(|| tls_socket(&t.host, settings)),
        outlier_detection: Some(OutlierDetection {
            consecutive_5xx: Some(UInt32Value { value: 5 }),
            interval: Some(duration(Duration::from_secs(10))),
            base_ejection_time: Some(duration(Duration::from_secs(30))),
            ..Default::default()
        }),
        health_checks: vec![HealthCheck {
            timeout: Some(duration(Duration::from_secs(2))),
            interval: Some(duration(Duration::from_secs(15))),
            unhealthy_threshold: Some(UInt32Value { value: 3 }),
            healthy_threshold: Some(UInt32Value { value: 1 }),
            // Connect-only: see the module docs for why not HTTP.
            health_checker: Some(health_check::HealthChecker::TcpHealthCheck(
                health_check::TcpHealthCheck::default(),
            )),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Name of the upstream filter that adds an upstream's credentials.
pub const CREDENTIALS_FILTER_NAME: &str = "envoy.filters.http.header_mutation";
/// Name of the codec filter that must end every upstream filter chain.
pub const UPSTREAM_CODEC_FILTER_NAME: &str = "envoy.filters.http.upstream_codec";

/// The cluster's upstream HTTP filters: for an upstream with credentials, `header_mutation`
/// setting each credential header (replacing any value already there), then `upstream_codec`
/// (Envoy requires it last); none otherwise (Envoy's default chain is the codec alone).
fn upstream_http_filters(request_headers: &[(String, String)]) -> Vec<HttpFilter> {
    if request_headers.is_empty() {
        return Vec::new();
    }
    let mutations = HeaderMutationFilter {
        mutations: Some(Mutations {
            request_mutations: request_headers
                .iter()
                .map(|(k, v)| HeaderMutationRule {
                    action: Some(header_mutation::Action::Append(HeaderValueOption {
                        header: Some(HeaderValue {
                            key: k.to_ascii_lowercase(),
                            value: v.clone(),
                            ..Default::default()
                        }),
                        append_action:
                            header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                        ..Default::default()
                    })),
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    };
    vec![
        HttpFilter {
            name: CREDENTIALS_FILTER_NAME.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(&mutations))),
            ..Default::default()
        },
        HttpFilter {
            name: UPSTREAM_CODEC_FILTER_NAME.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(any(
                &UpstreamCodec::default(),
            ))),
            ..Default::default()
        },
    ]
}

fn tls_socket(host: &Host, settings: &GatewaySettings) -> TransportSocket {
    let (san_type, sni) = match host {
        Host::Ip(_) => (subject_alt_name_matcher::SanType::IpAddress, String::new()),
        Host::Dns(name) => (subject_alt_name_matcher::SanType::Dns, name.clone()),
    };
    let tls = UpstreamTlsContext {
        sni,
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: vec!["http/1.1".into()],
            validation_context_type: Some(
                common_tls_context::ValidationContextType::ValidationContext(
                    CertificateValidationContext {
                        // Verify the upstream against the CA bundle, and that the certificate
                        // is for this host: TLS without verification is theatre. (Envoy 1.40
                        // refuses SAN matching with `system_root_certs` alone: "without
                        // trusted CA is insecure".)
                        trusted_ca: Some(DataSource {
                            specifier: Some(data_source::Specifier::Filename(
                                settings.upstream_ca_file.to_string_lossy().into_owned(),
                            )),
                            ..Default::default()
                        }),
                        match_typed_subject_alt_names: vec![SubjectAltNameMatcher {
                            san_type: san_type as i32,
                            matcher: Some(StringMatcher {
                                match_pattern: Some(string_matcher::MatchPattern::Exact(
                                    host.address(),
                                )),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(any(&tls))),
    }
}

#[cfg(test)]
#[path = "resources_tests.rs"]
mod tests;
