//! toolmesh-filter: the MCP policy engine that runs inside Envoy.
//!
//! Envoy runs this crate as a proxy-wasm HTTP filter (`toolmesh_filter.wasm`, built for
//! `wasm32-wasip1`). For every request on `/servers/{vs}/mcp` it parses the JSON-RPC body,
//! enforces the virtual server's allowlist from the [`toolmesh_proto::PolicySnapshot`] in its
//! plugin configuration, picks the upstream member, rewrites renamed items, filters list
//! responses, and records per-tool metrics as Envoy stats. `filter/README.md` is the operator's
//! reference; this page is the same contract from the code's side.
//!
//! # Layout: a pure core and a thin shell
//!
//! Everything that decides is plain Rust with native tests: [`jsonrpc`] (hardened parsing),
//! [`policy`] (the compiled, indexed snapshot), [`decide`] (request → forward or deny),
//! [`lists`] (list methods), [`local`] (answers from the catalog), [`session`] (sealed session ids), [`sse`] (event framing), [`outcome`] (call outcome),
//! [`template`] (resource templates), [`sanitize`] (look-alikes, stat segments), [`stats`]
//! (metric names) and [`flow`] (the per-request state machine tying them together). The
//! proxy-wasm shell (`shell.rs`, compiled only for wasm32) reads headers and bodies, calls
//! [`flow::Flow`], applies its actions and records its stats. The crate never panics on its own:
//! `unwrap`, `expect`, `panic!` and slice indexing are denied by lint.
//!
//! # Routing contract (Envoy's route configuration relies on exactly this)
//!
//! - The endpoint is `/servers/{vs}/mcp`, optionally with a query string. `{vs}` must be a slug
//!   (`[a-z0-9][a-z0-9_-]{0,62}`); any other path (`/servers/{vs}/mcp/../x`, percent-encoding,
//!   extra or missing slashes) is refused with 404 (`bad_path`).
//! - Client request headers starting with `x-toolmesh-` are removed.
//! - On an allowed request the filter sets `x-toolmesh-cluster: <member.cluster>`, rewrites
//!   `:path` to `<member.path>` (keeping the query string), replaces the body and sets
//!   `content-length` (and `mcp-name`, if the client sent it) when it renamed an item. Envoy
//!   clears its route cache on these writes, so the route is chosen again. Envoy has one route
//!   per cluster matching the header `x-toolmesh-cluster` exactly.
//! - Which member: name-bearing methods (`tools/call`, `prompts/get`, `resources/read`,
//!   `resources/subscribe`, `resources/unsubscribe`, `completion/complete` with a `ref/prompt`
//!   name or a `ref/resource` URI) go to the member that owns the name; `logging/setLevel` to
//!   the first member that declares logging; the client's JSON-RPC responses and unknown
//!   methods to the **first** member (the primary). Notifications, GET and DELETE pass to the
//!   member of a single-member virtual server.
//! - Answered by the filter itself ([`local`], no upstream round trip): `initialize` (after
//!   opening each member's session with calls of its own: `initialize` and
//!   `notifications/initialized`, in parallel, bounded by `sessions.member_timeout_ms`),
//!   `ping`, every list method (from the catalog definitions in the policy, paginated with
//!   toolmesh cursors), DELETE on a virtual server of several members (ends every member
//!   session); a client notification there is sent to every member (then 202). GET on a
//!   virtual server of several members is 405.
//! - Protocol 2026-07-28 ([`modern`], selected by the `MCP-Protocol-Version` header): no
//!   sessions; `server/discover` and the lists answered from the policy; the `_meta` envelope
//!   and the `Mcp-Method`/`Mcp-Name` headers checked with the spec's HTTP statuses; calls
//!   forwarded as they are to members that speak it, and, for members that speak only the
//!   handshake, sent in a member session the filter opens for the one request (and ends when
//!   the response ends).
//! - Sessions ([`session`]): the `Mcp-Session-Id` a client gets is sealed by the filter (HMAC
//!   with the policy's session key) and carries the virtual server, the caller (token id) and
//!   each member's own upstream session id; a forwarded request carries the member's session
//!   id and protocol version instead, and the upstream's `mcp-session-id` response header is
//!   removed. An id that fails verification or belongs to another virtual server or caller is
//!   404 (the client initializes again). No session store: any Envoy serves any session.
//! - `Host` and `Origin` must name the gateway (loopback names, the public URL's host,
//!   `limits.allowed_hosts`): DNS-rebinding protection, 403 `bad_host`.

