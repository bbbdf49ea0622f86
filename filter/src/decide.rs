//! Deciding what happens to one MCP request: forward it (to which member, rewritten how) or
//! refuse it (with which reply and reason).
//!
//! Why separate from the proxy-wasm shell: every rule here is a pure function of the policy,
//! the request headers and the body, so it is tested natively, table by table. The shell only
//! copies headers in and applies the result.
//!
//! The routing contract with Envoy (the route configuration relies on exactly this): on an
//! allowed request the filter sets `x-toolmesh-cluster: <member.cluster>`, rewrites `:path` to
//! `<member.path>` (query string kept), and, when it renamed an item in the body, replaces the
//! body, `content-length` and `mcp-name`.

use std::borrow::Cow;
use std::rc::Rc;

use crate::jsonrpc::{self, Field, Id, Message, ParseError};
use crate::lists::ListKind;
use crate::outcome::media_type;
use crate::policy::{CompiledPolicy, CompiledVs, Item, Lookup};
use crate::sanitize::decode_mcp_header;
use crate::stats::{MethodStat, Reason};

/// JSON-RPC error codes used in denials.
pub mod codes {
    /// Parse error.
    pub const PARSE_ERROR: i64 = -32700;
    /// Invalid request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// Method not found (protocol 2026-07-28: the methods it removed, with HTTP 404).
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Invalid params: used for tools and prompts that are not allowed (the MCP spec's code for
    /// an unknown tool).
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal error.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// MCP "resource not found": used for resources that are not allowed.
    pub const RESOURCE_NOT_FOUND: i64 = -32002;
    /// MCP 2026-07-28 header mismatch (`Mcp-Method`/`Mcp-Name` vs body).
    pub const HEADER_MISMATCH: i64 = -32020;
    /// MCP 2026-07-28 "missing required client capability".
    pub const MISSING_CLIENT_CAPABILITY: i64 = -32021;
    /// MCP 2026-07-28 "unsupported protocol version", with `data: {supported, requested}`.
    pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
    /// Session not found (with HTTP 404, so clients initialize again).
    pub const SESSION_NOT_FOUND: i64 = -32001;
}

/// The request headers the filter looks at (values as sent; names are lowercase in Envoy).
#[derive(Debug, Clone, Default)]
pub struct RequestHead<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:path`.
    pub path: &'a str,
    /// `content-type`.
    pub content_type: Option<&'a str>,
    /// `content-encoding`.
    pub content_encoding: Option<&'a str>,
    /// `content-length`.
    pub content_length: Option<&'a str>,
    /// `mcp-method` (protocol 2026-07-28).
    pub mcp_method: Option<&'a str>,
    /// `mcp-name` (protocol 2026-07-28).
    pub mcp_name: Option<&'a str>,
    /// `:authority` (the `Host`).
    pub authority: Option<&'a str>,
    /// `origin`.
    pub origin: Option<&'a str>,
    /// `mcp-session-id`.
    pub session_id: Option<&'a str>,
    /// `mcp-protocol-version`.
    pub protocol_version: Option<&'a str>,
    /// The request has no body (headers end the stream).
    pub end_of_stream: bool,
    /// The first header the filter decides on (`content-type`, `content-encoding`,
    /// `content-length`, `mcp-method`, `mcp-name`) whose value is not UTF-8: refused.
    pub invalid_utf8: Option<&'static str>,
}

/// Prefix of headers the gateway uses internally; removed from client requests.
pub const INTERNAL_PREFIX: &str = "x-toolmesh-";

/// The request headers the filter reads, gathered from Envoy's header list in one pass.
///
/// Why bytes: a header value may carry any octet (HTTP allows obs-text), and proxy-wasm
/// 0.2.5's `get_map` panics on a value that is not UTF-8, which would kill the VM on one
/// client header. The shell reads the list as bytes; values the filter decides on must be
/// UTF-8 (else the request is refused), every other header passes untouched. Values are
/// borrowed from the list; a repeated header is joined with `", "` (HTTP list semantics), so a
/// repetition cannot hide a value from the checks.
#[derive(Debug, Default)]
pub struct RequestHeaders<'a> {
    values: [Option<Cow<'a, str>>; 11],
    invalid_utf8: Option<&'static str>,
    /// Client headers with the gateway's internal prefix ([`INTERNAL_PREFIX`]), to remove.
    pub internal: Vec<&'a str>,
}

/// The headers [`RequestHeaders`] keeps, in slot order.
const READ_HEADERS: [&str; 11] = [
    ":method",
    ":path",
    "content-type",
    "content-encoding",
    "content-length",
    "mcp-method",
    "mcp-name",
    ":authority",
    "origin",
    "mcp-session-id",
    "mcp-protocol-version",
];

impl<'a> RequestHeaders<'a> {
    /// Scan Envoy's request header list (names are lowercase in Envoy; others are folded).
    pub fn scan(pairs: &'a [(String, Vec<u8>)]) -> Self {
        let mut out = Self::default();
        for (name, value) in pairs {
            let lower: Cow<'_, str> = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(name.to_ascii_lowercase())
            } else {
                Cow::Borrowed(name.as_str())
            };
            let Some(slot) = READ_HEADERS.iter().position(|h| *h == lower) else {
                if lower.starts_with(INTERNAL_PREFIX) {
                    out.internal.push(name);
                }
                continue;
            };
            let value: Cow<'a, str> = match std::str::from_utf8(value) {
                Ok(v) => Cow::Borrowed(v),
                Err(_) => {
                    // `:method` and `:path` are ASCII in Envoy; others are decided on.
                    if slot >= 2 && out.invalid_utf8.is_none() {
                        out.invalid_utf8 = READ_HEADERS.get(slot).copied();
                    }
                    String::from_utf8_lossy(value)
                }
            };
            if let Some(entry) = out.values.get_mut(slot) {
                match entry {
                    None => *entry = Some(value),
                    Some(prev) => {
                        let joined = prev.to_mut();
                        joined.push_str(", ");
                        joined.push_str(&value);
                    }
                }
            }
        }
        out
    }

    fn get(&self, slot: usize) -> Option<&str> {
        self.values.get(slot).and_then(|v| v.as_deref())
    }

    /// The [`RequestHead`] to decide on.
    pub fn head(&self, end_of_stream: bool) -> RequestHead<'_> {
        RequestHead {
            method: self.get(0).unwrap_or_default(),
            path: self.get(1).unwrap_or_default(),
            content_type: self.get(2),
            content_encoding: self.get(3),
            content_length: self.get(4),
            mcp_method: self.get(5),
            mcp_name: self.get(6),
            authority: self.get(7),
            origin: self.get(8),
            session_id: self.get(9),
            protocol_version: self.get(10),
            end_of_stream,
            invalid_utf8: self.invalid_utf8,
        }
    }
}

/// A local reply: an HTTP status and a JSON-RPC error body (`content-type: application/json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON-RPC error message.
    pub body: Vec<u8>,
    /// `WWW-Authenticate` header (token refusals only).
    pub www_authenticate: Option<String>,
    /// Further response headers (`mcp-session-id` of a new session, `allow`).
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    /// A JSON-RPC reply (`content-type: application/json` unless `body` is empty).
    pub fn new(status: u16, body: Vec<u8>) -> Self {
        Self {
            status,
            body,
            www_authenticate: None,
            headers: Vec::new(),
        }
    }
}

