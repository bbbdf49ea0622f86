//! The per-request state machine the proxy-wasm shell drives.
//!
//! Why: the shell should only move bytes between Envoy and this crate. [`Flow`] receives each
//! proxy-wasm callback's inputs as plain values (headers, body bytes, status, the current time)
//! and answers with plain actions (forward with this route, reply with this body, replace this
//! chunk), accumulating the stat updates the shell then applies. The whole request lifecycle,
//! stats included, is therefore tested natively (`filter/tests/flow.rs`).
//!
//! Requests the filter answers itself ([`crate::decide::Local`]) either reply at once (lists,
//! `ping`) or first make calls of their own to the members ([`Callout`]s: opening member
//! sessions on `initialize`, closing them on DELETE); the shell dispatches those and feeds each
//! answer back through [`Flow::on_callout_response`] until the flow replies.

use std::rc::Rc;

use crate::auth::{AUTH_ERROR_CODE, Refusal, TokenFacts};
use crate::decide::{
    BodyDecision, Deny, Forward, HeadDecision, Local, LocalKind, Pending, Reply, RequestHead,
    Route, SessionHeader, ToolRef, body_too_large, codes, decide_body, decide_head,
    trailers_refused,
};
use crate::jsonrpc::Id;
use crate::outcome::{BodyKind, CallObserver};
use crate::policy::{CompiledPolicy, CompiledVs};
use crate::session::{self, MemberSession, SessionClaims};
use crate::stats::{Reason, StatKey, StatOp, ToolMetric};

/// Smallest cap on the copy of a `tools/call` JSON response kept to read its outcome.
pub const MIN_OBSERVE_CAP: usize = 1024 * 1024;

/// What to do with the request now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestAction {
    /// Apply the route (`x-toolmesh-cluster`, `:path`, body + `content-length` + `mcp-name` if
    /// rewritten), clear the route cache, continue.
    Forward(Route),
    /// Send this local reply (`content-type: application/json` unless the body is empty)
    /// and stop.
    Deny(Reply),
    /// Pause and buffer the body; call [`Flow::on_request_body`] at its end.
    ReadBody,
    /// Keep the request paused, make these calls, and feed each answer to
    /// [`Flow::on_callout_response`].
    Callouts(Vec<Callout>),
}

/// An HTTP call the filter makes itself to a member (proxy-wasm `dispatch_http_call`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Callout {
    /// Handed back with the answer.
    pub key: u32,
    /// The member's Envoy cluster.
    pub cluster: Rc<str>,
    /// Request headers, pseudo-headers (`:method`, `:path`, `:authority`) included.
    pub headers: Vec<(&'static str, String)>,
    /// The body, if any.
    pub body: Option<Vec<u8>>,
    /// How long to wait for the answer.
    pub timeout_ms: u32,
    /// What the call is for, for logs (`initialize of 'x'`).
    pub label: String,
}

/// The answer to a [`Callout`] (`None` in [`Flow::on_callout_response`] when it failed: reset,
/// timeout, no such cluster).
#[derive(Debug, Clone, Copy)]
pub struct CalloutResponse<'a> {
    /// HTTP status.
    pub status: u16,
    /// `mcp-session-id`.
    pub session_id: Option<&'a str>,
    /// `content-type`.
    pub content_type: Option<&'a str>,
    /// The body.
    pub body: &'a [u8],
}

/// What to do after a callout's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalloutAction {
    /// Wait for the other answers.
    Wait,
    /// Make these further calls.
    Dispatch(Vec<Callout>),
    /// Answer the client and stop.
    Reply(Reply),
    /// Apply this route to the paused request and let it go on (a stateless request whose
    /// member session is now open).
    Forward(Route),
}

/// How the shell should handle the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseBodyMode {
    /// Let it through; no need to call the flow.
    Pass,
    /// Let each chunk through, but call [`Flow::on_response_body`] with it (and at the end).
    Observe,
    /// Pass each chunk through [`Flow::rewrite_response_body`] (replacing it with what that
    /// returns), then to [`Flow::on_response_body`]; the response's `content-length` must go.
    /// An event stream on a virtual server of several members, whose server requests get
    /// tagged ids ([`crate::ids`]); a handshake member's answer to a stateless client, whose
    /// result gets `resultType` ([`crate::modern::ResultTagger`]).
    Rewrite,
}

/// What to do with the response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHeadersAction {
    /// How to treat the body.
    pub body: ResponseBodyMode,
}

const PASS: ResponseHeadersAction = ResponseHeadersAction {
    body: ResponseBodyMode::Pass,
};

/// A member's progress while a client's session opens or closes.
#[derive(Debug, Clone)]
enum Slot {
    /// `initialize` sent.
    Initializing,
    /// `notifications/initialized` sent on this upstream session.
    Notifying {
        session_id: String,
        protocol_version: String,
    },
    /// DELETE (or a client notification) sent.
    Closing,
    /// Nothing more to do.
    Done(MemberSession),
}

/// What the access-log value names besides the outcome.
#[derive(Debug, Clone, Copy, Default)]
struct LogHead {
    vs: Option<usize>,
    method: Option<crate::stats::MethodStat>,
    tool: Option<ToolRef>,
}

/// A local answer waiting for callouts.
#[derive(Debug)]
struct LocalCalls {
    kind: LocalKind,
    vs: usize,
    id: Option<Id>,
    slots: Vec<Slot>,
}

#[derive(Debug)]
enum Phase {
    Start,
    ReadingBody(Pending),
    /// Refused for its token; reading the body only to answer with the request id.
    Refused(Refusal, Option<usize>),
    Denied,
    Forwarded,
    /// Answering locally after callouts.
    Calling(LocalCalls),
    /// Serving a stateless request inside a member session of its own.
    Translating(Translation),
}

