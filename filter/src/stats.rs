//! Metric names and the fixed vocabularies that go into them.
//!
//! Why fixed vocabularies: Envoy never frees a stat, so every name segment that comes from a
//! request must be drawn from a closed set. Tool segments come only from the policy
//! ([`tool_metric`] is called with names the policy holds); methods map to [`MethodStat`] (an
//! unknown method is `other`); denial reasons are [`Reason`]. A client cannot create a stat.
//!
//! Names (the `stats_tags` regexes in `envoy/` are written against exactly these):
//!
//! | name | type |
//! |---|---|
//! | `toolmesh.tool.<vs>.<mcp_server>.<tool>.calls` | counter |
//! | `toolmesh.tool.<vs>.<mcp_server>.<tool>.errors` | counter |
//! | `toolmesh.tool.<vs>.<mcp_server>.<tool>.denied` | counter |
//! | `toolmesh.tool.<vs>.<mcp_server>.<tool>.latency_ms` | histogram |
//! | `toolmesh.tool.<vs>.<mcp_server>.<tool>.last_call_ts` | gauge (Unix seconds) |
//! | `toolmesh.vs.<vs>.rq.<method>` | counter |
//! | `toolmesh.vs.<vs>.denied.<reason>` | counter |
//! | `toolmesh.global.denied.<reason>` | counter |
//!
//! `<tool>` is the exposed tool name passed through [`crate::sanitize::stat_segment`]; `<vs>` and
//! `<mcp_server>` are slugs (validated by the policy contract) and contain no `.`.

use crate::sanitize::stat_segment;

/// The kind of an Envoy metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// Monotonic counter (incremented by one).
    Counter,
    /// Gauge (set to a value).
    Gauge,
    /// Histogram (a value is recorded).
    Histogram,
}

/// Which stat an update is for, as indexes into the [`crate::policy::CompiledPolicy`] the
/// request ran under.
///
/// Why indexes and not names: building a name (`format!` plus [`stat_segment`] per segment)
/// and hashing it cost more than the rest of an allowed call's decision. A key is a few
/// integers; [`crate::policy::CompiledPolicy::stat_slot`] turns it into a dense slot whose host
/// metric id the shell caches, and [`crate::policy::CompiledPolicy::stat_name`] builds the
/// name only the first time a slot is used. Keys are built only from the policy's own virtual
/// servers and tools and the fixed vocabularies below, so a client still cannot create a stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatKey {
    /// `toolmesh.global.denied.<reason>`.
    GlobalDenied(Reason),
    /// `toolmesh.vs.<vs>.rq.<method>`.
    VsRq {
        /// Index of the virtual server in the policy.
        vs: u32,
        /// The request kind.
        method: MethodStat,
    },
    /// `toolmesh.vs.<vs>.denied.<reason>`.
    VsDenied {
        /// Index of the virtual server in the policy.
        vs: u32,
        /// Why.
        reason: Reason,
    },
    /// `toolmesh.caller.<vs>.<token id>.<metric>`.
    Caller {
        /// Index of the (virtual server, caller) pair in the policy.
        caller: u32,
        /// Which of the caller's metrics (`calls`, `errors`, `denied`, `latency_ms`; a caller
        /// has no `last_call_ts`).
        metric: ToolMetric,
    },
    /// `toolmesh.tool.<vs>.<mcp_server>.<tool>.<metric>`.
    Tool {
        /// Index of the tool in the policy (see [`crate::policy::Item::stat`]).
        tool: u32,
        /// Which of the tool's metrics.
        metric: ToolMetric,
    },
}

impl StatKey {
    /// The Envoy metric kind.
    pub fn kind(self) -> MetricKind {
        match self {
            Self::Tool { metric, .. } | Self::Caller { metric, .. } => metric.kind(),
            _ => MetricKind::Counter,
        }
    }
}