/// Where and how to forward an allowed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Value for `x-toolmesh-cluster`.
    pub cluster: Rc<str>,
    /// New `:path`.
    pub path: Rc<str>,
    /// Replacement body (then `content-length` must be set to its length).
    pub body: Option<Vec<u8>>,
    /// Replacement `mcp-name` header value.
    pub mcp_name: Option<String>,
    /// What to do with the client's `mcp-session-id` (set by the flow from the sealed session).
    pub session: SessionHeader,
    /// Replacement `mcp-protocol-version` (the version the member negotiated).
    pub protocol_version: Option<String>,
}

/// The `mcp-session-id` header a forwarded request carries upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SessionHeader {
    /// Leave it (the client sent none).
    #[default]
    Keep,
    /// Replace the client's sealed id with the member's own session id.
    Set(String),
    /// Remove it (a stateless member).
    Remove,
}

/// A tool of the policy, as named in stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolRef {
    /// The tool's index among the policy's tools ([`crate::policy::Item::stat`]).
    pub stat: u32,
}

/// An allowed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// Where to send it.
    pub route: Route,
    /// Index of the virtual server in the policy.
    pub vs: usize,
    /// The request kind, for `rq` stats.
    pub method: MethodStat,
    /// For `tools/call`: the tool (per-tool stats).
    pub tool: Option<ToolRef>,
    /// The member it goes to (index in the virtual server).
    pub member: usize,
    /// The JSON-RPC id, if any.
    pub id: Option<Id>,
    /// A stateless (2026-07-28) request for a member that speaks only the handshake: the
    /// filter sends it in a member session opened for it ([`crate::modern`]).
    pub open_member_session: bool,
    /// A request on a virtual server of several members: the ids of server requests in its
    /// response get the member's tag, so the client's answer finds the member ([`crate::ids`]).
    pub tag_server_requests: bool,
}

/// What the filter answers itself, from the policy (see [`crate::local`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalKind {
    /// `initialize`: open the members' sessions, then answer with the negotiated version.
    Initialize {
        /// The protocol version to answer with.
        version: &'static str,
    },
    /// A request whose result is `{}` (`ping`; `logging/setLevel` when no member logs).
    Empty,
    /// A notification or client response nobody upstream needs: 202, no body.
    Accepted,
    /// One page of a list.
    List {
        /// Which list.
        kind: ListKind,
        /// `params.cursor`.
        cursor: Option<String>,
        /// Asked on the stateless protocol: the result carries `resultType`, caching hints and
        /// the server's identity ([`crate::modern::decorate_list`]).
        modern: bool,
    },
    /// `server/discover` on the stateless protocol: the versions and capabilities
    /// ([`crate::modern::discover_result`]).
    Discover,
    /// `server/discover` without a stateless version in `MCP-Protocol-Version`: -32022 with
    /// HTTP 400, naming the versions the gateway speaks.
    UnsupportedVersion {
        /// The version the client asked for.
        requested: String,
    },
    /// A method protocol 2026-07-28 removed (`initialize`, `ping`, ...): -32601 with HTTP 404.
    MethodNotFound {
        /// The method.
        name: String,
    },
    /// DELETE on a virtual server of several members: close every member session.
    CloseSessions,
    /// A client notification on a virtual server of several members (`notifications/cancelled`,
    /// `notifications/roots/list_changed`, ...): which member it concerns is unknown, so it goes
    /// to every member in the client's session (each ignores what is not its own), then 202.
    Broadcast {
        /// The notification as the client sent it.
        body: Vec<u8>,
    },
}

/// A request the filter answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    /// What to answer.
    pub kind: LocalKind,
    /// Index of the virtual server in the policy.
    pub vs: usize,
    /// The request kind, for `rq` stats.
    pub method: MethodStat,
    /// The JSON-RPC id, if any.
    pub id: Option<Id>,
}

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    /// What to answer.
    pub reply: Reply,
    /// Why (stat segment).
    pub reason: Reason,
    /// The virtual server's index, when it is in the policy (else the denial is counted
    /// globally).
    pub vs: Option<usize>,
    /// The request kind, when the body was parsed.
    pub method: Option<MethodStat>,
    /// The policy tool the request named (or looked like), for the per-tool `denied` counter.
    pub tool: Option<ToolRef>,
}