/// A stateless request waiting for the member session it will be sent in
/// ([`Flow::translate`]).
#[derive(Debug)]
struct Translation {
    /// The request as it will go, once the session is open (its body without the stateless
    /// envelope, renamed).
    forward: Forward,
    step: Step,
}

/// Where a [`Translation`] is.
#[derive(Debug)]
enum Step {
    /// `initialize` sent.
    Initializing,
    /// `notifications/initialized` sent in the member's new session.
    Notifying { session_id: String, version: String },
}

/// How a forwarded request's response is rewritten.
#[derive(Debug, Clone, Copy)]
enum RewritePlan {
    /// On a virtual server of several members: the ids of server requests get the member's
    /// tag ([`crate::ids`]).
    ServerRequestIds { member: usize },
    /// A handshake member's answer to a stateless client: its result gets the `resultType`
    /// 2026-07-28 requires ([`crate::modern::ResultTagger`]).
    ResultType,
}

/// A [`RewritePlan`] under way, for the body the response's headers announced.
#[derive(Debug)]
enum Rewriter {
    ServerRequestIds(crate::ids::ServerRequestTagger),
    ResultType(crate::modern::ResultTagger),
}

/// A member session opened for one stateless request, ended when the response ends.
#[derive(Debug)]
struct SessionToEnd {
    vs: usize,
    member: usize,
    session_id: String,
    version: String,
}

#[derive(Debug)]
struct Call {
    tool: ToolRef,
    id: Option<Id>,
    observer: Option<CallObserver>,
    status_error: bool,
    done: bool,
}

/// One HTTP request through the filter.
#[derive(Debug)]
pub struct Flow {
    policy: Rc<CompiledPolicy>,
    phase: Phase,
    started_ms: u64,
    stats: Vec<StatOp>,
    call: Option<Call>,
    response_mode: ResponseBodyMode,
    refusal: Option<Refusal>,
    /// The verified token's id (`""`: anonymous, or no token checks): sessions are bound to it.
    caller: String,
    /// The client's `mcp-session-id`.
    session_id: Option<String>,
    /// The upstream response's `mcp-session-id` must go (the client keeps the sealed one).
    strip_session: bool,
    /// Lines for the shell to log (member failures).
    notes: Vec<String>,
    /// The access-log value, once complete (see [`LOG_PROPERTY`]).
    log: Option<String>,
    /// What its first three fields name (formatted only with the outcome).
    log_head: LogHead,
    /// The virtual server of the forwarded call (for the caller's `errors`).
    call_vs: Option<usize>,
    /// How the response is to be rewritten, decided with the route.
    rewrite: Option<RewritePlan>,
    /// The rewrite under way, once the response's headers said what its body is.
    rewriter: Option<Rewriter>,
    /// A member session opened for this request alone, to end when its response ends.
    session_to_end: Option<SessionToEnd>,
}

/// The property the shell sets once per request for Envoy's access log: filter state
/// `wasm.toolmesh`, printed with `%FILTER_STATE(wasm.toolmesh:PLAIN)%`.
///
/// Its value is four space-separated fields (none contains a space; `-` when absent):
/// `<virtual server> <method> <mcp_server>/<tool> <outcome>`, where method is the
/// `rq.<method>` stat segment, the tool is set for `tools/call`, and the outcome is `ok` or
/// `error` (calls, decided as for the `errors` stat), `forwarded` (other requests), `local`
/// (answered by the filter) or `denied.<reason>`. One property rather than four: each
/// `set_property` is a hostcall of ~5,000 instructions (callgrind).
pub const LOG_PROPERTY: &str = "toolmesh";

impl Flow {
    /// A flow under `policy`.
    pub fn new(policy: Rc<CompiledPolicy>) -> Self {
        Self {
            policy,
            phase: Phase::Start,
            started_ms: 0,
            stats: Vec::new(),
            call: None,
            response_mode: ResponseBodyMode::Pass,
            rewrite: None,
            rewriter: None,
            session_to_end: None,
            refusal: None,
            caller: String::new(),
            session_id: None,
            strip_session: false,
            notes: Vec::new(),
            log: None,
            log_head: LogHead::default(),
            call_vs: None,
        }
    }