/// `toolmesh.caller.<vs>.<caller>.<metric>`.
pub fn caller_metric(vs: &str, caller: &str, metric: ToolMetric) -> String {
    format!(
        "toolmesh.caller.{}.{}.{}",
        stat_segment(vs),
        stat_segment(caller),
        metric.as_str()
    )
}

/// One stat update the shell applies to Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatOp {
    /// Which stat.
    pub key: StatKey,
    /// Counter: the increment; gauge: the new value; histogram: the recorded value.
    pub value: u64,
}

impl StatOp {
    /// Increment counter `key` by one.
    pub fn inc(key: StatKey) -> Self {
        Self { key, value: 1 }
    }

    /// The Envoy metric kind.
    pub fn kind(&self) -> MetricKind {
        self.key.kind()
    }
}

/// Host metric ids by stat slot, for one compiled policy and one VM.
///
/// Why here: the ids belong to the VM (the shell defines each metric once by name), but the
/// slots belong to a policy, and a request keeps the policy it started with across an ECDS
/// update. Keeping the cache next to the policy it indexes makes a stale slot impossible.
/// Besides the id, a slot remembers the last value the shell set, so a gauge (`last_call_ts`,
/// in seconds) is written only when it changes.
#[derive(Debug, Default)]
pub struct MetricIds {
    slots: std::cell::RefCell<std::collections::HashMap<u32, (u32, u64), SlotHasher>>,
}

impl Clone for MetricIds {
    /// A clone starts empty (ids are cheap to find again by name).
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl MetricIds {
    /// The host id and last set value of `slot`, if known.
    pub fn get(&self, slot: u32) -> Option<(u32, u64)> {
        self.slots.try_borrow().ok()?.get(&slot).copied()
    }

    /// Remember `slot`'s host id and last set value.
    pub fn set(&self, slot: u32, id: u32, last: u64) {
        if let Ok(mut m) = self.slots.try_borrow_mut() {
            m.insert(slot, (id, last));
        }
    }
}

/// Hasher for slot numbers: the keys are small integers chosen by the policy, never by a
/// client, so a multiplicative hash is enough (and much cheaper than SipHash in wasm).
#[derive(Debug, Default, Clone, Copy)]
pub struct SlotHasher;

impl std::hash::BuildHasher for SlotHasher {
    type Hasher = SlotHash;
    fn build_hasher(&self) -> SlotHash {
        SlotHash(0)
    }
}

/// See [`SlotHasher`].
#[derive(Debug)]
pub struct SlotHash(u64);

impl std::hash::Hasher for SlotHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0.rotate_left(5) ^ u64::from(n)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// Why a request was refused. Each reason is a stat name segment and appears in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The tool, prompt or resource is not in the virtual server's allowlist.
    NotAllowed,
    /// The name differs from an allowed one only by case, whitespace or Unicode look-alikes.
    Lookalike,
    /// The body is not valid JSON (or not UTF-8, or empty).
    MalformedJson,
    /// Valid JSON, but not a JSON-RPC 2.0 message MCP allows (wrong types, missing fields).
    InvalidRequest,
    /// A JSON object in the body has the same key twice.
    DuplicateKey,
    /// The body is a JSON array (a JSON-RPC batch); MCP 2025-06-18 removed batching.
    Batch,
    /// The body is larger than `limits.max_body_bytes`.
    BodyTooLarge,
    /// `Content-Type` is not `application/json`.
    ContentType,
    /// `Content-Encoding` is present and not `identity`.
    ContentEncoding,
    /// `Mcp-Method` or `Mcp-Name` disagrees with the body.
    HeaderMismatch,
    /// The HTTP method is not POST, GET or DELETE (or GET/DELETE carried a body).
    HttpMethod,
    /// The virtual server has no members to route to.
    NoMember,
    /// The path names a virtual server the policy does not have.
    UnknownVirtualServer,
    /// The path is not `/servers/{vs}/mcp`.
    BadPath,
    /// No valid token (missing, malformed, expired, wrongly signed).
    Unauthenticated,
    /// The token was revoked.
    TokenRevoked,
    /// The token does not open this virtual server.
    TokenScope,
    /// The token may not be used from the client's address.
    TokenSource,
    /// `Host` or `Origin` names a host the gateway does not answer for (DNS rebinding).
    BadHost,
    /// The `Mcp-Session-Id` failed verification or belongs to another virtual server or caller
    /// (HTTP 404: the client initializes again).
    SessionInvalid,
    /// The item's MCP server failed to open its session when the client initialized.
    MemberUnavailable,
    /// A member MCP server failed to open its session while a client initialized (counted
    /// per member failure; the client's session still opens without it).
    MemberInitFailed,
}