/// The decision after the request headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadDecision {
    /// Forward now (bodiless GET/DELETE).
    Forward(Forward),
    /// Answer locally (DELETE on a virtual server of several members).
    Local(Local),
    /// Refuse now.
    Deny(Deny),
    /// Buffer the body, then call [`decide_body`].
    ReadBody(Pending),
}

/// What the header phase learnt, for the body phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// The virtual server's index in the policy, if the policy has it.
    pub vs: Option<usize>,
    /// The slug from the path when the policy does not have it (for the error message).
    pub unknown_name: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// `mcp-method`, if sent.
    pub mcp_method: Option<String>,
    /// `mcp-name`, if sent.
    pub mcp_name: Option<String>,
    /// `mcp-protocol-version`, if sent.
    pub protocol_version: Option<String>,
    /// That header selects the stateless protocol (2026-07-28, [`crate::modern`]).
    pub modern: bool,
    /// The body cap.
    pub max_body: usize,
}

/// The decision after the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyDecision {
    /// Forward.
    Forward(Forward),
    /// Answer locally.
    Local(Local),
    /// Refuse.
    Deny(Deny),
}

/// Longest client-supplied name echoed in an error message.
const ECHO_MAX: usize = 128;

fn echo(s: &str) -> String {
    if s.chars().count() <= ECHO_MAX {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(ECHO_MAX).collect();
        t.push('…');
        t
    }
}

/// Split `:path` into (virtual server slug, query). Strict: exactly `/servers/{slug}/mcp`,
/// optionally followed by `?query`; no percent-encoding, no dot segments, no extra slashes.
pub fn parse_path(path: &str) -> Option<(&str, Option<&str>)> {
    let (p, q) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let vs = p.strip_prefix("/servers/")?.strip_suffix("/mcp")?;
    toolmesh_proto::is_slug(vs).then_some((vs, q))
}

fn reply(id: Option<&Id>, code: i64, message: &str, status_without_id: u16) -> Reply {
    Reply::new(
        if id.is_some() { 200 } else { status_without_id },
        jsonrpc::error_body(id, code, message),
    )
}

fn deny_global(reason: Reason, status: u16, code: i64, message: &str, id: Option<&Id>) -> Deny {
    Deny {
        reply: Reply::new(status, jsonrpc::error_body(id, code, message)),
        reason,
        vs: None,
        method: None,
        tool: None,
    }
}

fn new_path(member_path: &Rc<str>, query: Option<&str>) -> Rc<str> {
    match query {
        Some(q) => Rc::from(format!("{member_path}?{q}")),
        None => Rc::clone(member_path),
    }
}

/// Decide on the request headers.
pub fn decide_head(policy: &CompiledPolicy, head: &RequestHead<'_>) -> HeadDecision {
    let Some((vs_name, query)) = parse_path(head.path) else {
        return HeadDecision::Deny(deny_global(
            Reason::BadPath,
            404,
            codes::INVALID_REQUEST,
            "Not an MCP endpoint of this gateway: use /servers/{name}/mcp",
            None,
        ));
    };
    let vs = policy.virtual_server(vs_name);
    let denied = |reason: Reason, status: u16, message: &str| {
        // An empty body is a JSON parse error like any other malformed body.
        let code = if reason == Reason::MalformedJson {
            codes::PARSE_ERROR
        } else {
            codes::INVALID_REQUEST
        };
        HeadDecision::Deny(Deny {
            reply: reply(None, code, message, status),
            reason,
            vs: vs.map(|v| v.index),
            method: None,
            tool: None,
        })
    };
    if let Some(vs) = vs
        && let Some(bad) = foreign_host(policy, head)
    {
        return HeadDecision::Deny(Deny {
            reply: Reply::new(
                403,
                jsonrpc::error_body(
                    None,
                    codes::INVALID_REQUEST,
                    &format!(
                        "Host '{}' is not allowed on this gateway (DNS-rebinding protection)",
                        echo(bad)
                    ),
                ),
            ),
            reason: Reason::BadHost,
            vs: Some(vs.index),
            method: None,
            tool: None,
        });
    }
    if let Some(name) = head.invalid_utf8 {
        return match vs {
            None => HeadDecision::Deny(unknown_vs(vs_name, None)),
            Some(_) => denied(
                Reason::InvalidRequest,
                400,
                &format!("Invalid request: the {name} header is not valid UTF-8"),
            ),
        };
    }
    match head.method {
        "GET" | "DELETE" => {
            let Some(vs) = vs else {
                return HeadDecision::Deny(unknown_vs(vs_name, None));
            };
            if !head.end_of_stream {
                return denied(
                    Reason::HttpMethod,
                    400,
                    "GET and DELETE requests must not have a body",
                );
            }
            let method = if head.method == "GET" {
                MethodStat::HttpGet
            } else {
                MethodStat::HttpDelete
            };
            if crate::modern::selects_modern(head.protocol_version) {
                // The stateless protocol has no notification stream and no session to end.
                let why = format!(
                    "Protocol {} has no {} requests; use POST",
                    head.protocol_version.unwrap_or_default(),
                    head.method
                );
                return HeadDecision::Deny(not_allowed(vs, method, &why, "POST"));
            }
            let Some(primary) = vs.primary() else {
                return HeadDecision::Deny(no_member(vs, None, Some(method)));
            };
            if vs.members.len() > 1 {
                // Several upstream notification streams cannot be merged into one response
                // (proxy-wasm has no fan-in); the spec allows 405 for GET.
                if method == MethodStat::HttpGet {
                    let why = format!(
                        "Virtual server '{}' has several MCP servers: it offers no \
                         notification stream (GET); use POST",
                        vs.name
                    );
                    return HeadDecision::Deny(not_allowed(vs, method, &why, "POST, DELETE"));
                }
                return HeadDecision::Local(Local {
                    kind: LocalKind::CloseSessions,
                    vs: vs.index,
                    method,
                    id: None,
                });
            }
            HeadDecision::Forward(Forward {
                route: Route {
                    cluster: Rc::clone(&primary.cluster),
                    path: new_path(&primary.path, query),
                    body: None,
                    mcp_name: None,
                    session: SessionHeader::Keep,
                    protocol_version: None,
                },
                vs: vs.index,
                method,
                tool: None,
                member: 0,
                id: None,
                open_member_session: false,
                tag_server_requests: false,
            })
        }
        "POST" => {
            if vs.is_some() {
                let json = head
                    .content_type
                    .is_some_and(|ct| media_type(ct).eq_ignore_ascii_case("application/json"));
                if !json {
                    return denied(
                        Reason::ContentType,
                        415,
                        "Content-Type must be application/json",
                    );
                }
                let identity = head.content_encoding.is_none_or(|ce| {
                    ce.split(',')
                        .all(|t| t.trim().eq_ignore_ascii_case("identity"))
                });
                if !identity {
                    return denied(
                        Reason::ContentEncoding,
                        415,
                        "Content-Encoding is not supported: send the body uncompressed",
                    );
                }
                if let Some(len) = head.content_length
                    && len
                        .trim()
                        .parse::<u64>()
                        .map_or(true, |n| n > policy.max_body_bytes as u64)
                {
                    return denied(Reason::BodyTooLarge, 413, &too_large(policy.max_body_bytes));
                }
                if head.end_of_stream {
                    return denied(
                        Reason::MalformedJson,
                        400,
                        "Parse error: the request body is empty",
                    );
                }
            } else if head.end_of_stream {
                return HeadDecision::Deny(unknown_vs(vs_name, None));
            }
            HeadDecision::ReadBody(Pending {
                vs: vs.map(|v| v.index),
                unknown_name: if vs.is_some() {
                    String::new()
                } else {
                    vs_name.to_owned()
                },
                query: query.map(str::to_owned),
                mcp_method: head.mcp_method.map(str::to_owned),
                mcp_name: head.mcp_name.map(str::to_owned),
                protocol_version: head.protocol_version.map(str::to_owned),
                modern: crate::modern::selects_modern(head.protocol_version),
                max_body: policy.max_body_bytes,
            })
        }
        _ => match vs {
            None => HeadDecision::Deny(unknown_vs(vs_name, None)),
            Some(_) => denied(
                Reason::HttpMethod,
                405,
                "Only POST, GET and DELETE are supported",
            ),
        },
    }
}