    /// The virtual server whose token check a request for `path` needs: `None` when the
    /// policy checks no tokens, the path is not an MCP endpoint, or the virtual server is
    /// anonymous. The shell then reads the [`TokenFacts`] and calls [`Flow::check_token`].
    pub fn token_check_for<'p>(&self, path: &'p str) -> Option<&'p str> {
        let auth = self.policy.auth.as_ref()?;
        let (vs, _) = crate::decide::parse_path(path)?;
        auth.requires_token(vs).then_some(vs)
    }

    /// Check the token for virtual server `vs` (before [`Flow::on_request_headers`], which
    /// then refuses the request if the check failed).
    pub fn check_token(&mut self, vs: &str, facts: &TokenFacts, now_s: u64) {
        self.refusal = self
            .policy
            .auth
            .as_ref()
            .and_then(|a| a.check(vs, facts, now_s));
        self.caller = facts.jti.clone().unwrap_or_default();
    }

    /// The access-log value to set, once the request's outcome is known (see
    /// [`LOG_PROPERTY`]).
    pub fn take_log_property(&mut self) -> Option<String> {
        self.log.take()
    }

    /// Count `metric` for this request's caller on virtual server `vs`, if the policy lists
    /// the caller there.
    fn count_caller(&mut self, vs: usize, metric: ToolMetric) {
        self.record_caller(vs, metric, 1);
    }

    /// Record `value` in the caller's `metric` (an increment, or a histogram sample).
    fn record_caller(&mut self, vs: usize, metric: ToolMetric, value: u64) {
        if self.caller.is_empty() {
            return;
        }
        if let Some(caller) = self.policy.caller_stat(vs, &self.caller) {
            self.stats.push(StatOp {
                key: StatKey::Caller { caller, metric },
                value,
            });
        }
    }

    /// Start the access-log value: virtual server, method, tool.
    fn log_request(
        &mut self,
        vs: Option<usize>,
        method: Option<crate::stats::MethodStat>,
        tool: Option<ToolRef>,
    ) {
        self.log_head = LogHead { vs, method, tool };
    }

    /// Finish the access-log value with the outcome.
    fn log_outcome(&mut self, outcome: &str) {
        let h = self.log_head;
        let vs =
            h.vs.and_then(|i| self.policy.virtual_server_at(i))
                .map_or("-", |v| v.name.as_str());
        let method = h.method.map_or("-", |m| m.as_str());
        self.log = Some(
            match h.tool.and_then(|t| self.policy.tool_identity(t.stat)) {
                Some((server, name)) => format!("{vs} {method} {server}/{name} {outcome}"),
                None => format!("{vs} {method} - {outcome}"),
            },
        );
    }

    /// Lines the shell should log at warning level (member sessions that failed to open).
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// Must the shell remove `mcp-session-id` from the upstream's response headers?
    pub fn strips_response_session(&self) -> bool {
        self.strip_session
    }

    /// The answer to a GET of the protected resource metadata (RFC 9728), if `path` is one.
    pub fn metadata_document(&self, method: &str, path: &str) -> Option<Vec<u8>> {
        if method != "GET" {
            return None;
        }
        let auth = self.policy.auth.as_ref()?;
        auth.metadata_document(path, |vs| self.policy.virtual_server(vs).is_some())
    }

    fn refuse(&mut self, r: Refusal, vs: Option<usize>, id: Option<&Id>) -> RequestAction {
        self.deny(Deny {
            reply: Reply {
                www_authenticate: Some(r.www_authenticate),
                ..Reply::new(
                    r.status,
                    crate::jsonrpc::error_body(id, AUTH_ERROR_CODE, &r.message),
                )
            },
            reason: r.reason,
            vs,
            method: None,
            tool: None,
        })
    }

    /// After a failed token check: refuse now (no body), or read the body for its id.
    fn refuse_head(&mut self, r: Refusal, head: &RequestHead<'_>) -> RequestAction {
        let vs = crate::decide::parse_path(head.path)
            .and_then(|(name, _)| self.policy.virtual_server(name))
            .map(|v| v.index);
        if head.method == "POST" && !head.end_of_stream {
            self.phase = Phase::Refused(r, vs);
            return RequestAction::ReadBody;
        }
        self.refuse(r, vs, None)
    }

    fn take_refused(&mut self) -> Option<(Refusal, Option<usize>)> {
        match std::mem::replace(&mut self.phase, Phase::Denied) {
            Phase::Refused(r, vs) => Some((r, vs)),
            other => {
                self.phase = other;
                None
            }
        }
    }

    /// Stat updates accumulated since the last call.
    pub fn take_stats(&mut self) -> Vec<StatOp> {
        std::mem::take(&mut self.stats)
    }

    /// Stat updates accumulated since the last call, without giving up the buffer.
    pub fn drain_stats(&mut self) -> std::vec::Drain<'_, StatOp> {
        self.stats.drain(..)
    }

    /// The policy this request runs under (stat keys index it).
    pub fn policy(&self) -> &Rc<CompiledPolicy> {
        &self.policy
    }

    /// When the request started (the `now_ms` given to [`Flow::on_request_headers`]).
    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// Is the flow waiting for the request body?
    pub fn wants_request_body(&self) -> bool {
        matches!(self.phase, Phase::ReadingBody(_) | Phase::Refused(..))
    }

    /// Does [`Flow::on_response_headers`] need the response headers? (Only forwarded calls
    /// look at the response; the shell skips reading headers otherwise.)
    pub fn wants_response(&self) -> bool {
        matches!(self.phase, Phase::Forwarded)
            && (self.call.is_some() || self.rewrite.is_some() || self.session_to_end.is_some())
    }

    /// Is a forwarded call still waiting for the end of its response? ([`Flow::on_done`]
    /// needs the time only then.)
    pub fn call_pending(&self) -> bool {
        self.call.as_ref().is_some_and(|c| !c.done)
    }

    /// The request headers arrived.
    pub fn on_request_headers(&mut self, head: &RequestHead<'_>, now_ms: u64) -> RequestAction {
        self.started_ms = now_ms;
        if let Some(r) = self.refusal.take() {
            return self.refuse_head(r, head);
        }
        // The stateless protocol has no sessions: an id sent anyway is neither checked nor
        // forwarded (the route removes it).
        self.session_id = head
            .session_id
            .filter(|_| !crate::modern::selects_modern(head.protocol_version))
            .map(str::to_owned);
        match decide_head(&self.policy, head) {
            HeadDecision::Forward(f) => self.forward(f, None, now_ms),
            HeadDecision::Local(l) => self.local(l),
            HeadDecision::Deny(d) => self.deny(d),
            HeadDecision::ReadBody(p) => {
                self.phase = Phase::ReadingBody(p);
                RequestAction::ReadBody
            }
        }
    }

    /// Part of the body arrived (`buffered` bytes so far, not yet the end): a reply if the body
    /// is already over the cap.
    pub fn on_request_body_progress(&mut self, buffered: usize) -> Option<Reply> {
        if matches!(self.phase, Phase::Refused(..)) && buffered > self.policy.max_body_bytes {
            let (r, vs) = self.take_refused()?;
            return match self.refuse(r, vs, None) {
                RequestAction::Deny(reply) => Some(reply),
                _ => None,
            };
        }
        let Phase::ReadingBody(p) = &self.phase else {
            return None;
        };
        if buffered <= p.max_body {
            return None;
        }
        let d = body_too_large(p);
        match self.deny(d) {
            RequestAction::Deny(r) => Some(r),
            _ => None,
        }
    }

    /// Request trailers arrived while the body was being read: refused (a reply), since the
    /// body never reached its end and the request must not continue undecided.
    pub fn on_request_trailers(&mut self) -> Option<Reply> {
        if let Some((r, vs)) = self.take_refused() {
            return match self.refuse(r, vs, None) {
                RequestAction::Deny(reply) => Some(reply),
                _ => None,
            };
        }
        let Phase::ReadingBody(p) = &self.phase else {
            return None;
        };
        let d = trailers_refused(p);
        match self.deny(d) {
            RequestAction::Deny(r) => Some(r),
            _ => None,
        }
    }

    /// The whole body arrived.
    pub fn on_request_body(&mut self, body: &[u8], now_ms: u64) -> RequestAction {
        if let Some((r, vs)) = self.take_refused() {
            let id = crate::decide::request_id(body);
            return self.refuse(r, vs, id.as_ref());
        }
        let Phase::ReadingBody(p) = &self.phase else {
            return RequestAction::ReadBody;
        };
        match decide_body(&self.policy, p, body) {
            BodyDecision::Forward(f) => self.forward(f, Some(body), now_ms),
            BodyDecision::Local(l) => self.local(l),
            BodyDecision::Deny(d) => self.deny(d),
        }
    }

    /// Open and check the client's session id for virtual server `vs`: `Ok(None)` without
    /// one; `Err` (a 404 denial) when it fails verification or belongs to another virtual
    /// server or caller.
    fn session_claims(
        &self,
        vs: &CompiledVs,
        id: Option<&Id>,
        method: crate::stats::MethodStat,
    ) -> Result<Option<SessionClaims>, Deny> {
        let Some(sid) = self.session_id.as_deref() else {
            return Ok(None);
        };
        match session::open(&self.policy.sessions, sid) {
            Ok(c) if c.virtual_server == vs.name && c.caller == self.caller => Ok(Some(c)),
            _ => Err(Deny {
                reply: Reply::new(
                    404,
                    crate::jsonrpc::error_body(
                        id,
                        codes::SESSION_NOT_FOUND,
                        "Session not found: initialize a new session",
                    ),
                ),
                reason: Reason::SessionInvalid,
                vs: Some(vs.index),
                method: Some(method),
                tool: None,
            }),
        }
    }

    /// An allowed request: forward it (`body`: the client's, when it was read), or, for a
    /// stateless request to a member that speaks only the handshake, start the calls that
    /// serve it ([`Flow::translate`]).
    fn forward(&mut self, mut f: Forward, body: Option<&[u8]>, now_ms: u64) -> RequestAction {
        let policy = Rc::clone(&self.policy);
        if let Some(vs) = policy.virtual_server_at(f.vs)
            && self.session_id.is_some()
        {
            let claims = match self.session_claims(vs, f.id.as_ref(), f.method) {
                Ok(c) => c,
                Err(d) => return self.deny(d),
            };
            let member = vs.member(f.member);
            let state = claims
                .as_ref()
                .zip(member)
                .and_then(|(c, m)| c.member(&m.mcp_server));
            match state {
                Some(MemberSession::Open {
                    session_id,
                    protocol_version,
                }) => {
                    f.route.session = SessionHeader::Set(session_id.clone());
                    f.route.protocol_version = Some(protocol_version.clone());
                }
                Some(MemberSession::Failed) => {
                    let name = member.map_or("", |m| m.mcp_server.as_str());
                    return self.deny(Deny {
                        reply: Reply::new(
                            if f.id.is_some() { 200 } else { 503 },
                            crate::jsonrpc::error_body(
                                f.id.as_ref(),
                                codes::INTERNAL_ERROR,
                                &format!(
                                    "MCP server '{name}' is unavailable in this session (it \
                                     failed to initialize); initialize a new session to retry"
                                ),
                            ),
                        ),
                        reason: Reason::MemberUnavailable,
                        vs: Some(f.vs),
                        method: Some(f.method),
                        tool: f.tool,
                    });
                }
                // Stateless, or a member that joined after the session opened.
                Some(MemberSession::Stateless) | None => f.route.session = SessionHeader::Remove,
            }
            self.strip_session = true;
        }
        self.phase = Phase::Forwarded;
        self.stats.push(StatOp::inc(vs_rq(f.vs, f.method)));
        self.log_request(Some(f.vs), Some(f.method), f.tool);
        if f.tool.is_some() {
            // The outcome is logged when the response ends.
            self.count_caller(f.vs, ToolMetric::Calls);
            self.call_vs = Some(f.vs);
        } else {
            self.log_outcome("forwarded");
        }
        if let Some(t) = &f.tool {
            self.stats.push(tool_op(t, ToolMetric::Calls, 1));
            self.stats
                .push(tool_op(t, ToolMetric::LastCallTs, now_ms / 1000));
            self.call = Some(Call {
                tool: *t,
                id: f.id.clone(),
                observer: None,
                status_error: false,
                done: false,
            });
        }
        if f.open_member_session {
            return self.translate(f, body);
        }
        if f.tag_server_requests {
            self.rewrite = Some(RewritePlan::ServerRequestIds { member: f.member });
        }
        RequestAction::Forward(f.route)
    }

    /// Serve a stateless (2026-07-28) request whose member speaks only the handshake: open a
    /// member session for it (`initialize`, then `notifications/initialized`, in
    /// [`Flow::on_callout_response`]), send the request in it (without the stateless
    /// envelope, which such a member would refuse), let the response stream back, and end the
    /// session when the response ends ([`Flow::take_session_to_end`]).
    fn translate(&mut self, mut f: Forward, body: Option<&[u8]>) -> RequestAction {
        let policy = Rc::clone(&self.policy);
        let Some(m) = policy
            .virtual_server_at(f.vs)
            .and_then(|vs| vs.member(f.member))
        else {
            return RequestAction::Deny(Reply::new(500, Vec::new()));
        };
        let original = f.route.body.as_deref().or(body).unwrap_or_default();
        f.route.body = crate::modern::strip_envelope(original).or(f.route.body);
        let label = format!(
            "initialize of MCP server '{}' (stateless request)",
            m.mcp_server
        );
        self.phase = Phase::Translating(Translation {
            forward: f,
            step: Step::Initializing,
        });
        RequestAction::Callouts(vec![Callout {
            key: 0,
            cluster: Rc::clone(&m.cluster),
            headers: member_headers(m, None, None),
            body: Some(crate::local::member_initialize_body(
                crate::local::LATEST_PROTOCOL_VERSION,
            )),
            timeout_ms: policy.member_timeout_ms,
            label,
        }])
    }

    /// The next step of a [`Flow::translate`]d request, given the answer to the last call.
    fn translation_step(
        &mut self,
        response: Option<CalloutResponse<'_>>,
        now_ms: u64,
    ) -> CalloutAction {
        let policy = Rc::clone(&self.policy);
        let Phase::Translating(mut t) = std::mem::replace(&mut self.phase, Phase::Denied) else {
            return CalloutAction::Wait;
        };
        let (vs, member) = (t.forward.vs, t.forward.member);
        let Some(m) = policy.virtual_server_at(vs).and_then(|v| v.member(member)) else {
            return CalloutAction::Reply(Reply::new(500, Vec::new()));
        };
        // The session is open (`Some(id)`, or `None` for a member without sessions): send.
        let mut send = |session_id: Option<String>, version: String| {
            let mut route = t.forward.route.clone();
            route.protocol_version = Some(version.clone());
            route.session = match &session_id {
                Some(sid) => SessionHeader::Set(sid.clone()),
                None => SessionHeader::Remove,
            };
            self.session_to_end = session_id.map(|session_id| SessionToEnd {
                vs,
                member,
                session_id,
                version,
            });
            self.strip_session = true;
            self.rewrite = Some(RewritePlan::ResultType);
            self.phase = Phase::Forwarded;
            CalloutAction::Forward(route)
        };
        let failed = match t.step {
            Step::Initializing => match response {
                Some(r) if (200..300).contains(&r.status) => {
                    match crate::local::parse_member_initialize(r.content_type, r.body) {
                        Ok(version) => match r.session_id.filter(|s| !s.is_empty()) {
                            Some(sid) => {
                                let notify = Callout {
                                    key: 0,
                                    cluster: Rc::clone(&m.cluster),
                                    headers: member_headers(m, Some(sid), Some(&version)),
                                    body: Some(crate::local::INITIALIZED_NOTIFICATION.to_vec()),
                                    timeout_ms: policy.member_timeout_ms,
                                    label: format!(
                                        "notifications/initialized to MCP server '{}' \
                                         (stateless request)",
                                        m.mcp_server
                                    ),
                                };
                                t.step = Step::Notifying {
                                    session_id: sid.to_owned(),
                                    version,
                                };
                                self.phase = Phase::Translating(t);
                                return CalloutAction::Dispatch(vec![notify]);
                            }
                            None => return send(None, version),
                        },
                        Err(why) => format!("its initialize answer is unusable: {why}"),
                    }
                }
                Some(r) => format!("initialize answered HTTP {}", r.status),
                None => "initialize failed (no answer in time, or reset)".to_owned(),
            },
            Step::Notifying {
                session_id,
                version,
            } => match response {
                Some(r) if r.status < 400 => return send(Some(session_id), version),
                Some(r) => format!("notifications/initialized answered HTTP {}", r.status),
                None => "notifications/initialized failed (no answer in time, or reset)".to_owned(),
            },
        };
        let vs_name = policy.virtual_server_at(vs).map_or("", |v| v.name.as_str());
        self.notes.push(format!(
            "virtual server '{vs_name}': MCP server '{}' could not open a session for a \
             stateless request: {failed}",
            m.mcp_server
        ));
        self.stats.push(StatOp::inc(StatKey::VsDenied {
            vs: index(vs),
            reason: Reason::MemberInitFailed,
        }));
        self.finish_call(false, now_ms);
        CalloutAction::Reply(Reply::new(
            crate::modern::status_of(codes::INTERNAL_ERROR),
            crate::jsonrpc::error_body(
                t.forward.id.as_ref(),
                codes::INTERNAL_ERROR,
                &format!(
                    "MCP server '{}' is unavailable: it could not open a session ({failed})",
                    m.mcp_server
                ),
            ),
        ))
    }

    /// The response of a request sent in a member session of its own ended (or its stream
    /// did): the DELETE that ends that session, once, or `None`.
    pub fn take_session_to_end(&mut self) -> Option<Callout> {
        let end = self.session_to_end.take()?;
        let m = self
            .policy
            .virtual_server_at(end.vs)
            .and_then(|v| v.member(end.member))?;
        let mut headers = member_headers(m, Some(&end.session_id), Some(&end.version));
        if let Some(h) = headers.first_mut() {
            h.1 = "DELETE".to_owned();
        }
        Some(Callout {
            key: 0,
            cluster: Rc::clone(&m.cluster),
            headers,
            body: None,
            timeout_ms: self.policy.member_timeout_ms,
            label: format!(
                "session end at MCP server '{}' (stateless request)",
                m.mcp_server
            ),
        })
    }

    fn result_reply(id: Option<&Id>, result: &str) -> Reply {
        let id = id.map_or_else(|| "null".to_owned(), Id::to_json);
        Reply::new(
            200,
            format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#).into_bytes(),
        )
    }

    /// A request the filter answers itself.
    fn local(&mut self, l: Local) -> RequestAction {
        let policy = Rc::clone(&self.policy);
        let Some(vs) = policy.virtual_server_at(l.vs) else {
            return RequestAction::Deny(Reply::new(404, Vec::new()));
        };
        // Every request but a new session's must carry a session of this virtual server and
        // caller, if it carries one at all.
        let claims = match &l.kind {
            LocalKind::Initialize { .. }
            | LocalKind::Discover
            | LocalKind::UnsupportedVersion { .. } => None,
            _ => match self.session_claims(vs, l.id.as_ref(), l.method) {
                Ok(c) => c,
                Err(d) => return self.deny(d),
            },
        };
        self.stats.push(StatOp::inc(vs_rq(l.vs, l.method)));
        self.log_request(Some(l.vs), Some(l.method), None);
        self.log_outcome("local");
        self.phase = Phase::Denied;
        let id = l.id.as_ref();
        match &l.kind {
            LocalKind::Empty => RequestAction::Deny(Self::result_reply(id, "{}")),
            LocalKind::Accepted => RequestAction::Deny(Reply::new(202, Vec::new())),
            LocalKind::List {
                kind,
                cursor,
                modern,
            } => match crate::local::list_result(&policy, vs, *kind, cursor.as_deref()) {
                Ok(result) if *modern => {
                    let result = crate::modern::decorate_list(&result, &policy, vs);
                    RequestAction::Deny(Self::result_reply(id, &result))
                }
                Ok(result) => RequestAction::Deny(Self::result_reply(id, &result)),
                Err(_) => RequestAction::Deny(Reply::new(
                    if *modern { 400 } else { 200 },
                    crate::jsonrpc::error_body(
                        id,
                        codes::INVALID_PARAMS,
                        "Invalid cursor: start the list again without one",
                    ),
                )),
            },
            LocalKind::Discover => RequestAction::Deny(Self::result_reply(
                id,
                &crate::modern::discover_result(&policy, vs),
            )),
            LocalKind::UnsupportedVersion { requested } => {
                let r = crate::modern::unsupported_version(requested);
                RequestAction::Deny(Reply::new(
                    400,
                    crate::jsonrpc::error_body_with_data(id, r.code, &r.message, r.data.as_deref()),
                ))
            }
            LocalKind::MethodNotFound { name } => RequestAction::Deny(Reply::new(
                404,
                crate::jsonrpc::error_body(
                    id,
                    codes::METHOD_NOT_FOUND,
                    &format!("Method not found: '{name}' is not part of protocol 2026-07-28"),
                ),
            )),
            LocalKind::Initialize { version } => {
                let timeout_ms = policy.member_timeout_ms;
                let body = crate::local::member_initialize_body(version);
                let mut calls = Vec::with_capacity(vs.members.len());
                for (i, m) in vs.members.iter().enumerate() {
                    calls.push(Callout {
                        key: u32::try_from(i).unwrap_or(u32::MAX),
                        cluster: Rc::clone(&m.cluster),
                        headers: member_headers(m, None, None),
                        body: Some(body.clone()),
                        timeout_ms,
                        label: format!("initialize of MCP server '{}'", m.mcp_server),
                    });
                }
                self.phase = Phase::Calling(LocalCalls {
                    slots: vec![Slot::Initializing; vs.members.len()],
                    kind: l.kind.clone(),
                    vs: l.vs,
                    id: l.id.clone(),
                });
                if calls.is_empty() {
                    return match self.finish_local() {
                        Some(r) => RequestAction::Deny(r),
                        None => RequestAction::Deny(Reply::new(500, Vec::new())),
                    };
                }
                RequestAction::Callouts(calls)
            }
            LocalKind::CloseSessions | LocalKind::Broadcast { .. } => {
                let body = match &l.kind {
                    LocalKind::Broadcast { body } => Some(body),
                    _ => None,
                };
                let Some(claims) = claims else {
                    if body.is_some() {
                        // No session: no member session the notification could concern.
                        return RequestAction::Deny(Reply::new(202, Vec::new()));
                    }
                    return RequestAction::Deny(Reply::new(
                        400,
                        crate::jsonrpc::error_body(
                            None,
                            codes::INVALID_REQUEST,
                            "DELETE needs the Mcp-Session-Id of the session to end",
                        ),
                    ));
                };
                let mut slots = Vec::with_capacity(vs.members.len());
                let mut calls = Vec::new();
                for (i, m) in vs.members.iter().enumerate() {
                    let (session_id, version) = match claims.member(&m.mcp_server) {
                        Some(MemberSession::Open {
                            session_id,
                            protocol_version,
                        }) => (Some(session_id.as_str()), Some(protocol_version.as_str())),
                        // A stateless member gets notifications too, without a session.
                        Some(MemberSession::Stateless) if body.is_some() => (None, None),
                        _ => {
                            slots.push(Slot::Done(MemberSession::Stateless));
                            continue;
                        }
                    };
                    let mut headers = member_headers(m, session_id, version);
                    let label = match body {
                        Some(_) => format!("notification to MCP server '{}'", m.mcp_server),
                        None => {
                            if let Some(h) = headers.first_mut() {
                                h.1 = "DELETE".to_owned();
                            }
                            format!("session end at MCP server '{}'", m.mcp_server)
                        }
                    };
                    calls.push(Callout {
                        key: u32::try_from(i).unwrap_or(u32::MAX),
                        cluster: Rc::clone(&m.cluster),
                        headers,
                        body: body.cloned(),
                        timeout_ms: policy.member_timeout_ms,
                        label,
                    });
                    slots.push(Slot::Closing);
                }
                if calls.is_empty() {
                    let status = if body.is_some() { 202 } else { 200 };
                    return RequestAction::Deny(Reply::new(status, Vec::new()));
                }
                self.phase = Phase::Calling(LocalCalls {
                    slots,
                    kind: l.kind.clone(),
                    vs: l.vs,
                    id: None,
                });
                RequestAction::Callouts(calls)
            }
        }
    }

    /// The answer to callout `key` (`None`: it failed: reset, timeout, no such cluster),
    /// arriving at `now_ms`.
    pub fn on_callout_response(
        &mut self,
        key: u32,
        response: Option<CalloutResponse<'_>>,
        now_ms: u64,
    ) -> CalloutAction {
        if matches!(self.phase, Phase::Translating(_)) {
            return self.translation_step(response, now_ms);
        }
        let policy = Rc::clone(&self.policy);
        let Phase::Calling(p) = &mut self.phase else {
            return CalloutAction::Wait;
        };
        let Some(vs) = policy.virtual_server_at(p.vs) else {
            return CalloutAction::Wait;
        };
        let i = usize::try_from(key).unwrap_or(usize::MAX);
        let (Some(slot), Some(member)) = (p.slots.get_mut(i), vs.members.get(i)) else {
            return CalloutAction::Wait;
        };
        let mut next = None;
        let mut failed: Option<String> = None;
        *slot = match std::mem::replace(slot, Slot::Done(MemberSession::Failed)) {
            Slot::Initializing => match response {
                Some(r) if (200..300).contains(&r.status) => {
                    match crate::local::parse_member_initialize(r.content_type, r.body) {
                        Ok(version) => match r.session_id {
                            Some(sid) if !sid.is_empty() => {
                                next = Some(Callout {
                                    key,
                                    cluster: Rc::clone(&member.cluster),
                                    headers: member_headers(member, Some(sid), Some(&version)),
                                    body: Some(crate::local::INITIALIZED_NOTIFICATION.to_vec()),
                                    timeout_ms: policy.member_timeout_ms,
                                    label: format!(
                                        "notifications/initialized to MCP server '{}'",
                                        member.mcp_server
                                    ),
                                });
                                Slot::Notifying {
                                    session_id: sid.to_owned(),
                                    protocol_version: version,
                                }
                            }
                            _ => Slot::Done(MemberSession::Stateless),
                        },
                        Err(why) => {
                            failed = Some(format!("its initialize answer is unusable: {why}"));
                            Slot::Done(MemberSession::Failed)
                        }
                    }
                }
                Some(r) => {
                    failed = Some(format!("initialize answered HTTP {}", r.status));
                    Slot::Done(MemberSession::Failed)
                }
                None => {
                    failed = Some("initialize failed (no answer in time, or reset)".to_owned());
                    Slot::Done(MemberSession::Failed)
                }
            },
            Slot::Notifying {
                session_id,
                protocol_version,
            } => match response {
                Some(r) if r.status < 400 => Slot::Done(MemberSession::Open {
                    session_id,
                    protocol_version,
                }),
                other => {
                    failed = Some(match other {
                        Some(r) => format!("notifications/initialized answered HTTP {}", r.status),
                        None => "notifications/initialized failed (no answer in time, or reset)"
                            .to_owned(),
                    });
                    Slot::Done(MemberSession::Failed)
                }
            },
            Slot::Closing => Slot::Done(MemberSession::Stateless),
            done @ Slot::Done(_) => done,
        };
        if let Some(why) = failed {
            self.notes.push(format!(
                "virtual server '{}': MCP server '{}' is left out of the new session: {why}",
                vs.name, member.mcp_server
            ));
            self.stats.push(StatOp::inc(StatKey::VsDenied {
                vs: index(p.vs),
                reason: Reason::MemberInitFailed,
            }));
        }
        if let Some(call) = next {
            return CalloutAction::Dispatch(vec![call]);
        }
        match self.finish_local() {
            Some(r) => CalloutAction::Reply(r),
            None => CalloutAction::Wait,
        }
    }

    /// The reply, once every member is done.
    fn finish_local(&mut self) -> Option<Reply> {
        let policy = Rc::clone(&self.policy);
        let Phase::Calling(p) = &self.phase else {
            return None;
        };
        if !p.slots.iter().all(|s| matches!(s, Slot::Done(_))) {
            return None;
        }
        let vs = policy.virtual_server_at(p.vs)?;
        let reply = match &p.kind {
            LocalKind::Initialize { version } => {
                let claims = SessionClaims {
                    virtual_server: vs.name.clone(),
                    caller: self.caller.clone(),
                    issued_s: self.started_ms / 1000,
                    members: vs
                        .members
                        .iter()
                        .zip(&p.slots)
                        .map(|(m, s)| {
                            let state = match s {
                                Slot::Done(st) => st.clone(),
                                _ => MemberSession::Failed,
                            };
                            (m.mcp_server.clone(), state)
                        })
                        .collect(),
                };
                let result = crate::local::initialize_result(&policy, vs, version);
                let mut reply = Self::result_reply(p.id.as_ref(), &result);
                if let Some(sid) = session::seal(&policy.sessions, &claims) {
                    reply.headers.push(("mcp-session-id", sid));
                }
                reply
            }
            LocalKind::Broadcast { .. } => Reply::new(202, Vec::new()),
            _ => Reply::new(200, Vec::new()),
        };
        self.phase = Phase::Denied;
        Some(reply)
    }

    fn deny(&mut self, d: Deny) -> RequestAction {
        self.phase = Phase::Denied;
        self.log_request(d.vs, d.method, d.tool);
        self.log_outcome(&format!("denied.{}", d.reason.as_str()));
        if let Some(vs) = d.vs {
            self.count_caller(vs, ToolMetric::Denied);
        }
        match d.vs {
            Some(vs) => {
                if let Some(m) = d.method {
                    self.stats.push(StatOp::inc(vs_rq(vs, m)));
                }
                self.stats.push(StatOp::inc(StatKey::VsDenied {
                    vs: index(vs),
                    reason: d.reason,
                }));
            }
            None => self
                .stats
                .push(StatOp::inc(StatKey::GlobalDenied(d.reason))),
        }
        if let Some(t) = &d.tool {
            self.stats.push(tool_op(t, ToolMetric::Denied, 1));
        }
        RequestAction::Deny(d.reply)
    }

    /// The response headers arrived.
    pub fn on_response_headers(
        &mut self,
        status: u16,
        content_type: Option<&str>,
        end_of_stream: bool,
        now_ms: u64,
    ) -> ResponseHeadersAction {
        if !matches!(self.phase, Phase::Forwarded) {
            return PASS;
        }
        let kind = BodyKind::of(content_type);
        let mut action = PASS;
        if let Some(call) = &mut self.call {
            call.status_error = status >= 400;
            if !call.status_error {
                let cap = self.policy.max_body_bytes.max(MIN_OBSERVE_CAP);
                call.observer = Some(CallObserver::new(call.id.clone(), kind, cap));
            }
            action.body = ResponseBodyMode::Observe;
        }
        self.rewriter = match (self.rewrite, kind) {
            (_, _) if end_of_stream => None,
            // Server requests ride only on event streams.
            (Some(RewritePlan::ServerRequestIds { member }), BodyKind::Sse) => Some(
                Rewriter::ServerRequestIds(crate::ids::ServerRequestTagger::new(member)),
            ),
            (Some(RewritePlan::ResultType), BodyKind::Sse) => Some(Rewriter::ResultType(
                crate::modern::ResultTagger::Events(crate::sse::EventRewriter::default()),
            )),
            (Some(RewritePlan::ResultType), BodyKind::Json) => Some(Rewriter::ResultType(
                crate::modern::ResultTagger::Json(Some(Vec::new())),
            )),
            _ => None,
        };
        if self.rewriter.is_some() {
            action.body = ResponseBodyMode::Rewrite;
        }
        self.response_mode = action.body;
        if end_of_stream {
            self.response_end(now_ms);
            action.body = ResponseBodyMode::Pass;
        }
        action
    }

    /// Does [`Flow::on_response_body`] need the chunk's bytes (or only the end-of-stream flag)?
    pub fn wants_response_bytes(&self) -> bool {
        match self.response_mode {
            ResponseBodyMode::Pass => false,
            ResponseBodyMode::Rewrite => true,
            ResponseBodyMode::Observe => self
                .call
                .as_ref()
                .and_then(|c| c.observer.as_ref())
                .is_some_and(CallObserver::wants_body),
        }
    }

    /// In [`ResponseBodyMode::Rewrite`]: the bytes to send instead of `chunk` (`None`: send it
    /// as it is). Call before [`Flow::on_response_body`], which then observes the original.
    pub fn rewrite_response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Option<Vec<u8>> {
        match self.rewriter.as_mut()? {
            Rewriter::ServerRequestIds(t) => t.push(chunk, end_of_stream),
            Rewriter::ResultType(t) => t.push(chunk, end_of_stream),
        }
    }

    /// A response body chunk (observed as the upstream sent it).
    pub fn on_response_body(&mut self, chunk: &[u8], end_of_stream: bool, now_ms: u64) {
        if self.response_mode != ResponseBodyMode::Pass
            && let Some(o) = self.call.as_mut().and_then(|c| c.observer.as_mut())
        {
            if end_of_stream {
                o.push_last(chunk);
            } else {
                o.push(chunk);
            }
        }
        if end_of_stream {
            self.response_end(now_ms);
        }
    }

    fn response_end(&mut self, now_ms: u64) {
        self.finish_call(true, now_ms);
    }

    fn finish_call(&mut self, complete: bool, now_ms: u64) {
        let started = self.started_ms;
        let Some(call) = self.call.as_mut() else {
            return;
        };
        if call.done {
            return;
        }
        call.done = true;
        // A response already seen for the request id decides the outcome, even if the stream
        // then ends early (clients such as the Python SDK stop reading once they have it).
        let seen = call.observer.as_ref().and_then(CallObserver::verdict);
        let body_error = call.observer.as_mut().is_some_and(CallObserver::finish);
        let error = call.status_error || body_error || (seen.is_none() && !complete);
        let tool = call.tool;
        if error {
            self.stats.push(tool_op(&tool, ToolMetric::Errors, 1));
        }
        if error && let Some(vs) = self.call_vs {
            self.count_caller(vs, ToolMetric::Errors);
        }
        self.log_outcome(if error { "error" } else { "ok" });
        let latency = now_ms.saturating_sub(started);
        self.stats
            .push(tool_op(&tool, ToolMetric::LatencyMs, latency));
        if let Some(vs) = self.call_vs {
            self.record_caller(vs, ToolMetric::LatencyMs, latency);
        }
    }

    /// The stream is over (proxy-wasm `on_log`). A forwarded call whose response never
    /// completed (reset, timeout, client gone) counts as an error.
    pub fn on_done(&mut self, now_ms: u64) {
        self.finish_call(false, now_ms);
    }
}

/// Headers of a callout to member `m` (`:method` first: POST).
fn member_headers(
    m: &crate::policy::CompiledMember,
    session_id: Option<&str>,
    protocol_version: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut h = vec![
        (":method", "POST".to_owned()),
        (":path", m.path.to_string()),
        (":authority", m.authority.to_string()),
        ("content-type", "application/json".to_owned()),
        ("accept", "application/json, text/event-stream".to_owned()),
    ];
    if let Some(sid) = session_id {
        h.push(("mcp-session-id", sid.to_owned()));
    }
    if let Some(v) = protocol_version {
        h.push(("mcp-protocol-version", v.to_owned()));
    }
    h
}

fn tool_op(t: &ToolRef, metric: ToolMetric, value: u64) -> StatOp {
    StatOp {
        key: StatKey::Tool {
            tool: t.stat,
            metric,
        },
        value,
    }
}

fn index(vs: usize) -> u32 {
    u32::try_from(vs).unwrap_or(u32::MAX)
}

fn vs_rq(vs: usize, method: crate::stats::MethodStat) -> StatKey {
    StatKey::VsRq {
        vs: index(vs),
        method,
    }
}