impl Reason {
    /// Every reason, for documentation tests.
    pub const ALL: [Reason; 22] = [
        Reason::NotAllowed,
        Reason::Lookalike,
        Reason::MalformedJson,
        Reason::InvalidRequest,
        Reason::DuplicateKey,
        Reason::Batch,
        Reason::BodyTooLarge,
        Reason::ContentType,
        Reason::ContentEncoding,
        Reason::HeaderMismatch,
        Reason::HttpMethod,
        Reason::NoMember,
        Reason::UnknownVirtualServer,
        Reason::BadPath,
        Reason::Unauthenticated,
        Reason::TokenRevoked,
        Reason::TokenScope,
        Reason::TokenSource,
        Reason::BadHost,
        Reason::SessionInvalid,
        Reason::MemberUnavailable,
        Reason::MemberInitFailed,
    ];

    /// The stat name segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NotAllowed => "not_allowed",
            Reason::Lookalike => "lookalike",
            Reason::MalformedJson => "malformed_json",
            Reason::InvalidRequest => "invalid_request",
            Reason::DuplicateKey => "duplicate_key",
            Reason::Batch => "batch",
            Reason::BodyTooLarge => "body_too_large",
            Reason::ContentType => "content_type",
            Reason::ContentEncoding => "content_encoding",
            Reason::HeaderMismatch => "header_mismatch",
            Reason::HttpMethod => "http_method",
            Reason::NoMember => "no_member",
            Reason::UnknownVirtualServer => "unknown_virtual_server",
            Reason::BadPath => "bad_path",
            Reason::Unauthenticated => "unauthenticated",
            Reason::TokenRevoked => "token_revoked",
            Reason::TokenScope => "token_scope",
            Reason::TokenSource => "token_source",
            Reason::BadHost => "bad_host",
            Reason::SessionInvalid => "session_invalid",
            Reason::MemberUnavailable => "member_unavailable",
            Reason::MemberInitFailed => "member_init_failed",
        }
    }
}

/// The fixed set of request kinds counted in `toolmesh.vs.<vs>.rq.<method>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // each variant is the MCP method of the same name
pub enum MethodStat {
    Initialize,
    Ping,
    ServerDiscover,
    ToolsList,
    ToolsCall,
    PromptsList,
    PromptsGet,
    ResourcesList,
    ResourcesTemplatesList,
    ResourcesRead,
    ResourcesSubscribe,
    ResourcesUnsubscribe,
    CompletionComplete,
    LoggingSetLevel,
    NotificationsInitialized,
    NotificationsCancelled,
    NotificationsProgress,
    NotificationsRootsListChanged,
    /// A JSON-RPC response sent by the client (answer to a server request).
    Response,
    /// A bodiless GET (the notification stream).
    HttpGet,
    /// A DELETE (session end).
    HttpDelete,
    /// Any other method.
    Other,
}