/// 405 with `Allow: allow` for a GET or DELETE the virtual server cannot serve.
fn not_allowed(vs: &CompiledVs, method: MethodStat, why: &str, allow: &str) -> Deny {
    let mut reply = Reply::new(405, jsonrpc::error_body(None, codes::INVALID_REQUEST, why));
    reply.headers.push(("allow", allow.to_owned()));
    Deny {
        reply,
        reason: Reason::HttpMethod,
        vs: Some(vs.index),
        method: Some(method),
        tool: None,
    }
}

/// The host part of an authority (`host[:port]`, `[v6]:port`), lowercased.
fn host_of(authority: &str) -> String {
    let a = authority.trim();
    let host = if let Some(rest) = a.strip_prefix('[') {
        rest.split_once(']')
            .map_or(a, |(h, _)| a.get(..h.len() + 2).unwrap_or(a))
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => a,
        }
    };
    host.to_ascii_lowercase()
}

/// Is `host` (lowercase, no port) one the gateway answers for?
fn host_allowed(policy: &CompiledPolicy, host: &str) -> bool {
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
        || policy.public_host.as_deref() == Some(host)
        || policy
            .allowed_hosts
            .iter()
            .any(|h| h == "*" || h.as_str() == host)
}

/// The first of `Host` and `Origin` that names a host the gateway does not answer for
/// (DNS-rebinding protection: once Envoy rewrites `Host`, the upstream cannot check it).
fn foreign_host<'h>(policy: &CompiledPolicy, head: &'h RequestHead<'_>) -> Option<&'h str> {
    if let Some(a) = head.authority
        && !host_allowed(policy, &host_of(a))
    {
        return Some(a);
    }
    let origin = head.origin?;
    let authority = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest.split('/').next().unwrap_or(rest));
    (!host_allowed(policy, &host_of(authority))).then_some(origin)
}

fn too_large(max: usize) -> String {
    format!("Request body exceeds this gateway's limit of {max} bytes")
}

fn unknown_vs(name: &str, id: Option<&Id>) -> Deny {
    deny_global(
        Reason::UnknownVirtualServer,
        404,
        codes::INVALID_REQUEST,
        &format!("Virtual server '{name}' does not exist"),
        id,
    )
}

fn no_member(vs: &CompiledVs, id: Option<&Id>, method: Option<MethodStat>) -> Deny {
    Deny {
        reply: reply(
            id,
            codes::INTERNAL_ERROR,
            &format!("Virtual server '{}' has no MCP servers", vs.name),
            503,
        ),
        reason: Reason::NoMember,
        vs: Some(vs.index),
        method,
        tool: None,
    }
}

/// The body grew past the cap before it ended.
pub fn body_too_large(pending: &Pending) -> Deny {
    Deny {
        reply: reply(
            None,
            codes::INVALID_REQUEST,
            &too_large(pending.max_body),
            413,
        ),
        reason: Reason::BodyTooLarge,
        vs: pending.vs,
        method: None,
        tool: None,
    }
}