//! # Requests
//!
//! POST bodies are buffered (headers are paused: the plugin needs
//! `allow_on_headers_stop_iteration: true`) up to `limits.max_body_bytes` (1 MiB by default).
//! Refused with a JSON-RPC error before anything reaches an upstream:
//!
//! | case | reason | with an id | without an id |
//! |---|---|---|---|
//! | path is not `/servers/{vs}/mcp` | `bad_path` (global) | 404, -32600 | 404, -32600 |
//! | virtual server not in the policy | `unknown_virtual_server` (global) | 404, -32600 | 404, -32600 |
//! | method other than POST/GET/DELETE; GET/DELETE with a body | `http_method` | — | 405 / 400, -32600 |
//! | `Content-Type` not `application/json` | `content_type` | — | 415, -32600 |
//! | `Content-Encoding` other than `identity` | `content_encoding` | — | 415, -32600 |
//! | body over the cap (`Content-Length` or streamed) | `body_too_large` | — | 413, -32600 |
//! | empty body, not UTF-8, not JSON, trailing data, nesting > 128 | `malformed_json` | — | 400, -32700 |
//! | a JSON array (batch; MCP 2025-06-18 removed batching) | `batch` | — | 400, -32600 |
//! | a repeated key in any object (keys compared after decoding escapes) | `duplicate_key` | 200, -32600 | 400, -32600 |
//! | not JSON-RPC 2.0 (types, missing fields, `id: null`, ...) | `invalid_request` | 200, -32600 | 400, -32600 |
//! | a header decided on (`content-type`, `content-encoding`, `content-length`, `mcp-*`) not UTF-8 | `invalid_request` | — | 400, -32600 |
//! | `Mcp-Method`/`Mcp-Name` disagree with the body | `header_mismatch` | 200, -32020 | 400, -32020 |
//! | tool/prompt not allowed | `not_allowed` | 200, -32602 | 403, -32602 |
//! | resource not allowed | `not_allowed` | 200, -32002 | 403, -32002 |
//! | name differs from an allowed one only by case, whitespace or look-alikes | `lookalike` | 200, -32602/-32002 | 403 |
//! | virtual server without members | `no_member` | 200, -32603 | 503, -32603 |
//!
//! Before all of these, when the policy has token checks (`auth`) and the virtual server is not
//! anonymous, [`auth`] decides on the token Envoy's `jwt_authn` verified: no valid token is
//! **401** (`unauthenticated`, `token_revoked`), a token for other virtual servers or networks
//! **403** (`token_scope`, `token_source`), each with `WWW-Authenticate: Bearer
//! resource_metadata="…"` and a JSON-RPC error (-32001) keeping the request id.
//!
//! HTTP 200 with a JSON-RPC error carrying the request id is the only denial form every tested
//! MCP client survives without losing its session (research notes, section 1.2). Messages name
//! the item and the virtual server: `Tool 'x' is not allowed on virtual server 'vs'`.
//! JSON escapes (`\u0064`) are decoded before any comparison; matching is exact.
//!
//! # Responses
//!
//! Responses stream through unbuffered; for calls the filter watches copies of the chunks to
//! find the outcome (HTTP status >= 400, JSON-RPC `error`, `result.isError: true`, or no
//! complete response: reset, timeout, client gone). Two rewrites, event by event: on a virtual
//! server of several members, the ids of server requests get the member's tag ([`ids`]); a
//! handshake member's answer to a stateless client gets `resultType` ([`modern`]).
//!
//! # Stats
//!
//! See [`stats`] for the exact names. Per-tool stats exist only for tools in the policy and
//! per-virtual-server stats only for virtual servers in the policy; every other name segment
//! comes from a fixed vocabulary, so no client input can create a stat.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod auth;
pub mod decide;
pub mod flow;
pub mod ids;
pub mod jsonrpc;
pub mod lists;
pub mod local;
pub mod modern;
pub mod outcome;
pub mod policy;
pub mod sanitize;
pub mod session;
pub mod sse;
pub mod stats;
pub mod template;

#[cfg(target_arch = "wasm32")]
mod shell;