impl MethodStat {
    /// Every value, for documentation tests.
    pub const ALL: [MethodStat; 22] = [
        MethodStat::Initialize,
        MethodStat::Ping,
        MethodStat::ServerDiscover,
        MethodStat::ToolsList,
        MethodStat::ToolsCall,
        MethodStat::PromptsList,
        MethodStat::PromptsGet,
        MethodStat::ResourcesList,
        MethodStat::ResourcesTemplatesList,
        MethodStat::ResourcesRead,
        MethodStat::ResourcesSubscribe,
        MethodStat::ResourcesUnsubscribe,
        MethodStat::CompletionComplete,
        MethodStat::LoggingSetLevel,
        MethodStat::NotificationsInitialized,
        MethodStat::NotificationsCancelled,
        MethodStat::NotificationsProgress,
        MethodStat::NotificationsRootsListChanged,
        MethodStat::Response,
        MethodStat::HttpGet,
        MethodStat::HttpDelete,
        MethodStat::Other,
    ];

    /// Classify a JSON-RPC method name.
    pub fn of(method: &str) -> Self {
        match method {
            "initialize" => Self::Initialize,
            "ping" => Self::Ping,
            "server/discover" => Self::ServerDiscover,
            "tools/list" => Self::ToolsList,
            "tools/call" => Self::ToolsCall,
            "prompts/list" => Self::PromptsList,
            "prompts/get" => Self::PromptsGet,
            "resources/list" => Self::ResourcesList,
            "resources/templates/list" => Self::ResourcesTemplatesList,
            "resources/read" => Self::ResourcesRead,
            "resources/subscribe" => Self::ResourcesSubscribe,
            "resources/unsubscribe" => Self::ResourcesUnsubscribe,
            "completion/complete" => Self::CompletionComplete,
            "logging/setLevel" => Self::LoggingSetLevel,
            "notifications/initialized" => Self::NotificationsInitialized,
            "notifications/cancelled" => Self::NotificationsCancelled,
            "notifications/progress" => Self::NotificationsProgress,
            "notifications/roots/list_changed" => Self::NotificationsRootsListChanged,
            _ => Self::Other,
        }
    }

    /// The stat name segment (`/` replaced by `_`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initialize => "initialize",
            Self::Ping => "ping",
            Self::ServerDiscover => "server_discover",
            Self::ToolsList => "tools_list",
            Self::ToolsCall => "tools_call",
            Self::PromptsList => "prompts_list",
            Self::PromptsGet => "prompts_get",
            Self::ResourcesList => "resources_list",
            Self::ResourcesTemplatesList => "resources_templates_list",
            Self::ResourcesRead => "resources_read",
            Self::ResourcesSubscribe => "resources_subscribe",
            Self::ResourcesUnsubscribe => "resources_unsubscribe",
            Self::CompletionComplete => "completion_complete",
            Self::LoggingSetLevel => "logging_setLevel",
            Self::NotificationsInitialized => "notifications_initialized",
            Self::NotificationsCancelled => "notifications_cancelled",
            Self::NotificationsProgress => "notifications_progress",
            Self::NotificationsRootsListChanged => "notifications_roots_list_changed",
            Self::Response => "response",
            Self::HttpGet => "http_get",
            Self::HttpDelete => "http_delete",
            Self::Other => "other",
        }
    }
}

/// The per-call metrics, kept per tool and per caller (token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ToolMetric {
    /// Forwarded calls (counter).
    Calls,
    /// Calls that ended in an error (counter).
    Errors,
    /// Per tool: refused calls that named this tool; per caller: the caller's refused requests
    /// (counter).
    Denied,
    /// Time from request headers to the end of the response, in ms (histogram).
    LatencyMs,
    /// Unix time of the last forwarded call, in seconds (gauge).
    LastCallTs,
}

impl ToolMetric {
    /// Every metric, in declaration order.
    pub const ALL: [ToolMetric; 5] = [
        Self::Calls,
        Self::Errors,
        Self::Denied,
        Self::LatencyMs,
        Self::LastCallTs,
    ];