/// The request ended with trailers: refused, the body must end the request.
pub fn trailers_refused(pending: &Pending) -> Deny {
    Deny {
        reply: reply(
            None,
            codes::INVALID_REQUEST,
            "Invalid request: request trailers are not supported",
            400,
        ),
        reason: Reason::InvalidRequest,
        vs: pending.vs,
        method: None,
        tool: None,
    }
}

/// The JSON-RPC id of a body, when it can be read (for answering a refused request).
pub fn request_id(body: &[u8]) -> Option<Id> {
    match jsonrpc::parse(body) {
        Ok(m) => m.id,
        Err(ParseError::Invalid { id, .. } | ParseError::DuplicateKey { id, .. }) => id,
        Err(_) => None,
    }
}

/// Decide on the complete body.
pub fn decide_body(policy: &CompiledPolicy, pending: &Pending, body: &[u8]) -> BodyDecision {
    let vs = pending.vs.and_then(|i| policy.virtual_server_at(i));
    let Some(vs) = vs else {
        // Unknown virtual server: answer with the request id when it can be read.
        let id = match jsonrpc::parse(body) {
            Ok(m) => m.id,
            Err(ParseError::Invalid { id, .. } | ParseError::DuplicateKey { id, .. }) => id,
            Err(_) => None,
        };
        return BodyDecision::Deny(unknown_vs(&pending.unknown_name, id.as_ref()));
    };
    if body.len() > pending.max_body {
        return BodyDecision::Deny(body_too_large(pending));
    }
    let ctx = Ctx { vs, pending, body };
    match jsonrpc::parse(body) {
        Ok(msg) => ctx.decide(&msg),
        Err(e) => BodyDecision::Deny(ctx.parse_error(e)),
    }
}

/// The `params` fields the filter reads for the requests it answers itself.
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Params {
    #[serde(default)]
    protocol_version: Option<String>,
    #[serde(default)]
    cursor: Option<String>,
}

struct Ctx<'a> {
    vs: &'a CompiledVs,
    pending: &'a Pending,
    body: &'a [u8],
}

impl Ctx<'_> {
    fn deny(
        &self,
        reason: Reason,
        id: Option<&Id>,
        code: i64,
        message: &str,
        status_without_id: u16,
    ) -> Deny {
        let mut reply = reply(id, code, message, status_without_id);
        if self.pending.modern {
            // The stateless protocol fixes the statuses of errors.
            reply.status = crate::modern::status_of(code);
        }
        Deny {
            reply,
            reason,
            vs: Some(self.vs.index),
            method: None,
            tool: None,
        }
    }

    fn parse_error(&self, e: ParseError) -> Deny {
        match e {
            ParseError::Malformed => Deny {
                method: None,
                tool: None,
                ..self.deny(
                    Reason::MalformedJson,
                    None,
                    codes::PARSE_ERROR,
                    "Parse error: the request body is not valid JSON",
                    400,
                )
            },
            ParseError::Batch => Deny {
                method: None,
                tool: None,
                ..self.deny(
                    Reason::Batch,
                    None,
                    codes::INVALID_REQUEST,
                    "batches are not supported by this gateway",
                    400,
                )
            },
            ParseError::DuplicateKey { key, id } => Deny {
                method: None,
                tool: None,
                ..self.deny(
                    Reason::DuplicateKey,
                    id.as_ref(),
                    codes::INVALID_REQUEST,
                    &format!("Invalid request: the body repeats the key '{}'", echo(&key)),
                    400,
                )
            },
            ParseError::Invalid { why, id } => Deny {
                method: None,
                tool: None,
                ..self.deny(
                    Reason::InvalidRequest,
                    id.as_ref(),
                    codes::INVALID_REQUEST,
                    &format!("Invalid request: {}", echo(&why)),
                    400,
                )
            },
        }
    }

    fn tool_ref(&self, item: &Item) -> Option<ToolRef> {
        (item.stat != u32::MAX).then_some(ToolRef { stat: item.stat })
    }

    fn forward(
        &self,
        member: usize,
        msg: &Message<'_>,
        method: MethodStat,
        body: Option<Vec<u8>>,
        mcp_name: Option<String>,
        tool: Option<ToolRef>,
    ) -> BodyDecision {
        let Some(m) = self.vs.member(member) else {
            return BodyDecision::Deny(no_member(self.vs, msg.id.as_ref(), Some(method)));
        };
        BodyDecision::Forward(Forward {
            route: Route {
                cluster: Rc::clone(&m.cluster),
                path: new_path(&m.path, self.pending.query.as_deref()),
                body,
                mcp_name,
                // A stateless request has no session; one a client sent anyway is not the
                // member's.
                session: if self.pending.modern {
                    SessionHeader::Remove
                } else {
                    SessionHeader::Keep
                },
                protocol_version: None,
            },
            vs: self.vs.index,
            method,
            tool,
            member,
            id: msg.id.clone(),
            open_member_session: self.pending.modern
                && !m
                    .modern_versions
                    .iter()
                    .any(|v| Some(*v) == self.pending.protocol_version.as_deref()),
            // (2026-07-28 has no server requests.)
            tag_server_requests: !self.pending.modern
                && self.vs.members.len() > 1
                && msg.method.is_some()
                && msg.id.is_some(),
        })
    }

    fn local(&self, msg: &Message<'_>, method: MethodStat, kind: LocalKind) -> BodyDecision {
        BodyDecision::Local(Local {
            kind,
            vs: self.vs.index,
            method,
            id: msg.id.clone(),
        })
    }

    /// `params.protocolVersion` / `params.cursor` (read only for `initialize` and lists).
    fn params(&self) -> Params {
        #[derive(serde::Deserialize, Default)]
        struct Envelope {
            #[serde(default)]
            params: Params,
        }
        serde_json::from_slice::<Envelope>(self.body)
            .map(|e| e.params)
            .unwrap_or_default()
    }

    /// Replace the JSON string at `field.span` with `new` (JSON-encoded).
    fn rename(&self, field: &Field<'_>, new: &str) -> Vec<u8> {
        let quoted = serde_json::to_string(new).unwrap_or_default();
        let head = self.body.get(..field.span.start).unwrap_or_default();
        let tail = self.body.get(field.span.end..).unwrap_or_default();
        let mut out = Vec::with_capacity(head.len() + quoted.len() + tail.len());
        out.extend_from_slice(head);
        out.extend_from_slice(quoted.as_bytes());
        out.extend_from_slice(tail);
        out
    }

    fn decide(&self, msg: &Message<'_>) -> BodyDecision {
        let id = msg.id.as_ref();
        let method = match (&msg.method, msg.kind) {
            (Some(m), _) => MethodStat::of(m),
            (None, _) => MethodStat::Response,
        };
        if self.pending.modern {
            return self.decide_modern(msg, method);
        }
        // Mcp-Method must name the body's method.
        if let Some(h) = &self.pending.mcp_method
            && msg.method.as_deref() != Some(h.as_str())
        {
            return BodyDecision::Deny(Deny {
                method: Some(method),
                tool: None,
                ..self.deny(
                    Reason::HeaderMismatch,
                    id,
                    codes::HEADER_MISMATCH,
                    "Mcp-Method header does not match the request body's method",
                    400,
                )
            });
        }
        let Some(name) = msg.method.as_deref() else {
            // A client's JSON-RPC response (to sampling, elicitation, roots): on a virtual
            // server of several members, its id names the member that asked (tagged on the way
            // out, [`crate::ids`]) and is restored; otherwise it goes to the primary (with one
            // member, the only one).
            if self.vs.members.len() > 1
                && let Some((member, original)) = msg.id.as_ref().and_then(crate::ids::untag)
                && member < self.vs.members.len()
                && let Some(body) = crate::ids::restore_id(self.body, &original)
            {
                return self.forward(member, msg, method, Some(body), None, None);
            }
            return self.forward(0, msg, method, None, None, None);
        };
        match name {
            // Name-bearing methods are checked against the allowlist whether or not they carry
            // an id (a "notification" must not slip a call past the check).
            "tools/call" => self.named(msg, method, NamedKind::Tool),
            "prompts/get" => self.named(msg, method, NamedKind::Prompt),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                self.resource(msg, method, name == "resources/read")
            }
            "completion/complete" => self.completion(msg, method),
            // The filter opened every member session itself, `notifications/initialized`
            // included; the client's goes no further.
            "notifications/initialized" if msg.id.is_none() => {
                self.local(msg, method, LocalKind::Accepted)
            }
            // A notification: with one member it is that member's business (cancellation,
            // progress, roots); with several, which member it concerns is unknown: all get it.
            _ if msg.id.is_none() => {
                if self.vs.members.len() == 1 {
                    self.forward(0, msg, method, None, None, None)
                } else {
                    let body = self.body.to_vec();
                    self.local(msg, method, LocalKind::Broadcast { body })
                }
            }
            "initialize" => {
                let params = self.params();
                let version = crate::local::negotiate_version(params.protocol_version.as_deref());
                self.local(msg, method, LocalKind::Initialize { version })
            }
            "ping" => self.local(msg, method, LocalKind::Empty),
            "server/discover" => {
                // Without a stateless version header: say which versions there are.
                let requested = self
                    .pending
                    .protocol_version
                    .clone()
                    .unwrap_or_else(|| crate::local::DISCOVER_DEFAULT_VERSION.to_owned());
                self.local(msg, method, LocalKind::UnsupportedVersion { requested })
            }
            "logging/setLevel" => match self.vs.members.iter().position(|m| m.logging) {
                Some(i) => self.forward(i, msg, method, None, None, None),
                None => self.local(msg, method, LocalKind::Empty),
            },
            _ => self.list_or_primary(msg, method, name),
        }
    }

    /// A request on the stateless protocol (2026-07-28, [`crate::modern`]): the spec's checks
    /// in its order (single request or notification; `_meta` envelope; `MCP-Protocol-Version`,
    /// `Mcp-Method`, `Mcp-Name` agree with the body — the header selected this path, so the
    /// version is one the gateway speaks), then the same routing and allowlist as the handshake
    /// protocol, with no session.
    fn decide_modern(&self, msg: &Message<'_>, method: MethodStat) -> BodyDecision {
        let id = msg.id.as_ref();
        let header_version = self.pending.protocol_version.as_deref().unwrap_or_default();
        let Some(name) = msg.method.as_deref() else {
            return self.invalid(
                msg,
                method,
                "protocol 2026-07-28 takes one JSON-RPC request or notification per POST; \
                 the server sends no requests a response could answer",
            );
        };
        if msg.id.is_none() {
            // Nothing upstream acts on a client notification here (cancellation is closing
            // the response stream): accepted and dropped, as the spec allows.
            return self.local(msg, method, LocalKind::Accepted);
        }
        let mismatch = |why: &str| {
            BodyDecision::Deny(Deny {
                method: Some(method),
                tool: None,
                ..self.deny(Reason::HeaderMismatch, id, codes::HEADER_MISMATCH, why, 400)
            })
        };
        // (The header selected this path, so the version is one the gateway speaks.)
        match crate::modern::envelope_version(self.body, header_version) {
            Ok(_) => {}
            Err(r) if r.code == codes::HEADER_MISMATCH => return mismatch(&r.message),
            Err(r) => {
                return BodyDecision::Deny(Deny {
                    method: Some(method),
                    tool: None,
                    ..self.deny(Reason::InvalidRequest, id, r.code, &r.message, 400)
                });
            }
        }
        if self.pending.mcp_method.as_deref() != Some(name) {
            return mismatch("Mcp-Method header does not match the request body's method");
        }
        let named = match name {
            "tools/call" | "prompts/get" => msg.name.is_some().then_some("name"),
            "resources/read" => msg.uri.is_some().then_some("uri"),
            _ => None,
        };
        if let Some(param) = named
            && self.pending.mcp_name.is_none()
        {
            return mismatch(&format!(
                "Mcp-Name header is missing; it must carry the request body's '{param}' parameter"
            ));
        }
        match name {
            "server/discover" => self.local(msg, method, LocalKind::Discover),
            "tools/call" => self.named(msg, method, NamedKind::Tool),
            "prompts/get" => self.named(msg, method, NamedKind::Prompt),
            "resources/read" => self.resource(msg, method, true),
            "completion/complete" => self.completion(msg, method),
            n if crate::modern::REMOVED_METHODS.contains(&n) => {
                let name = n.to_owned();
                self.local(msg, method, LocalKind::MethodNotFound { name })
            }
            _ => self.list_or_primary(msg, method, name),
        }
    }

    /// A list, answered from the policy; any other method (extensions, `subscriptions/listen`)
    /// is the primary member's.
    fn list_or_primary(&self, msg: &Message<'_>, method: MethodStat, name: &str) -> BodyDecision {
        match ListKind::of(name) {
            Some(kind) => {
                let cursor = self.params().cursor;
                let modern = self.pending.modern;
                self.local(
                    msg,
                    method,
                    LocalKind::List {
                        kind,
                        cursor,
                        modern,
                    },
                )
            }
            None => self.forward(0, msg, method, None, None, None),
        }
    }

    fn invalid(&self, msg: &Message<'_>, method: MethodStat, why: &str) -> BodyDecision {
        BodyDecision::Deny(Deny {
            method: Some(method),
            tool: None,
            ..self.deny(
                Reason::InvalidRequest,
                msg.id.as_ref(),
                codes::INVALID_REQUEST,
                &format!("Invalid request: {why}"),
                400,
            )
        })
    }

    fn named(&self, msg: &Message<'_>, method: MethodStat, kind: NamedKind) -> BodyDecision {
        let id = msg.id.as_ref();
        let Some(field) = &msg.name else {
            return self.invalid(msg, method, "params.name is required");
        };
        let Some(name) = field.as_str() else {
            return self.invalid(msg, method, "params.name must be a string");
        };
        let lookup = match kind {
            NamedKind::Tool => self.vs.tool(&name),
            NamedKind::Prompt => self.vs.prompt(&name),
        };
        let item = match lookup {
            Lookup::Allowed(item) => item,
            Lookup::Lookalike(allowed) => {
                let tool = match (kind, self.vs.tool(&allowed)) {
                    (NamedKind::Tool, Lookup::Allowed(item)) => self.tool_ref(item),
                    _ => None,
                };
                return BodyDecision::Deny(Deny {
 method: Some(method),
 tool,
 ..self.deny(Reason::Lookalike, id, codes::INVALID_PARAMS, &format!(
                        "{} '{}' is not allowed on virtual server '{}' (names must match exactly)",
                        kind.label(),
                        echo(&name),
                        self.vs.name
                    ), 403)
 });
            }
            Lookup::NotAllowed => {
                return BodyDecision::Deny(Deny {
                    method: Some(method),
                    tool: None,
                    ..self.deny(
                        Reason::NotAllowed,
                        id,
                        codes::INVALID_PARAMS,
                        &format!(
                            "{} '{}' is not allowed on virtual server '{}'",
                            kind.label(),
                            echo(&name),
                            self.vs.name
                        ),
                        403,
                    )
                });
            }
        };
        let tool = match kind {
            NamedKind::Tool => self.tool_ref(item),
            NamedKind::Prompt => None,
        };
        if let Some(h) = &self.pending.mcp_name
            && decode_mcp_header(h).as_deref() != Some(&*name)
        {
            return BodyDecision::Deny(Deny {
                method: Some(method),
                tool,
                ..self.deny(
                    Reason::HeaderMismatch,
                    id,
                    codes::HEADER_MISMATCH,
                    "Mcp-Name header does not match the request body's 'name' parameter",
                    400,
                )
            });
        }
        let renamed = item.upstream != name;
        let body = renamed.then(|| self.rename(field, &item.upstream));
        let mcp_name = (renamed && self.pending.mcp_name.is_some()).then(|| item.upstream.clone());
        self.forward(item.member, msg, method, body, mcp_name, tool)
    }

    fn resource(&self, msg: &Message<'_>, method: MethodStat, name_bearing: bool) -> BodyDecision {
        let id = msg.id.as_ref();
        let Some(uri) = msg.uri.as_ref().and_then(Field::as_str) else {
            return self.invalid(msg, method, "params.uri must be a string");
        };
        let member = match self.vs.resource(&uri) {
            Lookup::Allowed(m) => m,
            other => return BodyDecision::Deny(self.resource_denied(msg, method, &uri, &other)),
        };
        if name_bearing
            && let Some(h) = &self.pending.mcp_name
            && decode_mcp_header(h).as_deref() != Some(&*uri)
        {
            return BodyDecision::Deny(Deny {
                method: Some(method),
                tool: None,
                ..self.deny(
                    Reason::HeaderMismatch,
                    id,
                    codes::HEADER_MISMATCH,
                    "Mcp-Name header does not match the request body's 'uri' parameter",
                    400,
                )
            });
        }
        self.forward(member, msg, method, None, None, None)
    }

    fn resource_denied(
        &self,
        msg: &Message<'_>,
        method: MethodStat,
        uri: &str,
        lookup: &Lookup<usize>,
    ) -> Deny {
        let reason = if matches!(lookup, Lookup::Lookalike(_)) {
            Reason::Lookalike
        } else {
            Reason::NotAllowed
        };
        let message = format!(
            "Resource '{}' is not allowed on virtual server '{}'",
            echo(uri),
            self.vs.name
        );
        let mut deny = Deny {
            method: Some(method),
            tool: None,
            ..self.deny(
                reason,
                msg.id.as_ref(),
                codes::RESOURCE_NOT_FOUND,
                &message,
                403,
            )
        };
        if self.pending.modern {
            // 2026-07-28 (SEP-2164): a resource that does not exist is -32602 with the URI in
            // `data`, like the upstream would answer.
            let data = serde_json::json!({ "uri": uri }).to_string();
            deny.reply = Reply::new(
                crate::modern::status_of(codes::INVALID_PARAMS),
                jsonrpc::error_body_with_data(
                    msg.id.as_ref(),
                    codes::INVALID_PARAMS,
                    &message,
                    Some(&data),
                ),
            );
        }
        deny
    }

    fn completion(&self, msg: &Message<'_>, method: MethodStat) -> BodyDecision {
        let Some(Ok(reference)) = &msg.reference else {
            return self.invalid(msg, method, "params.ref must be an object");
        };
        match reference.kind.as_deref() {
            Some("ref/prompt") => {
                let Some(field) = &reference.name else {
                    return self.invalid(msg, method, "params.ref.name is required");
                };
                let Some(name) = field.as_str() else {
                    return self.invalid(msg, method, "params.ref.name must be a string");
                };
                match self.vs.prompt(&name) {
                    Lookup::Allowed(item) => {
                        let body =
                            (item.upstream != name).then(|| self.rename(field, &item.upstream));
                        self.forward(item.member, msg, method, body, None, None)
                    }
                    other => {
                        let reason = if matches!(other, Lookup::Lookalike(_)) {
                            Reason::Lookalike
                        } else {
                            Reason::NotAllowed
                        };
                        BodyDecision::Deny(Deny {
                            method: Some(method),
                            tool: None,
                            ..self.deny(
                                reason,
                                msg.id.as_ref(),
                                codes::INVALID_PARAMS,
                                &format!(
                                    "Prompt '{}' is not allowed on virtual server '{}'",
                                    echo(&name),
                                    self.vs.name
                                ),
                                403,
                            )
                        })
                    }
                }
            }
            Some("ref/resource") => {
                let Some(uri) = reference.uri.as_ref().and_then(Field::as_str) else {
                    return self.invalid(msg, method, "params.ref.uri must be a string");
                };
                match self.vs.resource_ref(&uri) {
                    Lookup::Allowed(m) => self.forward(m, msg, method, None, None, None),
                    other => BodyDecision::Deny(self.resource_denied(msg, method, &uri, &other)),
                }
            }
            _ => self.invalid(
                msg,
                method,
                "params.ref.type must be 'ref/prompt' or 'ref/resource'",
            ),
        }
    }
}