    /// The last name segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Calls => "calls",
            Self::Errors => "errors",
            Self::Denied => "denied",
            Self::LatencyMs => "latency_ms",
            Self::LastCallTs => "last_call_ts",
        }
    }

    /// The Envoy metric kind.
    pub fn kind(self) -> MetricKind {
        match self {
            Self::Calls | Self::Errors | Self::Denied => MetricKind::Counter,
            Self::LatencyMs => MetricKind::Histogram,
            Self::LastCallTs => MetricKind::Gauge,
        }
    }
}

/// `toolmesh.tool.<vs>.<mcp_server>.<tool>.<metric>`; call only with names from the policy.
pub fn tool_metric(vs: &str, mcp_server: &str, tool: &str, metric: ToolMetric) -> String {
    format!(
        "toolmesh.tool.{}.{}.{}.{}",
        stat_segment(vs),
        stat_segment(mcp_server),
        stat_segment(tool),
        metric.as_str()
    )
}

/// `toolmesh.vs.<vs>.rq.<method>`.
pub fn vs_rq(vs: &str, method: MethodStat) -> String {
    format!("toolmesh.vs.{}.rq.{}", stat_segment(vs), method.as_str())
}

/// `toolmesh.vs.<vs>.denied.<reason>`.
pub fn vs_denied(vs: &str, reason: Reason) -> String {
    format!(
        "toolmesh.vs.{}.denied.{}",
        stat_segment(vs),
        reason.as_str()
    )
}

/// `toolmesh.global.denied.<reason>`.
pub fn global_denied(reason: Reason) -> String {
    format!("toolmesh.global.denied.{}", reason.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let cases = [
            (
                tool_metric("demo", "everything", "add", ToolMetric::Calls),
                "toolmesh.tool.demo.everything.add.calls",
            ),
            (
                tool_metric("demo", "everything", "ns.add", ToolMetric::LatencyMs),
                "toolmesh.tool.demo.everything.ns_add.latency_ms",
            ),
            (
                tool_metric("a-b", "c_d", "x/y", ToolMetric::LastCallTs),
                "toolmesh.tool.a-b.c_d.x_y.last_call_ts",
            ),
            (
                vs_rq("demo", MethodStat::of("tools/call")),
                "toolmesh.vs.demo.rq.tools_call",
            ),
            (
                vs_rq("demo", MethodStat::of("made/up")),
                "toolmesh.vs.demo.rq.other",
            ),
            (
                vs_denied("demo", Reason::Lookalike),
                "toolmesh.vs.demo.denied.lookalike",
            ),
            (
                global_denied(Reason::UnknownVirtualServer),
                "toolmesh.global.denied.unknown_virtual_server",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn vocabularies_are_stat_safe_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert_eq!(stat_segment(r.as_str()), r.as_str());
            assert!(seen.insert(r.as_str()));
        }
        let mut seen = std::collections::HashSet::new();
        for m in MethodStat::ALL {
            assert_eq!(stat_segment(m.as_str()), m.as_str());
            assert!(seen.insert(m.as_str()));
        }
    }

    #[test]
    fn method_classification_roundtrips() {
        for m in MethodStat::ALL {
            let method = m.as_str().replace('_', "/");
            if !matches!(
                m,
                MethodStat::Response
                    | MethodStat::HttpGet
                    | MethodStat::HttpDelete
                    | MethodStat::Other
            ) && m != MethodStat::NotificationsRootsListChanged
                && m != MethodStat::ResourcesTemplatesList
            {
                assert_eq!(MethodStat::of(&method), m, "{method}");
            }
        }
        assert_eq!(
            MethodStat::of("notifications/roots/list_changed"),
            MethodStat::NotificationsRootsListChanged
        );
        assert_eq!(
            MethodStat::of("resources/templates/list"),
            MethodStat::ResourcesTemplatesList
        );
        assert_eq!(
            MethodStat::of("server/discover"),
            MethodStat::ServerDiscover
        );
        assert_eq!(MethodStat::of("TOOLS/CALL"), MethodStat::Other);
    }
}