#[derive(Clone, Copy)]
enum NamedKind {
    Tool,
    Prompt,
}

impl NamedKind {
    fn label(self) -> &'static str {
        match self {
            NamedKind::Tool => "Tool",
            NamedKind::Prompt => "Prompt",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let cases = [
            ("/servers/demo/mcp", Some(("demo", None))),
            (
                "/servers/demo/mcp?session=1",
                Some(("demo", Some("session=1"))),
            ),
            ("/servers/demo/mcp?", Some(("demo", Some("")))),
            ("/servers/a-b_c9/mcp", Some(("a-b_c9", None))),
            ("/servers/demo/mcp/", None),
            ("/servers/demo/mcp/../x", None),
            ("/servers/demo/../demo/mcp", None),
            ("/servers/de%6Do/mcp", None),
            ("/servers/demo%2Fmcp", None),
            ("/servers/Demo/mcp", None),
            ("/servers//mcp", None),
            ("/servers/demo//mcp", None),
            ("//servers/demo/mcp", None),
            ("/servers/demo/sse", None),
            ("/servers/demo/mcpx", None),
            ("/servers/./mcp", None),
            ("/servers/demo/mcp#x", None),
            ("/mcp", None),
            ("", None),
            ("*", None),
        ];
        for (path, want) in cases {
            assert_eq!(parse_path(path), want, "{path}");
        }
    }

    #[test]
    fn header_scan() {
        let pairs: Vec<(String, Vec<u8>)> = [
            (":method", &b"POST"[..]),
            (":path", b"/servers/demo/mcp"),
            ("Content-Type", b"application/json"),
            ("mcp-name", b"a"),
            ("mcp-name", b"b"),
            ("x-toolmesh-cluster", b"up_secret"),
            ("X-Toolmesh-Other", b"1"),
            ("x-other", b"\xff\xfe"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
        .collect();
        let h = RequestHeaders::scan(&pairs);
        let head = h.head(false);
        assert_eq!(head.method, "POST");
        assert_eq!(head.path, "/servers/demo/mcp");
        assert_eq!(head.content_type, Some("application/json"));
        assert_eq!(head.mcp_name, Some("a, b"), "repeats are joined");
        assert_eq!(head.mcp_method, None);
        assert_eq!(
            head.invalid_utf8, None,
            "only headers the filter reads count"
        );
        assert_eq!(h.internal, vec!["x-toolmesh-cluster", "X-Toolmesh-Other"]);

        let pairs = vec![
            (":path".to_owned(), b"/servers/demo/mcp".to_vec()),
            ("mcp-method".to_owned(), b"tools/call\xff".to_vec()),
        ];
        let h = RequestHeaders::scan(&pairs);
        assert_eq!(h.head(false).invalid_utf8, Some("mcp-method"));
    }

    #[test]
    fn echo_truncates() {
        assert_eq!(echo("abc"), "abc");
        let long = "x".repeat(500);
        assert_eq!(echo(&long).chars().count(), ECHO_MAX + 1);
    }
}
